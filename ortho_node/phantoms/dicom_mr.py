"""MR Image Storage headers (PS3.3 A.4: Frame of Reference, Image Plane and MR Image modules on
top of :func:`dicom_common.new_instance`), for the knee phantoms and the non-knee head series."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage
from pydicom.valuerep import format_number_as_ds

from ortho_node.phantoms.dicom_common import SeriesInfo, new_instance, set_grey_pixels
from ortho_node.phantoms.identity import PatientIdentity, StudyIdentity
from ortho_node.phantoms.mri import KneeMRSeries, SequenceTiming
from ortho_node.phantoms.specs import MRContrast

SAGITTAL_ORIENTATION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
"""Rows run posterior (+y), columns run inferior (-z): anterior left, superior up."""

SERIES_DESCRIPTIONS = {MRContrast.PD: "SAG PD", MRContrast.PD_FS: "SAG PD FS", MRContrast.T2: "SAG T2"}
_LARMOR_MHZ_PER_T = 42.577


def _fmt(value: float) -> str:
    """Format a number as a DS string: 0.1 um precision is plenty, and it stays short."""
    return format_number_as_ds(round(float(value), 4) + 0.0)  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True)
class SlicePlane:
    """Where one MR slice lies in patient space (Image Plane module, PS3.3 C.7.6.2)."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing_mm: float
    thickness_mm: float
    spacing_between_mm: float

    @property
    def slice_location(self) -> float:
        """Position along the slice normal (row direction x column direction)."""
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        return float(np.dot(np.cross(row, col), self.position))


def new_mr_instance(*, plane: SlicePlane, timing: SequenceTiming, pixels: np.ndarray,
                    window: tuple[float, float], patient: PatientIdentity, study: StudyIdentity,
                    series: SeriesInfo, sop_instance_uid: str, frame_of_reference_uid: str,
                    instance_number: int, coil: str) -> Dataset:
    """Return an MR Image Storage dataset for one slice of any body part.

    Fills Frame of Reference, Image Plane and MR Image (a 2D turbo spin echo consistent with
    ``timing``), VOI LUT and Image Pixel (16-bit) on top of the common modules.

    Raises
    ------
    ValueError
        If ``series.modality`` is not ``"MR"``.
    """
    if series.modality != "MR":
        raise ValueError(f"series modality must be MR, got {series.modality}")
    ds = new_instance(
        sop_class_uid=MRImageStorage, sop_instance_uid=sop_instance_uid, patient=patient,
        study=study, series=series, instance_number=instance_number,
    )
    ds.PatientPosition = "FFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    # Frame of Reference.
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # Image Plane.
    ds.PixelSpacing = [_fmt(plane.pixel_spacing_mm)] * 2
    ds.ImageOrientationPatient = [_fmt(value) for value in plane.orientation]
    ds.ImagePositionPatient = [_fmt(value) for value in plane.position]
    ds.SliceThickness = _fmt(plane.thickness_mm)
    ds.SpacingBetweenSlices = _fmt(plane.spacing_between_mm)
    ds.SliceLocation = _fmt(plane.slice_location)
    # MR Image: 2D turbo spin echo.
    ds.ScanningSequence = ["SE"]
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = ["FS"] if timing.fat_suppressed else ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = f"*tse2d1_{timing.echo_train_length}"
    ds.AngioFlag = "N"
    ds.RepetitionTime = _fmt(timing.repetition_time_ms)
    ds.EchoTime = _fmt(timing.echo_time_ms)
    ds.EchoTrainLength = timing.echo_train_length
    ds.EchoNumbers = [1]
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _fmt(_LARMOR_MHZ_PER_T * timing.field_strength_t)
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = _fmt(timing.field_strength_t)
    ds.FlipAngle = "150"
    ds.ReceiveCoilName = coil
    ds.TransmitCoilName = "BODY"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = "200"
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.AcquisitionMatrix = [0, int(pixels.shape[1]), int(pixels.shape[0]), 0]
    ds.WindowCenter = _fmt(window[0])
    ds.WindowWidth = _fmt(window[1])
    set_grey_pixels(ds, pixels, bits_stored=16, photometric="MONOCHROME2")
    return ds


def build_mr_slice_dataset(series_image: KneeMRSeries, index: int, *, patient: PatientIdentity,
                           study: StudyIdentity, series: SeriesInfo, sop_instance_uid: str,
                           frame_of_reference_uid: str) -> Dataset:
    """Return the MR Image Storage dataset of slice ``index`` of a rendered knee series.

    Parameters
    ----------
    series_image : KneeMRSeries
        Output of :func:`ortho_node.phantoms.mri.render_knee_mr`.
    index : int
        0-based slice index; Instance Number is ``index + 1``.
    patient, study, series :
        Identities shared by the study / series.
    sop_instance_uid, frame_of_reference_uid : str
        UIDs of this instance and of the series' frame of reference.

    Raises
    ------
    ValueError
        If ``index`` is out of range or the series is not an MR series.
    """
    slices = series_image.pixels.shape[0]
    if not isinstance(index, int) or not 0 <= index < slices:
        raise ValueError(f"index must be an int in [0, {slices - 1}], got {index!r}")
    spec = series_image.spec
    y0, z0 = series_image.top_left_mm
    plane = SlicePlane(
        position=(series_image.slice_positions_mm[index], y0, z0),
        orientation=SAGITTAL_ORIENTATION,
        pixel_spacing_mm=spec.pixel_spacing_mm,
        thickness_mm=spec.slice_thickness_mm,
        spacing_between_mm=spec.spacing_between_slices_mm,
    )
    ds = new_mr_instance(
        plane=plane, timing=series_image.timing, pixels=series_image.pixels[index],
        window=(series_image.window_center, series_image.window_width), patient=patient,
        study=study, series=series, sop_instance_uid=sop_instance_uid,
        frame_of_reference_uid=frame_of_reference_uid, instance_number=index + 1,
        coil="KNEE 16CH",
    )
    ds.Laterality = spec.side.value
    return ds
