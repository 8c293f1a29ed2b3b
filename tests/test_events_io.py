"""Event streams and readers: the real fixtures, every format round trip, and one bad-input test per failure."""

import io
import os
import pickle

import h5py
import numpy as np
import pytest
from conftest import fixture_path

from imuspec.cli import main
from imuspec.events import EventError, EventStream, read_aedat4, read_events, read_h5, write_events
from imuspec.events.readers import from_structured


def random_stream(n=2000, width=64, height=48, seed=0, span_us=90_000) -> EventStream:
    rng = np.random.default_rng(seed)
    return EventStream(rng.integers(0, width, n), rng.integers(0, height, n), np.sort(rng.integers(0, span_us, n)),
                       rng.integers(0, 2, n), width, height, "random")


def write_npy_dict(path, d, protocol=3):
    """An EventGPT-style .npy (object header + pickle), at a chosen pickle protocol."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(np.array(d, dtype=object), f, protocol=protocol)


def sample_dict(n=10):
    return {"x": np.arange(n, dtype=np.uint16), "y": np.arange(n, dtype=np.uint16) % 3,
            "t": np.arange(n, dtype=np.uint16) * 10, "p": (np.arange(n) % 2).astype(np.uint8)}


# --- the real files -------------------------------------------------------------------------------------------

def test_eventgpt_sample1():
    # written by numpy 1.x (numpy.core.* globals); the protocol tests below write numpy 2.x pickles (numpy._core.*)
    assert b"cnumpy.core.multiarray\n_reconstruct" in fixture_path("eventgpt", "sample1.npy").read_bytes()[:200]
    s = read_events(fixture_path("eventgpt", "sample1.npy"))
    assert (len(s), s.width, s.height, s.t[0], s.t[-1]) == (132_268, 640, 480, 0, 49_595)
    # same values as numpy's own (unrestricted) loader on this trusted file
    ref = np.load(fixture_path("eventgpt", "sample1.npy"), allow_pickle=True).item()
    for k in "xytp":
        np.testing.assert_array_equal(getattr(s, k), ref[k])


def test_aedat4_fixture_events_and_imu():
    r = read_aedat4(fixture_path("aedat4", "davis_sample_short.aedat4"))
    e = r.events
    assert (len(e), e.width, e.height) == (111_954, 320, 240)
    assert 0.58e6 < e.duration_us < 0.60e6
    assert r.imu is not None and len(r.imu) == 475 and r.frames is None
    accel = np.stack([r.imu[f"accelerometer_{a}"] for a in "xyz"], 1)
    assert 0.8 < np.linalg.norm(accel, axis=1).mean() < 1.2  # at rest-ish: about 1 g
    imu_rate = (len(r.imu) - 1) / ((r.imu["t"][-1] - r.imu["t"][0]) * 1e-6)
    assert 700 < imu_rate < 900
    assert read_events(fixture_path("aedat4", "davis_sample_short.aedat4")).t[0] == e.t[0]


# --- round trips through every format -----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_npy_dict_every_pickle_protocol(tmp_path, protocol):
    d = sample_dict()
    write_npy_dict(tmp_path / "e.npy", d, protocol)
    s = read_events(tmp_path / "e.npy")
    for k in "xytp":
        np.testing.assert_array_equal(getattr(s, k), d[k])
    assert s.size == (10, 3)


def test_npy_structured_and_writers(tmp_path):
    s = random_stream()
    arr = np.zeros(len(s), dtype=[("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    for k in "xytp":
        arr[k] = getattr(s, k)
    np.save(tmp_path / "s.npy", arr)
    for path in (tmp_path / "s.npy", tmp_path / "w.h5", tmp_path / "w.npy"):
        if path.name != "s.npy":
            write_events(s, path)
        r = read_events(path, sensor_size=(64, 48))
        for k in "xytp":
            np.testing.assert_array_equal(getattr(r, k), getattr(s, k))
    assert read_events(tmp_path / "w.h5").size == (64, 48)  # the HDF5 writer stores the sensor size


def test_text_formats(tmp_path):
    s = random_stream(200)
    ecd = tmp_path / "events.txt"
    ecd.write_text("64 48\n" + "".join(f"{t / 1e6:.6f} {x} {y} {p}\n" for x, y, t, p in zip(s.x, s.y, s.t, s.p)))
    xytp = tmp_path / "xytp.txt"
    xytp.write_text("".join(f"{x} {y} {t} {2 * int(p) - 1}\n" for x, y, t, p in zip(s.x, s.y, s.t, s.p)))
    for r in (read_events(ecd), read_events(xytp, "txt-xytp", sensor_size=(64, 48))):
        assert r.size == (64, 48)
        for k in "xytp":
            np.testing.assert_array_equal(getattr(r, k), getattr(s, k))


def test_h5_window_through_ms_to_idx(tmp_path):
    s = random_stream(5000, span_us=20_000)
    s = EventStream(s.x, s.y, s.t + 1_234_567, s.p, 64, 48)
    write_events(s, tmp_path / "e.h5")
    with h5py.File(tmp_path / "e.h5") as f:  # DSEC meaning of ms_to_idx: first event at or after k ms
        ms_to_idx, t = f["ms_to_idx"][()], f["events/t"][()]
        assert all(t[i] >= k * 1000 and (i == 0 or t[i - 1] < k * 1000) for k, i in enumerate(ms_to_idx) if i < len(t))
    for t0, t1 in [(1_234_567, 1_240_000), (1_236_001, 1_236_999), (1_000_000, 1_300_000), (1_250_000, 1_254_567)]:
        w, ref = read_h5(tmp_path / "e.h5", window_us=(t0, t1)), s.window(t0, t1)
        np.testing.assert_array_equal(w.t, ref.t)
        np.testing.assert_array_equal(w.x, ref.x)


def test_window():
    s = random_stream()
    w = s.window(10_000, 20_000)
    assert w.t.min() >= 10_000 and w.t.max() < 20_000
    assert len(w) == np.count_nonzero((s.t >= 10_000) & (s.t < 20_000))


def test_inspect_events_cli(tmp_path, capsys):
    import json

    assert main(["inspect-events", str(fixture_path("eventgpt", "sample1.npy")), "--json",
                 "--frames", str(tmp_path / "fr")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"format": "npy", "n_events": 132268, "width": 640, "height": 480, "t_start_us": 0,
                    "t_end_us": 49595, "duration_us": 49595, "on_fraction": info["on_fraction"]}
    assert 0.45 < info["on_fraction"] < 0.55
    assert sorted(p.name for p in (tmp_path / "fr").iterdir()) == [f"frame_{i}.png" for i in range(5)]
    from PIL import Image

    from imuspec.events import eventgpt_frames

    frame0 = np.asarray(Image.open(tmp_path / "fr" / "frame_0.png"))
    np.testing.assert_array_equal(frame0, eventgpt_frames(read_events(fixture_path("eventgpt", "sample1.npy")))[0])


# --- bad input ------------------------------------------------------------------------------------------------

def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    d = {**sample_dict(), "evil": Payload()}
    bad = tmp_path / "evil.npy"
    write_npy_dict(bad, d)
    blob = bad.read_bytes()
    # the payload is live: numpy's own loader with allow_pickle=True runs it
    np.load(io.BytesIO(blob), allow_pickle=True)
    assert marker.exists()
    marker.rmdir()
    with pytest.raises(EventError, match=r"evil\.npy: refused to unpickle: global 'posix\.mkdir' is not allowed"):
        read_events(bad)
    assert not marker.exists()


def test_codecs_only_for_latin1(tmp_path):
    # protocol-2 pickles rebuild bytes through _codecs.encode(text, 'latin1'); any other codec is refused
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with open(tmp_path / "c.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(payload)
    with pytest.raises(EventError, match="only 'latin1'"):
        read_events(tmp_path / "c.npy")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(t=d["t"][::-1].copy()), r"field 't' is not sorted: t\[1\] = 80 µs < t\[0\] = 90 µs"),
    (lambda d: d.update(p=d["p"] + 1), r"field 'p' has 5 values other than 0/1, first p\[1\] = 2"),
    (lambda d: d.update(x=d["x"].astype(np.float32)), r"field 'x' has dtype float32, expected integers"),
    (lambda d: d.pop("p"), r"field\(s\) \['p'\] missing"),
    (lambda d: d.update({k: v[:0] for k, v in d.items()}), "the file holds no events"),
    (lambda d: d.update(y=d["y"][:5]), r"field 'y' has 5 events, expected 10"),
])
def test_bad_npy_fields(tmp_path, change, message):
    d = sample_dict()
    change(d)
    write_npy_dict(tmp_path / "bad.npy", d)
    with pytest.raises(EventError, match=r"bad\.npy: " + message):
        read_events(tmp_path / "bad.npy")


def test_coordinates_outside_the_sensor(tmp_path):
    write_npy_dict(tmp_path / "e.npy", sample_dict())
    with pytest.raises(EventError, match=r"e\.npy: field 'x' has 2 values outside the sensor, first x\[8\] = 8; "
                                         r"expected 0 <= x < 8 \(sensor 8x3\)"):
        read_events(tmp_path / "e.npy", sensor_size=(8, 3))


def test_empty_window():
    s = random_stream()
    with pytest.raises(EventError, match=r"random: no events in window \[200000, 300000\) µs; the stream spans"):
        s.window(200_000, 300_000)
    with pytest.raises(EventError, match="expected t1 > t0"):
        s.window(5, 5)


def test_formats_and_files(tmp_path):
    (tmp_path / "e.dat").write_bytes(b"")
    with pytest.raises(EventError, match=r"cannot tell the format from suffix '\.dat'; give the format \(--format on the command line, format= in Python\), one of: npy .*aedat4.*txt-xytp.*h5"):
        read_events(tmp_path / "e.dat")
    with pytest.raises(EventError, match=r"unknown format 'dvs'; known formats: npy .*aedat4"):
        read_events(tmp_path / "e.dat", "dvs")
    with pytest.raises(FileNotFoundError, match="missing.npy: file not found"):
        read_events(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(EventError, match=r"junk\.npy: not a \.npy file"):
        read_events(tmp_path / "junk.npy")
    (tmp_path / "three.txt").write_text("0.1 1 2\n0.2 3 4\n")
    with pytest.raises(EventError, match=r"three\.txt: 3 columns per line, expected 4 \(t x y p\)"):
        read_events(tmp_path / "three.txt")
    (tmp_path / "frac.txt").write_text("1 2.5 0.000001 1\n")
    with pytest.raises(EventError, match=r"frac\.txt: field 'x' on line 1 is 2\.5, expected an integer"):
        read_events(tmp_path / "frac.txt")
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f.create_dataset("events/x", data=[1])
    with pytest.raises(EventError, match=r"e\.h5: dataset\(s\) \['events/y', 'events/t', 'events/p'\] missing"):
        read_events(tmp_path / "e.h5")
    with pytest.raises(EventError, match="expected a 1-D structured array"):
        from_structured(np.zeros((3, 4)), "arr")
    with pytest.raises(EventError, match=r"unknown output suffix '\.csv'"):
        write_events(random_stream(), tmp_path / "e.csv")


def test_cli_reports_bad_input(tmp_path, capsys):
    write_npy_dict(tmp_path / "e.npy", {**sample_dict(), "t": np.arange(10) * 20_000})
    assert main(["inspect-events", str(tmp_path / "e.npy"), "--frames", str(tmp_path / "f")]) == 2
    assert "EventGPT expects streams shorter than 100000 µs" in capsys.readouterr().err
