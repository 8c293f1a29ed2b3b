"""Controlled-agreement model pairs: measure the engine at a chosen acceptance rate without trained weights.

Both models are near-bigram: every block's output projections (``o_proj``, ``down_proj``) are scaled by ε, so the
residual stream stays close to the current token's embedding and the logits close to a bigram table. The draft's
embedding E and LM head W are random; the target's are the same lifted into its wider space by an orthonormal map Q
(E Q^T and W Q^T √(d/D)), which gives both exactly the same bigram table. Each model's own random blocks then move
its logits by about ε, so greedy agreement falls from 1 as ε grows: ε tunes α, whatever the two shapes.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .checkpoint import empty_decoder
from .model import Decoder, LlamaConfig

SHAPES = {
    "vicuna-7b": LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "llama-68m": LlamaConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12),
    "cpu-100m": LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12),
    "cpu-5m": LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4),
}
_BASE = dict(vocab_size=32000, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4)
_KEYS = {"vocab": "vocab_size", "hidden": "hidden_size", "ff": "intermediate_size", "layers": "num_hidden_layers",
         "heads": "num_attention_heads", "kv": "num_key_value_heads"}


def parse_shape(spec: str) -> LlamaConfig:
    """A preset name (see ``SHAPES``) or ``key=value`` pairs, e.g. ``layers=2,hidden=64,heads=4,ff=176,vocab=32000``."""
    if spec in SHAPES:
        return SHAPES[spec]
    try:
        given = {_KEYS[k]: int(v) for k, v in (item.split("=") for item in spec.split(","))}
        return LlamaConfig(**{**_BASE, **given})
    except (ValueError, KeyError):
        raise ValueError(
            f"shape {spec!r}: expected a preset ({', '.join(SHAPES)}) or key=value pairs with keys {', '.join(_KEYS)}"
        ) from None


def n_params(cfg: LlamaConfig) -> int:
    h, kvd = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    block = h * cfg.num_attention_heads * cfg.head_dim * 2 + h * kvd * 2 + 3 * h * cfg.intermediate_size + 2 * h
    return cfg.num_hidden_layers * block + (1 if cfg.tie_word_embeddings else 2) * cfg.vocab_size * h + h


def _random_decoder(cfg: LlamaConfig, eps: float, gen: torch.Generator, device, dtype) -> Decoder:
    model = empty_decoder(cfg, device)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
        elif ".layers." in name:
            std = 1 / math.sqrt(p.shape[1])
            p.data.copy_(torch.randn(p.shape, generator=gen, device=device) * std)
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.data.mul_(eps)
    return model.to(dtype)


def controlled_pair(
    target_cfg: LlamaConfig,
    draft_cfg: LlamaConfig,
    eps: float,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    logit_scale: float = 4.0,
) -> tuple[Decoder, Decoder]:
    """(target, draft) sharing one bigram table; ε sets how often their greedy choices differ."""
    if target_cfg.vocab_size != draft_cfg.vocab_size:
        raise ValueError("target and draft shapes must share the vocabulary size")
    d, big = draft_cfg.hidden_size, target_cfg.hidden_size
    if big < d:
        raise ValueError(f"the target (hidden {big}) must be at least as wide as the draft (hidden {d})")
    target_cfg = replace(target_cfg, tie_word_embeddings=False)
    draft_cfg = replace(draft_cfg, tie_word_embeddings=False)
    gen = torch.Generator(device=device).manual_seed(seed)
    emb = torch.randn(draft_cfg.vocab_size, d, generator=gen, device=device)
    head = torch.randn(draft_cfg.vocab_size, d, generator=gen, device=device) * (logit_scale / math.sqrt(d))
    lift, _ = torch.linalg.qr(torch.randn(big, d, generator=gen, device=device))  # orthonormal columns
    draft = _random_decoder(draft_cfg, eps, gen, device, torch.float32)
    target = _random_decoder(target_cfg, eps, gen, device, torch.float32)
    with torch.no_grad():
        draft.model.embed_tokens.weight.copy_(emb)
        draft.lm_head.weight.copy_(head)
        target.model.embed_tokens.weight.copy_(emb @ lift.T)
        target.lm_head.weight.copy_(head @ lift.T * math.sqrt(d / big))
    return target.to(dtype).eval(), draft.to(dtype).eval()


def scale_blocks(model: Decoder, factor: float) -> None:
    """Multiply every block's output projections by ``factor`` (ε_new / ε_old)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(factor)
            layer.mlp.down_proj.weight.mul_(factor)


def agreement(target: Decoder, draft: Decoder, ids: torch.Tensor) -> float:
    """Fraction of positions of ``ids`` [T] where both models' greedy next tokens agree (one forward each)."""
    with torch.inference_mode():
        target.rollback(0)
        draft.rollback(0)
        return (target(ids=ids[None]).argmax(-1) == draft(ids=ids[None]).argmax(-1)).float().mean().item()


def calibrate(target: Decoder, draft: Decoder, eps: float, alpha: float, ids: torch.Tensor, iters: int = 14) -> float:
    """Rescale both pairs' blocks (built at ``eps``) so their greedy agreement on ``ids`` is ``alpha``; returns ε.

    Bisection on log ε between 1e-4 and 4; agreement falls monotonically (in expectation) as ε grows.
    """
    lo, hi, cur = math.log(1e-4), math.log(4.0), eps
    for _ in range(iters):
        mid = math.exp((lo + hi) / 2)
        for m in (target, draft):
            scale_blocks(m, mid / cur)
        cur = mid
        if agreement(target, draft, ids) > alpha:
            lo = math.log(mid)
        else:
            hi = math.log(mid)
    return cur
