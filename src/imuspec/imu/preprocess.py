"""Preprocessing as pure functions: resampling, timestamped windows, and each model's input.

The generic pieces are :func:`resample` (anti-aliased, timestamps kept) and :func:`windows` (fixed-length slices
that keep their own timestamps); a model's input function is a composition of them plus its normalisation, e.g.
Chronos takes one channel of ``rec.data()``. LIMU-BERT / LLaSA is :func:`limu_bert_input`, OneLLM :func:`onellm_input`.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from .recording import IMUError, IMURecording

LIMU_RATE_HZ = 20.0
LIMU_SEQ_LEN = 120
LIMU_ACC_NORM = 9.8  # LIMU-BERT's Preprocess4Normalization divides m/s^2 by 9.8 (not 9.80665)
ONELLM_RATE_HZ = 200.0
ONELLM_WINDOW = 400  # 2 s


def _uniform(rec: IMURecording) -> np.ndarray:
    """All channels [N, C] on the uniform grid t0 + i / rate_hz (linear interpolation absorbs clock jitter)."""
    x = np.concatenate([rec.accel, rec.gyro] + ([rec.mag] if rec.mag is not None else []), axis=1)
    n = int(np.floor(rec.duration_s * rec.rate_hz + 1e-6)) + 1
    grid = rec.t[0] + np.arange(n) / rec.rate_hz
    if n == rec.n_samples and np.allclose(rec.t, grid, rtol=0, atol=1e-9):
        return x
    return np.stack([np.interp(grid, rec.t, c) for c in x.T], axis=1)


def resample(rec: IMURecording, rate_hz: float, max_denominator: int = 1000) -> IMURecording:
    """``rec`` at ``rate_hz``: polyphase FIR resampling (scipy's ``resample_poly``, Kaiser window), which low-passes
    below the new Nyquist frequency before decimating, so downsampling does not alias.

    Irregular timestamps are first interpolated onto the nominal grid. Edges are padded by line extension
    (``padtype="line"``) so a gravity offset does not ring at the ends. New times are t0 + k / rate_hz.
    """
    if rate_hz <= 0:
        raise IMUError(f"{rec.source}: target rate {rate_hz} Hz; expected a positive rate")
    x = _uniform(rec)
    ratio = Fraction(rate_hz / rec.rate_hz).limit_denominator(max_denominator)
    if ratio == 1:
        y = x
    else:
        y = resample_poly(x, ratio.numerator, ratio.denominator, axis=0, padtype="line")
    t = rec.t[0] + np.arange(len(y)) / rate_hz
    mag = y[:, 6:9] if rec.mag is not None else None
    return replace(rec, t=t, accel=y[:, :3], gyro=y[:, 3:6], mag=mag, rate_hz=float(rate_hz))


def windows(rec: IMURecording, length: int, hop: int | None = None, start: int = 0) -> list[IMURecording]:
    """Consecutive windows of ``length`` samples every ``hop`` (default: no overlap), each keeping its timestamps;
    a tail shorter than ``length`` is dropped."""
    hop = hop or length
    if length < 2 or hop < 1:
        raise IMUError(f"{rec.source}: window length {length} / hop {hop}; expected length >= 2 and hop >= 1")
    return [_take(rec, slice(i, i + length), f"{rec.source}@{rec.t[i]:.3f}s")
            for i in range(start, rec.n_samples - length + 1, hop)]


def _take(rec: IMURecording, s: slice, source: str) -> IMURecording:
    """Samples ``s`` of ``rec``, keeping their timestamps."""
    mag = rec.mag[s] if rec.mag is not None else None
    return replace(rec, t=rec.t[s], accel=rec.accel[s], gyro=rec.gyro[s], mag=mag, source=source)


def limu_bert_normalize(rec: IMURecording) -> np.ndarray:
    """[N, 6] float32 as LIMU-BERT and LLaSA feed it: accelerometer in m/s^2 / 9.8, gyroscope in rad/s."""
    r = rec.to_units("m/s^2", "rad/s")
    return np.concatenate([r.accel / LIMU_ACC_NORM, r.gyro], axis=1).astype(np.float32)


def _window(rec: IMURecording, rate_hz: float, length: int, start: int, model: str) -> IMURecording:
    """Samples [start, start + length) of ``rec`` at ``rate_hz``, or an error saying how much the model needs."""
    r = resample(rec, rate_hz) if rec.rate_hz != rate_hz else rec
    if start < 0 or r.n_samples < start + length:
        raise IMUError(f"{rec.source}: {r.n_samples} samples at {rate_hz:g} Hz ({r.duration_s:.2f} s) from sample "
                       f"{start}; expected at least {length} ({length / rate_hz:g} s) for a {model} window")
    return windows(r, length, start=start)[0]


def limu_bert_input(rec: IMURecording, start: int = 0) -> np.ndarray:
    """One LIMU-BERT / LLaSA window (120, 6): 20 Hz, samples [start, start + 120) after resampling, normalised."""
    return limu_bert_normalize(_window(rec, LIMU_RATE_HZ, LIMU_SEQ_LEN, start, "LIMU-BERT"))


def onellm_values(rec: IMURecording) -> np.ndarray:
    """[N, 6] float32 as OneLLM reads it: accelerometer in m/s^2, gyroscope in rad/s, not normalised (Ego4D's raw
    units, as OneLLM trained on them)."""
    r = rec.to_units("m/s^2", "rad/s")
    return np.concatenate([r.accel, r.gyro], axis=1).astype(np.float32)


def onellm_input(rec: IMURecording, start: int = 0) -> np.ndarray:
    """One OneLLM window (6, 400), channels first: 2 s at 200 Hz from resampled sample ``start``, in
    :func:`onellm_values`' units."""
    return onellm_values(_window(rec, ONELLM_RATE_HZ, ONELLM_WINDOW, start, "OneLLM")).T


def check_span(rec: IMURecording, t0_s: float, t1_s: float) -> None:
    """Raise :class:`IMUError` unless ``rec`` covers [t0_s, t1_s) without gaps (the nearest samples may sit up to
    1.5 periods outside the span: a sample every period, plus clock jitter)."""
    if not t1_s > t0_s:
        raise IMUError(f"{rec.source}: span [{t0_s}, {t1_s}) s; expected t1 > t0")
    tol = 1.5 / rec.rate_hz
    if rec.t[0] > t0_s + tol or rec.t[-1] < t1_s - tol:
        raise IMUError(f"{rec.source}: field 't' covers {rec.t[0]:.6f}..{rec.t[-1]:.6f} s; expected it to cover the "
                       f"window {t0_s:.6f}..{t1_s:.6f} s (IMU at {rec.rate_hz:g} Hz)")
    inside = (rec.t >= t0_s - tol) & (rec.t <= t1_s + tol)
    gaps = np.diff(rec.t[inside])
    if len(gaps) and gaps.max() > rec.max_gap / rec.rate_hz:
        i = int(np.argmax(gaps))
        raise IMUError(f"{rec.source}: field 't' has a gap of {gaps[i] * 1e3:.1f} ms at {rec.t[inside][i]:.6f} s inside "
                       f"the window; expected samples every {1e3 / rec.rate_hz:.2f} ms")


def span_input(rec: IMURecording, t0_s: float, t1_s: float, n: int, values=limu_bert_normalize) -> np.ndarray:
    """[n, 6] float32 in ``values``' units (LIMU-BERT's, :func:`limu_bert_normalize`; OneLLM's, :func:`onellm_values`)
    at ``n`` evenly spaced instants covering [t0_s, t1_s) (bin centres), linearly interpolated: a fixed-size input
    for a window of any IMU rate, as the project's trained drafts take a short window paired with events. The
    recording must cover the span."""
    if n < 1:
        raise IMUError(f"{rec.source}: {n} points for span [{t0_s}, {t1_s}) s; expected n >= 1")
    check_span(rec, t0_s, t1_s)
    x = values(rec)
    at = t0_s + (np.arange(n) + 0.5) * (t1_s - t0_s) / n
    return np.stack([np.interp(at, rec.t, x[:, c]) for c in range(x.shape[1])], 1).astype(np.float32)


def starting_at(rec: IMURecording, t0_s: float) -> IMURecording:
    """``rec`` from its sample nearest ``t0_s`` on: where a model with a fixed input length (LLaSA's 6 s, OneLLM's
    2 s) reads a recording from a window's start."""
    i = int(np.searchsorted(rec.t, t0_s - 0.5 / rec.rate_hz))
    if rec.n_samples - i < 2:
        raise IMUError(f"{rec.source}: field 't' ends at {rec.t[-1]:.6f} s; expected samples from {t0_s:.6f} s on")
    return _take(rec, slice(i, None), f"{rec.source}@{t0_s:.6f}s")


def limu_bert_windows(rec: IMURecording, hop: int = LIMU_SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
    """All LIMU-BERT windows of a recording: inputs [W, 120, 6] and their start times [W] (seconds)."""
    r = resample(rec, LIMU_RATE_HZ) if rec.rate_hz != LIMU_RATE_HZ else rec
    ws = windows(r, LIMU_SEQ_LEN, hop)
    if not ws:
        return np.zeros((0, LIMU_SEQ_LEN, 6), np.float32), np.zeros(0)
    return np.stack([limu_bert_normalize(w) for w in ws]), np.array([w.t[0] for w in ws])
