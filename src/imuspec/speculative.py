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

Batches (:func:`generate_batch`; :func:`generate` is its batch of one) run the same loop on B rows: every row keeps
its own cache lengths, pending tokens and generator, and the caches are never padded. Decoding eagerly, a finished
row leaves the batch (:meth:`~imuspec.model.Decoder.keep_rows`) so that it costs nothing more. With compiled steps
(:attr:`~imuspec.model.Decoder.compiled`) each batch size is graphs of its own to compile (15–20 s a shape for a 7B
target), while a step is memory-bound far beyond B rows; there a finished row is parked instead: it stays in the
batch, starts each step over at slot 0 of its caches, accepts nothing, and its tokens are discarded, so the batch
compiles one set of graphs and every row leaves only when all are done.

A draft with another vocabulary comes wrapped as a :class:`~imuspec.vocab.MappedDraft`
(:func:`imuspec.vocab.drafter`): each step it proposes a chain of up to γ target tokens itself, re-synced from the
committed ones (so no draft cache bookkeeping here), verified by the same lossless rules. It drafts chains only, one
row, no confidence stop; adaptive sizing works for it as for any chain (the planner sees its proposals' lengths).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .adapt import FixedPlan, Planner
from .model import Decoder
from .sampling import Generators, Sampling, probs, sample
from .tree import TreeShape, chain, greedy_accept, grow, sample_accept, verify_logits
from .vocab import MappedDraft

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
        """The shapes a step may take: one, or the candidates that adaptive sizing chooses among."""
        chains = [TreeShape.chain(g, self.confidence) for g in (AUTO_GAMMAS if self.gamma == "auto" else [self.gamma])]
        if self.tree is None:
            return chains
        if self.tree == "auto":
            return chains + [TreeShape.for_budget(n) for n in AUTO_BUDGETS]
        return [self.tree if isinstance(self.tree, TreeShape) else TreeShape.for_budget(self.tree)]

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
    prefill_s: float = 0.0  # in a batch, phase times are the batch's (the same in every row)
    draft_s: float = 0.0  # draft forwards and sampling, excluding prefill
    target_s: float = 0.0  # target forwards and verification, excluding prefill
    wall_s: float = 0.0  # the whole call; in a batch, until this row finished (its latency)
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


ROW_FIELDS = ("max_new_tokens", "seed", "eos_token_ids")  # what the rows of one batch may set apart


def _row_configs(cfg: GenerationConfig | Sequence[GenerationConfig], b: int) -> list[GenerationConfig]:
    """One config per row; rows share everything but :data:`ROW_FIELDS` (one tree shape, one sampling rule)."""
    cfgs = [cfg] * b if isinstance(cfg, GenerationConfig) else list(cfg)
    if len(cfgs) != b:
        raise ValueError(f"{len(cfgs)} generation configs for {b} prompts: give one, or one per row")
    shared = [replace(c, max_new_tokens=1, seed=0, eos_token_ids=()) for c in cfgs]
    for i, c in enumerate(shared):
        if c != shared[0]:
            raise ValueError(f"row {i}: its generation config differs from row 0's beyond {', '.join(ROW_FIELDS)}")
    return cfgs


def _check(model: Decoder, prompts: Sequence[Tensor], cfgs: list[GenerationConfig], slots: int, role: str) -> None:
    """Refuse, before any work, a prompt that is malformed or does not fit the cache, naming its row."""
    for i, (prompt, cfg) in enumerate(zip(prompts, cfgs, strict=True)):
        who = role if len(prompts) == 1 else f"row {i}: {role}"
        if prompt.ndim not in (1, 2) or (prompt.ndim == 2) != prompt.is_floating_point() or len(prompt) == 0:
            raise ValueError(f"{who} prompt: expected token ids [T] or embeddings [T, H], got {tuple(prompt.shape)}")
        if prompt.ndim == 2 and prompt.shape[1] != model.config.hidden_size:
            raise ValueError(f"{who} prompt embeddings have width {prompt.shape[1]}, the {role} expects "
                             f"{model.config.hidden_size}")
        if prompt.ndim != prompts[0].ndim:
            raise ValueError(f"{who} prompt is {'embeddings' if prompt.ndim == 2 else 'token ids'}, row 0's is not")
        need = len(prompt) + cfg.max_new_tokens + slots
        if need > model.max_len:
            raise ValueError(
                f"{who}: a prompt of {len(prompt)} tokens + max_new_tokens {cfg.max_new_tokens} + {slots} draft "
                f"slots needs a cache of {need}, but the {role}'s cache holds {model.max_len} (setup_cache)"
            )


def prefill(model: Decoder, prompts: Sequence[Tensor]) -> Tensor:
    """Last-position logits [B, V] of prompts of different lengths (ids or embeddings) in one forward. They are
    right-padded: a row never attends to the pads after it, and its length is then set back to its prompt's, so
    the pads lie beyond it (the cache itself is never padded)."""
    lengths = torch.tensor([len(p) for p in prompts], device=model.device)
    padded = torch.nn.utils.rnn.pad_sequence(list(prompts), batch_first=True)
    model.rollback(0)
    logits = model(embeds=padded) if padded.is_floating_point() else model(ids=padded)
    model.rollback(lengths)
    return logits[torch.arange(len(prompts), device=model.device), lengths - 1]


def _padded(rows: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Token lists of different lengths as a right-padded [B, P] tensor and their lengths [B]."""
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)


def generate(
    target: Decoder,
    target_prompt: Tensor,
    cfg: GenerationConfig,
    draft: Decoder | MappedDraft | None = None,
    draft_prompt: Tensor | None = None,
) -> Generation:
    """Decode ``cfg.max_new_tokens`` from the target, speculatively when a draft is given; same output either way."""
    return generate_batch(target, [target_prompt], cfg, draft, None if draft_prompt is None else [draft_prompt])[0]


def generate_batch(
    target: Decoder,
    target_prompts: Sequence[Tensor],
    cfg: GenerationConfig | Sequence[GenerationConfig],
    draft: Decoder | MappedDraft | None = None,
    draft_prompts: Sequence[Tensor] | None = None,
) -> list[Generation]:
    """Decode B rows at once (one prompt each for target and draft, any lengths); one :class:`Generation` per row.

    ``cfg`` is one config for every row, or one per row differing only in :data:`ROW_FIELDS`. Each step every
    unfinished row drafts, one target forward verifies all rows, and each row keeps its own accepted prefix (its
    own cache lengths); a finished row leaves both caches' batches, or with compiled steps stays in them, parked
    (see the module's docstring). Each row draws from its own generator, seeded with its config's seed, so with a
    fixed shape (not ``adapt``, no ``confidence`` stop: those decide for the whole batch, a confidence stop on
    parked rows' drafts too) it gets exactly the tokens it would get decoded alone; in fp32 a batch's other
    reduction order can only flip near-tied target logits (:func:`imuspec.bench.divergence` finds them). The caches
    are set up for B rows here and given back with the batch they had.
    """
    b = len(target_prompts)
    if b == 0:
        return []
    cfgs = [c if c.eos_token_ids is not None else replace(c, eos_token_ids=tuple(target.config.eos_ids))
            for c in _row_configs(cfg, b)]  # None: the target's own EOS
    slots = cfgs[0].draft_slots if draft is not None else 0
    _check(target, target_prompts, cfgs, slots, "target")
    mapped = isinstance(draft, MappedDraft)
    draft_model = draft.decoder if mapped else draft
    if draft is not None:
        if not mapped and draft.config.vocab_size != target.config.vocab_size:
            raise ValueError(
                f"draft vocabulary ({draft.config.vocab_size} tokens) differs from the target's "
                f"({target.config.vocab_size}): wrap the draft with imuspec.vocab.drafter(draft, its tokenizer, "
                f"target, the target's tokenizer)"
            )
        if mapped and (b > 1 or cfgs[0].tree is not None or cfgs[0].confidence):
            raise ValueError(f"a draft with another vocabulary drafts plain chains for one row; got {b} rows, "
                             f"tree {cfgs[0].tree!r}, confidence {cfgs[0].confidence}")
        if draft_prompts is None or len(draft_prompts) != b:
            raise ValueError(f"a draft needs its own prompt (token ids or embeddings) for each of the {b} rows")
        _check(draft_model, draft_prompts, cfgs, slots, "draft")
    s, dev = cfgs[0].sampling, target.device
    gens: Generators = [torch.Generator(device=dev).manual_seed(c.seed) for c in cfgs]
    pick = (lambda logits: logits.argmax(-1)) if s.greedy else (lambda logits: sample(probs(logits, s), gens))
    clock, wall = _Clock(dev), time.perf_counter()
    stats, outs = [Stats() for _ in range(b)], [[] for _ in range(b)]
    c0 = cfgs[0]
    planner = None if draft is None else Planner(target, c0.shapes()) if c0.adaptive else FixedPlan(c0.shapes()[0])
    timed_draft = c0.adaptive and dev.type == "cuda"  # the planner needs the draft's own time: wait for it
    models = [m for m in (target, draft_model) if m is not None]
    park = any(m.compiled for m in models)  # another batch size would compile new graphs: finished rows stay, parked
    entry = [m.batch for m in models]
    for m in models:
        if m.batch != b:
            m.setup_cache(m.max_len, b)

    with torch.inference_mode():
        with clock("prefill"):
            last = pick(prefill(target, target_prompts))  # [B] the newest tokens; the target has not seen them
            if mapped:
                draft.start(draft_prompts[0])
            elif draft is not None:
                prefill(draft, draft_prompts)
        rows = list(range(b))  # the row of each cache row still decoding; None where it is parked
        alive = None  # [B] bool once rows are parked: False for them
        t_len, d_len = target.length.clone(), draft_model.length.clone() if draft is not None else None
        pending, n_pend = last[:, None], torch.ones(b, dtype=torch.long, device=dev)  # what the draft has not seen
        news, steps = [[t] for t in last.tolist()], None  # per cache row: tokens to commit, (accepted, depth, nodes)

        while True:
            done = []
            for j, r in enumerate(rows):
                if r is None:  # parked: its new tokens are discarded
                    continue
                c, out = cfgs[r], outs[r]
                room = c.max_new_tokens - len(out)
                stop = next((i + 1 for i, t in enumerate(news[j][:room]) if t in c.eos_token_ids),
                            min(len(news[j]), room))
                out += news[j][:stop]
                cut = c.stop(out) if c.stop else None  # a stop string: the target decided the tokens, this only cuts
                if cut is not None:
                    stop = max(0, stop - (len(out) - cut))
                    del out[cut:]
                if steps is not None:
                    n, depth, nodes = steps[j]
                    stats[r].accepted_per_step.append(n)
                    stats[r].drafted_per_step.append(depth)
                    stats[r].produced_per_step.append(stop)
                    stats[r].budget_per_step.append(nodes)
                if cut is not None or len(out) >= c.max_new_tokens or out and out[-1] in c.eos_token_ids:
                    stats[r].wall_s = time.perf_counter() - wall
                    done.append(j)
            if len(done) == len(rows) - rows.count(None):
                break
            if done and park:  # park them: they stay in the batch, and their generators are never drawn from again
                for j in done:
                    rows[j] = gens[j] = None
                alive = torch.tensor([r is not None for r in rows], device=dev)
                pending = pending[:, :int(n_pend[alive].max())]  # their backlog does not widen the next step
            elif done:  # compact the batch: finished rows leave both caches
                live = [j for j in range(len(rows)) if j not in done]
                idx = torch.tensor(live, device=dev)
                for m in models:
                    m.keep_rows(idx)
                rows, gens = [rows[j] for j in live], [gens[j] for j in live]
                last, t_len, n_pend = last[idx], t_len[idx], n_pend[idx]
                pending = pending[idx, :int(n_pend.max())]
                d_len = d_len[idx] if draft is not None else None
            if alive is not None:  # parked rows start each step again at slot 0, where any step the live rows take
                # fits in their caches (from their own ends a wide step could run past them)
                t_len, n_pend = t_len * alive, torch.where(alive, n_pend, 1)
                target.rollback(t_len)
                if d_len is not None:
                    d_len = d_len * alive
                    draft_model.rollback(d_len)

            shape = planner.next_shape() if planner is not None else None
            compiled = sum(m.compiled_steps for m in models)
            t0 = time.perf_counter()
            if shape is None:  # the target alone (no draft, or drafting does not pay now)
                with clock("target"):
                    last = pick(target.step(last[:, None])[:, -1])
                    news = [[t] for t in last.tolist()]
                steps, t_draft = [(0, 0, 0)] * len(rows), 0.0
                t_len = t_len + 1
                if draft is not None and not mapped:  # the draft's backlog grows by the new token, after each row's own
                    pending = torch.cat([pending, torch.zeros_like(last)[:, None]], 1).scatter(1, n_pend[:, None], last[:, None])
                    n_pend = n_pend + 1
            else:
                with clock("draft"):
                    if mapped:  # proposals in target ids, re-synced from everything committed
                        d, q = draft.propose(outs[rows[0]], shape.depth, s, gens[0])
                        tree = chain(last, d[None], None if q is None else q[None])
                    else:
                        tree = grow(draft, pending, d_len, shape, s, gens, n_pend)
                    if timed_draft:
                        torch.cuda.synchronize()
                t_draft = time.perf_counter() - t0
                with clock("target"):
                    logits = verify_logits(target, tree, t_len)
                    if s.greedy:
                        n, nxt, path = greedy_accept(tree, logits)
                    else:
                        n, nxt, path = sample_accept(tree, probs(logits, s), gens)
                    if alive is not None:  # parked rows accept nothing: their backlog never widens the batch's
                        n = n * alive
                    dslot = tree.draft_slot.gather(1, path)
                    # the one host sync per step: per row depth, next token, and the path's tokens and draft slots
                    host = torch.cat([n[:, None], nxt[:, None], tree.tokens.gather(1, path), dslot], 1).tolist()
                news = [h[3:3 + h[0]] + [h[1]] for h in host]
                if not tree.is_chain:  # a chain's accepted tokens already sit at t_len + 1 ... t_len + n
                    target.keep(t_len[:, None] + path[:, 1:], t_len + 1)
                if not mapped:  # the draft keeps the path nodes it has seen; the rest waits in pending
                    d = path.shape[1]
                    seen = [sum(x >= 0 for x in h[2 + d + 1:2 + d + 1 + h[0]]) for h in host]
                    base = d_len + n_pend
                    if not tree.is_chain and max(seen):  # rows that saw fewer move junk beyond their length
                        draft.keep(dslot[:, 1:1 + max(seen)].clamp_min(0), base)
                    d_len = base + torch.tensor(seen, device=dev)
                    draft.rollback(d_len)
                    pending, n_pend = _padded([h[3 + k:3 + h[0]] + [h[1]] for h, k in zip(host, seen)], dev)
                last, t_len = nxt, t_len + 1 + n
                steps = [(h[0], tree.max_depth, tree.size) for h in host]
            target.rollback(t_len)
            if planner is not None:
                t_verify = time.perf_counter() - t0 - t_draft
                timed = sum(m.compiled_steps for m in models) == compiled  # else its times are a compile's
                for (n_row, depth, nodes), r in zip(steps, rows):
                    if r is not None:  # a parked row's steps are no one's
                        planner.update(shape, depth, n_row, nodes, t_draft, t_verify, timed)

    for m, rows_before in zip(models, entry):
        if m.batch != rows_before:
            m.setup_cache(m.max_len, rows_before)
    phases = [clock.total(p) for p in ("prefill", "draft", "target")]
    for st, out in zip(stats, outs):
        st.prefill_s, st.draft_s, st.target_s = phases
        st.n_tokens, st.fallback = len(out), planner and planner.fallback
    return [Generation(out, st) for out, st in zip(outs, stats)]
