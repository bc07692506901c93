"""Task heads: what each paper task answers, where it applies and how it is coded.

- :class:`HeadSpec` declares one task: kind, labels, scope (modalities, body parts, X-ray views
  or MR planes), codes, temperature calibration, decision threshold and MR slice pooling.
- A registry filled at import holds one spec per OrthoFoundation task
  (:func:`register_head`, :func:`list_heads`, :func:`head_spec`, :func:`create_head`).
- The module that computes a head's logits is :class:`ortho_node.model.head_module.TaskHead`;
  :mod:`ortho_node.model.calibration` turns logits into probabilities and a label.

This module imports no torch, so result builders can read specs cheaply.

Logit conventions (what a head outputs, per image or per slice set):

- binary: 1 logit, the log-odds of the positive label (``labels[1]``);
- multiclass: ``K`` logits, softmax;
- ordinal: ``K - 1`` cumulative logits ``z_k = logit P(y > k)``, non-increasing in ``k``
  (a cumulative-link model, see :mod:`ortho_node.model.head_module`).

Scopes: X-ray tasks take AP/PA knee radiographs. MR tasks pool the slices of the series in the
planes listed; the planes are the usual clinical reading planes for each structure (the paper
does not say which planes each downstream task used). The codes are in
:mod:`ortho_node.model.codes`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from ortho_node.model import codes
from ortho_node.model.findings import CodeTriple, HeadKind

if TYPE_CHECKING:
    from ortho_node.model.head_module import TaskHead

__all__ = [
    "KNOWN_PLANES",
    "KNOWN_VIEWS",
    "HeadSpec",
    "Pooling",
    "TaskCodes",
    "TaskScope",
    "UnknownHeadError",
    "create_head",
    "head_spec",
    "list_heads",
    "num_outputs",
    "register_head",
]

KNOWN_PLANES = frozenset({"SAGITTAL", "CORONAL", "AXIAL"})
"""MR acquisition planes a scope may name."""

KNOWN_VIEWS = frozenset({"AP", "PA", "LATERAL"})
"""X-ray views a scope may name (DICOM ViewPosition AP/PA; LATERAL covers LL/RL)."""

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class Pooling(str, enum.Enum):
    """How an MR head combines the slices of a series."""

    MEAN = "mean"
    """Average of the slice features (the paper's slice averaging)."""
    MAX = "max"
    """Element-wise maximum of the slice features (a lesion on few slices still counts)."""
    ATTENTION = "attention"
    """Gated attention weights learned per slice (Ilse et al. 2018)."""


def _frozen_upper(value: Iterable[str], *, argument: str) -> frozenset[str]:
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"{argument} must be a collection of non-empty strings, got {value!r}")
    return frozenset(v.upper() for v in value)


@dataclass(frozen=True)
class TaskScope:
    """Which images a task applies to.

    Parameters
    ----------
    modalities : collection of str
        DICOM Modality values, e.g. ``{"CR", "DX"}`` or ``{"MR"}``.
    body_parts : collection of str
        DICOM Body Part Examined terms, e.g. ``{"KNEE"}``.
    views : collection of str, optional
        X-ray views (:data:`KNOWN_VIEWS`); empty means any.
    planes : collection of str, optional
        MR planes (:data:`KNOWN_PLANES`) whose series are pooled; empty means any.
    paired : bool, optional
        Whether the body part has a side, so findings carry laterality (default True).
    """

    modalities: frozenset[str]
    body_parts: frozenset[str]
    views: frozenset[str] = frozenset()
    planes: frozenset[str] = frozenset()
    paired: bool = True

    def __post_init__(self) -> None:
        for argument in ("modalities", "body_parts", "views", "planes"):
            object.__setattr__(
                self, argument, _frozen_upper(getattr(self, argument), argument=argument)
            )
        if not self.modalities or not self.body_parts:
            raise ValueError("modalities and body_parts must each name at least one value")
        if not self.planes <= KNOWN_PLANES:
            raise ValueError(
                f"planes must be among {sorted(KNOWN_PLANES)}, got {sorted(self.planes)}"
            )
        if not self.views <= KNOWN_VIEWS:
            raise ValueError(f"views must be among {sorted(KNOWN_VIEWS)}, got {sorted(self.views)}")
        if self.planes and not self.is_mri:
            raise ValueError("planes apply to MR scopes only")
        if not isinstance(self.paired, bool):
            raise TypeError(f"paired must be a bool, got {type(self.paired).__name__}")

    @property
    def is_mri(self) -> bool:
        """True for MR tasks (slice sets pooled per series)."""
        return "MR" in self.modalities

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (sorted lists)."""
        return {
            "modalities": sorted(self.modalities),
            "body_parts": sorted(self.body_parts),
            "views": sorted(self.views),
            "planes": sorted(self.planes),
            "paired": self.paired,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskScope":
        """Build from :meth:`to_dict` output."""
        return cls(
            modalities=frozenset(data["modalities"]),
            body_parts=frozenset(data["body_parts"]),
            views=frozenset(data.get("views", ())),
            planes=frozenset(data.get("planes", ())),
            paired=data.get("paired", True),
        )


def _code_to_dict(code: CodeTriple) -> dict[str, str]:
    return {"value": code.value, "scheme": code.scheme, "meaning": code.meaning}


def _code_from_dict(data: Mapping[str, str]) -> CodeTriple:
    return CodeTriple(data["value"], data["scheme"], data["meaning"])


@dataclass(frozen=True)
class TaskCodes:
    """The coded concepts a task reports with (see :mod:`ortho_node.model.codes`).

    Parameters
    ----------
    finding_type : CodeTriple
        What is looked for (SR "Finding", DCM 121071), e.g. Osteoarthritis of knee.
    finding_site : CodeTriple
        Where (SR "Finding Site"), e.g. SCT 49076000 Knee joint.
    concept : CodeTriple
        Name of the qualitative evaluation, e.g. "Kellgren-Lawrence grade".
    values : tuple of CodeTriple
        One value code per label, in label order.
    probability : CodeTriple, optional
        Name of the numeric probability item: for a binary head the probability of the positive
        class (e.g. "Probability of injury of anterior cruciate ligament"), for a graded head
        the probability of the predicted grade.
    """

    finding_type: CodeTriple
    finding_site: CodeTriple
    concept: CodeTriple
    values: tuple[CodeTriple, ...]
    probability: CodeTriple | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        named = {
            "finding_type": self.finding_type,
            "finding_site": self.finding_site,
            "concept": self.concept,
        }
        for argument, code in named.items():
            if not isinstance(code, CodeTriple):
                raise TypeError(f"{argument} must be a CodeTriple, got {type(code).__name__}")
        if not all(isinstance(code, CodeTriple) for code in self.values):
            raise TypeError("values must all be CodeTriple")
        if self.probability is not None and not isinstance(self.probability, CodeTriple):
            raise TypeError(
                f"probability must be a CodeTriple or None, got {type(self.probability).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "finding_type": _code_to_dict(self.finding_type),
            "finding_site": _code_to_dict(self.finding_site),
            "concept": _code_to_dict(self.concept),
            "values": [_code_to_dict(code) for code in self.values],
            "probability": _code_to_dict(self.probability) if self.probability else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskCodes":
        """Build from :meth:`to_dict` output."""
        probability = data.get("probability")
        return cls(
            finding_type=_code_from_dict(data["finding_type"]),
            finding_site=_code_from_dict(data["finding_site"]),
            concept=_code_from_dict(data["concept"]),
            values=tuple(_code_from_dict(code) for code in data["values"]),
            probability=_code_from_dict(probability) if probability else None,
        )


def num_outputs(kind: HeadKind, num_labels: int) -> int:
    """Logits a head of ``kind`` emits for ``num_labels`` labels (see the module docstring)."""
    kind = HeadKind(kind)
    if kind is HeadKind.BINARY:
        return 1
    if kind is HeadKind.ORDINAL:
        return num_labels - 1
    return num_labels


@dataclass(frozen=True)
class HeadSpec:
    """Declaration of one task head (like timm's ``PretrainedCfg``, for a task).

    Parameters
    ----------
    name : str
        Registry name, ``[a-z][a-z0-9_]*`` (e.g. ``"kl_grade"``).
    title : str
        Human-readable title, at most 64 characters.
    kind : HeadKind or str
        binary, multiclass or ordinal.
    labels : tuple of str
        Class labels in order; binary heads have exactly two, negative first.
    scope : TaskScope
        Images the task applies to.
    codes : TaskCodes
        Concepts reported; one value code per label.
    temperature : float, optional
        Calibration temperature (> 0); logits are divided by it. Default 1.0.
    threshold : float, optional
        Binary heads only (required there): answer positive when ``P(positive) >= threshold``.
    pooling : Pooling or str, optional
        MR heads only (required there): how slices are combined.
    attention_dim : int, optional
        Hidden size of the attention pooling (default 128).
    description : str, optional
        Free text: what the task means, where the definition comes from.

    Raises
    ------
    TypeError, ValueError
        When any field is of the wrong type or out of range.
    """

    name: str
    title: str
    kind: HeadKind
    labels: tuple[str, ...]
    scope: TaskScope
    codes: TaskCodes
    temperature: float = 1.0
    threshold: float | None = None
    pooling: Pooling | None = None
    attention_dim: int = 128
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name must match {_NAME.pattern}, got {self.name!r}")
        if not isinstance(self.title, str) or not 0 < len(self.title) <= 64:
            raise ValueError(f"title must be 1-64 characters, got {self.title!r}")
        object.__setattr__(self, "kind", HeadKind(self.kind))
        if isinstance(self.labels, str):
            raise TypeError("labels must be a sequence of strings, not one string")
        labels = tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if (
            len(labels) < 2
            or len(set(labels)) != len(labels)
            or not all(isinstance(label, str) and label for label in labels)
        ):
            raise ValueError(f"labels must be two or more distinct non-empty strings, got {labels}")
        if self.kind is HeadKind.BINARY and len(labels) != 2:
            raise ValueError(f"binary head {self.name!r} needs exactly 2 labels, got {len(labels)}")
        if not isinstance(self.scope, TaskScope):
            raise TypeError(f"scope must be a TaskScope, got {type(self.scope).__name__}")
        if not isinstance(self.codes, TaskCodes):
            raise TypeError(f"codes must be TaskCodes, got {type(self.codes).__name__}")
        if len(self.codes.values) != len(labels):
            raise ValueError(
                f"codes.values must give one code per label ({len(labels)}), "
                f"got {len(self.codes.values)}"
            )
        self._check_calibration()
        self._check_pooling()

    def _check_calibration(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise TypeError(f"temperature must be a number, got {type(self.temperature).__name__}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        object.__setattr__(self, "temperature", float(self.temperature))
        if self.kind is HeadKind.BINARY:
            if self.threshold is None:
                raise ValueError(f"binary head {self.name!r} needs a decision threshold")
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
                raise TypeError(f"threshold must be a number, got {type(self.threshold).__name__}")
            if not 0.0 < self.threshold < 1.0:
                raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
            object.__setattr__(self, "threshold", float(self.threshold))
        elif self.threshold is not None:
            raise ValueError(
                f"threshold applies to binary heads only; {self.name!r} is {self.kind.value}"
            )

    def _check_pooling(self) -> None:
        if self.scope.is_mri:
            if self.pooling is None:
                raise ValueError(
                    f"MR head {self.name!r} needs a slice pooling (mean/max/attention)"
                )
            object.__setattr__(self, "pooling", Pooling(self.pooling))
        elif self.pooling is not None:
            raise ValueError(f"pooling applies to MR heads only; {self.name!r} is not MR")
        if isinstance(self.attention_dim, bool) or not isinstance(self.attention_dim, int):
            raise TypeError(
                f"attention_dim must be an int, got {type(self.attention_dim).__name__}"
            )
        if self.attention_dim < 1:
            raise ValueError(f"attention_dim must be >= 1, got {self.attention_dim}")

    @property
    def num_outputs(self) -> int:
        """Number of logits the head emits."""
        return num_outputs(self.kind, len(self.labels))

    @property
    def positive_label(self) -> str | None:
        """The positive label of a binary head (``labels[1]``); None otherwise."""
        return self.labels[1] if self.kind is HeadKind.BINARY else None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the manifest's head entry, without ``trained``)."""
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind.value,
            "labels": list(self.labels),
            "scope": self.scope.to_dict(),
            "codes": self.codes.to_dict(),
            "calibration": {"temperature": self.temperature},
            "threshold": self.threshold,
            "pooling": self.pooling.value if self.pooling else None,
            "attention_dim": self.attention_dim,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeadSpec":
        """Build from :meth:`to_dict` output (validation runs again)."""
        return cls(
            name=data["name"],
            title=data["title"],
            kind=HeadKind(data["kind"]),
            labels=tuple(data["labels"]),
            scope=TaskScope.from_dict(data["scope"]),
            codes=TaskCodes.from_dict(data["codes"]),
            temperature=data["calibration"]["temperature"],
            threshold=data.get("threshold"),
            pooling=Pooling(data["pooling"]) if data.get("pooling") else None,
            attention_dim=data.get("attention_dim", 128),
            description=data.get("description", ""),
        )


# --------------------------------------------------------------------------- registry

_SPECS: dict[str, HeadSpec] = {}


class UnknownHeadError(ValueError):
    """A head name that is not registered; the message lists the known names."""


def register_head(name: str) -> Callable[[Callable[[], HeadSpec]], Callable[[], HeadSpec]]:
    """Register the :class:`HeadSpec` a function returns under ``name`` (at import only).

    Raises
    ------
    ValueError
        If ``name`` is already registered or the spec is named differently.
    TypeError
        If the function does not return a HeadSpec.
    """

    def decorator(fn: Callable[[], HeadSpec]) -> Callable[[], HeadSpec]:
        if name in _SPECS:
            raise ValueError(f"head {name!r} is already registered")
        spec = fn()
        if not isinstance(spec, HeadSpec):
            raise TypeError(f"{fn.__name__} must return a HeadSpec, got {type(spec).__name__}")
        if spec.name != name:
            raise ValueError(f"head registered as {name!r} is named {spec.name!r}")
        _SPECS[name] = spec
        return fn

    return decorator


def list_heads(*, modality: str | None = None, body_part: str | None = None) -> tuple[str, ...]:
    """Names of the registered heads, in registration order, optionally filtered by scope."""
    return tuple(
        name
        for name, spec in _SPECS.items()
        if (modality is None or modality.upper() in spec.scope.modalities)
        and (body_part is None or body_part.upper() in spec.scope.body_parts)
    )


def head_spec(name: str, **overrides: Any) -> HeadSpec:
    """Return the registered spec for ``name``, with ``overrides`` applied and re-validated.

    Parameters
    ----------
    name : str
        A registered head name.
    **overrides
        HeadSpec fields to replace (e.g. ``temperature=1.3``, ``pooling="attention"``).

    Raises
    ------
    UnknownHeadError
        If ``name`` is not registered (the message lists the known names).
    TypeError, ValueError
        If an override is not a HeadSpec field or fails validation.
    """
    if name not in _SPECS:
        raise UnknownHeadError(f"unknown head {name!r}; known heads: {', '.join(_SPECS)}")
    fields = {f.name for f in dataclasses.fields(HeadSpec)} - {"name"}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown HeadSpec fields {sorted(unknown)}; allowed: {sorted(fields)}")
    return dataclasses.replace(_SPECS[name], **overrides) if overrides else _SPECS[name]


def create_head(name: str, *, embed_dim: int, **overrides: Any) -> "TaskHead":
    """Build the :class:`TaskHead` for a registered task (deterministically initialised).

    Parameters
    ----------
    name : str
        A registered head name.
    embed_dim : int
        Encoder width ``D``; the head reads ``2 * D`` features.
    **overrides
        HeadSpec fields to replace, as in :func:`head_spec`.

    Raises
    ------
    UnknownHeadError, TypeError, ValueError
        As :func:`head_spec`, or for a bad ``embed_dim``.
    """
    # Imported here: the module needs torch, the specs do not.
    from ortho_node.model.head_module import TaskHead

    return TaskHead(head_spec(name, **overrides), embed_dim=embed_dim)


# --------------------------------------------------------------------------- the paper's tasks

_XRAY_KNEE = TaskScope(modalities={"CR", "DX"}, body_parts={"KNEE"}, views={"AP", "PA"})
_KL_LABELS = ("0", "1", "2", "3", "4")


def _mr(body_part: str, *planes: str) -> TaskScope:
    return TaskScope(modalities={"MR"}, body_parts={body_part}, planes=set(planes))


def _kl_spec(
    name: str, *, title: str, concept: CodeTriple, probability_meaning: str, description: str
) -> HeadSpec:
    probability = codes.probability_of(concept, meaning=probability_meaning)
    return HeadSpec(
        name=name,
        title=title,
        kind=HeadKind.ORDINAL,
        labels=_KL_LABELS,
        scope=_XRAY_KNEE,
        codes=TaskCodes(
            finding_type=codes.OSTEOARTHRITIS_OF_KNEE,
            finding_site=codes.KNEE_JOINT,
            concept=concept,
            values=codes.KL_GRADE_VALUES,
            probability=probability,
        ),
        description=description,
    )


def _injury(
    name: str, *, title: str, scope: TaskScope, site: CodeTriple, description: str
) -> HeadSpec:
    finding = codes.INJURIES[name]
    probability = (
        codes.probability_of(finding, value="P-ACL-INJ")
        if finding.scheme != codes.PRIVATE_SCHEME
        else codes.probability_of(finding)
    )
    return HeadSpec(
        name=name,
        title=title,
        kind=HeadKind.BINARY,
        labels=("absent", "present"),
        scope=scope,
        codes=TaskCodes(
            finding_type=finding,
            finding_site=site,
            concept=finding,
            values=(codes.ABSENT, codes.PRESENT),
            probability=probability,
        ),
        threshold=0.5,
        pooling=Pooling.MEAN,
        description=description,
    )


@register_head("kl_grade")
def kl_grade() -> HeadSpec:
    """Kellgren-Lawrence grade 0-4 on a knee radiograph (paper task 1)."""
    return _kl_spec(
        "kl_grade",
        title="Kellgren-Lawrence grade",
        concept=codes.KL_GRADE,
        probability_meaning="Probability of the predicted Kellgren-Lawrence grade",
        description="Radiographic knee OA severity, KL grades 0-4, on an AP/PA radiograph.",
    )


@register_head("oa_present")
def oa_present() -> HeadSpec:
    """Radiographic knee osteoarthritis, KL >= 2."""
    return HeadSpec(
        name="oa_present",
        title="Radiographic knee osteoarthritis (KL >= 2)",
        kind=HeadKind.BINARY,
        labels=("absent", "present"),
        scope=_XRAY_KNEE,
        codes=TaskCodes(
            finding_type=codes.OSTEOARTHRITIS_OF_KNEE,
            finding_site=codes.KNEE_JOINT,
            concept=codes.OSTEOARTHRITIS_OF_KNEE,
            values=(codes.ABSENT, codes.PRESENT),
            probability=codes.probability_of(codes.OSTEOARTHRITIS_OF_KNEE, value="P-KNEE-OA"),
        ),
        threshold=0.5,
        description="Radiographic osteoarthritis defined as Kellgren-Lawrence grade 2 or more.",
    )


@register_head("kl_progression_4y")
def kl_progression_4y() -> HeadSpec:
    """KL grade predicted at the 4-year follow-up (paper task 2)."""
    return _kl_spec(
        "kl_progression_4y",
        title="Predicted KL grade at 4-year follow-up",
        concept=codes.KL_GRADE_4Y,
        probability_meaning="Probability of the predicted KL grade at 4-year follow-up",
        description="Prognosis: the KL grade expected at the 4-year follow-up visit.",
    )


@register_head("kl_progression_8y")
def kl_progression_8y() -> HeadSpec:
    """KL grade predicted at the 8-year follow-up (paper task 3)."""
    return _kl_spec(
        "kl_progression_8y",
        title="Predicted KL grade at 8-year follow-up",
        concept=codes.KL_GRADE_8Y,
        probability_meaning="Probability of the predicted KL grade at 8-year follow-up",
        description="Prognosis: the KL grade expected at the 8-year follow-up visit.",
    )


@register_head("tkr")
def tkr() -> HeadSpec:
    """Total knee replacement prognosis (paper task 4)."""
    return HeadSpec(
        name="tkr",
        title="Total knee replacement prediction",
        kind=HeadKind.BINARY,
        labels=("no", "yes"),
        scope=_XRAY_KNEE,
        codes=TaskCodes(
            finding_type=codes.TKR_RISK,
            finding_site=codes.KNEE_JOINT,
            concept=codes.TKR_PREDICTED,
            values=(codes.NO, codes.YES),
            probability=codes.probability_of(
                codes.TKR_RISK, value="P-TKR", meaning="Probability of total knee replacement"
            ),
        ),
        threshold=0.5,
        description=(
            "Prognosis: whether the knee will undergo total knee replacement during follow-up."
        ),
    )


@register_head("acl")
def acl() -> HeadSpec:
    """Anterior cruciate ligament injury on knee MRI (paper task 5)."""
    return _injury(
        "acl",
        title="ACL injury",
        scope=_mr("KNEE", "SAGITTAL", "CORONAL"),
        site=codes.KNEE_JOINT,
        description="Anterior cruciate ligament injury (tear) on knee MRI.",
    )


@register_head("pcl")
def pcl() -> HeadSpec:
    """Posterior cruciate ligament injury on knee MRI (paper task 6)."""
    return _injury(
        "pcl",
        title="PCL injury",
        scope=_mr("KNEE", "SAGITTAL", "CORONAL"),
        site=codes.KNEE_JOINT,
        description="Posterior cruciate ligament injury on knee MRI.",
    )


@register_head("mcl")
def mcl() -> HeadSpec:
    """Medial collateral ligament injury on knee MRI (paper task 7)."""
    return _injury(
        "mcl",
        title="MCL injury",
        scope=_mr("KNEE", "CORONAL", "AXIAL"),
        site=codes.KNEE_JOINT,
        description="Medial collateral ligament injury on knee MRI.",
    )


@register_head("lcl")
def lcl() -> HeadSpec:
    """Lateral collateral ligament injury on knee MRI (paper task 8)."""
    return _injury(
        "lcl",
        title="LCL injury",
        scope=_mr("KNEE", "CORONAL", "AXIAL"),
        site=codes.KNEE_JOINT,
        description="Lateral collateral ligament injury on knee MRI.",
    )


@register_head("meniscus")
def meniscus() -> HeadSpec:
    """Meniscus injury on knee MRI (paper task 9)."""
    return _injury(
        "meniscus",
        title="Meniscus injury",
        scope=_mr("KNEE", "SAGITTAL", "CORONAL"),
        site=codes.KNEE_JOINT,
        description="Medial or lateral meniscus injury (tear) on knee MRI.",
    )


@register_head("cartilage")
def cartilage() -> HeadSpec:
    """Cartilage lesion on knee MRI (paper task 10)."""
    return _injury(
        "cartilage",
        title="Cartilage lesion",
        scope=_mr("KNEE", "SAGITTAL", "CORONAL", "AXIAL"),
        site=codes.KNEE_JOINT,
        description="Articular cartilage lesion of the knee on MRI.",
    )


@register_head("bone_contusion")
def bone_contusion() -> HeadSpec:
    """Bone contusion on knee MRI (paper task 11)."""
    return _injury(
        "bone_contusion",
        title="Bone contusion",
        scope=_mr("KNEE", "SAGITTAL", "CORONAL", "AXIAL"),
        site=codes.KNEE_JOINT,
        description="Bone contusion (bone marrow oedema pattern) of the knee on MRI.",
    )


@register_head("mpfl")
def mpfl() -> HeadSpec:
    """Medial patellofemoral ligament injury on knee MRI (paper task 12)."""
    return _injury(
        "mpfl",
        title="MPFL injury",
        scope=_mr("KNEE", "AXIAL"),
        site=codes.KNEE_JOINT,
        description="Medial patellofemoral ligament injury on knee MRI.",
    )


@register_head("patellar_dislocation")
def patellar_dislocation() -> HeadSpec:
    """Patellar dislocation on knee MRI (paper task 13)."""
    return _injury(
        "patellar_dislocation",
        title="Patellar dislocation",
        scope=_mr("KNEE", "AXIAL"),
        site=codes.KNEE_JOINT,
        description="Signs of (transient) lateral patellar dislocation on knee MRI.",
    )


@register_head("hip_labrum")
def hip_labrum() -> HeadSpec:
    """Acetabular labral injury on hip MRI (paper task 14, cross-anatomy)."""
    return _injury(
        "hip_labrum",
        title="Hip acetabular labral injury",
        scope=_mr("HIP", "SAGITTAL", "CORONAL", "AXIAL"),
        site=codes.HIP_JOINT,
        description="Acetabular labral injury on hip MRI (cross-anatomy task).",
    )


@register_head("shoulder_supraspinatus")
def shoulder_supraspinatus() -> HeadSpec:
    """Supraspinatus tendon injury on shoulder MRI (paper task 15, cross-anatomy)."""
    return _injury(
        "shoulder_supraspinatus",
        title="Supraspinatus tendon injury",
        scope=_mr("SHOULDER", "CORONAL", "SAGITTAL"),
        site=codes.ROTATOR_CUFF_TENDON,
        description="Supraspinatus tendon injury on shoulder MRI (cross-anatomy task).",
    )


@register_head("ankle_atfl")
def ankle_atfl() -> HeadSpec:
    """Anterior talofibular ligament injury on ankle MRI (paper task 16, cross-anatomy)."""
    return _injury(
        "ankle_atfl",
        title="Ankle ATFL injury",
        scope=_mr("ANKLE", "AXIAL"),
        site=codes.ANKLE_JOINT,
        description="Anterior talofibular ligament injury on ankle MRI (cross-anatomy task).",
    )


@register_head("ankle_cfl")
def ankle_cfl() -> HeadSpec:
    """Calcaneofibular ligament injury on ankle MRI (paper task 17, cross-anatomy)."""
    return _injury(
        "ankle_cfl",
        title="Ankle CFL injury",
        scope=_mr("ANKLE", "CORONAL", "AXIAL"),
        site=codes.ANKLE_JOINT,
        description="Calcaneofibular ligament injury on ankle MRI (cross-anatomy task).",
    )
