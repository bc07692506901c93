"""Frame a received data set as a DICOM Part 10 file: preamble, ``DICM``, File Meta, data set.

The File Meta Information is a pure function of (SOP Class, SOP Instance, Transfer Syntax), so
the same data set received twice gives byte-identical files: that is what makes duplicate
detection in the store a plain byte comparison. The calling AE title is kept in the index,
not in the file.
"""

from __future__ import annotations

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from ortho_node import __version__

# A UUID-derived UID (PS3.5 B.2): ortho-node has no registered org root.
IMPLEMENTATION_CLASS_UID = UID("2.25.160213465405823446906463127046325372121")
IMPLEMENTATION_VERSION_NAME = f"ORTHO_NODE_{__version__}"[:16]
PREAMBLE = b"\x00" * 128 + b"DICM"


def part10_header(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble + ``DICM`` + the encoded File Meta group for one instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return PREAMBLE + buffer.getvalue()
