"""The training recipe's cost on this CPU: every stage of the full recipe (full model sizes) run for a few steps on a
few samples, its measured rate, and the full recipe's time at that rate (an extrapolation: the full recipe takes
hours on two cores; its measured wall time on the device is in src/imuspec/weights/recipe.json).

    python benchmarks/train_cpu_rate.py [--samples 128] [--steps 8]
"""

import argparse
import json
import platform
import tempfile
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

from imuspec.demo import WEIGHTS
from imuspec.train import PRESETS, recipe


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", default=f"benchmarks/results/train_cpu_rate_{date.today()}.json")
    a = p.parse_args()
    full = PRESETS["full"]
    stages = {"target_stage": full.target_stage, "limu_stage": full.limu_stage, "draft_stage": full.draft_stage}
    quick = replace(full, n_samples=a.samples, **{k: replace(s, epochs=a.steps * s.batch / a.samples, warmup=1)
                                                  for k, s in stages.items()})
    with tempfile.TemporaryDirectory() as tmp:
        seconds = recipe(quick, Path(tmp), ["data", "target", "limu-bert", "teacher", "draft", "text-draft"])["seconds"]
    full_steps = {k: round(s.epochs * (full.n_samples // s.batch)) for k, s in stages.items()}
    rows = [  # stage, measured seconds, unit count in the quick run, unit, units in the full recipe
        ("data", seconds["data"], a.samples, "sample", full.n_samples),
        ("target", seconds["target"], a.steps, "step", full_steps["target_stage"]),
        ("limu-bert", seconds["limu-bert"], a.steps, "step", full_steps["limu_stage"]),
        ("teacher", seconds["teacher"], a.samples, "sample", full.n_samples),
        ("imu-draft", seconds["imu-draft"], a.steps, "step", full_steps["draft_stage"]),
        ("text-draft", seconds["text-draft"], a.steps, "step", full_steps["draft_stage"]),
    ]
    device = json.loads((WEIGHTS / "recipe.json").read_text())["seconds"]
    print(f"{'stage':<11} {'s / unit':>9} {'unit':>7} {'full units':>10} {'full (est.) h':>14} {'shipped run s':>14}")
    out = []
    for name, s, n, unit, n_full in rows:
        est = s / n * n_full
        out.append({"stage": name, "seconds_per_unit": s / n, "unit": unit, "full_units": n_full, "full_estimate_s": est,
                    "shipped_run_s": device.get(name)})
        print(f"{name:<11} {s / n:>9.3f} {unit:>7} {n_full:>10} {est / 3600:>14.2f} {device.get(name, 0):>14.1f}")
    total = sum(r["full_estimate_s"] for r in out)
    print(f"{'total':<11} {'':>9} {'':>7} {'':>10} {total / 3600:>14.2f} {sum(r['shipped_run_s'] or 0 for r in out):>14.1f}")
    Path(a.out).write_text(json.dumps({"date": str(date.today()), "machine": platform.processor() or platform.machine(),
                                       "threads": torch.get_num_threads(), "samples": a.samples, "steps": a.steps,
                                       "stages": out, "full_estimate_s": total}, indent=1))


if __name__ == "__main__":
    main()
