"""The command line as a newcomer meets it (issue 15): help, defaults, errors that name the flag, threads, imports."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from imuspec.cli import COMMANDS, build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src"


def _parsers(p: argparse.ArgumentParser, name: str = "imuspec"):
    """Every parser below ``p`` (commands and their sub-commands), with its name."""
    yield name, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, q in action.choices.items():
                yield from _parsers(q, f"{name} {sub}")


def test_top_level_help_imports_no_torch_and_has_no_rst():
    code = ("import sys; from imuspec.cli import main\n"
            "try: main(['--help'])\n"
            "except SystemExit: pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout + out.stderr
    assert "``" not in out.stdout and "`imuspec" not in out.stdout
    for name in COMMANDS:
        assert name in out.stdout


def test_every_flag_has_help_and_shows_its_default():
    for name, p in _parsers(build_parser()):
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
            shown = p._get_formatter()._get_help_string(action)
            d = action.default
            if action.option_strings and d is not None and not isinstance(d, bool) and d is not argparse.SUPPRESS:
                assert "default" in shown, f"{name} {action.option_strings}: default {d!r} not shown"


def test_help_formatter_shows_zero_defaults():
    p = build_parser(["generate"])
    text = p._subparsers._group_actions[0].choices["generate"].format_help()
    assert "(default: 0.0)" in text and "default: 128" in text and "(default: 1.0)" in text


def test_dtypes_live_below_cli_and_evaluate():
    """cli and evaluate share DTYPES from a module below both, so neither imports the other."""
    for f in ("evaluate.py", "demo.py", "train.py"):
        text = (SRC / "imuspec" / f).read_text()
        assert "from .cli import" not in text and "from imuspec.cli import" not in text, f
    from imuspec import runtime

    assert "float32" in runtime.DTYPES and str(runtime.torch_dtype("bfloat16")) == "torch.bfloat16"


def test_threads_follow_the_model_size(monkeypatch):
    import torch

    from imuspec import runtime

    monkeypatch.setattr(runtime, "cores", lambda: 2)
    assert runtime.threads_for(135_000_000) == 1  # SmolLM2-135M: a decode step too small to split
    assert runtime.threads_for(7_000_000_000) == 2  # a 7B target: every core
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert runtime.set_threads(None, 135_000_000) == 1
        assert runtime.set_threads(2, 135_000_000) == 2  # --threads wins
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        assert runtime.set_threads(None, 7_000_000_000) == 2  # the user's OMP_NUM_THREADS: left alone
        with pytest.raises(ValueError, match="--threads 0"):
            runtime.set_threads(0, 1)
    finally:
        torch.set_num_threads(before)


def test_every_model_command_takes_threads():
    for name in ("generate", "eval", "demo", "train"):
        p = build_parser([name])._subparsers._group_actions[0].choices[name]
        assert any("--threads" in a.option_strings for a in p._actions), name
    engine = build_parser(["bench"])._subparsers._group_actions[0].choices["bench"]._subparsers._group_actions[0]
    assert any("--threads" in a.option_strings for a in engine.choices["engine"]._actions)


def test_train_says_which_stage_to_run_first(tmp_path, capsys):
    assert main(["train", "target", "--out", str(tmp_path / "run"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "data.safetensors is missing" in err and "imuspec train data --out" in err
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "data.safetensors").write_bytes(b"")
    assert main(["train", "draft", "--out", str(tmp_path / "run"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "stage 'limu-bert' writes it" in err and "imuspec train limu-bert --out" in err


REPO = SRC.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from test_cli import checkpoint

    root = tmp_path_factory.mktemp("tiny")
    return checkpoint(root / "target", 0, 1, max_pos=64), checkpoint(root / "draft", 1, 1, max_pos=64)


@pytest.mark.parametrize("n", ["0", "-3"])
def test_max_new_tokens_below_one_is_refused(tiny, capsys, n):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--target", str(tiny[0]), "--prompt", "hi", "--max-new-tokens", n])
    assert e.value.code == 2
    assert f"argument --max-new-tokens: expected a positive integer, got {int(n)}" in capsys.readouterr().err
    from imuspec import GenerationConfig

    with pytest.raises(ValueError, match="max_new_tokens .* must be at least 1"):
        GenerationConfig(max_new_tokens=int(n))


def test_cache_error_counts_gamma_only_with_a_draft(tiny, capsys):
    target, draft = tiny
    prompt = "walking " * 20
    assert main(["generate", "--target", str(target), "--prompt", prompt, "--max-new-tokens", "60"]) == 2
    err = capsys.readouterr().err
    assert "with --max-new-tokens 60 it needs" in err and "gamma" not in err
    assert main(["generate", "--target", str(target), "--draft", str(draft), "--prompt", prompt,
                 "--max-new-tokens", "60"]) == 2
    assert "with --max-new-tokens 60 and 4 draft slots (--gamma, --tree) it needs" in capsys.readouterr().err


def test_default_max_new_tokens_fits_the_target(tiny, capsys):
    target, draft = tiny
    from imuspec import Tokenizer

    code = main(["generate", "--target", str(target), "--draft", str(draft), "--prompt", "hi", "--json"])
    out, err = capsys.readouterr()
    room = 64 - len(Tokenizer(target).encode("hi")) - 4  # max_position_embeddings - prompt - draft slots
    assert code == 0 and f"[--max-new-tokens {room}: as many as the models hold after the prompt]" in err
    assert len(json.loads(out)["token_ids"]) <= room


def test_readme_python_snippet_runs_as_written_and_stops_at_eos(capsys):
    readme = (REPO / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out, target = scope["out"], scope["target"]
    assert out.tokens[-1] in target.decoder.config.eos_ids and len(out.tokens) < scope["cfg"].max_new_tokens
    assert capsys.readouterr().out.strip()


def test_readme_eval_example_is_the_headline_command():
    """The README's eval example on the DAVIS file asks the question the pair was trained on (the default query), as
    the headline figures in BENCHMARKS.md did."""
    from imuspec.world import QUERY

    readme = (REPO / "README.md").read_text()
    example = readme.split("imuspec eval --target src/imuspec/weights/target", 1)[1].split("--out", 1)[0]
    assert "davis_sample_short.aedat4" in example and "--query" not in example
    assert QUERY in readme
    recorded = json.loads((REPO / "benchmarks" / "results" / "eval_aedat4" / "summary.json").read_text())
    assert recorded["query"] == QUERY and recorded["n_samples"] == 11


def test_long_commands_show_progress(capsys):
    assert main(["bench", "engine", "--target-shape", "layers=1,hidden=32,heads=2,vocab=64", "--draft-shape",
                 "layers=1,hidden=16,heads=2,vocab=64", "--new-tokens", "8", "--prompt-len", "8", "--no-hf",
                 "--json"]) == 0
    err = capsys.readouterr().err
    for phase in ("calibrating eps", "warming up", "ours: target alone", "ours: speculative"):
        assert phase in err


def test_eval_limits_the_aedat4_windows():
    from conftest import fixture_path

    from imuspec.evaluate import _samples

    a = build_parser(["eval"]).parse_args(["eval", "--target", "t", "--draft", "d", "--out", "o", "--aedat4",
                                           str(fixture_path("aedat4", "davis_sample_short.aedat4")),
                                           "--max-windows", "2"])
    assert [i for i, _ in _samples(a, 0, 1)] == [0, 1]


def test_plots_say_where_they_went(tmp_path, capsys, monkeypatch):
    from conftest import fixture_path

    png = tmp_path / "imu.png"
    assert main(["inspect-imu", str(fixture_path("llasa", "sensorcaps_untrained_10hz.jsonl")), "--index", "0",
                 "--plot", str(png), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) and f"plot written to {png}" in err and png.exists()

    import imuspec.demo

    default = build_parser(["demo"]).parse_args(["demo"]).plot
    assert not Path(default).resolve().is_relative_to(REPO.resolve())  # outside the repository unless asked
    fake = {"text": "x", "alpha": 0.5, "tau": 1.5, "speedup": 1.2, "target_tokens_per_s": 1.0,
            "speculative_tokens_per_s": 1.2, "identical_to_target": True, "plot": default, "_marks": [("x", True)],
            "_sample": {"source": "s", "reference": "r", "activity": "a", "scene": "b"}}
    monkeypatch.setattr(imuspec.demo, "run_demo", lambda *a, **k: dict(fake))
    assert main(["demo"]) == 0
    assert f"written to {default}" in capsys.readouterr().out


def test_errors_name_the_window_flag():
    from conftest import fixture_path

    from imuspec.paired import PairingError, aedat4_windows

    with pytest.raises(PairingError, match=r"expected at least one window of 1000000000 µs \(--window-us\)"):
        aedat4_windows(fixture_path("aedat4", "davis_sample_short.aedat4"), 10**9)


def test_the_shipped_pair_generates_at_its_default_length(capsys):
    """The README's paired example without --max-new-tokens: 128 do not fit the target's 192 positions, so it says
    how many it takes instead of failing."""
    from conftest import fixture_path

    weights = SRC / "imuspec" / "weights"
    code = main(["generate", "--target", str(weights / "target"), "--draft", str(weights / "imu_draft"),
                 "--paired", str(fixture_path("aedat4", "davis_sample_short.aedat4")),
                 "--window", "1605537493868788:1605537493918788", "--prompt", "What am I doing, and what do I see?"])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip(), err
    assert "[--max-new-tokens" in err and "as many as the models hold after the prompt" in err
