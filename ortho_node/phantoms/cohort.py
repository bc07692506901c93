"""Labelled cohorts of phantom patients, for training and benchmarks.

:func:`iter_phantom_cohort` yields what to render (specs and labels), so a training data set
can render in memory without files; :func:`write_phantom_cohort` writes the studies and a
``labels.csv`` with one row per instance. KL grades are balanced (each grade equally likely);
tears appear at the given rates, independently.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ortho_node.model.findings import Laterality
from ortho_node.phantoms.identity import MAX_PATIENT_INDEX
from ortho_node.phantoms.seeding import derive_seed, rng_for
from ortho_node.phantoms.specs import MRContrast, MRPhantomSpec, XrayPhantomSpec, XrayView
from ortho_node.phantoms.study import write_knee_study

LABEL_COLUMNS = (
    "patient_id", "study_uid", "series_uid", "sop_instance_uid", "path", "modality", "laterality",
    "view", "kl_grade", "acl_tear", "meniscus_tear",
)
"""Columns of ``labels.csv``; task columns are empty where a series does not show the task."""


@dataclass(frozen=True)
class CohortCase:
    """One patient of a cohort: what to render and the ground truth.

    Pass ``seed``, ``xrays``, ``mr_series`` and ``patient_index`` to
    :func:`ortho_node.phantoms.write_knee_study` or
    :func:`ortho_node.phantoms.build_knee_study` to make the study.
    """

    patient_index: int
    seed: int
    xrays: tuple[XrayPhantomSpec, ...]
    mr_series: tuple[MRPhantomSpec, ...]
    labels: Mapping[str, Mapping[str, Any]]


def _check_rate(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def iter_phantom_cohort(n_patients: int, *, seed: int, xray_views: Sequence[str] = ("AP",),
                        bilateral: bool = False, with_mr: bool = False,
                        xray_rows: int = 512, xray_columns: int = 512,
                        xray_pixel_spacing_mm: float = 0.3, mr_slices: int = 24,
                        mr_contrast: str = "PD_FS", acl_tear_rate: float = 0.4,
                        meniscus_tear_rate: float = 0.4,
                        first_patient_index: int = 0) -> Iterator[CohortCase]:
    """Yield ``n_patients`` cohort cases, the same ones for the same arguments.

    Parameters
    ----------
    n_patients : int
        How many patients (>= 1).
    seed : int
        Cohort seed; each patient gets its own study seed derived from it.
    xray_views : sequence of str, optional
        Radiograph views per knee (``"AP"``, ``"LAT"``); empty for MR-only cohorts.
    bilateral : bool, optional
        Image both knees (each with its own grade and tears) instead of one random side.
    with_mr : bool, optional
        Add one sagittal MR series per imaged knee.
    xray_rows, xray_columns, xray_pixel_spacing_mm :
        Radiograph matrix and spacing (default 512 x 512 at 0.3 mm: the whole knee, small).
    mr_slices, mr_contrast :
        MR series size and contrast.
    acl_tear_rate, meniscus_tear_rate : float, optional
        Probability of each tear per knee.
    first_patient_index : int, optional
        Patient numbers run from here (keep cohorts apart by giving each its own range).

    Yields
    ------
    CohortCase
        Specs and labels (``{"kl_grade": {"L": 2}, "acl_tear": {"L": False}, ...}``).

    Raises
    ------
    TypeError, ValueError
        For a bad count, rate, view or index range.
    """
    if not isinstance(n_patients, int) or isinstance(n_patients, bool):
        raise TypeError(f"n_patients must be an int, got {type(n_patients).__name__}")
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    if not 0 <= first_patient_index <= MAX_PATIENT_INDEX - n_patients + 1:
        raise ValueError(
            f"first_patient_index must leave room for {n_patients} patients below "
            f"{MAX_PATIENT_INDEX + 1}, got {first_patient_index}"
        )
    _check_rate("acl_tear_rate", acl_tear_rate)
    _check_rate("meniscus_tear_rate", meniscus_tear_rate)
    views = tuple(XrayView(view) for view in xray_views)
    if not views and not with_mr:
        raise ValueError("a cohort needs radiograph views or with_mr=True; got neither")
    contrast = MRContrast(mr_contrast)

    for number in range(n_patients):
        patient_index = first_patient_index + number
        rng = rng_for(seed, "cohort", patient_index)
        sides = (Laterality.LEFT, Laterality.RIGHT) if bilateral else (
            (Laterality.LEFT, Laterality.RIGHT)[int(rng.integers(0, 2))],)
        xrays: list[XrayPhantomSpec] = []
        mr_series: list[MRPhantomSpec] = []
        labels: dict[str, dict[str, Any]] = {}
        for side in sides:
            grade = int(rng.integers(0, 5))
            acl, meniscus = bool(rng.random() < acl_tear_rate), bool(rng.random() < meniscus_tear_rate)
            if views:
                labels.setdefault("kl_grade", {})[side.value] = grade
            xrays.extend(XrayPhantomSpec(kl_grade=grade, side=side, view=view, rows=xray_rows,
                                         columns=xray_columns, pixel_spacing_mm=xray_pixel_spacing_mm)
                         for view in views)
            if with_mr:
                labels.setdefault("acl_tear", {})[side.value] = acl
                labels.setdefault("meniscus_tear", {})[side.value] = meniscus
                mr_series.append(MRPhantomSpec(acl_tear=acl, meniscus_tear=meniscus, side=side,
                                               contrast=contrast, slices=mr_slices))
        yield CohortCase(
            patient_index=patient_index,
            seed=derive_seed(seed, "cohort-study", patient_index),
            xrays=tuple(xrays),
            mr_series=tuple(mr_series),
            labels=MappingProxyType({task: MappingProxyType(by_side) for task, by_side in labels.items()}),
        )


def write_phantom_cohort(out_dir: Path, n_patients: int, *, seed: int,
                         transfer_syntaxes: Sequence[str] | None = None,
                         **cohort_options: Any) -> Path:
    """Write a cohort as DICOM files plus ``labels.csv``, and return the CSV's path.

    Each patient's study goes to ``out_dir/<patient_id>/``. The CSV has one row per instance
    with the columns in :data:`LABEL_COLUMNS`; ``path`` is relative to ``out_dir``, booleans
    are ``0``/``1``, and task columns are empty where the series does not show the task.

    Parameters
    ----------
    out_dir : pathlib.Path
        Destination folder (created).
    n_patients, seed, cohort_options :
        As for :func:`iter_phantom_cohort`.
    transfer_syntaxes : sequence of str, optional
        Cycled over the instances of each study, as in
        :func:`ortho_node.phantoms.write_knee_study`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "labels.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        for case in iter_phantom_cohort(n_patients, seed=seed, **cohort_options):
            study = write_knee_study(
                out_dir / f"PHANTOM-{case.patient_index:08d}", seed=case.seed, xrays=case.xrays,
                mr_series=case.mr_series, transfer_syntaxes=transfer_syntaxes,
                patient_index=case.patient_index,
            )
            for phantom_file in study.files:
                shown = study.series_labels[phantom_file.series_instance_uid]
                row = {column: "" for column in LABEL_COLUMNS}
                row.update(
                    patient_id=study.patient_id, study_uid=study.study_instance_uid,
                    series_uid=phantom_file.series_instance_uid,
                    sop_instance_uid=phantom_file.sop_instance_uid,
                    path=phantom_file.path.relative_to(out_dir).as_posix(),
                    modality=phantom_file.modality, laterality=shown["laterality"],
                    view=shown.get("view", ""),
                )
                for task in ("kl_grade", "acl_tear", "meniscus_tear"):
                    if task in shown:
                        row[task] = int(shown[task])
                writer.writerow(row)
    return csv_path
