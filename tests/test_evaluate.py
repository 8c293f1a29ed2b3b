"""imuspec eval: per-sample rows, summary, table and plot; a 2-process torchrun (gloo) run gives the 1-process
outputs; synthetic samples come from imuspec.world; a speculative output that differs is counted loudly."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import fixture_path
from test_cli import paired_models

import imuspec
from imuspec.cli import main
from imuspec.evaluate import format_table, mean_ci, summarize


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    target, trained, _, text = paired_models(tmp_path_factory.mktemp("eval"))
    return target, trained, text


def args(models, out, *extra):
    target, trained, text = models
    return ["eval", "--target", str(target), "--draft", str(trained), "--text-draft", str(text), "--out", str(out),
            "--max-new-tokens", "8", "--gamma", "3", "--device", "cpu", *extra]


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "samples.jsonl").read_text().splitlines()]


def run(argv, nproc=None):
    """The CLI in a fresh process (one thread each, so both runs reduce in the same order)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(imuspec.__file__).parents[1]))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else [sys.executable]
    return subprocess.run([*launcher, "-m", "imuspec.cli", *argv], env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_give_the_one_process_outputs(models, tmp_path):
    aedat = ["--aedat4", str(fixture_path("aedat4", "davis_sample_short.aedat4")), "--window-us", "100000",
             "--query", "What is happening?"]
    one = run(args(models, tmp_path / "one", *aedat))
    assert one.returncode == 0, one.stderr
    two = run(args(models, tmp_path / "two", *aedat), nproc=2)
    assert two.returncode == 0, two.stderr
    a, b = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["index"] for r in a] == [r["index"] for r in b] == list(range(5))  # 588 ms shared / 100 ms windows
    for ra, rb in zip(a, b):
        assert ra["t0_us"] == rb["t0_us"]
        for mode in ("target", "imu", "text"):
            assert ra[mode]["tokens"] == rb[mode]["tokens"]
        for mode in ("imu", "text"):
            assert ra[mode]["identical_to_target"] and ra[mode]["tokens"] == ra["target"]["tokens"]
            for k in ("alpha", "alpha_token", "tau"):
                assert ra[mode][k] == rb[mode][k]
            assert 0 <= ra[mode]["alpha"] <= 1 and ra[mode]["tau"] >= 1 and ra[mode]["c"] > 0 and ra[mode]["speedup"] > 0
    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s["processes"] == 2 and s["n_samples"] == 5 and s["modes"]["imu"]["mismatches"] == 0
    assert s["modes"]["text"]["alpha"]["n"] == 5 and s["modes"]["text"]["alpha"]["lo"] <= s["modes"]["text"]["alpha"]["mean"]
    assert (tmp_path / "two" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert "mode" in one.stdout and "imu" in one.stdout and "Student-t" in one.stdout


@pytest.fixture
def fake_world(monkeypatch):
    """imuspec.world's interface (written elsewhere): make_samples(seeds, config, progress) -> PairedSamples."""
    from dataclasses import replace

    from imuspec.paired import aedat4_windows

    ws = aedat4_windows(fixture_path("aedat4", "davis_sample_short.aedat4"))
    calls = []

    def make_samples(seeds, config=None, progress=True):
        calls.append(list(seeds))
        return [replace(ws[s % len(ws)], text=f"narration {s}", meta={"seed": s}) for s in seeds]

    world = types.SimpleNamespace(WorldConfig=lambda: None, QUERY="Describe the moment.", make_samples=make_samples)
    monkeypatch.setitem(sys.modules, "imuspec.world", world)
    return calls


def test_synthetic_samples_and_default_query(models, tmp_path, fake_world, capsys):
    assert main(args(models, tmp_path, "--synthetic", "2", "--first-seed", "7")) == 0
    assert fake_world == [[7, 8]]
    r = rows(tmp_path)
    assert [x["meta"] for x in r] == [{"seed": 7}, {"seed": 8}] and r[1]["reference"] == "narration 8"
    assert json.loads((tmp_path / "summary.json").read_text())["query"] == "Describe the moment."
    assert "2 samples" in capsys.readouterr().out


def test_a_differing_output_is_counted_loudly(models, tmp_path, fake_world, monkeypatch, capsys):
    import imuspec.speculative as spec

    real = spec.generate_batch

    def broken(target, prompts, cfg, draft=None, draft_prompts=None):
        gens = real(target, prompts, cfg, draft, draft_prompts)
        if draft is not None:
            gens[0].tokens[-1] += 1
        return gens

    monkeypatch.setattr(spec, "generate_batch", broken)
    assert main(args(models, tmp_path, "--synthetic", "1")) == 1
    err = capsys.readouterr().err
    assert "MISMATCH: sample 0, imu draft" in err and "error: 2 speculative outputs differ" in err
    assert json.loads((tmp_path / "summary.json").read_text())["modes"]["text"]["mismatches"] == 1


def test_mean_ci_is_the_t_interval():
    d = mean_ci([1.0, 2.0, 3.0, None])
    assert d["n"] == 3 and d["mean"] == 2.0
    assert abs(d["lo"] - (2 - 4.302653 / 3 ** 0.5)) < 1e-5 and abs(d["hi"] - (2 + 4.302653 / 3 ** 0.5)) < 1e-5
    assert mean_ci([0.5]) == {"mean": 0.5, "lo": None, "hi": None, "n": 1}
    assert mean_ci([2.0, 2.0])["lo"] == 2.0


def test_imu_minus_text_is_paired_per_sample():
    def mode(alpha, tau, speedup):
        return {"alpha": alpha, "alpha_token": alpha, "tau": tau, "c": 0.1, "speedup": speedup, "tokens_per_s": 1.0,
                "identical_to_target": True}

    rows = [{"target": {"tokens_per_s": 1.0}, "imu": mode(0.5, 3.0, 1.2), "text": mode(0.3, 2.0, 1.0)},
            {"target": {"tokens_per_s": 1.0}, "imu": mode(0.9, 4.0, 1.5), "text": mode(0.6, 3.0, 1.1)}]
    s = summarize(rows, ["target", "imu", "text"])
    assert s["imu_minus_text"]["alpha"]["mean"] == pytest.approx(0.25)
    # the paired interval is the t-interval of the differences (0.2, 0.3), narrower than either mode's own
    assert s["imu_minus_text"]["alpha"]["lo"] == pytest.approx(mean_ci([0.2, 0.3])["lo"])
    assert "imu-text" in format_table(s)


def test_batches_give_the_one_row_outputs(models, tmp_path, fake_world):
    """--batch-size 3 over 5 samples (batches of 3 and 2): every row's tokens and acceptance as decoded one by one."""
    assert main(args(models, tmp_path / "one", "--synthetic", "5")) == 0
    assert main(args(models, tmp_path / "three", "--synthetic", "5", "--batch-size", "3")) == 0
    a, b = rows(tmp_path / "one"), rows(tmp_path / "three")
    assert [r["index"] for r in b] == list(range(5))
    for ra, rb in zip(a, b):
        for mode in ("target", "imu", "text"):
            assert ra[mode]["tokens"] == rb[mode]["tokens"]
        for mode in ("imu", "text"):
            assert rb[mode]["identical_to_target"] and ra[mode]["alpha"] == rb[mode]["alpha"]
    assert json.loads((tmp_path / "three" / "summary.json").read_text())["batch_size"] == 3
