"""The one call the pipeline makes: findings + source datasets -> the result objects of a study."""

from __future__ import annotations

import logging
from functools import cached_property
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from ortho_node.model.findings import StudyFindings
from ortho_node.privacy import uid_ref
from ortho_node.results._common import check_findings, check_int
from ortho_node.results.codes import KeyObjectTitle
from ortho_node.results.ko import FindingsKeyObjects
from ortho_node.results.sc import FindingsCapture
from ortho_node.results.sr import FindingsReport
from ortho_node.results.uids import PredecessorRef, ResultKind, ResultUIDs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesNumbers:
    """Series Numbers of the result series (each result kind has its own series)."""

    sr: int = 9001
    sc: int = 9002
    ko: int = 9003

    def __post_init__(self) -> None:
        for name in ("sr", "sc", "ko"):
            check_int(f"series_numbers.{name}", getattr(self, name), minimum=0, maximum=2**31 - 1)


@dataclass(frozen=True)
class ResultObject:
    """One built object and its kind."""

    kind: ResultKind
    dataset: Dataset


@dataclass(frozen=True)
class ResultObjects:
    """The result objects of one study and revision, in delivery order: SR, SCs, then KO."""

    objects: tuple[ResultObject, ...]
    revision: int

    def __iter__(self) -> Iterator[ResultObject]:
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def of_kind(self, kind: ResultKind | str) -> list[Dataset]:
        kind = ResultKind(kind)
        return [o.dataset for o in self.objects if o.kind is kind]

    @property
    def sr(self) -> Dataset:
        """The SR (every result has exactly one)."""
        (sr,) = self.of_kind(ResultKind.SR)
        return sr

    @property
    def secondary_captures(self) -> list[Dataset]:
        return self.of_kind(ResultKind.SC)

    @property
    def key_objects(self) -> Dataset | None:
        found = self.of_kind(ResultKind.KO)
        return found[0] if found else None

    @property
    def datasets(self) -> list[Dataset]:
        return [o.dataset for o in self.objects]

    def sr_reference(self) -> PredecessorRef:
        """The reference the next revision passes as ``predecessor``."""
        return PredecessorRef.from_dataset(self.sr)


@dataclass(frozen=True)
class ResultBuilder:
    """The result objects of one study and revision, built in two stages so the SR can leave first.

    :meth:`report` builds the SR (small, what viewers and downstream systems read);
    :meth:`attachments` builds the Secondary Captures (rendered images, megabytes each) and the
    optional Key Object Selection, which references the SR. The pipeline stores and delivers
    the SR before it renders the captures; :func:`build_result_objects` runs both stages.
    Arguments are those of :func:`build_result_objects`.
    """

    findings: StudyFindings
    sources: Sequence[Dataset]
    display_arrays: Mapping[str, np.ndarray] | None = None
    revision: int = 0
    predecessor: PredecessorRef | None = None
    include_key_objects: bool = False
    key_object_title: KeyObjectTitle | str = KeyObjectTitle.OF_INTEREST
    series_numbers: SeriesNumbers = SeriesNumbers()
    uid_prefix: str | None = None

    def __post_init__(self) -> None:
        check_findings(self.findings)
        if not isinstance(self.include_key_objects, bool):
            raise TypeError(f"include_key_objects must be a bool, got {type(self.include_key_objects).__name__}")
        if not isinstance(self.series_numbers, SeriesNumbers):
            raise TypeError(f"series_numbers must be a SeriesNumbers, got {type(self.series_numbers).__name__}")
        self.uids  # noqa: B018 - checks revision and uid_prefix now, not at the first build

    @cached_property
    def uids(self) -> ResultUIDs:
        return ResultUIDs.for_findings(self.findings, revision=self.revision, prefix=self.uid_prefix)

    def report(self) -> ResultObject:
        """The SR."""
        sr = FindingsReport(
            self.findings, sources=self.sources, uids=self.uids,
            series_number=self.series_numbers.sr, predecessor=self.predecessor,
        )
        return ResultObject(ResultKind.SR, sr)

    def attachments(self, report: ResultObject) -> tuple[ResultObject, ...]:
        """The Secondary Captures (one per key image), then the KO when asked for."""
        if report.kind is not ResultKind.SR:
            raise ValueError(f"report must be the SR of this study, got a {report.kind.value} object")
        uids = self.uids
        if report.dataset.SOPInstanceUID != uids.instance(ResultKind.SR):
            raise ValueError("report is not the SR of these findings and this revision (its SOP Instance UID differs)")
        captures = FindingsCapture.for_study(
            self.findings, sources=self.sources, uids=uids, series_number=self.series_numbers.sc,
            display_arrays=self.display_arrays,
        )
        objects = [ResultObject(ResultKind.SC, sc) for sc in captures]
        if self.include_key_objects:
            ko = FindingsKeyObjects(
                self.findings,
                sources=self.sources,
                results=[report.dataset, *captures],
                uids=uids,
                series_number=self.series_numbers.ko,
                title=self.key_object_title,
            )
            objects.append(ResultObject(ResultKind.KO, ko))
        return tuple(objects)


def build_result_objects(
    findings: StudyFindings,
    *,
    sources: Sequence[Dataset],
    display_arrays: Mapping[str, np.ndarray] | None = None,
    revision: int = 0,
    predecessor: PredecessorRef | None = None,
    include_key_objects: bool = False,
    key_object_title: KeyObjectTitle | str = KeyObjectTitle.OF_INTEREST,
    series_numbers: SeriesNumbers = SeriesNumbers(),
    uid_prefix: str | None = None,
) -> ResultObjects:
    """Build the SR, the Secondary Captures and optionally the Key Object Selection of a study.

    All UIDs are derived from the study, the model (device UID, version), the object kind and
    ``revision`` (see :mod:`ortho_node.results.uids`), so the same call builds objects with the
    same UIDs and a re-delivery is idempotent.

    Parameters
    ----------
    findings: ortho_node.model.findings.StudyFindings
        The model's findings for the study.
    sources: Sequence[pydicom.Dataset]
        The study's source datasets (at least those the findings refer to); not modified. Key
        images need pixel data unless ``display_arrays`` covers them.
    display_arrays: Mapping[str, numpy.ndarray] | None, optional
        Caller-decoded display arrays (2-D, higher = brighter) by SOP Instance UID; images
        missing here are decoded from ``sources`` with pydicom.
    revision: int, optional
        Result version of the study, 0 for the first; > 0 after a re-run with late images.
    predecessor: ortho_node.results.uids.PredecessorRef | None, optional
        The SR of the previous revision (``ResultObjects.sr_reference()``); required when
        ``revision > 0``.
    include_key_objects: bool, optional
        Also build a Key Object Selection of the key images, the SR and the SCs.
    key_object_title: KeyObjectTitle | str, optional
        KO document title (CID 7010), "Of Interest" by default.
    series_numbers: SeriesNumbers, optional
        Series Numbers of the SR, SC and KO series.
    uid_prefix: str | None, optional
        Organisation UID root ending in "."; ``None`` for ``2.25.`` UUID-derived UIDs.

    Returns
    -------
    ResultObjects
        SR first, then one SC per key image (none for a study without findings), then the KO.

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        An argument has a wrong value (see the builders).
    """
    builder = ResultBuilder(  # checks its arguments
        findings,
        sources,
        display_arrays=display_arrays,
        revision=revision,
        predecessor=predecessor,
        include_key_objects=include_key_objects,
        key_object_title=key_object_title,
        series_numbers=series_numbers,
        uid_prefix=uid_prefix,
    )
    report = builder.report()
    objects = (report, *builder.attachments(report))
    logger.debug(
        "built %s for study %s revision %d (model %s)",
        ", ".join(o.kind.value for o in objects), uid_ref(findings.study_instance_uid), revision, findings.model.label,
    )
    return ResultObjects(objects=objects, revision=revision)
