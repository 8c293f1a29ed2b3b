"""Paired samples: an IMU window and an event window over the same time span, the unit the product works on.

The IMU draft reads :attr:`PairedSample.imu` over [t0, t1) (see :func:`imuspec.imu.preprocess.span_input`), the event
target reads :attr:`PairedSample.events` (events with t0 <= t < t1). Both share one clock: IMU ``t`` in seconds,
event ``t`` in microseconds.

Builders: :func:`pair` (recordings in memory), :func:`from_aedat4` / :func:`aedat4_windows` (one camera file holding
both), :func:`windows` (sliding windows over two recordings), :func:`from_files` (an IMU file and an event file or a video, on one clock). Each checks the window and
raises :class:`PairingError` naming both sources, the fields and the spans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .events.stream import EventError, EventStream
from .imu.preprocess import check_span, limu_bert_normalize, span_input
from .imu.recording import IMUError, IMURecording


class PairingError(ValueError):
    """An IMU recording and an event stream that cannot be paired over the requested window."""


@dataclass(frozen=True)
class PairedSample:
    """``events`` in [t0_us, t1_us) and ``imu`` covering that span (the builders keep the whole recording), from
    ``source``; ``text`` is the reference narration where one exists (the synthetic world), ``meta`` what made the
    sample (activity, scene, seed...)."""

    imu: IMURecording
    events: EventStream
    t0_us: int
    t1_us: int
    source: str
    text: str | None = None
    meta: dict = field(default_factory=dict)

    def imu_input(self, n: int, span_us: int | None = None, values=limu_bert_normalize) -> np.ndarray:
        """The draft's IMU input: [n, 6] in LIMU-BERT units (or ``values``', :func:`~imuspec.imu.preprocess.span_input`)
        over the sample's span, or over the ``span_us`` that end with it (a longer IMU context for a short event
        window), from the recording's start where it began later: the ``n`` positions follow the span there is."""
        t1 = self.t1_us * 1e-6
        t0 = self.t0_us * 1e-6 if span_us is None else max(t1 - span_us * 1e-6, float(self.imu.t[0]))
        return span_input(self.imu, t0, t1, n, values)


def _span_us(imu: IMURecording) -> tuple[int, int]:
    return round(imu.t[0] * 1e6), round(imu.t[-1] * 1e6)


def pair(imu: IMURecording, events: EventStream, t0_us: int, t1_us: int, source: str | None = None) -> PairedSample:
    """The sample over [t0_us, t1_us): the window is non-empty, the two recordings overlap, the IMU covers the window
    (:func:`~imuspec.imu.preprocess.check_span`) and it holds events."""
    where = f"pairing IMU {imu.source} with events {events.source} over [{t0_us}, {t1_us}) µs"
    if not t1_us > t0_us:
        raise PairingError(f"{where}: the window is empty or reversed; expected START < END")
    (i0, i1), (e0, e1) = _span_us(imu), (int(events.t[0]), int(events.t[-1]))
    if i0 > e1 or e0 > i1:
        raise PairingError(f"{where}: the IMU's field 't' spans {i0}..{i1} µs and the events' field 't' {e0}..{e1} µs, "
                           "which do not overlap; expected one clock (IMU seconds x 1e6 = event µs)")
    try:
        check_span(imu, t0_us * 1e-6, t1_us * 1e-6)
        window = events.window(t0_us, t1_us)
    except (IMUError, EventError) as e:
        raise PairingError(f"{where}: {e}") from None
    return PairedSample(imu, window, int(t0_us), int(t1_us), source or f"{events.source}@{t0_us}:{t1_us}")


def _read_aedat4(path: str | Path) -> tuple[IMURecording, EventStream]:
    from .events.readers import read_aedat4
    from .imu.readers import from_aedat4_imu

    rec = read_aedat4(path)
    return from_aedat4_imu(rec.imu, str(path)), rec.events


def from_aedat4(path: str | Path, t0_us: int, t1_us: int) -> PairedSample:
    """The window [t0_us, t1_us) of a camera file holding events and IMU (times in the file's µs)."""
    return pair(*_read_aedat4(path), t0_us, t1_us)


def aedat4_windows(path: str | Path, window_us: int = 50_000, hop_us: int | None = None) -> list[PairedSample]:
    """Consecutive windows of ``window_us`` every ``hop_us`` (default: no overlap) over the span both streams
    cover, from its start; the file is read once."""
    return windows(*_read_aedat4(path), window_us, hop_us, str(path))


def windows(imu: IMURecording, events: EventStream, window_us: int, hop_us: int | None = None,
            source: str | None = None) -> list[PairedSample]:
    """Windows of ``window_us`` every ``hop_us`` (default: no overlap) over the span an IMU recording and an event
    stream on one clock both cover, from its start."""
    where, hop_us = source or f"{imu.source} + {events.source}", hop_us or window_us
    if window_us <= 0 or hop_us <= 0:
        raise PairingError(f"{where}: window {window_us} µs / hop {hop_us} µs; expected positive durations")
    start = max(_span_us(imu)[0], int(events.t[0]))
    end = min(_span_us(imu)[1], int(events.t[-1]))
    if end - start < window_us:
        raise PairingError(f"{where}: the IMU (field 't': {_span_us(imu)[0]}..{_span_us(imu)[1]} µs) and the events "
                           f"({events.t[0]}..{events.t[-1]} µs) share {max(end - start, 0)} µs; expected at least "
                           f"one window of {window_us} µs (--window-us)")
    return [pair(imu, events, t0, t0 + window_us) for t0 in range(start, end - window_us + 1, hop_us)]


def from_files(imu: str | Path, t0_us: int, t1_us: int, events: str | Path | None = None,
               video: str | Path | None = None, imu_index: int | None = None) -> PairedSample:
    """An IMU file and an event file (or a video, turned into events by the simulator) on one clock: IMU seconds
    x 1e6 = event µs (a video's frame times in µs from its start)."""
    from .imu import read_imu

    if (events is None) == (video is None):
        raise PairingError(f"pairing {imu}: give exactly one of an event file or a video")
    rec = read_imu(imu, imu_index)
    if events is not None:
        from .events import read_events

        return pair(rec, read_events(events), t0_us, t1_us)
    from .events import frames_from_video, simulate

    return pair(rec, simulate(_until(frames_from_video(video), t1_us), source=str(video)), t0_us, t1_us)


def _until(frames, t1_us: int):
    """Frames up to the first at or after ``t1_us``: a frame's events take times since the previous frame, so later
    frames add none before ``t1_us``."""
    for frame, t in frames:
        yield frame, t
        if t >= t1_us:
            return
