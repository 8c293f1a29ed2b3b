"""The engine is lossless: greedy output equals the target alone, token for token (fp32)."""

import pytest
import torch

from imuspec import Decoder, GenerationConfig, LlamaConfig, Sampling, generate
from imuspec.synthetic import calibrate, controlled_pair

CFG = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)


def tiny(seed: int, cfg: LlamaConfig = CFG, cache: int = 96) -> Decoder:
    torch.manual_seed(seed)
    m = Decoder(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(20)  # peaked distributions: greedy choices are not near-ties
    m.setup_cache(cache)
    return m


def twin(model: Decoder) -> Decoder:
    """A second instance with the same weights and its own cache."""
    m = Decoder(model.config).eval()
    m.load_state_dict(model.state_dict())
    m.setup_cache(model.max_len)
    return m


PROMPT = torch.tensor([1, 17, 42, 5, 9, 33, 61, 2, 8])


def partly_agreeing() -> tuple[Decoder, Decoder]:
    small = LlamaConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    target, draft = controlled_pair(CFG, small, eps=0.3, seed=3)
    for m in (target, draft):
        m.setup_cache(96)
    calibrate(target, draft, 0.3, 0.6, torch.randint(0, 96, (64,), generator=torch.Generator().manual_seed(0)))
    return target, draft


@pytest.mark.parametrize("gamma", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", ["self", "random", "partial"])
def test_greedy_equals_target_alone(kind, gamma):
    if kind == "partial":
        target, draft = partly_agreeing()
    else:
        target = tiny(0)
        draft = twin(target) if kind == "self" else tiny(1)
    cfg = GenerationConfig(max_new_tokens=23, gamma=gamma, eos_token_ids=())  # 23 is not a multiple of gamma + 1
    alone = generate(target, PROMPT, cfg)
    spec = generate(target, PROMPT, cfg, draft, PROMPT)
    assert spec.tokens == alone.tokens and len(spec.tokens) == 23
    s = spec.stats
    if kind == "self":  # every token accepted, gamma + 1 per target forward until the end
        assert s.accepted_per_step == s.drafted_per_step and s.alpha == 1.0
        assert all(p == gamma + 1 for p in s.produced_per_step[:-1])
    elif kind == "random":
        assert s.alpha < 0.15
    else:
        assert 0.2 < s.alpha_token < 0.95  # partly agreeing: some drafts kept, some rejected
    assert sum(s.produced_per_step) + 1 == 23


def test_eos_inside_an_accepted_block():
    target = tiny(0)
    alone = generate(target, PROMPT, GenerationConfig(max_new_tokens=30, eos_token_ids=()))
    eos = alone.tokens[7]  # the 8th token: not at the end of a gamma=4 block (blocks end at 1, 6, 11, ...)
    assert eos not in alone.tokens[:7]
    cfg = GenerationConfig(max_new_tokens=30, gamma=4, eos_token_ids=(eos,))
    spec = generate(target, PROMPT, cfg, twin(target), PROMPT)
    assert spec.tokens == alone.tokens[:8] == generate(target, PROMPT, cfg).tokens
    assert spec.stats.accepted_per_step[-1] == 4 and spec.stats.produced_per_step[-1] < 5


def test_draft_with_its_own_prompt_and_embeddings():
    """Draft and target share only the continuation: the draft may see another prompt, as embeddings."""
    target, draft = partly_agreeing()
    cfg = GenerationConfig(max_new_tokens=20, gamma=3)
    draft_prompt = draft.embed(torch.tensor([1, 70, 71, 72]))
    with torch.no_grad():
        spec = generate(target, target.embed(PROMPT).detach(), cfg, draft, draft_prompt.detach())
    assert spec.tokens == generate(target, PROMPT, cfg).tokens


def test_sampling_is_reproducible_with_a_seed():
    target, draft = partly_agreeing()
    cfg = GenerationConfig(max_new_tokens=20, gamma=3, sampling=Sampling(temperature=1.0, top_k=20), seed=7)
    a, b = generate(target, PROMPT, cfg, draft, PROMPT), generate(target, PROMPT, cfg, draft, PROMPT)
    assert a.tokens == b.tokens


def test_vocabulary_mismatch_is_refused():
    other = tiny(1, LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4))
    with pytest.raises(ValueError, match="vocabulary"):
        generate(tiny(0), PROMPT, GenerationConfig(max_new_tokens=4), other, PROMPT)


def test_prompt_longer_than_the_cache_is_refused_before_any_work():
    target = tiny(0, cache=16)
    with pytest.raises(ValueError, match="needs a cache of"):
        generate(target, PROMPT, GenerationConfig(max_new_tokens=10))
    assert int(target.length) == 0  # nothing ran


def test_fused_projections_change_nothing():
    """compile_steps() fuses q/k/v and gate/up for the GPU; the fused decoder computes the same function."""
    target, draft = partly_agreeing()
    cfg = GenerationConfig(max_new_tokens=20, gamma=3)
    before = generate(target, PROMPT, cfg, draft, PROMPT)
    with torch.no_grad():
        target.rollback(0)
        ref = target(ids=PROMPT[None])
        for m in (target, draft):
            for layer in m.model.layers:
                layer.self_attn.fuse()
                layer.mlp.fuse()
        target.rollback(0)
        assert (target(ids=PROMPT[None]) - ref).abs().max() < 1e-5
    assert not any("q_proj" in k or "gate_proj" in k for k in target.state_dict())
    assert generate(target, PROMPT, cfg, draft, PROMPT).tokens == before.tokens
