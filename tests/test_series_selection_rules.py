"""MRI series selection rules: computed maps, derived series, negated fat words, the axial
preference order, and mirror-symmetric slice sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset
from tests.test_preprocess_support import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    mr_series,
    set_pixels,
    with_headers,
)

from ortho_node.model.preprocess import PreprocessConfig
from ortho_node.model.series import (
    SliceSampling,
    Weighting,
    classify_sequence,
    prepare_series,
    preference_for_planes,
    select_series,
    survey_series,
)

CONFIG = PreprocessConfig(input_size=64)


# --- computed maps and derived series -------------------------------------------------------


@pytest.mark.parametrize(
    ("image_type", "description"),
    [
        (["DERIVED", "PRIMARY", "T2 MAP", "ND"], "T2 MAP SAG"),  # Siemens MapIt
        (["DERIVED", "PRIMARY", "T1_MAP"], "SAG T1"),
        (["DERIVED", "PRIMARY", "T2_STAR_MAP"], "SAG T2"),
        (["DERIVED", "PRIMARY", "R2_STAR MAP"], "SAG T2"),
        (["DERIVED", "PRIMARY", "DIFFUSION", "ADC"], "SAG DWI"),
        (["DERIVED", "PRIMARY", "DIFFUSION", "FA"], "SAG DTI"),
        (["DERIVED", "SECONDARY", "SUBTRACT"], "SAG T1 FS"),
        (["ORIGINAL", "PRIMARY", "M"], "SAG T2MAP"),  # a map labelled ORIGINAL
    ],
)
def test_computed_maps_are_excluded(image_type: list[str], description: str) -> None:
    weighted = mr_series(20, orientation=SAGITTAL, description="SAG PD TSE", series_number=3)
    computed = mr_series(
        30, orientation=SAGITTAL, description=description, image_type=image_type, series_number=9
    )
    candidates = {c.series_number: c for c in survey_series(weighted + computed)}
    assert candidates[9].excluded_reason is not None
    assert candidates[9].excluded_reason.startswith("computed map, not a weighted image")
    assert select_series(list(candidates.values())).series_number == 3


@pytest.mark.parametrize(
    "image_type",
    [
        ["DERIVED", "PRIMARY", "DIXON", "WATER"],
        ["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"],
        ["DERIVED", "PRIMARY", "M", "MOCO"],
    ],
)
def test_derived_weighted_images_stay_usable(image_type: list[str]) -> None:
    (candidate,) = survey_series(
        mr_series(8, orientation=SAGITTAL, description="SAG PD FS", image_type=image_type)
    )
    assert candidate.usable and candidate.derived
    assert candidate.signature is not None and candidate.signature.label == "sagittal PD-FS"


def test_derived_ranks_below_original_within_one_preference_entry() -> None:
    dixon = ["DERIVED", "PRIMARY", "DIXON", "WATER"]
    water = mr_series(
        30, orientation=SAGITTAL, description="SAG PD FS", image_type=dixon, series_number=4
    )
    original = mr_series(20, orientation=SAGITTAL, description="SAG PD FS", series_number=7)
    t2_fs = mr_series(40, orientation=SAGITTAL, description="SAG T2 FS", series_number=2)
    assert select_series(survey_series(water + original + t2_fs)).series_number == 7
    # Derived only breaks ties inside an entry; it does not demote a series past other entries.
    assert select_series(survey_series(water + t2_fs)).series_number == 4


# --- negated fat-suppression words ----------------------------------------------------------


def _described(description: str, **headers: object) -> Dataset:
    (ds,) = mr_series(1, orientation=SAGITTAL, description=description)
    return with_headers(ds, **headers) if headers else ds


@pytest.mark.parametrize(
    ("description", "fat"),
    [
        ("SAG PD NON FS", False),
        ("sag pd w/o fs", False),
        ("SAG PD WO FS", False),
        ("COR PD NO FS", False),
        ("Sag PD non-FS", False),
        ("SAG PD WITHOUT FAT SAT", False),
        ("SAG PD FS", True),
        ("SAG PD W/ FS", True),
    ],
)
def test_negated_fat_words_state_no_suppression(description: str, fat: bool) -> None:
    weighting, fat_suppressed, _ = classify_sequence(_described(description))
    assert weighting is Weighting.PD
    assert fat_suppressed is fat


def test_negated_fat_words_decide_before_scan_options() -> None:
    assert classify_sequence(_described("SAG PD NON FS", ScanOptions=["FS"]))[1] is False
    # Stated and negated at once decides nothing, so the next source (Scan Options) does.
    both = _described("SAG PD FS", ProtocolName="PD NON FS", ScanOptions=["FS"])
    assert classify_sequence(both)[1] is True
    assert classify_sequence(_described("SAG PD FS", ProtocolName="PD NON FS"))[1] is False


def test_negated_fat_series_does_not_win_as_fat_suppressed() -> None:
    not_fs = mr_series(24, orientation=SAGITTAL, description="SAG PD NON FS", series_number=3)
    t2_fs = mr_series(12, orientation=SAGITTAL, description="SAG T2 FS", series_number=5)
    assert select_series(survey_series(not_fs + t2_fs)).series_number == 5


# --- axial preference order -----------------------------------------------------------------


def test_axial_preference_ranks_weightings_before_any_axial() -> None:
    axial = preference_for_planes({"AXIAL"})
    assert [str(p) for p in axial] == [
        "axial PD-FS",
        "axial T2-FS",
        "axial T2",
        "axial PD",
        "axial any",
    ]
    t2_fs = mr_series(24, orientation=AXIAL, description="AX T2 FS", series_number=5)
    t1 = mr_series(28, orientation=AXIAL, description="AX T1 TSE", series_number=6)
    pd = mr_series(22, orientation=AXIAL, description="AX PD TSE", series_number=7)
    assert select_series(survey_series(t2_fs + t1 + pd), preference=axial).series_number == 5
    assert select_series(survey_series(t1 + pd), preference=axial).series_number == 7


def test_coronal_preference_ranks_weightings_before_any_coronal() -> None:
    coronal = preference_for_planes({"CORONAL"})
    assert [str(p) for p in coronal][2:5] == ["coronal T2", "coronal PD", "coronal any"]
    t1 = mr_series(30, orientation=CORONAL, description="COR T1 TSE", series_number=4)
    pd = mr_series(22, orientation=CORONAL, description="COR PD TSE", series_number=8)
    assert select_series(survey_series(t1 + pd), preference=coronal).series_number == 8


# --- mirror-symmetric slice sampling --------------------------------------------------------


def _sagittal_knee(count: int, side: str) -> list[Dataset]:
    """A sagittal stack whose slice i has its own pixels; the left knee is the right knee
    mirrored across the patient's sagittal plane (x negated), so slice i is the same anatomy."""
    slices = mr_series(
        count, orientation=SAGITTAL, description="SAG PD FS", laterality=side, origin=(30, -90, 60)
    )
    for index, ds in enumerate(slices):
        pixels = np.random.default_rng(index).integers(0, 2000, size=(ds.Rows, ds.Columns))
        set_pixels(ds, pixels.astype(np.int64))
        if side == "L":
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [-x, y, z]
    return slices


@pytest.mark.parametrize(
    ("count", "sampling"),
    [
        (20, SliceSampling(max_slices=5)),  # uniform, max_slices - 1 even: rounding at .5
        (21, SliceSampling(max_slices=16, strategy="central")),  # count - keep odd
        (20, SliceSampling(max_slices=16)),  # the default: symmetric anyway
    ],
)
def test_a_left_knee_samples_the_slices_of_its_mirrored_right_knee(
    count: int, sampling: SliceSampling
) -> None:
    right = prepare_series(
        survey_series(_sagittal_knee(count, "R"))[0], config=CONFIG, sampling=sampling
    )
    left = prepare_series(
        survey_series(_sagittal_knee(count, "L"))[0], config=CONFIG, sampling=sampling
    )
    assert left.slice_order_mirrored and not right.slice_order_mirrored
    assert left.positions_mm == tuple(-p for p in right.positions_mm)
    assert torch.equal(left.tensor, right.tensor)
