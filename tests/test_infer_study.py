"""StudyAnalyser on phantom studies: radiograph KL findings per side with heatmaps, MRI
findings on a key slice, laterality, view handling, failures, and the results stage."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from pydicom.dataset import Dataset
from tests.infer_support import INPUT_SIZE, fixture_bundle_dir, small_mr, small_xray, xray_study

from ortho_node.model.bundle import load_bundle
from ortho_node.model.explain import evaluate_head
from ortho_node.model.findings import (
    Finding,
    HeadKind,
    Laterality,
    OutcomeStatus,
    StudyFindings,
)
from ortho_node.model.manifest import BundleError
from ortho_node.model.preprocess import PreprocessConfig, preprocess_image
from ortho_node.model.study import StudyAnalyser
from ortho_node.phantoms import build_knee_study
from ortho_node.results import build_result_objects

MR_HEADS = {"acl", "meniscus", "mcl", "hip_labrum"}


@pytest.fixture(scope="module")
def analyser() -> Iterator[StudyAnalyser]:
    with StudyAnalyser.from_bundle_dir(fixture_bundle_dir(), max_wait_ms=5) as running:
        yield running


def analyse(analyser: StudyAnalyser, datasets: list[Dataset]) -> StudyFindings:
    return analyser.analyse(datasets, study_instance_uid=str(datasets[0].StudyInstanceUID))


def by_task_and_side(findings: StudyFindings) -> dict[tuple[str, str | None], Finding]:
    return {
        (f.task, f.laterality.value if f.laterality else None): f for f in findings.findings
    }


def test_radiograph_study_gives_kl_per_side_with_heatmaps(analyser: StudyAnalyser) -> None:
    study = xray_study(seed=11)
    findings = analyse(analyser, list(study.datasets))
    found = by_task_and_side(findings)
    assert set(found) == {
        ("kl_grade", "L"), ("kl_grade", "R"), ("oa_present", "L"), ("oa_present", "R")}
    assert findings.not_evaluated == ()  # MR heads are not listed for an X-ray study
    assert findings.model.synthetic and findings.model.disclaimer
    assert "tkr" not in {f.task for f in findings.findings}  # untrained: never reported
    by_uid = {ds.SOPInstanceUID: ds for ds in study.datasets}
    for (task, side), finding in found.items():
        source = by_uid[finding.source_images[0].sop_instance_uid]
        assert source.ImageLaterality == side and len(finding.source_images) == 1
        assert finding.heatmap is not None and finding.heatmap.image == finding.source_images[0]
        column0, row0, column1, row1 = finding.heatmap.region
        assert 0 <= column0 < column1 <= source.Columns and 0 <= row0 < row1 <= source.Rows
        values = finding.heatmap.values
        assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() <= 1.0
        assert sum(finding.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert finding.label in finding.labels and finding.probability_concept is not None
    kl = found[("kl_grade", "L")]
    assert kl.kind is HeadKind.ORDINAL and kl.probability == max(kl.probabilities)
    assert kl.value_code.meaning.startswith("Kellgren-Lawrence grade")
    assert found[("oa_present", "R")].positive_probability is not None
    assert set(findings.evaluated_images) == {f.source_images[0] for f in findings.findings}


def test_left_knee_heatmap_is_the_mirrored_model_map_on_the_left_image(
    analyser: StudyAnalyser,
) -> None:
    study = xray_study(seed=12, sides=("L",))
    left = study.datasets[0]
    finding = by_task_and_side(analyse(analyser, [left]))[("kl_grade", "L")]
    # The model saw the left knee mirrored to the canonical right side ...
    bundle = load_bundle(fixture_bundle_dir())
    prepared = preprocess_image(left, config=PreprocessConfig.from_manifest(bundle.manifest))
    assert prepared.geometry.flip_columns and prepared.laterality is Laterality.LEFT
    model_map = evaluate_head(
        bundle.head("kl_grade"), analyser.engine.encode(prepared.tensor)
    ).patch_map
    assert model_map is not None and not np.allclose(model_map, model_map[:, ::-1])
    # ... and its map lands on the left image the right way round (256 px square -> grid 1:1).
    assert finding.heatmap is not None
    assert finding.heatmap.image.sop_instance_uid == left.SOPInstanceUID
    assert finding.heatmap.region == (0.0, 0.0, 256.0, 256.0)
    assert finding.heatmap.values.shape == (INPUT_SIZE // 16, INPUT_SIZE // 16)
    assert np.allclose(finding.heatmap.values, model_map[:, ::-1], atol=1e-6)


def test_mri_study_gives_acl_finding_on_a_key_slice(analyser: StudyAnalyser) -> None:
    study = build_knee_study(seed=13, mr_series=[small_mr(acl_tear=True, side="L")])
    findings = analyse(analyser, list(study.datasets))
    found = by_task_and_side(findings)
    assert set(found) == {("acl", "L"), ("meniscus", "L")}
    acl = found[("acl", "L")]
    slices = {ds.SOPInstanceUID for ds in study.datasets}
    assert {ref.sop_instance_uid for ref in acl.source_images} == slices  # 12 <= 16 kept
    assert acl.heatmap is not None and acl.heatmap.image in acl.source_images
    assert acl.positive_probability is not None and acl.label in ("absent", "present")
    # mcl reads coronal/axial series only; hip_labrum is for another body part (not listed).
    (outcome,) = findings.not_evaluated
    assert (outcome.task, outcome.status, outcome.laterality) == (
        "mcl", OutcomeStatus.OUT_OF_SCOPE, Laterality.LEFT)
    assert "no series matches" in outcome.reason and "sagittal PD, 12 slices" in outcome.reason


def test_lateral_view_is_out_of_scope_for_the_kl_heads_of_its_side(analyser: StudyAnalyser) -> None:
    study = build_knee_study(seed=14, xrays=[small_xray(2, "L"), small_xray(2, "R", view="LAT")])
    findings = analyse(analyser, list(study.datasets))
    assert set(by_task_and_side(findings)) == {("kl_grade", "L"), ("oa_present", "L")}
    outcomes = {(o.task, o.laterality): o for o in findings.not_evaluated}
    assert set(outcomes) == {("kl_grade", Laterality.RIGHT), ("oa_present", Laterality.RIGHT)}
    reason = outcomes[("kl_grade", Laterality.RIGHT)].reason
    assert reason == "kl_grade (CR/DX KNEE AP/PA) does not cover view LATERAL"


def test_two_images_of_one_knee_give_one_averaged_finding(analyser: StudyAnalyser) -> None:
    study = build_knee_study(seed=15, xrays=[small_xray(3, "R"), small_xray(3, "R")])
    findings = analyse(analyser, list(study.datasets))
    kl = by_task_and_side(findings)[("kl_grade", "R")]
    assert len(kl.source_images) == 2 and kl.heatmap is not None
    assert kl.heatmap.image in kl.source_images
    singles = [
        by_task_and_side(analyse(analyser, [ds]))[("kl_grade", "R")] for ds in study.datasets
    ]
    assert kl.probabilities != singles[0].probabilities  # the two images differ ...
    low, high = sorted(s.probabilities[0] for s in singles)
    assert low - 1e-6 <= kl.probabilities[0] <= high + 1e-6  # ... and the answer lies between


def test_an_image_that_fails_preprocessing_fails_only_its_side(analyser: StudyAnalyser) -> None:
    study = xray_study(seed=16)
    left, right = (copy.deepcopy(ds) for ds in study.datasets)
    left.PixelData = left.PixelData[: len(left.PixelData) // 2]  # truncated transfer
    findings = analyse(analyser, [left, right])
    assert set(by_task_and_side(findings)) == {("kl_grade", "R"), ("oa_present", "R")}
    failed = {(o.task, o.laterality): o for o in findings.not_evaluated}
    assert set(failed) == {("kl_grade", Laterality.LEFT), ("oa_present", Laterality.LEFT)}
    outcome = failed[("kl_grade", Laterality.LEFT)]
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.reason.startswith("image could not be prepared")


def test_blank_looking_image_is_out_of_scope_not_guessed(analyser: StudyAnalyser) -> None:
    study = xray_study(seed=17, sides=("L",))
    washed_out = copy.deepcopy(study.datasets[0])
    washed_out.WindowCenter, washed_out.WindowWidth = "30000", "2000000"
    findings = analyse(analyser, [washed_out])
    assert findings.findings == ()
    assert findings.out_of_scope_reason is not None
    reason = findings.out_of_scope_reason
    assert "image content out of distribution: image is nearly blank" in reason
    assert {o.status for o in findings.not_evaluated} == {OutcomeStatus.OUT_OF_SCOPE}


def test_findings_feed_the_results_stage(analyser: StudyAnalyser) -> None:
    study = build_knee_study(seed=18, xrays=[small_xray(1, "L")], mr_series=[small_mr(side="L")])
    findings = analyse(analyser, list(study.datasets))
    assert len(findings.findings) == 4 and len(findings.not_evaluated) == 1
    objects = build_result_objects(findings, sources=list(study.datasets))
    assert {o.kind.value for o in objects} >= {"sr", "sc"}


def test_the_last_study_in_flight_does_not_wait_for_company() -> None:
    # Batches wait up to a minute for more images, the encoder answer only 20 s: a study that
    # arrives alone must tell the engine that nothing more is coming, or its inputs fail.
    with StudyAnalyser.from_bundle_dir(
        fixture_bundle_dir(), max_wait_ms=60_000, encode_timeout_s=20
    ) as lonely:
        findings = analyse(lonely, list(xray_study(seed=12).datasets))
    assert findings.not_evaluated == ()
    assert {f.task for f in findings.findings} == {"kl_grade", "oa_present"}


def test_the_encoder_time_limit_holds_for_the_whole_study() -> None:
    # A stalled encoder: a study of four radiographs fails after one time limit, not four.
    released = threading.Event()
    with StudyAnalyser.from_bundle_dir(
        fixture_bundle_dir(), max_wait_ms=0, encode_timeout_s=1.0
    ) as stalled:
        forward = stalled.engine._forward
        stalled.engine._forward = lambda images: (released.wait(30), forward(images))[1]
        study = build_knee_study(seed=19, xrays=[small_xray(2, s) for s in ("L", "L", "R", "R")])
        started = time.monotonic()
        try:
            findings = analyse(stalled, list(study.datasets))
        finally:
            released.set()
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.5, elapsed
    assert findings.findings == ()
    assert {o.status for o in findings.not_evaluated} == {OutcomeStatus.FAILED}
    assert all("time limit" in o.reason for o in findings.not_evaluated)


def test_analyse_checks_its_input(analyser: StudyAnalyser) -> None:
    study = xray_study(seed=19, sides=("L",))
    with pytest.raises(ValueError, match="belongs to study"):
        analyser.analyse(list(study.datasets), study_instance_uid="1.2.3")
    with pytest.raises(TypeError, match="sequence of Dataset"):
        analyser.analyse(study.datasets[0], study_instance_uid="1.2.3")  # type: ignore[arg-type]
    empty = analyser.analyse([], study_instance_uid="1.2.3")
    assert empty.out_of_scope_reason == "the study has no images"


def test_a_bundle_without_trained_heads_is_refused(tmp_path) -> None:
    from ortho_node.model.bundle import Provenance, save_bundle
    from ortho_node.model.encoder import build_encoder
    from ortho_node.model.heads import create_head

    encoder = build_encoder("ortho_vit_micro_patch16_dinov3", img_size=INPUT_SIZE)
    untrained = save_bundle(
        tmp_path / "untrained", encoder=encoder,
        heads={"kl_grade": create_head("kl_grade", embed_dim=encoder.embed_dim)}, trained=(),
        name="untrained", version="0", provenance=Provenance("none", synthetic=True),
        license="test", input_size=(INPUT_SIZE, INPUT_SIZE),
    )
    with pytest.raises(BundleError, match="no trained head"):
        StudyAnalyser.from_bundle_dir(untrained)


def test_mr_side_from_position_when_configured_reaches_the_scope_gate() -> None:
    """``mr_laterality_offset_mm`` (the side of an MR knee from where its field of view lies)
    decides in the scope gate as it does in preprocessing: a left knee MR without Laterality
    is analysed as the left knee when configured, out of scope (side unknown) when not."""
    study = build_knee_study(seed=3, mr_series=[small_mr(side="L")])
    datasets = list(study.datasets)
    for ds in datasets:
        del ds.Laterality
    assert float(datasets[0].ImagePositionPatient[0]) > 40  # the phantom's left knee lies at +x
    with StudyAnalyser.from_bundle_dir(
        fixture_bundle_dir(), preprocess_options={"mr_laterality_offset_mm": 40}, explain=False
    ) as positional:
        findings = positional.analyse(datasets, study_instance_uid=study.study_instance_uid)
    assert findings.findings and {f.laterality for f in findings.findings} == {Laterality.LEFT}
    with StudyAnalyser.from_bundle_dir(fixture_bundle_dir(), explain=False) as header_only:
        unsided = header_only.analyse(datasets, study_instance_uid=study.study_instance_uid)
    assert not unsided.findings and "laterality is unknown" in (unsided.out_of_scope_reason or "")
