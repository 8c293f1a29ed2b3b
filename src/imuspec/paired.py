"""Paired samples: an IMU window and an event window over the same time span, the unit the product works on.

The IMU draft reads :attr:`PairedSample.imu` over [t0, t1) (see :func:`imuspec.imu.preprocess.span_input`), the event
target reads :attr:`PairedSample.events` (events with t0 <= t < t1). Both share one clock: IMU ``t`` in seconds,
event ``t`` in microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .events.stream import EventStream
from .imu.preprocess import span_input
from .imu.recording import IMURecording


@dataclass(frozen=True)
class PairedSample:
    """``events`` in [t0_us, t1_us) and ``imu`` covering that span, from ``source``; ``text`` is the reference
    narration where one exists (the synthetic world), ``meta`` what made the sample (activity, scene, seed...)."""

    imu: IMURecording
    events: EventStream
    t0_us: int
    t1_us: int
    source: str
    text: str | None = None
    meta: dict = field(default_factory=dict)

    def imu_input(self, n: int) -> np.ndarray:
        """The draft's IMU input: [n, 6] over the sample's span, in LIMU-BERT units."""
        return span_input(self.imu, self.t0_us * 1e-6, self.t1_us * 1e-6, n)
