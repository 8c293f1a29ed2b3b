"""Stochastic speculative decoding reproduces the target's distribution (chi-square over 20,000 seeded draws),
and the same test catches a sampler that always accepts the draft."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import imuspec.speculative
from imuspec import Decoder, GenerationConfig, LlamaConfig, Sampling, generate
from imuspec.sampling import greedy_verify, probs

V = 12
DRAWS = 20_000
PROMPT = torch.tensor([1, 5, 7, 3])


def model(seed: int) -> Decoder:
    torch.manual_seed(seed)
    m = Decoder(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(3)  # varied, not flat, distributions
    m.setup_cache(16)
    return m


def target_joint(target: Decoder, s: Sampling) -> np.ndarray:
    """Exact P(first = a, second = b) of the target alone under sampling settings ``s``."""
    with torch.inference_mode():
        target.rollback(0)
        p1 = probs(target(ids=PROMPT[None])[0, -1], s)
        rows = []
        for a in range(V):
            target.rollback(len(PROMPT))
            rows.append(probs(target(ids=torch.tensor([[a]]))[0, -1], s))
    return (p1[:, None] * torch.stack(rows)).double().numpy()


def observed_joint(target: Decoder, draft: Decoder, s: Sampling) -> np.ndarray:
    counts = np.zeros((V, V))
    cfg = GenerationConfig(max_new_tokens=3, gamma=2, sampling=s, eos_token_ids=())
    # Well-mixed seeds: torch's CPU generator seeded with consecutive integers 0..N gives first draws correlated
    # enough to fail this test (p = 4e-5 for the top-p case) whatever the sampler.
    for seed in np.random.SeedSequence(2026).generate_state(DRAWS):
        out = generate(target, PROMPT, GenerationConfig(**{**cfg.__dict__, "seed": int(seed)}), draft, PROMPT).tokens
        counts[out[0], out[1]] += 1
    return counts


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


def always_accept(draft, q, p, generator):
    """A deliberately wrong sampler: keeps every draft token and takes the bonus from p."""
    n = torch.tensor(draft.shape[0])
    return n, torch.multinomial(p[-1], 1, generator=generator)[0]


SETTINGS = {"temperature": Sampling(temperature=0.8), "top_p": Sampling(temperature=1.0, top_p=0.8)}


@pytest.mark.parametrize("wrong", [False, True], ids=["rejection_sampler", "always_accept"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_first_and_second_tokens_follow_the_target(setting, wrong, monkeypatch):
    if wrong:
        monkeypatch.setattr(imuspec.speculative, "speculative_verify", always_accept)
    s = SETTINGS[setting]
    target, draft = model(0), model(1)
    expected, observed = target_joint(target, s), observed_joint(target, draft, s)
    p_first = p_value(observed.sum(1), expected.sum(1))
    p_second = p_value(observed.sum(0), expected.sum(0))
    p_pair = p_value(observed, expected)
    if wrong:  # the first token comes from the target itself; the second betrays the wrong sampler
        assert p_first > 0.001 and min(p_second, p_pair) < 1e-6
    else:
        assert min(p_first, p_second, p_pair) > 0.001, (p_first, p_second, p_pair)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.allclose(probs(logits, Sampling(1.0, top_p=0.8)), torch.tensor([0.625, 0.375, 0, 0]))
    assert torch.allclose(probs(logits, Sampling(1.0, top_p=0.81)), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95)
    assert torch.allclose(probs(logits, Sampling(1.0, top_k=1)), torch.tensor([1.0, 0, 0, 0]))


def test_greedy_verify_counts_the_agreeing_prefix():
    logits = torch.eye(5)[[3, 1, 4, 0]] * 10  # target argmax: 3, 1, 4, then bonus 0
    assert [int(x) for x in greedy_verify(torch.tensor([3, 1, 4]), logits)] == [3, 0]
    assert [int(x) for x in greedy_verify(torch.tensor([3, 2, 4]), logits)] == [1, 1]
    assert [int(x) for x in greedy_verify(torch.tensor([0, 1, 4]), logits)] == [0, 3]
