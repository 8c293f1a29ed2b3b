"""The draft/verify loop: chain speculative decoding (Leviathan et al. 2023; Chen et al. 2023), lossless.

Draft and target are each a :class:`~imuspec.model.Decoder` with its own prompt (token ids, or embeddings built by
a multimodal prompt builder); they share only the vocabulary and the continuation. Each step the draft proposes up
to γ tokens one at a time, the target scores all of them in one forward of γ+1 tokens, and the accepted prefix plus
one target token is kept. Both caches are then rolled back to exactly the kept sequence.

Cache invariants, which make rollback a length change: the target holds prompt + out[:-1]; the draft holds its
prompt + out[:len(out) - len(pending)], ``pending`` being the committed tokens it has not seen yet. Tokens stay on
the device; the loop reads back one small tensor per step (the accepted count and tokens), so with compiled steps
(:meth:`~imuspec.model.Decoder.compile_steps`) the GPU never waits on Python inside the draft loop. Every step
drafts γ tokens, so the verify forward always has γ+1 tokens (one CUDA graph); what passes max_new_tokens is cut.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .model import Decoder
from .sampling import Sampling, greedy_verify, probs, sample, speculative_verify
from .vocab import MappedDraft


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    gamma: int = 4  # draft tokens per step
    sampling: Sampling = Sampling()
    seed: int = 0
    eos_token_ids: tuple[int, ...] = ()  # stop after any of these (it is kept in the output)


@dataclass
class Stats:
    accepted_per_step: list[int] = field(default_factory=list)  # draft tokens kept, per target forward
    drafted_per_step: list[int] = field(default_factory=list)
    produced_per_step: list[int] = field(default_factory=list)  # tokens added to the output, per target forward
    prefill_s: float = 0.0
    draft_s: float = 0.0  # draft forwards and sampling, excluding prefill
    target_s: float = 0.0  # target forwards and verification, excluding prefill
    wall_s: float = 0.0  # the whole call
    n_tokens: int = 0

    @property
    def steps(self) -> int:
        return len(self.accepted_per_step)

    @property
    def alpha(self) -> float | None:
        """Mean acceptance per drafted token (kept / drafted)."""
        d = sum(self.drafted_per_step)
        return sum(self.accepted_per_step) / d if d else None

    @property
    def alpha_token(self) -> float | None:
        """Per-token acceptance probability, the α of Leviathan's formula: kept / (kept + rejections)."""
        rejections = sum(a < d for a, d in zip(self.accepted_per_step, self.drafted_per_step))
        kept = sum(self.accepted_per_step)
        return kept / (kept + rejections) if kept + rejections else None

    @property
    def tau(self) -> float | None:
        """Mean tokens added per target forward after prefill."""
        return sum(self.produced_per_step) / self.steps if self.steps else None

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "accepted_per_step": self.accepted_per_step,
            "alpha": self.alpha,
            "tau": self.tau,
            "draft_s": self.draft_s,
            "target_s": self.target_s,
            "prefill_s": self.prefill_s,
            "wall_s": self.wall_s,
            "tokens_per_s": self.tokens_per_s,
        }


@dataclass
class Generation:
    tokens: list[int]  # the continuation only
    stats: Stats


class _Clock:
    """Sums phase times; on CUDA through events, so timing adds no host sync inside the loop."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: dict[str, list] = {"prefill": [], "draft": [], "target": []}

    @contextmanager
    def __call__(self, phase: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.spans[phase].append((start, end))
        else:
            t = time.perf_counter()
            yield
            self.spans[phase].append(time.perf_counter() - t)

    def total(self, phase: str) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.spans[phase]) / 1000
        return sum(self.spans[phase])


def _forward(model: Decoder, prompt: Tensor) -> Tensor:
    """Last-position logits for a prompt of token ids [T] or embeddings [T, H]."""
    if prompt.is_floating_point():
        return model(embeds=prompt[None])[0, -1]
    return model(ids=prompt[None])[0, -1]


def _check(model: Decoder, prompt: Tensor, cfg: GenerationConfig, gamma: int, role: str) -> None:
    if prompt.ndim not in (1, 2) or (prompt.ndim == 2) != prompt.is_floating_point() or len(prompt) == 0:
        raise ValueError(f"{role} prompt: expected token ids [T] or embeddings [T, H], got {tuple(prompt.shape)}")
    if prompt.ndim == 2 and prompt.shape[1] != model.config.hidden_size:
        raise ValueError(f"{role} prompt embeddings have width {prompt.shape[1]}, the {role} expects {model.config.hidden_size}")
    need = len(prompt) + cfg.max_new_tokens + gamma
    if need > model.max_len:
        raise ValueError(
            f"{role}: a prompt of {len(prompt)} tokens + max_new_tokens {cfg.max_new_tokens} + {gamma} draft "
            f"slots needs a cache of {need}, but the {role}'s cache holds {model.max_len} (setup_cache)"
        )


def _verify(target: Decoder, last: Tensor, d: Tensor, q: Tensor | None, s: Sampling, gen: torch.Generator):
    """One target forward over [last, d]; (accepted count, next token, both and d on the host)."""
    logits = target.step(torch.cat([last, d])[None])[0]
    if s.greedy:
        n, nxt = greedy_verify(d, logits)
    else:
        n, nxt = speculative_verify(d, q, probs(logits, s), gen)
    return n, nxt, torch.cat([n.view(1), nxt.view(1), d]).tolist()  # the one host sync per step


def generate(
    target: Decoder,
    target_prompt: Tensor,
    cfg: GenerationConfig,
    draft: Decoder | MappedDraft | None = None,
    draft_prompt: Tensor | None = None,
) -> Generation:
    """Decode ``cfg.max_new_tokens`` from the target, speculatively when a draft is given; same output either way.

    A draft with another vocabulary comes wrapped as a :class:`~imuspec.vocab.MappedDraft` (see
    :func:`imuspec.vocab.drafter`): it proposes target tokens itself and re-syncs from the committed ones.
    """
    gamma = cfg.gamma if draft is not None else 0
    _check(target, target_prompt, cfg, gamma, "target")
    mapped = isinstance(draft, MappedDraft)
    if draft is not None:
        if not mapped and draft.config.vocab_size != target.config.vocab_size:
            raise ValueError(
                f"draft vocabulary ({draft.config.vocab_size} tokens) differs from the target's "
                f"({target.config.vocab_size}): wrap the draft with imuspec.vocab.drafter(draft, its tokenizer, "
                f"target, the target's tokenizer)"
            )
        if draft_prompt is None:
            raise ValueError("a draft needs its own prompt (token ids or embeddings)")
        _check(draft.decoder if mapped else draft, draft_prompt, cfg, gamma, "draft")
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1 with a draft, got {gamma}")
    s, dev = cfg.sampling, target.device
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    pick = (lambda logits: logits.argmax(-1)) if s.greedy else (lambda logits: sample(probs(logits, s), gen))
    clock, stats, wall = _Clock(dev), Stats(), time.perf_counter()

    with torch.inference_mode():
        target.rollback(0)
        with clock("prefill"):
            last = pick(_forward(target, target_prompt)).view(1)  # the newest token; the target has not seen it
            if mapped:
                draft.start(draft_prompt)
            elif draft is not None:
                draft.rollback(0)
                _forward(draft, draft_prompt)
        out, pending = [int(last)], last  # pending: the committed tokens the draft has not seen (1 or 2)
        t_len, d_len = len(target_prompt), (len(draft_prompt) if draft is not None else 0)

        while len(out) < cfg.max_new_tokens and out[-1] not in cfg.eos_token_ids:
            if draft is None:
                with clock("target"):
                    last = pick(target.step(last[None])[0, -1]).view(1)
                    n, new = 0, [int(last)]
            elif mapped:  # proposals in target ids; no rollback to do here (it re-syncs from `out`)
                with clock("draft"):
                    d, q = draft.propose(out, gamma, s, gen)
                with clock("target"):
                    n, nxt, host = _verify(target, last, d, q, s, gen)
                n, new, last = host[0], host[2:2 + host[0]] + [host[1]], nxt.view(1)
            else:
                with clock("draft"):
                    x, drafted, qs = pending, [], []
                    for _ in range(gamma):
                        logits = draft.step(x[None])[0, -1]
                        if s.greedy:
                            x = logits.argmax(-1, keepdim=True)
                        else:
                            qs.append(probs(logits, s))
                            x = sample(qs[-1], gen).view(1)
                        drafted.append(x)
                    d = torch.cat(drafted)
                with clock("target"):
                    n, nxt, host = _verify(target, last, d, None if s.greedy else torch.stack(qs), s, gen)
                n, new = host[0], host[2:2 + host[0]] + [host[1]]
                keep = min(n, gamma - 1)  # the draft has seen pending + d[:gamma-1]
                d_len += len(pending) + keep
                draft.rollback(d_len)
                last = nxt.view(1)
                pending = torch.cat([d[keep:n], last])
            t_len += 1 + n
            target.rollback(t_len)
            room = cfg.max_new_tokens - len(out)
            stop = next((i + 1 for i, t in enumerate(new[:room]) if t in cfg.eos_token_ids), min(len(new), room))
            out += new[:stop]
            stats.accepted_per_step.append(n)
            stats.drafted_per_step.append(0 if draft is None else len(d))
            stats.produced_per_step.append(stop)

    stats.prefill_s, stats.draft_s, stats.target_s = (clock.total(p) for p in ("prefill", "draft", "target"))
    stats.wall_s, stats.n_tokens = time.perf_counter() - wall, len(out)
    return Generation(out, stats)
