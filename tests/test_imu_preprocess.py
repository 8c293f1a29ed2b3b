import numpy as np
import pytest

from conftest import fixture_path
from imuspec.imu import IMUError, IMURecording, from_array
from imuspec.imu.preprocess import limu_bert_input, limu_bert_windows, resample, windows
from imuspec.imu.readers import read_sensorcaps_jsonl, read_watch_npz


def _tones(freq_hz, rate=50.0, seconds=8.0, jitter=0.0):
    """Accelerometer z = 1 g + 0.2 sin, gyro x = 0.5 sin, at ``freq_hz``; optional timestamp jitter."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate + jitter * rng.uniform(-1, 1, int(seconds * rate)) / rate
    s = np.sin(2 * np.pi * freq_hz * t)
    acc = np.stack([0 * s, 0 * s, 1 + 0.2 * s], 1)
    gyr = np.stack([0.5 * s, 0 * s, 0 * s], 1)
    return IMURecording(t, acc, gyr, "g", "rad/s", rate, "tones", "array")


def test_resample_keeps_band_and_timestamps():
    r = resample(_tones(1.0), 20.0)
    assert r.rate_hz == 20.0 and r.n_samples == 160
    np.testing.assert_allclose(np.diff(r.t), 0.05)
    inner = slice(20, -20)  # away from the edges
    want = 0.5 * np.sin(2 * np.pi * 1.0 * r.t)
    np.testing.assert_allclose(r.gyro[inner, 0], want[inner], atol=5e-3)
    np.testing.assert_allclose(r.accel[inner, 2], 1 + 0.4 * want[inner], atol=5e-3)


def test_resample_is_anti_aliased():
    # 17 Hz is above the 10 Hz Nyquist frequency of 20 Hz: naive decimation would alias it to 3 Hz at full amplitude
    r = resample(_tones(17.0), 20.0)
    assert np.abs(r.gyro[20:-20, 0]).max() < 0.02
    naive = _tones(17.0).gyro[::5, 0]  # 50 -> 10 Hz by picking samples, for contrast
    assert np.abs(naive).max() > 0.3


def test_resample_irregular_timestamps():
    r = resample(_tones(1.0, rate=100.0, jitter=0.2), 20.0)
    np.testing.assert_allclose(r.gyro[20:-20, 0], 0.5 * np.sin(2 * np.pi * r.t[20:-20]), atol=1e-2)


def test_windows_keep_timestamps():
    rec = _tones(1.0)
    ws = windows(rec, 100, hop=50)
    assert len(ws) == 7 and all(w.n_samples == 100 for w in ws)
    np.testing.assert_array_equal(ws[1].t, rec.t[50:150])
    np.testing.assert_array_equal(ws[1].gyro, rec.gyro[50:150])
    assert windows(rec, 1000) == []
    with pytest.raises(IMUError, match="window length 1"):
        windows(rec, 1)


def test_limu_bert_input_units_and_shape():
    rec = _tones(1.0)  # accel in g at 50 Hz
    x = limu_bert_input(rec)
    assert x.shape == (120, 6) and x.dtype == np.float32
    r = resample(rec, 20.0)
    np.testing.assert_allclose(x[:, :3], r.accel[:120] * 9.80665 / 9.8, rtol=1e-6)  # g -> m/s^2 -> / 9.8
    np.testing.assert_allclose(x[:, 3:], r.gyro[:120], rtol=1e-6)
    xs, starts = limu_bert_windows(rec)
    assert xs.shape == (1, 120, 6) and starts.tolist() == [0.0]
    with pytest.raises(IMUError, match="expected at least 120"):
        limu_bert_input(from_array(np.tile([0, 0, 9.8, 0, 0, 0], (50, 1)), 10.0))


def test_limu_bert_input_on_fixtures():
    caps = read_sensorcaps_jsonl(fixture_path("llasa", "sensorcaps_untrained_10hz.jsonl"))[0]
    x = limu_bert_input(caps)  # 60 samples at 10 Hz -> 120 at 20 Hz
    assert x.shape == (120, 6)
    np.testing.assert_allclose(x[::2, 3:], caps.gyro, atol=1e-3)  # upsampling by 2 keeps the original samples
    watch = read_watch_npz(fixture_path("watch_imu", "watch_imu.npz"))[0]
    xs, starts = limu_bert_windows(watch)
    assert xs.shape == (4, 120, 6)  # 1333 samples at 50 Hz = 26.7 s and np.allclose(np.diff(starts), 6.0)
    ratio = np.median(np.linalg.norm(xs[..., :3], axis=-1)) / np.median(np.linalg.norm(watch.accel, axis=1))
    assert ratio == pytest.approx(9.80665 / 9.8, rel=0.03)  # g -> m/s^2 -> / 9.8
