"""Every reader, fuzzed (issue 15, item 12): random bytes and mutations of a valid file (bytes flipped, set, inserted,
deleted, cut, text tokens spliced in) either read, or raise the project's own error (IMUError / EventError) with one
line naming the file — never another exception, never a hang, never memory beyond a bound set by the file's size.

Examples are derandomised and bounded (``IMUSPEC_FUZZ_EXAMPLES`` per reader, default 50) so the suite stays fast;
``benchmarks/fuzz_readers.py`` runs the same properties deeper, with fresh randomness.
"""

from __future__ import annotations

import os
import pickle
import signal
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imuspec.events import EventError, EventStream, read_events, write_events
from imuspec.events.readers import read_aedat4
from imuspec.imu import readers as imu
from imuspec.imu.recording import IMUError

EXAMPLES = int(os.environ.get("IMUSPEC_FUZZ_EXAMPLES", "50"))
DERANDOMIZE = os.environ.get("IMUSPEC_FUZZ_RANDOM", "") == ""
HANG_S = 20.0
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
TOKENS = [b",", b"\n", b" ", b":", b"-", b"nan", b"inf", b"1e309", b"-0", b"x", b"\x00", b"\xff", b"[[", b"]]", b'"',
          b"@data", b"99999999999999999999", b"\r\n", b"{", b"}"]


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang(f"a reader ran past {HANG_S} s")


def check(read, path: Path, size: int) -> None:
    """The contract: ``read(path)`` returns, or raises IMUError/EventError with a one-line message naming the file,
    within HANG_S seconds and a peak of NumPy/Python memory under 32 MB + 64x the file."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a RecordingWarning is a fine outcome; the value is what is checked
            read(path)
    except (IMUError, EventError) as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"multi-line error: {msg!r}"
        assert path.name in msg, f"the error does not name the file: {msg!r}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert peak < 32e6 + 64 * size, f"peak memory {peak / 1e6:.1f} MB for a {size}-byte file"


# --- inputs: a valid seed per format, mutated -------------------------------------------------------------------

def mutate(seed: bytes, ops) -> bytes:
    b = bytearray(seed)
    for op, where, value, n, token in ops:
        i = (int(where * len(b)) if isinstance(where, float) else where) if b else 0
        i = min(i, len(b))
        if op == "flip" and i < len(b):
            b[i] ^= 1 << (value % 8)
        elif op == "set":
            b[i:i + n] = bytes([value]) * n
        elif op == "insert":
            b[i:i] = bytes([value]) * n
        elif op == "delete":
            del b[i:i + n]
        elif op == "cut":
            del b[i:]
        elif op == "token":
            b[i:i] = token
    return bytes(b)


OPS = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut", "token"]),
                         st.one_of(st.floats(0, 1), st.integers(0, 4096)),  # anywhere, or in the header
                         st.integers(0, 255), st.integers(1, 64), st.sampled_from(TOKENS)), min_size=1, max_size=5)


def inputs(seed: bytes):
    """A mutated seed, mostly; sometimes plain random bytes."""
    return st.one_of(OPS.map(lambda ops: mutate(seed, ops)), st.binary(max_size=2048))


def _still(n=60, rate=50.0):
    t = np.arange(n) / rate
    rng = np.random.default_rng(1)
    accel = np.c_[0.1 * rng.standard_normal((n, 2)), 9.8 + 0.1 * rng.standard_normal(n)]
    return t, accel, 0.1 * rng.standard_normal((n, 3))


def _stream(n=200) -> EventStream:
    rng = np.random.default_rng(2)
    return EventStream(rng.integers(0, 64, n), rng.integers(0, 48, n), np.sort(rng.integers(0, 50_000, n)),
                       rng.integers(0, 2, n), 64, 48, "seed")


def seed_bytes(kind: str, tmp: Path) -> bytes:
    t, a, g = _still()
    if kind == "csv":
        rows = ["canonical_timestamp_ms,accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z"]
        rows += [",".join(f"{v:.5f}" for v in [ti * 1000, *ai, *gi]) for ti, ai, gi in zip(t, a, g)]
        return ("\n".join(rows) + "\n").encode()
    if kind == "imu_npy":
        np.save(tmp / "s.npy", np.c_[a, g])
        return (tmp / "s.npy").read_bytes()
    if kind == "jsonl":
        return fixture_path("llasa", "sensorcaps_untrained_10hz.jsonl").read_bytes().split(b"\n")[0] + b"\n"
    if kind == "ts":
        lines = fixture_path("basicmotions", "BasicMotions_TEST.ts").read_bytes().split(b"\n")
        data = lines.index(next(x for x in lines if x.strip().lower() == b"@data"))
        return b"\n".join(lines[4:data + 3]) + b"\n"
    if kind == "npz":
        samples = np.r_[np.c_[a, g], np.c_[a, g]].astype(np.float32) / [9.8, 9.8, 9.8, 1, 1, 1]
        np.savez(tmp / "s.npz", samples=samples, offsets=np.array([0, 60, 120]), label=np.array([0, 1]),
                 label_names=np.array(["a", "b"]), subject=np.array([1, 2]), side=np.array(["L", "R"]),
                 channel_names=np.array(["ax", "ay", "az", "wx", "wy", "wz"]))
        return (tmp / "s.npz").read_bytes()
    if kind == "aedat4":
        return fixture_path("aedat4", "davis_sample_short.aedat4").read_bytes()
    s = _stream()
    if kind == "pickle_npy":
        with open(tmp / "s.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
            pickle.dump(np.array({"x": s.x, "y": s.y, "t": s.t, "p": s.p}, dtype=object), f, protocol=2)
        return (tmp / "s.npy").read_bytes()
    if kind == "structured_npy":
        arr = np.zeros(len(s), dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
        for k in "xytp":
            arr[k] = getattr(s, k)
        np.save(tmp / "s.npy", arr)
        return (tmp / "s.npy").read_bytes()
    if kind == "txt":
        lines = (f"{ti / 1e6:.6f} {x} {y} {p}\n" for x, y, ti, p in zip(s.x, s.y, s.t, s.p))
        return ("64 48\n" + "".join(lines)).encode()
    if kind == "txt-xytp":
        return "".join(f"{x} {y} {ti} {p}\n" for x, y, ti, p in zip(s.x, s.y, s.t, s.p)).encode()
    if kind == "h5":
        write_events(s, tmp / "s.h5")
        return (tmp / "s.h5").read_bytes()
    raise KeyError(kind)


READERS = {
    # IMU
    "csv": (".csv", imu.read_ego4d_csv),  # format: (suffix, reader, ...)
    "imu_npy": (".npy", imu.read_npy),
    "jsonl": (".jsonl", imu.read_sensorcaps_jsonl),
    "ts": (".ts", imu.read_basicmotions_ts),
    "npz": (".npz", imu.read_watch_npz),
    "aedat4": (".aedat4", read_aedat4, imu.read_aedat4),  # one camera file, the events' and the IMU's readers
    # events
    "pickle_npy": (".npy", lambda p: read_events(p, "npy")),
    "structured_npy": (".npy", lambda p: read_events(p, "npy")),
    "txt": (".txt", lambda p: read_events(p, "txt")),
    "txt-xytp": (".txt", lambda p: read_events(p, "txt-xytp")),
    "h5": (".h5", lambda p: read_events(p, "h5")),
}


@pytest.mark.parametrize("kind", list(READERS))
def test_seed_reads(kind, tmp_path):
    """The seeds are valid files, so the mutations start from a file the reader accepts."""
    suffix, *reads = READERS[kind]
    p = tmp_path / f"seed{suffix}"
    p.write_bytes(seed_bytes(kind, tmp_path))
    for read in reads:
        read(p)


@pytest.mark.parametrize("kind", list(READERS))
def test_fuzzed_reader_reads_or_says_why(kind, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"fuzz_{kind}")
    suffix, *reads = READERS[kind]
    seed = seed_bytes(kind, tmp)

    @FUZZ
    @given(data=inputs(seed))
    def prop(data):
        p = tmp / f"fuzzed{suffix}"
        p.write_bytes(data)
        for read in reads:
            check(read, p, len(data))

    prop()


def test_csv_unclosed_quote_past_the_field_limit(tmp_path):
    """Beyond the fuzzer's small seeds: an opening quote that never closes makes a field over csv's limit."""
    p = tmp_path / "quote.csv"
    p.write_text("canonical_timestamp_ms,accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z\n\"" + "1" * 200_000 + "\n")
    with pytest.raises(IMUError, match=r"quote\.csv: rows from 2: not CSV \(field larger than field limit"):
        imu.read_ego4d_csv(p)
