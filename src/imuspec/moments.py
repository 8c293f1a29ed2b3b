"""Unlabeled data → moments: what :mod:`imuspec.distill` asks the user's target about.

A moment is one paired sample (an event window and the IMU over it) from one recording, or, for a text-only target,
nothing at all (each query is then a moment of its own). ``--data`` takes any mix of:

- ``FILE.aedat4``: events and their own IMU, sliding windows;
- ``IMU+EVENTS`` / ``IMU+VIDEO`` (joined by ``+``): an IMU file and an event file or a video on one clock (a video's
  frames become events through the simulator), sliding windows;
- ``DIR`` in the Ego4D layout: ``{video_uid}.mp4`` beside ``{video_uid}.csv`` (Ego4D's IMU CSV), sliding windows;
- ``FILE.jsonl``: a manifest, one moment a line ``{"imu", "events"|"video", "t0_us", "t1_us", "query"?}`` (paths
  relative to the manifest), the moment's own query replacing the query file's;
- ``world:N``: N samples of the synthetic world (seeds 0..N-1), each its own recording.

The recording a moment comes from is kept: held-out splits go by recording, since overlapping windows of one
recording would leak into each other.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .events.stream import EventStream
from .imu.recording import IMURecording
from .paired import PairedSample, PairingError, from_files, windows

VIDEO = (".mp4", ".mov", ".avi", ".mkv", ".webm")


class DataError(ValueError):
    """Distillation data that cannot be read as moments."""


@dataclass(frozen=True)
class Moment:
    recording: str  # what the held-out split groups by
    sample: PairedSample | None  # None: a text-only moment
    query: str | None = None  # the manifest's own question; None: every query of the query file


def read_queries(path: str | Path) -> list[str]:
    """One query a line, or JSONL with a ``query`` field a line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--queries {path}: file not found")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"--queries {path}: the file holds no query; expected one question a line (or JSONL {{\"query\": ...}})")
    if path.suffix == ".jsonl":
        out = []
        for i, ln in enumerate(lines, 1):
            try:
                out.append(str(json.loads(ln)["query"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"--queries {path}: line {i}: expected a JSON object with field 'query'") from None
        return out
    return lines


def _video_events(video: Path, until_us: float) -> EventStream:
    from .events import frames_from_video, simulate
    from .paired import _until

    return simulate(_until(frames_from_video(video), until_us), source=str(video))


def _pair_files(imu_path: Path, other: Path, window_us: int, hop_us: int) -> list[PairedSample]:
    from .events import read_events
    from .imu import read_imu

    imu: IMURecording = read_imu(imu_path)
    events = _video_events(other, imu.t[-1] * 1e6) if other.suffix.lower() in VIDEO else read_events(other)
    return windows(imu, events, window_us, hop_us, f"{imu_path}+{other}")


def _no_imu(path: Path) -> DataError:
    """A file that holds events or video alone cannot feed an IMU draft."""
    return DataError(f"--data {path}: a recording without IMU; expected an AEDAT4 file with its IMU stream, "
                    "IMU+EVENTS or IMU+VIDEO (an IMU file and an event file or video on one clock), an Ego4D folder, "
                    "a JSONL manifest or world:N")


def _manifest(path: Path) -> list[Moment]:
    out = []
    for i, ln in enumerate(path.read_text().splitlines(), 1):
        if not ln.strip():
            continue
        where = f"--data {path}: line {i}"
        try:
            m = json.loads(ln)
            imu, t0, t1 = path.parent / m["imu"], int(m["t0_us"]), int(m["t1_us"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise DataError(f"{where}: expected a JSON object with 'imu', 'events' or 'video', 't0_us', 't1_us'") from None
        if ("events" in m) == ("video" in m):
            raise DataError(f"{where}: give exactly one of 'events' or 'video'")
        ev = path.parent / m["events"] if "events" in m else None
        video = path.parent / m["video"] if "video" in m else None
        out.append(Moment(str(imu), from_files(imu, t0, t1, events=ev, video=video), m.get("query")))
    return out


def _one(spec: str, window_us: int, hop_us: int) -> list[Moment]:
    """The moments of one ``--data`` entry (raises PairingError when it is shorter than one window)."""
    if spec.startswith("world:"):
        from .world import make_samples

        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise DataError(f"--data {spec}: expected world:N with N an integer") from None
        return [Moment(s.source, s) for s in make_samples(range(n))]
    if "+" in spec and not Path(spec).exists():
        imu, other = (Path(p) for p in spec.split("+", 1))
        for p in (imu, other):
            if not p.exists():
                raise DataError(f"--data {spec}: {p}: file not found")
        return [Moment(spec, s) for s in _pair_files(imu, other, window_us, hop_us)]
    path = Path(spec)
    if not path.exists():
        raise DataError(f"--data {path}: file not found")
    if path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO and p.with_suffix(".csv").exists())
        if not videos:
            raise DataError(f"--data {path}: a folder without Ego4D pairs; expected {{video_uid}}.mp4 beside {{video_uid}}.csv")
        return [Moment(str(v), s) for v in videos for s in _pair_files(v.with_suffix(".csv"), v, window_us, hop_us)]
    if path.suffix == ".jsonl":
        return _manifest(path)
    if path.suffix.lower() == ".aedat4":
        from .events.readers import read_aedat4
        from .imu.readers import from_aedat4_imu

        rec = read_aedat4(path)
        if rec.imu is None:
            raise _no_imu(path)
        return [Moment(str(path), s) for s in windows(from_aedat4_imu(rec.imu, str(path)), rec.events, window_us,
                                                        hop_us, str(path))]
    raise _no_imu(path)


def load_moments(data: list[str], window_us: int, hop_us: int) -> list[Moment]:
    """Every entry's moments; a recording shorter than one window is skipped with a warning, and it is an error
    when that leaves none."""
    out, short = [], []
    for spec in data:
        try:
            out += _one(spec, window_us, hop_us)
        except PairingError as e:
            if "expected at least one window" not in str(e):
                raise
            short.append((spec, e))
    if not out:
        raise DataError(f"--window-us {window_us}: longer than every recording ({', '.join(s for s, _ in short)}); "
                        "choose a shorter window")
    for _, e in short:
        print(f"warning: {e}; skipped", file=sys.stderr)
    return out


def text_moments(queries: list[str]) -> list[Moment]:
    """No data, a text-only target: each query is a moment (and a recording) of its own."""
    return [Moment(f"query:{i}", None, q) for i, q in enumerate(queries)]
