"""Stochastic speculative decoding reproduces the target's distribution: chi-square over 20,000 seeded draws, drawn
as one batch of 20,000 independent trees (chains and trees of width 2 and 3), and the same test catches a
multi-candidate rule that skips the residual update between siblings."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import imuspec.tree
from imuspec import Decoder, LlamaConfig, Sampling
from imuspec.sampling import probs, sample
from imuspec.tree import TreeShape, grow, sample_accept, verify_logits

V = 12
DRAWS = 20_000
PROMPT = torch.tensor([1, 5, 7, 3])


def model(seed: int, batch: int) -> Decoder:
    torch.manual_seed(seed)
    m = Decoder(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(3)  # varied, not flat, distributions
    m.setup_cache(len(PROMPT) + 2 + 12, batch)
    return m


def target_conditionals(s: Sampling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target alone: p(t1) [V], p(t2 | t1) [V, V], p(t3 | t1, t2) [V, V, V] (one batched forward)."""
    target = model(0, V * V)
    a, b = torch.arange(V).repeat_interleave(V), torch.arange(V).repeat(V)
    ids = torch.cat([PROMPT.expand(V * V, -1), a[:, None], b[:, None]], 1)
    with torch.inference_mode():
        p = probs(target(ids=ids), s)
    return p[0, 3], p[::V, 4], p[:, 5].view(V, V, V)


def one_step(s: Sampling, shape: TreeShape) -> torch.Tensor:
    """DRAWS independent runs of the engine's first speculative step: the first token t1 from the target's prefill,
    then one tree grown after it and verified. Returns [DRAWS, 3]: t1 and the step's first two tokens; where the
    step accepted nothing, the third token is drawn from the target itself (what the next step is shown to give)."""
    target, draft = model(0, DRAWS), model(1, DRAWS)
    gen = torch.Generator().manual_seed(2026)
    with torch.inference_mode():
        t1 = sample(probs(target(ids=PROMPT.expand(DRAWS, -1))[:, -1], s), gen)
        draft(ids=PROMPT.expand(DRAWS, -1))
        tree = grow(draft, t1[:, None], len(PROMPT), shape, s, gen)
        n, nxt, path = sample_accept(tree, probs(verify_logits(target, tree, len(PROMPT)), s), gen)
        toks = tree.tokens.gather(1, path)
        t2 = torch.where(n >= 1, toks[:, 1], nxt)
        _, p2, p3 = target_conditionals(s)
        rest = sample(p3[t1, t2], gen)
        t3 = torch.where(n >= 2, toks[:, min(2, toks.shape[1] - 1)], torch.where(n == 1, nxt, rest))
    return torch.stack([t1, t2, t3], 1)


def p_value(observed: np.ndarray, expected_p: np.ndarray) -> float:
    """Chi-square p-value; cells the target never produces must stay empty, cells expected < 5 are pooled."""
    observed, expected = observed.ravel(), expected_p.ravel() * observed.sum()
    if observed[expected == 0].sum() > 0:
        return 0.0
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def no_residual(r, q):
    """A deliberately wrong multi-candidate rule: each sibling is tested against the target's p itself, never
    against what is left of it after the earlier siblings' rejections."""
    return r


SETTINGS = {"temperature": Sampling(temperature=0.8), "top_p": Sampling(temperature=1.0, top_p=0.8)}
SHAPES = {"chain2": TreeShape.chain(2), "b8d3w2": TreeShape(8, 3, 2), "b7d2w3": TreeShape(7, 2, 3)}


@pytest.mark.parametrize("wrong", [False, True], ids=["recursive_rejection", "no_residual_update"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_first_and_second_tokens_follow_the_target(setting, shape, wrong, monkeypatch):
    if wrong:
        monkeypatch.setattr(imuspec.tree, "sibling_residual", no_residual)
    s = SETTINGS[setting]
    torch.set_num_threads(1)
    out = one_step(s, SHAPES[shape]).numpy()
    p1, p2, p3 = (x.double().numpy() for x in target_conditionals(s))
    joint12 = p1[:, None] * p2  # P(t1, t2)
    joint23 = (joint12[:, :, None] * p3).sum(0)  # P(t2, t3)
    obs12, obs23 = np.zeros((V, V)), np.zeros((V, V))
    np.add.at(obs12, (out[:, 0], out[:, 1]), 1)
    np.add.at(obs23, (out[:, 1], out[:, 2]), 1)
    pv = {"first": p_value(obs12.sum(1), p1), "second": p_value(obs12.sum(0), joint12.sum(0)),
          "first_second": p_value(obs12, joint12), "second_third": p_value(obs23, joint23)}
    if wrong:  # the first token comes from the target itself; the tree's tokens betray the wrong rule
        assert pv["first"] > 0.001 and min(pv["second"], pv["first_second"], pv["second_third"]) < 1e-6, pv
    else:
        assert min(pv.values()) > 0.001, pv


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.allclose(probs(logits, Sampling(1.0, top_p=0.8)), torch.tensor([0.625, 0.375, 0, 0]))
    assert torch.allclose(probs(logits, Sampling(1.0, top_p=0.81)), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95)
    assert torch.allclose(probs(logits, Sampling(1.0, top_k=1)), torch.tensor([1.0, 0, 0, 0]))
