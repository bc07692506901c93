"""What the model stage hands to the results stage: frozen values, no torch, no pydicom.

The inference engine produces one :class:`StudyFindings` per processed study. The results
package turns it into a TID 1500 SR, Secondary Captures and (optionally) a Key Object
Selection. Nothing here imports torch or highdicom, so both sides can depend on it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CodeTriple:
    """A coded concept as (code value, coding scheme designator, code meaning).

    Private concepts use the scheme ``99ORTHO``; SNOMED CT concepts use ``SCT``; DICOM ones ``DCM``.
    Code values are at most 16 characters (SH) and meanings at most 64 (LO).
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        if not self.value or len(self.value) > 16:
            raise ValueError(f"code value must be 1-16 characters, got {self.value!r}")
        if not self.scheme or len(self.scheme) > 16:
            raise ValueError(f"coding scheme designator must be 1-16 characters, got {self.scheme!r}")
        if not self.meaning or len(self.meaning) > 64:
            raise ValueError(f"code meaning must be 1-64 characters, got {self.meaning!r}")


class Laterality(str, enum.Enum):
    """Side of a paired body part (DICOM Image Laterality values)."""

    LEFT = "L"
    RIGHT = "R"
    BOTH = "B"


class HeadKind(str, enum.Enum):
    """How a task head turns logits into an answer."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    ORDINAL = "ordinal"


class OutcomeStatus(str, enum.Enum):
    """Why a task has no finding for a study."""

    OUT_OF_SCOPE = "out_of_scope"
    FAILED = "failed"


@dataclass(frozen=True)
class ImageRef:
    """One evaluated image (or one frame of a multi-frame image)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True)
class Heatmap:
    """An explanation map for one finding over one source image.

    ``values`` is a float32 array in [0, 1] at patch resolution, already mapped back to the
    source image's own orientation (laterality flips undone). ``region`` is the evaluated
    area of the source image in pixel coordinates ``(column0, row0, column1, row1)``: the
    part of the image the model saw after crop/pad, which the map covers.
    """

    image: ImageRef
    values: np.ndarray
    region: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise ValueError(f"heatmap must be 2-D, got shape {self.values.shape}")


@dataclass(frozen=True)
class Finding:
    """The answer of one task head for one side of one study.

    ``label`` / ``value_code`` name the predicted class (e.g. KL grade 3, or Present/Absent);
    ``probability`` is the calibrated probability of that class; ``probabilities`` lists all
    classes in the head's label order. ``positive_probability`` is the calibrated probability
    of the positive class for binary heads (None otherwise). ``probability_concept`` is the
    head's name for its probability (see :class:`ortho_node.model.heads.TaskCodes`): it names
    ``positive_probability`` for a binary head, ``probability`` for a graded one.
    """

    task: str
    title: str
    kind: HeadKind
    laterality: Laterality | None
    finding_site: CodeTriple
    finding_type: CodeTriple
    concept: CodeTriple
    label: str
    value_code: CodeTriple
    probability: float
    probabilities: tuple[float, ...]
    labels: tuple[str, ...]
    source_images: tuple[ImageRef, ...]
    positive_probability: float | None = None
    probability_concept: CodeTriple | None = None
    heatmap: Heatmap | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must lie in [0, 1], got {self.probability}")
        if len(self.probabilities) != len(self.labels):
            raise ValueError("probabilities and labels must have the same length")
        if not self.source_images:
            raise ValueError(f"finding {self.task!r} names no source image")


@dataclass(frozen=True)
class TaskOutcome:
    """A task that produced no finding, with the reason stated (never silently omitted)."""

    task: str
    title: str
    status: OutcomeStatus
    reason: str
    laterality: Laterality | None = None


@dataclass(frozen=True)
class ModelIdentity:
    """Who produced the findings: written into the SR device observer, TID 4019 and SC text."""

    name: str
    version: str
    manufacturer: str
    device_uid: str
    weights_sha256: str
    synthetic: bool
    disclaimer: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class StudyFindings:
    """All results of one model run over one study."""

    study_instance_uid: str
    model: ModelIdentity
    findings: tuple[Finding, ...] = ()
    not_evaluated: tuple[TaskOutcome, ...] = ()
    out_of_scope_reason: str | None = None
    evaluated_images: tuple[ImageRef, ...] = field(default=())

    @property
    def in_scope(self) -> bool:
        return self.out_of_scope_reason is None
