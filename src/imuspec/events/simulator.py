"""Video to events, ESIM / v2e style, vectorised in NumPy: how IMU + video recordings (Ego4D) become EventGPT inputs.

Model. Each pixel tracks L = log(I + eps) of its intensity I in [0, 1] (eps keeps dark pixels finite) and a reference
level L_ref, set to L at the first frame. Between two frames L is taken to move linearly in time. Whenever
L - L_ref reaches +C_on (or -C_off) the pixel emits an ON (OFF) event at the interpolated crossing time and L_ref moves
by that threshold, so a change spanning k thresholds gives k events in one frame interval. Thresholds differ per pixel:
C ~ N(C, sigma), clipped at 0.01, fixed by a seed. After an emitted event a pixel stays silent for the refractory
period; crossings inside it are dropped but still move L_ref (the level stays locked to the signal). Optional noise:
leak (L_ref drifts down so a static pixel fires ON events at ``leak_rate_hz``) and shot noise (Poisson events of random
polarity at ``shot_noise_rate_hz`` per pixel, outside the threshold model).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .stream import EventError, EventStream

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as v2e's OpenCV grey conversion


@dataclass(frozen=True)
class SimulatorConfig:
    c_on: float = 0.2
    c_off: float = 0.2
    sigma: float = 0.03
    refractory_us: float = 500.0
    log_eps: float = 1e-3
    leak_rate_hz: float = 0.0
    shot_noise_rate_hz: float = 0.0
    seed: int = 0


def to_gray(frame: np.ndarray) -> np.ndarray:
    """HxW or HxWx3 (uint8 0..255 or float 0..1) → float64 HxW intensity in [0, 1]."""
    f = np.asarray(frame)
    scale = 255.0 if f.dtype == np.uint8 else 1.0
    f = f.astype(np.float64) / scale
    if f.ndim == 3 and f.shape[2] == 3:
        f = f @ LUMA
    if f.ndim != 2:
        raise EventError(f"frame of shape {np.shape(frame)}, expected HxW (grey) or HxWx3 (RGB)")
    return f


class EventSimulator:
    """Stateful per-pixel model; feed frames in time order with :meth:`step`, get each interval's events."""

    def __init__(self, first_frame: np.ndarray, t_us: float, config: SimulatorConfig = SimulatorConfig()):
        self.cfg = config
        gray = to_gray(first_frame)
        self.height, self.width = gray.shape
        rng = np.random.default_rng(config.seed)
        n = gray.size
        self.c_on = np.maximum(config.c_on + config.sigma * rng.standard_normal(n), 0.01)
        self.c_off = np.maximum(config.c_off + config.sigma * rng.standard_normal(n), 0.01)
        self.rng = rng
        self.t0 = float(t_us)
        self.t = float(t_us)
        self.level = self._log(gray, self.t)
        self.ref = self.level.copy()
        self.last_event = np.full(n, -np.inf)

    def _log(self, gray: np.ndarray, t_us: float) -> np.ndarray:
        # the leak lowers L_ref at leak_rate * C_on per second; raising L instead is the same for L - L_ref
        leak = self.cfg.leak_rate_hz * self.c_on * (t_us - self.t0) * 1e-6
        return np.log(gray.ravel() + self.cfg.log_eps) + leak

    def step(self, frame: np.ndarray, t_us: float) -> tuple[np.ndarray, ...]:
        """Events between the previous frame and this one: (x, y, t_us float64, p), sorted by time."""
        if t_us <= self.t:
            raise EventError(f"frame timestamps must increase: got {t_us} µs after {self.t} µs")
        gray = to_gray(frame)
        if gray.shape != (self.height, self.width):
            raise EventError(f"frame of size {gray.shape}, expected {(self.height, self.width)} like the first frame")
        l0, l1 = self.level, self._log(gray, t_us)
        t0, dt = self.t, t_us - self.t
        up = l1 > self.ref
        thr = np.where(up, self.c_on, self.c_off)
        count = np.floor(np.abs(l1 - self.ref) / thr).astype(np.int64)
        pix = np.repeat(np.arange(count.size), count)
        # k = 1..count[pix]: the k-th threshold crossed by this pixel in this interval
        k = np.arange(len(pix)) - np.repeat(np.cumsum(count) - count, count) + 1
        sign = np.where(up[pix], 1.0, -1.0)
        crossing = self.ref[pix] + sign * k * thr[pix]
        slope = l1[pix] - l0[pix]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = (crossing - l0[pix]) / slope
        # rounding can leave a crossing due exactly at the previous frame (then ΔL may be 0): it fires at t0
        times = t0 + np.clip(np.nan_to_num(frac, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0) * dt
        keep = self._refractory(pix, k, times, thr, slope, dt)
        self.ref += np.where(up, 1.0, -1.0) * count * thr
        pix, times, pol = pix[keep], times[keep], up[pix[keep]]
        if len(pix):
            newest = np.r_[pix[1:] != pix[:-1], True]  # pix is grouped by pixel, times increasing within a pixel
            self.last_event[pix[newest]] = times[newest]
        if self.cfg.shot_noise_rate_hz > 0:
            n_noise = self.rng.poisson(self.cfg.shot_noise_rate_hz * count.size * dt * 1e-6)
            pix = np.concatenate([pix, self.rng.integers(0, count.size, n_noise)])
            times = np.concatenate([times, t0 + dt * self.rng.random(n_noise)])
            pol = np.concatenate([pol, self.rng.random(n_noise) < 0.5])
        self.level, self.t = l1, float(t_us)
        order = np.argsort(times)
        pix, times, pol = pix[order], times[order], pol[order]
        return pix % self.width, pix // self.width, times, pol.astype(np.uint8)

    def _refractory(self, pix, k, times, thr, slope, dt) -> np.ndarray:
        """Which crossings survive the refractory period. A pixel's crossings in one interval are evenly spaced by
        s = C dt / |ΔL|, so after the first one kept (index j0) every m-th is kept, m = ceil(R / s)."""
        r = self.cfg.refractory_us
        if r <= 0 or len(pix) == 0:
            return np.ones(len(pix), dtype=bool)
        spacing = thr[pix] * dt / np.maximum(np.abs(slope), 1e-12)
        first = times - (k - 1) * spacing
        j0 = np.maximum(np.ceil((self.last_event[pix] + r - first) / spacing - 1e-9), 0)
        m = np.maximum(np.ceil(r / spacing - 1e-9), 1)
        j = k - 1
        return (j >= j0) & (np.mod(j - j0, m) == 0)


def simulate_chunks(frames: Iterable[tuple[np.ndarray, float]], config: SimulatorConfig = SimulatorConfig(),
                    source: str = "<simulated>", total: int | None = None
                    ) -> Iterator[tuple[EventSimulator, tuple[np.ndarray, ...]]]:
    """(simulator, events (x, y, t int64 µs, p)) of each frame interval, in time order — memory for one interval, so
    a long video streams; a tqdm bar shows progress on inputs of over 300 frames (``total`` frames) or of unknown
    length."""
    from tqdm import tqdm

    frames = iter(frames)
    try:
        first, t_first = next(frames)
    except StopIteration:
        raise EventError(f"{source}: no frames, expected at least two") from None
    sim = EventSimulator(first, t_first, config)
    bar = tqdm(frames, total=total and total - 1, disable=total is not None and total <= 300, unit="frame",
               desc="simulating events")
    stepped = False
    for f, t in bar:
        x, y, te, p = sim.step(f, t)
        stepped = True
        yield sim, (x, y, np.floor(te).astype(np.int64), p)
    if not stepped:
        raise EventError(f"{source}: one frame, expected at least two")


def simulate(frames: Iterable[tuple[np.ndarray, float]], config: SimulatorConfig = SimulatorConfig(),
             source: str = "<simulated>", total: int | None = None) -> EventStream:
    """Events of a whole sequence of (frame, timestamp in µs), held in memory (:func:`simulate_to_h5` streams)."""
    chunks, sim = [], None
    for sim, c in simulate_chunks(frames, config, source, total):
        chunks.append(c)
    x, y, t, p = (np.concatenate(c) for c in zip(*chunks))
    if len(t) == 0:
        raise EventError(f"{source}: the frames produced no events (no pixel changed by a contrast threshold)")
    return EventStream(x, y, t, p, sim.width, sim.height, source)


def simulate_to_h5(frames: Iterable[tuple[np.ndarray, float]], path: str | Path,
                   config: SimulatorConfig = SimulatorConfig(), source: str = "<simulated>",
                   total: int | None = None) -> dict:
    """Simulate into a DSEC-layout HDF5 file chunk by chunk: memory does not grow with the video's length.
    Returns a summary (events, sensor size, span, ON fraction)."""
    from .readers import H5EventWriter

    w, sim = H5EventWriter(path), None
    try:
        for sim, (x, y, t, p) in simulate_chunks(frames, config, source, total):
            w.append(x, y, t, p)
        if w.n == 0:
            raise EventError(f"{source}: the frames produced no events (no pixel changed by a contrast threshold)")
    except BaseException:
        w.abort()
        raise
    w.close(sim.width, sim.height)
    return {"n_events": w.n, "width": sim.width, "height": sim.height, "duration_us": w.t_last - w.offset,
            "on_fraction": w.n_on / w.n}


def frames_from_video(path: str | Path) -> Iterator[tuple[np.ndarray, float]]:
    """(grey uint8 HxW frame, timestamp in µs) of each frame, decoded by :func:`imuspec.video.iter_frames`."""
    from ..video import iter_frames  # PyAV only where video is read: the simulator itself needs none

    return ((np.rint(to_gray(frame) * 255).astype(np.uint8), t * 1e6) for t, frame in iter_frames(path))
