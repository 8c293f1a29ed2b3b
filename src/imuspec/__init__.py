"""imuspec: cross-modal speculative decoding (IMU draft, event/video target), lossless by construction.

The names below load on first use (PEP 562), so the command line can start without importing torch.
"""

from importlib import import_module

_HOMES = {
    "CheckpointError": "checkpoint",
    "load_decoder": "checkpoint",
    "Decoder": "model",
    "LlamaConfig": "model",
    "Sampling": "sampling",
    "Generation": "speculative",
    "GenerationConfig": "speculative",
    "generate": "speculative",
    "generate_batch": "speculative",
    "Template": "templates",
    "Tokenizer": "templates",
    "get_template": "templates",
    "TreeShape": "tree",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'imuspec' has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
