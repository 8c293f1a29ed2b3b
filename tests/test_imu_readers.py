import json

import numpy as np
import pytest

from conftest import fixture_path
from imuspec.imu import IMUError, IMURecording, convert_accel, convert_gyro, from_array, read_csv, read_imu
from imuspec.imu.readers import (
    read_aedat4,
    read_basicmotions_ts,
    read_ego4d_csv,
    read_npy,
    read_sensorcaps_jsonl,
    read_watch_npz,
)
from imuspec.imu.recording import G

HEADER = "canonical_timestamp_ms,accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z"


def _still(n=50, rate=50.0):
    """A plausible still recording: gravity on z in m/s^2, small rotation in rad/s."""
    rng = np.random.default_rng(0)
    t = np.arange(n) / rate
    acc = np.array([0.1, 0.2, 9.8]) + 0.01 * rng.standard_normal((n, 3))
    gyr = 0.01 * rng.standard_normal((n, 3))
    return t, acc, gyr


def _write_csv(path, t_ms, acc, gyr, header=HEADER):
    rows = [header] + [",".join(map(str, [a, *b, *c])) for a, b, c in zip(t_ms, acc, gyr)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_ego4d_csv_reads_and_names_units(tmp_path):
    t, acc, gyr = _still()
    rec = read_ego4d_csv(_write_csv(tmp_path / "imu.csv", t * 1000 + 1234.0, acc, gyr))
    assert rec.format == "ego4d_csv" and rec.units == {"accel": "m/s^2", "gyro": "rad/s"}
    assert rec.n_samples == 50 and rec.rate_hz == pytest.approx(50.0)
    np.testing.assert_allclose(rec.t, t + 1.234)
    np.testing.assert_allclose(rec.accel, acc)
    assert read_imu(tmp_path / "imu.csv").format == "ego4d_csv"


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t, a, g: (t, a, g, HEADER.replace("gyro_y", "gyro_q")), r"missing columns \['gyro_y'\]"),
        (lambda t, a, g: (t, a.__setitem__((3, 1), np.nan) or a, g, HEADER), r"column 'accl_y', row 5: 1 non-finite.*sample 3"),
        (lambda t, a, g: (t, a, g.__setitem__((7, 2), np.inf) or g, HEADER), r"column 'gyro_z', row 9: 1 non-finite.*sample 7"),
        (lambda t, a, g: (t.__setitem__(10, t[8]) or t, a, g, HEADER), r"column 'canonical_timestamp_ms', row 12: time goes back.*sample 10"),
        (lambda t, a, g: (t.__setitem__(10, t[9]) or t, a, g, HEADER), r"column 'canonical_timestamp_ms', row 12: duplicate timestamp.*samples 9 and 10"),
        (lambda t, a, g: (np.concatenate([t[:25], t[25:] + 1000.0]), a, g, HEADER), r"column 'canonical_timestamp_ms', row 27: gap of 1.02 s between samples 24 and 25"),
        (lambda t, a, g: (t, a / G, g, HEADER), r"columns 'accl_x', 'accl_y', 'accl_z': median \|accel\| is 0.99.*expected about 9.8 m/s\^2"),
        (lambda t, a, g: (t, a, g + 57.0, HEADER), r"columns 'gyro_x', 'gyro_y', 'gyro_z': 99th percentile \|gyro\| is 98.*rad/s.*expected below 40"),
    ],
    ids=["missing_column", "nan", "inf", "non_monotonic", "duplicate", "gap", "accel_unit", "gyro_unit"],
)
def test_ego4d_csv_bad_input(tmp_path, edit, match):
    t, acc, gyr = _still()
    t_ms, acc, gyr, header = edit(t * 1000, acc, gyr)
    path = _write_csv(tmp_path / "bad.csv", t_ms, acc, gyr, header)
    with pytest.raises(IMUError, match=match) as e:
        read_ego4d_csv(path)
    assert str(path) in str(e.value)


def test_csv_non_numeric_cell(tmp_path):
    t, acc, gyr = _still(5)
    path = _write_csv(tmp_path / "x.csv", t * 1000, acc, gyr)
    path.write_text(path.read_text().replace(str(acc[2, 0]), "abc", 1))
    with pytest.raises(IMUError, match=r"row 4, column 'accl_x': 'abc' is not a number"):
        read_ego4d_csv(path)


def test_generic_csv_column_map_and_units(tmp_path):
    t, acc, gyr = _still()
    rows = ["time,ax,ay,az,wx,wy,wz"] + [",".join(map(str, [a, *b, *c])) for a, b, c in zip(t, acc / G, np.rad2deg(gyr))]
    (tmp_path / "g.csv").write_text("\n".join(rows))
    cols = {"t": "time", "accel_x": "ax", "accel_y": "ay", "accel_z": "az", "gyro_x": "wx", "gyro_y": "wy", "gyro_z": "wz"}
    rec = read_csv(tmp_path / "g.csv", cols, time_unit="s", accel_unit="g", gyro_unit="deg/s")
    assert rec.units == {"accel": "g", "gyro": "deg/s"}
    si = rec.to_units("m/s^2", "rad/s")
    np.testing.assert_allclose(si.accel, acc, rtol=1e-9)
    np.testing.assert_allclose(si.gyro, gyr, atol=1e-12)
    with pytest.raises(IMUError, match=r"no entry for \['gyro_z'\]"):
        read_csv(tmp_path / "g.csv", {k: v for k, v in cols.items() if k != "gyro_z"})
    with pytest.raises(IMUError, match="time unit 'min' is unknown"):
        read_csv(tmp_path / "g.csv", cols, time_unit="min")


def test_conversions_are_explicit_and_invert():
    x = np.array([[0.0, 1.0, -2.5]])
    np.testing.assert_allclose(convert_accel(convert_accel(x, "g", "m/s^2"), "m/s^2", "g"), x)
    np.testing.assert_allclose(convert_accel(x, "g", "m/s^2"), x * 9.80665)
    np.testing.assert_allclose(convert_gyro(np.array([180.0]), "deg/s", "rad/s"), [np.pi])
    with pytest.raises(IMUError, match="unit 'mg' is unknown"):
        convert_accel(x, "mg", "g")


def test_recording_checks_units_shapes_and_rate():
    t, acc, gyr = _still()
    with pytest.raises(IMUError, match=r"field 'accel_unit': unit 'G'.*expected one of"):
        IMURecording(t, acc, gyr, "G", "rad/s", 50.0, "mem", "array")
    with pytest.raises(IMUError, match=r"field 'gyro': shape \(49, 3\); expected \(50, 3\)"):
        IMURecording(t, acc, gyr[1:], "m/s^2", "rad/s", 50.0, "mem", "array")
    with pytest.raises(IMUError, match=r"field 'rate_hz': nominal rate 200 Hz but the median spacing"):
        IMURecording(t, acc, gyr, "m/s^2", "rad/s", 200.0, "mem", "array")
    with pytest.raises(IMUError, match=r"median \|accel\| is 9.8\d* g"):
        IMURecording(t, acc, gyr, "g", "rad/s", 50.0, "mem", "array")
    linear = IMURecording(t, acc - [0, 0, 9.8], gyr, "m/s^2", "rad/s", 50.0, "mem", "array", gravity=False)
    assert linear.n_samples == 50  # gravity-free acceleration is not held to |a| ~ 1 g


def test_numpy_arrays(tmp_path):
    t, acc, gyr = _still(120, 20.0)
    np.save(tmp_path / "w.npy", np.concatenate([acc, gyr], 1).astype(np.float32))
    rec = read_npy(tmp_path / "w.npy")
    assert (rec.format, rec.rate_hz, rec.n_samples) == ("npy", 20.0, 120)
    with pytest.raises(IMUError, match=r"field 'data': shape \(120, 5\)"):
        from_array(np.zeros((120, 5)), 20.0)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IMUError, match="not a plain numeric .npy"):
        read_npy(tmp_path / "obj.npy")


def test_sensorcaps_and_opensqa_fixtures():
    caps = read_sensorcaps_jsonl(fixture_path("llasa", "sensorcaps_untrained_10hz.jsonl"))
    qa = read_sensorcaps_jsonl(fixture_path("llasa", "opensqa_untrained_10hz.jsonl"))
    assert len(caps) == len(qa) == 40
    r = caps[0]
    assert (r.n_samples, r.rate_hz, r.units["accel"]) == (60, 10.0, "m/s^2")
    assert r.meta["label"] == "standing" and r.meta["features"].startswith("Standing still")
    assert r.meta["narration"].startswith("The gyroscope readings") and r.meta["qa"] == []
    assert len(qa[0].meta["qa"]) == 10 and qa[0].meta["qa"][0][1].startswith("The gyroscope readings close to zero")
    # answers come as "- Answer:", "Answer:", "1. **Answer:**" or a bare "- " line; two windows have 6 pairs
    assert [len(r.meta["qa"]) for r in qa].count(10) == 38 and sum(len(r.meta["qa"]) for r in qa) == 392
    assert all(a and "Answer" not in a[:12] for r in qa for _, a in r.meta["qa"])
    np.testing.assert_array_equal(qa[0].accel, r.accel)
    assert r.gyro[0].tolist() == [-0.00943, -0.008636, -0.001587]
    assert read_imu(fixture_path("llasa", "sensorcaps_untrained_10hz.jsonl"), index=3).meta["label"] == caps[3].meta["label"]


def _chat(user):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "Features: x\nNarration: y"}]})


def test_sensorcaps_bad_input(tmp_path):
    rows = [[0.01, 0.02, 0.0]] * 10
    acc = [[0.1, 0.2, 9.8]] * 10
    cases = {
        "no_gyro": (f"Summary: walking\nAccelerometer: {acc}", r"line 1: field 'Gyroscope:' not found"),
        "lengths": (f"Summary: x\nGyroscope: {rows}\nAccelerometer: {acc[:9]}", r"9 rows; expected as many as 'Gyroscope:' \(10\)"),
        "nan": (f"Summary: x\nGyroscope: {rows}\nAccelerometer: {acc[:9] + [[float('nan')] * 3]}", r"field 'accel': 3 non-finite"),
        "shape": (f"Summary: x\nGyroscope: {[[0.0, 1.0]] * 10}\nAccelerometer: {acc}", r"field 'Gyroscope:': shape \(10, 2\)"),
    }
    for name, (user, match) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(_chat(user).replace("nan", "NaN") + "\n")
        with pytest.raises(IMUError, match=match):
            read_sensorcaps_jsonl(path)
    (tmp_path / "notjson.jsonl").write_text("{oops\n")
    with pytest.raises(IMUError, match="line 1: expected a JSON object with 'messages'"):
        read_sensorcaps_jsonl(tmp_path / "notjson.jsonl")


def test_basicmotions_fixture():
    train = read_basicmotions_ts(fixture_path("basicmotions", "BasicMotions_TRAIN.ts"))
    assert len(train) == 40 and {r.meta["label"] for r in train} == {"Standing", "Running", "Walking", "Badminton"}
    r = train[0]
    assert (r.n_samples, r.rate_hz, r.gravity) == (100, 10.0, False)
    assert r.accel[0].tolist() == [0.079106, 0.394032, 0.551444]


def test_basicmotions_bad_input(tmp_path):
    ok = "@problemName X\n@timeStamps false\n@dimensions 6\n@classLabel true a b\n@data\n"
    line = ":".join(["0.1,0.2,0.3"] * 6) + ":a\n"
    cases = {
        "timestamps": (ok.replace("@timeStamps false", "@timeStamps true") + line, r"'@timestamps' is 'true'; expected 'false'"),
        "dims": (ok + ":".join(["0.1,0.2,0.3"] * 5) + ":a\n", r"line 6: 5 dimensions; expected 6"),
        "ragged": (ok + ":".join(["0.1,0.2,0.3"] * 5 + ["0.1,0.2"]) + ":a\n", r"dimension lengths \[3, 3, 3, 3, 3, 2\]"),
        "nan": (ok + ":".join(["0.1,nan,0.3"] * 6) + ":a\n", r"field 'accel': 3 non-finite"),
        "text": (ok + ":".join(["0.1,x,0.3"] * 6) + ":a\n", r"line 6: non-numeric value"),
        "empty": (ok, r"no data lines"),
    }
    for name, (text, match) in cases.items():
        (tmp_path / f"{name}.ts").write_text(text)
        with pytest.raises(IMUError, match=match):
            read_basicmotions_ts(tmp_path / f"{name}.ts")


def test_watch_fixture():
    recs = read_watch_npz(fixture_path("watch_imu", "watch_imu.npz"))
    assert len(recs) == 140 and sum(r.n_samples for r in recs) == 244102
    assert (recs[0].rate_hz, recs[0].units["accel"], recs[0].meta["label"]) == (50.0, "g", "PEN")


def test_watch_bad_input(tmp_path):
    good = dict(samples=np.tile([[0.0, 0.0, 1.0, 0.1, 0.1, 0.1]], (20, 1)), offsets=np.array([0, 10, 20]),
                channel_names=np.array(["ax", "ay", "az", "wx", "wy", "wz"]))
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "offsets"}, r"missing arrays \['offsets'\]"),
        "channels": ({**good, "channel_names": np.array(["ax", "ay", "az", "gx", "gy", "gz"])}, r"field 'channel_names'"),
        "offsets": ({**good, "offsets": np.array([0, 10, 25])}, r"field 'offsets' does not split 'samples' \(20 rows\)"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(IMUError, match=match):
            read_watch_npz(tmp_path / f"{name}.npz")
    bad = good["samples"].copy()
    bad[13, 4] = np.nan
    np.savez(tmp_path / "nan.npz", **{**good, "samples": bad})
    with pytest.raises(IMUError, match=r"watch_imu|nan.npz\[1\]: field 'gyro': 1 non-finite values.*sample 3"):
        read_watch_npz(tmp_path / "nan.npz")


def test_aedat4_fixture_imu_stream():
    rec = read_aedat4(fixture_path("aedat4", "davis_sample_short.aedat4"))
    assert rec.n_samples == 475 and rec.units == {"accel": "g", "gyro": "deg/s"}
    assert rec.rate_hz == pytest.approx(805, rel=0.01) and rec.mag is None
    assert rec.t[0] == pytest.approx(1605537493.718788) and rec.accel[0, 1] == pytest.approx(-0.9951172)


def test_aedat4_bad_input(tmp_path):
    (tmp_path / "bad.aedat4").write_bytes(b"#!AER-DAT4.0\r\nnot really")
    with pytest.raises(IMUError, match="bad.aedat4: truncated inside the AEDAT 4 header"):
        read_aedat4(tmp_path / "bad.aedat4")


def test_read_imu_dispatch(tmp_path):
    ts = fixture_path("basicmotions", "BasicMotions_TEST.ts")
    (tmp_path / "motions.txt").write_text(ts.read_text())
    assert read_imu(tmp_path / "motions.txt", index=1).format == "basicmotions_ts"  # by content
    with pytest.raises(IMUError, match=r"holds 40 recordings; pick one with --index \(index= in Python\) in 0..39"):
        read_imu(ts)
    with pytest.raises(IMUError, match=r"index 40 is out of range"):
        read_imu(ts, index=40)
    (tmp_path / "x.bin").write_bytes(b"\x00\x01 nothing known")
    with pytest.raises(IMUError, match=r"unknown IMU format.*known formats: ego4d_csv \(.csv\), sensorcaps_jsonl"):
        read_imu(tmp_path / "x.bin")
    with pytest.raises(IMUError, match=r"format 'hdf5' is unknown; known formats:"):
        read_imu(ts, format="hdf5")
    with pytest.raises(IMUError, match="file not found"):
        read_imu(tmp_path / "absent.csv")
