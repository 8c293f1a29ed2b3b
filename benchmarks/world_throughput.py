"""Synthetic-world throughput on CPU: samples/s of `imuspec.world.make_sample` (render + simulate + IMU) and events per
sample for each activity, at the default WorldConfig (128x96, 50 ms, 2000 frames/s, IMU 800 Hz).

Usage: python benchmarks/world_throughput.py [--samples 400] [--out benchmarks/results/world_throughput_cpu_2026-11-26.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from imuspec.world import ACTIVITIES, WorldConfig, make_sample, plan, render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=400, help="seeds 0..samples-1")
    ap.add_argument("--out", default="benchmarks/results/world_throughput_cpu_2026-11-26.json")
    a = ap.parse_args()
    cfg = WorldConfig()
    for s in range(8):  # warm-up: imports and the per-scene texture cache
        make_sample(s, cfg)
    per = defaultdict(lambda: {"events": [], "ms": [], "render_ms": []})
    t_all = time.perf_counter()
    for seed in range(a.samples):
        t = time.perf_counter()
        s = make_sample(seed, cfg)
        ms = (time.perf_counter() - t) * 1e3
        row = per[s.meta["activity"]]
        row["events"].append(len(s.events))
        row["ms"].append(ms)
    total_s = time.perf_counter() - t_all
    times = np.linspace(0, cfg.window_us * 1e-6, int(cfg.window_us * 1e-6 * cfg.render_rate_hz) + 1)
    for seed in range(min(a.samples, 100)):  # the rendering share, timed apart
        p = plan(seed, cfg)
        t = time.perf_counter()
        render(p, times, cfg)
        per[p.activity]["render_ms"].append((time.perf_counter() - t) * 1e3)
    rows = []
    for act in ACTIVITIES:
        r = per[act]
        ev = np.array(r["events"])
        rows.append(dict(activity=act, samples=len(ev), events_min=int(ev.min()), events_median=int(np.median(ev)),
                         events_mean=round(float(ev.mean())), events_max=int(ev.max()),
                         ms_median=round(float(np.median(r["ms"])), 1),
                         render_ms_median=round(float(np.median(r["render_ms"])), 1)))
    print(f"{'activity':15s} {'n':>4s} {'events min':>10s} {'median':>8s} {'mean':>8s} {'max':>8s} "
          f"{'ms/sample':>9s} {'render ms':>9s}")
    for r in rows:
        print(f"{r['activity']:15s} {r['samples']:4d} {r['events_min']:10d} {r['events_median']:8d} "
              f"{r['events_mean']:8d} {r['events_max']:8d} {r['ms_median']:9.1f} {r['render_ms_median']:9.1f}")
    rate = a.samples / total_s
    print(f"overall: {rate:.2f} samples/s ({1e3 / rate:.1f} ms per sample) over {a.samples} samples, one process")
    out = dict(machine="project CPU, 2 cores, AMD EPYC", date="2026-11-26", python=platform.python_version(),
               numpy=np.__version__, command="python benchmarks/world_throughput.py", samples=a.samples,
               config=dict(width=cfg.width, height=cfg.height, window_us=cfg.window_us,
                           render_rate_hz=cfg.render_rate_hz, imu_rate_hz=cfg.imu_rate_hz,
                           shot_noise_rate_hz=cfg.simulator.shot_noise_rate_hz),
               samples_per_s=round(rate, 2), ms_per_sample=round(1e3 / rate, 1), rows=rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
