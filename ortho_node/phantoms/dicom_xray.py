"""DX (For Presentation) and CR headers for knee radiograph phantoms.

Fills the DX Series, DX Anatomy Imaged, DX Image, DX Detector, DX Positioning, X-Ray
Acquisition Dose, VOI LUT and Acquisition Context modules (PS3.3 A.26.2), or the CR Series
and CR Image modules (PS3.3 A.2), on top of :func:`dicom_common.new_instance`.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

from ortho_node.model.findings import Laterality
from ortho_node.phantoms.detector import MAX_VALUE
from ortho_node.phantoms.dicom_common import (
    CodedConcept,
    SeriesInfo,
    code_sequence,
    new_instance,
    set_grey_pixels,
)
from ortho_node.phantoms.identity import PatientIdentity, StudyIdentity
from ortho_node.phantoms.specs import Photometric, XrayModality, XrayPhantomSpec, XrayView
from ortho_node.phantoms.xray import KneeRadiograph

KNEE_REGION = CodedConcept("72696002", "SCT", "Knee")
"""Anatomic region (CID 4031)."""
VIEW_CODES = {
    XrayView.AP: CodedConcept("399348003", "SCT", "antero-posterior"),
    XrayView.LATERAL: CodedConcept("260432003", "SCT", "medio-lateral"),
}
"""View codes (CID 4010)."""

SOP_CLASS_BY_MODALITY = {
    XrayModality.DX: DigitalXRayImageStorageForPresentation,
    XrayModality.CR: ComputedRadiographyImageStorage,
}


def _patient_orientation(view: XrayView, side: Laterality) -> list[str]:
    """Row and column directions of the displayed image (see :mod:`ortho_node.phantoms.xray`)."""
    if view is XrayView.AP:
        return ["L", "F"]
    return ["A", "F"] if side is Laterality.RIGHT else ["P", "F"]


def _view_position(view: XrayView, side: Laterality) -> str:
    # Lateral knee: the imaged side lies against the detector.
    if view is XrayView.AP:
        return "AP"
    return "RL" if side is Laterality.RIGHT else "LL"


def stored_values(image: KneeRadiograph, photometric: Photometric) -> np.ndarray:
    """Return the pixel values to store: inverted for MONOCHROME1 so that bone still shows white."""
    if photometric is Photometric.MONOCHROME1:
        return (MAX_VALUE - image.pixels).astype(np.uint16)
    return image.pixels


def build_radiograph_dataset(image: KneeRadiograph, spec: XrayPhantomSpec, *,
                             patient: PatientIdentity, study: StudyIdentity, series: SeriesInfo,
                             sop_instance_uid: str, instance_number: int = 1) -> Dataset:
    """Return a DX or CR dataset (Explicit VR Little Endian) for a rendered knee radiograph.

    Parameters
    ----------
    image : KneeRadiograph
        Output of :func:`ortho_node.phantoms.xray.render_knee_radiograph` for ``spec``.
    spec : XrayPhantomSpec
        Chooses DX or CR and MONOCHROME1 or MONOCHROME2.
    patient, study, series :
        Identities; ``series.modality`` must match ``spec.modality``.
    sop_instance_uid : str
        UID of this instance.
    instance_number : int, optional
        Instance Number within the series.

    Raises
    ------
    ValueError
        If the image does not match the spec or the series modality differs.
    """
    if image.pixels.shape != (spec.rows, spec.columns):
        raise ValueError(
            f"image shape {image.pixels.shape} does not match spec {(spec.rows, spec.columns)}"
        )
    if series.modality != spec.modality.value:
        raise ValueError(f"series modality must be {spec.modality.value}, got {series.modality}")
    ds = new_instance(
        sop_class_uid=SOP_CLASS_BY_MODALITY[spec.modality], sop_instance_uid=sop_instance_uid,
        patient=patient, study=study, series=series, instance_number=instance_number,
    )
    add_projection_basics(
        ds, view_position=_view_position(spec.view, spec.side),
        patient_orientation=_patient_orientation(spec.view, spec.side), kvp=image.kvp,
        exposure_mas=image.exposure_mas, window=(image.window_center, image.window_width),
        spacing=[f"{spec.pixel_spacing_mm:.4g}"] * 2,
    )
    ds.ImageLaterality = spec.side.value
    if spec.modality is XrayModality.DX:
        _add_dx_modules(ds, spec)
    else:
        add_cr_image(ds)
    set_grey_pixels(ds, stored_values(image, spec.photometric), bits_stored=12,
                    photometric=spec.photometric.value)
    return ds


def add_projection_basics(ds: Dataset, *, view_position: str, patient_orientation: list[str],
                          kvp: float, exposure_mas: float, window: tuple[float, float],
                          spacing: list[str]) -> None:
    """Set what every projection radiograph carries: image type, orientation, view, technique
    factors (X-Ray Acquisition Dose), detector and image spacing, identity rescale, a VOI window."""
    ds.ImagerPixelSpacing = spacing
    ds.PixelSpacing = spacing
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = patient_orientation
    ds.ViewPosition = view_position
    ds.KVP = f"{kvp:.0f}"
    ds.ExposureTime = 20
    ds.XRayTubeCurrent = int(round(exposure_mas * 1000 / 20))
    ds.Exposure = max(1, int(round(exposure_mas)))
    ds.ExposureInuAs = int(round(exposure_mas * 1000))
    ds.DistanceSourceToDetector = "1150"
    ds.WindowCenter = f"{window[0]:.0f}"
    ds.WindowWidth = f"{window[1]:.0f}"


def add_cr_image(ds: Dataset) -> None:
    """Set the (optional) CR Image module attributes of a computed radiograph."""
    ds.PlateID = "PH-PLATE-1"
    ds.PlateType = "PHOSPHOR"


def _add_dx_modules(ds: Dataset, spec: XrayPhantomSpec) -> None:
    mono1 = spec.photometric is Photometric.MONOCHROME1
    # DX Series.
    ds.PresentationIntentType = "FOR PRESENTATION"
    # DX Anatomy Imaged (Image Laterality is set by the caller).
    ds.AnatomicRegionSequence = code_sequence(KNEE_REGION)
    # DX Image.
    ds.PixelIntensityRelationship = "LOG"
    # +1: lower values mean less X-ray intensity reached the detector (bone dark in storage).
    ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
    ds.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"
    ds.CalibrationImage = "NO"
    # DX Detector.
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "PH-DET-1"
    ds.DetectorConditionsNominalFlag = "YES"
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "magnification at the knee assumed"
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [round(spec.rows * spec.pixel_spacing_mm),
                                round(spec.columns * spec.pixel_spacing_mm)]
    # DX Positioning.
    ds.ViewCodeSequence = code_sequence(VIEW_CODES[spec.view])
    ds.PositionerType = "NONE"
    ds.DistanceSourceToPatient = "1100"
    ds.EstimatedRadiographicMagnificationFactor = "1.04545"  # 1150 / 1100
    # Acquisition Context (Type 2: present, may be empty).
    ds.AcquisitionContextSequence = Sequence()
