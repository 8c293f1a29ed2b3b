"""One IMU recording: timestamps, accelerometer, gyroscope (and magnetometer), with explicit units and checks.

Every reader returns an :class:`IMURecording`; construction validates it, so a recording that exists is finite,
strictly increasing in time, free of long gaps and plausible in its stated units. Errors name the source file, the
field and what was expected. Unit changes are explicit (:meth:`IMURecording.to_units`), never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

G = 9.80665  # standard gravity, m/s^2 per g
ACCEL_UNITS = ("m/s^2", "g")
GYRO_UNITS = ("rad/s", "deg/s")
MAX_GYRO_RAD_S = 40.0  # ~2300 deg/s: above any consumer gyroscope's full scale (2000 deg/s), so a unit mix-up


class IMUError(ValueError):
    """An IMU file or array that is not what a reader or the recording type expects.

    Raised by the recording's checks it also carries ``field``, ``sample`` and ``axis`` (None where not one), so a
    reader can say the same in the file's own terms (its column, its row)."""

    def __init__(self, message: str, field: str | None = None, sample: int | None = None, axis: int | None = None,
                 problem: str = "", expected: str = ""):
        super().__init__(message)
        self.field, self.sample, self.axis, self.problem, self.expected = field, sample, axis, problem, expected


def g_to_ms2(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) * G


def ms2_to_g(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) / G


def deg_to_rad(x: np.ndarray) -> np.ndarray:
    return np.deg2rad(np.asarray(x, dtype=np.float64))


def rad_to_deg(x: np.ndarray) -> np.ndarray:
    return np.rad2deg(np.asarray(x, dtype=np.float64))


def convert_accel(x: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Accelerometer values from unit ``src`` to ``dst`` (each "m/s^2" or "g")."""
    for u in (src, dst):
        if u not in ACCEL_UNITS:
            raise IMUError(f"accelerometer unit {u!r} is unknown; expected one of {ACCEL_UNITS}")
    x = np.asarray(x, dtype=np.float64)
    return x if src == dst else g_to_ms2(x) if src == "g" else ms2_to_g(x)


def convert_gyro(x: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Gyroscope values from unit ``src`` to ``dst`` (each "rad/s" or "deg/s")."""
    for u in (src, dst):
        if u not in GYRO_UNITS:
            raise IMUError(f"gyroscope unit {u!r} is unknown; expected one of {GYRO_UNITS}")
    x = np.asarray(x, dtype=np.float64)
    return x if src == dst else deg_to_rad(x) if src == "deg/s" else rad_to_deg(x)


@dataclass(frozen=True, eq=False)
class IMURecording:
    """A 6- (or 9-) axis IMU recording.

    ``t`` [N] seconds (float64), ``accel`` and ``gyro`` [N, 3] (float64), ``mag`` [N, 3] or None. ``rate_hz`` is the
    nominal rate; ``gravity`` says whether the accelerometer includes gravity (the plausibility check of its unit
    needs it: some datasets store linear acceleration). ``meta`` carries text that came with the window (label,
    narration, Q/A pairs). ``max_gap`` is the longest allowed spacing, in nominal periods.
    """

    t: np.ndarray
    accel: np.ndarray
    gyro: np.ndarray
    accel_unit: str
    gyro_unit: str
    rate_hz: float
    source: str
    format: str
    mag: np.ndarray | None = None
    gravity: bool = True
    meta: dict = field(default_factory=dict)
    max_gap: float = 5.0

    def __post_init__(self):
        cast = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
        object.__setattr__(self, "t", cast(self.t))
        object.__setattr__(self, "accel", cast(self.accel))
        object.__setattr__(self, "gyro", cast(self.gyro))
        if self.mag is not None:
            object.__setattr__(self, "mag", cast(self.mag))
        validate(self)

    @property
    def n_samples(self) -> int:
        return len(self.t)

    @property
    def duration_s(self) -> float:
        return float(self.t[-1] - self.t[0])

    @property
    def channels(self) -> list[str]:
        names = [f"{s}_{a}" for s in ("accel", "gyro") for a in "xyz"]
        return names + ([f"mag_{a}" for a in "xyz"] if self.mag is not None else [])

    @property
    def units(self) -> dict[str, str]:
        return {"accel": self.accel_unit, "gyro": self.gyro_unit}

    def data(self) -> np.ndarray:
        """[N, 6]: accelerometer xyz then gyroscope xyz, in the recording's units."""
        return np.concatenate([self.accel, self.gyro], axis=1)

    def to_units(self, accel: str = "m/s^2", gyro: str = "rad/s") -> IMURecording:
        """The same recording in other units."""
        return replace(
            self,
            accel=convert_accel(self.accel, self.accel_unit, accel),
            gyro=convert_gyro(self.gyro, self.gyro_unit, gyro),
            accel_unit=accel,
            gyro_unit=gyro,
        )


def _fail(rec: IMURecording, fld: str, problem: str, expected: str, sample: int | None = None,
          axis: int | None = None) -> None:
    raise IMUError(f"{rec.source}: field '{fld}': {problem}; expected {expected}", fld, sample, axis, problem, expected)


def validate(rec: IMURecording) -> None:
    """Raise :class:`IMUError` naming source, field and expectation for the first problem found."""
    if rec.accel_unit not in ACCEL_UNITS:
        _fail(rec, "accel_unit", f"unit {rec.accel_unit!r} is unknown", f"one of {ACCEL_UNITS}")
    if rec.gyro_unit not in GYRO_UNITS:
        _fail(rec, "gyro_unit", f"unit {rec.gyro_unit!r} is unknown", f"one of {GYRO_UNITS}")
    if not (np.isfinite(rec.rate_hz) and rec.rate_hz > 0):
        _fail(rec, "rate_hz", f"nominal rate is {rec.rate_hz}", "a positive number of Hz")
    if rec.t.ndim != 1 or len(rec.t) < 2:
        _fail(rec, "t", f"timestamps have shape {rec.t.shape}", "a 1-D array of at least 2 samples")
    n = len(rec.t)
    arrays = {"t": rec.t, "accel": rec.accel, "gyro": rec.gyro} | ({"mag": rec.mag} if rec.mag is not None else {})
    for name, a in arrays.items():
        if name != "t" and a.shape != (n, 3):
            _fail(rec, name, f"shape {a.shape}", f"({n}, 3), one xyz row per timestamp")
        bad = np.argwhere(~np.isfinite(a))
        if len(bad):
            i, axis = int(bad[0][0]), (int(bad[0][1]) if a.ndim == 2 else None)
            _fail(rec, name, f"{len(bad)} non-finite values (NaN/inf), first at sample {i}", "finite numbers", i, axis)
    dt = np.diff(rec.t)
    if (dt == 0).any():
        i = int(np.argmax(dt == 0))
        _fail(rec, "t", f"duplicate timestamp {rec.t[i]:.6f} s at samples {i} and {i + 1}", "strictly increasing times",
              i + 1)
    if (dt < 0).any():
        i = int(np.argmax(dt < 0))
        _fail(rec, "t", f"time goes back from {rec.t[i]:.6f} s to {rec.t[i + 1]:.6f} s at sample {i + 1}",
              "strictly increasing (monotonic) times", i + 1)
    period = 1.0 / rec.rate_hz
    median = float(np.median(dt))
    if not 0.5 * period <= median <= 2.0 * period:
        _fail(rec, "rate_hz", f"nominal rate {rec.rate_hz:g} Hz but the median spacing is {median:.6g} s "
              f"({1 / median:.4g} Hz)", "the nominal rate to match the timestamps within a factor of 2")
    if dt.max() > rec.max_gap * period:
        i = int(np.argmax(dt))
        _fail(rec, "t", f"gap of {dt[i]:.4g} s between samples {i} and {i + 1} (t={rec.t[i]:.4f} s)",
              f"no gap longer than {rec.max_gap:g} nominal periods ({rec.max_gap * period:.4g} s at {rec.rate_hz:g} Hz)",
              i + 1)
    if rec.gravity:
        a = np.median(np.linalg.norm(ms2_to_g(rec.accel) if rec.accel_unit == "m/s^2" else rec.accel, axis=1))
        if not 0.25 <= a <= 4.0:
            shown = a * G if rec.accel_unit == "m/s^2" else a
            hint = {"m/s^2": "about 9.8 m/s^2", "g": "about 1 g"}[rec.accel_unit]
            _fail(rec, "accel", f"median |accel| is {shown:.4g} {rec.accel_unit}, implausible for a recording "
                  "that includes gravity (wrong unit?)", f"{hint} (within a factor of 4)")
    w = np.percentile(np.linalg.norm(convert_gyro(rec.gyro, rec.gyro_unit, "rad/s"), axis=1), 99)
    if w > MAX_GYRO_RAD_S:
        shown = w if rec.gyro_unit == "rad/s" else np.rad2deg(w)
        _fail(rec, "gyro", f"99th percentile |gyro| is {shown:.4g} {rec.gyro_unit}, beyond any gyroscope's range "
              "(wrong unit?)", f"below {MAX_GYRO_RAD_S:g} rad/s ({np.rad2deg(MAX_GYRO_RAD_S):.0f} deg/s)")
