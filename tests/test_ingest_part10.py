"""The hand-encoded File Meta group equals what pydicom's own writer produces."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import JPEG2000Lossless, MRImageStorage, generate_uid

from ortho_node.ingest.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, PREAMBLE, part10_header


@pytest.mark.parametrize("sop_uid", [generate_uid(), "1.2.3.44", "1.2.3.4"])  # even and odd lengths
def test_meta_group_matches_pydicom(sop_uid):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEG2000Lossless
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    ours = part10_header(sop_class_uid=MRImageStorage, sop_instance_uid=sop_uid, transfer_syntax_uid=JPEG2000Lossless)
    assert ours == PREAMBLE + buffer.getvalue()
    read = pydicom.dcmread(io.BytesIO(ours), force=True)
    assert read.file_meta.MediaStorageSOPInstanceUID == sop_uid
