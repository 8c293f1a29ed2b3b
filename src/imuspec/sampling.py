"""Pure functions for sampling and speculative acceptance; everything stays on the device (no host sync).

Draft and target distributions go through the same :func:`probs` (temperature, top-k, top-p), so acceptance
compares like with like and the output follows the target's *processed* distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k cut
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0, top_k >= 0 and 0 < top_p <= 1, got {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probs(logits: Tensor, s: Sampling) -> Tensor:
    """Probabilities [..., V] after temperature, then top-k, then top-p (the smallest set reaching mass top_p)."""
    logits = logits.float() / s.temperature
    if s.top_k:
        kth = logits.topk(min(s.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    p = logits.softmax(-1)
    if s.top_p < 1:
        sorted_p, order = p.sort(-1, descending=True)
        drop_sorted = sorted_p.cumsum(-1) - sorted_p >= s.top_p  # the mass before this token already reaches top_p
        p = p.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
        p = p / p.sum(-1, keepdim=True)
    return p


def sample(p: Tensor, generator: torch.Generator) -> Tensor:
    """One token per row of ``p`` [..., V]: argmax of p / Exp(1), an exact draw that needs no host sync."""
    e = torch.empty_like(p).exponential_(generator=generator)
    return (p / e).argmax(-1)


def greedy_verify(draft: Tensor, target_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Accept the longest prefix of ``draft`` [k] equal to the target's argmax; ``target_logits`` is [k+1, V].

    Returns (number accepted, next token): the target's token at the first mismatch, or its bonus token.
    """
    best = target_logits.argmax(-1)
    n = (draft == best[:-1]).long().cumprod(0).sum()
    return n, best[n]


def speculative_verify(draft: Tensor, q: Tensor, p: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Leviathan et al.'s rejection sampler: ``draft`` [k] drawn from ``q`` [k, V], target ``p`` [k+1, V].

    Token i is kept with probability min(1, p/q); at the first rejection the next token comes from
    norm(max(0, p − q)); if all k are kept, it comes from p[k] (the bonus).
    """
    k = draft.shape[0]
    rows = torch.arange(k, device=draft.device)
    u = torch.rand(k, generator=generator, device=draft.device)
    keep = u * q[rows, draft] <= p[rows, draft]
    n = keep.long().cumprod(0).sum()
    residual = (p - torch.cat([q, q.new_zeros(1, q.shape[-1])])).clamp_min(0)[n]  # row k: q is 0, so this is p[k]
    return n, sample(residual / residual.sum(), generator)
