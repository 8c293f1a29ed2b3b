"""EventGPT preprocessing latency per sample on CPU: read the .npy, render 5 frames, CLIP image processor at 336.

Usage: python benchmarks/eventgpt_preprocess.py [--repeats 20] [--out benchmarks/results/eventgpt_preprocess_cpu_2026-11-26.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import transformers

from imuspec.events import eventgpt_frames, read_events
from imuspec.events.render import clip_processor

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "eventgpt" / "sample1.npy"


def timed(fn, repeats):
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return float(np.median(runs)) * 1e3, float(np.min(runs)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/eventgpt_preprocess_cpu_2026-11-26.json")
    a = ap.parse_args()
    processor = clip_processor()
    stream = read_events(SAMPLE)
    frames = eventgpt_frames(stream)
    stages = {
        "read .npy (restricted unpickler + validation)": lambda: read_events(SAMPLE),
        "render 5 frames": lambda: eventgpt_frames(stream),
        "CLIP processor (5 x 640x480 -> 5x3x336x336)": lambda: processor(images=frames, return_tensors="pt"),
        "total (read + render + CLIP)": lambda: processor(images=eventgpt_frames(read_events(SAMPLE)),
                                                          return_tensors="pt"),
    }
    rows = []
    for name, fn in stages.items():
        median, best = timed(fn, a.repeats)
        rows.append(dict(stage=name, median_ms=round(median, 2), min_ms=round(best, 2)))
    print(f"sample1.npy: {len(stream)} events, {stream.width}x{stream.height}, {stream.duration_us} µs")
    print(f"{'stage':50s} {'median ms':>10s} {'min ms':>8s}")
    for r in rows:
        print(f"{r['stage']:50s} {r['median_ms']:10.2f} {r['min_ms']:8.2f}")
    out = dict(machine="project CPU, 2 cores, AMD EPYC", date="2026-11-26", python=platform.python_version(),
               numpy=np.__version__, transformers=transformers.__version__,
               command="python benchmarks/eventgpt_preprocess.py", repeats=a.repeats, sample="eventgpt/sample1.npy",
               n_events=len(stream), rows=rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
