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


def test_aedat4_corrupt_packet_is_skipped_and_the_rest_read(tmp_path):
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
