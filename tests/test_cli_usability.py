"""The command line as a newcomer meets it (issue 15): help, defaults, errors that name the flag, threads, imports."""

import argparse
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
    assert "(default: 0.0)" in text and "(default: 128)" in text and "(default: 1.0)" in text


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
