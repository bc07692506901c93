"""Every object the node writes for real model output passes dciodvfy, agrees with its source
study under dcentvfy, and reads back.

The analyser (test-fixture bundle: fast, meaningless weights) runs on phantom studies of each
kind the issue names — X-ray, bilateral X-ray, MRI, out of scope — and the results stage builds
the SR, Secondary Captures and KO from its findings, exactly as the job step does.
"""

from __future__ import annotations

import highdicom as hd
import pytest

from ortho_node.model.study import StudyAnalyser
from ortho_node.phantoms import MRPhantomSpec, build_knee_study
from ortho_node.phantoms.nonknee import build_non_knee_study
from ortho_node.results import build_result_objects
from ortho_node.results._common import finding_heading
from tests import results_support as rs
from tests.infer_support import fixture_bundle_dir, small_mr, small_xray


@pytest.fixture(scope="module")
def analyser():
    with StudyAnalyser.from_bundle_dir(fixture_bundle_dir(), max_wait_ms=1.0) as running:
        yield running


STUDIES = {
    "xray-one-knee": lambda: build_knee_study(seed=41, xrays=[small_xray(3, "L")]).datasets,
    "xray-bilateral": lambda: build_knee_study(seed=42, xrays=[small_xray(1, "L"), small_xray(4, "R")]).datasets,
    "mri": lambda: build_knee_study(seed=43, mr_series=[small_mr(acl_tear=True, contrast="PD_FS")]).datasets,
    "out-of-scope": lambda: build_non_knee_study(seed=44, kind="chest_cr").datasets,
}


@pytest.mark.parametrize("kind", sorted(STUDIES))
def test_objects_built_from_model_findings_are_valid_dicom(analyser, kind, tmp_path):
    sources = list(STUDIES[kind]())
    findings = analyser.analyse(sources, study_instance_uid=sources[0].StudyInstanceUID)
    built = build_result_objects(findings, sources=sources, include_key_objects=True)
    kinds = [o.kind.value for o in built]
    assert kinds.count("sr") == 1
    for index, item in enumerate(built):
        errors, output = rs.dciodvfy(item.dataset, tmp_path / f"{item.kind.value}{index}.dcm")
        assert not errors, f"{item.kind.value}: {output}"
        assert not rs.unexpected_warnings(output), output
    # the results join the source study: its patient, study and series entities stay consistent
    errors, output = rs.dcentvfy([*sources, *(item.dataset for item in built)], tmp_path / "study")
    assert not errors, output
    assert not rs.unexpected_entity_warnings(output), output
    sr = hd.sr.srread(tmp_path / f"sr{kinds.index('sr')}.dcm")
    groups = rs.all_groups(sr)
    if kind == "out-of-scope":
        assert findings.out_of_scope_reason
        assert "sc" not in kinds
        text = str(sr)
        assert "not covered" in text or "out of scope" in text.lower()
        return
    sides = {site.laterality.value for group in groups for site in group.finding_sites if site.laterality is not None}
    expected = {"xray-one-knee": {"7771000"}, "xray-bilateral": {"7771000", "24028007"}, "mri": {"24028007"}}[kind]
    assert expected <= sides, sides
    reported = {f.task for f in findings.findings}
    assert reported, findings.not_evaluated
    for finding in findings.findings:
        tracking = [g for g in groups if g.tracking_identifier.startswith(finding.title)]
        assert tracking, [g.tracking_identifier for g in groups]
        probabilities = [m.value for g in tracking for m in g.get_measurements()]
        assert any(abs(float(p) - finding.probability) < 1e-3 for p in probabilities)
        # the head's own probability concept holds what its name says: for a binary head the
        # probability of the positive class (not of "absent"), for a graded head of the grade
        assert finding.probability_concept is not None
        triple = finding.probability_concept
        concept = hd.sr.CodedConcept(triple.value, triple.scheme, triple.meaning)
        (group,) = [g for g in groups if g.tracking_identifier == finding_heading(finding)]
        (named,) = group.get_measurements(name=concept)
        expected = finding.positive_probability if finding.kind.value == "binary" else finding.probability
        assert float(named.value) == pytest.approx(expected, abs=1e-6), (finding.task, finding.label)
    assert "sc" in kinds and "ko" in kinds
