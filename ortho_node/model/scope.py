"""Scope gate: is this image something a task head covers? Decided from headers, plus a cheap
look at the pixels; never guessed.

What is covered is data: each head declares its scope (modalities, body parts, radiograph
views; ``heads.TaskScope``), which becomes a :class:`ScopeRule` (:meth:`ScopeRule.from_task_scope`,
plus whether the head needs a known side), and the gate checks an image against the rules.
An image is in scope when it passes the general checks and matches at least one rule.

**General checks**, in order:

1. Pixel Data present (deferred Pixel Data counts as present).
2. SOP class: Secondary Capture (any flavour) is rejected as a derived screen capture; DX
   *For Processing* as raw detector data; anything else must be CR, DX For Presentation,
   MR, Enhanced MR or Legacy Converted Enhanced MR image storage.
3. Modality (0008,0060) must be one a rule covers.

**Body part**, first source that is specific:

1. Anatomic Region Sequence codes (SNOMED CT / SRT, e.g. 72696002 Knee, 49076000 Knee
   joint, 29836001 Hip, 24136001 Hip joint, 16982005 Shoulder, 70258002 Ankle joint), at the
   top level, else in an enhanced image's Frame Anatomy functional group (first frame);
2. Body Part Examined (KNEE, HIP, SHOULDER, ANKLE; other values such as CHEST or HEAD name an
   uncovered part; generic values such as EXTREMITY, LEG, LOWER LIMB decide nothing);
3. words in Study / Series / Requested Procedure descriptions and Protocol Name (KNEE, KNIE,
   GENOU, RODILLA, GINOCCHIO; HIP, HUEFTE, HANCHE, CADERA; SHOULDER, SCHULTER, EPAULE, HOMBRO;
   ANKLE, SPRUNGGELENK, CHEVILLE, TOBILLO; and uncovered parts such as CHEST, THORAX, HEAD,
   BRAIN, ABDOMEN, SPINE). Descriptions naming two covered parts decide nothing.

Coded and Body Part Examined values that name different parts are rejected as a conflict.

**View** (radiographs only): View Position AP / PA / LL / RL / LATERAL; else View Code
Sequence meanings (antero-posterior, postero-anterior, lateral, medio-lateral,
latero-medial); else description words AP, PA, LAT, LATERAL. Anything else is ``OTHER``
(e.g. oblique, skyline); not stated is ``None`` and fails rules that name views.

**Image content** (when display values are handed in, see :func:`check_image_content`):
rejected when the shorter side is under 64 px, the aspect ratio exceeds 3 (long-leg and
scanogram strips), the display values have a standard deviation under 0.02 (blank), more
than 90 % of pixels are pure black or white (saturated), or fewer than 16 distinct grey
levels remain (a binary mask or a text page).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset

from ortho_node.model.findings import Laterality
from ortho_node.model.pixels import UnsupportedImageError, functional_group_value
from ortho_node.model.preprocess import determine_laterality

__all__ = [
    "BodyPart",
    "RadiographView",
    "ScopeRule",
    "TaskScopeLike",
    "ScopeDecision",
    "ContentLimits",
    "identify_body_part",
    "identify_view",
    "check_image_content",
    "assess_instance",
    "rule_mismatch",
    "study_out_of_scope_reason",
]


class BodyPart(str, enum.Enum):
    """Body parts a head can cover (Body Part Examined defined terms, PS3.16 Annex L)."""

    KNEE = "KNEE"
    HIP = "HIP"
    SHOULDER = "SHOULDER"
    ANKLE = "ANKLE"


class RadiographView(str, enum.Enum):
    """Projection of a radiograph."""

    AP = "AP"
    PA = "PA"
    LATERAL = "LATERAL"
    OTHER = "OTHER"
    """Stated but none of the above (oblique, skyline, decubitus, ...)."""


PROJECTION_MODALITIES = frozenset({"CR", "DX"})
COVERABLE_MODALITIES = frozenset({"CR", "DX", "MR"})


class TaskScopeLike(Protocol):
    """What a head declares about its inputs (``ortho_node.model.heads.TaskScope`` fits)."""

    modalities: frozenset[str]
    body_parts: frozenset[str]
    views: frozenset[str]


def _string_set(value: object, argument: str) -> frozenset[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (frozenset, set, tuple, list)):
        raise TypeError(f"{argument} must be a non-empty set of str, got {value!r}")
    if not value:
        raise ValueError(f"{argument} must name at least one value")
    # Enum members (BodyPart, RadiographView) by value: str() of a str-Enum is "Class.NAME".
    return frozenset(str(v.value if isinstance(v, enum.Enum) else v).strip().upper() for v in value)


@dataclass(frozen=True)
class ScopeRule:
    """The (modalities, body parts, views) a head covers.

    Parameters
    ----------
    modalities : collection of str
        Subset of CR, DX, MR.
    body_parts : collection of BodyPart or str
        Subset of KNEE, HIP, SHOULDER, ANKLE.
    views : collection of RadiographView or str, or None, optional
        Radiograph views covered; None (default) means any. Only for CR/DX-only rules.
    requires_side : bool, optional
        True: the image must state left or right (side-specific findings); unknown or
        bilateral images are out of scope for this rule. Default False.
    name : str, optional
        Shown in reasons, e.g. the head's task name.
    """

    modalities: frozenset[str]
    body_parts: frozenset[BodyPart]
    views: frozenset[RadiographView] | None = None
    requires_side: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        modalities = _string_set(self.modalities, "modalities")
        if unknown := modalities - COVERABLE_MODALITIES:
            raise ValueError(f"modalities must be among CR, DX, MR, got {sorted(unknown)}")
        object.__setattr__(self, "modalities", modalities)
        parts = _string_set(self.body_parts, "body_parts")
        object.__setattr__(self, "body_parts", frozenset(BodyPart(p) for p in parts))
        if self.views is not None:
            views = _string_set(self.views, "views")
            if "MR" in modalities:
                raise ValueError("views only apply to radiographs (CR/DX), not to an MR rule")
            object.__setattr__(self, "views", frozenset(RadiographView(v) for v in views))
        if not isinstance(self.requires_side, bool):
            raise TypeError(
                f"requires_side must be a bool, got {type(self.requires_side).__name__}"
            )

    @classmethod
    def from_task_scope(
        cls, scope: TaskScopeLike, *, name: str = "", requires_side: bool = False
    ) -> ScopeRule:
        """The rule for a head's declared scope (an empty ``views`` means any view)."""
        views = frozenset(scope.views) if scope.views else None
        return cls(
            modalities=frozenset(scope.modalities),
            body_parts=frozenset(scope.body_parts),
            views=views,
            requires_side=requires_side,
            name=name,
        )

    def describe(self) -> str:
        views = "" if self.views is None else " " + "/".join(sorted(v.value for v in self.views))
        modalities = "/".join(sorted(self.modalities))
        parts = "/".join(sorted(p.value for p in self.body_parts))
        label = f"{modalities} {parts}{views}"
        return f"{self.name} ({label})" if self.name else label


@dataclass(frozen=True)
class ScopeDecision:
    """The gate's answer for one image."""

    in_scope: bool
    reason: str
    body_part: str | None
    """The body part found (a :class:`BodyPart` value, or e.g. ``"CHEST"``), None if unknown."""
    modality: str | None
    view: RadiographView | None
    laterality: Laterality | None


@dataclass(frozen=True)
class ContentLimits:
    """Thresholds of the image-content check (see the module docstring)."""

    min_side: int = 64
    max_aspect: float = 3.0
    min_std: float = 0.02
    max_saturated_fraction: float = 0.9
    min_grey_levels: int = 16


# --- body part ------------------------------------------------------------------------------

_REGION_CODES: dict[str, BodyPart] = {
    "72696002": BodyPart.KNEE, "T-D9200": BodyPart.KNEE,
    "49076000": BodyPart.KNEE, "T-15720": BodyPart.KNEE,
    "29836001": BodyPart.HIP, "T-D2500": BodyPart.HIP,
    "24136001": BodyPart.HIP, "T-15710": BodyPart.HIP,
    "16982005": BodyPart.SHOULDER, "T-D2220": BodyPart.SHOULDER,
    "70258002": BodyPart.ANKLE, "T-15750": BodyPart.ANKLE,
}  # fmt: skip
_GENERIC_BODY_PARTS = {
    "", "EXTREMITY", "LEG", "LOWERLIMB", "LOWEREXTREMITY", "LOWEXM", "UPPERLIMB", "UPPEREXTREMITY",
    "UPPEREXM", "ARM", "JOINT", "BONE", "SKELETON", "WHOLEBODY", "OTHER", "UNKNOWN",
}  # fmt: skip
_BODY_PART_WORDS: dict[str, BodyPart] = {
    word: part
    for part, words in (
        (BodyPart.KNEE, "KNEE KNEES KNIE GENOU RODILLA GINOCCHIO"),
        (BodyPart.HIP, "HIP HIPS HUEFTE HUFTE HANCHE CADERA"),
        (BodyPart.SHOULDER, "SHOULDER SCHULTER EPAULE HOMBRO"),
        (BodyPart.ANKLE, "ANKLE ANKLES SPRUNGGELENK CHEVILLE TOBILLO"),
    )
    for word in words.split()
}
_OTHER_PART_WORDS: dict[str, str] = {
    word: part
    for part, words in (
        ("CHEST", "CHEST THORAX LUNG LUNGS"),
        ("HEAD", "HEAD BRAIN SKULL"),
        ("SPINE", "SPINE CSPINE LSPINE"),
        ("HEART", "HEART CARDIAC"),
        ("ABDOMEN", "ABDOMEN"),
        ("PELVIS", "PELVIS"),
        ("NECK", "NECK"),
        ("BREAST", "BREAST"),
        ("HAND", "HAND"),
        ("WRIST", "WRIST"),
        ("ELBOW", "ELBOW"),
        ("FOOT", "FOOT"),
        ("TIBIA", "TIBIA"),
        ("FEMUR", "FEMUR"),
    )
    for word in words.split()
}
_DESCRIPTION_KEYWORDS = (
    "StudyDescription",
    "SeriesDescription",
    "RequestedProcedureDescription",
    "ProtocolName",
)


def _norm(text: str) -> str:
    return re.sub(r"[^A-Z]", "", text.upper())


def _coded_body_part(ds: Dataset) -> tuple[str | None, str]:
    # An enhanced (multi-frame) image codes its region per frame or shared, in the Frame
    # Anatomy functional group (mandatory there; Body Part Examined is only Type 3)
    regions, where = ds.get("AnatomicRegionSequence"), "AnatomicRegionSequence"
    if not regions:
        regions = functional_group_value(ds, 0, "FrameAnatomySequence", "AnatomicRegionSequence")
        where = "FrameAnatomySequence"
    for item in regions or []:
        code = str(item.get("CodeValue") or "").strip()
        if code in _REGION_CODES:
            return _REGION_CODES[code].value, f"{where} {code}"
        if code:
            meaning = str(item.get("CodeMeaning") or code)
            return _norm(meaning) or code, f"{where} {code} ({meaning})"
    return None, ""


def _examined_body_part(ds: Dataset) -> tuple[str | None, str]:
    raw = str(ds.get("BodyPartExamined") or "")
    value = _norm(raw)
    if value in _GENERIC_BODY_PARTS:
        return None, ""
    for part in BodyPart:
        if value == part.value or value.startswith(part.value):  # e.g. KNEEJOINT
            return part.value, f"BodyPartExamined {raw.strip()}"
    return value, f"BodyPartExamined {raw.strip()}"


def _described_body_part(ds: Dataset) -> tuple[str | None, str]:
    covered: set[BodyPart] = set()
    other: set[str] = set()
    for keyword in _DESCRIPTION_KEYWORDS:
        for word in re.split(r"[^A-Z]+", str(ds.get(keyword) or "").upper()):
            if word in _BODY_PART_WORDS:
                covered.add(_BODY_PART_WORDS[word])
            elif word in _OTHER_PART_WORDS:
                other.add(_OTHER_PART_WORDS[word])
    if len(covered) == 1:
        return covered.pop().value, "description"
    if len(covered) > 1:
        return (
            None,
            "descriptions name several body parts ("
            + ", ".join(sorted(p.value for p in covered))
            + ")",
        )
    if len(other) == 1:
        return other.pop(), "description"
    return None, ""


def identify_body_part(ds: Dataset) -> tuple[str | None, str]:
    """(body part, source) of an image by the rules in the module docstring.

    Returns
    -------
    tuple
        A :class:`BodyPart` value or another part's name (e.g. ``"CHEST"``), or None when
        unknown; and the attribute(s) that decided, or why nothing did.

    Raises
    ------
    UnsupportedImageError
        The coded region and Body Part Examined name different parts.
    """
    coded, coded_source = _coded_body_part(ds)
    examined, examined_source = _examined_body_part(ds)
    if coded is not None and examined is not None and coded != examined:
        raise UnsupportedImageError(f"conflicting body part: {coded_source} vs {examined_source}")
    if coded is not None:
        return coded, coded_source
    if examined is not None:
        return examined, examined_source
    return _described_body_part(ds)


# --- view -----------------------------------------------------------------------------------

_VIEW_POSITIONS = {
    "AP": RadiographView.AP,
    "PA": RadiographView.PA,
    "LL": RadiographView.LATERAL,
    "RL": RadiographView.LATERAL,
    "LAT": RadiographView.LATERAL,
    "LATERAL": RadiographView.LATERAL,
}
_VIEW_MEANINGS = (
    ("POSTEROANTERIOR", RadiographView.PA), ("ANTEROPOSTERIOR", RadiographView.AP),
    ("MEDIOLATERAL", RadiographView.LATERAL), ("LATEROMEDIAL", RadiographView.LATERAL),
    ("LATERAL", RadiographView.LATERAL),
)  # fmt: skip
_VIEW_WORDS = {
    "AP": RadiographView.AP,
    "PA": RadiographView.PA,
    "LAT": RadiographView.LATERAL,
    "LATERAL": RadiographView.LATERAL,
}


def identify_view(ds: Dataset) -> tuple[RadiographView | None, str]:
    """(view, source) of a radiograph by the rules in the module docstring."""
    position = str(ds.get("ViewPosition") or "").strip().upper()
    if position:
        return _VIEW_POSITIONS.get(position, RadiographView.OTHER), f"ViewPosition {position}"
    for item in ds.get("ViewCodeSequence") or []:
        meaning = _norm(str(item.get("CodeMeaning") or ""))
        for text, view in _VIEW_MEANINGS:
            if text in meaning:
                return view, f"ViewCodeSequence {item.get('CodeMeaning')}"
        if meaning:
            return RadiographView.OTHER, f"ViewCodeSequence {item.get('CodeMeaning')}"
    found = {
        _VIEW_WORDS[word]
        for keyword in _DESCRIPTION_KEYWORDS
        for word in re.split(r"[^A-Z]+", str(ds.get(keyword) or "").upper())
        if word in _VIEW_WORDS
    }
    if len(found) == 1:
        return found.pop(), "description"
    return None, "view not stated" if not found else "descriptions name several views"


# --- content --------------------------------------------------------------------------------


def _grey_levels(values: np.ndarray) -> int:
    """How many distinct values ``values`` has at three decimals: the count of
    ``np.unique(np.round(values, 3))``, by a histogram of the rounded thousandths instead of a
    sort when every value rounds into [0, 1] (a tenth of the time on a 256² image)."""
    thousandths = np.rint(values * 1000.0)  # in the values' own precision, as np.round computes
    if thousandths.size == 0:
        return 0
    if not (0.0 <= float(thousandths.min()) and float(thousandths.max()) <= 1000.0):
        return len(np.unique(np.round(values, 3)))  # outside the display range, or NaN
    return int(np.count_nonzero(np.bincount(thousandths.astype(np.intp).ravel(), minlength=1001)))


def check_image_content(values: np.ndarray, *, limits: ContentLimits | None = None) -> str | None:
    """Why ``values`` (display values in [0, 1]) do not look like a usable image, or None."""
    if not isinstance(values, np.ndarray) or values.ndim != 2:
        found = getattr(values, "shape", type(values).__name__)
        raise TypeError(f"values must be a 2-D numpy array, got {found}")
    limits = limits if limits is not None else ContentLimits()
    rows, columns = values.shape
    if min(rows, columns) < limits.min_side:
        return f"image is {rows}x{columns} pixels, under the {limits.min_side}-pixel minimum side"
    aspect = max(rows, columns) / min(rows, columns)
    if aspect > limits.max_aspect:
        return f"aspect ratio {aspect:.1f} exceeds {limits.max_aspect:g} (long-leg or strip image)"
    std = float(values.std())
    if std < limits.min_std:
        return f"image is nearly blank (standard deviation {std:.3f} of display values)"
    saturated = float(np.mean((values <= 0.0) | (values >= 1.0)))
    if saturated > limits.max_saturated_fraction:
        return f"{saturated:.0%} of pixels are pure black or white (saturated)"
    levels = _grey_levels(values)
    if levels < limits.min_grey_levels:
        return f"only {levels} grey levels (binary mask or text page, not an acquired image)"
    return None


# --- the gate -------------------------------------------------------------------------------

# Secondary Capture Image Storage and its multi-frame variants (…1.7.1 to …1.7.4).
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_ACCEPTED_SOP_CLASSES = {
    dicom_uid.ComputedRadiographyImageStorage: "CR",
    dicom_uid.DigitalXRayImageStorageForPresentation: "DX",
    dicom_uid.MRImageStorage: "MR",
    dicom_uid.EnhancedMRImageStorage: "MR",
    dicom_uid.LegacyConvertedEnhancedMRImageStorage: "MR",
}


def _header_problem(ds: Dataset) -> str | None:
    sop_class = str(ds.get("SOPClassUID") or "")
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        return "Secondary Capture: a derived screen capture, not an acquired image"
    if sop_class == dicom_uid.DigitalXRayImageStorageForProcessing:
        return "DX For Processing: raw detector data, not a presentation image"
    if sop_class not in _ACCEPTED_SOP_CLASSES:
        name = dicom_uid.UID(sop_class).name if sop_class else "missing"
        return f"SOP class {name} is not a CR, DX or MR image"
    if "PixelData" not in ds:
        return "the instance has no Pixel Data"
    return None


def assess_instance(
    ds: Dataset,
    rules: Sequence[ScopeRule],
    *,
    display_values: np.ndarray | None = None,
    content_limits: ContentLimits | None = None,
    laterality_of: Callable[[Dataset], Laterality | None] | None = None,
) -> ScopeDecision:
    """Decide whether one image is covered by any of ``rules``.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance (Pixel Data may be deferred; it is not decoded here).
    rules : sequence of ScopeRule
        What the loaded heads cover.
    display_values : numpy.ndarray or None, optional
        The decoded display values of the image (e.g. ``decode_display_frame(ds).values``);
        when given, :func:`check_image_content` runs too.
    content_limits : ContentLimits or None, optional
        Thresholds of the content check.
    laterality_of : callable or None, optional
        The side of the image as preprocessing will read it (e.g. also from an MR's position
        when the node is configured so); default: the header's laterality attributes.

    Returns
    -------
    ScopeDecision
        In scope with the first matching rule named, or the reason(s) it is not.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds).__name__}")
    if not rules or not all(isinstance(rule, ScopeRule) for rule in rules):
        raise TypeError("rules must be a non-empty sequence of ScopeRule")
    modality = str(ds.get("Modality") or "").strip().upper() or None
    if problem := _header_problem(ds):
        return ScopeDecision(False, problem, None, modality, None, None)
    covered = frozenset().union(*(rule.modalities for rule in rules))
    if modality not in covered:
        reason = f"modality {modality or 'missing'} is not covered ({'/'.join(sorted(covered))})"
        return ScopeDecision(False, reason, None, modality, None, None)
    try:
        body_part, body_source = identify_body_part(ds)
        laterality = laterality_of(ds) if laterality_of is not None else determine_laterality(ds).laterality
    except UnsupportedImageError as exc:
        return ScopeDecision(False, exc.reason, None, modality, None, None)
    view, view_source = identify_view(ds) if modality in PROJECTION_MODALITIES else (None, "")

    def decided(in_scope: bool, reason: str) -> ScopeDecision:
        return ScopeDecision(in_scope, reason, body_part, modality, view, laterality)

    if body_part is None:
        detail = f" ({body_source})" if body_source else ""
        reason = "body part unknown: no anatomic region code, Body Part Examined or description"
        return decided(False, f"{reason} names one{detail}")
    failures = [
        _rule_failure(rule, modality, body_part, view, view_source, laterality) for rule in rules
    ]
    matched = [rule for rule, failure in zip(rules, failures) if failure is None]
    if not matched:
        listing = "; ".join(f for f in failures if f is not None)
        return decided(
            False, f"{body_part} (from {body_source}) is not covered by any head: {listing}"
        )
    if display_values is not None:
        problem = check_image_content(display_values, limits=content_limits)
        if problem is not None:
            return decided(False, f"image content out of distribution: {problem}")
    return decided(True, f"covered by {matched[0].describe()}; body part from {body_source}")


def _rule_failure(
    rule: ScopeRule,
    modality: str,
    body_part: str,
    view: RadiographView | None,
    view_source: str,
    laterality: Laterality | None,
) -> str | None:
    if modality not in rule.modalities:
        return f"{rule.describe()} needs modality {'/'.join(sorted(rule.modalities))}"
    if body_part not in {part.value for part in rule.body_parts}:
        wanted = "/".join(sorted(part.value for part in rule.body_parts))
        return f"{rule.describe()} needs body part {wanted}"
    if rule.views is not None and view not in rule.views:
        stated = view.value if view is not None else view_source
        return f"{rule.describe()} does not cover view {stated}"
    if rule.requires_side and laterality not in (Laterality.LEFT, Laterality.RIGHT):
        side = "unknown" if laterality is None else "bilateral"
        return f"{rule.describe()} needs a left or right image, laterality is {side}"
    return None


def rule_mismatch(rule: ScopeRule, decision: ScopeDecision) -> str | None:
    """Why ``rule`` does not cover an image :func:`assess_instance` has already judged, or None.

    Lets a caller that assessed an image once against all its rules ask, without reading the
    header again, which of the rules (e.g. which head) the image is for. An image rejected
    before its body part was read (header problem, uncovered modality) fits no rule.
    """
    if not isinstance(rule, ScopeRule):
        raise TypeError(f"rule must be a ScopeRule, got {type(rule).__name__}")
    if not isinstance(decision, ScopeDecision):
        raise TypeError(f"decision must be a ScopeDecision, got {type(decision).__name__}")
    if decision.modality is None or decision.body_part is None:
        return f"{rule.describe()}: {decision.reason}"
    return _rule_failure(
        rule, decision.modality, decision.body_part, decision.view, "view not stated",
        decision.laterality,
    )


def study_out_of_scope_reason(decisions: Sequence[ScopeDecision]) -> str | None:
    """None when any image of the study is in scope; else one reason for the whole study.

    The reason lists each distinct per-image reason once, with how many images gave it.
    """
    if not decisions:
        return "the study has no images"
    if any(d.in_scope for d in decisions):
        return None
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.reason] = counts.get(d.reason, 0) + 1
    return "no image is in scope: " + "; ".join(
        f"{reason} ({n} image{'s' if n > 1 else ''})" for reason, n in counts.items()
    )
