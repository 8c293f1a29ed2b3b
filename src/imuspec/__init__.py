"""imuspec: cross-modal speculative decoding (IMU draft, event/video target), lossless by construction."""

from .checkpoint import CheckpointError, load_decoder
from .model import Decoder, LlamaConfig
from .sampling import Sampling
from .speculative import Generation, GenerationConfig, generate, generate_batch
from .templates import Template, Tokenizer, get_template

__all__ = [
    "CheckpointError",
    "Decoder",
    "Generation",
    "GenerationConfig",
    "LlamaConfig",
    "Sampling",
    "Template",
    "Tokenizer",
    "generate",
    "generate_batch",
    "get_template",
    "load_decoder",
]
