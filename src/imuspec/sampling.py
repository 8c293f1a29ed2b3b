"""Pure functions for sampling; everything stays on the device (no host sync). Acceptance rules: :mod:`imuspec.tree`.

Draft and target distributions go through the same :func:`probs` (temperature, top-k, top-p), so acceptance
compares like with like and the output follows the target's *processed* distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
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


Generators = torch.Generator | Sequence[torch.Generator | None]  # one for the batch, or one per row (leading dim)


def draws(x: Tensor, gen: Generators, fill: str = "exponential_") -> Tensor:
    """Fill ``x`` in place with random draws (``fill``: ``exponential_`` or ``uniform_``): all from one generator,
    or row b from ``gen[b]``, so that each row of a batch draws exactly what it would draw decoded alone. A row
    whose generator is None (a finished row parked in a batch) draws nothing and gets 1s: no work of its own."""
    if isinstance(gen, torch.Generator):
        return getattr(x, fill)(generator=gen)
    if len(gen) != len(x):
        raise ValueError(f"{len(gen)} generators for {len(x)} rows")
    if any(g is None for g in gen):
        x.fill_(1.0)
    for i, g in enumerate(gen):
        if g is not None:
            getattr(x[i], fill)(generator=g)
    return x


def sample(p: Tensor, generator: Generators) -> Tensor:
    """One token per row of ``p`` [..., V]: argmax of p / Exp(1), an exact draw that needs no host sync."""
    return (p / draws(torch.empty_like(p), generator)).argmax(-1)
