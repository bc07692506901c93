"""MRI series survey, sequence classification, selection, slice order and the slice tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset
from tests.test_preprocess_support import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    enhanced_mr,
    mr_series,
    read,
    with_headers,
)

from ortho_node.model.findings import Laterality
from ortho_node.model.pixels import UnsupportedImageError
from ortho_node.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from ortho_node.model.series import (
    KNEE_MR_PREFERENCE,
    NoSuitableSeriesError,
    Plane,
    SamplingStrategy,
    SeriesPreference,
    SliceSampling,
    Weighting,
    classify_sequence,
    prepare_series,
    preference_for_planes,
    sample_slice_indices,
    select_series,
    survey_series,
)

CONFIG = PreprocessConfig(input_size=64)


@pytest.fixture(scope="module")
def mixed_study() -> dict[str, list[Dataset]]:
    """A study of real MR_small slices posing as the series of a knee exam."""
    return {
        "sag_pd_fs": mr_series(12, orientation=SAGITTAL, description="SAG PD FS", series_number=5),
        "sag_t2_physics": mr_series(
            10, orientation=SAGITTAL, echo_time=80.0, repetition_time=3500.0, series_number=6
        ),
        "cor_t1": mr_series(10, orientation=CORONAL, description="COR T1 TSE", series_number=7),
        "ax_pd_fs": mr_series(8, orientation=AXIAL, description="AX PDW SPAIR", series_number=8),
        "localizer": mr_series(9, orientation=SAGITTAL, description="3-plane LOC", series_number=1),
        "localizer_type": mr_series(
            9, orientation=CORONAL, image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"], series_number=2
        ),
        "too_few": mr_series(3, orientation=SAGITTAL, description="SAG PD FS", series_number=9),
    }


def study(mixed_study: dict[str, list[Dataset]], *names: str) -> list[Dataset]:
    return [ds for name in names for ds in mixed_study[name]]


def test_survey_classifies_and_excludes_with_reasons(mixed_study: dict[str, list[Dataset]]) -> None:
    candidates = {c.series_number: c for c in survey_series(study(mixed_study, *mixed_study))}
    assert candidates[5].usable and candidates[5].signature.label == "sagittal PD-FS"
    assert "description 'SAG PD FS'" in candidates[5].signature.basis
    assert (
        candidates[6].signature.label == "sagittal T2"
        and "TE 80 ms / TR 3500 ms" in candidates[6].signature.basis
    )
    assert candidates[7].signature.label == "coronal T1"
    assert candidates[8].signature.label == "axial PD-FS"
    assert candidates[1].excluded_reason == "description names a localizer (LOC)"
    assert "Image Type LOCALIZER" in candidates[2].excluded_reason
    assert candidates[9].excluded_reason == "only 3 slice(s), at least 5 needed"
    assert all(
        c.signature.obliquity_deg == 0.0 for c in candidates.values() if c.signature is not None
    )


def test_selection_follows_the_preference_order(mixed_study: dict[str, list[Dataset]]) -> None:
    everything = survey_series(study(mixed_study, *mixed_study))
    assert select_series(everything).series_number == 5
    without_pd_fs = survey_series(
        study(mixed_study, "sag_t2_physics", "cor_t1", "ax_pd_fs", "localizer")
    )
    assert select_series(without_pd_fs).series_number == 6
    only_other_planes = survey_series(study(mixed_study, "cor_t1", "ax_pd_fs"))
    assert select_series(only_other_planes).series_number == 7  # any coronal beats axial PD-FS
    axial_first = (
        SeriesPreference(Plane.AXIAL, Weighting.PD, True),
        SeriesPreference(Plane.SAGITTAL),
    )
    assert select_series(everything, preference=axial_first).series_number == 8


def test_no_suitable_series_lists_every_series_and_why(
    mixed_study: dict[str, list[Dataset]],
) -> None:
    candidates = survey_series(study(mixed_study, "localizer", "too_few", "cor_t1"))
    with pytest.raises(NoSuitableSeriesError) as caught:
        select_series(candidates, preference=(SeriesPreference(Plane.SAGITTAL),))
    reason = caught.value.reason
    assert "no series matches the task's preference (sagittal any)" in reason
    assert "series 1 (unclassified): excluded, description names a localizer" in reason
    assert "series 9 (sagittal PD-FS): excluded, only 3 slice(s)" in reason
    assert "series 7 (coronal T1, 10 slices)" in reason


def test_slices_are_sorted_by_position_not_instance_number() -> None:
    order = [4, 9, 1, 7, 3, 10, 2, 8, 6, 5]
    slices = mr_series(10, orientation=SAGITTAL, description="SAG PD FS", instance_order=order)
    shuffled = [slices[i] for i in (3, 0, 8, 5, 1, 9, 2, 7, 4, 6)]
    (candidate,) = survey_series(shuffled)
    positions = [s.position_mm for s in candidate.slices]
    assert positions == sorted(positions) and len(set(positions)) == 10
    # The sagittal normal here points to patient -x; positions still grow toward +x (left).
    assert [s.dataset.ImagePositionPatient[0] for s in candidate.slices] == sorted(
        float(ds.ImagePositionPatient[0]) for ds in slices
    )
    assert [s.dataset.SOPInstanceUID for s in candidate.slices] == [
        ds.SOPInstanceUID for ds in slices[::-1]
    ]


def test_mixed_orientations_and_duplicate_positions_are_excluded() -> None:
    mixed = mr_series(6, orientation=SAGITTAL, description="SAG PD")
    mixed[2].ImageOrientationPatient = list(CORONAL)
    (candidate,) = survey_series(mixed)
    assert "different orientations" in candidate.excluded_reason
    echoes = mr_series(6, orientation=SAGITTAL, description="SAG PD")
    echoes[3].ImagePositionPatient = echoes[2].ImagePositionPatient
    (candidate,) = survey_series(echoes)
    assert "share a position" in candidate.excluded_reason
    unplaced = mr_series(6, orientation=SAGITTAL)
    del unplaced[0].ImagePositionPatient
    (candidate,) = survey_series(unplaced)
    assert "lack Image Orientation / Position" in candidate.excluded_reason
    (ct,) = survey_series([read("CT_small.dcm")])
    assert ct.excluded_reason == "modality CT, not MR"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"SeriesDescription": "Sag PDFS"}, (Weighting.PD, True)),
        ({"SeriesDescription": "sag_pd_fat_sat"}, (Weighting.PD, True)),
        ({"SeriesDescription": "COR STIR"}, (Weighting.T2, True)),
        ({"SeriesDescription": "t2_tse_sag"}, (Weighting.T2, False)),
        ({"SeriesDescription": "T2WFS"}, (Weighting.T2, True)),
        ({"SeriesDescription": "sag DP"}, (Weighting.PD, False)),
        ({"SeriesDescription": "T1 FSE"}, (Weighting.T1, False)),  # FSE is fast spin echo, not FS
        (
            {"SeriesDescription": "T2* MEDIC", "EchoTime": 15, "RepetitionTime": 600},
            (Weighting.T1, False),
        ),
        (
            {"SeriesDescription": "T1 vs T2", "EchoTime": 30, "RepetitionTime": 3000},
            (Weighting.PD, False),
        ),
        (
            {"ScanOptions": ["PFP", "FS"], "EchoTime": 90, "RepetitionTime": 4000},
            (Weighting.T2, True),
        ),
        (
            {
                "ScanningSequence": ["SE", "IR"],
                "InversionTime": 160,
                "EchoTime": 40,
                "RepetitionTime": 5000,
            },
            (Weighting.T2, True),
        ),
        ({"EchoTime": 40, "RepetitionTime": 1200}, (Weighting.UNKNOWN, False)),
        ({}, (Weighting.UNKNOWN, False)),
    ],
)
def test_sequence_classification(headers: dict, expected: tuple[Weighting, bool]) -> None:
    base = with_headers(
        read("MR_small.dcm"),
        EchoTime=None,
        RepetitionTime=None,
        ScanningSequence=None,
        ScanOptions=None,
    )
    weighting, fat, basis = classify_sequence(with_headers(base, **headers))
    assert (weighting, fat) == expected, basis


def test_enhanced_mr_coded_contrast_wins_over_text() -> None:
    ds = with_headers(
        read("emri_small.dcm"), SeriesDescription="PD FS"
    )  # coded: T1, suppression NONE
    weighting, fat, basis = classify_sequence(ds)
    assert (weighting, fat) == (Weighting.T1, False)
    assert basis == "AcquisitionContrast T1; SpectrallySelectedSuppression NONE"


def test_enhanced_mr_frames_are_the_slices() -> None:
    positions = [7.0, 3.0, 9.0, 1.0, 5.0, 0.0, 8.0, 2.0, 6.0, 4.0]
    ds = enhanced_mr(positions_x=positions, frame_laterality="R")
    (candidate,) = survey_series([ds])
    assert candidate.usable and candidate.signature.label == "sagittal T1"
    assert [s.position_mm for s in candidate.slices] == sorted(positions)
    assert [s.frame_index for s in candidate.slices] == list(np.argsort(positions))
    prepared = prepare_series(candidate, config=CONFIG, sampling=SliceSampling(max_slices=10))
    assert [ref.frame_number for ref in prepared.images] == [
        int(i) + 1 for i in np.argsort(positions)
    ]
    assert prepared.laterality is Laterality.RIGHT and not prepared.slice_order_mirrored
    emri_unplaced = read("emri_small.dcm")  # functional groups stripped by anonymisation
    (excluded,) = survey_series([emri_unplaced])
    assert "lack Image Orientation / Position" in excluded.excluded_reason


def test_sampling_strategies() -> None:
    assert sample_slice_indices(12, SliceSampling(max_slices=16)) == tuple(range(12))
    assert sample_slice_indices(12, SliceSampling(max_slices=5)) == (0, 3, 6, 8, 11)
    assert sample_slice_indices(12, SliceSampling(max_slices=4, strategy="central")) == (4, 5, 6, 7)
    assert sample_slice_indices(12, SliceSampling(max_slices=1)) == (6,)
    with pytest.raises(ValueError, match=r"max_slices must lie in \[1, 1024\], got 0"):
        SliceSampling(max_slices=0)
    with pytest.raises(ValueError, match="'every' is not a valid SamplingStrategy"):
        SliceSampling(strategy="every")  # type: ignore[arg-type]
    assert SliceSampling(strategy="central").strategy is SamplingStrategy.CENTRAL


def test_prepared_series_tensor_and_refs(mixed_study: dict[str, list[Dataset]]) -> None:
    candidate = select_series(survey_series(study(mixed_study, *mixed_study)))
    prepared = prepare_series(candidate, config=CONFIG, sampling=SliceSampling(max_slices=5))
    assert prepared.tensor.shape == (5, 3, 64, 64) and prepared.tensor.dtype == torch.float32
    kept = [candidate.slices[i] for i in (0, 3, 6, 8, 11)]
    assert [ref.sop_instance_uid for ref in prepared.images] == [
        s.dataset.SOPInstanceUID for s in kept
    ]
    assert all(ref.frame_number is None for ref in prepared.images)
    assert list(prepared.positions_mm) == sorted(prepared.positions_mm)
    assert prepared.signature.label == "sagittal PD-FS"
    assert prepared.laterality is None and not prepared.slice_order_mirrored


def test_left_sagittal_stack_is_mirrored_by_reversing_the_slice_order() -> None:
    right = mr_series(6, orientation=SAGITTAL, description="SAG PD FS", laterality="R")
    left = mr_series(6, orientation=SAGITTAL, description="SAG PD FS", laterality="L")
    prepared_right = prepare_series(survey_series(right)[0], config=CONFIG)
    prepared_left = prepare_series(survey_series(left)[0], config=CONFIG)
    assert prepared_left.slice_order_mirrored and not prepared_right.slice_order_mirrored
    assert list(prepared_left.positions_mm) == sorted(prepared_left.positions_mm, reverse=True)
    assert not any(s.geometry.flip_columns or s.geometry.flip_rows for s in prepared_left.slices)
    assert torch.equal(prepared_left.tensor, prepared_right.tensor)  # same pixels in every slice


def test_left_coronal_stack_is_mirrored_in_plane() -> None:
    left = mr_series(6, orientation=CORONAL, description="COR PD FS", laterality="L")
    right = mr_series(6, orientation=CORONAL, description="COR PD FS", laterality="R")
    prepared_left = prepare_series(survey_series(left)[0], config=CONFIG)
    prepared_right = prepare_series(survey_series(right)[0], config=CONFIG)
    assert not prepared_left.slice_order_mirrored
    assert all(s.geometry.flip_columns for s in prepared_left.slices)
    assert torch.equal(prepared_left.tensor, prepared_right.tensor.flip(-1))


def test_slices_disagreeing_about_laterality_are_rejected() -> None:
    slices = mr_series(6, orientation=SAGITTAL, description="SAG PD", laterality="R")
    slices[4].Laterality = "L"
    with pytest.raises(UnsupportedImageError, match=r"disagree about laterality \(L, R\)"):
        prepare_series(survey_series(slices)[0], config=CONFIG)


def test_slices_without_a_header_window_share_one_series_window() -> None:
    bright = mr_series(5, orientation=SAGITTAL, description="SAG PD", keep_window=False)
    darker = mr_series(1, orientation=SAGITTAL, keep_window=False, pixel_scale=0.5)[0]
    darker.SeriesInstanceUID = bright[0].SeriesInstanceUID
    darker.ImagePositionPatient = [-80.0 - 3.0 * 5, -90.0, 60.0]  # next position along the normal
    prepared = prepare_series(survey_series([*bright, darker])[0], config=CONFIG)
    assert all(s.voi.startswith("supplied window") for s in prepared.slices)
    planes = prepared.tensor[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    means = planes.mean(dim=(1, 2))
    index_of_darker = [ref.sop_instance_uid for ref in prepared.images].index(darker.SOPInstanceUID)
    others = [float(m) for i, m in enumerate(means) if i != index_of_darker]
    assert float(means[index_of_darker]) < min(others) - 0.1  # a per-slice window would hide this
    assert np.allclose(others, others[0], atol=1e-5)


def test_knee_preference_list_order() -> None:
    labels = [str(p) for p in KNEE_MR_PREFERENCE[:5]]
    assert labels == [
        "sagittal PD-FS",
        "sagittal T2-FS",
        "sagittal T2",
        "sagittal PD",
        "sagittal any",
    ]
    assert KNEE_MR_PREFERENCE[5].plane is Plane.CORONAL


def test_preference_for_a_heads_planes(mixed_study: dict[str, list[Dataset]]) -> None:
    coronal_first = preference_for_planes({"CORONAL", "AXIAL"})
    assert [str(p) for p in coronal_first] == [
        "coronal PD-FS",
        "coronal T2-FS",
        "coronal T2",
        "coronal PD",
        "coronal any",
        "axial PD-FS",
        "axial T2-FS",
        "axial T2",
        "axial PD",
        "axial any",
    ]
    everything = survey_series(study(mixed_study, *mixed_study))
    assert select_series(everything, preference=coronal_first).series_number == 7
    assert preference_for_planes(()) == KNEE_MR_PREFERENCE
    with pytest.raises(ValueError, match="'oblique' is not a valid Plane"):
        preference_for_planes({"OBLIQUE"})
    with pytest.raises(ValueError, match=r"no entry of the preference order has plane \['axial'\]"):
        preference_for_planes({"AXIAL"}, base=KNEE_MR_PREFERENCE[:3])
