"""Scope gate on real DICOM files: what is rejected, why, and what is let through."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from tests.test_preprocess_support import read, with_headers

from ortho_node.model.findings import Laterality
from ortho_node.model.pixels import decode_display_frame
from ortho_node.model.scope import (
    BodyPart,
    ContentLimits,
    RadiographView,
    ScopeDecision,
    ScopeRule,
    _grey_levels,
    assess_instance,
    check_image_content,
    identify_body_part,
    identify_view,
    study_out_of_scope_reason,
)

KL_GRADE = ScopeRule({"CR", "DX"}, {BodyPart.KNEE}, {"AP", "PA"}, name="kl_grade")
KNEE_LATERAL = ScopeRule({"CR", "DX"}, {"KNEE"}, {"LATERAL"}, name="effusion_lat")
ACL = ScopeRule({"MR"}, {"KNEE"}, requires_side=True, name="acl")
ROTATOR_CUFF = ScopeRule({"MR"}, {"SHOULDER"}, name="rotator_cuff")
RULES = (KL_GRADE, ACL, ROTATOR_CUFF)


@pytest.fixture(scope="module")
def knee_radiograph() -> Dataset:
    """RG3 (a real AP extremity CR, Laterality R) labelled as a knee."""
    return with_headers(
        read("RG3_UNCR.dcm"), BodyPartExamined="KNEE", StudyDescription="KNEE 2 VIEWS"
    )


def test_chest_radiograph_is_out_of_scope() -> None:
    decision = assess_instance(read("RG1_UNCR.dcm"), RULES)
    assert not decision.in_scope
    assert decision.reason.startswith(
        "CHEST (from BodyPartExamined CHEST) is not covered by any head"
    )
    assert "kl_grade (CR/DX KNEE AP/PA) needs body part KNEE" in decision.reason
    assert (decision.body_part, decision.modality, decision.view) == (
        "CHEST",
        "CR",
        RadiographView.PA,
    )


def test_head_mr_is_out_of_scope() -> None:
    decision = assess_instance(read("emri_small.dcm"), RULES)
    assert not decision.in_scope and decision.body_part == "HEAD" and decision.modality == "MR"
    assert "acl (MR KNEE) needs body part KNEE" in decision.reason


@pytest.mark.parametrize("name", ["image_dfl.dcm", "SC_rgb.dcm", "JPEG2000.dcm"])
def test_secondary_captures_are_rejected(name: str) -> None:
    decision = assess_instance(read(name), RULES)
    assert not decision.in_scope
    assert decision.reason == "Secondary Capture: a derived screen capture, not an acquired image"


def test_image_without_pixel_data_is_rejected(knee_radiograph: Dataset) -> None:
    decision = assess_instance(with_headers(knee_radiograph, PixelData=None), RULES)
    assert (decision.in_scope, decision.reason) == (False, "the instance has no Pixel Data")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CT_small.dcm", "SOP class CT Image Storage is not a CR, DX or MR image"),
        ("reportsi.dcm", "SOP class Basic Text SR Storage is not a CR, DX or MR image"),
        ("liver.dcm", "SOP class Segmentation Storage is not a CR, DX or MR image"),
        ("US1_UNCR.dcm", "SOP class Ultrasound Image Storage is not a CR, DX or MR image"),
    ],
)
def test_other_objects_are_rejected_by_sop_class(name: str, reason: str) -> None:
    assert assess_instance(read(name), RULES).reason == reason


def test_dx_for_processing_is_rejected(knee_radiograph: Dataset) -> None:
    raw = with_headers(knee_radiograph, SOPClassUID=dicom_uid.DigitalXRayImageStorageForProcessing)
    assert "DX For Processing" in assess_instance(raw, RULES).reason


def test_modality_not_covered_by_the_rules() -> None:
    shoulder = read("MR2_UNCR.dcm")
    decision = assess_instance(shoulder, (KL_GRADE,))
    assert decision.reason == "modality MR is not covered (CR/DX)"


def test_knee_radiograph_matching_a_rule_is_in_scope(knee_radiograph: Dataset) -> None:
    decision = assess_instance(knee_radiograph, RULES)
    assert decision == ScopeDecision(
        in_scope=True,
        reason="covered by kl_grade (CR/DX KNEE AP/PA); body part from BodyPartExamined KNEE",
        body_part="KNEE",
        modality="CR",
        view=RadiographView.AP,
        laterality=Laterality.RIGHT,
    )


def test_view_must_be_one_the_rule_covers(knee_radiograph: Dataset) -> None:
    lateral = with_headers(knee_radiograph, ViewPosition="LL")
    decision = assess_instance(lateral, RULES)
    assert (
        not decision.in_scope
        and "kl_grade (CR/DX KNEE AP/PA) does not cover view LATERAL" in decision.reason
    )
    assert assess_instance(lateral, (KL_GRADE, KNEE_LATERAL)).in_scope
    unstated = with_headers(knee_radiograph, ViewPosition=None, StudyDescription=None)
    assert "does not cover view view not stated" in assess_instance(unstated, RULES).reason


def test_view_from_code_sequence_and_descriptions(knee_radiograph: Dataset) -> None:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "R-10232",
        "SRT",
        "medio-lateral",
    )
    coded = with_headers(knee_radiograph, ViewPosition=None, ViewCodeSequence=DicomSequence([code]))
    assert identify_view(coded) == (RadiographView.LATERAL, "ViewCodeSequence medio-lateral")
    described = with_headers(knee_radiograph, ViewPosition="", SeriesDescription="Knee PA standing")
    assert identify_view(described) == (RadiographView.PA, "description")
    oblique = with_headers(knee_radiograph, ViewPosition="RLO")
    assert identify_view(oblique) == (RadiographView.OTHER, "ViewPosition RLO")


def test_body_part_from_codes_descriptions_and_conflicts() -> None:
    extremity = read(
        "RG3_UNCR.dcm"
    )  # BodyPartExamined EXTREMITY: generic, so the description decides
    assert identify_body_part(extremity) == ("TIBIA", "description")
    assert not assess_instance(extremity, RULES).in_scope
    described = with_headers(extremity, StudyDescription="XR KNEE LEFT 2 VIEWS")
    assert identify_body_part(described) == ("KNEE", "description")
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = (
        "49076000",
        "SCT",
        "Knee joint",
    )
    coded = with_headers(extremity, AnatomicRegionSequence=DicomSequence([region]))
    assert identify_body_part(coded) == ("KNEE", "AnatomicRegionSequence 49076000")
    conflicting = with_headers(coded, BodyPartExamined="HIP")
    decision = assess_instance(conflicting, RULES)
    assert decision.reason == (
        "conflicting body part: AnatomicRegionSequence 49076000 vs BodyPartExamined HIP"
    )
    two_parts = with_headers(extremity, StudyDescription="KNEE AND HIP")
    assert identify_body_part(two_parts) == (
        None,
        "descriptions name several body parts (HIP, KNEE)",
    )
    nothing = with_headers(extremity, StudyDescription=None)
    assert assess_instance(nothing, RULES).reason.startswith("body part unknown")


def test_shoulder_mr_is_in_scope_only_for_a_shoulder_head() -> None:
    shoulder = read("MR2_UNCR.dcm")  # real 1024² shoulder MR (StudyDescription SHOULDER)
    decision = assess_instance(shoulder, RULES)
    assert decision.in_scope and decision.body_part == "SHOULDER" and decision.view is None
    assert "rotator_cuff" in decision.reason
    knee_only = assess_instance(shoulder, (KL_GRADE, ACL))
    assert not knee_only.in_scope and "acl (MR KNEE) needs body part KNEE" in knee_only.reason


def test_side_specific_rule_needs_a_known_side() -> None:
    knee_mr = with_headers(read("MR_small.dcm"), BodyPartExamined="KNEE")
    decision = assess_instance(knee_mr, (ACL,))
    assert (
        not decision.in_scope
        and "needs a left or right image, laterality is unknown" in decision.reason
    )
    sided = with_headers(knee_mr, Laterality="L")
    assert assess_instance(sided, (ACL,)).laterality is Laterality.LEFT
    assert assess_instance(sided, (ACL,)).in_scope


def test_image_content_check_runs_on_display_values(knee_radiograph: Dataset) -> None:
    values = decode_display_frame(knee_radiograph).values
    assert check_image_content(values) is None
    assert assess_instance(knee_radiograph, RULES, display_values=values).in_scope
    blank = np.full((512, 512), 0.5, dtype=np.float32)
    decision = assess_instance(knee_radiograph, RULES, display_values=blank)
    assert decision.reason == (
        "image content out of distribution: image is nearly blank "
        "(standard deviation 0.000 of display values)"
    )
    strip = values[:, :400]
    assert "aspect ratio 4.4 exceeds 3" in check_image_content(strip)
    mask = (values > 0.5).astype(np.float32)
    assert check_image_content(mask) == "100% of pixels are pure black or white (saturated)"
    posterised = np.round(values * 7) / 7 * 0.8 + 0.1
    assert "only 8 grey levels" in check_image_content(posterised)
    small = values[1000:1040, 860:900]  # soft tissue and bone edge near the centre
    assert "under the 64-pixel minimum" in check_image_content(small)
    assert check_image_content(small, limits=ContentLimits(min_side=32, min_grey_levels=4)) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grey_levels_are_counted_as_distinct_values_at_three_decimals(dtype) -> None:
    # The histogram count must be exactly np.unique(np.round(values, 3)), ties at half a
    # thousandth and values outside [0, 1] included (those take the general way).
    rng = np.random.default_rng(7)
    cases = [rng.random((64, 80)), np.round(rng.random((64, 80)) * 13) / 13]
    ties = rng.random((32, 32))
    ties[0, :4] = (0.0005, 0.0015, 0.9995, 0.4445)
    cases += [ties, rng.random((16, 16)) * 3 - 1, np.full((8, 8), np.nan)]
    for values in cases:
        values = values.astype(dtype)
        assert _grey_levels(values) == len(np.unique(np.round(values, 3)))


def test_rules_are_validated() -> None:
    with pytest.raises(ValueError, match=r"modalities must be among CR, DX, MR, got \['CT'\]"):
        ScopeRule({"CT"}, {"KNEE"})
    with pytest.raises(ValueError, match="'ELBOW' is not a valid BodyPart"):
        ScopeRule({"DX"}, {"ELBOW"})
    with pytest.raises(ValueError, match="views only apply to radiographs"):
        ScopeRule({"MR"}, {"KNEE"}, {"AP"})
    with pytest.raises(ValueError, match="'OBLIQUE' is not a valid RadiographView"):
        ScopeRule({"DX"}, {"KNEE"}, {"OBLIQUE"})
    with pytest.raises(TypeError, match="modalities must be a non-empty set of str"):
        ScopeRule("DX", {"KNEE"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="body_parts must name at least one value"):
        ScopeRule({"DX"}, set())
    with pytest.raises(TypeError, match="rules must be a non-empty sequence of ScopeRule"):
        assess_instance(read("MR_small.dcm"), ())


def test_study_level_reason() -> None:
    chest = assess_instance(read("RG1_UNCR.dcm"), RULES)
    capture = assess_instance(read("image_dfl.dcm"), RULES)
    reason = study_out_of_scope_reason([chest, capture, capture])
    assert reason.startswith("no image is in scope: CHEST (from BodyPartExamined CHEST)")
    assert reason.endswith(
        "Secondary Capture: a derived screen capture, not an acquired image (2 images)"
    )
    shoulder = assess_instance(read("MR2_UNCR.dcm"), RULES)
    assert study_out_of_scope_reason([chest, shoulder]) is None
    assert study_out_of_scope_reason([]) == "the study has no images"


@dataclass(frozen=True)
class DeclaredScope:
    """The shape of a head's declared scope (``heads.TaskScope`` has these fields)."""

    modalities: frozenset[str]
    body_parts: frozenset[str]
    views: frozenset[str] = frozenset()


def test_rule_from_a_heads_declared_scope(knee_radiograph: Dataset) -> None:
    xray = ScopeRule.from_task_scope(
        DeclaredScope(frozenset({"CR", "DX"}), frozenset({"KNEE"}), frozenset({"AP", "PA"})),
        name="kl_grade",
    )
    assert xray == KL_GRADE
    any_view = ScopeRule.from_task_scope(
        DeclaredScope(frozenset({"dx", "cr"}), frozenset({"knee"}))
    )
    assert any_view.views is None and any_view.describe() == "CR/DX KNEE"
    lateral = with_headers(knee_radiograph, ViewPosition="RL")
    assert assess_instance(lateral, (any_view,)).in_scope
    assert not assess_instance(lateral, (xray,)).in_scope
    multi = ScopeRule.from_task_scope(
        DeclaredScope(frozenset({"MR"}), frozenset({"HIP", "SHOULDER", "ANKLE"})), name="cross"
    )
    assert assess_instance(read("MR2_UNCR.dcm"), (multi,)).reason.startswith(
        "covered by cross (MR ANKLE/HIP/SHOULDER)"
    )


def test_enhanced_mr_body_part_from_frame_anatomy() -> None:
    """An Enhanced MR codes its region in the Frame Anatomy functional group (Body Part Examined
    is optional there): a knee coded only per frame is in scope, and a Body Part Examined that
    names another part is a conflict, not a silent override."""
    from tests.test_preprocess_support import _item, enhanced_mr

    ds = enhanced_mr(frame_laterality="L")
    for group in ds.PerFrameFunctionalGroupsSequence:
        group.FrameAnatomySequence[0].AnatomicRegionSequence = DicomSequence(
            [_item(CodeValue="72696002", CodingSchemeDesignator="SCT", CodeMeaning="Knee")]
        )
    for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName"):
        if keyword in ds:
            delattr(ds, keyword)
    decision = assess_instance(ds, [ACL])
    assert decision.in_scope, decision.reason
    assert (decision.body_part, decision.laterality) == ("KNEE", Laterality.LEFT)
    assert "FrameAnatomySequence 72696002" in decision.reason
    ds.BodyPartExamined = "CHEST"
    conflicted = assess_instance(ds, [ACL])
    assert not conflicted.in_scope and "conflicting body part" in conflicted.reason
