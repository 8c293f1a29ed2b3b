"""``imuspec inspect-events`` and ``imuspec simulate-events``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .readers import FORMATS, format_of, read_events, write_events
from .render import eventgpt_frames
from .simulator import SimulatorConfig, frames_from_video, simulate, simulate_to_h5


def add_inspect_events_parser(s: argparse.ArgumentParser) -> None:
    s.add_argument("file", help="event file: " + "; ".join(f"{k} ({v})" for k, v in FORMATS.items()))
    s.add_argument("--format", choices=sorted(FORMATS), help="the file's format (default: from its suffix)")
    s.add_argument("--window-us", nargs=2, type=int, metavar=("T0", "T1"), help="only events with T0 <= t < T1")
    s.add_argument("--frames", metavar="DIR", help="write the 5 EventGPT frames as DIR/frame_{0..4}.png")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_inspect_events)


def cmd_inspect_events(a: argparse.Namespace) -> int:
    stream = read_events(a.file, a.format)
    if a.window_us:
        stream = stream.window(*a.window_us)
    info = {
        "format": a.format or format_of(a.file),
        "n_events": len(stream),
        "width": stream.width,
        "height": stream.height,
        "t_start_us": int(stream.t[0]),
        "t_end_us": int(stream.t[-1]),
        "duration_us": stream.duration_us,
        "on_fraction": round(float(stream.p.mean()), 6),
    }
    if a.frames:
        from PIL import Image

        out = Path(a.frames)
        out.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(eventgpt_frames(stream)):
            Image.fromarray(frame).save(out / f"frame_{i}.png")
    if a.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:12s} {v}")
        if a.frames:
            print(f"frames       {a.frames}/frame_{{0..4}}.png")
    return 0


def add_simulate_events_parser(s: argparse.ArgumentParser) -> None:
    s.add_argument("video", help="video file (anything PyAV decodes)")
    s.add_argument("out", help="output: .h5/.hdf5 (DSEC layout, written as it goes, in bounded memory) or .npy "
                   "(EventGPT dict, held in memory)")
    d = SimulatorConfig()
    s.add_argument("--c-on", type=float, default=d.c_on, help="ON contrast threshold (log intensity)")
    s.add_argument("--c-off", type=float, default=d.c_off, help="OFF contrast threshold")
    s.add_argument("--sigma", type=float, default=d.sigma, help="per-pixel threshold spread (std)")
    s.add_argument("--refractory-us", type=float, default=d.refractory_us, help="dead time of a pixel after an event")
    s.add_argument("--log-eps", type=float, default=d.log_eps, help="offset in log(I + eps), I in [0, 1]")
    s.add_argument("--leak-rate-hz", type=float, default=d.leak_rate_hz, help="per-pixel leak (ON) event rate")
    s.add_argument("--shot-noise-rate-hz", type=float, default=d.shot_noise_rate_hz, help="per-pixel noise event rate")
    s.add_argument("--seed", type=int, default=d.seed, help="random seed (thresholds, noise)")
    s.set_defaults(func=cmd_simulate_events)


def cmd_simulate_events(a: argparse.Namespace) -> int:
    from ..video import count_frames  # PyAV only for this command

    cfg = SimulatorConfig(a.c_on, a.c_off, a.sigma, a.refractory_us, a.log_eps, a.leak_rate_hz,
                          a.shot_noise_rate_hz, a.seed)
    frames, total = frames_from_video(a.video), count_frames(a.video)
    if Path(a.out).suffix.lower() in (".h5", ".hdf5"):  # streamed: memory of one frame interval, whatever the length
        info = simulate_to_h5(frames, a.out, cfg, source=str(a.video), total=total)
    else:  # EventGPT's .npy is one pickled dict: the whole stream in memory
        stream = simulate(frames, cfg, source=str(a.video), total=total)
        write_events(stream, a.out)
        info = {"n_events": len(stream), "width": stream.width, "height": stream.height,
                "duration_us": stream.duration_us, "on_fraction": float(stream.p.mean())}
    print(f"{a.out}: {info['n_events']} events, {info['width']}x{info['height']}, {info['duration_us']} µs, "
          f"ON fraction {info['on_fraction']:.3f}")
    return 0
