"""imuspec: cross-modal speculative decoding (IMU draft, event/video target), lossless by construction."""

from .checkpoint import CheckpointError, load_decoder
from .model import Decoder, LlamaConfig
from .sampling import Sampling
from .speculative import Generation, GenerationConfig, generate
from .templates import Template, Tokenizer, get_template
from .tree import TreeShape

__all__ = [
    "CheckpointError",
    "Decoder",
    "Generation",
    "GenerationConfig",
    "LlamaConfig",
    "Sampling",
    "Template",
    "Tokenizer",
    "TreeShape",
    "generate",
    "get_template",
    "load_decoder",
]
