"""Reading Hugging Face checkpoint folders as they are, and loading state dicts with errors that name the key.

Formats: ``model.safetensors``; sharded safetensors with ``model.safetensors.index.json``; ``pytorch_model.bin`` (or
sharded with ``pytorch_model.bin.index.json``) through ``torch.load(weights_only=True)``, which refuses pickles that
would run code.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .model import Decoder, LlamaConfig


class CheckpointError(ValueError):
    """A checkpoint folder or state dict that does not match what the model expects."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def load_weights_file(path: Path, shard_of: Path | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one file: safetensors, or a torch pickle read with ``weights_only=True`` (tensors only).
    ``shard_of``: the index that lists this file, named in errors."""
    where = f"{path}" + (f" (a shard listed in {shard_of.name})" if shard_of else "")
    if not path.exists():
        raise CheckpointError(f"{where}: file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise CheckpointError(f"{where}: truncated or corrupt safetensors file ({e})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{where}: refused to unpickle (only tensors are allowed): {e}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{where}: truncated or corrupt torch file ({str(e).splitlines()[0]})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(sd).__name__}")
    return sd


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, whatever its layout (see the module docstring)."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).exists():
            weight_map = read_json(folder / index_name).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{folder / index_name}: field 'weight_map' missing or not an object")
            sd = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(load_weights_file(folder / shard, folder / index_name))
            missing = sorted(set(weight_map) - set(sd))
            if missing:
                raise CheckpointError(f"{folder / index_name}: keys listed but not in their shard: {missing[:5]}")
            return sd
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return load_weights_file(folder / name)
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json)"
    )


def load_into(module: nn.Module, sd: dict[str, torch.Tensor], source: str, optional: tuple[str, ...] = ()) -> None:
    """Copy ``sd`` into ``module``; every missing, unexpected or mis-shaped key is an error naming it.

    ``optional`` keys may be absent (a tied LM head); ``source`` names the checkpoint in messages.
    """
    own = module.state_dict()
    problems = [f"missing key {k!r} (expected shape {tuple(v.shape)})" for k, v in own.items() if k not in sd and k not in optional]
    problems += [f"unexpected key {k!r} (shape {tuple(v.shape)})" for k, v in sd.items() if k not in own]
    problems += [
        f"key {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise CheckpointError(f"{source}: " + "; ".join(problems[:10]) + more)
    module.load_state_dict(sd, strict=False)


def empty_decoder(cfg: LlamaConfig, device: str | torch.device = "cpu") -> Decoder:
    """A :class:`Decoder` with uninitialised weights (nothing random is drawn), ready for :func:`load_into`."""
    with torch.device("meta"):
        model = Decoder(cfg)
    return model.to_empty(device=device)  # Decoder._apply recomputes the RoPE frequencies


def load_decoder(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Decoder:
    """A :class:`Decoder` from a Hugging Face LLaMA folder (``config.json`` + weights)."""
    folder = Path(folder)
    cfg = LlamaConfig.from_hf(hf_config(folder), str(folder / "config.json"))
    return build_decoder(cfg, load_state_dict(folder), str(folder), dtype, device)


def hf_config(folder: Path) -> dict:
    """``config.json``, with EOS from ``generation_config.json`` where that says (what transformers' ``generate``
    stops at)."""
    d = read_json(folder / "config.json")
    if (folder / "generation_config.json").exists():
        eos = read_json(folder / "generation_config.json").get("eos_token_id")
        if eos is not None:
            d = {**d, "eos_token_id": eos}
    return d


def build_decoder(
    cfg: LlamaConfig,
    sd: dict[str, torch.Tensor],
    source: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Decoder:
    """A :class:`Decoder` holding ``sd`` (HF names); ``source`` names the checkpoint in errors."""
    model = empty_decoder(cfg)
    optional = ("lm_head.weight",) if cfg.tie_word_embeddings else ()
    load_into(model, sd, source, optional)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device=device, dtype=dtype)


def save_decoder(decoder: Decoder, folder: str | Path, tokenizer=None) -> None:
    """A Hugging Face LLaMA folder (config.json, model.safetensors, the tokenizer): what :func:`load_decoder` reads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(decoder.config.to_hf(), indent=1))
    tied = ("lm_head.weight",) if decoder.config.tie_word_embeddings else ()  # the embedding, stored once
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items() if k not in tied}, str(folder / "model.safetensors"))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
