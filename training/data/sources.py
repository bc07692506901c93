"""Build corpora from phantoms, from a labels CSV (DICOM or image files), or a DICOM folder.

Each source is cut into independent units of work (a phantom patient, a series of the CSV, a
study of a folder) that run in worker processes when ``workers > 1``; the units are put back in
their original order, so the corpus does not depend on the number of workers.

Labels CSV: one row per instance, as :func:`ortho_node.phantoms.write_phantom_cohort` writes
it. Required columns are ``patient_id`` and ``path`` (relative to the CSV's folder unless
absolute); ``study_uid``, ``series_uid``, ``modality``, ``laterality``, ``view`` and
``slice_index`` are optional; every other column that names a task (see
:mod:`training.tasks`) is a label. Rows of one ``series_uid`` form one sample (one MR series);
radiograph rows without a series UID are samples of their own.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import torch
from pydicom.errors import InvalidDicomError

from ortho_node.model.series import SliceSampling, sample_slice_indices
from ortho_node.phantoms import (
    CohortCase,
    PhantomDatasets,
    build_knee_study,
    iter_phantom_cohort,
)
from training.data.corpus import Sample, TensorCorpus
from training.data.loaders import (
    IMAGE_SUFFIXES,
    PipelineOptions,
    image_file_plane,
    samples_from_datasets,
)
from training.tasks import labels_from_row

__all__ = [
    "BuildReport",
    "PhantomCohort",
    "corpus_from_dicom_folder",
    "corpus_from_labels_csv",
    "corpus_from_phantom_studies",
    "phantom_corpus",
]

_Unit = TypeVar("_Unit")


@dataclass
class BuildReport:
    """What happened while building a corpus: counts and the reasons for skipped items."""

    samples: int = 0
    skipped: list[str] = field(default_factory=list)


def _init_worker() -> None:
    # Each worker renders / decodes one unit at a time; extra intra-op threads only contend.
    torch.set_num_threads(1)


def _run_units(
    function: Callable[[_Unit], tuple[list[Sample], list[str]]],
    units: Sequence[_Unit],
    *,
    workers: int,
    progress: Callable[[int], None] | None,
) -> Iterator[tuple[list[Sample], list[str]]]:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if workers == 1 or len(units) < 2:
        for unit in units:
            yield function(unit)
            if progress:
                progress(1)
        return
    # spawn: a forked child can inherit a held OpenMP/intra-op lock from the parent.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        for result in pool.map(function, units, chunksize=max(1, len(units) // (8 * workers))):
            yield result
            if progress:
                progress(1)


def _collect(
    results: Iterable[tuple[list[Sample], list[str]]], report: BuildReport | None
) -> TensorCorpus:
    samples: list[Sample] = []
    for found, skipped in results:
        samples.extend(found)
        if report is not None:
            report.skipped.extend(skipped)
    if report is not None:
        report.samples = len(samples)
    if not samples:
        raise ValueError("no usable images were found; nothing to build a corpus from")
    return TensorCorpus(samples)


# --------------------------------------------------------------------------- phantoms


@dataclass(frozen=True)
class PhantomCohort:
    """Arguments of :func:`ortho_node.phantoms.iter_phantom_cohort` for one cohort.

    Give each cohort of a corpus its own ``first_patient_index`` range so that patients never
    repeat; train / validation / test cohorts differ in seed *and* patient range.
    """

    n_patients: int
    seed: int
    first_patient_index: int = 0
    xray_views: tuple[str, ...] = ("AP",)
    with_mr: bool = False
    bilateral: bool = False
    xray_rows: int = 512
    xray_columns: int = 512
    xray_pixel_spacing_mm: float = 0.3
    mr_slices: int = 24
    mr_contrast: str = "PD_FS"
    acl_tear_rate: float = 0.4
    meniscus_tear_rate: float = 0.4
    mr_matrix: int | None = None
    """MR rows = columns (None: the phantom default, 256 at 0.5 mm); the field of view is kept."""

    def cases(self) -> Iterator[CohortCase]:
        """The cohort's cases (specs and labels)."""
        cases = iter_phantom_cohort(
            self.n_patients,
            seed=self.seed,
            xray_views=self.xray_views,
            bilateral=self.bilateral,
            with_mr=self.with_mr,
            xray_rows=self.xray_rows,
            xray_columns=self.xray_columns,
            xray_pixel_spacing_mm=self.xray_pixel_spacing_mm,
            mr_slices=self.mr_slices,
            mr_contrast=self.mr_contrast,
            acl_tear_rate=self.acl_tear_rate,
            meniscus_tear_rate=self.meniscus_tear_rate,
            first_patient_index=self.first_patient_index,
        )
        if self.mr_matrix is None:
            return cases
        return (self._with_mr_matrix(case, self.mr_matrix) for case in cases)

    @staticmethod
    def _with_mr_matrix(case: CohortCase, matrix: int) -> CohortCase:
        # Same anatomy and field of view, another matrix (the cohort API has no such option).
        series = tuple(
            replace(
                spec,
                rows=matrix,
                columns=matrix,
                pixel_spacing_mm=spec.pixel_spacing_mm * spec.rows / matrix,
            )
            for spec in case.mr_series
        )
        return replace(case, mr_series=series)


def corpus_from_phantom_studies(
    studies: Iterable[PhantomDatasets], *, options: PipelineOptions
) -> TensorCorpus:
    """Preprocess already built phantom studies (e.g. shared with a node-side evaluation)."""
    results = []
    for study in studies:
        labels = {uid: labels_from_row(shown) for uid, shown in study.series_labels.items()}
        views = {uid: str(shown.get("view", "")) for uid, shown in study.series_labels.items()}
        results.append(
            samples_from_datasets(
                study.datasets,
                options=options,
                labels_by_series=labels,
                views_by_series={uid: view for uid, view in views.items() if view},
            )
        )
    return _collect(results, None)


def _phantom_unit(unit: tuple[PhantomCohort, PipelineOptions]) -> tuple[list[Sample], list[str]]:
    # One patient per unit: a patient's case depends only on (seed, patient index), so a
    # one-patient cohort starting at that index yields exactly that case.
    single, options = unit
    (case,) = tuple(single.cases())
    study = build_knee_study(
        seed=case.seed,
        xrays=case.xrays,
        mr_series=case.mr_series,
        patient_index=case.patient_index,
    )
    labels = {uid: labels_from_row(shown) for uid, shown in study.series_labels.items()}
    views = {uid: str(shown.get("view", "")) for uid, shown in study.series_labels.items()}
    views = {uid: view for uid, view in views.items() if view}
    return samples_from_datasets(
        study.datasets, options=options, labels_by_series=labels, views_by_series=views
    )


def phantom_corpus(
    cohorts: Sequence[PhantomCohort],
    *,
    options: PipelineOptions,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    report: BuildReport | None = None,
) -> TensorCorpus:
    """Render phantom cohorts in memory and preprocess them with the node's DICOM pipeline.

    Parameters
    ----------
    cohorts : sequence of PhantomCohort
        What to render.
    options : PipelineOptions
        Plane size and pipeline choices.
    workers : int, optional
        Worker processes (default 1: in this process).
    progress : callable, optional
        Called with 1 after each patient.
    report : BuildReport, optional
        Filled with counts and skip reasons.
    """
    if not cohorts or not all(isinstance(c, PhantomCohort) for c in cohorts):
        raise TypeError("cohorts must be a non-empty sequence of PhantomCohort")
    units = [
        (replace(cohort, n_patients=1, first_patient_index=cohort.first_patient_index + i), options)
        for cohort in cohorts
        for i in range(cohort.n_patients)
    ]
    return _collect(_run_units(_phantom_unit, units, workers=workers, progress=progress), report)


# --------------------------------------------------------------------------- labels CSV


_REQUIRED_COLUMNS = ("patient_id", "path")


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"{csv_path.name} lacks the column(s) {', '.join(missing)}; "
                f"found {', '.join(reader.fieldnames or ()) or 'no header'}"
            )
        return [dict(row) for row in reader]


def _group_rows(rows: list[dict[str, str]], root: Path) -> list[list[dict[str, str]]]:
    groups: dict[str, list[dict[str, str]]] = {}
    for number, row in enumerate(rows):
        path = Path(row["path"])
        row["path"] = str(path if path.is_absolute() else root / path)
        key = row.get("series_uid") or f"row-{number}"
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def _image_rows_sample(rows: list[dict[str, str]], options: PipelineOptions) -> Sample:
    first = rows[0]
    ordered = sorted(rows, key=lambda r: (float(r.get("slice_index") or 0), r["path"]))
    modality = (first.get("modality") or "OT").upper()
    if modality == "MR":
        if (first.get("laterality") or "").upper() == "L":
            # A sagittal stack of a left knee is mirrored by reversing the slice order, before
            # sampling, so the kept slices mean the same anatomy for both knees (node rule).
            ordered.reverse()
        keep = sample_slice_indices(len(ordered), SliceSampling(max_slices=options.max_slices))
        ordered = [ordered[i] for i in keep]
    planes = torch.stack(
        [
            image_file_plane(
                row["path"],
                image_size=options.image_size,
                laterality="" if modality == "MR" else row.get("laterality", ""),
                interpolation=options.interpolation,
            )
            for row in ordered
        ]
    )
    return Sample(
        patient_id=first["patient_id"],
        study_uid=first.get("study_uid") or first["patient_id"],
        series_uid=first.get("series_uid") or first["path"],
        modality=modality,
        view=first.get("view", ""),
        planes=planes,
        labels=labels_from_row(first),
    )


def _csv_unit(unit: tuple[list[dict[str, str]], PipelineOptions]) -> tuple[list[Sample], list[str]]:
    rows, options = unit
    if Path(rows[0]["path"]).suffix.lower() in IMAGE_SUFFIXES:
        try:
            return [_image_rows_sample(rows, options)], []
        except (OSError, ValueError) as exc:
            return [], [f"image series skipped: {exc}"]
    datasets = []
    for row in rows:
        try:
            datasets.append(pydicom.dcmread(row["path"]))
        except (InvalidDicomError, OSError, EOFError) as exc:
            return [], [f"series skipped: {Path(row['path']).name} is not readable DICOM ({exc})"]
    series_uid = str(datasets[0].get("SeriesInstanceUID", ""))
    labels = labels_from_row(rows[0])
    view = rows[0].get("view", "")
    return samples_from_datasets(
        datasets,
        options=options,
        labels_by_series={series_uid: labels},
        patient_id=rows[0]["patient_id"],
        views_by_series={series_uid: view} if view else None,
    )


def corpus_from_labels_csv(
    csv_path: str | os.PathLike[str],
    *,
    options: PipelineOptions,
    root: str | os.PathLike[str] | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    report: BuildReport | None = None,
) -> TensorCorpus:
    """Build a corpus from a labels CSV over DICOM files or plain image files.

    Parameters
    ----------
    csv_path : path-like
        The CSV (format in the module docstring).
    options : PipelineOptions
        Plane size and pipeline choices.
    root : path-like, optional
        Folder relative paths start from (default: the CSV's folder).
    workers, progress, report :
        As for :func:`phantom_corpus` (progress counts series).

    Raises
    ------
    FileNotFoundError
        If the CSV does not exist.
    ValueError
        If required columns are missing, a label does not fit its head, or nothing is usable.
    """
    csv_path = Path(csv_path)
    rows = _read_rows(csv_path)
    groups = _group_rows(rows, Path(root) if root is not None else csv_path.parent)
    units = [(group, options) for group in groups]
    return _collect(_run_units(_csv_unit, units, workers=workers, progress=progress), report)


# --------------------------------------------------------------------------- DICOM folder


def _folder_unit(unit: tuple[list[str], PipelineOptions]) -> tuple[list[Sample], list[str]]:
    paths, options = unit
    datasets = [pydicom.dcmread(path) for path in paths]
    return samples_from_datasets(datasets, options=options)


def _study_groups(root: Path) -> tuple[list[list[str]], list[str]]:
    groups: dict[str, list[str]] = {}
    skipped: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError):
            skipped.append(f"{path.name}: not DICOM")
            continue
        if "PixelData" not in header and not header.get("Rows"):
            skipped.append(f"{path.name}: no image")
            continue
        groups.setdefault(str(header.get("StudyInstanceUID", path.parent)), []).append(str(path))
    return list(groups.values()), skipped


def corpus_from_dicom_folder(
    root: str | os.PathLike[str],
    *,
    options: PipelineOptions,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    report: BuildReport | None = None,
) -> TensorCorpus:
    """Build an unlabelled corpus (for pretraining) from every DICOM image under ``root``.

    Files are grouped by study; radiographs and usable MR series become samples as in
    :func:`~training.data.loaders.samples_from_datasets`. Non-DICOM files are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {root}")
    groups, skipped = _study_groups(root)
    if report is not None:
        report.skipped.extend(skipped)
    units: list[Any] = [(group, options) for group in groups]
    return _collect(_run_units(_folder_unit, units, workers=workers, progress=progress), report)
