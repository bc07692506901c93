"""Header modules every phantom instance shares: patient, study, series, equipment, SOP common.

The builders here fill the Patient, General Study, Patient Study, General Series, General
Equipment, General Image (common part), Image Pixel and SOP Common modules (PS3.3 C.7 and
C.12). The modality writers add their own modules on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from ortho_node import __version__
from ortho_node.phantoms.identity import PatientIdentity, StudyIdentity, phantom_uid

MANUFACTURER = "ortho-node phantom"
IMPLEMENTATION_CLASS_UID = phantom_uid("implementation", "ortho-node-phantoms", 1)
IMPLEMENTATION_VERSION_NAME = "ORTHO_PHANTOM_1"


@dataclass(frozen=True)
class SeriesInfo:
    """What identifies one series of a phantom study."""

    series_instance_uid: str
    series_number: int
    series_description: str
    modality: str
    body_part: str
    series_time: str


@dataclass(frozen=True)
class CodedConcept:
    """A (code value, scheme, meaning) triple for header code sequences."""

    value: str
    scheme: str
    meaning: str

    def to_item(self) -> Dataset:
        """Return the concept as a code sequence item (Basic Code Macro, PS3.3 8.8)."""
        item = Dataset()
        item.CodeValue = self.value
        item.CodingSchemeDesignator = self.scheme
        item.CodeMeaning = self.meaning
        return item


def code_sequence(concept: CodedConcept) -> Sequence:
    """Return a one-item code sequence holding ``concept``."""
    return Sequence([concept.to_item()])


def new_instance(*, sop_class_uid: str, sop_instance_uid: str, patient: PatientIdentity,
                 study: StudyIdentity, series: SeriesInfo, instance_number: int) -> Dataset:
    """Return a dataset with file meta, patient, study, series, equipment and SOP common filled.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        The storage SOP class and this instance's UID.
    patient, study, series :
        Identities shared by all instances of the study / series.
    instance_number : int
        1-based position of the instance in its series.

    Returns
    -------
    pydicom.dataset.Dataset
        Explicit VR Little Endian, ready for the modality modules and pixel data.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = study.study_date
    ds.InstanceCreationTime = series.series_time
    # Patient module.
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "ORTHO-NODE-PHANTOM"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientIdentityRemoved = "NO"
    # General Study and Patient Study modules.
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = study.description
    age_years = int(study.study_date[:4]) - int(patient.birth_date[:4])
    ds.PatientAge = f"{age_years:03d}Y"
    # General Series module.
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.series_description
    ds.SeriesDate = study.study_date
    ds.SeriesTime = series.series_time
    ds.BodyPartExamined = series.body_part
    # General Equipment module.
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Phantom General Hospital"
    ds.StationName = "PHANTOM01"
    ds.ManufacturerModelName = "synthetic knee phantom"
    ds.DeviceSerialNumber = "PH-0001"
    ds.SoftwareVersions = f"ortho-node {__version__}"
    # General Image (common part).
    ds.InstanceNumber = instance_number
    ds.ContentDate = study.study_date
    ds.ContentTime = series.series_time
    ds.AcquisitionDate = study.study_date
    ds.AcquisitionTime = series.series_time
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def set_grey_pixels(ds: Dataset, pixels: np.ndarray, *, bits_stored: int,
                    photometric: str) -> None:
    """Fill the Image Pixel module for unsigned grey-scale ``pixels`` (uint16, one frame).

    Raises
    ------
    TypeError
        If ``pixels`` is not a 2-D uint16 array.
    ValueError
        If a value does not fit in ``bits_stored`` bits.
    """
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint16 or pixels.ndim != 2:
        found = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise TypeError(f"pixels must be a 2-D uint16 array, got {found}")
    if int(pixels.max()) >= 1 << bits_stored:
        raise ValueError(f"pixels must fit in bits_stored={bits_stored}, found max {int(pixels.max())}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.SmallestImagePixelValue = int(pixels.min())
    ds.LargestImagePixelValue = int(pixels.max())
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
