"""One event-stream type for every sensor format: sorted integer timestamps, coordinates on the sensor, polarity 0/1.

Readers build it, so every stream the rest of imuspec sees has been checked once, with errors naming the file, the
field and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class EventError(ValueError):
    """An event file or stream that does not hold what the reader or the model expects."""


class RecordingWarning(UserWarning):
    """A recording that was read, but not all of it (cut, corrupt parts) or with values no sensor gives."""


@dataclass(frozen=True)
class EventStream:
    """Events as parallel arrays: ``x``, ``y`` (uint16 pixels), ``t`` (int64 µs, non-decreasing), ``p`` (uint8, 1 = ON).

    ``width`` and ``height`` are the sensor size; ``source`` names the file in error messages.
    """

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray
    width: int
    height: int
    source: str = "<memory>"

    def __post_init__(self) -> None:
        src = self.source
        arrays = {name: np.asarray(getattr(self, name)) for name in ("x", "y", "t", "p")}
        for name, a in arrays.items():
            if a.ndim != 1:
                raise EventError(f"{src}: field {name!r} has shape {a.shape}, expected a 1-D array")
            if a.dtype.kind not in "iub":
                raise EventError(f"{src}: field {name!r} has dtype {a.dtype}, expected integers")
        n = len(arrays["t"])
        for name, a in arrays.items():
            if len(a) != n:
                raise EventError(f"{src}: field {name!r} has {len(a)} events, expected {n} (as many as 't')")
        if n == 0:
            raise EventError(f"{src}: the stream is empty, expected at least one event")
        if not (isinstance(self.width, (int, np.integer)) and isinstance(self.height, (int, np.integer))
                and 0 < self.width <= 65536 and 0 < self.height <= 65536):
            raise EventError(f"{src}: sensor size {self.width}x{self.height}, expected two integers in 1..65536")
        t = arrays["t"].astype(np.int64, copy=False)
        back = np.flatnonzero(t[1:] < t[:-1])
        if len(back):
            i = int(back[0]) + 1
            raise EventError(f"{src}: field 't' is not sorted: t[{i}] = {t[i]} µs < t[{i - 1}] = {t[i - 1]} µs "
                             f"({len(back)} decreasing steps); expected non-decreasing timestamps")
        for name, size in (("x", self.width), ("y", self.height)):
            a = arrays[name]
            bad = np.flatnonzero((a < 0) | (a >= size))
            if len(bad):
                i = int(bad[0])
                raise EventError(f"{src}: field {name!r} has {len(bad)} values outside the sensor, first {name}[{i}] = "
                                 f"{a[i]}; expected 0 <= {name} < {size} (sensor {self.width}x{self.height})")
        p = arrays["p"]
        bad = np.flatnonzero((p != 0) & (p != 1))
        if len(bad):
            i = int(bad[0])
            raise EventError(f"{src}: field 'p' has {len(bad)} values other than 0/1, first p[{i}] = {p[i]}; "
                             "expected polarity 0 (OFF) or 1 (ON)")
        object.__setattr__(self, "x", arrays["x"].astype(np.uint16, copy=False))
        object.__setattr__(self, "y", arrays["y"].astype(np.uint16, copy=False))
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "p", p.astype(np.uint8, copy=False))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    def __len__(self) -> int:
        return len(self.t)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the sensor."""
        return self.width, self.height

    @property
    def duration_us(self) -> int:
        return int(self.t[-1] - self.t[0])

    def window(self, t0_us: int, t1_us: int) -> EventStream:
        """The events with ``t0_us <= t < t1_us`` (binary search on the sorted timestamps)."""
        if t1_us <= t0_us:
            raise EventError(f"{self.source}: window [{t0_us}, {t1_us}) µs is empty, expected t1 > t0")
        i, j = np.searchsorted(self.t, [t0_us, t1_us], side="left")
        if i == j:
            raise EventError(f"{self.source}: no events in window [{t0_us}, {t1_us}) µs; the stream spans "
                             f"{self.t[0]}..{self.t[-1]} µs")
        return self.slice(int(i), int(j))

    def slice(self, i: int, j: int) -> EventStream:
        """Events ``i:j`` by index, same sensor and source."""
        return EventStream(self.x[i:j], self.y[i:j], self.t[i:j], self.p[i:j], self.width, self.height, self.source)

    def check_duration(self, max_us: int, consumer: str) -> None:
        """Refuse streams of ``max_us`` or longer, as ``consumer`` (a model) does."""
        if self.duration_us >= max_us:
            raise EventError(f"{self.source}: field 't' spans {self.duration_us} µs ({self.t[0]}..{self.t[-1]}); "
                             f"{consumer} expects streams shorter than {max_us} µs — take a window first")
