"""Paired samples from real files: the DAVIS AEDAT4 fixture's events + IMU in 50 ms windows, the same moment from an
IMU CSV + event file written out, a video through the simulator, and every error a bad window gives."""

import numpy as np
import pytest
from conftest import fixture_path

from imuspec.events import EventStream, frames_from_video, read_aedat4, simulate, write_events
from imuspec.paired import PairingError, aedat4_windows, from_aedat4, from_files

G = 9.80665


@pytest.fixture(scope="module")
def davis():
    path = fixture_path("aedat4", "davis_sample_short.aedat4")
    return path, read_aedat4(path)


EGO4D_HEADER = "canonical_timestamp_ms,accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z"


def write_csv(path, imu: np.ndarray, shift_us: int = 0, keep=slice(None)):
    """The camera's IMU as an Ego4D CSV: ms timestamps, m/s^2, rad/s."""
    x = imu[keep]
    cols = [(x["t"].astype(np.int64) + shift_us) / 1e3]
    cols += [x[f"accelerometer_{a}"] * G for a in "xyz"] + [np.deg2rad(x[f"gyroscope_{a}"]) for a in "xyz"]
    np.savetxt(path, np.stack(cols, 1), delimiter=",", header=EGO4D_HEADER, comments="", fmt=["%.3f"] + ["%.17g"] * 6)
    return path


def test_eleven_windows_of_50ms_cover_the_file(davis):
    path, rec = davis
    ws = aedat4_windows(path)
    assert len(ws) == 11
    t_imu, ev = rec.imu["t"].astype(np.int64), rec.events.t
    assert ws[0].t0_us == max(t_imu[0], ev[0]) and all(b.t0_us - a.t0_us == 50_000 for a, b in zip(ws, ws[1:]))
    assert ws[-1].t1_us <= min(t_imu[-1], ev[-1]) < ws[-1].t1_us + 50_000
    for s in ws:
        assert s.t1_us - s.t0_us == 50_000
        # IMU samples at most one period (~1.25 ms) + jitter from each end, and every ~1.25 ms inside
        inside = t_imu[(t_imu >= s.t0_us - 1_300) & (t_imu <= s.t1_us + 1_300)]
        assert inside[0] - s.t0_us < 1_300 and s.t1_us - inside[-1] < 1_300 and np.diff(inside).max() < 2_000
        assert len(inside) >= 38  # 50 ms at ~800 Hz
        assert s.events.t[0] >= s.t0_us and s.events.t[-1] < s.t1_us
    # the windows partition the events of [first start, last end)
    assert sum(len(s.events) for s in ws) == np.count_nonzero((ev >= ws[0].t0_us) & (ev < ws[-1].t1_us))
    assert len(aedat4_windows(path, hop_us=25_000)) == 22  # (588,660 µs shared - 50 ms) // 25 ms + 1


def test_imu_input_is_the_raw_samples_interpolated(davis):
    """The draft's input from the raw structured array by hand: g -> m/s^2 / 9.8, deg/s -> rad/s, bin centres."""
    path, rec = davis
    s = from_aedat4(path, 1605537493900000, 1605537493950000)
    n = 20
    at = (s.t0_us + (np.arange(n) + 0.5) * 50_000 / n) * 1e-6
    t = rec.imu["t"].astype(np.int64) * 1e-6
    acc = [np.interp(at, t, rec.imu[f"accelerometer_{a}"] * G / 9.8) for a in "xyz"]
    gyr = [np.interp(at, t, np.deg2rad(rec.imu[f"gyroscope_{a}"])) for a in "xyz"]
    np.testing.assert_allclose(s.imu_input(n), np.stack(acc + gyr, 1), atol=1e-5)
    assert np.ptp(s.imu_input(n)[:, 3:], axis=0).max() > 1e-3  # the camera moves: not a constant input


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_separate_files_pair_like_the_camera_file(davis, tmp_path, suffix):
    path, rec = davis
    imu = write_csv(tmp_path / "imu.csv", rec.imu)
    events = tmp_path / f"events{suffix}"
    write_events(rec.events, events)
    for a in aedat4_windows(path)[::5]:
        b = from_files(imu, a.t0_us, a.t1_us, events=events)
        for k in "xytp":
            np.testing.assert_array_equal(getattr(a.events, k), getattr(b.events, k))
        # ms text vs integer µs: epoch seconds in float64 differ by ~0.2 µs
        np.testing.assert_allclose(a.imu_input(24), b.imu_input(24), atol=1e-5)


def test_video_through_the_simulator(tmp_path):
    """A video's events over a window equal the whole video's simulated events cut to that window."""
    video = fixture_path("videos", "sample_demo_1.mp4")
    t = np.arange(0, 2.0, 0.01)
    data = np.zeros((len(t), 6))
    data[:, 2], data[:, 3] = G, 0.1 * np.sin(t)
    np.savetxt(tmp_path / "imu.csv", np.column_stack([t * 1e3, data]), delimiter=",", comments="", header=EGO4D_HEADER)
    s = from_files(tmp_path / "imu.csv", 100_000, 200_000, video=video)
    whole = simulate(frames_from_video(video)).window(100_000, 200_000)
    np.testing.assert_array_equal(s.events.t, whole.t)
    np.testing.assert_array_equal(s.events.x, whole.x)
    assert s.imu_input(8).shape == (8, 6)


def test_clear_errors(davis, tmp_path):
    path, rec = davis
    t0 = aedat4_windows(path)[3].t0_us
    with pytest.raises(PairingError, match=r"over \[(\d+), \1\) µs: the window is empty or reversed"):
        from_aedat4(path, t0, t0)
    with pytest.raises(PairingError, match="davis_sample_short.aedat4 over .*: the window is empty or reversed"):
        from_aedat4(path, t0 + 50_000, t0)
    with pytest.raises(PairingError, match=r"field 't' covers .*; expected it to cover the window"):
        from_aedat4(path, t0, t0 + 10**6)
    with pytest.raises(PairingError, match="share 0 µs|share .* µs; expected at least one window of 1000000 µs"):
        aedat4_windows(path, window_us=10**6)

    events = tmp_path / "events.npy"
    write_events(rec.events, events)
    shifted = write_csv(tmp_path / "shifted.csv", rec.imu, shift_us=-10**9)
    with pytest.raises(PairingError, match=r"shifted.csv with events .*events.npy .*field 't' spans .* which do not "
                                           r"overlap; expected one clock"):
        from_files(shifted, t0, t0 + 50_000, events=events)
    half = write_csv(tmp_path / "half.csv", rec.imu, keep=slice(0, 200))
    with pytest.raises(PairingError, match=r"half.csv: field 't' covers .*expected it to cover the window"):
        from_files(half, t0 + 300_000, t0 + 350_000, events=events)
    keep = (rec.events.t < t0) | (rec.events.t >= t0 + 50_000)
    holed = tmp_path / "holed.npy"
    e = rec.events
    write_events(EventStream(e.x[keep], e.y[keep], e.t[keep], e.p[keep], e.width, e.height), holed)
    with pytest.raises(PairingError, match=rf"holed.npy: no events in window \[{t0}, {t0 + 50_000}\) µs"):
        from_files(write_csv(tmp_path / "imu.csv", rec.imu), t0, t0 + 50_000, events=holed)
    with pytest.raises(PairingError, match="give exactly one of an event file or a video"):
        from_files(half, t0, t0 + 1, events=events, video=events)
