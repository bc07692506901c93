"""Offline inference on DICOM files: ``ortho-node infer PATH...`` without the node around it.

:func:`collect_studies` walks files and folders (recursively), reads each file's header only
and groups the files by Study Instance UID; files that are not DICOM, or have no study, are
skipped with their reason. :func:`run_infer` analyses the studies with one
:class:`~ortho_node.model.study.StudyAnalyser`, several studies at a time so their images share
the engine's batches (as the jobs of a worker do). :func:`findings_to_dict` gives the
JSON form the ``--json`` output prints. torch loads only when a study is analysed.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ortho_node.model.findings import Finding, Heatmap, ImageRef, StudyFindings, TaskOutcome

if TYPE_CHECKING:
    from ortho_node.model.study import StudyAnalyser

__all__ = [
    "DicomStudies",
    "StudyFiles",
    "analyse_studies",
    "collect_studies",
    "findings_to_dict",
    "read_study",
    "run_infer",
]

DEFER_SIZE = "256 KB"
"""Pixel data larger than this stays on disk until an image is actually used."""


@dataclass(frozen=True)
class StudyFiles:
    """The files of one study."""

    study_instance_uid: str
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class DicomStudies:
    """What :func:`collect_studies` found: studies in order of first file, and skipped files."""

    studies: tuple[StudyFiles, ...]
    skipped: tuple[tuple[Path, str], ...]

    @property
    def file_count(self) -> int:
        """Files that belong to a study."""
        return sum(len(study.paths) for study in self.studies)


def _walk(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    for given in paths:
        path = Path(given)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def collect_studies(paths: Sequence[str | os.PathLike[str]]) -> DicomStudies:
    """Find the DICOM files under ``paths`` and group them by study (headers only).

    Raises
    ------
    TypeError
        ``paths`` is a single string rather than a sequence of paths.
    FileNotFoundError
        A path does not exist.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError("paths must be a sequence of paths, not a single path")
    grouped: dict[str, list[Path]] = {}
    skipped: list[tuple[Path, str]] = []
    for path in _walk(paths):
        try:
            header = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]
            )
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            skipped.append((path, f"not a readable DICOM file: {exc}"))
            continue
        uid = str(header.get("StudyInstanceUID") or "")
        if not uid:
            skipped.append((path, "no Study Instance UID (not a composite instance)"))
            continue
        grouped.setdefault(uid, []).append(path)
    studies = tuple(StudyFiles(uid, tuple(files)) for uid, files in grouped.items())
    return DicomStudies(studies=studies, skipped=tuple(skipped))


def read_study(study: StudyFiles) -> list[Dataset]:
    """Read a study's files; pixel data stays on disk until used (``defer_size``)."""
    return [pydicom.dcmread(path, defer_size=DEFER_SIZE) for path in study.paths]


def run_infer(
    paths: Sequence[str | os.PathLike[str]] | DicomStudies,
    *,
    bundle_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    max_batch: int = 32,
    max_wait_ms: float = 20.0,
    precision: str = "auto",
    compile: bool = False,
    concurrent_studies: int = 2,
    on_study: Callable[[StudyFindings, StudyFiles], None] | None = None,
) -> list[StudyFindings]:
    """Analyse the DICOM studies found under ``paths``.

    Parameters
    ----------
    paths : sequence of path, or DicomStudies
        DICOM files and folders (searched recursively; non-DICOM files are skipped), or what
        :func:`collect_studies` already found in them.
    bundle_dir : path, optional
        Model bundle; default :func:`~ortho_node.model.study.default_bundle_dir`.
    device, max_batch, max_wait_ms, precision, compile
        Engine options (see :class:`~ortho_node.model.engine.InferenceEngine`).
    concurrent_studies : int, optional
        Studies read and analysed at the same time (default 2).
    on_study : callable, optional
        Called with each study's findings and files as it finishes (progress display).

    Returns
    -------
    list of StudyFindings
        One per study, in the order the studies were found.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    BundleError
        The bundle is missing, invalid or has no trained head.
    """
    from ortho_node.allocator import keep_freed_memory_for_reuse
    from ortho_node.model.study import StudyAnalyser

    found = paths if isinstance(paths, DicomStudies) else collect_studies(paths)
    keep_freed_memory_for_reuse()
    with StudyAnalyser.from_bundle_dir(
        bundle_dir, device=device, max_batch=max_batch, max_wait_ms=max_wait_ms,
        precision=precision, compile=compile,
    ) as analyser:
        return analyse_studies(
            analyser, found.studies, concurrent_studies=concurrent_studies, on_study=on_study
        )


def analyse_studies(
    analyser: StudyAnalyser,
    studies: Sequence[StudyFiles],
    *,
    concurrent_studies: int = 2,
    on_study: Callable[[StudyFindings, StudyFiles], None] | None = None,
) -> list[StudyFindings]:
    """Read and analyse ``studies`` with ``analyser``, several at a time, results in order.

    Each study is read in the thread that analyses it, so one study's decoding overlaps
    another's encoding and their images share the engine's batches.
    """
    if (
        isinstance(concurrent_studies, bool)
        or not isinstance(concurrent_studies, int)
        or concurrent_studies < 1
    ):
        raise ValueError(f"concurrent_studies must be an int >= 1, got {concurrent_studies!r}")

    def one(study: StudyFiles) -> StudyFindings:
        findings = analyser.analyse(read_study(study), study_instance_uid=study.study_instance_uid)
        if on_study is not None:
            on_study(findings, study)
        return findings

    with concurrent.futures.ThreadPoolExecutor(
        max_workers=concurrent_studies, thread_name_prefix="ortho-infer"
    ) as pool:
        return list(pool.map(one, studies))


# --------------------------------------------------------------------------- JSON


def _image(ref: ImageRef) -> dict[str, Any]:
    return {
        "sop_instance_uid": ref.sop_instance_uid,
        "series_instance_uid": ref.series_instance_uid,
        "frame": ref.frame_number,
    }


def _heatmap(heatmap: Heatmap | None) -> dict[str, Any] | None:
    if heatmap is None:
        return None
    return {
        "image": _image(heatmap.image),
        "region": list(heatmap.region),
        "values": [[round(float(v), 4) for v in row] for row in heatmap.values],
    }


def _finding(finding: Finding) -> dict[str, Any]:
    return {
        "task": finding.task,
        "title": finding.title,
        "side": finding.laterality.value if finding.laterality else None,
        "result": finding.label,
        "value_code": {
            "value": finding.value_code.value,
            "scheme": finding.value_code.scheme,
            "meaning": finding.value_code.meaning,
        },
        "probability": round(finding.probability, 6),
        "probabilities": dict(zip(finding.labels, (round(p, 6) for p in finding.probabilities))),
        "positive_probability": (
            None if finding.positive_probability is None else round(finding.positive_probability, 6)
        ),
        "source_images": len(finding.source_images),
        "heatmap": _heatmap(finding.heatmap),
    }


def _outcome(outcome: TaskOutcome) -> dict[str, Any]:
    return {
        "task": outcome.task,
        "title": outcome.title,
        "side": outcome.laterality.value if outcome.laterality else None,
        "status": outcome.status.value,
        "reason": outcome.reason,
    }


def findings_to_dict(findings: StudyFindings) -> dict[str, Any]:
    """JSON-ready form of one study's findings (heatmaps at patch resolution)."""
    model = findings.model
    return {
        "study_instance_uid": findings.study_instance_uid,
        "model": {
            "name": model.name,
            "version": model.version,
            "synthetic": model.synthetic,
            "disclaimer": model.disclaimer,
        },
        "in_scope": findings.in_scope,
        "out_of_scope_reason": findings.out_of_scope_reason,
        "findings": [_finding(f) for f in findings.findings],
        "not_evaluated": [_outcome(o) for o in findings.not_evaluated],
        "evaluated_images": len(findings.evaluated_images),
    }
