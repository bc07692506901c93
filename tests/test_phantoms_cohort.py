"""Labelled phantom cohorts for training: deterministic cases and a labels CSV matching the files."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from ortho_node.phantoms import LABEL_COLUMNS, iter_phantom_cohort, write_phantom_cohort


def test_cohort_is_deterministic_and_balanced() -> None:
    first = list(iter_phantom_cohort(200, seed=3))
    again = list(iter_phantom_cohort(200, seed=3))
    other = list(iter_phantom_cohort(200, seed=4))
    assert first == again
    assert [c.labels for c in first] != [c.labels for c in other]
    grades = Counter(grade for case in first for grade in case.labels["kl_grade"].values())
    assert set(grades) == {0, 1, 2, 3, 4} and min(grades.values()) >= 25
    sides = Counter(side for case in first for side in case.labels["kl_grade"])
    assert min(sides.values()) >= 70  # both knees appear
    assert len({case.seed for case in first}) == 200
    assert [case.patient_index for case in first] == list(range(200))


def test_cohort_specs_agree_with_labels() -> None:
    for case in iter_phantom_cohort(30, seed=1, xray_views=("AP", "LAT"), bilateral=True, with_mr=True,
                                    acl_tear_rate=0.5, meniscus_tear_rate=0.5, first_patient_index=1000):
        assert case.patient_index >= 1000
        assert {spec.side.value for spec in case.xrays} == {"L", "R"} and len(case.xrays) == 4
        for spec in case.xrays:
            assert case.labels["kl_grade"][spec.side.value] == spec.kl_grade
        for spec in case.mr_series:
            assert case.labels["acl_tear"][spec.side.value] == spec.acl_tear
            assert case.labels["meniscus_tear"][spec.side.value] == spec.meniscus_tear
    no_tears = list(iter_phantom_cohort(20, seed=1, xray_views=(), with_mr=True, acl_tear_rate=0.0,
                                        meniscus_tear_rate=0.0))
    assert all(not spec.acl_tear and not spec.meniscus_tear for c in no_tears for spec in c.mr_series)
    assert all("kl_grade" not in c.labels for c in no_tears)


def test_written_cohort_csv_matches_the_files(tmp_path: Path) -> None:
    csv_path = write_phantom_cohort(tmp_path, 3, seed=5, xray_views=("AP", "LAT"), with_mr=True,
                                    mr_slices=8, xray_rows=256, xray_columns=256, xray_pixel_spacing_mm=0.6)
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == LABEL_COLUMNS
    assert len(rows) == 3 * (2 + 8)
    cases = {f"PHANTOM-{c.patient_index:08d}": c for c in iter_phantom_cohort(
        3, seed=5, xray_views=("AP", "LAT"), with_mr=True, mr_slices=8)}
    for row in rows:
        ds = pydicom.dcmread(tmp_path / row["path"], stop_before_pixels=True)
        assert (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
            row["patient_id"], row["study_uid"], row["series_uid"], row["sop_instance_uid"])
        assert ds.Modality == row["modality"]
        side = row["laterality"]
        assert side == ds.get("ImageLaterality", ds.get("Laterality"))
        labels = cases[row["patient_id"]].labels
        if row["modality"] == "MR":
            assert (row["kl_grade"], row["view"]) == ("", "")
            assert int(row["acl_tear"]) == labels["acl_tear"][side]
            assert int(row["meniscus_tear"]) == labels["meniscus_tear"][side]
        else:
            assert int(row["kl_grade"]) == labels["kl_grade"][side] and row["view"] in ("AP", "LAT")
            assert row["acl_tear"] == row["meniscus_tear"] == ""


@pytest.mark.parametrize(("kwargs", "error", "fragment"), [
    ({"n_patients": 0}, ValueError, "n_patients"),
    ({"n_patients": 2.5}, TypeError, "n_patients"),
    ({"n_patients": 2, "acl_tear_rate": 1.5}, ValueError, "acl_tear_rate"),
    ({"n_patients": 2, "xray_views": ()}, ValueError, "with_mr"),
    ({"n_patients": 2, "xray_views": ("PA",)}, ValueError, "PA"),
    ({"n_patients": 2, "first_patient_index": 99_999_999}, ValueError, "first_patient_index"),
])
def test_cohort_rejects_bad_options(kwargs: dict, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        list(iter_phantom_cohort(seed=1, **kwargs))
