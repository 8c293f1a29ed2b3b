"""Memory bounded by the requested window, not by the recording (issue 15, item 7): measured with tracemalloc
(NumPy reports its buffers to it) on two sizes of the same input; the in-memory paths beside them show the
measurement sees growth where there is growth."""

import tracemalloc

import numpy as np
import pytest

from imuspec.events import read_events
from imuspec.events.simulator import SimulatorConfig, simulate, simulate_to_h5
from imuspec.imu import readers
from imuspec.imu.readers import read_ego4d_csv

HEADER = "canonical_timestamp_ms,accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z"


def _peak(fn) -> tuple[int, object]:
    tracemalloc.start()
    try:
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def _csv(path, n, rate=200.0):
    t = np.arange(n) * 1000.0 / rate
    wave = np.sin(np.outer(t * 1e-3, [1.0, 2.0, 3.0]))  # a function of time: the same rows in both files
    data = np.c_[t, 0.1 * wave + [0, 9.8, 0], 0.2 * wave]
    np.savetxt(path, data, delimiter=",", fmt="%.4f", header=HEADER, comments="")
    return path


def test_csv_window_reads_in_memory_of_the_window(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CSV_CHUNK_ROWS", 2048)
    small, big = _csv(tmp_path / "small.csv", 20_000), _csv(tmp_path / "big.csv", 80_000)
    window = (10.0, 15.0)  # 1000 rows at 200 Hz
    p_small, r_small = _peak(lambda: read_ego4d_csv(small, window_s=window))
    p_big, r_big = _peak(lambda: read_ego4d_csv(big, window_s=window))
    np.testing.assert_array_equal(r_small.data(), r_big.data())
    assert r_big.n_samples == 1000 and r_big.t[0] == pytest.approx(10.0) and r_big.t[-1] < 15.0
    assert p_big < 1.25 * p_small, (p_small, p_big)  # 4x the file, the same memory
    p_whole, whole = _peak(lambda: read_ego4d_csv(big))
    assert p_whole > 5 * p_big  # the whole file does cost memory: the measurement can fail
    np.testing.assert_array_equal(whole.data()[2000:3000], r_big.data())


def _frames(n, size=(48, 64)):
    """A bright bar sweeping across a dark frame, 100 fps: events every frame."""
    for i in range(n):
        f = np.full(size, 0.1)
        f[:, (2 * i) % size[1]:(2 * i) % size[1] + 6] = 0.9
        yield f, i * 10_000.0


def test_simulator_streams_into_h5_in_memory_of_one_interval(tmp_path):
    cfg = SimulatorConfig(seed=3)
    p_short, info = _peak(lambda: simulate_to_h5(_frames(50), tmp_path / "short.h5", cfg))
    p_long, info_long = _peak(lambda: simulate_to_h5(_frames(400), tmp_path / "long.h5", cfg))
    assert info_long["n_events"] > 7 * info["n_events"]
    assert p_long < 1.25 * p_short + 200_000, (p_short, p_long)  # 8x the video, the same memory
    p_mem, stream = _peak(lambda: simulate(_frames(400), cfg))
    assert p_mem > 3 * p_long  # holding the stream does grow: the measurement can fail
    got = read_events(tmp_path / "long.h5")  # and the streamed file holds exactly the in-memory stream
    for k in "xytp":
        np.testing.assert_array_equal(getattr(got, k), getattr(stream, k))
    assert got.size == stream.size and info_long["n_events"] == len(stream)
