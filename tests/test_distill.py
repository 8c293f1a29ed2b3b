"""``imuspec distill``: end to end on the shipped target and real recordings (AEDAT4, a video in the Ego4D layout),
the teacher's stored probabilities, resuming a killed teacher, DDP, and bad input stopped before any work."""

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from imuspec.checkpoint import save_decoder
from imuspec.cli import main
from imuspec.distill import (DistillConfig, distill, distillation, load_teacher, run_teacher, text_prompt_ids,
                             topk_distillation)
from imuspec.families import open_draft, open_target
from imuspec.model import Decoder, LlamaConfig
from imuspec.moments import DataError, load_moments
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
CHRONOS = FIX / "chronos_dummy"
CHRONOS_CFG = replace(CFG, epochs=2, imu_points=8)  # SensorLLM's prompt: 6 × 9 feature positions, in 192
WINDOW = ["--paired", str(AEDAT4), "--window", "1605537493868788:1605537493918788"]


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


@pytest.fixture(scope="module")
def chronos_run(tmp_path_factory, queries):
    """target:1 with Chronos (the chronos project's own tiny checkpoint): a SensorLLM-layout draft."""
    if not CHRONOS.exists():
        pytest.skip(f"fixture absent ({CHRONOS})")
    out = tmp_path_factory.mktemp("chronos") / "d"
    report = distill(TARGET, [str(AEDAT4)], queries, "target:1", f"chronos:{CHRONOS}", False, CHRONOS_CFG, out)
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


def test_chronos_draft_is_sensorllm_and_decodes_as_the_target_alone(chronos_run, capsys):
    """SensorLLM's layout, its tags appended after the target's 384 ids (the target's vocabulary a prefix of the
    draft's); generate finds the recorded Chronos, drafts the target's ids directly and gives the target's output."""
    from safetensors import safe_open

    from imuspec.templates import Tokenizer

    out, r = chronos_run
    folder = out / "draft"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "sensorllmstage2" and cfg["num_hidden_layers"] == 1 and cfg["imu_points"] == 8
    assert Path(cfg["pt_encoder_backbone_ckpt"]) == CHRONOS.resolve() and cfg["vocab_size"] == 400
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {k for k in f.keys() if k.startswith("model.ts_proj.")} == {f"model.ts_proj.{i}.{w}" for i in (0, 2, 4)
                                                                          for w in ("weight", "bias")}
    vocab = Tokenizer(folder).hf.get_vocab()
    assert min(vocab[t] for t in ("<ts>", "<x_acc_start>", "<z_gyro_end>")) >= 384
    assert r["items"]["heldout"] >= 6 and r["heldout_alpha"][r["best_epoch"]]["mean"] > r["heldout_alpha"][0]["mean"]
    alone = _generate(WINDOW, capsys)
    assert main(["generate", "--target", str(TARGET), "--json", "--max-new-tokens", "24", "--prompt", QUERY,
                 *WINDOW, "--draft", str(folder)]) == 0
    got, err = capsys.readouterr()
    assert json.loads(got)["token_ids"] == alone and "drafting the target's ids only" in err


def test_chronos_draft_reads_the_window_it_was_trained_on(chronos_run, tmp_path):
    """The draft reads the window's IMU (as in training: the same prompt embeddings, whatever the recording holds
    after it); without the recorded imu_points, as an original SensorLLM checkpoint, it reads from the window's
    start on."""
    from imuspec.imu.preprocess import starting_at

    out, _ = chronos_run
    target = open_target(TARGET)
    s = load_moments([str(AEDAT4)], CFG.window_us, CFG.hop_us)[3].sample
    cut = replace(s, imu=starting_at(s.imu, s.t0_us * 1e-6))
    cut = replace(cut, imu=replace(cut.imu, t=cut.imu.t[:80], accel=cut.imu.accel[:80], gyro=cut.imu.gyro[:80],
                                   mag=None if cut.imu.mag is None else cut.imu.mag[:80]))
    draft = open_draft(out / "draft", None, target.tokenizer)
    torch.testing.assert_close(draft.embed(QUERY, s), draft.embed(QUERY, cut), rtol=0, atol=1e-5)
    original = tmp_path / "original"
    shutil.copytree(out / "draft", original)
    cfg = json.loads((original / "config.json").read_text())
    del cfg["imu_points"]
    (original / "config.json").write_text(json.dumps(cfg))
    old = open_draft(original, None, target.tokenizer)
    assert old.embed(QUERY, s).shape != draft.embed(QUERY, s).shape  # the rest of the recording, not 8 points


def test_sensorllm_folder_as_initialisation(chronos_run, queries, tmp_path, capsys):
    """The chronos run's draft as --draft-init DIR:1 with its recorded Chronos (the run's teacher): before training
    it is that draft, so its held-out α is the run's best, per item; trained further it still decodes as the
    target alone."""
    out, first = chronos_run
    shutil.copytree(out / "teacher", tmp_path / "d" / "teacher")
    cfg = replace(CHRONOS_CFG, epochs=1)
    r = distill(TARGET, [str(AEDAT4)], queries, f"{out / 'draft'}:1", None, False, cfg, tmp_path / "d", resume=True)
    assert r["teacher"]["shards_computed"] == 0 and r["imu_encoder"] == "chronos"
    assert r["heldout_alpha"][0]["per_item"] == pytest.approx(first["heldout_alpha"][first["best_epoch"]]["per_item"],
                                                             abs=1e-6)
    assert _generate([*WINDOW, "--draft", str(tmp_path / "d" / "draft")], capsys) == _generate(WINDOW, capsys)


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


def narrations(folder: Path) -> None:
    """Ego4D's narration.json for the clip: two narrations in the window [200, 300) ms, one in [500, 600) ms."""
    said = [{"timestamp_sec": 0.21, "narration_text": "#C C opens the door", "annotation_uid": "a"},
            {"timestamp_sec": 0.29, "narration_text": "#C C looks at #O a man"},
            {"timestamp_sec": 0.55, "narration_text": "#C C opens the door"}]
    (folder / "narration.json").write_text(json.dumps({"clip": {"narration_pass_1": {"narrations": said}},
                                                       "other": {"narration_pass_1": {"narrations": said}}}))


def test_ego4d_narrations_are_extra_queries_of_the_windows_that_hold_them(tmp_path):
    folder = ego4d_folder(tmp_path / "e")
    narrations(folder)
    moments = load_moments([str(folder)], 100_000, 100_000)
    extra = {i: m.extra for i, m in enumerate(moments) if m.extra}  # windows from the first event (4.3 ms)
    assert extra == {2: ("C opens the door", "C looks at a man"), 5: ("C opens the door",)}
    assert moments[2].sample.t0_us <= 210_000 and moments[2].sample.t1_us > 290_000
    assert moments[2].queries([QUERY]) == [QUERY, "C opens the door", "C looks at a man"]
    assert moments[0].queries([QUERY]) == [QUERY]
    (folder / "narration.json").write_text('{"clip": {"narration_pass_1": {"narrations": [{"timestamp_sec": 1}]}}}')
    with pytest.raises(DataError, match="narration.json: expected Ego4D's narrations"):
        load_moments([str(folder)], 100_000, 100_000)


def test_ego4d_video_and_aedat4_held_out_by_recording(tmp_path, queries, capsys):
    folder = ego4d_folder(tmp_path / "ego4d")
    narrations(folder)
    cfg = DistillConfig(window_us=100_000, hop_us=100_000, holdout=0.5, epochs=1, max_new_tokens=12, batch=4)
    r = distill(TARGET, [str(AEDAT4), str(folder)], queries, "target:1", "limu-bert", False, cfg, tmp_path / "d")
    assert r["recordings"] == 2 and r["holdout"].startswith("by recording: 1 of 2")
    assert sum(r["items"].values()) == r["moments"] + 3  # the narrations: 3 extra (moment, query) items
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


def test_batched_teacher_stores_what_one_at_a_time_does(run, tmp_path):
    """--teacher-batch 3 (generate_batch) over the first two shards of the run's items: the same shard files'
    contents as the run's one-at-a-time teacher, exactly."""
    out, r = run
    target = open_target(TARGET)
    moments = load_moments([str(AEDAT4)], CFG.window_us, CFG.hop_us)
    items = json.loads((out / "teacher" / "index.json").read_text())["items"][: 2 * CFG.shard_size]
    (tmp_path / "teacher").mkdir()
    got = run_teacher(target, lambda i: target.embed(items[i][1], moments[items[i][0]].sample.events), len(items),
                      tmp_path, CFG.shard_size, CFG.max_new_tokens, 64, batch=3)
    assert got["batch"] == 3 and got["shards_computed"] == 2
    for a, b in zip(load_teacher(tmp_path, len(items), CFG.shard_size), load_teacher(out, len(items), CFG.shard_size)):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_imu_span_ends_with_the_window_and_follows_a_shorter_recording(run, queries, tmp_path, capsys):
    """--imu-span-us 300000 over 50 ms windows (the run's teacher): the draft reads the 300 ms ending with each
    window, from the recording's start where it began later, in training and in generate; decoding stays lossless."""
    import shutil
    from dataclasses import replace

    from imuspec.imu.preprocess import span_input, starting_at

    out, _ = run
    shutil.copytree(out / "teacher", tmp_path / "d" / "teacher")
    cfg = replace(CFG, epochs=1, imu_span_us=300_000)
    r = distill(TARGET, [str(AEDAT4)], queries, "target:1", "limu-bert", False, cfg, tmp_path / "d", resume=True)
    assert r["teacher"]["shards_computed"] == 0 and r["config"]["imu_span_us"] == 300_000
    draft_dir = tmp_path / "d" / "draft"
    assert json.loads((draft_dir / "config.json").read_text())["imu_span_us"] == 300_000
    target = open_target(TARGET)
    draft = open_draft(draft_dir, None, target.tokenizer)
    moments = load_moments([str(AEDAT4)], CFG.window_us, CFG.hop_us)
    late, early = moments[-1].sample, moments[2].sample
    start = int(np.ceil(early.imu.t[0] * 1e6))
    assert late.t1_us - 300_000 > start and early.t1_us - 300_000 < start
    for s, t0 in ((late, late.t1_us - 300_000), (early, start)):
        wide = replace(s, t0_us=t0)  # the span as a window of its own
        torch.testing.assert_close(draft.embed(QUERY, s), draft.embed(QUERY, wide), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(early.imu_input(40, 300_000), span_input(early.imu, early.imu.t[0], early.t1_us * 1e-6, 40))
    window_only = replace(late, imu=starting_at(late.imu, late.t0_us * 1e-6))  # a recording that begins with the window
    assert not torch.allclose(draft.embed(QUERY, late), draft.embed(QUERY, window_only), atol=1e-3)
    window = ["--paired", str(AEDAT4), "--window", "1605537493868788:1605537493918788"]
    assert _generate([*window, "--draft", str(draft_dir)], capsys) == _generate(window, capsys)


def test_video_llava_target_sees_the_frames_of_each_window(tmp_path, queries):
    """A tiny Video-LLaVA target on IMU+VIDEO: the teacher's answers are the target's own on the window's 8 frames
    (as shown at 8 instants of the window), and the distilled IMU draft decodes losslessly with it."""
    from test_videollava import tiny_checkpoint

    from imuspec.models.videollava import N_FRAMES
    from imuspec.moments import WindowFrames
    from imuspec.video import iter_frames, video_pixels

    folder = ego4d_folder(tmp_path / "e")
    target_dir, _ = tiny_checkpoint(tmp_path / "vl")
    cfg = DistillConfig(window_us=200_000, hop_us=200_000, holdout=0.4, epochs=1, max_new_tokens=8, batch=2,
                        shard_size=2, teacher_batch=2)
    data = [f"{folder / 'clip.csv'}+{VIDEO}"]
    r = distill(target_dir, data, queries, "target:1", "limu-bert", False, cfg, tmp_path / "d")
    assert r["finished"] and r["moments"] == 4
    target = open_target(target_dir)
    moments = load_moments(data, cfg.window_us, cfg.hop_us)
    s = moments[1].sample
    shown = WindowFrames(N_FRAMES)(VIDEO, s.t0_us, s.t1_us)
    cursor = WindowFrames(N_FRAMES)  # one pass forward, and back: each window's frames as a fresh decode's
    for m in [*moments, moments[0]]:
        w = (VIDEO, m.sample.t0_us, m.sample.t1_us)
        np.testing.assert_array_equal(cursor(*w), WindowFrames(N_FRAMES)(*w))
    times = [t for t, _ in iter_frames(VIDEO)][:20]
    first = max(i for i, t in enumerate(times) if t * 1e6 <= s.t0_us + (s.t1_us - s.t0_us) / 16)
    np.testing.assert_array_equal(shown[0], list(iter_frames(VIDEO))[first][1])
    tp = target.embed(QUERY, video_pixels(shown, 28))
    draft = open_draft(tmp_path / "d" / "draft", None, target.tokenizer)
    dp = draft.embed(QUERY, s)
    for d, n in ((target.decoder, len(tp)), (draft.decoder, len(dp))):
        d.setup_cache(n + 8 + 5)
    g = GenerationConfig(8, 4, eos_token_ids=tuple(target.decoder.config.eos_ids))
    alone = generate(target.decoder, tp, g).tokens
    assert load_teacher(tmp_path / "d", 4, 2)[1][0].tolist() == alone
    assert generate(target.decoder, tp, g, draft.decoder, dp).tokens == alone
    with pytest.raises(ValueError, match="it sees video frames, and --data .*aedat4 has none"):
        distill(target_dir, [str(AEDAT4)], queries, "target:1", "limu-bert", False, cfg, tmp_path / "d2")


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
    """torchrun --nproc_per_node 2 (gloo), the same teacher shards: the losses of one process to 1e-6 (every step)
    and its held-out α."""
    import shutil

    out, one = run
    shutil.copytree(out / "teacher", tmp_path / "d" / "teacher")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           *_cli(queries, tmp_path / "d", "--shard-size", str(CFG.shard_size), "--resume")]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "d" / "distill.json").read_text())
    assert two["world_size"] == 2 and two["teacher"]["shards_computed"] == 0
    diff = max(abs(a - b) for a, b in zip(two["losses"], one["losses"], strict=True))
    assert diff <= 1e-6, diff  # measured 3.0e-8 (fp32 all-reduce order), 2026-12-01
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


@pytest.mark.parametrize("case", ["no_imu", "empty_queries", "other_vocabulary", "long_window", "big_k", "finished",
                                  "short_span", "no_chronos_folder", "chronos_without_folder", "no_recorded_chronos",
                                  "sensorllm_other_vocabulary", "sensorllm_big_k", "long_sensorllm_prompt"])
def test_bad_input_is_one_clear_line_before_any_work(case, run, queries, tmp_path, capsys):
    out = tmp_path / "new"
    args = {"data": [str(AEDAT4)], "queries": str(queries), "init": "target:1", "extra": [], "out": str(out)}
    want = {"no_imu": "recording without IMU", "empty_queries": "holds no query", "other_vocabulary": "one vocabulary",
            "long_window": "longer than every recording", "big_k": "K=9", "finished": "--resume",
            "short_span": "shorter than --window-us", "no_chronos_folder": "no config.json there; expected a Chronos",
            "chronos_without_folder": "expected chronos:DIR", "no_recorded_chronos": "give one with --imu-encoder chronos:DIR",
            "sensorllm_other_vocabulary": "nor the target's with tokens appended after it; distillation needs one vocabulary",
            "sensorllm_big_k": "K=9, but the decoder has 1 layers",
            "long_sensorllm_prompt": "past its LLM's max_position_embeddings 192; give fewer --imu-points"}[case]
    if case.startswith(("no_chronos", "chronos_", "no_recorded", "sensorllm", "long_sensorllm")) and not CHRONOS.exists():
        pytest.skip(f"fixture absent ({CHRONOS})")
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
    elif case == "short_span":
        args["extra"] = ["--imu-span-us", "10000"]
    elif case == "no_chronos_folder":
        args["extra"] = ["--imu-encoder", f"chronos:{tmp_path / 'nowhere'}"]
    elif case == "chronos_without_folder":
        args["extra"] = ["--imu-encoder", "chronos"]
    elif case in ("no_recorded_chronos", "sensorllm_big_k"):
        folder = sensorllm_folder(tmp_path / "s")
        if case == "no_recorded_chronos":
            cfg = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**cfg, "pt_encoder_backbone_ckpt": "amazon/chronos-t5-large"}))
        args["init"], args["extra"] = f"{folder}:9" if case == "sensorllm_big_k" else str(folder), ["--imu-points", "8"]
    elif case == "sensorllm_other_vocabulary":
        pytest.importorskip("chronos", reason="chronos-forecasting (test extra) is not installed")
        from test_sensorllm import write_checkpoint

        args["init"] = str(write_checkpoint(tmp_path / "s")[0])  # LLaMA-2's vocabulary and SensorLLM's tags
    elif case == "long_sensorllm_prompt":
        args["extra"] = ["--imu-encoder", f"chronos:{CHRONOS}"]  # 40 points: 6 × 41 feature positions
    code = main(["distill", "--target", str(TARGET), "--data", *args["data"], "--queries", args["queries"],
                 "--draft-init", args["init"], "--out", args["out"], *args["extra"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and want in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def sensorllm_folder(folder: Path) -> Path:
    """A SensorLLM-layout draft (target:1 + Chronos), trained for no step: the draft a distill run would write."""
    import imuspec.distill as d
    from imuspec.templates import Tokenizer

    target = open_target(TARGET)
    draft, c = d.build_draft(d.Init("target", 1), target.decoder, TARGET, f"chronos:{CHRONOS}", CHRONOS_CFG)
    d.save_draft(draft, c, Tokenizer(TARGET), folder)
    return folder


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


# --- OneLLM drafts: target:K with OneLLM's IMU path, and a OneLLM checkpoint as the initialisation ---

@pytest.fixture(scope="module")
def tiny_onellm_dir(tmp_path_factory):
    """A tiny random OneLLM on the target's tokenizer and vocabulary (384), saved with its params.json (as if
    distilled before: it reads the 2 s ending with a window)."""
    from test_onellm import tiny_onellm

    from imuspec.templates import Tokenizer

    folder = tmp_path_factory.mktemp("tiny_onellm")
    tiny_onellm(folder, Tokenizer(TARGET), 384, imu_span_us=2_000_000)
    return folder


def _distill_on_run_teacher(run, queries, out: Path, init: str, imu_encoder):
    """A draft distilled on the teacher shards of the module's run (the same target, data and items)."""
    import shutil

    shutil.copytree(run[0] / "teacher", out / "teacher")
    return distill(TARGET, [str(AEDAT4)], queries, init, imu_encoder, False, CFG, out, resume=True)


def _teacher_forced_alpha(out: Path, r: dict, draft_dir: Path, n: int = 3) -> list[tuple[float, float]]:
    """Per held-out item: (α as generate's draft family computes it, teacher-forced on the stored answer; α that
    distillation recorded for it at the best epoch). Equal only where generate reads the input and prompt the draft
    was trained on."""
    target = open_target(TARGET)
    draft = open_draft(draft_dir, None, target.tokenizer)
    moments = load_moments([str(AEDAT4)], CFG.window_us, CFG.hop_us)
    items = json.loads((out / "teacher" / "index.json").read_text())["items"]
    teacher = load_teacher(out, len(items), CFG.shard_size)
    best = r["heldout_alpha"][r["best_epoch"]]["per_item"]
    dec, got = draft.decoder, []
    for j, (m, q) in enumerate(r["heldout_items"][:n]):
        tokens = teacher[items.index([m, q])][0].long()
        p = draft.embed(q, moments[m].sample)
        x = torch.cat([p, dec.embed(tokens[:-1])])
        dec.setup_cache(len(x))
        with torch.no_grad():
            pred = dec(embeds=x[None])[0, len(p) - 1:].argmax(-1)
        got.append((float((pred == tokens).float().mean()), best[j]))
    return got


@pytest.fixture(scope="module")
def onellm_run(run, queries, tiny_onellm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onellm") / "d"
    pth = tiny_onellm_dir / "consolidated.00-of-01.pth"
    return out, _distill_on_run_teacher(run, queries, out, "target:1", f"onellm:{pth}")


def test_onellm_draft_from_the_target_trains_its_projection_and_decodes_as_the_target_alone(onellm_run, tiny_onellm_dir,
                                                                                            capsys):
    """target:1 + OneLLM's IMU path: saved as a OneLLM folder (.pth + params.json + tokenizer) holding the target's
    first layer, OneLLM's frozen IMU path and the trained 32-wide → 256-wide projection; generate loads it with no
    tokenizer folder and gives the target's own output, in eval too; held-out α rises over the epochs."""
    from imuspec.models.onellm import OneLLM

    out, r = onellm_run
    assert r["finished"] and r["teacher"]["shards_computed"] == 0
    draft_dir = out / "draft"
    assert sorted(p.name for p in draft_dir.iterdir()) == ["consolidated.00-of-01.pth", "params.json", "tokenizer.json",
                                                           "tokenizer_config.json"]
    params = json.loads((draft_dir / "params.json").read_text())
    assert (params["dim"], params["n_layers"], params["vocab_size"], params["imu_span_us"]) == (256, 1, 384, 2_000_000)
    draft, tiny = OneLLM.from_pretrained(draft_dir), OneLLM.from_pretrained(tiny_onellm_dir)
    mine, theirs = draft.encoder.state_dict(), tiny.encoder.state_dict()
    frozen = [k for k in mine if not k.startswith(("clip_proj2", "start_tag", "end_tag"))]
    assert all(torch.equal(mine[k], theirs[k]) for k in frozen) and mine["clip_proj2.0.weight"].shape == (256, 32)
    h = [x["mean"] for x in r["heldout_alpha"]]
    assert max(h[1:]) > h[0], h
    window = ["--paired", str(AEDAT4), "--window", "1605537493868788:1605537493918788"]
    alone = _generate(window, capsys)
    assert _generate([*window, "--draft", str(draft_dir)], capsys) == alone
    assert main(["eval", "--target", str(TARGET), "--draft", str(draft_dir), "--aedat4", str(AEDAT4), "--max-windows",
                 "2", "--max-new-tokens", "16", "--out", str(out.parent / "eval")]) == 0
    summary = json.loads((out.parent / "eval" / "summary.json").read_text())
    assert summary["n_samples"] == 2 and summary["modes"]["imu"]["mismatches"] == 0


def test_onellm_draft_reads_in_generate_what_it_was_trained_on(onellm_run):
    """Generate's draft family on held-out items gives, teacher-forced, the very α distillation recorded for them:
    the same 2 s ending with each window (from the recording's start: the DAVIS file is 0.59 s), the same prompt."""
    from dataclasses import replace

    from imuspec.imu.preprocess import starting_at

    out, r = onellm_run
    for ours, recorded in _teacher_forced_alpha(out, r, out / "draft"):
        assert ours == pytest.approx(recorded, abs=1e-6)
    target = open_target(TARGET)
    draft = open_draft(out / "draft", None, target.tokenizer)
    s = load_moments([str(AEDAT4)], CFG.window_us, CFG.hop_us)[-1].sample
    start = int(np.ceil(s.imu.t[0] * 1e6))
    torch.testing.assert_close(draft.embed(QUERY, s), draft.embed(QUERY, replace(s, t0_us=start)), rtol=0, atol=1e-5)
    window_only = replace(s, imu=starting_at(s.imu, s.t0_us * 1e-6))  # differs by ~1e-3 (a random tiny IMU path)
    assert not torch.allclose(draft.embed(QUERY, s), draft.embed(QUERY, window_only), rtol=0, atol=1e-4)


def test_onellm_checkpoint_as_the_initialisation(run, queries, tiny_onellm_dir, tmp_path, capsys):
    """--draft-init ONELLM:1: its LLM cut to one layer and its own IMU path (its projection and tags kept, then
    trained): epoch 0's held-out α is the cut checkpoint's own, as generate computes it; the draft decodes losslessly."""
    from imuspec.distill import Init, build_draft
    from imuspec.models.onellm import OneLLM

    m = OneLLM.from_pretrained(tiny_onellm_dir)
    d, c = build_draft(Init.parse(f"{tiny_onellm_dir}:1"), open_target(TARGET).decoder, TARGET, "onellm", CFG)
    mine, theirs = d.path.encoder.state_dict(), m.encoder.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)  # all kept
    trained = {k for k, p in d.path.named_parameters() if p.requires_grad}
    assert trained == {"encoder.start_tag", "encoder.end_tag", "encoder.clip_proj2.0.weight",
                       "encoder.clip_proj2.0.bias", "encoder.clip_proj2.1.weight", "encoder.clip_proj2.1.bias"}
    assert c.num_hidden_layers == 1 and torch.equal(d.lm.model.layers[0].mlp.up_proj.weight,
                                                    m.decoder.model.layers[0].mlp.up_proj.weight)
    out = tmp_path / "d"
    r = _distill_on_run_teacher(run, queries, out, f"{tiny_onellm_dir}:1", None)
    assert r["imu_encoder"] == "onellm" and r["draft"]["layers"] == 1
    params = json.loads((out / "draft" / "params.json").read_text())
    assert (params["dim"], params["n_layers"], params["imu_span_us"]) == (64, 1, 2_000_000)
    cut = tmp_path / "cut"
    from imuspec.model import first_layers

    first_layers(m.decoder, 1)
    m.save_pretrained(cut)
    r0 = {**r, "best_epoch": 0}
    for ours, recorded in _teacher_forced_alpha(out, r0, cut):
        assert ours == pytest.approx(recorded, abs=1e-6)
    window = ["--paired", str(AEDAT4), "--window", "1605537493868788:1605537493918788"]
    assert _generate([*window, "--draft", str(out / "draft")], capsys) == _generate(window, capsys)


@pytest.mark.parametrize("case", ["bare_onellm", "absent_pth", "other_vocabulary", "big_k", "bad_params"])
def test_onellm_bad_input_is_one_clear_line_before_any_work(case, queries, tiny_onellm_dir, tmp_path, capsys):
    import shutil

    out, init, enc = tmp_path / "new", "target:1", []
    if case == "bare_onellm":
        enc, want = ["--imu-encoder", "onellm"], "imuspec ships no OneLLM weights; expected onellm:PTH"
    elif case == "absent_pth":
        enc, want = ["--imu-encoder", f"onellm:{tmp_path / 'absent.pth'}"], "absent.pth: file not found"
    elif case == "other_vocabulary":
        from test_onellm import tiny_onellm

        from imuspec.templates import Tokenizer

        tiny_onellm(tmp_path / "o", Tokenizer(FIX / "llama2_tokenizer"), 32000, n_layers=1)
        init, want = str(tmp_path / "o"), "a OneLLM of vocab_size 32000, the target's"
    elif case == "big_k":
        init, want = f"{tiny_onellm_dir}:9", "K=9, but the decoder has 2 layers"
    else:
        shutil.copytree(tiny_onellm_dir, tmp_path / "o")
        d = json.loads((tmp_path / "o" / "params.json").read_text())
        (tmp_path / "o" / "params.json").write_text(json.dumps({**d, "n_kv_heads": 2}))
        init, want = f"{tmp_path / 'o'}:1", "params.json: field 'n_kv_heads' is not one OneLLM reads"
    code = main(["distill", "--target", str(TARGET), "--data", str(AEDAT4), "--queries", str(queries),
                 "--draft-init", init, *enc, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and want in err and len(err.splitlines()) == 1, err
    assert not out.exists()
