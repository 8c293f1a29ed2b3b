"""``imuspec inspect-imu``: what a reader made of a file (format, rate, duration, channels, units), as text, JSON or
a plot of the six channels."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .readers import READERS, read_imu
from .recording import IMURecording


def summary(rec: IMURecording) -> dict:
    return {"format": rec.format, "n_samples": rec.n_samples, "rate_hz": rec.rate_hz, "duration_s": rec.duration_s,
            "channels": rec.channels, "units": rec.units}


def plot(rec: IMURecording, out: str) -> None:
    """Accelerometer and gyroscope channels against time, one panel per sensor, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, sharex=True, figsize=(10, 5), constrained_layout=True)
    t = rec.t - rec.t[0]
    for ax, values, name, unit in ((axes[0], rec.accel, "accelerometer", rec.accel_unit),
                                   (axes[1], rec.gyro, "gyroscope", rec.gyro_unit)):
        for i, axis in enumerate("xyz"):
            ax.plot(t, values[:, i], lw=0.8, label=axis)
        ax.set_ylabel(f"{name} [{unit}]")
        ax.legend(loc="upper right", fontsize=8)
    axes[1].set_xlabel("time since first sample [s]")
    axes[0].set_title(f"{rec.source} ({rec.format}, {rec.rate_hz:.4g} Hz)", fontsize=9)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def cmd_inspect_imu(a: argparse.Namespace) -> int:
    rec = read_imu(a.file, index=a.index, format=a.format)
    if a.plot:
        plot(rec, a.plot)
        print(f"plot written to {Path(a.plot).resolve()}", file=sys.stderr)
    s = summary(rec)
    if a.json:
        print(json.dumps(s))
    else:
        print(f"{rec.source}: {s['format']}, {s['n_samples']} samples at {s['rate_hz']:.4g} Hz "
              f"({s['duration_s']:.3f} s); channels {', '.join(s['channels'])}; "
              f"accel in {rec.accel_unit}, gyro in {rec.gyro_unit}")
        for k, v in rec.meta.items():
            if v not in (None, [], ""):
                print(f"  {k}: {str(v)[:100]}")
    return 0


def add_inspect_imu_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="IMU recording: CSV, .npy, SensorCaps / OpenSQA JSONL, .ts, .npz or AEDAT4")
    p.add_argument("--index", type=int, help="which recording of a multi-recording file (JSONL, .ts, .npz)")
    p.add_argument("--format", choices=sorted(READERS),
                   help="force a reader instead of guessing from the extension / content")
    p.add_argument("--plot", metavar="OUT.png", help="write the six channels as a PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect_imu)
