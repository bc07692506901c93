"""The universal fallback: a Secondary Capture with the findings burned in.

One Secondary Capture per *key image*: the image a finding is shown on (its heatmap's image,
else the middle of its source images). A radiograph with findings for both knees gives one SC
with both; an MRI series gives one SC per distinct key slice (usually one per series). The SC
is RGB 8-bit: the windowed source, the explanation heatmaps, an ROI box per finding and a text
panel below the image (title, result, probability, model, "AI result - not a diagnosis", and
"Synthetic model - not for clinical use" for synthetic models). ``BurnedInAnnotation`` is YES.

It belongs to the source study, in the result's own SC series, with the source's Patient and
Study modules. Its side is copied from the source (Image Laterality / Laterality: R, L or B),
else taken from the findings (one side named, or left and right findings on one image: "B").
A side R or L goes into the series' Laterality when every capture of the study shows that knee,
else into each capture's Image Laterality (Laterality is a series attribute: the knees of a
bilateral study on separate images do not share one); "B" is always Image Laterality, as the
series attribute has no "both"; an unknown side leaves Laterality empty. Body Part Examined,
also a series attribute, is copied only where every capture's source names the same part.
Patient Orientation is copied from the source, else derived from Image Orientation (Patient)
(the dominant patient direction of the row and column axes; the SC has the source's pixel grid,
enlarged by an integer factor); when neither exists it is left empty (Type 2C, zero length:
unknown orientation is not guessed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ortho_node.model.findings import Finding, ImageRef, Laterality, OutcomeStatus, StudyFindings
from ortho_node.privacy import uid_ref
from ortho_node.results import codes as oc
from ortho_node.results._common import key_image as key_image_of
from ortho_node.results._common import (
    NOT_A_DIAGNOSIS,
    SYNTHETIC_WARNING,
    SourceIndex,
    character_set,
    check_findings,
    check_int,
    check_regions,
    finding_heading,
    image_key,
    key_images,
    outcome_heading,
    series_description,
    texts_of,
)
from ortho_node.results.render import Overlay, TextLine, display_to_uint8, render_findings, window_source
from ortho_node.results.sr import model_equipment
from ortho_node.results.uids import ResultKind, ResultUIDs

COLOURS = {
    Laterality.LEFT: (255, 200, 0),
    Laterality.RIGHT: (0, 200, 255),
    Laterality.BOTH: (255, 96, 255),
    None: (255, 96, 255),
}
"""ROI box and text colour per laterality."""

WARNING_COLOUR = (255, 110, 110)
NEUTRAL_COLOUR = (230, 230, 230)
OUTCOME_COLOUR = (170, 170, 170)

_TAG = {Laterality.LEFT: "L", Laterality.RIGHT: "R", Laterality.BOTH: "B", None: ""}
_ORIENTATION_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x / +y, -y / +z, -z (LPS)
_PLACEHOLDER_ORIENTATION = ("L", "F")


def _orientation_letter(vector: Sequence[float]) -> str:
    axis = int(np.argmax(np.abs(vector)))
    positive, negative = _ORIENTATION_LETTERS[axis]
    return positive if vector[axis] > 0 else negative


def patient_orientation(header: Dataset, frame_number: int | None = None) -> list[str] | None:
    """Patient Orientation of a source image: its own value, else derived from Image Orientation."""
    value = header.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2 and all(value):
        return [str(v) for v in value]
    orientation = header.get("ImageOrientationPatient")
    if orientation is None:
        groups = []
        per_frame = header.get("PerFrameFunctionalGroupsSequence")
        if per_frame:
            groups.append(per_frame[(frame_number or 1) - 1])
        if header.get("SharedFunctionalGroupsSequence"):
            groups.append(header.SharedFunctionalGroupsSequence[0])
        for group in groups:
            plane = group.get("PlaneOrientationSequence")
            if plane and "ImageOrientationPatient" in plane[0]:
                orientation = plane[0].ImageOrientationPatient
                break
    if orientation is None or len(orientation) != 6:
        return None
    values = [float(v) for v in orientation]
    return [_orientation_letter(values[:3]), _orientation_letter(values[3:])]


def sc_laterality(header: Dataset, shown: Sequence[Finding]) -> str | None:
    """R, L or B (both) from the source, else from the findings shown; None when unknown."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(header.get(keyword, "") or "").upper()
        if value in ("R", "L", "B"):
            return value
    sides = {f.laterality for f in shown if f.laterality is not None}
    if Laterality.BOTH in sides or {Laterality.LEFT, Laterality.RIGHT} <= sides:
        return "B"
    if len(sides) == 1:
        return next(iter(sides)).value
    return None


def probability_text(probability: float) -> str:
    """``p = 0.83``; at the ends ``p > 0.99`` / ``p < 0.01``: a model's probability rounded to
    1.00 or 0.00 would read as certainty on an image a radiologist reads."""
    if probability >= 0.995:
        return "p > 0.99"
    if probability < 0.005:
        return "p < 0.01"
    return f"p = {probability:.2f}"


def findings_lines(findings: StudyFindings, shown: Sequence[Finding]) -> list[TextLine]:
    """The burned-in text: one line per finding shown, the tasks not evaluated, model, warnings."""
    lines = [
        TextLine(f"{finding_heading(f)}: {f.label} ({probability_text(f.probability)})", COLOURS[f.laterality])
        for f in shown
    ]
    if not findings.in_scope:
        lines.append(TextLine(f"Study out of scope: {findings.out_of_scope_reason}", OUTCOME_COLOUR))
    for outcome in findings.not_evaluated:
        status = "out of scope" if outcome.status is OutcomeStatus.OUT_OF_SCOPE else "failed"
        heading = outcome_heading(outcome.title, outcome.laterality)
        lines.append(TextLine(f"{heading}: not evaluated ({status}): {outcome.reason}", OUTCOME_COLOUR))
    model = findings.model
    lines.append(TextLine(f"Model: {model.label} ({model.manufacturer})", NEUTRAL_COLOUR))
    lines.append(TextLine(NOT_A_DIAGNOSIS, WARNING_COLOUR))
    if model.synthetic:
        lines.append(TextLine(SYNTHETIC_WARNING, WARNING_COLOUR))
    return lines


class FindingsCapture(hd.sc.SCImage):
    """Secondary Capture of one key image with the AI findings burned in.

    Parameters
    ----------
    findings: ortho_node.model.findings.StudyFindings
        The model's findings for the study.
    key_image: ortho_node.model.findings.ImageRef
        The image to draw; one of the findings' key images (see :func:`key_images`).
    sources: Sequence[pydicom.Dataset]
        Source datasets of the study; not modified. The key image needs pixel data unless
        ``display_array`` is given.
    uids: ortho_node.results.uids.ResultUIDs
        The UIDs of this result version.
    series_number: int
        Series Number of the SC series.
    instance_number: int
        Instance Number of this SC within its series.
    display_array: numpy.ndarray | None, optional
        The key image already decoded by the caller: 2-D (Rows, Columns), higher = brighter
        (MONOCHROME1 already inverted), or 3-D (frames, Rows, Columns) for a multi-frame source.
        ``None``: decode the source with pydicom (modality LUT, VOI window / LUT).

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        ``key_image`` is not a key image of the findings, the source cannot be rendered, or
        ``display_array`` does not match the image size.
    """

    def __init__(
        self,
        findings: StudyFindings,
        *,
        key_image: ImageRef,
        sources: Sequence[Dataset],
        uids: ResultUIDs,
        series_number: int,
        instance_number: int,
        display_array: np.ndarray | None = None,
    ) -> None:
        findings = check_findings(findings)
        index = SourceIndex(findings, sources)
        check_regions(findings, index)
        if not isinstance(key_image, ImageRef):
            raise TypeError(f"key_image must be an ImageRef, got {type(key_image).__name__}")
        if not isinstance(uids, ResultUIDs):
            raise TypeError(f"uids must be a ResultUIDs, got {type(uids).__name__}")
        check_int("series_number", series_number, minimum=0, maximum=2**31 - 1)
        check_int("instance_number", instance_number, minimum=1, maximum=2**31 - 1)
        shown = [f for f in findings.findings if image_key(key_image_of(f)) == image_key(key_image)]
        if not shown:
            raise ValueError(
                f"key_image {uid_ref(key_image.sop_instance_uid)} is not the key image of any finding; "
                "use key_images(findings)"
            )
        source = index.dataset(key_image)
        header = index.header(key_image)
        grey = _grey(source, key_image, display_array)
        laterality = sc_laterality(header, shown)

        overlays = [
            Overlay(f.heatmap.region, f.heatmap.values, COLOURS[f.laterality], _TAG[f.laterality])
            for f in shown
            if f.heatmap is not None
        ]
        rendering = render_findings(grey, overlays=overlays, lines=findings_lines(findings, shown))

        orientation = patient_orientation(header, key_image.frame_number)
        valid = orientation is not None and all(v in ("A", "P", "R", "L", "H", "F") for v in orientation)
        equipment = _acquisition_equipment(header) + model_equipment(findings.model)
        model = findings.model
        super().__init__(
            pixel_array=rendering.pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            study_instance_uid=findings.study_instance_uid,
            series_instance_uid=uids.series(ResultKind.SC),
            series_number=series_number,
            sop_instance_uid=uids.instance(ResultKind.SC, image_key(key_image)),
            instance_number=instance_number,
            manufacturer=model.manufacturer,
            patient_id=header.PatientID,
            patient_name=header.PatientName,
            patient_birth_date=header.PatientBirthDate,
            patient_sex=header.PatientSex,
            accession_number=header.AccessionNumber,
            study_id=header.StudyID,
            study_date=header.StudyDate,
            study_time=header.StudyTime,
            referring_physician_name=header.ReferringPhysicianName,
            laterality=laterality if laterality in ("L", "R") else None,
            patient_orientation=tuple(orientation) if valid else _PLACEHOLDER_ORIENTATION,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=equipment,
            series_description=series_description("findings image", model),
            manufacturer_model_name=model.name,
            software_versions=model.version,
            specific_character_set=character_set(header, texts_of(findings)),
        )
        # the Patient and Study modules as the source has them, as highdicom's SR copies them:
        # a PACS that meets the study first through this object shows it complete
        self.copy_patient_and_study_information(header)
        if not valid:
            # oblique letters ("AL") are valid DICOM but not in highdicom's enum; unknown stays empty
            self.PatientOrientation = orientation if orientation is not None else ""
        if laterality == "B":
            # General Series Laterality has no "both"; Image Laterality (General Image) does, and
            # its presence lifts the Type 2C requirement on Laterality (which must then be absent)
            self.ImageLaterality = "B"
        elif laterality is None:
            self.Laterality = ""  # Type 2C, zero length: side unknown
        self.BurnedInAnnotation = "YES"
        self.DeviceUID = model.device_uid
        if header.get("BodyPartExamined"):
            self.BodyPartExamined = header.BodyPartExamined
        self.DerivationDescription = "AI findings, explanation heatmap and ROI burned in over the windowed source image"
        self.SourceImageSequence = [_source_image_item(key_image)]

    @classmethod
    def for_study(
        cls,
        findings: StudyFindings,
        *,
        sources: Sequence[Dataset],
        uids: ResultUIDs,
        series_number: int,
        display_arrays: Mapping[str, np.ndarray] | None = None,
    ) -> list["FindingsCapture"]:
        """One Secondary Capture per key image of ``findings``, numbered 1, 2, ... in finding order.

        Parameters
        ----------
        findings: ortho_node.model.findings.StudyFindings
            The model's findings (none: no Secondary Captures).
        sources: Sequence[pydicom.Dataset]
            Source datasets of the study (not modified).
        uids: ortho_node.results.uids.ResultUIDs
            The UIDs of this result version.
        series_number: int
            Series Number of the SC series.
        display_arrays: Mapping[str, numpy.ndarray] | None, optional
            Caller-decoded display arrays by SOP Instance UID (see ``display_array``).

        Returns
        -------
        list[FindingsCapture]
        """
        findings = check_findings(findings)
        arrays = _check_display_arrays(display_arrays)
        captures = [
            cls(
                findings,
                key_image=image,
                sources=sources,
                uids=uids,
                series_number=series_number,
                instance_number=number,
                display_array=arrays.get(image.sop_instance_uid),
            )
            for number, image in enumerate(key_images(findings), start=1)
        ]
        _agree_on_series_laterality(captures)
        _agree_on_body_part(captures)
        return captures


def _agree_on_series_laterality(captures: Sequence[FindingsCapture]) -> None:
    """Laterality is a series attribute, and the captures of a study share one series: it may
    name a side only where every capture shows that same knee. Otherwise (the two knees of a
    bilateral study on separate images) each capture states its own side as Image Laterality
    instead, and the series attribute goes (it must be absent where Image Laterality is present)."""
    sides = {str(capture.get("ImageLaterality") or capture.get("Laterality") or "") for capture in captures}
    if len(sides) <= 1:
        return
    for capture in captures:
        side = str(capture.get("Laterality") or "")
        if side in ("R", "L"):
            del capture.Laterality
            capture.ImageLaterality = side


def _agree_on_body_part(captures: Sequence[FindingsCapture]) -> None:
    """Body Part Examined is a series attribute too: kept where every capture's source names the
    same part, else left out (Type 3; e.g. a knee radiograph labelled KNEE beside an MR series
    labelled EXTREMITY, both knees to the scope gate)."""
    parts = {str(capture.get("BodyPartExamined") or "") for capture in captures}
    if len(parts) > 1:
        for capture in captures:
            if "BodyPartExamined" in capture:
                del capture.BodyPartExamined


def _check_display_arrays(display_arrays: Mapping[str, np.ndarray] | None) -> Mapping[str, np.ndarray]:
    if display_arrays is None:
        return {}
    if not isinstance(display_arrays, Mapping):
        raise TypeError(f"display_arrays must be a mapping of SOP Instance UID to array, got {type(display_arrays).__name__}")
    for key, value in display_arrays.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise TypeError(
                f"display_arrays must map str SOP Instance UIDs to numpy arrays, got {type(key).__name__} -> "
                f"{type(value).__name__}"
            )
    return display_arrays


def _grey(source: Dataset, image: ImageRef, display_array: np.ndarray | None) -> np.ndarray:
    rows, cols = int(source.Rows), int(source.Columns)
    if display_array is None:
        return window_source(source, frame_number=image.frame_number)
    if not isinstance(display_array, np.ndarray):
        raise TypeError(f"display_array must be a numpy array, got {type(display_array).__name__}")
    array = display_array
    if array.ndim == 3:
        frame = (image.frame_number or 1) - 1
        if frame >= array.shape[0]:
            raise ValueError(f"display_array has {array.shape[0]} frames, the key image is frame {frame + 1}")
        array = array[frame]
    if array.shape != (rows, cols):
        raise ValueError(
            f"display_array for {uid_ref(image.sop_instance_uid)} must have shape ({rows}, {cols}) "
            f"(Rows, Columns of the source), got {display_array.shape}"
        )
    return display_to_uint8(array)


def _acquisition_equipment(header: Dataset) -> list[hd.ContributingEquipment]:
    try:
        return [hd.ContributingEquipment.for_image_acquisition(header)]
    except (AttributeError, ValueError, KeyError):
        return []


def _source_image_item(image: ImageRef) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = image.sop_class_uid
    item.ReferencedSOPInstanceUID = image.sop_instance_uid
    if image.frame_number is not None:
        item.ReferencedFrameNumber = image.frame_number
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(oc.SOURCE_IMAGE_FOR_PROCESSING)]
    return item
