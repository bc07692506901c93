"""Frame a received data set as a DICOM Part 10 file: preamble, ``DICM``, File Meta, data set.

The File Meta Information is a pure function of (SOP Class, SOP Instance, Transfer Syntax), so
the same data set received twice gives byte-identical files: that is what makes duplicate
detection in the store a plain byte comparison. The calling AE title is kept in the index,
not in the file.

The group is encoded here directly (Explicit VR Little Endian, PS3.10 7.1): building a pydicom
FileMetaDataset per instance cost more than everything else on the C-STORE path but the fsync.
``tests/test_ingest_part10.py`` checks the bytes against pydicom's own writer.
"""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID

from ortho_node.ingest.header import InvalidDatasetError

from ortho_node import __version__

# A UUID-derived UID (PS3.5 B.2): ortho-node has no registered org root.
IMPLEMENTATION_CLASS_UID = UID("2.25.160213465405823446906463127046325372121")
IMPLEMENTATION_VERSION_NAME = f"ORTHO_NODE_{__version__}"[:16]
PREAMBLE = b"\x00" * 128 + b"DICM"


def _padded(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _short(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _long(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value


_VERSION = _long(0x0002, 0x0001, b"OB", b"\x00\x01")
_IMPLEMENTATION = _short(0x0002, 0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")) + _short(
    0x0002, 0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")
)


def part10_header(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble + ``DICM`` + the encoded File Meta group for one instance."""
    body = (
        _VERSION
        + _short(0x0002, 0x0002, b"UI", _padded(str(sop_class_uid), b"\x00"))
        + _short(0x0002, 0x0003, b"UI", _padded(str(sop_instance_uid), b"\x00"))
        + _short(0x0002, 0x0010, b"UI", _padded(str(transfer_syntax_uid), b"\x00"))
        + _IMPLEMENTATION
    )
    group_length = _short(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return PREAMBLE + group_length + body


_GROUP_LENGTH_TAG = struct.pack("<HH2sH", 0x0002, 0x0000, b"UL", 4)


def read_part10_meta(data: bytes | memoryview) -> tuple[FileMetaDataset, int]:
    """The File Meta of a Part 10 file held in memory, and where its data set starts.

    Raises
    ------
    InvalidDatasetError
        (unparseable) No ``DICM`` prefix, no File Meta group length (Type 1, PS3.10 7.1), or a
        meta group without the transfer syntax.
    """
    view = memoryview(data)
    start = len(PREAMBLE)
    if bytes(view[start - 4 : start]) != b"DICM":
        raise InvalidDatasetError("not a DICOM Part 10 file (no DICM prefix)", unparseable=True)
    if bytes(view[start : start + 8]) != _GROUP_LENGTH_TAG:
        raise InvalidDatasetError("File Meta without its group length", unparseable=True)
    (group_length,) = struct.unpack("<I", view[start + 8 : start + 12])
    end = start + 12 + group_length
    if end > len(view):
        raise InvalidDatasetError("File Meta longer than the file", unparseable=True)
    try:
        meta = pydicom.dcmread(io.BytesIO(view[:end])).file_meta
    except Exception as exc:  # pydicom raises several types for malformed meta
        raise InvalidDatasetError(f"File Meta does not parse ({type(exc).__name__})", unparseable=True) from exc
    if "TransferSyntaxUID" not in meta:
        raise InvalidDatasetError("File Meta without a transfer syntax", unparseable=True)
    return meta, end
