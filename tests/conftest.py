import os
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads; subprocesses (CLI, torchrun) inherit it

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from imuspec.model import Decoder, LlamaConfig
from imuspec.speculative import GenerationConfig, Stats, generate

# Small models on one thread: their steps are too small to split, and on a busy machine OpenMP threads spinning for
# cores they do not get made the suite 30x slower (issue 15).
torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"


@pytest.fixture(autouse=True)
def verify_cost_folder(tmp_path, monkeypatch):
    """Adaptive sizing keeps the target's measured verify cost in the user's cache folder; tests keep it here."""
    import imuspec.adapt

    monkeypatch.setattr(imuspec.adapt, "cache_dir", lambda: tmp_path / "cache")
    return tmp_path / "cache"


def fixture_path(*parts: str) -> Path:
    """A file under ../shared/fixtures, or skip the test saying which one is missing."""
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        # allow_module_level: some modules build parameter lists from fixtures while pytest collects them
        pytest.skip(f"real fixture {p} is absent (the ../shared/fixtures folder ships beside the repo in CI)",
                    allow_module_level=True)
    return p


TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
CONFIGS = {
    "mha": dict(TINY),
    "gqa": dict(TINY, num_key_value_heads=2),
    "tied": dict(TINY, num_key_value_heads=1, tie_word_embeddings=True),
    "llama3": dict(
        TINY,
        num_key_value_heads=2,
        rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=16),
    ),
    "linear": dict(TINY, rope_scaling=dict(rope_type="linear", factor=4.0)),
}


def hf_pair(name: str, seed: int = 0) -> tuple[LlamaForCausalLM, Decoder]:
    """A random HF LlamaForCausalLM and our Decoder built from its config.json dict with the same weights."""
    kw = dict(CONFIGS[name])
    scaling = kw.pop("rope_scaling", None)
    torch.manual_seed(seed)
    hf_cfg = HFLlamaConfig(**kw, rope_parameters={"rope_theta": kw.get("rope_theta", 10000.0), **(scaling or {"rope_type": "default"})})
    hf = LlamaForCausalLM(hf_cfg).eval()
    ours = Decoder(LlamaConfig.from_hf(hf_cfg.to_dict()))
    ours.load_state_dict(hf.state_dict(), strict=False)
    return hf, ours.eval()


def assert_lossless(target: Decoder, target_prompt, draft: Decoder, draft_prompt, max_new_tokens: int = 16,
                    gamma: int = 3) -> Stats:
    """Greedy speculative decoding with ``draft`` gives the target's own tokens; returns the speculative stats."""
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, gamma=gamma, eos_token_ids=())
    target.setup_cache(len(target_prompt) + max_new_tokens + gamma)
    draft.setup_cache(len(draft_prompt) + max_new_tokens + gamma)
    alone = generate(target, target_prompt, cfg)
    spec = generate(target, target_prompt, cfg, draft, draft_prompt)
    assert spec.tokens == alone.tokens and len(alone.tokens) == max_new_tokens
    return spec.stats
