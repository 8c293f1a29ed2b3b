""".npy headers checked against the bytes that follow them, before anything is allocated.

``np.load`` allocates what a header claims: a cut or corrupt file whose header says ``(10**12,)`` asks for terabytes.
Readers (IMU and events, plain files and ``.npz`` members) read the header here first, so memory stays bounded by the
file and a bad header is one clear error.
"""

from __future__ import annotations

import math
from typing import BinaryIO

import numpy as np


def read_header(f: BinaryIO, nbytes: int) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of the .npy in ``f`` (``nbytes`` long, read from its start);
    raises ValueError saying what is wrong (not .npy, bad header, header asks for more data than the file holds)."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy version {version[0]}.{version[1]}")
        length = f.read(2 if version == (1, 0) else 4)
        length = int.from_bytes(length, "little") if len(length) in (2, 4) else nbytes
        if length > nbytes - f.tell():  # numpy would read (and allocate) what the length says
            raise ValueError(f"the header says it is {length} bytes, the file holds {nbytes - f.tell()}")
        f.seek(-(2 if version == (1, 0) else 4), 1)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f)
    # numpy parses the header with tokenize and ast: a corrupt one raises TokenError, SyntaxError, MemoryError, ...
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"not a .npy file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    offset = f.tell()
    if not dtype.hasobject:
        need = math.prod(shape) * dtype.itemsize
        if need > nbytes - offset:
            raise ValueError(f"truncated or corrupt .npy: the header says shape {shape} of {dtype} ({need} bytes), "
                             f"the file holds {nbytes - offset} bytes of data")
    return shape, fortran, dtype, offset


def load(f: BinaryIO, nbytes: int) -> np.ndarray:
    """The array of a plain (non-pickle) .npy in ``f``, after :func:`read_header` has checked it; ValueError else."""
    _, _, dtype, _ = read_header(f, nbytes)
    if dtype.hasobject:
        raise ValueError(f"the .npy holds Python objects (dtype {dtype}), expected a plain numeric array "
                         "(never unpickled here)")
    f.seek(0)
    try:
        return np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"unreadable .npy data ({str(e).splitlines()[0]})") from None
