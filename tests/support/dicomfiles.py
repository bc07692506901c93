"""Byte-level helpers for DICOM Part 10 files in tests."""

from __future__ import annotations

import struct
from pathlib import Path


def dataset_offset(data: bytes) -> int:
    """Offset of the data set after the preamble and the File Meta group (by its group length)."""
    if data[128:132] != b"DICM":
        raise ValueError("not a Part 10 file (no DICM prefix)")
    group, element = struct.unpack_from("<HH", data, 132)
    if (group, element) != (0x0002, 0x0000):
        raise ValueError("File Meta has no group length element")
    (length,) = struct.unpack_from("<I", data, 132 + 8)
    return 132 + 12 + length


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, File Meta stripped."""
    data = Path(path).read_bytes()
    return data[dataset_offset(data) :]
