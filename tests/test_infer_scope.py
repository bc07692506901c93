"""Out-of-scope studies are refused with a reason, never guessed: a chest CR, a head MR, a
Secondary Capture, an image without Pixel Data, a knee MR of unknown side."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage
from tests.infer_support import fixture_bundle_dir, small_mr, xray_study

from ortho_node.model.findings import StudyFindings
from ortho_node.model.study import StudyAnalyser
from ortho_node.phantoms import NonKneeKind, build_knee_study, build_non_knee_study


@pytest.fixture(scope="module")
def analyser() -> Iterator[StudyAnalyser]:
    with StudyAnalyser.from_bundle_dir(fixture_bundle_dir(), max_wait_ms=5) as running:
        yield running


def analyse(analyser: StudyAnalyser, datasets: list[Dataset]) -> StudyFindings:
    findings = analyser.analyse(datasets, study_instance_uid=str(datasets[0].StudyInstanceUID))
    assert findings.findings == () and not findings.in_scope
    assert findings.out_of_scope_reason is not None
    return findings


def test_chest_radiograph_is_out_of_scope(analyser: StudyAnalyser) -> None:
    study = build_non_knee_study(seed=21, kind=NonKneeKind.CHEST_CR)
    reason = analyse(analyser, list(study.datasets)).out_of_scope_reason
    assert reason == (
        "no image is in scope: CHEST (from BodyPartExamined CHEST) is not covered by any head: "
        "CR/DX KNEE AP/PA needs body part KNEE; MR KNEE needs modality MR; "
        "MR HIP needs modality MR (1 image)"
    )


def test_head_mr_is_out_of_scope(analyser: StudyAnalyser) -> None:
    study = build_non_knee_study(seed=22, kind=NonKneeKind.HEAD_MR)
    reason = analyse(analyser, list(study.datasets)).out_of_scope_reason or ""
    assert "HEAD (from BodyPartExamined HEAD) is not covered by any head" in reason
    assert "MR KNEE needs body part KNEE" in reason
    assert f"({len(study.datasets)} images)" in reason


def test_secondary_capture_is_out_of_scope(analyser: StudyAnalyser) -> None:
    capture = copy.deepcopy(xray_study(seed=23, sides=("L",)).datasets[0])
    capture.SOPClassUID = SecondaryCaptureImageStorage
    reason = analyse(analyser, [capture]).out_of_scope_reason
    assert reason == (
        "no image is in scope: Secondary Capture: a derived screen capture, not an acquired "
        "image (1 image)"
    )


def test_image_without_pixel_data_is_out_of_scope(analyser: StudyAnalyser) -> None:
    no_pixels = copy.deepcopy(xray_study(seed=24, sides=("R",)).datasets[0])
    del no_pixels.PixelData
    reason = analyse(analyser, [no_pixels]).out_of_scope_reason
    assert reason == "no image is in scope: the instance has no Pixel Data (1 image)"


def test_knee_mr_of_unknown_side_is_not_guessed(analyser: StudyAnalyser) -> None:
    study = build_knee_study(seed=25, mr_series=[small_mr(side="R")])
    unsided = [copy.deepcopy(ds) for ds in study.datasets]
    for ds in unsided:
        del ds.Laterality
    reason = analyse(analyser, unsided).out_of_scope_reason
    assert reason is not None
    assert "needs a left or right image, laterality is unknown" in reason
