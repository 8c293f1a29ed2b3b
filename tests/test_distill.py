"""``imuspec distill``: end to end on the shipped target and real recordings (AEDAT4, a video in the Ego4D layout),
the teacher's stored probabilities, resuming a killed teacher, DDP, and bad input stopped before any work."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from imuspec.checkpoint import save_decoder
from imuspec.cli import main
from imuspec.distill import DistillConfig, distill, distillation, load_teacher, text_prompt_ids, topk_distillation
from imuspec.families import open_draft, open_target
from imuspec.model import Decoder, LlamaConfig
from imuspec.moments import load_moments
from imuspec.speculative import GenerationConfig, generate
from imuspec.world import QUERY

REPO = Path(__file__).resolve().parents[1]
FIX = REPO.parent / "shared" / "fixtures"
AEDAT4 = FIX / "aedat4" / "davis_sample_short.aedat4"
VIDEO = FIX / "videos" / "sample_demo_3.mp4"
TARGET = REPO / "src" / "imuspec" / "weights" / "target"
TEXT_LLAMA = REPO / "src" / "imuspec" / "weights" / "text_draft"
if not AEDAT4.exists() or not VIDEO.exists():
    pytest.skip(f"fixtures absent ({AEDAT4}, {VIDEO})", allow_module_level=True)

CFG = DistillConfig(window_us=50_000, hop_us=20_000, holdout=0.3, epochs=3, max_new_tokens=24, shard_size=4)


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    q = tmp_path_factory.mktemp("q") / "q.txt"
    q.write_text(QUERY + "\n")
    return q


@pytest.fixture(scope="module")
def run(tmp_path_factory, queries):
    """The real AEDAT4 recording (one recording: the held-out part is its last 30 % of time)."""
    out = tmp_path_factory.mktemp("distill") / "d"
    report = distill(TARGET, [str(AEDAT4)], queries, "target:1", "limu-bert", False, CFG, out)
    return out, report


def ego4d_folder(folder: Path) -> Path:
    """The video beside an Ego4D IMU CSV over its first second (200 Hz, ms), the layout ``--data DIR`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clip.mp4").symlink_to(VIDEO)
    t = np.arange(0, 1000, 5.0)
    rows = ["canonical_timestamp_ms,accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z"]
    rows += [f"{x},{np.sin(x / 90):.4f},0.1,9.81,{np.cos(x / 70):.4f},0.0,0.2" for x in t]
    (folder / "clip.csv").write_text("\n".join(rows) + "\n")
    return folder


def _generate(args: list[str], capsys) -> list[int]:
    assert main(["generate", "--target", str(TARGET), "--json", "--max-new-tokens", "24", "--prompt", QUERY, *args]) == 0
    return json.loads(capsys.readouterr().out)["token_ids"]


def test_distilled_draft_beats_its_initialisation_on_held_out_windows(run):
    out, r = run
    assert r["finished"] and r["recordings"] == 1 and r["holdout"].startswith("by time")
    init, best = r["heldout_alpha"][0]["per_item"], r["heldout_alpha"][r["best_epoch"]]["per_item"]
    assert len(init) == r["items"]["heldout"] >= 6
    assert np.mean(best) > np.mean(init)
    p = stats.wilcoxon(best, init, alternative="greater", zero_method="zsplit").pvalue
    assert p < 0.05, (p, init, best)
    assert len(r["losses"]) > 0 and all(map(np.isfinite, r["losses"]))
    assert r["teacher"]["bytes_per_token"] == 6 * 64 + 6 and r["teacher"]["tokens"] > 0
    assert (out / "checkpoint.pt").exists() and (out / "teacher" / "index.json").exists()


def test_written_draft_decodes_as_the_target_alone(run, capsys):
    out, r = run
    window = ["--paired", str(AEDAT4), "--window", "1605537493868788:1605537493918788"]
    alone = _generate(window, capsys)
    assert _generate([*window, "--draft", str(out / "draft")], capsys) == alone
    assert _generate([*window, "--draft", str(out / "draft"), "--draft-layers", "1"], capsys) == alone
    cfg = json.loads((out / "draft" / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama" and cfg["num_hidden_layers"] == 1 and cfg["limu_bert"]["seq_len"] == 40


def test_stored_teacher_probabilities_are_the_targets_own(run):
    """fp16 storage: each stored probability within 1e-3 of the target's float32 softmax; the answer is its greedy one."""
    out, r = run
    target = open_target(TARGET)
    moments = load_moments([str(AEDAT4)], CFG.window_us, CFG.hop_us)
    items = json.loads((out / "teacher" / "index.json").read_text())["items"]
    teacher = load_teacher(out, len(items), CFG.shard_size)
    dec = target.decoder
    dec.setup_cache(256)
    for i in (0, len(items) - 1):
        m, q = items[i]
        prompt = target.embed(q, moments[m].sample.events)
        tokens, ids, p, rest = teacher[i]
        dec.rollback(0)
        eos = tuple(dec.config.eos_ids)
        assert generate(dec, prompt, GenerationConfig(CFG.max_new_tokens, eos_token_ids=eos)).tokens == tokens.tolist()
        dec.rollback(0)
        x = torch.cat([prompt, dec.embed(tokens[:-1].long())])
        full = torch.softmax(dec(embeds=x[None])[0, len(prompt) - 1:], -1)
        torch.testing.assert_close(p.float(), full.gather(-1, ids.long()), rtol=0, atol=1e-3)
        torch.testing.assert_close(rest.float(), 1 - full.gather(-1, ids.long()).sum(-1), rtol=0, atol=2e-3)
        assert (ids[:, 0].long() == full.argmax(-1)).all()


def test_ego4d_video_and_aedat4_held_out_by_recording(tmp_path, queries, capsys):
    folder = ego4d_folder(tmp_path / "ego4d")
    cfg = DistillConfig(window_us=100_000, hop_us=100_000, holdout=0.5, epochs=1, max_new_tokens=12, batch=4)
    r = distill(TARGET, [str(AEDAT4), str(folder)], queries, "target:1", "limu-bert", False, cfg, tmp_path / "d")
    assert r["recordings"] == 2 and r["holdout"].startswith("by recording: 1 of 2")
    # a video window, read as IMU + video on one clock
    target = open_target(TARGET)
    from imuspec.paired import from_files

    s = from_files(folder / "clip.csv", 200_000, 300_000, video=VIDEO)
    draft = open_draft(tmp_path / "d" / "draft", None, target.tokenizer)
    tp, dp = target.embed(QUERY, s.events), draft.embed(QUERY, s)
    for d, n in ((target.decoder, len(tp)), (draft.decoder, len(dp))):
        d.setup_cache(n + 24 + 5)
    g = GenerationConfig(24, 4, eos_token_ids=tuple(target.decoder.config.eos_ids))
    alone = generate(target.decoder, tp, g).tokens
    assert generate(target.decoder, tp, g, draft.decoder, dp).tokens == alone


def test_manifest_and_file_pairs_give_the_same_moments(tmp_path):
    folder = ego4d_folder(tmp_path / "e")
    pair = load_moments([f"{folder / 'clip.csv'}+{VIDEO}"], 100_000, 100_000)
    lines = [{"imu": "e/clip.csv", "video": str(VIDEO), "t0_us": m.sample.t0_us, "t1_us": m.sample.t1_us,
              "query": "where am I?"} for m in pair[:3]]
    (tmp_path / "m.jsonl").write_text("\n".join(map(json.dumps, lines)))
    man = load_moments([str(tmp_path / "m.jsonl")], 1, 1)
    assert [m.query for m in man] == ["where am I?"] * 3
    for a, b in zip(pair, man):
        assert (a.sample.t0_us, a.sample.t1_us) == (b.sample.t0_us, b.sample.t1_us)
        np.testing.assert_array_equal(a.sample.imu_input(40), b.sample.imu_input(40))
    world = load_moments(["world:2"], 1, 1)
    assert len({m.recording for m in world}) == 2


def test_text_only_distillation_of_a_plain_llama(tmp_path, capsys):
    """No --data: each query is a moment; the draft is the target's first layer, decoding losslessly."""
    q = tmp_path / "q.txt"
    q.write_text("\n".join(["What am I doing?", "What do I see?", "Where am I?", "Am I walking?", "Is it a park?",
                            "What is near me?"]) + "\n")
    cfg = DistillConfig(holdout=0.34, epochs=2, max_new_tokens=12, batch=2)
    r = distill(TEXT_LLAMA, None, q, "target:1", None, False, cfg, tmp_path / "d")
    assert r["moments"] == 6 and r["items"]["heldout"] == 2 and not r["imu"]
    args = ["--target", str(TEXT_LLAMA), "--json", "--max-new-tokens", "12", "--prompt", "Where am I?"]
    assert main(["generate", *args]) == 0
    alone = json.loads(capsys.readouterr().out)["token_ids"]
    assert main(["generate", *args, "--draft", str(tmp_path / "d" / "draft")]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == alone


def test_topk_losses_are_the_dense_ones_when_k_is_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    logits, t = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g).softmax(-1)
    lengths = torch.tensor([5, 3, 1])
    ids = torch.arange(11).expand(3, 5, 11)
    for kind in ("tvd", "fkl"):
        torch.testing.assert_close(topk_distillation(logits, ids, t, torch.zeros(3, 5), lengths, kind),
                                   distillation(logits, t, lengths, kind))
    top = t.topk(4, -1)
    rest = 1 - top.values.sum(-1)
    assert float(topk_distillation(t.log(), top.indices, top.values, rest, lengths, "topk-kl")) < 1e-6
    assert float(topk_distillation(logits, top.indices, top.values, rest, lengths, "topk-kl")) > 0.01


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _cli(queries: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "imuspec.cli", "distill", "--target", str(TARGET), "--data", str(AEDAT4), "--queries", str(queries),
            "--draft-init", "target:1", "--window-us", str(CFG.window_us), "--hop-us", str(CFG.hop_us), "--holdout",
            str(CFG.holdout), "--epochs", str(CFG.epochs), "--max-new-tokens", str(CFG.max_new_tokens), "--out",
            str(out), *extra]


def test_two_processes_give_the_one_process_losses(run, queries, tmp_path):
    """torchrun --nproc_per_node 2 (gloo), the same teacher shards: the losses and held-out α of one process."""
    import shutil

    out, one = run
    shutil.copytree(out / "teacher", tmp_path / "d" / "teacher")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           *_cli(queries, tmp_path / "d", "--shard-size", str(CFG.shard_size), "--resume")]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "d" / "distill.json").read_text())
    assert two["world_size"] == 2 and two["teacher"]["shards_computed"] == 0
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=0, atol=1e-5)
    for a, b in zip(two["heldout_alpha"], one["heldout_alpha"]):
        assert a["per_item"] == pytest.approx(b["per_item"], abs=1e-6)


def test_killed_teacher_resumes_without_recomputing_finished_shards(queries, tmp_path):
    out, args = tmp_path / "d", ("--shard-size", "1", "--epochs", "1", "--max-new-tokens", "8", "--hop-us", "40000")
    proc = subprocess.Popen([sys.executable, *_cli(queries, out, *args)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list((out / "teacher").glob("shard-*.safetensors"))) < 3 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "teacher").glob("shard-*.safetensors")}
    n = len(json.loads((out / "teacher" / "index.json").read_text())["items"])
    assert 3 <= len(done) < n, "the run was to be killed mid-way through the teacher"
    assert main(["distill", *_cli(queries, out, *args)[3:]]) == 2  # needs --resume
    cfg = DistillConfig(CFG.window_us, 40_000, CFG.holdout, epochs=1, max_new_tokens=8, shard_size=1)
    r = distill(TARGET, [str(AEDAT4)], queries, "target:1", "limu-bert", False, cfg, out, resume=True)
    assert r["teacher"]["shards_done_before"] == len(done) and r["teacher"]["shards_computed"] == n - len(done)
    assert {p: (out / "teacher" / p).stat().st_mtime_ns for p in done} == done
    assert len(load_teacher(out, n, 1)) == n


@pytest.mark.parametrize("case", ["no_imu", "empty_queries", "other_vocabulary", "long_window", "big_k", "finished"])
def test_bad_input_is_one_clear_line_before_any_work(case, run, queries, tmp_path, capsys):
    out = tmp_path / "new"
    args = {"data": [str(AEDAT4)], "queries": str(queries), "init": "target:1", "extra": [], "out": str(out)}
    want = {"no_imu": "recording without IMU", "empty_queries": "holds no query", "other_vocabulary": "one vocabulary",
            "long_window": "longer than every recording", "big_k": "K=9", "finished": "--resume"}[case]
    if case == "no_imu":
        args["data"] = [str(FIX / "eventgpt" / "sample1.npy")]
    elif case == "empty_queries":
        (tmp_path / "q.txt").write_text("\n")
        args["queries"] = str(tmp_path / "q.txt")
    elif case == "other_vocabulary":
        save_decoder(Decoder(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2)), tmp_path / "llama")
        args["init"] = str(tmp_path / "llama")
    elif case == "long_window":
        args["extra"] = ["--window-us", "10000000"]
    elif case == "big_k":
        args["init"] = "target:9"
    elif case == "finished":
        args["out"] = str(run[0])
    code = main(["distill", "--target", str(TARGET), "--data", *args["data"], "--queries", args["queries"],
                 "--draft-init", args["init"], "--out", args["out"], *args["extra"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and want in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_chat_template_prompt_for_text_targets():
    from imuspec.templates import Tokenizer

    tok = Tokenizer(TEXT_LLAMA)
    assert text_prompt_ids(tok, "hi") == tok.encode("hi")  # no chat template: the query with BOS


def test_training_resumes_from_its_epoch_checkpoint(tmp_path, monkeypatch):
    """Stopped after epoch 1 of 3 and resumed: the losses and held-out α of an uninterrupted run."""
    import imuspec.distill as d

    q = tmp_path / "q.txt"
    q.write_text("\n".join(f"Question number {i}?" for i in range(8)) + "\n")
    cfg = DistillConfig(holdout=0.25, epochs=3, max_new_tokens=8, batch=2)
    straight = distill(TEXT_LLAMA, None, q, "target:1", None, False, cfg, tmp_path / "a")
    calls, real = [], d.heldout_alpha

    def stop_at_epoch_2(*args):
        calls.append(1)
        if len(calls) == 3:  # epoch 0 (the initialisation), epoch 1, then stop
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(d, "heldout_alpha", stop_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        distill(TEXT_LLAMA, None, q, "target:1", None, False, cfg, tmp_path / "b")
    monkeypatch.setattr(d, "heldout_alpha", real)
    resumed = distill(TEXT_LLAMA, None, q, "target:1", None, False, cfg, tmp_path / "b", resume=True)
    assert resumed["teacher"]["shards_computed"] == 0
    torch.testing.assert_close(torch.tensor(resumed["losses"]), torch.tensor(straight["losses"]), rtol=0, atol=1e-6)
    assert [h["per_item"] for h in resumed["heldout_alpha"]] == [h["per_item"] for h in straight["heldout_alpha"]]
