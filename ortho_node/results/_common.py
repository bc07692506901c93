"""Helpers shared by the SR, SC and KO builders: input checks, source lookup, wording.

Nothing here builds a DICOM object. The caller's datasets are never modified: highdicom reads
patient/study attributes by attribute access, so builders work on :func:`header_copy` copies
(pixel data left out, missing Type 2 attributes filled in as empty).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset

from ortho_node.model.findings import Finding, ImageRef, Laterality, ModelIdentity, StudyFindings
from ortho_node.privacy import uid_ref
from ortho_node.results.uids import is_valid_uid

TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
"""Type 2 Patient / General Study attributes highdicom reads from the first source dataset."""

_PIXEL_GROUP = 0x7FE0
UTF8 = "ISO_IR 192"


def header_copy(dataset: Dataset) -> Dataset:
    """A deep copy of ``dataset`` without pixel data, with missing Type 2 patient/study attributes empty."""
    out = Dataset()
    for element in dataset:
        if element.tag.group == _PIXEL_GROUP:
            continue
        out.add(copy.deepcopy(element))
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in out or out[keyword].value is None:
            setattr(out, keyword, "")
    return out


def check_findings(findings: object) -> StudyFindings:
    if not isinstance(findings, StudyFindings):
        raise TypeError(f"findings must be a StudyFindings, got {type(findings).__name__}")
    check_model(findings.model)
    if not is_valid_uid(findings.study_instance_uid):
        raise ValueError(f"findings.study_instance_uid must be a valid DICOM UID, got {findings.study_instance_uid!r}")
    return findings


def check_model(model: ModelIdentity) -> None:
    if not isinstance(model, ModelIdentity):
        raise TypeError(f"findings.model must be a ModelIdentity, got {type(model).__name__}")
    if not is_valid_uid(model.device_uid):
        raise ValueError(f"findings.model.device_uid must be a valid DICOM UID, got {model.device_uid!r}")
    for name in ("name", "version", "manufacturer"):
        value = getattr(model, name)
        if not isinstance(value, str) or not value.strip() or len(value) > 64 or "\\" in value:
            raise ValueError(
                f"findings.model.{name} must be 1-64 characters without a backslash (DICOM LO), got {value!r}"
            )


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")
    return value


class SourceIndex:
    """The caller's source datasets, looked up by SOP Instance UID, checked against the findings.

    Parameters
    ----------
    findings: StudyFindings
        The findings whose image references must all resolve.
    sources: Sequence[pydicom.Dataset]
        Source image datasets of the study (pixel data optional unless a Secondary Capture is
        rendered from them).

    Raises
    ------
    TypeError
        ``sources`` is not a sequence of datasets.
    ValueError
        A source lacks identifying UIDs, belongs to another study, is given twice, or a finding
        refers to an image that is not among ``sources`` (or with another SOP class / series).
    """

    def __init__(self, findings: StudyFindings, sources: Sequence[Dataset]) -> None:
        if isinstance(sources, (Dataset, str, bytes)) or not isinstance(sources, Sequence):
            raise TypeError(f"sources must be a sequence of pydicom Datasets, got {type(sources).__name__}")
        if len(sources) == 0:
            raise ValueError("sources must name at least one source dataset of the study, got none")
        self._by_uid: dict[str, Dataset] = {}
        self._headers: dict[str, Dataset] = {}
        for i, ds in enumerate(sources):
            if not isinstance(ds, Dataset):
                raise TypeError(f"sources[{i}] must be a pydicom Dataset, got {type(ds).__name__}")
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality"):
                if keyword not in ds or not ds[keyword].value:
                    raise ValueError(f"sources[{i}] lacks {keyword}")
            if ds.StudyInstanceUID != findings.study_instance_uid:
                raise ValueError(
                    f"sources[{i}] belongs to study {uid_ref(ds.StudyInstanceUID)}, "
                    f"expected the findings' study {uid_ref(findings.study_instance_uid)}"
                )
            uid = str(ds.SOPInstanceUID)
            if uid in self._by_uid:
                raise ValueError(f"sources[{i}] repeats SOP instance {uid_ref(uid)}")
            self._by_uid[uid] = ds
        self.sources = tuple(sources)
        for path, image in iter_image_refs(findings):
            self._check_ref(path, image)

    def _check_ref(self, path: str, image: ImageRef) -> None:
        ds = self._by_uid.get(image.sop_instance_uid)
        if ds is None:
            raise ValueError(f"{path} refers to SOP instance {uid_ref(image.sop_instance_uid)}, which is not in sources")
        if ds.SOPClassUID != image.sop_class_uid or ds.SeriesInstanceUID != image.series_instance_uid:
            raise ValueError(
                f"{path} names SOP class {image.sop_class_uid} in series {uid_ref(image.series_instance_uid)}, "
                f"but the source has SOP class {ds.SOPClassUID} in series {uid_ref(ds.SeriesInstanceUID)}"
            )
        if "Rows" not in ds or "Columns" not in ds:
            raise ValueError(f"{path} refers to {uid_ref(image.sop_instance_uid)}, which has no Rows/Columns: not an image")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if image.frame_number is not None and not 1 <= image.frame_number <= frames:
            raise ValueError(f"{path}.frame_number must lie in 1..{frames}, got {image.frame_number}")

    def dataset(self, image: ImageRef | str) -> Dataset:
        """The caller's dataset (read only) for an image reference or SOP Instance UID."""
        uid = image if isinstance(image, str) else image.sop_instance_uid
        return self._by_uid[uid]

    def header(self, image: ImageRef | str) -> Dataset:
        """A cached :func:`header_copy` of the source, safe to hand to highdicom."""
        uid = image if isinstance(image, str) else image.sop_instance_uid
        if uid not in self._headers:
            self._headers[uid] = header_copy(self._by_uid[uid])
        return self._headers[uid]

    def reference(self, image: ImageRef | str) -> Dataset:
        """The source's identity (SOP class and instance, series, study, modality) and nothing else:
        what an evidence list needs of every entry but the first, without copying whole headers."""
        source = self.dataset(image)
        view = Dataset()
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"):
            setattr(view, keyword, source[keyword].value)
        return view

    def headers(self, images: Sequence[ImageRef]) -> list[Dataset]:
        """Header copies of the distinct images among ``images``, in first-seen order."""
        return [self.header(uid) for uid in dict.fromkeys(i.sop_instance_uid for i in images)]


def iter_image_refs(findings: StudyFindings):
    """Every image reference in ``findings`` with the path of the field that holds it."""
    for i, finding in enumerate(findings.findings):
        for j, image in enumerate(finding.source_images):
            yield f"findings.findings[{i}].source_images[{j}]", image
        if finding.heatmap is not None:
            yield f"findings.findings[{i}].heatmap.image", finding.heatmap.image
    for j, image in enumerate(findings.evaluated_images):
        yield f"findings.evaluated_images[{j}]", image


def check_regions(findings: StudyFindings, index: SourceIndex) -> None:
    """Every heatmap region must lie inside its image and not be empty."""
    for i, finding in enumerate(findings.findings):
        heat = finding.heatmap
        if heat is None:
            continue
        ds = index.dataset(heat.image)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 and heat.image.frame_number is None:
            raise ValueError(
                f"findings.findings[{i}].heatmap.image must name a frame_number: its source is a multi-frame image"
            )
        c0, r0, c1, r1 = (float(v) for v in heat.region)
        cols, rows = int(ds.Columns), int(ds.Rows)
        if not (0 <= c0 < c1 <= cols and 0 <= r0 < r1 <= rows):
            raise ValueError(
                f"findings.findings[{i}].heatmap.region must satisfy 0 <= column0 < column1 <= {cols} and "
                f"0 <= row0 < row1 <= {rows} (the image size), got {heat.region}"
            )
        if not np.all(np.isfinite(heat.values)) or heat.values.size == 0:
            raise ValueError(f"findings.findings[{i}].heatmap.values must be a non-empty finite array")


def key_image(finding: Finding) -> ImageRef:
    """The image a finding is shown on: the heatmap's image, else the middle source image."""
    if finding.heatmap is not None:
        return finding.heatmap.image
    return finding.source_images[len(finding.source_images) // 2]


def image_key(image: ImageRef) -> str:
    """A key for one displayed image (instance plus frame) used in UIDs and grouping."""
    return image.sop_instance_uid if image.frame_number is None else f"{image.sop_instance_uid}#{image.frame_number}"


def key_images(findings: StudyFindings) -> list[ImageRef]:
    """The distinct key images of all findings, in the order the findings name them."""
    seen: dict[str, ImageRef] = {}
    for finding in findings.findings:
        image = key_image(finding)
        seen.setdefault(image_key(image), image)
    return list(seen.values())


_SIDE = {Laterality.LEFT: "left", Laterality.RIGHT: "right", Laterality.BOTH: "both"}


def site_text(finding: Finding) -> str:
    """``"left knee"`` from the finding's site ("Knee joint") and laterality."""
    site = finding.finding_site.meaning.lower()
    site = site.removesuffix(" joint").removesuffix(" structure")
    if finding.laterality is None:
        return site
    if finding.laterality is Laterality.BOTH:
        return f"both {site}s" if not site.endswith("s") else f"both {site}"
    return f"{_SIDE[finding.laterality]} {site}"


def finding_heading(finding: Finding) -> str:
    """Readable identifier of a finding, e.g. ``"KL grade (left knee)"``."""
    return f"{finding.title} ({site_text(finding)})"


def outcome_heading(title: str, laterality: Laterality | None) -> str:
    return title if laterality is None else f"{title} ({_SIDE[laterality]})"


def character_set(header: Dataset, texts: Sequence[str]) -> str | list[str] | None:
    """The source's Specific Character Set if its first repertoire encodes all of ``texts``, else UTF-8.

    Patient and study attributes are copied as decoded text, so switching an object to UTF-8
    (``ISO_IR 192``) never loses characters.
    """
    current = header.get("SpecificCharacterSet") or None
    if current is None:
        encoding = "ascii"  # no Specific Character Set: the default repertoire ISO-IR 6
    else:
        try:
            encoding = convert_encodings(current)[0]
        except (LookupError, ValueError):
            return UTF8
    if all(_encodes(text, encoding) for text in texts):
        return _as_highdicom_accepts(current)
    return UTF8


def _as_highdicom_accepts(value: str | Sequence[str] | None) -> str | list[str] | None:
    """The source's Specific Character Set in a form highdicom takes, else UTF-8.

    A multi-valued set may leave its first value empty for the default repertoire
    (``\\ISO 2022 IR 87``, PS3.3 C.12.1.1.2; the form of PS3.5 Annex H's examples), which
    highdicom refuses: it becomes ``ISO 2022 IR 6``. A term highdicom does not know (e.g. ``ISO
    2022 IR 149``, Korean, or the non-standard ``ISO_IR 6``) refused the whole result; the texts
    are decoded already, so UTF-8 carries them."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    if len(values) > 1 and not values[0].strip():
        values[0] = "ISO 2022 IR 6"
    if not all(v in _HIGHDICOM_CHARACTER_SETS for v in values):
        return UTF8
    return values[0] if len(values) == 1 else values


_HIGHDICOM_CHARACTER_SETS = frozenset(v.value for v in hd.enum.SpecificCharacterSetValues)


def _encodes(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def texts_of(findings: StudyFindings) -> list[str]:
    """Every free text of ``findings`` that ends up in an object (for the character set choice)."""
    m = findings.model
    out = [m.name, m.version, m.manufacturer, m.disclaimer, findings.out_of_scope_reason or ""]
    for f in findings.findings:
        out += [f.title, f.label, f.finding_site.meaning, f.finding_type.meaning, f.concept.meaning, f.value_code.meaning]
        if f.probability_concept is not None:
            out.append(f.probability_concept.meaning)
    for o in findings.not_evaluated:
        out += [o.title, o.reason]
    return out


NOT_A_DIAGNOSIS = "AI result \u2014 not a diagnosis"
SYNTHETIC_WARNING = "Synthetic model \u2014 not for clinical use"


def series_description(kind: str, model: ModelIdentity) -> str:
    suffix = " (synthetic model)" if model.synthetic else ""
    return f"AI {kind}{suffix}"


def disclaimer_text(model: ModelIdentity) -> str | None:
    """The model's disclaimer; a default one for synthetic models without their own."""
    if model.disclaimer and model.disclaimer.strip():
        return model.disclaimer.strip()
    if model.synthetic:
        return "Model trained on synthetic data only; not for clinical use."
    return None
