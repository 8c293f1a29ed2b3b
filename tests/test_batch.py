"""Batched decoding: every row of a batch gets exactly what it gets decoded alone (and, greedy, what the target
alone gives), with rows of different prompt lengths, EOS and max_new_tokens, chains and trees, greedy and sampled;
sampled rows follow the target's distribution (chi-square over thousands of rows, each with its own seed)."""

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_sampling import PROMPT as SHORT
from test_sampling import V, model, p_value, target_conditionals
from test_speculative import partly_agreeing, tiny
from test_tree import _assert_prefill_of, _kv

import imuspec.sampling
import imuspec.speculative
import imuspec.tree
from imuspec import Decoder, GenerationConfig, Sampling, generate
from imuspec.bench import divergence
from imuspec.speculative import generate_batch
from imuspec.tree import TreeShape

SHAPES = {"chain3": dict(gamma=3), "tree_b8d4w2": dict(tree=TreeShape(8, 4, 2))}
SAMPLINGS = {"greedy": Sampling(), "sampling": Sampling(temperature=1.0)}


def rows(b: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """B target prompts of different lengths, and draft prompts of their own (other lengths, partly other tokens)."""
    g = torch.Generator().manual_seed(seed)
    tp = [torch.randint(1, 96, (int(torch.randint(3, 14, (), generator=g)),), generator=g) for _ in range(b)]
    dp = [torch.cat([torch.randint(1, 96, (i % 3,), generator=g), p]) for i, p in enumerate(tp)]
    return tp, dp


def row_configs(base: GenerationConfig, target, draft, tp, dp) -> list[GenerationConfig]:
    """Per row: its own seed and max_new_tokens, and for every other row an EOS that the row reaches at a different
    step (the first occurrence of one of its own tokens)."""
    cfgs = []
    for i, (p, d) in enumerate(zip(tp, dp)):
        c = GenerationConfig(**{**base.__dict__, "max_new_tokens": 12 + 3 * i, "seed": 100 + i})
        if i % 2:
            alone = generate(target, p, c, draft, d).tokens
            k = min(2 + i, len(alone) - 1)
            if alone[k] not in alone[:k]:
                c = GenerationConfig(**{**c.__dict__, "eos_token_ids": (alone[k],)})
        cfgs.append(c)
    return cfgs


def park(monkeypatch, before_step=None) -> list[bool]:
    """Decode as under compiled steps (finished rows parked in the batch), on the CPU's eager steps; before each
    draft step check the parked rows and call ``before_step(draft lengths)``. Returns which rows are parked in the
    current step."""
    monkeypatch.setattr(Decoder, "compiled", property(lambda self: True))
    grow, padded, parked = imuspec.speculative.grow, imuspec.speculative._padded, []

    def grow_spy(d, pending, start, shape, s, gens, n_pending):  # the state the previous step left
        d_len, n_pend = start.tolist(), n_pending.tolist()
        parked[:] = [g is None for g in gens]
        # a parked row (no generator) is at slot 0 of the draft's cache with one pending token
        assert all(d_len[j] == n_pend[j] - 1 == 0 for j, p in enumerate(parked) if p)
        # and the step is as wide as the live rows need: a parked row costs no work of its own
        assert pending.shape[1] == max(n for n, p in zip(n_pend, parked) if not p)
        if before_step:
            before_step(d_len)
        return grow(d, pending, start, shape, s, gens, n_pending)

    def padded_spy(rows, device):  # the step's new backlogs: a parked row accepted nothing, so one token
        assert all(len(r) == 1 for r, p in zip(rows, parked) if p)
        return padded(rows, device)

    monkeypatch.setattr(imuspec.speculative, "grow", grow_spy)
    monkeypatch.setattr(imuspec.speculative, "_padded", padded_spy)
    return parked


def count_draws(monkeypatch) -> Counter:
    """How many times each generator (by its seed) is drawn from."""
    uses, real = Counter(), imuspec.sampling.draws

    def spy(x, gen, fill="exponential_"):
        uses.update(g.initial_seed() for g in ([gen] if isinstance(gen, torch.Generator) else gen) if g is not None)
        return real(x, gen, fill)

    for module in (imuspec.sampling, imuspec.tree):
        monkeypatch.setattr(module, "draws", spy)
    return uses


@pytest.mark.parametrize("parked", [False, True], ids=["drop", "park"])
@pytest.mark.parametrize("sampling", sorted(SAMPLINGS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("b", [2, 5, 8])
def test_each_row_equals_the_row_decoded_alone(b, shape, sampling, parked, monkeypatch):
    target, draft = partly_agreeing()
    base = GenerationConfig(sampling=SAMPLINGS[sampling], eos_token_ids=(), **SHAPES[shape])
    tp, dp = rows(b, seed=b)
    cfgs = row_configs(base, target, draft, tp, dp)
    batch_sizes = []
    verify = imuspec.speculative.verify_logits

    def spy(t, tree, start):
        batch_sizes.append(tree.tokens.shape[0])
        return verify(t, tree, start)

    monkeypatch.setattr(imuspec.speculative, "verify_logits", spy)
    if parked:
        park(monkeypatch)
    draws_batch = count_draws(monkeypatch)
    got = generate_batch(target, tp, cfgs, draft, dp)
    monkeypatch.undo()
    draws_alone = count_draws(monkeypatch)
    alone = [generate(target, p, c, draft, d) for p, c, d in zip(tp, cfgs, dp)]
    differ = [(i, divergence(target, p, a.tokens, g.tokens)) for i, (p, a, g) in enumerate(zip(tp, alone, got))
              if a.tokens != g.tokens]
    assert not differ, f"rows differing from batch 1 (row, (position, target's top-2 logit margin there)): {differ}"
    if SAMPLINGS[sampling].greedy:  # and the target alone gives the same
        assert [g.tokens for g in got] == [generate(target, p, c).tokens for p, c in zip(tp, cfgs)]
    for g, a, c in zip(got, alone, cfgs):
        assert len(g.tokens) == c.max_new_tokens or g.tokens[-1] in c.eos_token_ids
        assert g.stats.n_tokens == len(g.tokens)
        # stats count only the row's own steps: a parked row's steps are not its
        for k in ("accepted_per_step", "drafted_per_step", "produced_per_step", "budget_per_step"):
            assert getattr(g.stats, k) == getattr(a.stats, k), k
    assert any(c.eos_token_ids and len(g.tokens) < c.max_new_tokens for g, c in zip(got, cfgs))
    # sampled, each row's generator is drawn from as often as decoded alone: a finished row never draws again
    assert draws_batch == draws_alone and len(draws_alone) == (0 if SAMPLINGS[sampling].greedy else b)
    if parked:  # finished rows stay in the batch: one batch size throughout
        assert set(batch_sizes) == {b}
    else:  # finished rows leave the batch: the verify batch only shrinks, down from b
        assert batch_sizes[0] == b and batch_sizes == sorted(batch_sizes, reverse=True) and batch_sizes[-1] < b
    assert target.batch == 1 and draft.batch == 1  # the caches are given back as they were


@pytest.mark.parametrize("sampling", sorted(SAMPLINGS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_parked_rows_stay_inside_their_caches_and_live_caches_hold_their_sequence(shape, sampling, monkeypatch):
    """Row 0 fills its cache to the last slot and finishes first; parked, it must not write past it (an index error
    here), and after every step in which it is parked the live rows' caches hold exactly their committed sequences
    (the K/V a fresh prefill gives)."""
    target, draft = partly_agreeing()
    cfg = GenerationConfig(sampling=SAMPLINGS[sampling], eos_token_ids=(), seed=5, **SHAPES[shape])
    g = torch.Generator().manual_seed(1)
    lengths = [(target.max_len - 4 - cfg.draft_slots, 4), (6, 40), (10, 15)]  # (prompt, max_new_tokens) per row
    tp = [torch.randint(1, 96, (n,), generator=g) for n, _ in lengths]
    dp = [p[1:] for p in tp]
    cfgs = [replace(cfg, max_new_tokens=m, seed=i) for i, (_, m) in enumerate(lengths)]
    snapshots = []
    park(monkeypatch, lambda d_len: snapshots.append(
        [(j, _kv(target, j), _kv(draft, j), n) if target.length[j] else None for j, n in enumerate(d_len)]))
    got = generate_batch(target, tp, cfgs, draft, dp)
    monkeypatch.undo()
    assert [x.tokens for x in got] == [generate(target, p, c, draft, d).tokens for p, c, d in zip(tp, cfgs, dp)]
    with_parked = [s for s in snapshots if None in s]
    assert len(with_parked) > 3 and all(s[0] is None for s in with_parked)  # row 0 is parked first, and stays
    for snap in with_parked:
        for j, t_kv, d_kv, d_len in filter(None, snap):
            out = torch.tensor(got[j].tokens)
            assert d_len == len(d_kv[0][0]) >= len(dp[j])
            _assert_prefill_of(target, torch.cat([tp[j], out])[:len(t_kv[0][0])], t_kv)
            _assert_prefill_of(draft, torch.cat([dp[j], out])[:d_len], d_kv)


def test_a_parked_row_accepts_nothing(monkeypatch):
    """Whatever the acceptance rule says of a parked row's junk (here: all of its chain, and nothing for the live
    rows, which still gives the target's greedy output), it accepts nothing: its backlog never widens the step."""
    target, draft = partly_agreeing()
    parked, real = park(monkeypatch), imuspec.speculative.greedy_accept

    def accept(tree, logits):
        full = torch.tensor(parked)
        n = torch.where(full, tree.max_depth, 0)
        path = torch.where(full[:, None], torch.arange(tree.max_depth + 1), 0)
        return n, logits.argmax(-1).gather(1, n[:, None])[:, 0], path

    monkeypatch.setattr(imuspec.speculative, "greedy_accept", accept)
    tp, dp = rows(3)
    cfgs = [GenerationConfig(max_new_tokens=m, gamma=3, eos_token_ids=()) for m in (2, 9, 6)]
    got = generate_batch(target, tp, cfgs, draft, dp)
    monkeypatch.undo()
    assert [g.tokens for g in got] == [generate(target, p, c).tokens for p, c in zip(tp, cfgs)]
    assert all(set(g.stats.accepted_per_step) == {0} for g in got)


def test_embeddings_prompts_and_target_only_rows():
    """Embedding prompts of different lengths, batched without a draft: each row equals the target alone."""
    target, _ = partly_agreeing()
    tp, _ = rows(5, seed=7)
    cfg = GenerationConfig(max_new_tokens=15, eos_token_ids=())
    with torch.no_grad():
        emb = [target.embed(p) for p in tp]
    got = generate_batch(target, emb, cfg)
    assert [g.tokens for g in got] == [generate(target, p, cfg).tokens for p in tp]


def test_a_row_too_long_for_the_cache_is_refused_before_any_work(monkeypatch):
    target, draft = partly_agreeing()
    tp, dp = rows(4)
    dp[2] = torch.randint(1, 96, (90,))
    monkeypatch.setattr(imuspec.speculative, "prefill", lambda *a: pytest.fail("work began"))
    with pytest.raises(ValueError, match=r"^row 2: draft: a prompt of 90 tokens .* holds 96"):
        generate_batch(target, tp, GenerationConfig(max_new_tokens=10, gamma=3), draft, dp)
    with pytest.raises(ValueError, match=r"^row 1: its generation config differs from row 0's"):
        generate_batch(target, tp[:2], [GenerationConfig(gamma=3), GenerationConfig(gamma=4)], draft, dp[:2])
    assert target.batch == draft.batch == 1


ROWS = 6000


def batch_tokens(shape: TreeShape, seeds: list[int]) -> np.ndarray:
    """The first three tokens of ROWS rows of one batch, the same prompt, each row with its seed."""
    target, draft = model(0, 1), model(1, 1)
    s = Sampling(temperature=0.8)
    cfgs = [GenerationConfig(max_new_tokens=3, tree=shape, sampling=s, seed=k, eos_token_ids=()) for k in seeds]
    out = generate_batch(target, [SHORT] * ROWS, cfgs, draft, [SHORT] * ROWS)
    return np.array([g.tokens for g in out])


@pytest.mark.parametrize("wrong", [False, True], ids=["own_seeds", "one_seed_for_all"])
@pytest.mark.parametrize("shape", [TreeShape.chain(2), TreeShape(8, 3, 2)], ids=["chain2", "b8d3w2"])
def test_rows_follow_the_target_distribution(shape, wrong):
    """Chi-square of the batch's rows against the target's own joint distribution of the first three tokens; rows
    that share one seed (a wrong use) draw the same tokens and fail it."""
    torch.set_num_threads(1)
    out = batch_tokens(shape, [0] * ROWS if wrong else list(range(ROWS)))
    p1, p2, p3 = (x.double().numpy() for x in target_conditionals(Sampling(temperature=0.8)))
    joint12 = p1[:, None] * p2
    joint23 = (joint12[:, :, None] * p3).sum(0)
    obs12, obs23 = np.zeros((V, V)), np.zeros((V, V))
    np.add.at(obs12, (out[:, 0], out[:, 1]), 1)
    np.add.at(obs23, (out[:, 1], out[:, 2]), 1)
    pv = [p_value(obs12, joint12), p_value(obs23, joint23)]
    assert (max(pv) < 1e-6) if wrong else (min(pv) > 0.001), pv


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("IMUSPEC_CACHE", str(tmp_path))


@pytest.mark.parametrize("parked", [False, True], ids=["drop", "park"])
@pytest.mark.parametrize("setting", [dict(gamma="auto", tree="auto"), dict(gamma=6, confidence=0.9)],
                         ids=["adaptive", "confidence"])
def test_shapes_chosen_for_the_whole_batch_keep_each_row_lossless(setting, parked, cache_folder, monkeypatch):
    """Adaptive sizing (here mostly target-only steps, so the draft's backlog differs per row) and confidence stops
    decide for the whole batch: each row still equals the target alone (greedy)."""
    target, draft = partly_agreeing() if "confidence" in setting else (tiny(0, cache=128), tiny(1, cache=128))
    tp, dp = rows(4, seed=3)
    cfgs = [GenerationConfig(max_new_tokens=30 + 7 * i, seed=i, eos_token_ids=(), **setting) for i in range(4)]
    if parked:
        park(monkeypatch)
    updates, update = [], imuspec.speculative.Planner.update
    monkeypatch.setattr(imuspec.speculative.Planner, "update", lambda *a: updates.append(a[3]) or update(*a))
    got = generate_batch(target, tp, cfgs, draft, dp)
    assert [g.tokens for g in got] == [generate(target, p, c).tokens for p, c in zip(tp, cfgs)]
    if "tree" in setting:
        assert got[0].stats.fallback is not None and 0 in got[0].stats.budget_per_step
        # the planner learns from the live rows' steps alone (a parked row's are no one's)
        assert sorted(updates) == sorted(n for g in got for n in g.stats.accepted_per_step)


def test_bench_engine_batch_against_transformers_batched_generate(capsys):
    from imuspec.cli import main

    assert main(["bench", "engine", "--target-shape", "layers=2,hidden=64,heads=4,kv=2,vocab=512", "--draft-shape",
                 "layers=1,hidden=32,heads=2,vocab=512", "--new-tokens", "12", "--prompt-len", "16", "--batch", "3",
                 "--device", "cpu", "--threads", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["batch"] == 3 and r["prompt_lens"] == [16, 14, 11]
    for mode in ("spec", "target", "hf"):  # transformers' batched generate (left-padded) agrees row for row
        assert r[mode]["tokens"] == 36 and r[mode]["rows_differing_from_alone"] == 0 and r[mode]["tokens_per_s"] > 0
