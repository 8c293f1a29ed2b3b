"""Peak memory (max RSS) of reading a long IMU CSV and of simulating events from a long video (issue 15, item 7).

Each case runs in a fresh Python process that imports imuspec, resets its RSS high-water mark and reports the peak
of the case (``VmHWM``) and its growth over the RSS after imports; ``import only`` is the floor. Inputs are generated
once under /tmp, never in the repository: an Ego4D-layout CSV of ``--rows`` rows at 200 Hz, and a video of
``--video-s`` seconds made by looping the fixture ``sample_demo_1.mp4`` (640x360, 25 fps). The in-memory paths (a
whole CSV; ``simulate-events`` to ``.npy``, which holds the stream as main did for every output) are measured beside
the bounded ones.

Usage: python benchmarks/peak_memory.py [--rows 10000000] [--video-s 36]
       [--out benchmarks/results/peak_memory_cpu_2026-12-01.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT / ".." / "shared" / "fixtures" / "videos" / "sample_demo_1.mp4"
HEADER = "canonical_timestamp_ms,accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z"

# the modules are imported first (torch comes with imuspec: ~400 MB), then the high-water mark is reset (Linux:
# "5" > /proc/self/clear_refs), so VmHWM is the peak of the case itself; its growth is peak - base
CHILD = """
import json, time
import imuspec.cli, imuspec.events, imuspec.events.simulator, imuspec.imu.readers, imuspec.video, h5py
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
t = time.perf_counter()
{body}
print(json.dumps({{"base_rss_mb": base, "peak_rss_mb": status("VmHWM:"), "wall_s": time.perf_counter() - t,
                   "result": result}}))
"""


def make_csv(path: Path, rows: int, chunk: int = 500_000) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write(HEADER + "\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            t = 1_600_000_000_000.0 + (start + np.arange(n)) * 5.0  # ms, 200 Hz
            data = np.c_[t, 0.2 * rng.standard_normal((n, 3)) + [0.0, 9.81, 0.0], 0.3 * rng.standard_normal((n, 3))]
            np.savetxt(f, data, delimiter=",", fmt=["%.1f"] + ["%.6f"] * 6)


def make_video(path: Path, seconds: float) -> None:
    import av

    from imuspec.video import iter_frames

    frames = [f for _, f in iter_frames(VIDEO)]
    n = round(seconds * 25)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(n):
            for packet in s.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)


def run(body: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", CHILD.format(body=body)], capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"case failed:\n{body}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the generated IMU CSV")
    ap.add_argument("--video-s", type=float, default=36.0, help="length of the generated video (s)")
    ap.add_argument("--window-s", type=float, default=60.0, help="the IMU window read from the middle of the CSV")
    ap.add_argument("--out", default="benchmarks/results/peak_memory_cpu_2026-12-01.json")
    a = ap.parse_args()
    csv = Path(f"/tmp/imuspec_bench_imu_{a.rows}.csv")
    video = Path(f"/tmp/imuspec_bench_{a.video_s:g}s.mp4")
    if not csv.exists():
        print(f"writing {csv} ...", flush=True)
        make_csv(csv, a.rows)
    if not video.exists():
        print(f"writing {video} ...", flush=True)
        make_video(video, a.video_s)
    mid = (1_600_000_000_000.0 + a.rows * 5.0 / 2) / 1000
    read = "from imuspec.imu.readers import read_ego4d_csv\n"
    sim = ("import contextlib, io\nfrom imuspec.cli import main\nfrom imuspec.events import read_h5\n"
           "with contextlib.redirect_stdout(io.StringIO()):\n")
    cases = {
        "import only": "result = None",
        f"IMU CSV, window of {a.window_s:g} s": read + f"r = read_ego4d_csv({str(csv)!r}, window_s=({mid}, "
                                                    f"{mid + a.window_s}))\nresult = r.n_samples",
        "IMU CSV, whole file": read + f"r = read_ego4d_csv({str(csv)!r})\nresult = r.n_samples",
        "simulate-events -> .h5 (streamed)": sim + f"    main(['simulate-events', {str(video)!r}, "
                                             "'/tmp/imuspec_bench.h5'])\nresult = len(h5py.File("
                                             "'/tmp/imuspec_bench.h5')['events/t'])",
        "simulate-events -> .npy (in memory)": sim + f"    main(['simulate-events', {str(video)!r}, "
                                               "'/tmp/imuspec_bench.npy'])\nresult = None",
    }
    rows = []
    print(f"{'case':40s} {'peak MB':>9s} {'growth':>9s} {'wall s':>7s}  result")
    for name, body in cases.items():
        r = run(body)
        rows.append(dict(case=name, base_rss_mb=round(r["base_rss_mb"], 1), peak_rss_mb=round(r["peak_rss_mb"], 1),
                         growth_mb=round(r["peak_rss_mb"] - r["base_rss_mb"], 1), wall_s=round(r["wall_s"], 1),
                         result=r["result"]))
        print(f"{name:40s} {rows[-1]['peak_rss_mb']:9.1f} {rows[-1]['growth_mb']:9.1f} {rows[-1]['wall_s']:7.1f}  "
              f"{r['result']}", flush=True)
    for f in ("/tmp/imuspec_bench.h5", "/tmp/imuspec_bench.npy"):
        Path(f).unlink(missing_ok=True)
    result = dict(benchmark="peak_memory", date=time.strftime("%Y-%m-%d"), machine=platform.processor() or
                  platform.machine(), cpus=os.cpu_count(), csv_rows=a.rows, csv_mb=round(csv.stat().st_size / 1e6, 1),
                  video_s=a.video_s, rows=rows, command=" ".join(["python"] + sys.argv))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
