"""MR Image Storage headers for sagittal knee phantoms (PS3.3 A.4: Frame of Reference, Image
Plane, MR Image modules on top of :func:`dicom_common.new_instance`)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from ortho_node.phantoms.dicom_common import SeriesInfo, new_instance, set_grey_pixels
from ortho_node.phantoms.identity import PatientIdentity, StudyIdentity
from ortho_node.phantoms.mri import KneeMRSeries
from ortho_node.phantoms.specs import MRContrast

SAGITTAL_ORIENTATION = ["0", "1", "0", "0", "0", "-1"]
"""Rows run posterior (+y), columns run inferior (-z): anterior left, superior up."""
_SLICE_NORMAL_X = -1.0  # row x column direction = (-1, 0, 0)

SERIES_DESCRIPTIONS = {MRContrast.PD: "SAG PD", MRContrast.PD_FS: "SAG PD FS", MRContrast.T2: "SAG T2"}
_LARMOR_MHZ_PER_T = 42.577


def _fmt(value: float) -> str:
    """Format a number as a DS string (at most 16 characters)."""
    return f"{value:.6g}"


def build_mr_slice_dataset(series_image: KneeMRSeries, index: int, *, patient: PatientIdentity,
                           study: StudyIdentity, series: SeriesInfo, sop_instance_uid: str,
                           frame_of_reference_uid: str) -> Dataset:
    """Return the MR Image Storage dataset of slice ``index`` of a rendered series.

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
    if series.modality != "MR":
        raise ValueError(f"series modality must be MR, got {series.modality}")
    spec, timing = series_image.spec, series_image.timing
    ds = new_instance(
        sop_class_uid=MRImageStorage, sop_instance_uid=sop_instance_uid, patient=patient,
        study=study, series=series, instance_number=index + 1, study_description="MR KNEE",
    )
    ds.Laterality = spec.side.value
    ds.PatientPosition = "FFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    # Frame of Reference.
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # Image Plane.
    x = series_image.slice_positions_mm[index]
    y0, z0 = series_image.top_left_mm
    ds.PixelSpacing = [_fmt(spec.pixel_spacing_mm), _fmt(spec.pixel_spacing_mm)]
    ds.ImageOrientationPatient = SAGITTAL_ORIENTATION
    ds.ImagePositionPatient = [_fmt(x), _fmt(y0), _fmt(z0)]
    ds.SliceThickness = _fmt(spec.slice_thickness_mm)
    ds.SpacingBetweenSlices = _fmt(spec.spacing_between_slices_mm)
    ds.SliceLocation = _fmt(_SLICE_NORMAL_X * x)
    # MR Image.
    ds.ScanningSequence = ["SE"]
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = ["FS"] if timing.fat_suppressed else ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "*tse2d1_" + str(timing.echo_train_length)
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
    ds.ReceiveCoilName = "KNEE 16CH"
    ds.TransmitCoilName = "BODY"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = "200"
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.AcquisitionMatrix = [0, spec.columns, spec.rows, 0]
    ds.WindowCenter = _fmt(series_image.window_center)
    ds.WindowWidth = _fmt(series_image.window_width)
    set_grey_pixels(ds, series_image.pixels[index], bits_stored=16, photometric="MONOCHROME2")
    return ds
