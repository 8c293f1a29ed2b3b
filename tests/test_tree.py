"""Token trees: greedy output equals the target alone for many tree shapes and drafts, and after every step both
caches hold exactly the committed sequence (the K/V a fresh prefill of it gives)."""

import pytest
import torch
from test_speculative import PROMPT, partly_agreeing, tiny, twin

import imuspec.speculative
import imuspec.tree
from imuspec import GenerationConfig, Sampling, generate
from imuspec.adapt import Planner
from imuspec.tree import TreeShape, greedy_accept, grow

SHAPES = [TreeShape(1, 1, 1), TreeShape(8, 8, 1), TreeShape(2, 1, 2), TreeShape(8, 4, 2), TreeShape(9, 3, 3),
          TreeShape(6, 8, 2), TreeShape(8, 2, 4), TreeShape(16, 8, 4)]


def drafts(kind: str):
    if kind == "partial":
        return partly_agreeing()
    target = tiny(0)
    return target, (twin(target) if kind == "self" else tiny(1))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"b{s.budget}d{s.depth}w{s.width}")
@pytest.mark.parametrize("kind", ["self", "random", "partial"])
def test_greedy_tree_equals_target_alone(kind, shape, monkeypatch):
    target, draft = drafts(kind)
    trees = []

    def spy(*args):
        trees.append(grow(*args))
        return trees[-1]

    monkeypatch.setattr(imuspec.speculative, "grow", spy)
    cfg = GenerationConfig(max_new_tokens=23, tree=shape)
    alone = generate(target, PROMPT, GenerationConfig(max_new_tokens=23))
    spec = generate(target, PROMPT, cfg, draft, PROMPT)
    assert spec.tokens == alone.tokens and len(spec.tokens) == 23
    s = spec.stats
    assert sum(s.produced_per_step) + 1 == 23 and set(s.budget_per_step) == {shape.nodes}
    if kind == "self":  # the draft's own greedy path (first children) is the target's: all of it in the tree kept
        assert s.accepted_per_step == [_first_child_depth(t) for t in trees]
        assert sum(s.accepted_per_step) > 0.5 * min(shape.depth, shape.budget) * s.steps
    elif kind == "random":
        assert s.alpha < 0.2


def _first_child_depth(tree) -> int:
    """How deep the path of first children (the draft's argmax at each node) goes in the tree."""
    node, depth = 0, 0
    while (c := int(tree.children[0, node, 0])) >= 0:
        node, depth = c, depth + 1
    return depth


def _kv(model, row: int = 0) -> list[torch.Tensor]:
    n = int(model.length[row])
    return [torch.cat([a.self_attn.kv_cache.k[row, :, :n], a.self_attn.kv_cache.v[row, :, :n]]) for a in model.model.layers]


def _assert_prefill_of(model, ids: torch.Tensor, cached: list[torch.Tensor]) -> None:
    fresh = twin(model)
    with torch.inference_mode():
        fresh(ids=ids[None])
    for got, want in zip(cached, _kv(fresh)):
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0)], ids=["greedy", "sampling"])
@pytest.mark.parametrize("shape", [TreeShape(8, 4, 2), TreeShape(9, 3, 3), TreeShape.chain(3)],
                         ids=["b8d4w2", "b9d3w3", "chain3"])
def test_caches_hold_exactly_the_committed_sequence_after_every_step(shape, sampling, monkeypatch):
    target, draft = partly_agreeing()
    snapshots = []

    def spy(d, pending, start, *args):
        snapshots.append((_kv(target), _kv(draft), int(start)))  # the state the previous step left
        return grow(d, pending, start, *args)

    monkeypatch.setattr(imuspec.speculative, "grow", spy)
    cfg = GenerationConfig(max_new_tokens=30, tree=shape, sampling=sampling, seed=3, eos_token_ids=())  # no EOS: many steps
    out = generate(target, PROMPT, cfg, draft, PROMPT).tokens
    seq = torch.cat([PROMPT, torch.tensor(out)])
    assert len(snapshots) > 5
    for t_kv, d_kv, d_len in snapshots:
        assert int(d_len) == len(d_kv[0][0]) >= len(PROMPT)
        _assert_prefill_of(target, seq[:len(t_kv[0][0])], t_kv)
        _assert_prefill_of(draft, seq[:d_len], d_kv)


def test_eos_inside_the_accepted_path():
    target = tiny(0)
    shape = TreeShape(10, 5, 2)  # draft = target: 6 tokens per step, blocks end at output index 6, 12, ...
    alone = generate(target, PROMPT, GenerationConfig(max_new_tokens=30)).tokens
    i = next(i for i in range(7, 30) if alone[i] not in alone[:i] and i % 6)
    cfg = GenerationConfig(max_new_tokens=30, tree=shape, eos_token_ids=(alone[i],))
    spec = generate(target, PROMPT, cfg, twin(target), PROMPT)
    assert spec.tokens == alone[:i + 1] == generate(target, PROMPT, cfg).tokens
    assert spec.stats.accepted_per_step[-1] == 5 and spec.stats.produced_per_step[-1] < 6


def test_max_new_tokens_inside_the_accepted_path():
    target = tiny(0)
    cfg = GenerationConfig(max_new_tokens=8, tree=TreeShape(8, 4, 2))
    spec = generate(target, PROMPT, cfg, twin(target), PROMPT)
    assert spec.tokens == generate(target, PROMPT, GenerationConfig(max_new_tokens=8)).tokens
    assert spec.stats.accepted_per_step == [4, 4] and spec.stats.produced_per_step == [5, 2]


def test_greedy_accept_takes_the_longest_agreeing_path():
    """A hand-made tree: root -> {3, 5}; 3 -> {1, 2}; 5 -> {4}. The target's argmax: 3 after the root, 2 after 3."""
    target, draft = tiny(0), tiny(1)
    tree = grow(draft, PROMPT[None], 0, TreeShape(5, 2, 2), Sampling(), torch.Generator())
    tree.tokens[0] = torch.tensor([0, 3, 5, 1, 2, 4])
    tree.parents[0] = torch.tensor([-1, 0, 0, 1, 1, 2])
    logits = torch.zeros(1, 6, 96)
    logits[0, [0, 1, 2, 3, 4, 5], [3, 2, 7, 8, 9, 6]] = 1.0  # argmax per node
    tree.ancestors[0] = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0],
                                      [1, 1, 0, 1, 0, 0], [1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 0, 1]], dtype=torch.bool)
    tree.depth[0] = torch.tensor([0, 1, 1, 2, 2, 2])
    n, nxt, path = greedy_accept(tree, logits)
    assert int(n) == 2 and int(nxt) == 9 and path[0].tolist() == [0, 1, 4]


def test_adaptive_with_a_random_draft_falls_back_to_the_target_alone(verify_cost_folder):
    target, draft = tiny(0, cache=128), tiny(1, cache=128)
    cfg = GenerationConfig(max_new_tokens=60, gamma="auto", tree="auto")
    spec = generate(target, PROMPT, cfg, draft, PROMPT)
    assert spec.tokens == generate(target, PROMPT, GenerationConfig(max_new_tokens=60)).tokens
    s = spec.stats
    assert s.fallback is not None and s.fallback["alpha"] < 0.3
    assert s.budget_per_step[0] == 1 and s.budget_per_step.count(0) > 0.8 * s.steps  # one probe, then the target
    assert list(verify_cost_folder.glob("verify_cost/*.json"))  # v(T) measured once and kept


def test_confidence_stop_ends_a_chain_early():
    target, draft = partly_agreeing()
    cfg = GenerationConfig(max_new_tokens=30, gamma=6, confidence=0.9)
    spec = generate(target, PROMPT, cfg, draft, PROMPT)
    assert spec.tokens == generate(target, PROMPT, GenerationConfig(max_new_tokens=30)).tokens
    assert min(spec.stats.drafted_per_step) < 6


def _planner(probe_every: int) -> Planner:
    p = Planner(tiny(0, cache=128), [TreeShape.chain(g) for g in (1, 2, 4)] + [TreeShape(8, 4, 2)], probe_every)
    p.verify_s = [1e-3 * (1 + 0.1 * t) for t in range(64)]  # v(T) = (1 + 0.1 (T − 1)) ms, as if measured
    return p


def _step(p: Planner, accept_all: bool, draft_forward_s: float):
    shape = p.next_shape()
    depth, nodes = (shape.depth, shape.nodes) if shape else (0, 0)
    p.update(shape, depth, depth if accept_all else 0, nodes, depth * draft_forward_s, p.verify_s[nodes])
    return shape


def test_planner_falls_back_when_nothing_is_accepted_and_probes_now_and_then():
    p = _planner(probe_every=4)
    shapes = [_step(p, False, 5e-4) for _ in range(60)]
    assert shapes[0] == TreeShape.chain(1)  # the cheapest shape first, to measure alpha and c
    probes = sum(s is not None for s in shapes[1:])
    assert 3 <= probes <= 12  # a probe costs c + v(2) = 1.6 target steps: one every 4 x 1.6 steps
    assert p.fallback == {"alpha": 0.0, "c": pytest.approx(0.5)}


def test_planner_ignores_the_times_of_a_step_that_compiled():
    """On a GPU a step of a new shape first compiles (seconds): timed, it would make drafting look 1000x dearer and
    the planner would fall back for good; untimed, only its acceptance counts. Timed, the same step does harm."""
    for timed, falls_back in ((False, False), (True, True)):
        p = _planner(probe_every=32)
        _step(p, True, 1e-4)  # the first (cheap) step measures the draft's cost
        shape = p.next_shape()
        p.update(shape, shape.depth, shape.depth, shape.nodes, 15.0, 15.0, timed)  # a 15 s compile
        shapes = [_step(p, True, 1e-4) for _ in range(10)]
        assert (shapes.count(None) > 5) == falls_back, timed


def test_planner_charges_a_trees_own_cost_to_trees():
    """A tree that accepts more than any chain but costs 3 ms per step beyond its verify forward (its bookkeeping)
    loses to the chains; the same tree without that cost wins. The cost is the tree's: the target's scale, and so
    the chains' and the target's predicted speeds, stay as measured."""
    tree = TreeShape(8, 4, 2)
    for extra, tree_wins in ((3e-3, False), (0.0, True)):
        p = _planner(probe_every=32)
        for shape in [TreeShape.chain(4), tree] * 3:  # both measured: the chain accepts 2 of 4, the tree all 4
            accepted = shape.depth if shape == tree else 2
            verify_s = p.verify_s[shape.nodes] + (extra if shape == tree else 0.0)
            p.update(shape, shape.depth, accepted, shape.nodes, shape.depth * 1e-4, verify_s)
        assert (p.next_shape() == tree) == tree_wins, extra
        assert p._scale == pytest.approx(1.0)
        assert p.predicted_speed(None) == pytest.approx(1 / p.verify_s[0])


def test_planner_drafts_deep_when_everything_is_accepted():
    p = _planner(probe_every=32)
    shapes = [_step(p, True, 1e-4) for _ in range(20)]
    assert p.fallback is None and None not in shapes
    assert shapes[-1].depth >= 4  # longer chains or the tree once their acceptance is seen


def _grow_three_rows(draft, shape: TreeShape, sampling: Sampling, cache: int = 96):
    """grow on a batch of 3 rows with 1 or 2 pending tokens each and their own generators: (the trees, the draft's
    lengths, the generators' states, every row's cached K/V)."""
    draft.setup_cache(cache, 3)
    with torch.inference_mode():
        draft(ids=torch.stack([PROMPT, PROMPT.roll(1), PROMPT.roll(2)]))
        start = torch.tensor([9, 7, 8])
        draft.rollback(start)
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        tree = grow(draft, torch.tensor([[5, 3], [7, 0], [11, 4]]), start, shape, sampling, gens,
                    torch.tensor([2, 1, 2]))
    kv = [torch.cat([c.k[r, :, :n], c.v[r, :, :n]]) for a in draft.model.layers for c in [a.self_attn.kv_cache]
          for r, n in enumerate(draft.length.tolist())]
    return tree, draft.length.clone(), [g.get_state() for g in gens], kv


@pytest.mark.parametrize("shape", [TreeShape.chain(4), TreeShape.chain(6, 0.5), TreeShape.chain(6, 0.97)],
                         ids=["chain4", "conf0.5", "conf0.97"])
@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0), Sampling(0.7, 20, 0.9)],
                         ids=["greedy", "t1", "topkp"])
def test_chain_fast_path_equals_the_tree_path(shape, sampling, monkeypatch):
    """grow's chain path gives the tree that the general path grows for width 1, from the same random draws, on a
    batch of rows with 1 or 2 pending tokens each and their own generators."""
    _, draft = partly_agreeing()
    fast, fast_len, fast_gens, _ = _grow_three_rows(draft, shape, sampling)
    monkeypatch.setattr(imuspec.tree, "_grow_chain", imuspec.tree._grow_tree)
    slow, slow_len, slow_gens, _ = _grow_three_rows(draft, shape, sampling)
    assert fast.max_depth == slow.max_depth and torch.equal(fast_len, slow_len)
    assert all(torch.equal(a, b) for a, b in zip(fast_gens, slow_gens))
    for f in ("tokens", "parents", "depth", "ancestors", "children", "valid", "q", "draft_slot"):
        a, b = getattr(fast, f), getattr(slow, f)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), f


def _reference_grow_tree(draft, root, root_pos, logits, shape, s, gen):
    """The oracle: EAGLE-2 growing as written before the fixed layout (main at cfbf4bd: _grow_tree, _select and
    _subtree inline), index tensors built per depth; the fast growth must give the same trees bit for bit."""
    from imuspec.tree import _key, _rows, _unsure, probs
    dev, k, b = root.device, shape.width, root.shape[0]
    cap = 1 + k + (shape.depth - 1) * k * k
    tokens = torch.zeros(b, cap, dtype=torch.long, device=dev)
    tokens[:, :1] = root
    parents = torch.full((b, cap), -1, dtype=torch.long, device=dev)
    depth = torch.zeros(cap, dtype=torch.long, device=dev)
    score = torch.zeros(b, cap, device=dev)
    anc = torch.eye(cap, dtype=torch.bool, device=dev).repeat(b, 1, 1)
    slot = torch.full((b, cap), -1, dtype=torch.long, device=dev)
    slot[:, 0] = root_pos
    q_rows = None if s.greedy else []
    expanded = torch.zeros(b, 0, dtype=torch.long, device=dev)
    frontier, n, grown = torch.zeros(b, 1, dtype=torch.long, device=dev), 1, 0
    for d in range(1, shape.depth + 1):
        q = logits.log_softmax(-1) if s.greedy else probs(logits, s).log()
        if q_rows is not None:
            q_rows.append((frontier, q.exp()))
        if _unsure(q, shape, d):
            break
        child = _key(q, s, gen).topk(k, dim=-1).indices
        ids = torch.arange(n, n + child[0].numel(), device=dev)
        par = frontier.repeat_interleave(k, dim=1)
        tokens[:, ids], parents[:, ids], depth[ids] = child.flatten(1), par, d
        score[:, ids] = (score.gather(1, frontier)[:, :, None] + q.gather(-1, child)).flatten(1)
        anc[:, ids] |= _rows(anc, par)
        n, grown = n + len(ids), d
        if d == shape.depth or (not s.greedy and n - 1 >= shape.budget):
            break
        frontier = ids[score[:, ids].topk(min(k, len(ids)), dim=1).indices]
        f = frontier.shape[1]
        slot.scatter_(1, frontier, root_pos[:, None] + 1 + expanded.shape[1] + torch.arange(f, device=dev))
        expanded = torch.cat([expanded, frontier], dim=1)
        mask = _rows(anc, frontier).gather(2, expanded[:, None, :].expand(-1, f, -1))
        logits = draft.step(tokens.gather(1, frontier), positions=(root_pos + d)[:, None].expand(-1, f),
                            tree_mask=mask)
    m = n - 1
    if m <= shape.budget or not s.greedy:
        keep = torch.arange(min(m, shape.budget), device=dev).expand(b, -1)
    else:
        keep = score[:, 1:n].sort(dim=1, descending=True, stable=True).indices[:, :shape.budget].sort(dim=1).values
    keep = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=dev), keep + 1], dim=1)
    q_all = None
    if q_rows is not None:
        q_all = torch.zeros(b, cap, logits.shape[-1], device=dev)
        for nodes, dist in q_rows:
            q_all.scatter_(1, nodes[:, :, None].expand_as(dist), dist)
    b, n = keep.shape
    idx = torch.arange(n, device=dev)
    new_id = torch.full(tokens.shape, -1, dtype=torch.long, device=dev).scatter_(1, keep, idx.expand(b, -1))
    par = parents.gather(1, keep)
    par = torch.where(par >= 0, new_id.gather(1, par.clamp_min(0)), par)
    rank = ((par[:, :, None] == par[:, None, :]) & (idx[None, :] < idx[:, None])).sum(-1)
    children = torch.full((b, (n + 1) * k), -1, dtype=torch.long, device=dev)
    children.scatter_(1, torch.where(par >= 0, par, n) * k + rank, idx.expand(b, -1))
    return imuspec.tree.Tree(tokens.gather(1, keep), par, depth.expand(b, -1).gather(1, keep),
                             _rows(anc, keep).gather(2, keep[:, None].expand(-1, n, -1)),
                             children.view(b, n + 1, k)[:, :n], score.gather(1, keep) > float("-inf"),
                             None if q_all is None else _rows(q_all, keep), slot.gather(1, keep), grown)


GROWN = [TreeShape(8, 4, 2), TreeShape(9, 3, 3), TreeShape(6, 8, 2), TreeShape(16, 8, 4), TreeShape(5, 2, 2),
         TreeShape(40, 3, 3), TreeShape(64, 8, 4), TreeShape(12, 6, 2, 0.8)]


@pytest.mark.parametrize("shape", GROWN, ids=lambda s: f"b{s.budget}d{s.depth}w{s.width}c{s.confidence}")
@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0), Sampling(0.7, 20, 0.9)],
                         ids=["greedy", "t1", "topkp"])
def test_tree_growth_equals_the_reference_bit_for_bit(shape, sampling, monkeypatch):
    """The fast growth (fixed layout, in-place writes) and the reference give the same trees, draws, draft caches and
    generator states (and the same strides: compiled steps guard on them), on a batch of rows with 1 or 2 pending
    tokens each, each with its own generator."""
    _, draft = partly_agreeing()
    fast, fast_len, fast_gens, fast_kv = _grow_three_rows(draft, shape, sampling, cache=160)
    monkeypatch.setattr(imuspec.tree, "_grow_tree", _reference_grow_tree)
    ref, ref_len, ref_gens, ref_kv = _grow_three_rows(draft, shape, sampling, cache=160)
    assert fast.max_depth == ref.max_depth and torch.equal(fast_len, ref_len)
    assert all(torch.equal(a, b) for a, b in zip(fast_gens, ref_gens))
    assert all(torch.equal(a, b) for a, b in zip(fast_kv, ref_kv))
    for f in ("tokens", "parents", "depth", "ancestors", "children", "valid", "q", "draft_slot"):
        a, b = getattr(fast, f), getattr(ref, f)
        assert (a is None) == (b is None) and (a is None or (torch.equal(a, b) and a.stride() == b.stride())), f
    if shape.confidence and sampling.greedy:
        assert fast.max_depth < shape.depth  # the stop was exercised
    assert fast.size == shape.nodes or shape.confidence


def test_one_row_trees_have_the_strides_of_fresh_tensors():
    """A sampled tree cut at its budget is a slice of the growth's buffers, copied: with the buffers' strides, a
    compiled verify step would compile again for each layout."""
    _, draft = partly_agreeing()
    draft.setup_cache(96)
    with torch.inference_mode():
        draft(ids=PROMPT[None])
        tree = grow(draft, PROMPT[None, -1:], len(PROMPT) - 1, TreeShape(6, 3, 2), Sampling(temperature=1.0),
                    torch.Generator())
    assert tree.size == 6 < imuspec.tree._layout(3, 2, torch.device("cpu")).cap - 1  # a cut: the buffers are wider
    for f in ("tokens", "parents", "depth", "ancestors", "valid", "draft_slot"):
        t = getattr(tree, f)
        assert t.stride() == torch.empty(t.shape).stride(), f
