"""LIMU-BERT (Xu et al., SenSys 2021): the IMU encoder of LLaSA, loading dapowan/LIMU-BERT-Public state dicts as-is.

Numerics follow the original: TF-style LayerNorm (epsilon 1e-12 inside the square root, parameters ``gamma`` /
``beta``), erf GELU, a factorised embedding ``norm(norm(lin(x)) + pos)`` (the same LayerNorm applied twice), and ONE
transformer block applied ``n_layers`` times whose attention output replaces the stream before the projection's
residual: ``h = attn(h); h = norm1(h + proj(h)); h = norm2(h + pwff(h))``. The pretraining head reconstructs the
masked time steps: ``decoder(norm(gelu(linear(h))))``; its ``fc`` layer is stored but unused by the original.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import CheckpointError, load_into, load_weights_file


@dataclass(frozen=True)
class LimuBertConfig:
    feature_num: int = 6
    hidden: int = 72
    hidden_ff: int = 144
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 120
    emb_norm: bool = True

    @classmethod
    def from_json(cls, path: str | Path, name: str = "base_v1") -> LimuBertConfig:
        """One entry of LIMU-BERT's ``limu_bert.json`` (``base_v1``: 6 features; ``base_v2``: 9)."""
        try:
            d = json.loads(Path(path).read_text())[name]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{path}: cannot read model config {name!r} ({e!r})") from None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class LayerNorm(nn.Module):
    """TF-style LayerNorm with LIMU-BERT's parameter names."""

    def __init__(self, dim: int, eps: float = 1e-12):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.gamma * ((x - u) / torch.sqrt(s + self.eps)) + self.beta


class Embeddings(nn.Module):
    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        self.lin = nn.Linear(cfg.feature_num, cfg.hidden)
        self.pos_embed = nn.Embedding(cfg.seq_len, cfg.hidden)
        self.norm = LayerNorm(cfg.hidden)
        self.emb_norm = cfg.emb_norm

    def forward(self, x: Tensor) -> Tensor:
        e = self.lin(x)
        if self.emb_norm:
            e = self.norm(e)
        return self.norm(e + self.pos_embed.weight[: x.shape[1]])


class Attention(nn.Module):
    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        self.proj_q = nn.Linear(cfg.hidden, cfg.hidden)
        self.proj_k = nn.Linear(cfg.hidden, cfg.hidden)
        self.proj_v = nn.Linear(cfg.hidden, cfg.hidden)
        self.n_heads = cfg.n_heads

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, self.n_heads, -1).transpose(1, 2) for p in (self.proj_q, self.proj_k, self.proj_v))
        scores = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), dim=-1)
        return (scores @ v).transpose(1, 2).reshape(b, s, d)


class FeedForward(nn.Module):
    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, cfg.hidden_ff)
        self.fc2 = nn.Linear(cfg.hidden_ff, cfg.hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Encoder(nn.Module):
    """The shared-weight transformer (``transformer.*`` in the checkpoints): [B, S, F] -> hidden states [B, S, H]."""

    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.attn = Attention(cfg)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm1 = LayerNorm(cfg.hidden)
        self.pwff = FeedForward(cfg)
        self.norm2 = LayerNorm(cfg.hidden)
        self.n_layers = cfg.n_layers

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for _ in range(self.n_layers):
            h = self.attn(h)
            h = self.norm1(h + self.proj(h))
            h = self.norm2(h + self.pwff(h))
        return h


class LimuBert(nn.Module):
    """Encoder + masked-reconstruction head, named as ``LIMUBertModel4Pretrain``."""

    def __init__(self, cfg: LimuBertConfig = LimuBertConfig()):
        super().__init__()
        self.config = cfg
        self.transformer = Encoder(cfg)
        self.fc = nn.Linear(cfg.hidden, cfg.hidden)  # in the checkpoints, unused by the original forward
        self.linear = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm = LayerNorm(cfg.hidden)
        self.decoder = nn.Linear(cfg.hidden, cfg.feature_num)

    def _check(self, x: Tensor) -> None:
        c = self.config
        if x.ndim != 3 or x.shape[2] != c.feature_num or x.shape[1] > c.seq_len:
            raise ValueError(f"LIMU-BERT input has shape {tuple(x.shape)}; expected [B, <= {c.seq_len}, {c.feature_num}]")

    def forward(self, x: Tensor) -> Tensor:
        """Hidden states [B, S, H] of normalised IMU windows ``x`` [B, S, F] (what LLaSA projects)."""
        self._check(x)
        return self.transformer(x)

    def reconstruct(self, x: Tensor, masked_pos: Tensor | None = None) -> Tensor:
        """Reconstructed values [B, M, F] at ``masked_pos`` [B, M] (all S positions if None)."""
        self._check(x)
        h = self.transformer(x)
        if masked_pos is not None:
            h = torch.gather(h, 1, masked_pos[:, :, None].expand(-1, -1, h.shape[-1]))
        return self.decoder(self.norm(F.gelu(self.linear(h))))

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: LimuBertConfig = LimuBertConfig()) -> LimuBert:
        """A LIMU-BERT pretraining state dict (``pretrain_base_*_20_120.pt``), read with ``weights_only=True``."""
        model = cls(cfg)
        load_into(model, load_weights_file(Path(path)), str(path))
        return model.eval()


def span_mask(seq_len: int, rng: np.random.Generator, ratio: float = 0.15, max_gram: int = 10, p: float = 0.2) -> np.ndarray:
    """Sorted masked positions as LIMU-BERT's pretraining draws them (``mask.json``): round(ratio * seq_len) steps in
    spans of geometric length (parameter ``p``) capped at ``max_gram``; like the original, a span never covers the
    last step."""
    goal = max(1, int(round(seq_len * ratio)))
    grams = np.arange(1, max_gram + 1)
    pvals = p * (1 - p) ** np.arange(max_gram)
    pvals /= pvals.sum()
    pos: set[int] = set()
    while len(pos) < goal:
        n = min(int(rng.choice(grams, p=pvals)), goal - len(pos))
        anchor = int(rng.integers(seq_len))
        if anchor in pos:
            continue
        pos.update(range(anchor, min(anchor + n, seq_len - 1)))
    return np.array(sorted(pos))


def mask_windows(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Copies of windows ``x`` [B, S, F] with the time steps ``positions`` [B, M] zeroed, as pretraining masks them."""
    out = x.copy()
    out[np.arange(len(x))[:, None], positions] = 0.0
    return out


def interpolate_masked(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The no-learning baseline [B, M, F]: each channel linearly interpolated across the masked steps."""
    out = np.empty((len(x), positions.shape[1], x.shape[2]), dtype=x.dtype)
    for i, (w, pos) in enumerate(zip(x, positions)):
        keep = np.setdiff1d(np.arange(len(w)), pos)
        out[i] = np.stack([np.interp(pos, keep, w[keep, c]) for c in range(w.shape[1])], 1)
    return out
