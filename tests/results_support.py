"""Source images, findings and a validator wrapper for the ``test_results_*`` tests.

Source images are built here with pydicom (pixel data included) so the tests do not depend on
the phantom package; they carry just enough of the DX / MR IODs for the results builders and
for ``dciodvfy`` to judge the *result* objects.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ortho_node.model.findings import (
    CodeTriple,
    Finding,
    HeadKind,
    Heatmap,
    ImageRef,
    Laterality,
    ModelIdentity,
    OutcomeStatus,
    StudyFindings,
    TaskOutcome,
)

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage

KNEE_JOINT = CodeTriple("49076000", "SCT", "Knee joint")
OA_KNEE = CodeTriple("239873007", "SCT", "Osteoarthritis of knee")
KL_CONCEPT = CodeTriple("KL-GRADE", "99ORTHO", "Kellgren-Lawrence grade")
KL_VALUES = tuple(CodeTriple(f"KL-{g}", "99ORTHO", f"Kellgren-Lawrence grade {g}") for g in range(5))
ACL_TEAR = CodeTriple("ACL-TEAR", "99ORTHO", "Tear of anterior cruciate ligament")
PRESENT = CodeTriple("52101004", "SCT", "Present")
ABSENT = CodeTriple("272519000", "SCT", "Absent")
P_KL = CodeTriple("P-KL", "99ORTHO", "Probability of predicted KL grade")


def _base(sop_class: str, study_uid: str, series_uid: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Knee^Phantom"
    ds.PatientID = "PHANTOM-1"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20250102"
    ds.StudyTime = "101500"
    ds.StudyID = "S1"
    ds.AccessionNumber = "ACC001"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "Phantom Imaging"
    ds.ManufacturerModelName = "Phantom 1"
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "KNEE"
    return ds


def knee_pattern(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic 'knee' (two bright bones and a joint gap) plus a little noise, 0..1."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cx = cols / 2.0
    bone = np.exp(-(((xx - cx) / (cols * 0.18)) ** 2))
    gap = 1.0 - 0.7 * np.exp(-(((yy - rows / 2.0) / (rows * 0.03)) ** 2))
    rng = np.random.default_rng(seed)
    img = 0.15 + 0.75 * bone * gap + 0.03 * rng.standard_normal((rows, cols)).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def make_dx(
    study_uid: str,
    *,
    laterality: str = "L",
    rows: int = 240,
    cols: int = 200,
    photometric: str = "MONOCHROME2",
    series_uid: str | None = None,
    instance_number: int = 1,
    drop: Sequence[str] = (),
) -> Dataset:
    """A 12-bit DX 'For Presentation' knee radiograph with pixel data and a VOI window."""
    ds = _base(DX_STORAGE, study_uid, series_uid or generate_uid(), "DX")
    ds.InstanceNumber = instance_number
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = laterality
    ds.PatientOrientation = ["R", "F"] if laterality != "R" else ["L", "F"]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.ViewPosition = "AP"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.LossyImageCompression = "00"
    img = knee_pattern(rows, cols, seed=instance_number)
    if photometric == "MONOCHROME1":
        img = 1.0 - img
    ds.PixelData = (img * 4095).astype(np.uint16).tobytes()
    for kw in drop:
        if kw in ds:
            delattr(ds, kw)
    return ds


def make_mr_series(study_uid: str, *, n_slices: int = 3, rows: int = 128, cols: int = 128) -> list[Dataset]:
    """A sagittal knee MR series (legacy single-frame MR Image Storage) with pixel data."""
    series_uid = generate_uid()
    frame_uid = generate_uid()
    out = []
    for i in range(n_slices):
        ds = _base(MR_STORAGE, study_uid, series_uid, "MR")
        ds.SeriesNumber = 3
        ds.InstanceNumber = i + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTrainLength = 1
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal: rows run A->P, columns H->F
        ds.ImagePositionPatient = [float(i) * 3.0, -60.0, 60.0]
        ds.SliceThickness = 3.0
        ds.PixelSpacing = [0.5, 0.5]
        ds.Laterality = "R"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        img = knee_pattern(rows, cols, seed=10 + i)
        ds.PixelData = (img * 1000).astype(np.uint16).tobytes()
        out.append(ds)
    return out


def ref(ds: Dataset) -> ImageRef:
    return ImageRef(ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID)


def model(*, synthetic: bool = True) -> ModelIdentity:
    return ModelIdentity(
        name="OrthoFoundation-KL",
        version="1.2.0",
        manufacturer="Ortho Node Project",
        device_uid="1.2.826.0.1.3680043.8.498.1234567890",
        weights_sha256="ab" * 32,
        synthetic=synthetic,
        disclaimer="Model trained on synthetic phantoms only; not validated for clinical use.",
    )


def heat_values(n: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return np.exp(-((xx - n / 2) ** 2 + (yy - n / 2) ** 2) / (n * 0.8)).astype(np.float32)


def kl_finding(
    image: Dataset,
    *,
    grade: int = 3,
    laterality: Laterality | None = Laterality.LEFT,
    region: tuple[float, float, float, float] | None = (40.0, 60.0, 160.0, 180.0),
    source_images: Sequence[Dataset] | None = None,
) -> Finding:
    probs = [0.02, 0.05, 0.13, 0.1, 0.1]
    probs[grade] = 0.0
    probs[grade] = round(1.0 - sum(probs), 4)
    srcs = tuple(ref(d) for d in (source_images or [image]))
    heat = Heatmap(ref(image), heat_values(), region) if region is not None else None
    return Finding(
        task="kl_grade",
        title="KL grade",
        kind=HeadKind.ORDINAL,
        laterality=laterality,
        finding_site=KNEE_JOINT,
        finding_type=OA_KNEE,
        concept=KL_CONCEPT,
        label=f"KL {grade}",
        value_code=KL_VALUES[grade],
        probability=probs[grade],
        probabilities=tuple(probs),
        labels=tuple(f"KL {g}" for g in range(5)),
        source_images=srcs,
        probability_concept=P_KL,
        heatmap=heat,
    )


def acl_finding(
    key: Dataset,
    series: Sequence[Dataset],
    *,
    present: bool = True,
    region: tuple[float, float, float, float] | None = (30.0, 30.0, 100.0, 90.0),
) -> Finding:
    p = 0.81 if present else 0.9
    return Finding(
        task="acl_tear",
        title="ACL tear",
        kind=HeadKind.BINARY,
        laterality=Laterality.RIGHT,
        finding_site=KNEE_JOINT,
        finding_type=ACL_TEAR,
        concept=ACL_TEAR,
        label="Present" if present else "Absent",
        value_code=PRESENT if present else ABSENT,
        probability=p,
        probabilities=(1 - p, p) if present else (p, 1 - p),
        labels=("Absent", "Present"),
        source_images=tuple(ref(d) for d in series),
        positive_probability=p if present else 1 - p,
        heatmap=Heatmap(ref(key), heat_values(), region) if region is not None else None,
    )


def failed(task: str = "meniscus_tear", title: str = "Meniscus tear", *, laterality: Laterality | None = None) -> TaskOutcome:
    return TaskOutcome(task, title, OutcomeStatus.FAILED, "Inference error: series has too few slices", laterality)


def study(study_uid: str, **kw) -> StudyFindings:
    kw.setdefault("model", model())
    return StudyFindings(study_instance_uid=study_uid, **kw)


def replace(obj, **changes):
    return dataclasses.replace(obj, **changes)


def dciodvfy(ds: Dataset, path: Path) -> tuple[list[str], str]:
    """Write ``ds`` to ``path``, run ``dciodvfy -new`` and return (error lines, full output)."""
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    return errors, out


def dcentvfy(datasets: Sequence[Dataset], folder: Path) -> tuple[list[str], str]:
    """Write ``datasets`` to ``folder`` and run dicom3tools' ``dcentvfy`` over them together:
    patient, study and series attributes must agree across the instances that share an entity
    (dciodvfy judges one object alone). Return (error lines, full output)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    proc = subprocess.run(["dcentvfy", *paths], capture_output=True, text=True, errors="replace", timeout=60)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    return errors, out


ALLOWED_ENTITY_WARNINGS = (
    # dicom3tools' tables place Accession Number in a Key Object Selection's series, not its study
    "Different information entities for attribute - Element=<AccessionNumber> IE <Series> versus <Study>",
)


def unexpected_entity_warnings(output: str) -> list[str]:
    return [w for w in warnings_of(output) if not any(a in w for a in ALLOWED_ENTITY_WARNINGS)]


def warnings_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Warning")]


# --- reading SR content back -------------------------------------------------------------

ALLOWED_WARNINGS = (
    "Unrecognized defined term = <99ORTHO>",  # our private coding scheme (declared in 0008,0110)
    "ContributingEquipmentSequence(0018,a001)[",  # DeviceUID in Contributing Equipment: dicom3tools 2022 tables
    "Missing attribute or value that would be needed to build DICOMDIR",  # empty Type 2 copied from a source
)


def unexpected_warnings(output: str) -> list[str]:
    return [w for w in warnings_of(output) if not any(a in w for a in ALLOWED_WARNINGS)]


def all_groups(sr):
    """Planar ROI and image-level measurement groups of a parsed SR (highdicom.sr.srread)."""
    return list(sr.content.get_planar_roi_measurement_groups()) + list(sr.content.get_image_measurement_groups())


def group_by_text(sr, text: str):
    matches = [g for g in all_groups(sr) if g.tracking_identifier == text]
    assert len(matches) == 1, f"expected one group tracked as {text!r}, found {[g.tracking_identifier for g in all_groups(sr)]}"
    return matches[0]


def items_named(dataset, value: str, scheme: str | None = None) -> list:
    """Direct children of an SR content item whose concept name has ``value`` (and ``scheme``)."""
    out = []
    for item in dataset.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0]
        if name.CodeValue == value and (scheme is None or name.CodingSchemeDesignator == scheme):
            out.append(item)
    return out


def algorithm_of(item) -> dict[str, str]:
    """TID 4019 content directly under ``item``: {'name', 'version', 'family'}."""
    out = {}
    for child in item.get("ContentSequence", []):
        code = child.ConceptNameCodeSequence[0].CodeValue
        if code == "111001":
            out["name"] = child.TextValue
        elif code == "111003":
            out["version"] = child.TextValue
        elif code == "111000":
            concept = child.ConceptCodeSequence[0]
            out["family"] = f"{concept.CodeValue}^{concept.CodingSchemeDesignator}"
    return out


def root_evaluations(sr) -> list:
    """Items of the TID 1500 'Qualitative Evaluations' container (C0034375, UMLS)."""
    containers = items_named(sr, "C0034375", "UMLS")
    return list(containers[0].ContentSequence) if containers else []


def roi_image_uid(roi) -> str:
    """SOP Instance UID of the image an SR Image Region (SCOORD) is SELECTED FROM."""
    return roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
