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
import itertools
import json
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import npyfile
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
    if data.dtype.kind not in "iuf":
        raise IMUError(f"{source}: field 'data': dtype {data.dtype}; expected real numbers (accel xyz, gyro xyz)")
    if t is None:
        t = np.arange(len(data)) / rate_hz
    mag = data[:, 6:9] if data.shape[1] == 9 else None
    return IMURecording(t, data[:, :3], data[:, 3:6], accel_unit, gyro_unit, rate_hz, source, format, mag=mag, **kw)


CSV_CHUNK_ROWS = 1 << 16  # rows parsed at a time: memory holds one chunk of text, not the file


def read_csv(
    path: str | Path,
    columns: dict[str, str],
    time_unit: str = "ms",
    accel_unit: str = "m/s^2",
    gyro_unit: str = "rad/s",
    rate_hz: float | None = None,
    format: str = "csv",
    window_s: tuple[float, float] | None = None,
    **kw,
) -> IMURecording:
    """A CSV with a header; ``columns`` maps t, accel_{x,y,z}, gyro_{x,y,z} (and optionally mag_*) to its names.

    Read in chunks of rows: memory grows with the rows kept, not with the file, and with ``window_s=(t0, t1)``
    (seconds on the file's clock) only rows with ``t0 <= t < t1`` are kept and reading stops at the first row past
    ``t1``. Errors name the file's own column and row.
    """
    path = Path(path)
    need = ["t"] + [f"{s}_{a}" for s in ("accel", "gyro") for a in "xyz"]
    missing_keys = [k for k in need if k not in columns]
    if missing_keys:
        raise IMUError(f"column map for {path}: no entry for {missing_keys}; expected keys {need} (+ optional mag_*)")
    if time_unit not in _TIME_SCALE:
        raise IMUError(f"{path}: time unit {time_unit!r} is unknown; expected one of {list(_TIME_SCALE)}")
    keys = need + [f"mag_{a}" for a in "xyz" if f"mag_{a}" in columns]
    scale = _TIME_SCALE[time_unit]
    rows, first_row = 2, None  # rows: the file's row number (1 = the header) of the next line
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(_csv_rows([f.readline()], path, 1), None)
        if not header:
            raise IMUError(f"{path}: empty file; expected a header row naming the columns")
        header = [h.strip() for h in header]
        absent = [columns[k] for k in keys if columns[k] not in header]
        if absent:
            raise IMUError(f"{path}: missing columns {absent}; the header has {header}")
        idx = [header.index(columns[k]) for k in keys]
        groups = [(0, 1), (1, 4), (4, 7)] + ([(7, 10)] if len(keys) == 10 else [])  # t, accel, gyro, mag
        parts: list[list[np.ndarray]] = [[] for _ in groups]  # per group, so each is joined and freed in turn
        while lines := list(itertools.islice(f, CSV_CHUNK_ROWS)):
            values = _parse_rows(lines, idx, [columns[k] for k in keys], path, rows)
            at = rows
            rows += len(lines)
            t = values[:, 0] * scale
            if window_s is not None:
                keep = (t >= window_s[0]) & (t < window_s[1])
                first_row = first_row or (at + int(np.argmax(keep)) if keep.any() else None)
                values, past = values[keep], t[-1] >= window_s[1]
            for part, (a, b) in zip(parts, groups):
                part.append(np.array(values[:, a:b]))
            if window_s is not None and past:
                break
    if not parts[0]:
        raise IMUError(f"{path}: a header and no data rows; expected one row per sample")
    joined = []
    for part in parts:
        joined.append(np.concatenate(part))
        part.clear()
    t, accel, gyro, *mag = joined
    t = t[:, 0] * scale
    if window_s is not None and len(t) == 0:
        raise IMUError(f"{path}: column '{columns['t']}' has no row in the window [{window_s[0]}, {window_s[1]}) s")
    try:
        return IMURecording(t, accel, gyro, accel_unit, gyro_unit, rate_hz or _rate_from(t), str(path), format,
                            mag=mag[0] if mag else None, **kw)
    except IMUError as e:
        raise _in_columns(e, path, columns, first_row or 2) from None


def _parse_rows(lines: list[str], idx: list[int], names: list[str], path: Path, row0: int) -> np.ndarray:
    """The numbers of ``lines`` (file rows from ``row0``) in columns ``idx``; NumPy's parser first, and where it
    refuses, row by row to say which row and column."""
    try:
        values = np.loadtxt(lines, delimiter=",", usecols=idx, ndmin=2, dtype=np.float64, quotechar='"',
                            comments=None)
        if len(values) == len(lines):  # NumPy skips blank lines: then count them as the bad rows they are
            return values
    except ValueError:
        pass
    values = np.empty((len(lines), len(idx)))
    for r, row in enumerate(_csv_rows(lines, path, row0)):
        for j, (name, i) in enumerate(zip(names, idx)):
            try:
                values[r, j] = float(row[i])
            except (ValueError, IndexError):
                cell = row[i] if i < len(row) else "<missing>"
                raise IMUError(f"{path}: row {row0 + r}, column '{name}': {cell!r} is not a number") from None
    return values


def _csv_rows(lines: list[str], path: Path, row0: int):
    """csv.reader's rows, its own errors (an unclosed quote running past the field limit, …) as IMUError."""
    try:
        yield from csv.reader(lines)
    except csv.Error as e:
        raise IMUError(f"{path}: rows from {row0}: not CSV ({e})") from None


def _in_columns(e: IMUError, path: Path, columns: dict[str, str], row0: int) -> IMUError:
    """A recording's error (field 't', sample i) said as the CSV spells it (column 'canonical_timestamp_ms', row r)."""
    if e.field not in ("t", "accel", "gyro", "mag"):
        return e
    if e.field == "t":
        name = f"column '{columns['t']}'"
    else:
        axes = "xyz" if e.axis is None else "xyz"[e.axis]
        name = ("column" + ("s " if len(axes) > 1 else " ")
                + ", ".join(f"'{columns[f'{e.field}_{a}']}'" for a in axes))
    row = f", row {row0 + e.sample}" if e.sample is not None else ""
    return IMUError(f"{path}: {name}{row}: {e.problem}; expected {e.expected}", e.field, e.sample, e.axis, e.problem,
                    e.expected)


def read_ego4d_csv(path: str | Path, window_s: tuple[float, float] | None = None) -> IMURecording:
    """Ego4D IMU CSV: milliseconds, accelerometer m/s^2, gyroscope rad/s (``window_s``: see :func:`read_csv`)."""
    return read_csv(path, EGO4D_COLUMNS, "ms", "m/s^2", "rad/s", format="ego4d_csv", window_s=window_s)


def read_npy(path: str | Path, rate_hz: float = 20.0, accel_unit: str = "m/s^2", gyro_unit: str = "rad/s") -> IMURecording:
    """A plain [N, 6] array file; LLaSA's windows are 120 samples at 20 Hz in m/s^2 and rad/s."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = npyfile.load(f, path.stat().st_size)
    except ValueError as e:
        raise IMUError(f"{path}: not a plain numeric .npy array ({e})") from None
    return from_array(data, rate_hz, accel_unit, gyro_unit, source=str(path), format="npy")


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise IMUError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected a text file") from None


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
    for n, line in enumerate(_text(path).splitlines(), 1):
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
    for n, line in enumerate(_text(path).splitlines(), 1):
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
    z = _npz_arrays(path)
    need = ("samples", "offsets", "channel_names")
    absent = [k for k in need if k not in z]
    if absent:
        raise IMUError(f"{path}: missing arrays {absent}; expected {list(need)} (+ label, label_names, subject, side)")
    samples, offsets = z["samples"], z["offsets"]
    names = [str(c) for c in np.ravel(z["channel_names"])]
    if names != ["ax", "ay", "az", "wx", "wy", "wz"]:
        raise IMUError(f"{path}: field 'channel_names' is {names}; expected ['ax', 'ay', 'az', 'wx', 'wy', 'wz']")
    if (samples.ndim != 2 or offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 2
            or offsets[0] != 0 or offsets[-1] != len(samples) or (np.diff(offsets) <= 0).any()):
        raise IMUError(f"{path}: field 'offsets' does not split 'samples' ({len(samples)} rows); expected increasing "
                       "integer offsets from 0 to the number of rows")
    n = len(offsets) - 1
    labels = None
    if {"label", "label_names"} <= set(z):
        label, label_names = z["label"], z["label_names"]
        if label.shape != (n,) or label.dtype.kind not in "iu" or label_names.ndim != 1 or \
                ((label < 0) | (label >= len(label_names))).any():
            raise IMUError(f"{path}: field 'label': shape {label.shape}, dtype {label.dtype}; expected {n} integer "
                           f"indices into 'label_names' ({len(label_names)} names)")
        labels = label_names[label]
    extra = {k: z[k] for k in ("subject", "side") if k in z}
    for k, v in extra.items():
        if v.shape != (n,):
            raise IMUError(f"{path}: field {k!r}: shape {v.shape}; expected ({n},), one per recording")
    out = []
    for i in range(len(offsets) - 1):
        meta = {"label": str(labels[i]) if labels is not None else None} | {k: v[i].item() for k, v in extra.items()}
        out.append(from_array(samples[offsets[i]:offsets[i + 1]], rate_hz, "g", "rad/s", source=f"{path}[{i}]",
                              format="watch_npz", meta=meta))
    return out


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The plain arrays of an ``.npz`` (never unpickled); every member's header checked before it is allocated."""
    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                if info.file_size > 1100 * info.compress_size + 4096:  # beyond deflate's ratio (~1032:1): a lie
                    raise ValueError(f"member {info.filename!r} claims {info.file_size} bytes from "
                                     f"{info.compress_size}")
                with zf.open(info) as m:
                    out[info.filename[:-4]] = npyfile.load(m, info.file_size)
            return out
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IMUError(f"{path}: not a readable .npz of plain arrays ({why})") from None


def read_aedat4(path: str | Path) -> IMURecording:
    """The IMU stream of an AEDAT4 file (iniVation DAVIS / DVXplorer): microseconds, g, deg/s.

    The file is decoded once, with its events, by :func:`imuspec.events.readers.read_aedat4`.
    """
    from ..events.readers import read_aedat4 as read_camera
    from ..events.stream import EventError

    try:
        imu = read_camera(path).imu
    except EventError as e:
        raise IMUError(str(e)) from None
    return from_aedat4_imu(imu, str(path))


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
