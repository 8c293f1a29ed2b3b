"""The training recipe: its pieces' numerics, the formats it writes, and DDP giving one process's loss curve."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imuspec.checkpoint import load_decoder
from imuspec.events.render import eventgpt_pixel_values
from imuspec.models.eventgpt import EventGPT
from imuspec.models.llasa import LLaSA
from imuspec.speculative import GenerationConfig, generate
from imuspec.templates import Tokenizer, get_template
from imuspec.train import PRESETS, Stage, build_tokenizer, distillation, fit, pixels_to_uint8, recipe, uint8_to_pixels
from imuspec.world import QUERY, make_sample, narration_corpus

REPO = Path(__file__).resolve().parents[1]
STAGES = ["target", "limu-bert", "teacher", "draft", "text-draft"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    report = recipe(PRESETS["tiny"], out, ["data"] + STAGES)
    return out, report


def test_tokenizer_round_trips_every_sentence_of_the_world(tmp_path):
    tok = build_tokenizer(tmp_path)
    for text in narration_corpus():
        ids = tok.encode(text, bos=False)
        assert tok.hf.unk_token_id not in ids
        assert tok.decode(ids) == text
    for special in ("<ev_start>", "<ev_end>", "<ev_patch>"):
        assert len(tok.encode(special, bos=False)) == 1


def test_uint8_cache_is_exact():
    pixels = eventgpt_pixel_values(make_sample(5).events, size=32)
    frames = pixels_to_uint8(pixels)
    assert frames.dtype == torch.uint8
    torch.testing.assert_close(uint8_to_pixels(frames), pixels, rtol=0, atol=1e-5)


def test_distillation_losses():
    g = torch.Generator().manual_seed(0)
    logits, teacher_logits = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    p, lengths = teacher_logits.softmax(-1), torch.tensor([5, 3, 1])
    q = logits.softmax(-1)
    per_token_kl = F.kl_div(q.log(), p, reduction="none").sum(-1)
    per_token_tv = 0.5 * (p - q).abs().sum(-1)
    for kind, per_token in (("fkl", per_token_kl), ("tvd", per_token_tv)):
        want = torch.stack([per_token[i, :n].mean() for i, n in enumerate(lengths)]).mean()
        torch.testing.assert_close(distillation(logits, p, lengths, kind), want)
    padded = logits.clone()
    padded[1, 3:] += 100  # past the sample's length: no effect
    torch.testing.assert_close(distillation(padded, p, lengths, "tvd"), distillation(logits, p, lengths, "tvd"))
    assert float(distillation(teacher_logits, p, lengths, "tvd")) < 1e-6
    with pytest.raises(ValueError, match="'fkl' or 'tvd'"):
        distillation(logits, p, lengths, "rkl")


def test_recipe_writes_loadable_families_that_decode_losslessly(run):
    out, report = run
    for name in ("target", "limu-bert", "imu-draft", "text-draft"):
        assert len(report["losses"][name]) > 0 and all(map(math.isfinite, report["losses"][name]))
    assert report["losses"]["target"][-1] < report["losses"]["target"][0]
    target = EventGPT.from_pretrained(out / "target")
    draft = LLaSA.from_pretrained(out / "imu_draft")
    text = load_decoder(out / "text_draft")
    tok = Tokenizer(out / "text_draft")
    assert target.tokenizer.vocab_size == tok.vocab_size  # EventGPT's added tags were already in the vocabulary
    assert draft.imu_encoder.config.seq_len == PRESETS["tiny"].imu_points
    sample = make_sample(1_000_011)
    tp = target.prompt_embeds(QUERY, target.pixel_values(sample.events))
    dp = draft.prompt_embeds(QUERY, sample.imu_input(draft.imu_encoder.config.seq_len))
    xp = torch.tensor(tok.encode(get_template("vicuna_v1").prompt(QUERY)))
    cfg = GenerationConfig(max_new_tokens=12, gamma=3, eos_token_ids=(tok.eos_id,))
    for d in (target.decoder, draft.decoder, text):
        d.setup_cache(128)
    alone = generate(target.decoder, tp, cfg).tokens
    assert generate(target.decoder, tp, cfg, draft.decoder, dp).tokens == alone
    assert generate(target.decoder, tp, cfg, text, xp).tokens == alone


def test_two_processes_give_the_one_process_loss_curve(run, tmp_path):
    """torchrun --nproc_per_node 2 (gloo) on the same global batches: the same losses and weights as one process."""
    out, report = run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "imuspec.cli", "train",
           *STAGES, "--preset", "tiny", "--data", str(out / "data.safetensors"), "--out", str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "recipe.json").read_text())
    assert two["world_size"] == 2
    for name in ("target", "limu-bert", "imu-draft", "text-draft"):
        torch.testing.assert_close(torch.tensor(two["losses"][name]), torch.tensor(report["losses"][name]),
                                   rtol=1e-4, atol=1e-5)
    a, b = load_decoder(out / "text_draft"), load_decoder(tmp_path / "text_draft")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=2e-2, msg=k)  # bf16 weights: a rounding step at most


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr("imuspec.distill.world", lambda: 3)
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="not divisible by 3"):
        fit(model, lambda m, idx, epoch: m(torch.zeros(len(idx), 2)).sum(), 8, Stage(epochs=1, lr=1e-3, batch=8), 0, "x")
