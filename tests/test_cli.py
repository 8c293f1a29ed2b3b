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
    assert set(st) == {"steps", "accepted_per_step", "budget_per_step", "alpha", "tau", "draft_s", "target_s",
                       "tokens_per_s"}
    assert len(st["accepted_per_step"]) == st["steps"] and 0 <= st["alpha"] <= 1 and st["tau"] >= 1
    assert alone["stats"]["alpha"] is None and alone["stats"]["tau"] == 1


def test_generate_with_trees_and_auto_sizing_equals_target_alone(models, capsys):
    target, draft = models
    common = ["generate", "--target", str(target), "--prompt", "What is the person doing?", "--max-new-tokens", "40",
              "--json"]
    alone = run_json(capsys, *common)["token_ids"]
    tree = run_json(capsys, *common, "--draft", str(draft), "--tree", "6", "--no-adapt")
    assert tree["token_ids"] == alone and set(tree["stats"]["budget_per_step"]) == {6}
    assert main([*common, "--draft", str(draft), "--gamma", "auto", "--tree", "auto"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["token_ids"] == alone
    assert out.err.count("imuspec distill") == 1 and "--draft-layers" in out.err  # a random draft: drafting stopped


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
    assert "known templates: chat, eventgpt_v1, llava_v1, plain, sensorllm, v1, vicuna_v1" in capsys.readouterr().err
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


def paired_models(root):
    """A tiny EventGPT target, a project-trained-style LLaSA draft (config.json ``limu_bert``), an original LLaSA and
    a text draft, all in the target's 32,003-token vocabulary."""
    from dataclasses import asdict

    from test_eventgpt import VOCAB, checkpoint_336
    from test_llasa import write_full_checkpoint

    from imuspec.encoders.limu_bert import LimuBertConfig

    target, _ = checkpoint_336(root)
    trained, _, _ = write_full_checkpoint(root / "trained", VOCAB, limu_bert=asdict(LimuBertConfig()))
    original, _, _ = write_full_checkpoint(root / "original", VOCAB)
    return target, trained, original, text_draft(root / "text", VOCAB)


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    from imuspec.paired import aedat4_windows

    path = fixture_path("aedat4", "davis_sample_short.aedat4")
    return paired_models(tmp_path_factory.mktemp("paired")), path, aedat4_windows(path)


def test_generate_on_a_paired_window(paired, tmp_path, capsys):
    """--paired FILE --window: the target reads the window's events (as the same events in a file), a trained LLaSA
    draft its IMU; the output is the target's alone; an IMU CSV + event file on the same window give the same."""
    from test_eventgpt import QUERY
    from test_paired import write_csv

    from imuspec.events import read_aedat4, write_events

    (target, trained, _, text), path, ws = paired
    window = f"{ws[4].t0_us}:{ws[4].t1_us}"
    common = ["generate", "--target", str(target), "--prompt", QUERY, "--max-new-tokens", "10", "--json"]
    alone = run_json(capsys, *common, "--paired", str(path), "--window", window)
    spec = run_json(capsys, *common, "--paired", str(path), "--window", window, "--draft", str(trained), "--gamma", "3")
    assert spec["token_ids"] == alone["token_ids"] and spec["stats"]["steps"] >= 1
    with_text = run_json(capsys, *common, "--paired", str(path), "--window", window, "--draft", str(text))
    assert with_text["token_ids"] == alone["token_ids"]

    write_events(ws[4].events, tmp_path / "window.npy")
    assert run_json(capsys, *common, "--events", str(tmp_path / "window.npy"))["token_ids"] == alone["token_ids"]
    rec = read_aedat4(path)
    write_csv(tmp_path / "imu.csv", rec.imu)
    write_events(rec.events, tmp_path / "events.h5")
    files = run_json(capsys, *common, "--imu", str(tmp_path / "imu.csv"), "--events", str(tmp_path / "events.h5"),
                     "--window", window, "--draft", str(trained), "--gamma", "3")
    assert files["token_ids"] == alone["token_ids"] and files["stats"]["accepted_per_step"] == spec["stats"]["accepted_per_step"]


def test_generate_paired_errors(paired, capsys):
    (target, trained, original, _), path, ws = paired
    common = ["generate", "--target", str(target), "--prompt", "hi", "--paired", str(path)]
    t0 = ws[0].t0_us
    for window, message in [
        (f"{t0 + 50_000}:{t0}", f"over [{t0 + 50_000}, {t0}) µs: the window is empty or reversed"),
        (f"{t0 - 10**6}:{t0}", "field 't' covers 1605537493.718788..1605537494.307448 s; expected it to cover the window"),
        ("soon:later", "--window 'soon:later': expected START_US:END_US"),
    ]:
        assert main([*common, "--window", window]) == 2
        assert message in capsys.readouterr().err
    assert main(common) == 2
    assert "--paired needs --window START_US:END_US" in capsys.readouterr().err
    assert main([*common, "--window", f"{t0}:{t0 + 50_000}", "--events", str(path)]) == 2
    assert "--paired FILE holds both the events and the IMU" in capsys.readouterr().err
    assert main([*common, "--window", f"{t0}:{t0 + 50_000}", "--draft", str(original)]) == 2
    assert "expected at least 120 (6 s) for a LIMU-BERT window" in capsys.readouterr().err
    assert main(["generate", "--target", str(target), "--prompt", "hi", "--window", f"{t0}:{t0 + 50_000}"]) == 2
    assert "--window needs --paired FILE, or --imu FILE with --events FILE or --video FILE" in capsys.readouterr().err


def test_original_llasa_reads_6s_from_the_window_start(paired, tmp_path, capsys):
    """An original LLaSA reads its usual 6 s from the window's start: the same prompt as a recording cut there by
    hand; end to end through --imu CSV + --video (events simulated) + --window."""
    import numpy as np
    from test_paired import EGO4D_HEADER

    from imuspec.families import open_draft
    from imuspec.imu import from_array, read_imu
    from imuspec.models.llasa import LLaSA
    from imuspec.paired import from_files

    (target, trained, original, _), _, _ = paired
    t = np.arange(0, 8.0, 0.01)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((len(t), 6)) * 0.3
    data[:, 2] += 9.8
    np.savetxt(tmp_path / "imu.csv", np.column_stack([t * 1e3, data]), delimiter=",", header=EGO4D_HEADER, comments="")
    video = fixture_path("videos", "sample_demo_1.mp4")
    s = from_files(tmp_path / "imu.csv", 500_000, 550_000, video=video)
    draft = open_draft(original, None, None)
    k = 50  # the sample at 0.5 s
    by_hand = from_array(data[k:], 100.0, t=t[k:])
    assert torch.equal(draft.embed("hi", s), draft.embed("hi", by_hand))
    assert not torch.equal(draft.embed("hi", s), draft.embed("hi", read_imu(tmp_path / "imu.csv")))
    llasa = LLaSA.from_pretrained(trained)  # a trained draft reads the window itself, as seq_len points
    assert torch.equal(open_draft(trained, None, None).embed("hi", s), llasa.prompt_embeds("hi", s.imu_input(120)))

    out = run_json(capsys, "generate", "--target", str(target), "--prompt", "hi", "--imu", str(tmp_path / "imu.csv"),
                   "--video", str(video), "--window", "500000:550000", "--draft", str(original), "--max-new-tokens",
                   "6", "--json")
    assert out["stats"]["steps"] >= 1
    assert main(["generate", "--target", str(target), "--prompt", "hi", "--imu", str(tmp_path / "imu.csv"), "--video",
                 str(video), "--window", "2500000:2550000", "--draft", str(original)]) == 2
    assert "expected at least 120 (6 s) for a LIMU-BERT window" in capsys.readouterr().err
