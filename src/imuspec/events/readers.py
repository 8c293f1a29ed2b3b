"""Event files in, :class:`EventStream` out — each sensor format in one function, and ``read_events`` to pick one.

Formats (``FORMATS``):

- ``npy``: EventGPT's ``.npy`` (a pickled dict ``{x, y, t, p}``, read through a restricted unpickler that builds only
  numpy arrays, dtypes and plain containers — never arbitrary objects) or a ``.npy`` holding a NumPy structured array
  with fields ``x, y, t, p`` (read with ``allow_pickle=False``).
- ``aedat4``: iniVation AEDAT 4 through the ``aedat`` package (the container walked by :mod:`.aedat4`, so a cut file
  yields its whole packets); :func:`read_aedat4` also returns IMU samples and frames.
- ``txt``: one event per line, ``t x y p`` with ``t`` in seconds (the Event Camera Dataset); an optional first line
  ``width height``.  ``txt-xytp``: ``x y t p`` with ``t`` in integer microseconds.
- ``h5``: the DSEC layout, ``events/{x,y,t,p}`` (``t`` in µs after ``t_offset``) and ``ms_to_idx`` for windows.

Where a file does not store the sensor size it is ``x.max()+1`` by ``y.max()+1``, as EventGPT does, unless
``sensor_size=(width, height)`` is given.
"""

from __future__ import annotations

import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import npyfile
from . import aedat4
from .stream import EventError, EventStream, RecordingWarning

FORMATS = {
    "npy": "EventGPT pickled dict {x, y, t, p} or a structured array with fields x, y, t, p (.npy)",
    "aedat4": "iniVation AEDAT 4 (.aedat4)",
    "txt": "text 't x y p', t in seconds (Event Camera Dataset) (.txt)",
    "txt-xytp": "text 'x y t p', t in microseconds",
    "h5": "HDF5 events/{x,y,t,p} + ms_to_idx + t_offset (DSEC) (.h5, .hdf5)",
}
_SUFFIX = {".npy": "npy", ".aedat4": "aedat4", ".txt": "txt", ".h5": "h5", ".hdf5": "h5"}


MAX_SENSOR = 4096  # pixels on a side; no event camera comes near (the largest are 1280x720)


def _stream(path, x, y, t, p, sensor_size) -> EventStream:
    if len(t) == 0:
        raise EventError(f"{path}: the file holds no events, expected at least one")
    width, height = sensor_size if sensor_size else (int(np.max(x)) + 1, int(np.max(y)) + 1)
    if not sensor_size:
        for name, a, side in (("x", x, "width"), ("y", y, "height")):
            if int(np.max(a)) >= MAX_SENSOR:
                i = int(np.argmax(a))
                warnings.warn(f"{path}: field {name!r}: {name}[{i}] = {a[i]} makes the inferred sensor {side} "
                              f"{int(a[i]) + 1}, beyond any event camera's (> {MAX_SENSOR}); kept, as EventGPT does "
                              "(the scene is rendered small in the frame) — pass sensor_size to crop",
                              RecordingWarning, stacklevel=3)
    return EventStream(np.asarray(x), np.asarray(y), np.asarray(t).astype(np.int64), np.asarray(p), width, height,
                       str(path))


# --- EventGPT .npy: a pickle, so a restricted unpickler ----------------------------------------------------------

def _latin1_bytes(text: str, encoding: str) -> bytes:
    """What protocol-2 pickles call (``_codecs.encode``) to rebuild bytes; only the latin-1 round trip is allowed."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed (only 'latin1')")
    return text.encode("latin1")


try:  # numpy >= 2 (numpy 1.26 also ships this name so that it can read numpy 2 pickles)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

# numpy pickles arrays as _reconstruct(ndarray, ...) + __setstate__ (protocols 2-4) or _frombuffer (protocol 5),
# dtypes as numpy.dtype, scalars as multiarray.scalar; numpy 2 renamed numpy.core to numpy._core.
_ALLOWED = {
    **{(m, "_reconstruct"): _multiarray._reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _multiarray.scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _numeric._frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed (only numpy arrays, dtypes and "
                                         "plain containers)")
        return _ALLOWED[module, name]


def safe_unpickle(data: bytes, source: str):
    """Unpickle ``data`` admitting only numpy arrays, dtypes, scalars and plain containers; anything else is refused
    before it is constructed, so a pickle that would run code runs nothing."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    # a corrupt pickle fails in many ways (bad opcodes, memo keys, numpy's __setstate__): all of them a bad file
    except Exception as e:  # noqa: BLE001
        raise EventError(f"{source}: refused to unpickle: {' '.join(str(e).split()) or type(e).__name__}") from None


def _read_npy(path: Path, sensor_size) -> EventStream:
    with open(path, "rb") as f:
        size = path.stat().st_size
        try:
            _, _, dtype, _ = npyfile.read_header(f, size)
            if dtype.hasobject:
                obj = safe_unpickle(f.read(), str(path))
                if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
                    obj = obj.item()
                if not isinstance(obj, dict):
                    raise EventError(f"{path}: the pickle holds a {type(obj).__name__}, expected a dict with keys "
                                     "x, y, t, p")
                return from_mapping(obj, str(path), sensor_size)
            f.seek(0)
            arr = npyfile.load(f, size)
        except EventError:
            raise
        except ValueError as e:
            raise EventError(f"{path}: {e}") from None
    return from_structured(arr, str(path), sensor_size)


def from_mapping(d, source: str = "<memory>", sensor_size=None) -> EventStream:
    """A dict (or structured array) with entries ``x, y, t, p`` of equal length."""
    keys = d.dtype.names if isinstance(d, np.ndarray) else tuple(d)
    missing = [k for k in "xytp" if k not in keys]
    if missing:
        raise EventError(f"{source}: field(s) {missing} missing; expected x, y, t, p (found {list(keys)})")
    for k in "xytp":
        a = np.asarray(d[k])
        if a.dtype.kind not in "iub":
            raise EventError(f"{source}: field {k!r} has dtype {a.dtype}, expected integers")
    return _stream(source, d["x"], d["y"], d["t"], d["p"], sensor_size)


def from_structured(arr: np.ndarray, source: str = "<memory>", sensor_size=None) -> EventStream:
    """A NumPy structured array with fields ``x, y, t, p`` (t in µs)."""
    if arr.dtype.names is None or arr.ndim != 1:
        raise EventError(f"{source}: array of dtype {arr.dtype} and shape {arr.shape}, expected a 1-D structured "
                         "array with fields x, y, t, p")
    return from_mapping(arr, source, sensor_size)


# --- AEDAT 4 ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Aedat4Recording:
    """An AEDAT 4 file: the events, IMU samples (structured array: ``t`` µs, ``accelerometer_{x,y,z}`` in g,
    ``gyroscope_{x,y,z}`` in deg/s, …) and frames (``(t_us, pixels)``), the latter two None where absent."""

    events: EventStream
    imu: np.ndarray | None
    frames: list[tuple[int, np.ndarray]] | None


def read_aedat4(path: str | Path, sensor_size=None) -> Aedat4Recording:
    """Every whole packet of the file; a cut or partly corrupt file warns with what was read and what was lost."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    ev, imu, frames, streams = aedat4.read(path)
    sizes = [(s["width"], s["height"]) for s in streams.values() if s["type"] == "events"]
    if not sizes:
        raise EventError(f"{path}: no event stream, expected one of type 'events' (found {list(streams.values())})")
    stream = _stream(path, ev["x"], ev["y"], ev["t"], ev["on"], sensor_size or sizes[0])
    return Aedat4Recording(stream, imu, frames)


# --- text ------------------------------------------------------------------------------------------------------

def _read_text(path: Path, columns: str, sensor_size) -> EventStream:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().split()
        skip = 0
        if len(first) == 2:  # a 'width height' header line
            skip, sensor_size = 1, sensor_size or (int(first[0]), int(first[1]))
        data = np.loadtxt(path, dtype=np.float64, skiprows=skip, ndmin=2, encoding="utf-8")
    except ValueError as e:
        raise EventError(f"{path}: not a '{' '.join(columns)}' event text file ({e})") from None
    if data.size == 0:
        raise EventError(f"{path}: the file holds no events, expected lines '{' '.join(columns)}'")
    if data.shape[1] != 4:
        raise EventError(f"{path}: {data.shape[1]} columns per line, expected 4 ({' '.join(columns)})")
    col = {c: data[:, i] for i, c in enumerate(columns)}
    t = np.round(col["t"] * 1e6) if columns == "txyp" else col["t"]
    fields = {"x": col["x"], "y": col["y"], "t": t, "p": col["p"]}
    for k, a in fields.items():
        bad = np.flatnonzero(a != np.round(a))
        if len(bad):
            raise EventError(f"{path}: field {k!r} on line {bad[0] + 1 + skip} is {a[bad[0]]}, expected an integer"
                             + (" number of microseconds" if k == "t" else ""))
    p = fields["p"]
    if np.all((p == -1) | (p == 1)):  # some text dumps write OFF as -1
        p = (p > 0)
    return _stream(path, fields["x"].astype(np.int64), fields["y"].astype(np.int64), fields["t"].astype(np.int64),
                   p.astype(np.int64), sensor_size)


# --- HDF5 (DSEC) -----------------------------------------------------------------------------------------------

def read_h5(path: str | Path, sensor_size=None, window_us: tuple[int, int] | None = None) -> EventStream:
    """DSEC ``events.h5``; with ``window_us=(t0, t1)`` only that window is read, located through ``ms_to_idx``."""
    path = Path(path)
    try:
        return _read_h5(path, sensor_size, window_us)
    except EventError:
        raise
    # libhdf5 reports a corrupt file as OSError, KeyError, RuntimeError, TypeError, ... depending on where it breaks
    except Exception as e:  # noqa: BLE001
        raise EventError(f"{path}: not a readable HDF5 event file ({' '.join(str(e).split()) or type(e).__name__})"
                         ) from None


def _read_h5(path: Path, sensor_size, window_us) -> EventStream:
    import h5py

    with h5py.File(path, "r") as f:
        if "events" not in f:
            raise EventError(f"{path}: group 'events' missing, expected events/x, events/y, events/t, events/p")
        g = f["events"]
        missing = [k for k in "xytp" if k not in g]
        if missing:
            raise EventError(f"{path}: dataset(s) {['events/' + k for k in missing]} missing")
        n = {len(g[k]) for k in "xytp"}
        if len(n) != 1:
            raise EventError(f"{path}: datasets events/x, y, t, p have lengths {[len(g[k]) for k in 'xytp']}, "
                             "expected equal lengths")
        offset = int(f["t_offset"][()]) if "t_offset" in f else 0
        i, j = 0, len(g["t"])
        if window_us is not None:
            t0, t1 = window_us
            if "ms_to_idx" not in f:
                raise EventError(f"{path}: dataset 'ms_to_idx' missing, needed to read a window")
            # ms_to_idx[k] is the first event at or after k ms (after t_offset): it brackets the window from outside,
            # then a search inside the bracket finds the exact bounds
            ms_to_idx = f["ms_to_idx"][()]
            k0, k1 = (t0 - offset) // 1000, -(-(t1 - offset) // 1000)
            i = int(ms_to_idx[min(max(k0, 0), len(ms_to_idx) - 1)])
            j = int(ms_to_idx[k1]) if 0 <= k1 < len(ms_to_idx) else (0 if k1 < 0 else len(g["t"]))
            a, b = np.searchsorted(g["t"][i:j].astype(np.int64) + offset, [t0, t1], side="left")
            i, j = i + int(a), i + int(b)
            if i >= j:
                raise EventError(f"{path}: no events in window [{t0}, {t1}) µs")
        claimed = sum((j - i) * g[k].dtype.itemsize for k in "xytp")
        if claimed > 2000 * path.stat().st_size:  # beyond any compression of event data: a corrupt header
            raise EventError(f"{path}: the datasets claim {j - i} events ({claimed} bytes) in a file of "
                             f"{path.stat().st_size} bytes; corrupt")
        x, y, t, p = (g[k][i:j] for k in "xytp")
        if sensor_size is None and "width" in g.attrs and "height" in g.attrs:
            sensor_size = (int(g.attrs["width"]), int(g.attrs["height"]))
    return _stream(path, x, y, t.astype(np.int64) + offset, p, sensor_size)


class H5EventWriter:
    """Events appended in time order, chunk by chunk, to a DSEC-layout file: memory holds one chunk, not the stream.

    ``t`` is stored after ``t_offset`` (the first event's time) as int64 µs; ``ms_to_idx[k]`` (the first event at or
    after k ms) is filled as chunks arrive, each entry once the chunk holding it is known."""

    def __init__(self, path: str | Path):
        import h5py

        self.path, self.f = Path(path), h5py.File(path, "w")
        g = self.f.create_group("events")
        self.ds = {k: g.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dt, chunks=(1 << 16,), compression="gzip",
                                       compression_opts=1)
                   for k, dt in (("x", np.uint16), ("y", np.uint16), ("t", np.int64), ("p", np.uint8))}
        self.n, self.n_on, self.offset, self.t_last, self.ms_to_idx = 0, 0, None, None, []

    def append(self, x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray) -> None:
        if len(t) == 0:
            return
        t = np.asarray(t, dtype=np.int64)
        if self.offset is None:
            self.offset = int(t[0])
        if (self.t_last is not None and t[0] < self.t_last) or (np.diff(t) < 0).any():
            raise EventError(f"{self.path}: events appended out of time order; expected non-decreasing 't'")
        rel = t - self.offset
        k = np.arange(len(self.ms_to_idx), rel[-1] // 1000 + 1) * 1000  # the ms marks this chunk reaches
        self.ms_to_idx.extend((self.n + np.searchsorted(rel, k, side="left")).tolist())
        for name, a in (("x", x), ("y", y), ("t", rel), ("p", p)):
            d = self.ds[name]
            d.resize((self.n + len(t),))
            d[self.n:] = a
        self.n, self.n_on, self.t_last = self.n + len(t), self.n_on + int(np.count_nonzero(p)), int(t[-1])

    def close(self, width: int, height: int) -> None:
        """Finish the index and the attributes; a file without events is refused (and removed)."""
        if self.n == 0:
            self.abort()
            raise EventError(f"{self.path}: no events to write, expected at least one")
        self.ms_to_idx.append(self.n)  # the mark after the last event, as DSEC's files end
        self.f["events"].attrs["width"], self.f["events"].attrs["height"] = width, height
        self.f.create_dataset("ms_to_idx", data=np.asarray(self.ms_to_idx, dtype=np.uint64))
        self.f.create_dataset("t_offset", data=np.int64(self.offset))
        self.f.close()

    def abort(self) -> None:
        """Close and remove the unfinished file."""
        self.f.close()
        self.path.unlink(missing_ok=True)


def write_h5(stream: EventStream, path: str | Path) -> None:
    """Write ``stream`` in the DSEC layout (with ``ms_to_idx``, ``t_offset`` and the sensor size as attributes)."""
    w = H5EventWriter(path)
    w.append(stream.x, stream.y, stream.t, stream.p)
    w.close(stream.width, stream.height)


def write_npy(stream: EventStream, path: str | Path) -> None:
    """Write ``stream`` as EventGPT's pickled dict (x, y uint16; t int64 µs; p uint8)."""
    d = {"x": stream.x, "y": stream.y, "t": stream.t, "p": stream.p}
    np.save(path, np.array(d, dtype=object), allow_pickle=True)


WRITERS = {".h5": write_h5, ".hdf5": write_h5, ".npy": write_npy}


def write_events(stream: EventStream, path: str | Path) -> None:
    """Write by suffix: ``.h5``/``.hdf5`` (DSEC layout) or ``.npy`` (EventGPT dict)."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITERS:
        raise EventError(f"{path}: unknown output suffix {suffix!r}, expected one of {sorted(WRITERS)}")
    WRITERS[suffix](stream, path)


def format_of(path: str | Path) -> str:
    """The format a file's suffix names."""
    path = Path(path)
    if path.suffix.lower() not in _SUFFIX:
        raise EventError(f"{path}: cannot tell the format from suffix {path.suffix!r}; give the format (--format on the command line, format= in Python), one of: "
                         + "; ".join(f"{k} ({v})" for k, v in FORMATS.items()))
    return _SUFFIX[path.suffix.lower()]


def read_events(path: str | Path, format: str | None = None, sensor_size: tuple[int, int] | None = None) -> EventStream:
    """Read any known event file; ``format`` defaults to the one its suffix names (see ``FORMATS``)."""
    path = Path(path)
    format = format or format_of(path)
    if format not in FORMATS:
        raise EventError(f"{path}: unknown format {format!r}; known formats: "
                         + "; ".join(f"{k} ({v})" for k, v in FORMATS.items()))
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if format == "npy":
        return _read_npy(path, sensor_size)
    if format == "aedat4":
        return read_aedat4(path, sensor_size).events
    if format == "h5":
        return read_h5(path, sensor_size)
    return _read_text(path, "txyp" if format == "txt" else "xytp", sensor_size)
