"""The command line: generate (alone and speculative, text and JSON) and bench engine."""

import json
import shutil
import subprocess

import pytest
import torch
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM

from conftest import fixture_path
from imuspec.cli import main


def checkpoint(folder, seed: int, layers: int, max_pos: int = 256):
    """A tiny LLaMA in the LLaMA-2 vocabulary, saved as transformers saves it, with the real tokenizer."""
    torch.manual_seed(seed)
    cfg = HFConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    shutil.copy(fixture_path("llama2_tokenizer", "tokenizer.model"), folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return checkpoint(root / "target", 0, 2), checkpoint(root / "draft", 1, 1)


def run_json(capsys, *args) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_speculative_equals_target_alone(models, capsys):
    target, draft = models
    common = ["generate", "--target", str(target), "--prompt", "What is the person doing?", "--template",
              "llava_v1", "--max-new-tokens", "12", "--json"]
    alone = run_json(capsys, *common)
    spec = run_json(capsys, *common, "--draft", str(draft), "--gamma", "3")
    assert spec["token_ids"] == alone["token_ids"] and len(alone["token_ids"]) <= 12
    assert spec["text"] == alone["text"]
    st = spec["stats"]
    assert set(st) == {"steps", "accepted_per_step", "alpha", "tau", "draft_s", "target_s", "tokens_per_s"}
    assert len(st["accepted_per_step"]) == st["steps"] and 0 <= st["alpha"] <= 1 and st["tau"] >= 1
    assert alone["stats"]["alpha"] is None and alone["stats"]["tau"] == 1


def test_generate_sampling_through_the_console_script(models):
    target, draft = models
    out = subprocess.run(
        ["imuspec", "generate", "--target", str(target), "--draft", str(draft), "--prompt", "The person is",
         "--max-new-tokens", "8", "--temperature", "0.7", "--top-p", "0.9", "--top-k", "50", "--seed", "3", "--json"],
        capture_output=True, text=True, check=True)
    assert len(json.loads(out.stdout)["token_ids"]) <= 8


def test_unknown_template_and_too_long_prompt(models, capsys, tmp_path):
    target, _ = models
    assert main(["generate", "--target", str(target), "--prompt", "hi", "--template", "nope"]) == 2
    assert "known templates: eventgpt_v1, llava_v1, sensorllm, v1, vicuna_v1" in capsys.readouterr().err
    assert main(["generate", "--target", str(target), "--prompt", "walking " * 300]) == 2
    assert "more than the target's max_position_embeddings 256" in capsys.readouterr().err


def test_bench_engine_json(capsys):
    r = run_json(capsys, "bench", "engine", "--target-shape", "layers=2,hidden=64,heads=4,kv=2,vocab=512",
                 "--draft-shape", "layers=1,hidden=32,heads=2,vocab=512", "--new-tokens", "24", "--prompt-len",
                 "16", "--device", "cpu", "--json")
    assert r["identical_to_ar"] and r["hf_identical_to_ours"]
    assert 0 < r["alpha"] <= 1 and r["tau"] >= 1 and r["c"] > 0
    assert r["hf_generate_tokens_per_s"] > 0 and r["hf_assisted_tokens_per_s"] > 0
    assert r["predicted_speedup"] > 0 and r["measured_over_predicted"] > 0


def text_draft(folder, vocab_size: int, seed: int = 3):
    """A one-layer LLaMA of the target's vocabulary, without a tokenizer of its own (it borrows the target's)."""
    torch.manual_seed(seed)
    LlamaForCausalLM(HFConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4)).save_pretrained(folder)
    return folder


def test_generate_eventgpt_target_on_a_real_event_file(tmp_path, capsys):
    from test_eventgpt import QUERY, VOCAB, checkpoint_336

    target, _ = checkpoint_336(tmp_path)
    draft = text_draft(tmp_path / "draft", VOCAB)
    common = ["generate", "--target", str(target), "--events", str(fixture_path("eventgpt", "sample1.npy")),
              "--prompt", QUERY, "--max-new-tokens", "10", "--json"]
    alone = run_json(capsys, *common)
    spec = run_json(capsys, *common, "--draft", str(draft), "--template", "llava_v1", "--gamma", "3")
    assert spec["token_ids"] == alone["token_ids"] and spec["stats"]["steps"] >= 1
    assert main(["generate", "--target", str(target), "--prompt", QUERY]) == 2
    assert "EventGPT checkpoint: give the event file with --events FILE" in capsys.readouterr().err


def test_generate_videollava_target_on_a_real_video(tmp_path, capsys):
    from test_videollava import QUERY, VOCAB, tiny_checkpoint

    target, _ = tiny_checkpoint(tmp_path / "videollava")
    draft = text_draft(tmp_path / "draft", VOCAB)
    common = ["generate", "--target", str(target), "--video", str(fixture_path("videos", "sample_demo_1.mp4")),
              "--prompt", QUERY, "--max-new-tokens", "10", "--json"]
    alone = run_json(capsys, *common)
    spec = run_json(capsys, *common, "--draft", str(draft), "--gamma", "2")
    assert spec["token_ids"] == alone["token_ids"]
    assert main(["generate", "--target", str(checkpoint(tmp_path / "text", 0, 1)), "--prompt", "hi", "--video", "x.mp4"]) == 2
    assert "--events and --video need an EventGPT or Video-LLaVA target" in capsys.readouterr().err


def test_generate_with_an_imu_draft(tmp_path, capsys):
    """A LLaSA draft reading a real SensorCaps window in front of a text-only target: the target's own output."""
    from test_llasa import write_full_checkpoint

    target = checkpoint(tmp_path / "target", 0, 2)
    llasa, _, _ = write_full_checkpoint(tmp_path / "llasa")
    imu = ["--imu", str(fixture_path("llasa", "sensorcaps_untrained_10hz.jsonl")), "--imu-index", "20"]
    common = ["generate", "--target", str(target), "--prompt", "What is the person doing?", "--template", "llava_v1",
              "--max-new-tokens", "12", "--json"]
    alone = run_json(capsys, *common)
    spec = run_json(capsys, *common, "--draft", str(llasa), *imu, "--gamma", "3")
    assert spec["token_ids"] == alone["token_ids"] and spec["stats"]["steps"] >= 1
    assert main([*common, "--draft", str(llasa)]) == 2
    assert "is an IMU draft (llava_llama): give the recording with --imu FILE" in capsys.readouterr().err
    assert main([*common, *imu]) == 2
    assert "--imu is the draft's input" in capsys.readouterr().err
