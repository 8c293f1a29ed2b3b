"""Readers: every IMU file format in one place, each returning validated :class:`IMURecording` objects.

Formats (``read_imu`` picks one by name, extension or content):

- ``ego4d_csv``: Ego4D IMU CSV (``canonical_timestamp_ms, accl_*, gyro_*``; m/s^2, rad/s); any other CSV through
  :func:`read_csv` with a column map.
- ``npy``: a plain ``[N, 6]`` array (accel xyz, gyro xyz), as LLaSA stores its IMU windows; :func:`from_array` for
  arrays in memory.
- ``sensorcaps_jsonl``: SensorCaps / OpenSQA chat JSONL (LLaSA): the ``Gyroscope:`` / ``Accelerometer:`` lists of the
  user turn, with the label, features, narration and Q/A pairs in ``meta``.
- ``basicmotions_ts``: the sktime/aeon ``.ts`` text format as BasicMotions uses it (6 equal-length dimensions).
- ``watch_npz``: the flattened seglearn smartwatch recordings (``samples``, ``offsets``, labels).
- ``aedat4``: the IMU stream of an iniVation AEDAT4 file, through the ``aedat`` package.

Files are never unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from .recording import IMUError, IMURecording

EGO4D_COLUMNS = {
    "t": "canonical_timestamp_ms",
    **{f"accel_{a}": f"accl_{a}" for a in "xyz"},
    **{f"gyro_{a}": f"gyro_{a}" for a in "xyz"},
}
_TIME_SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def _rate_from(t: np.ndarray) -> float:
    """Nominal rate estimated from the median positive spacing (validation then checks the rest)."""
    dt = np.diff(t)
    dt = dt[dt > 0]
    return float(1.0 / np.median(dt)) if len(dt) else 1.0


def from_array(
    data: np.ndarray,
    rate_hz: float,
    accel_unit: str = "m/s^2",
    gyro_unit: str = "rad/s",
    t: np.ndarray | None = None,
    source: str = "<array>",
    format: str = "array",
    **kw,
) -> IMURecording:
    """A recording from ``data`` [N, 6] (accel xyz, gyro xyz) or [N, 9] (+ mag xyz); times default to i / rate."""
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] not in (6, 9):
        raise IMUError(f"{source}: field 'data': shape {data.shape}; expected [N, 6] (accel xyz, gyro xyz) or [N, 9]")
    if t is None:
        t = np.arange(len(data)) / rate_hz
    mag = data[:, 6:9] if data.shape[1] == 9 else None
    return IMURecording(t, data[:, :3], data[:, 3:6], accel_unit, gyro_unit, rate_hz, source, format, mag=mag, **kw)


def read_csv(
    path: str | Path,
    columns: dict[str, str],
    time_unit: str = "ms",
    accel_unit: str = "m/s^2",
    gyro_unit: str = "rad/s",
    rate_hz: float | None = None,
    format: str = "csv",
    **kw,
) -> IMURecording:
    """A CSV with a header; ``columns`` maps t, accel_{x,y,z}, gyro_{x,y,z} (and optionally mag_*) to its names."""
    path = Path(path)
    need = ["t"] + [f"{s}_{a}" for s in ("accel", "gyro") for a in "xyz"]
    missing_keys = [k for k in need if k not in columns]
    if missing_keys:
        raise IMUError(f"column map for {path}: no entry for {missing_keys}; expected keys {need} (+ optional mag_*)")
    if time_unit not in _TIME_SCALE:
        raise IMUError(f"{path}: time unit {time_unit!r} is unknown; expected one of {list(_TIME_SCALE)}")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise IMUError(f"{path}: empty file; expected a header row naming the columns")
    header = [h.strip() for h in rows[0]]
    keys = need + [f"mag_{a}" for a in "xyz" if f"mag_{a}" in columns]
    absent = [columns[k] for k in keys if columns[k] not in header]
    if absent:
        raise IMUError(f"{path}: missing columns {absent}; the header has {header}")
    idx = [header.index(columns[k]) for k in keys]
    values = np.empty((len(rows) - 1, len(keys)))
    for r, row in enumerate(rows[1:]):
        for j, (k, i) in enumerate(zip(keys, idx)):
            try:
                values[r, j] = float(row[i])
            except (ValueError, IndexError):
                cell = row[i] if i < len(row) else "<missing>"
                raise IMUError(f"{path}: row {r + 2}, column '{columns[k]}': {cell!r} is not a number") from None
    t = values[:, 0] * _TIME_SCALE[time_unit]
    rate = rate_hz or _rate_from(t)
    return from_array(values[:, 1:], rate, accel_unit, gyro_unit, t=t, source=str(path), format=format, **kw)


def read_ego4d_csv(path: str | Path) -> IMURecording:
    """Ego4D IMU CSV: milliseconds, accelerometer m/s^2, gyroscope rad/s."""
    return read_csv(path, EGO4D_COLUMNS, "ms", "m/s^2", "rad/s", format="ego4d_csv")


def read_npy(path: str | Path, rate_hz: float = 20.0, accel_unit: str = "m/s^2", gyro_unit: str = "rad/s") -> IMURecording:
    """A plain [N, 6] array file; LLaSA's windows are 120 samples at 20 Hz in m/s^2 and rad/s."""
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise IMUError(f"{path}: not a plain numeric .npy array ({e})") from None
    return from_array(data, rate_hz, accel_unit, gyro_unit, source=str(path), format="npy")


_QUESTION = re.compile(r"^\s*\d+[.)]\s+(?!\**\s*Answer)(.+)$")
_ANSWER_MARK = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:[-*]\s*)?(?:\*\*)?Answer\s*:\s*(?:\*\*)?\s*|^\s*[-*]\s+")


def _qa_pairs(text: str) -> list[tuple[str, str]]:
    """OpenSQA's numbered pairs; answers come as "Answer:", "- Answer:", "1. **Answer:**" or a bare "- " line."""
    pairs: list[list[str]] = []
    for line in text.splitlines():
        m = _QUESTION.match(line)
        if m:
            pairs.append([m.group(1).strip(), ""])
        elif pairs and line.strip():
            pairs[-1][1] = (pairs[-1][1] + " " + _ANSWER_MARK.sub("", line, count=1).strip()).strip()
    return [(q, a) for q, a in pairs if a]


def _list_after(text: str, key: str, where: str) -> np.ndarray:
    m = re.search(re.escape(key) + r"\s*(\[\[.*?\]\])", text, re.S)
    if not m:
        raise IMUError(f"{where}: field '{key}' not found; expected '{key} [[x, y, z], ...]' in the user turn")
    try:
        a = np.array(json.loads(m.group(1)), dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise IMUError(f"{where}: field '{key}': not a list of [x, y, z] numbers ({e})") from None
    if a.ndim != 2 or a.shape[1] != 3:
        raise IMUError(f"{where}: field '{key}': shape {a.shape}; expected [N, 3]")
    return a


def _field(text: str, key: str) -> str | None:
    m = re.search(rf"^{key}:\s*(.*?)\s*(?=^\w+:|\Z)", text, re.S | re.M)
    return m.group(1) if m else None


def read_sensorcaps_jsonl(path: str | Path, rate_hz: float = 10.0) -> list[IMURecording]:
    """SensorCaps / OpenSQA windows (LLaSA): 10 Hz, m/s^2 and rad/s; text in ``meta``.

    ``meta``: ``label`` (the Summary), ``features`` and ``narration`` (assistant turn in SensorCaps, user turn in
    OpenSQA), ``qa`` (OpenSQA's numbered question / answer pairs).
    """
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            msgs = json.loads(line)["messages"]
            user = next(m["content"] for m in msgs if m["role"] == "user")
            reply = next((m["content"] for m in msgs if m["role"] == "assistant"), "")
        except (json.JSONDecodeError, KeyError, TypeError, StopIteration):
            raise IMUError(f"{where}: expected a JSON object with 'messages' holding a user turn") from None
        gyro, accel = _list_after(user, "Gyroscope:", where), _list_after(user, "Accelerometer:", where)
        if len(gyro) != len(accel):
            raise IMUError(f"{where}: field 'Accelerometer:': {len(accel)} rows; expected as many as 'Gyroscope:' ({len(gyro)})")
        meta = {
            "label": _field(user, "Summary"),
            "features": _field(user, "Features") or _field(reply, "Features"),
            "narration": _field(user, "Narration") or _field(reply, "Narration"),
            "qa": _qa_pairs(reply) if "Narration" in user else [],
        }
        out.append(from_array(np.concatenate([accel, gyro], 1), rate_hz, source=f"{path}[{len(out)}]",
                              format="sensorcaps_jsonl", meta=meta))
    if not out:
        raise IMUError(f"{path}: no windows; expected one JSON chat per line")
    return out


def read_basicmotions_ts(path: str | Path, rate_hz: float = 10.0) -> list[IMURecording]:
    """A ``.ts`` file of 6 equal-length dimensions (accel xyz, gyro xyz), as BasicMotions.

    BasicMotions stores linear acceleration (gravity removed: about 0.5 m/s^2 while standing) in m/s^2 and angular
    rate in rad/s at 10 Hz; the ``.ts`` header carries no rate or units, so they are the arguments here.
    """
    path = Path(path)
    header, cases = {}, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            header[key.lower()] = value.strip()
            continue
        cases.append((n, line))
    for key, want in (("timestamps", "false"), ("missing", "false"), ("dimensions", "6")):
        if header.get(key, want).lower() != want:
            raise IMUError(f"{path}: header field '@{key}' is {header[key]!r}; expected {want!r} (6-axis IMU, no timestamps or missing values)")
    has_label = header.get("classlabel", "false").lower().startswith("true")
    out = []
    for n, line in cases:
        parts = line.split(":")
        label = parts.pop() if has_label else None
        if len(parts) != 6:
            raise IMUError(f"{path}, line {n}: {len(parts)} dimensions; expected 6 separated by ':'")
        try:
            dims = [np.array(p.split(","), dtype=np.float64) for p in parts]
        except ValueError as e:
            raise IMUError(f"{path}, line {n}: non-numeric value ({e})") from None
        if len({len(d) for d in dims}) != 1:
            raise IMUError(f"{path}, line {n}: dimension lengths {[len(d) for d in dims]}; expected equal lengths")
        out.append(from_array(np.stack(dims, 1), rate_hz, source=f"{path}[{len(out)}]", format="basicmotions_ts",
                              gravity=False, meta={"label": label}))
    if not out:
        raise IMUError(f"{path}: no data lines after '@data'")
    return out


def read_watch_npz(path: str | Path, rate_hz: float = 50.0) -> list[IMURecording]:
    """The seglearn smartwatch recordings: 50 Hz, accelerometer in g (with gravity), gyroscope in rad/s."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        need = ("samples", "offsets", "channel_names")
        absent = [k for k in need if k not in z.files]
        if absent:
            raise IMUError(f"{path}: missing arrays {absent}; expected {list(need)} (+ label, label_names, subject, side)")
        samples, offsets = z["samples"], z["offsets"]
        names = [str(c) for c in z["channel_names"]]
        labels = z["label_names"][z["label"]] if {"label", "label_names"} <= set(z.files) else None
        extra = {k: z[k] for k in ("subject", "side") if k in z.files}
    if names != ["ax", "ay", "az", "wx", "wy", "wz"]:
        raise IMUError(f"{path}: field 'channel_names' is {names}; expected ['ax', 'ay', 'az', 'wx', 'wy', 'wz']")
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(samples) or (np.diff(offsets) <= 0).any():
        raise IMUError(f"{path}: field 'offsets' does not split 'samples' ({len(samples)} rows); expected increasing "
                       "offsets from 0 to the number of rows")
    out = []
    for i in range(len(offsets) - 1):
        meta = {"label": str(labels[i]) if labels is not None else None} | {k: v[i].item() for k, v in extra.items()}
        out.append(from_array(samples[offsets[i]:offsets[i + 1]], rate_hz, "g", "rad/s", source=f"{path}[{i}]",
                              format="watch_npz", meta=meta))
    return out


def read_aedat4(path: str | Path) -> IMURecording:
    """The IMU stream of an AEDAT4 file (iniVation DAVIS / DVXplorer): microseconds, g, deg/s.

    The file is decoded once, with its events, by :func:`imuspec.events.readers.read_aedat4`.
    """
    from ..events.readers import read_aedat4 as read_camera

    return from_aedat4_imu(read_camera(path).imu, str(path))


def from_aedat4_imu(x: np.ndarray | None, source: str) -> IMURecording:
    """A recording from an AEDAT4 IMU structured array (``t`` µs, ``accelerometer_*`` g, ``gyroscope_*`` deg/s).

    Times stay absolute (seconds since the epoch, like the event stream) so the two can be aligned; an all-zero
    magnetometer (cameras without one) is dropped.
    """
    if x is None:
        raise IMUError(f"{source}: field 'imus': no IMU stream; expected an AEDAT4 file recorded with the IMU on")
    t = x["t"].astype(np.int64) * 1e-6
    cols = lambda s: np.stack([x[f"{s}_{a}"] for a in "xyz"], 1)  # noqa: E731
    mag = cols("magnetometer")
    return IMURecording(t, cols("accelerometer"), cols("gyroscope"), "g", "deg/s", _rate_from(t), source, "aedat4",
                        mag=mag if np.any(mag) else None, meta={"temperature_c": float(np.mean(x["temperature"]))})


READERS = {
    "ego4d_csv": (read_ego4d_csv, (".csv",)),
    "sensorcaps_jsonl": (read_sensorcaps_jsonl, (".jsonl",)),
    "basicmotions_ts": (read_basicmotions_ts, (".ts",)),
    "watch_npz": (read_watch_npz, (".npz",)),
    "npy": (read_npy, (".npy",)),
    "aedat4": (read_aedat4, (".aedat4",)),
}


def sniff_format(path: Path) -> str | None:
    """The format name from the extension, else from the first bytes; None if neither tells."""
    for name, (_, exts) in READERS.items():
        if path.suffix.lower() in exts:
            return name
    head = path.read_bytes()[:4096] if path.is_file() else b""
    text = head.decode("utf-8", "replace")
    checks = (
        ("aedat4", head.startswith(b"#!AER-DAT4")),
        ("npy", head.startswith(b"\x93NUMPY")),
        ("watch_npz", head.startswith(b"PK")),
        ("sensorcaps_jsonl", text.lstrip().startswith('{"messages"')),
        ("basicmotions_ts", "@problemname" in text.lower() or "@data" in text.lower()),
        ("ego4d_csv", "canonical_timestamp_ms" in text.split("\n", 1)[0]),
    )
    return next((name for name, hit in checks if hit), None)


def read_imu(path: str | Path, index: int | None = None, format: str | None = None) -> IMURecording:
    """One recording from any known format; ``index`` picks a window of multi-window files."""
    path = Path(path)
    known = ", ".join(f"{n} ({'/'.join(e)})" for n, (_, e) in READERS.items())
    if format is not None and format not in READERS:
        raise IMUError(f"format {format!r} is unknown; known formats: {known}")
    if not path.exists():
        raise IMUError(f"{path}: file not found")
    fmt = format or sniff_format(path)
    if fmt is None:
        raise IMUError(f"{path}: unknown IMU format (neither the extension nor the content matched); known formats: "
                       f"{known}; other CSVs: imuspec.imu.read_csv with a column map")
    got = READERS[fmt][0](path)
    recs = got if isinstance(got, list) else [got]
    if index is None:
        if len(recs) > 1:
            raise IMUError(f"{path}: holds {len(recs)} recordings; pick one with --index (index= in Python) in 0..{len(recs) - 1}")
        index = 0
    if not -len(recs) <= index < len(recs):
        raise IMUError(f"{path}: index {index} is out of range; the file holds {len(recs)} recording(s)")
    return recs[index]
