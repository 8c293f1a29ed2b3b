"""Video-to-events simulator throughput on CPU: events/s and frames/s on the real fixture videos (full resolution).

Decoding (PyAV) is timed apart from simulation: frames are decoded first, then fed to the simulator.
Usage: python benchmarks/simulator_throughput.py [--repeats 3] [--out benchmarks/results/simulator_cpu_2026-11-26.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from imuspec.events import SimulatorConfig, frames_from_video, simulate

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "videos"
CONFIGS = {
    "default": SimulatorConfig(),
    "default + noise (leak 0.1 Hz, shot 1 Hz)": SimulatorConfig(leak_rate_hz=0.1, shot_noise_rate_hz=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="simulation runs per video; the median is reported")
    ap.add_argument("--out", default="benchmarks/results/simulator_cpu_2026-11-26.json")
    a = ap.parse_args()
    rows = []
    for video in sorted(FIXTURES.glob("*.mp4")):
        t = time.perf_counter()
        frames = list(frames_from_video(video))
        decode_s = time.perf_counter() - t
        h, w = frames[0][0].shape
        for name, cfg in CONFIGS.items():
            runs = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                s = simulate(iter(frames), cfg)
                runs.append(time.perf_counter() - t)
            sim_s = float(np.median(runs))
            rows.append(dict(video=video.name, config=name, width=w, height=h, frames=len(frames),
                             video_s=round(s.duration_us * 1e-6, 3), events=len(s), decode_s=round(decode_s, 3),
                             simulate_s=round(sim_s, 3), events_per_s=round(len(s) / sim_s),
                             frames_per_s=round((len(frames) - 1) / sim_s, 1),
                             realtime_factor=round(s.duration_us * 1e-6 / sim_s, 2)))
    print(f"{'video':20s} {'config':40s} {'size':>8s} {'frames':>6s} {'events':>10s} {'decode s':>8s} "
          f"{'sim s':>7s} {'Mev/s':>6s} {'fps':>6s} {'x real':>6s}")
    for r in rows:
        print(f"{r['video']:20s} {r['config']:40s} {r['width']}x{r['height']:<4d} {r['frames']:6d} {r['events']:10d} "
              f"{r['decode_s']:8.2f} {r['simulate_s']:7.2f} {r['events_per_s'] / 1e6:6.2f} {r['frames_per_s']:6.1f} "
              f"{r['realtime_factor']:6.2f}")
    total_events = sum(r["events"] for r in rows)
    total_s = sum(r["simulate_s"] for r in rows)
    print(f"overall: {total_events / total_s / 1e6:.2f} M events/s")
    out = dict(machine="project CPU, 2 cores, AMD EPYC", date="2026-11-26", python=platform.python_version(),
               numpy=np.__version__, command="python benchmarks/simulator_throughput.py", repeats=a.repeats,
               rows=rows, overall_events_per_s=round(total_events / total_s))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
