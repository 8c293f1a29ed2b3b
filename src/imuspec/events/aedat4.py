"""AEDAT 4 files, whole or cut: the container is walked here, the packets are decoded by the ``aedat`` package.

An AEDAT 4 file is ``#!AER-DAT4.0\\r\\n``, a uint32 length and an IOHeader flatbuffer (compression, the byte offset of
the trailing index table, the stream definitions), then packets ``[stream id int32][size uint32][payload]`` up to that
offset. A recorder that crashed leaves a file cut inside a packet; ``aedat`` then fails at the cut and gives nothing
that tells how much was whole. So the packets are listed here first from their framing alone: a file that is whole is
decoded as it is; otherwise ``aedat`` is given a temporary copy of the header and the whole packets, and a packet it
cannot decode (a corrupt payload inside a whole frame) is skipped and decoding resumes after it. What was read and what
was lost is said in one :class:`RecordingWarning`.
"""

from __future__ import annotations

import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .stream import EventError, RecordingWarning

MAGIC = b"#!AER-DAT4.0\r\n"
BATCH = 1024  # packets per temporary copy where the file is not whole
_EVENT_DTYPE = [("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")]


@dataclass
class Container:
    """The framing of an AEDAT 4 file: where packets start and end, and where (and how) it stops being whole."""

    size: int  # bytes in the file
    packets_start: int  # first byte after the IOHeader
    table_at: int  # where the index table starts (the end of the packets), or -1 where the header names none
    packets: list[tuple[int, int, int]] = field(default_factory=list)  # (offset, stream id, payload size), whole only
    cut: str | None = None  # what stopped the walk before the end of the packets, None for a whole file

    @property
    def packets_end(self) -> int:
        off, _, n = self.packets[-1] if self.packets else (self.packets_start, 0, -8)
        return off + 8 + n


def _table_position(fb: bytes) -> int:
    """``dataTablePosition`` (field 1, int64, default -1) of the IOHeader flatbuffer; raises struct.error/IndexError
    on a malformed buffer."""
    root = struct.unpack_from("<I", fb, 0)[0]
    vtable = root - struct.unpack_from("<i", fb, root)[0]
    vt_size = struct.unpack_from("<H", fb, vtable)[0]
    if vt_size < 8:  # the vtable stops before field 1: the default
        return -1
    at = struct.unpack_from("<H", fb, vtable + 6)[0]
    return struct.unpack_from("<q", fb, root + at)[0] if at else -1


def scan(path: Path) -> Container:
    """Read the magic and IOHeader and list every whole packet; errors say "empty", "not AEDAT 4" or "truncated"."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 4)
        if size == 0:
            raise EventError(f"{path}: empty file (0 bytes); expected an AEDAT 4 file starting with {MAGIC!r}")
        if head[:len(MAGIC)] != MAGIC:
            if MAGIC.startswith(head):
                raise EventError(f"{path}: truncated inside the AEDAT 4 magic ({size} bytes of {MAGIC!r})")
            raise EventError(f"{path}: not AEDAT 4 (bad magic: the file starts with {head[:len(MAGIC)]!r}, "
                             f"expected {MAGIC!r})")
        if len(head) < len(MAGIC) + 4:
            raise EventError(f"{path}: truncated inside the AEDAT 4 header ({size} bytes, no IOHeader length)")
        n = struct.unpack_from("<I", head, len(MAGIC))[0]
        start = len(MAGIC) + 4 + n
        if start > size:
            raise EventError(f"{path}: truncated inside the AEDAT 4 header (IOHeader of {n} bytes, {size - len(head)} "
                             "present); no packets")
        fb = f.read(n)
        try:
            table_at = _table_position(fb)
        except (struct.error, IndexError):
            raise EventError(f"{path}: corrupt AEDAT 4 header (the IOHeader's {n} bytes are not a flatbuffer)"
                             ) from None
        end = table_at if start <= table_at <= size else size
        c = Container(size, start, table_at)
        off = start
        while off < end:
            frame = f.read(8) if off + 8 <= end else b""
            if len(frame) < 8:
                c.cut = f"cut inside the frame of packet {len(c.packets) + 1} at byte {off}"
                break
            sid, n = struct.unpack("<iI", frame)
            if off + 8 + n > end:
                c.cut = (f"cut inside packet {len(c.packets) + 1} (stream {sid}, {n} bytes declared, {end - off - 8} "
                         f"present) at byte {off}")
                break
            c.packets.append((off, sid, n))
            f.seek(n, 1)
            off += 8 + n
    if c.cut is None and 0 <= table_at and table_at > size:
        c.cut = f"the index table at byte {table_at} is missing (the file ends at byte {size})"
    return c


def _is_fatal(e: BaseException) -> bool:
    return isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError))


def _decode(path: Path, expected: int, sink: dict) -> int:
    """Decode packets of ``path`` into ``sink``; the number decoded (fewer than ``expected`` where one failed)."""
    import aedat

    k = 0
    try:
        for packet in aedat.Decoder(str(path)):
            for key in ("events", "imus"):
                if key in packet:
                    sink[key].append(packet[key])
            if "frame" in packet:
                sink["frames"].append((int(packet["frame"]["t"]), packet["frame"]["pixels"]))
            k += 1
            if k == expected:
                break
    # aedat (Rust, pyo3) reports a bad packet as RuntimeError/OSError, or a panic, which derives from BaseException
    except BaseException as e:  # noqa: BLE001
        if _is_fatal(e):
            raise
    return k


def _copy(src: Path, dst: Path, header_end: int, packets: list[tuple[int, int, int]]) -> None:
    """Write the header and ``packets`` (consecutive in ``src``) to ``dst``, without holding them in memory."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read(header_end))
        if packets:
            f.seek(packets[0][0])
            remaining = packets[-1][0] + 8 + packets[-1][2] - packets[0][0]
            while remaining:
                chunk = f.read(min(remaining, 1 << 22))
                g.write(chunk)
                remaining -= len(chunk)


def read_packets(path: Path) -> tuple[dict, dict[int, dict]]:
    """Every decodable packet of ``path`` as lists ``events``, ``imus``, ``frames``, and the stream definitions;
    warns (:class:`RecordingWarning`) where the file is cut or has corrupt packets, with what was read and lost."""
    import aedat

    c = scan(path)
    try:
        streams = aedat.Decoder(str(path)).id_to_stream()
    except BaseException as e:  # noqa: BLE001 (see _decode)
        if _is_fatal(e):
            raise
        raise EventError(f"{path}: corrupt AEDAT 4 header (aedat: {' '.join(str(e).split())})") from None
    if not c.packets:
        where = f" ({c.cut})" if c.cut and "inside packet" in c.cut else ""
        raise EventError(f"{path}: truncated AEDAT 4 file: the header and no whole packet{where} in its {c.size} "
                         "bytes; nothing to read")
    sink: dict = {"events": [], "imus": [], "frames": []}
    skipped: list[int] = []
    todo = c.packets
    if c.cut is None:
        done = _decode(path, len(todo), sink)
        todo = todo[done:]
        if todo:
            skipped.append(len(c.packets) - len(todo))
            todo = todo[1:]
    with tempfile.TemporaryDirectory(prefix="imuspec-aedat4-") as tmp:
        while todo:  # in batches, so that each corrupt packet costs one batch's copy, not the rest of the file's
            part, batch = Path(tmp) / "part.aedat4", todo[:BATCH]
            _copy(path, part, c.packets_start, batch)
            done = _decode(part, len(batch), sink)
            if done < len(batch):  # packet `done` of this batch did not decode: skip it, resume after it
                skipped.append(len(c.packets) - len(todo) + done)
                todo = todo[done + 1:]
            else:
                todo = todo[len(batch):]
    if c.cut or skipped:
        _warn(path, c, skipped, sink)
    return sink, streams


def _warn(path: Path, c: Container, skipped: list[int], sink: dict) -> None:
    ev = sink["events"]
    n_ev = sum(len(e) for e in ev)
    if n_ev:
        t0, t1 = min(int(e["t"][0]) for e in ev if len(e)), max(int(e["t"][-1]) for e in ev if len(e))
        span = f"{n_ev} events over {(t1 - t0) / 1e6:.3f} s (t {t0}..{t1} µs)"
    else:
        span = "0 events"
    n_imu = sum(len(x) for x in sink["imus"])
    read = (f"read {len(c.packets) - len(skipped)} whole packets: {span}, {n_imu} IMU samples"
            + (f", {len(sink['frames'])} frames" if sink["frames"] else ""))
    lost = []
    if c.cut:
        lost.append(f"truncated: {c.cut}; lost the last {c.size - c.packets_end} bytes (after byte {c.packets_end})"
                    + (f", and the header says packets ran to byte {c.table_at}" if c.table_at > c.size else ""))
    if skipped:
        offsets = [c.packets[i][0] for i in skipped]
        lost.append(f"{len(skipped)} corrupt packet(s) skipped (number {', '.join(str(i + 1) for i in skipped[:5])}"
                    f"{', …' if len(skipped) > 5 else ''} at byte {', '.join(map(str, offsets[:5]))})")
    warnings.warn(f"{path}: {'; '.join(lost)}; {read}", RecordingWarning, stacklevel=3)


def read(path: Path) -> tuple[np.ndarray, np.ndarray | None, list | None, dict[int, dict]]:
    """(events structured array, IMU structured array or None, frames or None, stream definitions)."""
    sink, streams = read_packets(path)
    ev = np.concatenate(sink["events"]) if sink["events"] else np.zeros(0, dtype=_EVENT_DTYPE)
    imu = np.concatenate(sink["imus"]) if sink["imus"] else None
    return ev, imu, sink["frames"] or None, streams

