"""Recordings as users have them: cut by a crashed recorder, corrupt, implausible — read what is whole, warn, and name
the file's own fields (issue 15, items 6, 8, 9, 10)."""

import re
import warnings

import numpy as np
import pytest
from conftest import fixture_path

from imuspec.events import EventError, read_aedat4, read_events
from imuspec.events.stream import RecordingWarning
from imuspec.imu.readers import read_aedat4 as read_aedat4_imu

AEDAT4 = ("aedat4", "davis_sample_short.aedat4")


def _cut(tmp_path, data: bytes, name: str):
    p = tmp_path / f"{name}.aedat4"
    p.write_bytes(data)
    return p


# --- item 6: AEDAT4 cut or corrupt -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, make, message", [
    ("empty", lambda b: b"", r"empty\.aedat4: empty file \(0 bytes\)"),
    ("random", lambda b: np.random.default_rng(0).bytes(4096), r"random\.aedat4: not AEDAT 4 \(bad magic"),
    ("magic", lambda b: b[:7], r"magic\.aedat4: truncated inside the AEDAT 4 magic"),
    ("header_cut", lambda b: b[:100], r"header_cut\.aedat4: truncated inside the AEDAT 4 header"),
    ("header_only", lambda b: b[:18 + int.from_bytes(b[14:18], "little")],
     r"header_only\.aedat4: truncated AEDAT 4 file: the header and no whole packet"),
])
def test_aedat4_unreadable_says_which(tmp_path, name, make, message):
    p = _cut(tmp_path, make(fixture_path(*AEDAT4).read_bytes()), name)
    with pytest.raises(EventError, match=message):
        read_aedat4(p)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_aedat4_cut_yields_every_whole_packet(tmp_path, fraction):
    whole = read_aedat4(fixture_path(*AEDAT4))
    data = fixture_path(*AEDAT4).read_bytes()
    p = _cut(tmp_path, data[:int(len(data) * fraction)], f"cut{fraction}")
    with pytest.warns(RecordingWarning, match=r"truncated: cut inside packet \d+ .* lost the last \d+ bytes") as w:
        got = read_aedat4(p)
    n, m = len(got.events), len(got.imu)
    assert 0 < n < len(whole.events) and 0 < m < len(whole.imu)
    # what was read is exactly the start of the whole file: nothing readable lost, nothing invented
    np.testing.assert_array_equal(got.events.t, whole.events.t[:n])
    np.testing.assert_array_equal(got.events.x, whole.events.x[:n])
    np.testing.assert_array_equal(got.imu, whole.imu[:m])
    span = (got.events.t[-1] - got.events.t[0]) / 1e6
    assert re.search(r"read \d+ whole packets", str(w[0].message))
    assert f"{n} events over {span:.3f} s" in str(w[0].message) and f"{m} IMU samples" in str(w[0].message)
    if fraction == 0.99:  # on today's main the 99 % file yields nothing; here it is all but the last two packets
        assert n > 0.98 * len(whole.events)


@pytest.mark.parametrize("batch", [1024, 7])  # packets per temporary copy: the same result across batch boundaries
def test_aedat4_corrupt_packet_is_skipped_and_the_rest_read(tmp_path, monkeypatch, batch):
    from imuspec.events import aedat4

    monkeypatch.setattr(aedat4, "BATCH", batch)
    whole = read_aedat4(fixture_path(*AEDAT4))
    data = bytearray(fixture_path(*AEDAT4).read_bytes())
    data[500_000:500_050] = b"\xff" * 50  # inside packet 57, an event packet: its LZ4 payload no longer decodes
    with pytest.warns(RecordingWarning, match=r"1 corrupt packet\(s\) skipped \(number 57 at byte \d+\)"):
        got = read_aedat4(_cut(tmp_path, bytes(data), "corrupt"))
    assert len(whole.events) - 5000 < len(got.events) < len(whole.events)
    assert got.events.t[-1] == whole.events.t[-1]  # packets after the bad one are read
    np.testing.assert_array_equal(got.imu, whole.imu)


def test_aedat4_whole_file_no_warning_and_imu_reader_error_type(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_aedat4(fixture_path(*AEDAT4)).events) == 111_954
    from imuspec.imu.recording import IMUError

    with pytest.raises(IMUError, match=r"empty\.aedat4: empty file"):
        read_aedat4_imu(_cut(tmp_path, b"", "empty"))
    data = fixture_path(*AEDAT4).read_bytes()
    with pytest.warns(RecordingWarning, match="truncated"):
        assert 200 < read_aedat4_imu(_cut(tmp_path, data[:len(data) // 2], "half")).n_samples < 475


# --- item 9: implausible sensor sizes ---------------------------------------------------------------------------

def test_eventgpt_npy_with_an_implausible_coordinate_warns_and_keeps_the_size(tmp_path):
    from imuspec.events.readers import write_npy

    s = read_events(fixture_path("eventgpt", "sample1.npy"))
    x = s.x.astype(np.uint16).copy()
    x[1234] = 10_000
    from imuspec.events import EventStream

    write_npy(EventStream(x, s.y, s.t, s.p, 10_001, s.height), tmp_path / "far.npy")
    with pytest.warns(RecordingWarning, match=r"far\.npy: field 'x': x\[1234\] = 10000 makes the inferred sensor "
                                              r"width 10001, beyond any event camera's \(> 4096\)"):
        got = read_events(tmp_path / "far.npy")
    assert (got.width, got.height) == (10_001, 480)  # kept, as EventGPT renders it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_events(fixture_path("eventgpt", "sample1.npy")).width == 640


# --- item 10: errors name the file's own column and row ---------------------------------------------------------

def _imu_csv(path, header, t, n=40):
    rows = [header] + [f"{t[i]},0.1,9.8,0.2,0.01,0.02,0.03" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_time_going_back_names_the_column_and_row(tmp_path):
    from imuspec.imu import read_imu
    from imuspec.imu.readers import read_csv
    from imuspec.imu.recording import IMUError

    t = np.arange(40) * 5.0 + 1000.0
    t[17] = t[15]
    p = _imu_csv(tmp_path / "back.csv", "canonical_timestamp_ms,accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z", t)
    with pytest.raises(IMUError, match=r"back\.csv: column 'canonical_timestamp_ms', row 19: time goes back") as e:
        read_imu(p)
    assert "field 't'" not in str(e.value) and "\n" not in str(e.value)
    names = {"t": "time", "accel_x": "ax", "accel_y": "ay", "accel_z": "az", "gyro_x": "wx", "gyro_y": "wy",
             "gyro_z": "wz"}
    t = np.arange(40) * 5.0
    p = _imu_csv(tmp_path / "gap.csv", "time,ax,ay,az,wx,wy,wz", np.r_[t[:30], t[30:] + 500])
    with pytest.raises(IMUError, match=r"gap\.csv: column 'time', row 32: gap of 0\.505 s"):
        read_csv(p, names)
    p.write_text(p.read_text().replace("\n145.0,0.1,9.8", "\n145.0,0.1,inf"))
    with pytest.raises(IMUError, match=r"gap\.csv: column 'ay', row 31: 1 non-finite"):
        read_csv(p, names)


# --- item 8: a video cut short ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, up_to", [("sample_demo_1", r"4\.6\d\d s of 9\.720 s \(11\d of 243 frames; the file "
                                                           r"ends early\)"),
                                         ("sample_demo_9", r"2\.9\d\d s of 9\.134 s \(7\d of 219 frames; decoding "
                                                           r"stopped: .*Invalid data")])
def test_video_cut_at_half_warns_up_to_which_time(tmp_path, name, up_to):
    from imuspec.video import read_video

    data = fixture_path("videos", f"{name}.mp4").read_bytes()
    cut = tmp_path / "half.mp4"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.warns(RecordingWarning, match=r"half\.mp4: the video could be decoded only up to " + up_to):
        clip = read_video(cut, 8)  # on main the second one fails outright: "decoding failed after 71 frames"
    assert len(clip.frames) == 8 and clip.times_s[-1] < 5.0


def test_simulate_events_on_a_cut_video_warns(tmp_path, capsys):
    from imuspec.cli import main

    data = fixture_path("videos", "sample_demo_3.mp4").read_bytes()
    cut = tmp_path / "half.mp4"
    cut.write_bytes(data[:len(data) // 2])
    assert main(["simulate-events", str(cut), str(tmp_path / "half.h5")]) == 0
    s = read_events(tmp_path / "half.h5")
    out, err = capsys.readouterr()
    assert 2.2e6 < s.duration_us < 2.3e6 and f"{len(s)} events" in out
    # on the command line the warning is one line, as an error is
    assert re.fullmatch(r"warning: \S*half\.mp4: the video could be decoded only up to 2\.29\d s of 6\.089 s "
                        r"\(5\d of 146 frames; the file ends early\): cut or corrupt after that\n", err), err
