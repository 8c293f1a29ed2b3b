"""The draft/verify loop: speculative decoding with chains (Leviathan et al. 2023; Chen et al. 2023) and token
trees (EAGLE-2; SpecInfer / Sequoia verification), lossless.

Draft and target are each a :class:`~imuspec.model.Decoder` with its own prompt (token ids, or embeddings built by
a multimodal prompt builder); they share only the vocabulary and the continuation. Each step the draft grows a tree
(:mod:`imuspec.tree`; a chain of γ tokens is a tree of width 1), the target scores every node in one forward, and one
root path plus one target token is kept. Both caches are then compacted to exactly the kept sequence.

Cache invariants: the target holds prompt + out[:-1]; the draft holds its prompt + out[:len(out) - len(pending)],
``pending`` being the committed tokens it has not seen yet. After a verify the accepted path's K/V move to contiguous
slots (:meth:`~imuspec.model.Decoder.keep`, O(kept)); for a chain they are already there. Tokens stay on the device;
the loop reads back one small tensor per step (the accepted path and next token), so with compiled steps
(:meth:`~imuspec.model.Decoder.compile_steps`) the GPU never waits on Python inside the draft loop of a chain. With
``adapt`` the shape of each step is chosen from measured costs and acceptance (:mod:`imuspec.adapt`), down to
target-only steps when drafting cannot pay; the output is the same whatever the shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .adapt import FixedPlan, Planner
from .model import Decoder
from .sampling import Sampling, probs, sample
from .tree import TreeShape, greedy_accept, grow, sample_accept, verify_logits

AUTO_GAMMAS = (1, 2, 3, 4, 6, 8)  # chains "auto" chooses among
AUTO_BUDGETS = (4, 8, 16, 32)  # trees "auto" chooses among (besides the chains)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    gamma: int | str = 4  # draft tokens per step (a chain); "auto": chosen as decoding goes
    sampling: Sampling = Sampling()
    seed: int = 0
    eos_token_ids: tuple[int, ...] | None = None  # stop after any of these (kept); None: the target's own EOS
    stop: Callable[[list[int]], int | None] | None = None  # output → length to cut it to, once it must end
    tree: int | TreeShape | str | None = None  # None: a chain of gamma; N: an N-node tree; "auto": chosen (or chains)
    adapt: bool = False  # choose each step's shape for speed, down to target-only steps (implied by "auto")
    confidence: float = 0.0  # chains: stop drafting once the draft's top probability falls below this

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens (--max-new-tokens) must be at least 1, got {self.max_new_tokens}")
        for name, v in (("gamma", self.gamma), ("tree", self.tree)):
            if isinstance(v, str) and v != "auto" or isinstance(v, int) and not isinstance(v, bool) and v < 1:
                raise ValueError(f"{name}: expected a positive integer or 'auto', got {v!r}")

    @property
    def adaptive(self) -> bool:
        return self.adapt or "auto" in (self.gamma, self.tree)

    def shapes(self) -> list[TreeShape]:
        """The shapes a step may take: the configured one first; adaptive sizing may also shrink it (chains of
        1..γ, or a one-token chain beside a tree) or, with "auto", choose among all."""
        gammas = AUTO_GAMMAS if self.gamma == "auto" else range(self.gamma, 0, -1) if self.adaptive else [self.gamma]
        chains = [TreeShape.chain(g, self.confidence) for g in gammas]
        if self.tree is None:
            return chains
        if self.tree == "auto":
            return chains + [TreeShape.for_budget(n) for n in AUTO_BUDGETS]
        tree = self.tree if isinstance(self.tree, TreeShape) else TreeShape.for_budget(self.tree)
        return [tree, TreeShape.chain(1)] if self.adaptive else [tree]

    @property
    def draft_slots(self) -> int:
        """Cache slots a step needs beyond the committed tokens (γ for a chain, the node count for a tree)."""
        return max(sh.nodes for sh in self.shapes())


@dataclass
class Stats:
    accepted_per_step: list[int] = field(default_factory=list)  # draft tokens kept (accepted depth), per forward
    drafted_per_step: list[int] = field(default_factory=list)  # the tree's depth (γ for a chain)
    produced_per_step: list[int] = field(default_factory=list)  # tokens added to the output, per target forward
    budget_per_step: list[int] = field(default_factory=list)  # tree nodes verified (γ for a chain, 0: target alone)
    fallback: dict | None = None  # set when adaptive sizing first fell back to target-only steps: {"alpha", "c"}
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
            "budget_per_step": self.budget_per_step,
            "fallback": self.fallback,
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




def _check(model: Decoder, prompt: Tensor, cfg: GenerationConfig, slots: int, role: str) -> None:
    if prompt.ndim not in (1, 2) or (prompt.ndim == 2) != prompt.is_floating_point() or len(prompt) == 0:
        raise ValueError(f"{role} prompt: expected token ids [T] or embeddings [T, H], got {tuple(prompt.shape)}")
    if prompt.ndim == 2 and prompt.shape[1] != model.config.hidden_size:
        raise ValueError(f"{role} prompt embeddings have width {prompt.shape[1]}, the {role} expects {model.config.hidden_size}")
    need = len(prompt) + cfg.max_new_tokens + slots
    if need > model.max_len:
        raise ValueError(
            f"{role}: a prompt of {len(prompt)} tokens + max_new_tokens {cfg.max_new_tokens} + {slots} draft "
            f"slots needs a cache of {need}, but the {role}'s cache holds {model.max_len} (setup_cache)"
        )


def generate(
    target: Decoder,
    target_prompt: Tensor,
    cfg: GenerationConfig,
    draft: Decoder | None = None,
    draft_prompt: Tensor | None = None,
) -> Generation:
    """Decode ``cfg.max_new_tokens`` from the target, speculatively when a draft is given; same output either way."""
    slots = cfg.draft_slots if draft is not None else 0
    _check(target, target_prompt, cfg, slots, "target")
    if draft is not None:
        if draft.config.vocab_size != target.config.vocab_size:
            raise ValueError(
                f"draft vocabulary ({draft.config.vocab_size} tokens) differs from the target's "
                f"({target.config.vocab_size}); cross-vocabulary drafting is not supported"
            )
        if draft_prompt is None:
            raise ValueError("a draft needs its own prompt (token ids or embeddings)")
        _check(draft, draft_prompt, cfg, slots, "draft")
    s, dev = cfg.sampling, target.device
    eos = tuple(target.config.eos_ids) if cfg.eos_token_ids is None else cfg.eos_token_ids
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    pick = (lambda logits: logits.argmax(-1)) if s.greedy else (lambda logits: sample(probs(logits, s), gen))
    clock, stats, wall = _Clock(dev), Stats(), time.perf_counter()
    planner = None if draft is None else Planner(target, cfg.shapes()) if cfg.adaptive else FixedPlan(cfg.shapes()[0])
    timed_draft = cfg.adaptive and dev.type == "cuda"  # the planner needs the draft's own time: wait for it

    with torch.inference_mode():
        target.rollback(0)
        with clock("prefill"):
            last = pick(_forward(target, target_prompt)).view(1)  # the newest token; the target has not seen it
            if draft is not None:
                draft.rollback(0)
                _forward(draft, draft_prompt)
        out, pending = [int(last)], last  # pending: the committed tokens the draft has not seen
        t_len, d_len = len(target_prompt), (len(draft_prompt) if draft is not None else 0)

        while len(out) < cfg.max_new_tokens and out[-1] not in eos:
            shape = planner.next_shape() if planner is not None else None
            t0 = time.perf_counter()
            if shape is None:  # the target alone (no draft, or drafting does not pay now)
                with clock("target"):
                    last = pick(target.step(last[None])[0, -1]).view(1)
                    n, new, nodes, t_draft = 0, [int(last)], 0, 0.0
                if draft is not None:
                    pending = torch.cat([pending, last])
            else:
                with clock("draft"):
                    tree = grow(draft, pending[None], d_len, shape, s, gen)
                    if timed_draft:
                        torch.cuda.synchronize()
                t_draft = time.perf_counter() - t0
                with clock("target"):
                    logits = verify_logits(target, tree, t_len)
                    if s.greedy:
                        n, nxt, path = greedy_accept(tree, logits)
                    else:
                        n, nxt, path = sample_accept(tree, probs(logits, s), gen)
                    # the one host sync per step: depth, next token, and the path's tokens and draft slots
                    host = torch.cat([n, nxt, tree.tokens.gather(1, path)[0], tree.draft_slot.gather(1, path)[0]]).tolist()
                n, nodes = host[0], tree.size
                d = (len(host) - 2) // 2
                toks, dslots = host[2:2 + d], host[2 + d:]
                new = toks[1:n + 1] + [host[1]]
                if not tree.is_chain:  # a chain's accepted tokens already sit at t_len + 1 ... t_len + n
                    target.keep(t_len + path[:, 1:n + 1], t_len + 1)
                seen = sum(x >= 0 for x in dslots[1:n + 1])  # the draft has seen the path's first `seen` nodes
                base = d_len + len(pending)
                if not tree.is_chain and seen:
                    draft.keep(torch.tensor([dslots[1:seen + 1]], dtype=torch.long, device=dev), base)
                d_len = base + seen
                draft.rollback(d_len)
                last = nxt.view(1)
                pending = torch.cat([path.new_tensor(toks[seen + 1:n + 1]), last])
            t_len += 1 + n
            target.rollback(t_len)
            depth = tree.max_depth if shape is not None else 0
            if planner is not None:
                planner.update(shape, depth, n, nodes, t_draft, time.perf_counter() - t0 - t_draft)
            room = cfg.max_new_tokens - len(out)
            stop = next((i + 1 for i, t in enumerate(new[:room]) if t in eos), min(len(new), room))
            out += new[:stop]
            cut = cfg.stop(out) if cfg.stop else None  # a stop string: the target decided the tokens, this only cuts
            if cut is not None:
                stop = max(0, stop - (len(out) - cut))
                del out[cut:]
            stats.accepted_per_step.append(n)
            stats.drafted_per_step.append(depth)
            stats.produced_per_step.append(stop)
            stats.budget_per_step.append(nodes)
            if cut is not None:
                break

    stats.prefill_s, stats.draft_s, stats.target_s = (clock.total(p) for p in ("prefill", "draft", "target"))
    stats.wall_s, stats.n_tokens = time.perf_counter() - wall, len(out)
    stats.fallback = planner and planner.fallback
    return Generation(out, stats)
