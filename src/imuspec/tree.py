"""Token trees: grow a dynamic draft tree (EAGLE-2), verify it in one target forward, accept one root path.

A tree is node 0, the root (the newest committed token, which the target has not seen yet), and drafted nodes in
topological order (every parent before its children). A chain of γ tokens is the tree of width 1 and depth γ, so one
engine loop serves both; :func:`grow` drafts it on a short path of its own (the same tokens and draws), since on a GPU
the tree's bookkeeping would cost more than a small draft's forwards.

Growing (:func:`grow`): at each depth the ``width`` best nodes by path probability (the product of the draft's
probabilities along the path) are expanded, each into its ``width`` most likely children (greedy) or ``width``
children drawn without replacement from the draft (sampling; Gumbel top-k). Greedy then reranks every candidate and
keeps the ``budget`` best (EAGLE-2). Sampling keeps the first ``budget`` in the order they were made instead: a
sibling's proposal is only the without-replacement distribution the rule assumes if whether it is verified does not
depend on its own value, and reranking by value would break that.

Accepting is pure: :func:`greedy_accept` (longest path of target argmaxes) and :func:`sample_accept` (recursive
rejection sampling over siblings, SpecInfer / Sequoia), both on the device, returning the path for one host read.
Everything carries a leading batch dimension B (rows are independent trees, each with its own cache length and,
optionally, its own random generator): the engine decodes B rows at once, the distribution tests draw 20,000 trees.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import Decoder
from .sampling import Generators, Sampling, draws, probs, sample


@dataclass(frozen=True)
class TreeShape:
    budget: int  # drafted nodes verified in one target forward (the root aside)
    depth: int  # longest path, so the most draft tokens one step can accept
    width: int = 1  # nodes expanded per depth and children per expanded node (EAGLE-2's top-k)
    confidence: float = 0.0  # chains: stop drafting once the draft's top probability falls below this

    def __post_init__(self):
        if self.budget < 1 or self.depth < 1 or self.width < 1 or not 0 <= self.confidence < 1:
            raise ValueError(f"a tree needs budget, depth, width >= 1 and 0 <= confidence < 1, got {self}")

    @classmethod
    def chain(cls, gamma: int, confidence: float = 0.0) -> TreeShape:
        return cls(gamma, gamma, 1, confidence)

    @classmethod
    def for_budget(cls, budget: int) -> TreeShape:
        """EAGLE-2-like defaults for a node budget: wider trees for larger budgets, depth up to 8."""
        width = 2 if budget <= 8 else 3 if budget <= 24 else 4
        return cls(budget, min(8, max(1, budget // width + 1)), width)

    @property
    def nodes(self) -> int:
        """How many nodes the tree has, at most (its verify forward has this + 1 tokens)."""
        return min(self.budget, self.depth if self.width == 1 else self.width + (self.depth - 1) * self.width ** 2)

    @property
    def is_chain(self) -> bool:
        return self.width == 1


@dataclass
class Tree:
    """B trees of N + 1 nodes each; node ids are per row (a greedy rerank keeps different nodes in each row)."""

    tokens: Tensor  # [B, N+1] node 0 is the root
    parents: Tensor  # [B, N+1] parent node, -1 for the root
    depth: Tensor  # [B, N+1]
    ancestors: Tensor  # [B, N+1, N+1] bool, [b, i, j]: j is i or one of its ancestors (the verify mask)
    children: Tensor  # [B, N+1, K] children in sibling order (the order they were drawn), -1 where none
    valid: Tensor  # [B, N+1] bool: False for children the draft gives probability 0 (and their descendants)
    q: Tensor | None  # [B, N+1, V] the draft's distribution at each node (sampling; zero rows where not expanded)
    draft_slot: Tensor  # [B, N+1] the draft cache slot of each expanded node, -1 where the draft has not seen it
    max_depth: int  # the depth actually grown (a confidence stop may end a chain early)

    @property
    def size(self) -> int:
        return self.tokens.shape[1] - 1

    @property
    def is_chain(self) -> bool:
        return self.children.shape[2] == 1


def _rows(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, M, ...] at per-row indices idx [B, I] -> [B, I, ...]."""
    return x.gather(1, idx.view(*idx.shape, *[1] * (x.ndim - 2)).expand(*idx.shape, *x.shape[2:]))


@torch.no_grad()  # drafting is never differentiated, and the growth writes its results in place (out=)
def grow(draft: Decoder, pending: Tensor, start: int | Tensor, shape: TreeShape, s: Sampling,
         gen: Generators, n_pending: Tensor | None = None) -> Tree:
    """Draft trees after the committed tokens ``pending`` [B, P] (the last real one is each root), the draft's cache
    holding ``start`` slots before them. Rows may have fewer: ``n_pending`` [B] real tokens, right-padded (the pads
    land beyond the row's length and the tree overwrites them). On return the draft's cache holds pending and then
    every expanded node."""
    dev, (b, n_pend) = pending.device, pending.shape
    last = torch.full((b,), n_pend - 1, device=dev) if n_pending is None else n_pending - 1  # [B] each root's column
    root_pos = torch.as_tensor(start, device=dev).expand(b) + last  # [B] the root's slot and RoPE position
    # the roots' logits [B, 1, V]; a backlog after target-only steps runs eagerly (no new compiled length)
    logits = draft.step(pending) if n_pend <= 2 else draft(ids=pending)
    if n_pend > 1:
        logits = logits.gather(1, last[:, None, None].expand(-1, 1, logits.shape[-1]))
        if n_pending is not None:
            draft.rollback(root_pos + 1)
    root = pending.gather(1, last[:, None])  # [B, 1]
    return (_grow_chain if shape.is_chain else _grow_tree)(draft, root, root_pos, logits, shape, s, gen)


def _key(q: Tensor, s: Sampling, gen: Generators) -> Tensor:
    """What children are the top of: the draft's log-probabilities (greedy), or those plus Gumbel noise (sampling:
    the top k are k draws without replacement)."""
    return q if s.greedy else q - draws(torch.empty_like(q), gen).log()


def _unsure(q: Tensor, shape: TreeShape, d: int) -> bool:
    """The confidence stop: every row's top draft probability (``q`` its log) is below the threshold. One host
    read per depth, only with a confidence stop."""
    return bool(shape.confidence) and d > 1 and float(q.amax(-1).max().exp()) < shape.confidence


def _grow_chain(draft: Decoder, root: Tensor, root_pos: Tensor, logits: Tensor, shape: TreeShape, s: Sampling,
                gen: Generators) -> Tree:
    """A chain: per depth one draft step and one pick (the same tokens and random draws as :func:`_grow_tree`
    makes for width 1), then the chain's fixed structure; a few small ops per step and no host sync (bar a
    confidence stop), because on a GPU the tree's bookkeeping costs more than the draft's forwards."""
    tokens, qs, stopped = [root], [], False
    for d in range(1, shape.nodes + 1):  # a budget below the depth cuts the chain
        x = logits[:, -1]  # [B, V]
        q = None if s.greedy else probs(x, s).log()
        if q is not None:
            qs.append(q.exp())
        if shape.confidence and _unsure(x.log_softmax(-1) if q is None else q, shape, d):
            stopped = True  # the last node was expanded: the draft holds it
            break
        tokens.append((x if q is None else _key(q, s, gen)).argmax(-1, keepdim=True))
        if d < shape.nodes:
            logits = draft.step(tokens[-1])
    b, n = root.shape[0], len(tokens)
    ids = torch.arange(n, device=root.device)
    last = ids == n - 1
    slot = root_pos[:, None] + ids
    q = None if s.greedy else torch.stack(qs + [torch.zeros_like(qs[0])] * (n - len(qs)), 1)
    return Tree(torch.cat(tokens, 1), (ids - 1).expand(b, -1), ids.expand(b, -1),
                (ids[:, None] >= ids).expand(b, -1, -1), torch.where(last, -1, ids + 1).view(1, n, 1).expand(b, -1, -1),
                torch.ones_like(last).expand(b, n), q, slot if stopped else torch.where(last, -1, slot), n - 1)


@dataclass(frozen=True)
class _Layout:
    """Where each depth's nodes go, the same in every row and every step of a (depth, width): made once, it lets the
    growth write into fixed slices instead of building index tensors per depth."""

    blocks: tuple[tuple[int, int], ...]  # depth d's node ids are blocks[d - 1] = [lo, hi)
    depth: Tensor  # [cap] each node's depth
    eye: Tensor  # [cap, cap] bool: each node is its own ancestor
    steps: Tensor  # 0, 1, 2, ...: offsets from the root's slot (the expanded nodes' slots, the depths' positions)

    @property
    def cap(self) -> int:
        return self.blocks[-1][1]


@functools.lru_cache(maxsize=32)
def _layout(depth: int, width: int, device: torch.device) -> _Layout:
    blocks, lo = [], 1
    for d in range(1, depth + 1):
        blocks.append((lo, lo + width ** min(d, 2)))  # the root's k children, then k children of each of k nodes
        lo = blocks[-1][1]
    depths = torch.zeros(lo, dtype=torch.long)
    for d, (a, z) in enumerate(blocks, 1):
        depths[a:z] = d
    return _Layout(tuple(blocks), depths.to(device), torch.eye(lo, dtype=torch.bool, device=device),
                   torch.arange(max(depth + 1, 1 + (depth - 1) * width), device=device))


def _grow_tree(draft: Decoder, root: Tensor, root_pos: Tensor, logits: Tensor, shape: TreeShape, s: Sampling,
               gen: Generators) -> Tree:
    """EAGLE-2 growing (see the module's docstring); ``logits`` [B, 1, V] the draft's at the roots ``root`` [B, 1].

    Depth d's nodes are one block of ids (:class:`_Layout`): the children of the f-th frontier node are its k ids
    starting at lo + f k, in sibling order. ``order`` lists the expanded nodes (the root, then each frontier) in
    draft-slot order; each depth's frontier is a slice of it, so node i's parent is order[(i - 1) // k]. A depth is
    ten aten ops besides the draft's forward (greedy; sampling adds its draws) and no host read (bar a confidence
    stop): on a GPU each op costs ~10-40 µs of host time, whatever its size."""
    dev, k, b = root.device, shape.width, root.shape[0]
    lay = _layout(shape.depth, k, dev)
    tokens = torch.zeros(b, lay.cap, dtype=torch.long, device=dev)
    tokens[:, :1] = root
    score = torch.zeros(b, lay.cap, device=dev)  # log path probability
    anc = lay.eye.expand(b, -1, -1).clone()
    order = torch.zeros(b, len(lay.steps), dtype=torch.long, device=dev)  # node 0, the root, is expanded first
    pos = root_pos[:, None] + lay.steps  # [B, len(steps)] the draft slots in expansion order, and RoPE positions
    q_exp = None if s.greedy else torch.empty(b, len(lay.steps), logits.shape[-1], device=dev)  # q there, sampling
    # the frontier (its ids, their scores and ancestor rows), and e: how many nodes were expanded before it
    frontier, f_score, f_anc, e, grown = order[:, :1], score.new_zeros(b, 1), lay.eye[:1].expand(b, 1, -1), 0, 0
    for d, (lo, hi) in enumerate(lay.blocks, 1):
        f = frontier.shape[1]
        q = logits.log_softmax(-1) if s.greedy else probs(logits, s).log()  # [B, F, V]
        if q_exp is not None:
            torch.exp(q, out=q_exp[:, e:e + f])
        e += f
        if _unsure(q, shape, d):
            break
        top = _key(q, s, gen).topk(k, dim=-1)
        child = top.indices  # [B, F, k] in sibling order
        tokens[:, lo:hi].view(b, f, k).copy_(child)
        q_child = top.values if s.greedy else q.gather(-1, child)  # greedy's key is q
        torch.add(f_score[:, :, None], q_child, out=score[:, lo:hi].view(b, f, k))
        anc[:, lo:hi].view(b, f, k, -1).logical_or_(f_anc[:, :, None])  # a child's ancestors are its parent's too
        grown = d
        if d == shape.depth or (not s.greedy and hi - 1 >= shape.budget):  # greedy grows on, then reranks
            break
        # the best `width` of this depth, best first (a sampled tree cut at its budget keeps the best one's children)
        f_score, best = score[:, lo:hi].topk(k, dim=1)
        frontier = order[:, e:e + k]
        torch.add(best, lo, out=frontier)
        f_anc = _rows(anc, frontier)  # [B, k, cap]
        mask = f_anc.gather(2, order[:, None, 1:e + k].expand(-1, k, -1))  # [B, k, expanded]: the draft's tree mask
        logits = draft.step(tokens.gather(1, frontier), positions=pos[:, d:d + 1].expand(-1, k), tree_mask=mask)

    n = lay.blocks[grown - 1][1]  # a confidence stop comes after depth 1
    parents = torch.full((b, lay.cap), -1, dtype=torch.long, device=dev)
    parents[:, 1:n].view(b, -1, k).copy_(order[:, :(n - 1) // k, None].expand(-1, -1, k))  # i's is order[(i-1)//k]
    slot = torch.full((b, lay.cap), -1, dtype=torch.long, device=dev).scatter_(1, order[:, :e], pos[:, :e])
    q_all = None
    if q_exp is not None:
        q_all = torch.zeros(b, lay.cap, logits.shape[-1], device=dev).scatter_(
            1, order[:, :e, None].expand(-1, -1, q_exp.shape[-1]), q_exp[:, :e])
    return _subtree(_select(score[:, :n], shape.budget + 1, s.greedy), tokens, parents, lay.depth.expand(b, -1), anc,
                    score, slot, q_all, k, grown)


def chain(root: Tensor, d: Tensor, q: Tensor | None) -> Tree:
    """Chains proposed outside :func:`grow` (a draft with another vocabulary, :class:`~imuspec.vocab.MappedDraft`):
    roots [B], drafted tokens d [B, k] (k may be 0) drawn from q [B, k, V] (None: greedy)."""
    (b, k), dev = d.shape, d.device
    idx = torch.arange(k + 1, device=dev)
    rows = lambda x: x.expand(b, *x.shape)  # noqa: E731 -- the same structure in every row
    return Tree(torch.cat([root[:, None], d], 1), rows(idx - 1), rows(idx), rows(idx[:, None] >= idx),
                rows(torch.where(idx < k, idx + 1, -1)[:, None]), torch.ones(b, k + 1, dtype=torch.bool, device=dev),
                None if q is None else torch.cat([q, q.new_zeros(b, 1, q.shape[-1])], 1),
                torch.full((b, k + 1), -1, dtype=torch.long, device=dev), k)


def _select(score: Tensor, budget: int, greedy: bool) -> Tensor | int:
    """Which nodes (indices into ``score`` [B, M], the root's first) to verify, in creation order. Greedy: the
    ``budget`` best by path probability, ties to the earlier (so a parent always ranks before its children, and the
    root, whose 0 no log-probability exceeds, comes first); sampling: the first. An int: the first that many."""
    if score.shape[1] <= budget or not greedy:
        return min(score.shape[1], budget)
    return score.sort(dim=1, descending=True, stable=True).indices[:, :budget].sort(dim=1).values


def _subtree(keep, tokens, parents, depth, anc, score, slot, q, k, grown) -> Tree:
    """The trees restricted to nodes ``keep`` [B, N+1] (ancestor-closed, in creation order), renumbered 0..N; an int
    keeps that many first nodes, whose ids stay (slices: nothing to gather or renumber), copied to the strides a
    gather gives (a compiled verify step guards on them)."""
    if isinstance(keep, int):
        def take(x: Tensor, fresh: bool = True) -> Tensor:  # fresh: for compiled steps; else copied only if strided
            return x[:, :keep].clone(memory_format=torch.contiguous_format) if fresh else x[:, :keep].contiguous()

        par, mask = take(parents), anc[:, :keep, :keep].clone(memory_format=torch.contiguous_format)
    else:
        def take(x: Tensor, fresh: bool = True) -> Tensor:
            return _rows(x, keep)

        par = parents.gather(1, keep)  # kept, since keep is ancestor-closed; its new id is its rank in keep (sorted)
        par = torch.where(par >= 0, torch.searchsorted(keep, par), par)
        mask = _rows(anc, keep).gather(2, keep[:, None].expand(-1, keep.shape[1], -1))
    b, n = par.shape
    idx = torch.arange(n, device=par.device)
    # rank among siblings = how many kept siblings come earlier (creation order is sibling order)
    rank = ((par[:, :, None] == par[:, None, :]) & (idx[None, :] < idx[:, None])).sum(-1)
    children = torch.full((b, (n + 1) * k), -1, dtype=torch.long, device=par.device)  # row n absorbs the roots
    children.scatter_(1, torch.where(par >= 0, par, n) * k + rank, idx.expand(b, -1))
    return Tree(take(tokens), par, take(depth), mask, children.view(b, n + 1, k)[:, :n],
                take(score, fresh=False) > float("-inf"), None if q is None else take(q, fresh=False), take(slot), grown)


def _deepest_path(tree: Tree, ok: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, the deepest node all of whose ancestors (itself included) are ``ok`` [B, N+1] (roots count as ok):
    (that node [B], its depth [B], its root path [B, max_depth + 1] as node ids by depth, 0 beyond its depth)."""
    if tree.is_chain:  # node i is node i's depth: the end is the count of leading ok nodes
        end = ok[:, 1:].cumprod(1).sum(1)
        ids = torch.arange(tree.max_depth + 1, device=ok.device)
        return end, end, torch.where(ids <= end[:, None], ids, 0)
    ok = ok.clone()
    ok[:, 0] = True
    on = ~(tree.ancestors & ~ok[:, None, :]).any(-1)
    end = torch.where(on, tree.depth, -1).argmax(1)
    levels = torch.arange(tree.max_depth + 1, device=ok.device)
    line = _rows(tree.ancestors, end[:, None])[:, 0]  # [B, N+1]: the end's ancestors
    path = (line[:, :, None] & (tree.depth[:, :, None] == levels)).long().argmax(1)
    return end, tree.depth.gather(1, end[:, None])[:, 0], path


def greedy_accept(tree: Tree, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Accept the longest root path whose every token is the target's argmax at its parent; ``logits`` [B, N+1, V].

    Returns per row (accepted depth, next token = the target's argmax after the path, path node ids by depth).
    """
    best = logits.argmax(-1)
    ok = (tree.tokens == best.gather(1, tree.parents.clamp_min(0))) & tree.valid
    end, n, path = _deepest_path(tree, ok)
    return n, best.gather(1, end[:, None])[:, 0], path


def sibling_residual(r: Tensor, q: Tensor) -> Tensor:
    """After a sibling drawn from ``q`` is rejected, the target's remaining distribution: norm(max(r − q, 0)).
    Rows where nothing remains (r = q, so rejection had probability 0) stay as they were."""
    rest = (r - q).clamp_min(0)
    total = rest.sum(-1, keepdim=True)
    return torch.where(total > 0, rest / total.clamp_min(1e-30), r)


def sample_accept(tree: Tree, p: Tensor, gen: Generators) -> tuple[Tensor, Tensor, Tensor]:
    """Recursive rejection sampling over siblings; ``p`` [B, N+1, V] the target's processed distributions.

    At each node the children are tried in the order drawn: child i, drawn from q_i (the draft's q without the
    earlier siblings, renormalised), is accepted with probability min(1, r(c)/q_i(c)), r being the target's p with
    every earlier rejected sibling's q_i taken out (:func:`sibling_residual`); if all are rejected the next token is
    drawn from the last r. Each step is an exact rejection step, so the output follows p exactly.
    Returns per row (accepted depth, next token, path node ids by depth).
    """
    b, n1, k = tree.children.shape
    r, q_left = p.clone(), tree.q.clone()
    a = torch.zeros(b, n1 + 1, device=p.device)  # acceptance probability of each node; column n1 absorbs "none"
    for i in range(k):
        c = tree.children[:, :, i]
        has = (c >= 0) & tree.valid.gather(1, c.clamp_min(0))
        tok = tree.tokens.gather(1, c.clamp_min(0))[:, :, None]
        qi = q_left / q_left.sum(-1, keepdim=True).clamp_min(1e-30)
        ratio = (r.gather(-1, tok) / qi.gather(-1, tok).clamp_min(1e-30)).clamp_max(1)[..., 0]
        a.scatter_(1, torch.where(has, c, n1), torch.where(has, ratio, 0.0))
        r = torch.where(has[..., None], sibling_residual(r, qi), r)
        q_left = torch.where(has[..., None], q_left.scatter(-1, tok, 0.0), q_left)
    accepted = draws(torch.empty(b, n1, device=p.device), gen, "uniform_") < a[:, :n1]
    first = torch.zeros(b, n1 + 1, dtype=torch.bool, device=p.device)  # accepted, and no earlier sibling was
    taken = torch.zeros(b, n1, dtype=torch.bool, device=p.device)
    for i in range(k):
        c = tree.children[:, :, i]
        hit = (c >= 0) & accepted.gather(1, c.clamp_min(0))
        first.scatter_(1, torch.where(hit, c, n1), hit & ~taken)
        taken |= hit
    end, n, path = _deepest_path(tree, first[:, :n1])
    return n, sample(_rows(r, end[:, None])[:, 0], gen), path


def verify_logits(target: Decoder, tree: Tree, start: int | Tensor) -> Tensor:
    """The target's logits [B, N+1, V] at every node in one forward (a compiled step: one graph per tree size);
    its cache then holds the trees from ``start``."""
    if tree.is_chain:
        return target.step(tree.tokens)
    start = torch.as_tensor(start, device=tree.tokens.device).view(-1, 1)
    return target.step(tree.tokens, positions=start + tree.depth, tree_mask=tree.ancestors)
