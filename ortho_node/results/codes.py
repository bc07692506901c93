"""Coded concepts and enumerations used in the result objects, each with its source.

Standard concepts come from DICOM PS3.16 context groups (CID) or the DICOM (DCM), SNOMED CT
(SCT), LOINC (LN) and UCUM code systems, via :data:`pydicom.sr.codedict.codes` where pydicom
has them. Our own concepts use the private coding scheme :data:`PRIVATE_SCHEME` (``99ORTHO``);
every private scheme that appears in an object is declared in its Coding Scheme
Identification Sequence (0008,0110) with :func:`coding_scheme_items`.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Iterable

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ortho_node.model.findings import CodeTriple, Laterality, OutcomeStatus

PRIVATE_SCHEME = "99ORTHO"
"""Private coding scheme designator of ortho-node (PS3.16 8.2: private designators start with "99")."""

PRIVATE_SCHEME_NAME = "ortho-node private codes"


def coded(triple: CodeTriple) -> hd.sr.CodedConcept:
    """Turn a model-stage :class:`CodeTriple` into a highdicom coded concept."""
    return hd.sr.CodedConcept(value=triple.value, scheme_designator=triple.scheme, meaning=triple.meaning)


def private(value: str, meaning: str) -> Code:
    """A concept of the :data:`PRIVATE_SCHEME`; ``value`` at most 16 characters, ``meaning`` at most 64."""
    if not 0 < len(value) <= 16:
        raise ValueError(f"private code value must be 1-16 characters, got {value!r}")
    return Code(value=value, scheme_designator=PRIVATE_SCHEME, meaning=_clip(meaning, 64))


def private_for_task(prefix: str, task: str, meaning: str) -> Code:
    """A private concept derived from a task name, e.g. ``P-kl_grade``.

    Code values are SH (16 characters); a longer ``prefix-task`` is shortened to the prefix plus
    a stable hash of the task, so the same task always gets the same code.
    """
    value = f"{prefix}-{task}"
    if len(value) > 16:
        digest = hashlib.sha256(task.encode("utf-8")).hexdigest()
        value = f"{prefix}-{digest[: 15 - len(prefix)]}"
    return private(value, meaning)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


# --- standard concepts -----------------------------------------------------------------

ALGORITHM_FAMILY: Code = codes.cid7162.ArtificialIntelligence
"""(123110, DCM, "Artificial Intelligence"), CID 7162 "Algorithm Families", for TID 4019."""

PROCESSING_EQUIPMENT: Code = codes.cid7005.ProcessingEquipment
"""(109102, DCM, "Processing Equipment"), CID 7005 "Contributing Equipment Purposes of Reference".

The AI model is the equipment that processed the source images into this result (IHE AIR); the
modality that acquired them is added by highdicom as (109101, DCM, "Acquisition Equipment")."""

NO_UNITS: Code = codes.UCUM.NoUnits
"""UCUM ``1`` ("no units"): the unit of a probability in [0, 1]."""

QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
"""Concept name of the TID 1500 row 12 container for document-level CODE / TEXT evaluations."""

SOURCE_IMAGE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")
"""Purpose of Reference (CID 7202) of the source image in a Secondary Capture's Source Image Sequence."""

LATERALITY: dict[Laterality, Code] = {
    Laterality.LEFT: codes.cid244.Left,  # (7771000, SCT, "Left")
    Laterality.RIGHT: codes.cid244.Right,  # (24028007, SCT, "Right")
    Laterality.BOTH: codes.cid244.Bilateral,  # (51440002, SCT, "Bilateral")
}
"""Finding-site laterality values, CID 244 "Laterality"."""


class ProcedureReported(enum.Enum):
    """TID 1500 "Procedure reported", from CID 100 "Quantitative Diagnostic Imaging Procedures"."""

    XR = codes.cid100.XRUnspecifiedBodyRegion
    """(43468-8, LN, "XR unspecified body region"): radiographs (CR, DX)."""

    MR = codes.cid100.MRIUnspecifiedBodyRegion
    """(25056-3, LN, "MRI unspecified body region")."""

    CT = codes.cid100.CTUnspecifiedBodyRegion
    """(25045-6, LN, "CT unspecified body region")."""

    OTHER = codes.cid100.ImagingProcedure
    """(363679005, SCT, "Imaging procedure"): any other modality."""

    @classmethod
    def for_modalities(cls, modalities: Iterable[str]) -> list["ProcedureReported"]:
        """The procedures for a set of modality values, in a stable order (at least one)."""
        by_modality = {"CR": cls.XR, "DX": cls.XR, "MR": cls.MR, "CT": cls.CT}
        found = {by_modality.get(m, cls.OTHER) for m in modalities}
        ordered = [p for p in cls if p in found]
        return ordered or [cls.OTHER]


class KeyObjectTitle(enum.Enum):
    """Key Object Selection document titles, CID 7010 "Key Object Selection Document Title"."""

    OF_INTEREST = codes.cid7010.OfInterest
    """(113000, DCM, "Of Interest"): the default, images a reader should look at."""

    MANIFEST = codes.cid7010.Manifest
    """(113030, DCM, "Manifest"): a list of the objects of this result."""


# --- private concepts (99ORTHO) ----------------------------------------------------------

EVALUATION_STATUS = private("AI-STATUS", "AI evaluation status")
"""Concept name of the CODE that states why a task or study has no finding."""


class EvaluationStatus(enum.Enum):
    """Values of :data:`EVALUATION_STATUS` (private, ``99ORTHO``)."""

    OUT_OF_SCOPE = private("OUT-OF-SCOPE", "Out of scope of the AI model")
    """The study or task is outside what the model was built for (not guessed)."""

    FAILED = private("EVAL-FAILED", "AI evaluation failed")
    """The model tried and failed (error, unusable input)."""

    @classmethod
    def of(cls, status: OutcomeStatus) -> "EvaluationStatus":
        return {OutcomeStatus.OUT_OF_SCOPE: cls.OUT_OF_SCOPE, OutcomeStatus.FAILED: cls.FAILED}[status]


NOT_EVALUATED_FINDING = private("NOT-EVALUATED", "Not evaluated by AI")
"""Finding type of a measurement group that reports a task or study that was not evaluated."""

AI_TASK = private("AI-TASK", "AI task")
"""TEXT: the human-readable name of the task a not-evaluated group is about."""

REASON_NOT_EVALUATED = private("AI-REASON", "Reason not evaluated")
"""TEXT: why a task or study was not evaluated."""

DISCLAIMER = private("AI-DISCLAIMER", "AI model disclaimer")
"""TEXT: the model's disclaimer (e.g. trained on synthetic data, not for clinical use)."""


def probability_concept(task: str, title: str) -> Code:
    """Default NUM concept for a finding's calibrated probability of the stated result."""
    return private_for_task("P", task, f"{title} result probability")


def positive_probability_concept(task: str, title: str) -> Code:
    """NUM concept for a binary head's calibrated probability of the positive class."""
    return private_for_task("PP", task, f"Probability of {title}")


def coding_scheme_items(designators: Iterable[str], *, responsible_organization: str) -> list[CodingSchemeIdentificationItem]:
    """Coding Scheme Identification items for every private (``99``) designator in use.

    Standard designators (DCM, SCT, LN, UCUM, UMLS) need no declaration.
    """
    items = []
    for designator in sorted({d for d in designators if d.startswith("99")}):
        name = PRIVATE_SCHEME_NAME if designator == PRIVATE_SCHEME else f"{designator} private codes"
        items.append(
            CodingSchemeIdentificationItem(
                designator=designator, name=name, responsible_organization=_clip(responsible_organization, 64)
            )
        )
    return items
