"""Tiny, valid DICOM data sets built in memory for unit tests of ingest (not images to look at)."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def small_image(
    *,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "MR",
    body_part: str | None = "KNEE",
    series_description: str = "SAG PD",
    study_description: str = "MRI KNEE",
    sop_class_uid: str = MRImageStorage,
    instance_number: int = 1,
    size: int = 16,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.SeriesDescription = series_description
    ds.StudyDescription = study_description
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientID = "TEST-0001"
    ds.PatientName = "TEST^UNIT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(size * size, dtype=np.uint16) % 4096).tobytes()
    return ds


def encode(ds: Dataset) -> bytes:
    """The data set encoded in Explicit VR Little Endian, without File Meta (as on the wire)."""
    buffer = io.BytesIO()
    fp = DicomFileLike(buffer)
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return buffer.getvalue()
