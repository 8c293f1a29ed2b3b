"""CLIP vision towers through transformers' ``CLIPVisionModel``: EventGPT's event-frame encoder and Video-LLaVA's video
tower (transformers' port builds it as a CLIP vision model, run frame by frame).

Towers come from a CLIP folder (a full ``CLIPModel`` or a ``CLIPVisionModel``, config.json + weights) or from the
tower keys inside a multimodal checkpoint; both key styles (with or without the ``vision_model.`` prefix, which
transformers 5 dropped) load.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..checkpoint import CheckpointError, load_into, read_json

# The tower every EventGPT checkpoint names in ``mm_visual_tower``; its shape is fixed, so a missing local copy of
# the hub folder need not stop a checkpoint that carries the tower's weights itself.
KNOWN_TOWERS = {
    "openai/clip-vit-large-patch14-336": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    ),
}


def tower_config(source: str | Path | dict) -> CLIPVisionConfig:
    """The vision config of a CLIP folder (``CLIPConfig`` or ``CLIPVisionConfig`` json), a dict, or a known hub name."""
    if isinstance(source, dict):
        return CLIPVisionConfig.from_dict(source)
    path = Path(source)
    if (path / "config.json").exists():
        d = read_json(path / "config.json")
        return CLIPVisionConfig.from_dict(d.get("vision_config", d))
    if str(source) in KNOWN_TOWERS:
        return CLIPVisionConfig(**KNOWN_TOWERS[str(source)])
    raise CheckpointError(
        f"vision tower {str(source)!r}: no config.json there, and not a known tower ({', '.join(KNOWN_TOWERS)}); "
        "pass a local CLIP folder"
    )


def build_tower(cfg: CLIPVisionConfig) -> CLIPVisionModel:
    return CLIPVisionModel(cfg).eval()


def load_tower(tower: CLIPVisionModel, sd: dict[str, Tensor], source: str) -> None:
    """Load a CLIP vision state dict, with or without the ``vision_model.`` prefix, into ``tower``.

    A full ``CLIPModel`` checkpoint's text half and the old persistent ``position_ids`` buffer are left out.
    """
    if any(k.startswith("vision_model.") for k in sd):
        sd = {k.removeprefix("vision_model."): v for k, v in sd.items() if k.startswith("vision_model.")}
    sd = {k: v for k, v in sd.items() if k != "embeddings.position_ids"}
    if any(k.startswith("vision_model.") for k in tower.state_dict()):  # transformers 4.x module layout
        sd = {"vision_model." + k: v for k, v in sd.items()}
    load_into(tower, sd, source)


def take(sd: dict[str, Tensor], *prefixes: str) -> dict[str, Tensor]:
    """Remove from ``sd`` every key under one of ``prefixes`` (first match wins) and return them without it."""
    out = {}
    for k in list(sd):
        p = next((p for p in prefixes if k.startswith(p)), None)
        if p is not None:
            out[k[len(p):]] = sd.pop(k)
    return out


def check_pixels(pixels: Tensor, cfg: CLIPVisionConfig, what: str) -> None:
    """Frames [N, 3, S, S] at the tower's resolution, finite."""
    s = cfg.image_size
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (cfg.num_channels, s, s) or len(pixels) == 0:
        raise ValueError(f"{what} have shape {tuple(pixels.shape)}, expected [frames, {cfg.num_channels}, {s}, {s}]")
    if not torch.isfinite(pixels).all():
        raise ValueError(f"{what} contain NaN or infinite values")
