"""Head registry, task specs and codes, the head module, and calibration maths."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ortho_node.model import codes
from ortho_node.model.calibration import decide, predict, probabilities_from_logits
from ortho_node.model.findings import CodeTriple, HeadKind
from ortho_node.model.head_module import TaskHead, image_features
from ortho_node.model.heads import (
    HeadSpec,
    Pooling,
    TaskCodes,
    TaskScope,
    UnknownHeadError,
    create_head,
    head_spec,
    list_heads,
    register_head,
)

PAPER_TASKS = {
    "kl_grade", "oa_present", "kl_progression_4y", "kl_progression_8y", "tkr",
    "acl", "pcl", "mcl", "lcl", "meniscus", "cartilage", "bone_contusion", "mpfl",
    "patellar_dislocation", "hip_labrum", "shoulder_supraspinatus", "ankle_atfl", "ankle_cfl",
}
XRAY_TASKS = {"kl_grade", "oa_present", "kl_progression_4y", "kl_progression_8y", "tkr"}
CROSS_ANATOMY = {"hip_labrum": "HIP", "shoulder_supraspinatus": "SHOULDER",
                 "ankle_atfl": "ANKLE", "ankle_cfl": "ANKLE"}


def _all_codes(spec: HeadSpec) -> list[CodeTriple]:
    found = [spec.codes.finding_type, spec.codes.finding_site, spec.codes.concept, *spec.codes.values]
    return found + ([spec.codes.probability] if spec.codes.probability else [])


# --------------------------------------------------------------------------- registry and specs


def test_every_paper_task_is_registered() -> None:
    assert set(list_heads()) == PAPER_TASKS
    assert set(list_heads(modality="dx")) == XRAY_TASKS
    assert set(list_heads(body_part="ankle")) == {"ankle_atfl", "ankle_cfl"}


def test_unknown_head_error_lists_known_names() -> None:
    with pytest.raises(UnknownHeadError, match="unknown head 'kl'.*kl_grade.*ankle_cfl"):
        head_spec("kl")
    with pytest.raises(UnknownHeadError):
        create_head("no_such_task", embed_dim=8)


def test_registry_refuses_duplicates_and_misnamed_specs() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_head("acl")(lambda: head_spec("acl"))
    with pytest.raises(ValueError, match="named 'acl'"):
        register_head("acl_copy")(lambda: head_spec("acl"))
    assert "acl_copy" not in list_heads()


@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_spec_codes_fit_dicom_limits_and_schemes(name: str) -> None:
    spec = head_spec(name)
    for code in _all_codes(spec):
        assert 1 <= len(code.value) <= 16 and 1 <= len(code.meaning) <= 64  # SH / LO
        assert code.scheme in ("SCT", codes.PRIVATE_SCHEME)
        if code.scheme == "SCT":
            assert code.value.isdigit()
    assert codes.PRIVATE_SCHEME.startswith("99")
    assert len(spec.codes.values) == len(spec.labels)
    assert spec.codes.probability is not None


@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_spec_kind_scope_and_decision_fit_the_task(name: str) -> None:
    spec = head_spec(name)
    if name in XRAY_TASKS:
        assert spec.scope.modalities == {"CR", "DX"} and spec.pooling is None
        assert spec.scope.body_parts == {"KNEE"} and spec.scope.views <= {"AP", "PA"}
    else:
        assert spec.scope.modalities == {"MR"} and spec.pooling is Pooling.MEAN
        assert spec.scope.planes and spec.kind is HeadKind.BINARY
        assert spec.scope.body_parts == {CROSS_ANATOMY.get(name, "KNEE")}
    if spec.kind is HeadKind.BINARY:
        assert spec.threshold == 0.5 and len(spec.labels) == 2
        assert spec.codes.values[1] in (codes.PRESENT, codes.YES)
    else:
        assert spec.kind is HeadKind.ORDINAL and spec.labels == ("0", "1", "2", "3", "4")
        assert spec.threshold is None
        assert spec.codes.values == codes.KL_GRADE_VALUES
    assert HeadSpec.from_dict(spec.to_dict()) == spec


def test_knee_findings_sit_in_the_knee_joint() -> None:
    assert head_spec("kl_grade").codes.finding_site == CodeTriple("49076000", "SCT", "Knee joint")
    assert head_spec("acl").codes.finding_type.value == "444470001"
    assert head_spec("meniscus").codes.finding_type.scheme == codes.PRIVATE_SCHEME  # 239720000 unverified
    assert head_spec("hip_labrum").codes.finding_site == codes.HIP_JOINT


def _spec(**changes: object) -> HeadSpec:
    return dataclasses.replace(head_spec("acl"), **changes)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"labels": ("a", "b", "c")}, ValueError, "exactly 2 labels"),
        ({"threshold": None}, ValueError, "needs a decision threshold"),
        ({"threshold": 1.0}, ValueError, r"threshold must lie in \(0, 1\)"),
        ({"pooling": None}, ValueError, "needs a slice pooling"),
        ({"pooling": "median"}, ValueError, "median"),
        ({"temperature": 0.0}, ValueError, "temperature must be finite and > 0"),
        ({"name": "ACL"}, ValueError, "name must match"),
        ({"labels": ("absent", "absent")}, ValueError, "distinct"),
        ({"kind": "ordinal"}, ValueError, "threshold applies to binary heads only"),
        ({"scope": TaskScope(modalities={"DX"}, body_parts={"KNEE"})}, ValueError,
         "pooling applies to MR heads only"),
    ],
)
def test_spec_validation_names_the_problem(changes: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _spec(**changes)


def test_codes_and_scope_validation() -> None:
    spec = head_spec("acl")
    with pytest.raises(ValueError, match="one code per label"):
        _spec(codes=dataclasses.replace(spec.codes, values=(codes.PRESENT,)))
    with pytest.raises(TypeError, match="finding_site must be a CodeTriple"):
        TaskCodes(
            finding_type=codes.ACL_INJURY,
            finding_site="knee",  # type: ignore[arg-type]
            concept=codes.ACL_INJURY,
            values=(codes.ABSENT, codes.PRESENT),
        )
    with pytest.raises(ValueError, match="planes must be among"):
        TaskScope(modalities={"MR"}, body_parts={"KNEE"}, planes={"OBLIQUE"})
    with pytest.raises(ValueError, match="planes apply to MR scopes only"):
        TaskScope(modalities={"DX"}, body_parts={"KNEE"}, planes={"AXIAL"})


def test_overrides_are_validated() -> None:
    assert head_spec("acl", pooling="attention").pooling is Pooling.ATTENTION
    assert head_spec("kl_grade", temperature=1.5).temperature == 1.5
    with pytest.raises(TypeError, match="unknown HeadSpec fields"):
        head_spec("acl", colour="red")


# --------------------------------------------------------------------------- head module


def test_head_outputs_follow_the_logit_convention() -> None:
    features = torch.randn(4, 16)
    assert create_head("acl", embed_dim=8)(features).shape == (4, 1)
    assert create_head("kl_grade", embed_dim=8)(features).shape == (4, 4)
    multiclass = _spec(name="kl_multi", kind="multiclass", labels=tuple("abc"), threshold=None,
                       codes=dataclasses.replace(head_spec("acl").codes, values=(codes.NO,) * 3))
    assert TaskHead(multiclass, embed_dim=8)(features).shape == (4, 3)
    with pytest.raises(ValueError, match="F=16"):
        create_head("acl", embed_dim=8)(torch.randn(4, 15))


def test_ordinal_cumulative_logits_never_increase() -> None:
    head = create_head("kl_grade", embed_dim=8)
    with torch.no_grad():
        head.cutpoint_gaps.copy_(torch.tensor([-6.0, 4.0, -3.0]))  # any raw values
    logits = head(torch.randn(32, 16))
    assert bool((logits.diff(dim=-1) <= 0).all())
    assert bool((head.cutpoints().diff() > 0).all())


def test_head_initialisation_is_deterministic() -> None:
    first, second = create_head("kl_grade", embed_dim=8), create_head("kl_grade", embed_dim=8)
    pairs = zip(first.state_dict().values(), second.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    # Seeded per task name: two binary heads of the same shape still start differently.
    acl, pcl = create_head("acl", embed_dim=8), create_head("pcl", embed_dim=8)
    assert not torch.equal(acl.classifier.weight, pcl.classifier.weight)


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_padded_slices_do_not_change_the_set_result(pooling: str) -> None:
    head = create_head("acl", embed_dim=8, pooling=pooling)
    slices = torch.randn(1, 3, 16)
    padded = torch.cat([slices, torch.randn(1, 2, 16) * 100], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        alone = head.forward_sets(slices)
        with_padding = head.forward_sets(padded, mask)
        _, weights = head.pool(padded, mask)
    assert torch.allclose(alone, with_padding, atol=1e-6)
    assert torch.allclose(weights.sum(dim=1), torch.ones(1))
    assert bool((weights[:, 3:] == 0).all())


def test_mean_pooling_averages_slices() -> None:
    head = create_head("acl", embed_dim=8)
    slices = torch.randn(2, 4, 16)
    with torch.no_grad():
        pooled = head.forward_sets(slices)
        per_slice = head(slices.reshape(8, 16)).reshape(2, 4, 1)
    assert torch.allclose(pooled, per_slice.mean(dim=1), atol=1e-6)  # a linear head: mean of logits


def test_pooling_errors() -> None:
    with pytest.raises(ValueError, match="not an MR head"):
        create_head("kl_grade", embed_dim=8).pool(torch.randn(1, 2, 16))
    head = create_head("acl", embed_dim=8)
    with pytest.raises(ValueError, match="at least one slice"):
        head.pool(torch.randn(2, 2, 16), torch.tensor([[True, False], [False, False]]))


def test_image_features_are_cls_and_mean_patch() -> None:
    cls, patches = torch.randn(2, 8), torch.randn(2, 5, 8)
    features = image_features(cls, patches)
    assert torch.equal(features[:, :8], cls)
    assert torch.allclose(features[:, 8:], patches.mean(dim=1))
    with pytest.raises(ValueError, match=r"cls \[B, D\]"):
        image_features(cls, torch.randn(3, 5, 8))


# --------------------------------------------------------------------------- calibration


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def test_binary_calibration_is_a_tempered_sigmoid() -> None:
    probabilities = probabilities_from_logits(torch.tensor([[2.0], [-1.0]]), kind="binary", temperature=2.0)
    assert probabilities[0, 1].item() == pytest.approx(_sigmoid(1.0), abs=1e-6)
    assert probabilities[1, 0].item() == pytest.approx(1 - _sigmoid(-0.5), abs=1e-6)
    cold = probabilities_from_logits(torch.tensor([[2.0]]), kind="binary", temperature=1.0)
    assert 0.5 < probabilities[0, 1].item() < cold[0, 1].item()  # a higher temperature flattens


def test_multiclass_calibration_is_a_tempered_softmax() -> None:
    logits = [1.0, 2.0, 4.0]
    probabilities = probabilities_from_logits(torch.tensor(logits), kind="multiclass", temperature=0.5)
    total = sum(math.exp(z / 0.5) for z in logits)
    assert probabilities.tolist() == pytest.approx([math.exp(z / 0.5) / total for z in logits], abs=1e-6)


def test_ordinal_calibration_from_cumulative_logits() -> None:
    cumulative = [2.0, 0.5, -1.0, -3.0]  # logit P(y > k)
    probabilities = probabilities_from_logits(torch.tensor(cumulative), kind="ordinal").tolist()
    exceed = [_sigmoid(z) for z in cumulative]
    expected = [1 - exceed[0], exceed[0] - exceed[1], exceed[1] - exceed[2], exceed[2] - exceed[3], exceed[3]]
    assert probabilities == pytest.approx(expected, abs=1e-6)
    assert sum(probabilities) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-increasing"):
        probabilities_from_logits(torch.tensor([0.0, 1.0, 0.0, -1.0]), kind="ordinal")
    with pytest.raises(ValueError, match="temperature"):
        probabilities_from_logits(torch.tensor([0.0]), kind="binary", temperature=0.0)


def test_binary_decision_uses_the_threshold() -> None:
    strict = head_spec("acl", threshold=0.7)
    below, at = decide([0.4, 0.6], strict), decide([0.3, 0.7], strict)
    assert (below.label, below.probability, below.positive_probability) == ("absent", 0.4, 0.6)
    assert (at.label, at.value_code, at.probability) == ("present", codes.PRESENT, 0.7)


def test_ordinal_decision_is_the_most_probable_grade() -> None:
    spec = head_spec("kl_grade")
    prediction = decide([0.1, 0.2, 0.15, 0.5, 0.05], spec)
    assert (prediction.label, prediction.label_index, prediction.probability) == ("3", 3, 0.5)
    assert prediction.value_code == codes.KL_GRADE_VALUES[3]
    assert prediction.positive_probability is None
    with pytest.raises(ValueError, match="expected 5 probabilities"):
        decide([0.5, 0.5], spec)
    with pytest.raises(ValueError, match="sum to 1"):
        decide([0.5, 0.5, 0.5, 0.0, 0.0], spec)


def test_predict_applies_the_spec_temperature() -> None:
    spec = head_spec("oa_present", temperature=4.0)
    (prediction,) = predict(torch.tensor([[4.0]]), spec)
    assert prediction.positive_probability == pytest.approx(_sigmoid(1.0), abs=1e-6)
    assert prediction.label == "present"
    with pytest.raises(ValueError, match=r"must be \[B, 1\]"):
        predict(torch.zeros(1, 4), spec)
