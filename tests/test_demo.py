"""`imuspec demo` on the shipped pair: the target's own output, the promised JSON, a plot; the weights are the recipe's."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from imuspec.demo import DEMO_SEED, WEIGHTS, accepted_mask, run_demo
from imuspec.train import PRESETS

REPO = Path(__file__).resolve().parents[1]
KEYS = {"text", "alpha", "tau", "speedup", "target_tokens_per_s", "speculative_tokens_per_s", "identical_to_target", "plot"}


def test_shipped_weights_are_the_recipes_and_small():
    size = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"shipped weights are {size / 2**20:.1f} MiB"
    report = json.loads((WEIGHTS / "recipe.json").read_text())
    assert report["config"] == json.loads(json.dumps(asdict(PRESETS["full"])))  # made by today's recipe, as shipped
    first, n = report["config"]["first_seed"], report["config"]["n_samples"]
    assert not first <= DEMO_SEED < first + n, "the demo sample must be held out from training"


def test_accepted_mask():
    # prefill token, then steps keeping 2 of 4 (+1 target token), 4 of 4 (+1), and a last step cut to 2 tokens
    assert accepted_mask([2, 4, 3], [3, 5, 2]) == [False, True, True, False, True, True, True, True, False, True, True]


def test_demo_is_the_target_alone(tmp_path):
    r = run_demo(plot_path=tmp_path / "demo.png", repeats=1)
    assert r["identical_to_target"] is True
    assert 0 <= r["alpha"] <= 1 and r["tau"] >= 1 and r["text"]
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_json_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "imuspec.cli", "demo", "--json", "--plot", str(tmp_path / "p.png")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert set(r) == KEYS and r["identical_to_target"] is True and r["plot"] == str(tmp_path / "p.png")
