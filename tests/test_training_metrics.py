"""Metrics, head losses and temperature calibration on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from ortho_node.model.calibration import probabilities_from_logits
from ortho_node.model.heads import head_spec
from training.heads.calibrate import fit_temperature
from training.heads.losses import ordinal_log_probabilities, task_loss
from training.metrics import (
    accuracy,
    auroc,
    binary_auroc,
    bootstrap_ci,
    quadratic_weighted_kappa,
    task_metrics,
)


def test_auroc_matches_sklearn_with_ties_and_multiclass() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=200).astype(float)  # many ties
    labels = (scores + rng.normal(0, 2, size=200) > 2).astype(int)
    assert binary_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    probabilities = rng.dirichlet(np.ones(4), size=300)
    targets = rng.integers(0, 4, size=300)
    expected = roc_auc_score(targets, probabilities, multi_class="ovr", average="macro")
    assert auroc(probabilities, targets) == pytest.approx(expected)
    assert math.isnan(binary_auroc([0.1, 0.2], [1, 1]))


def test_kappa_and_accuracy_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, size=150)
    predicted = np.clip(truth + rng.integers(-1, 2, size=150), 0, 4)
    assert quadratic_weighted_kappa(predicted, truth, num_classes=5) == pytest.approx(
        cohen_kappa_score(truth, predicted, weights="quadratic")
    )
    assert quadratic_weighted_kappa(truth, truth, num_classes=5) == pytest.approx(1.0)
    assert accuracy(predicted, truth) == pytest.approx(float((predicted == truth).mean()))
    with pytest.raises(ValueError):
        quadratic_weighted_kappa([5], [0], num_classes=5)


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(2)
    small = rng.random(40) < 0.7
    large = rng.random(4000) < 0.7
    low_s, high_s = bootstrap_ci(lambda idx: float(small[idx].mean()), small.size, resamples=500)
    low_l, high_l = bootstrap_ci(lambda idx: float(large[idx].mean()), large.size, resamples=500)
    assert low_s <= small.mean() <= high_s and low_l <= large.mean() <= high_l
    assert (high_l - low_l) < (high_s - low_s) / 4


def test_ordinal_loss_agrees_with_node_probabilities() -> None:
    spec = head_spec("kl_grade")
    raw = torch.randn(6, 1) * 3 - torch.tensor(
        [[-1.5, -0.5, 0.5, 1.5]]
    )  # non-increasing cut logits
    node = probabilities_from_logits(raw, kind=spec.kind)
    ours = ordinal_log_probabilities(raw).exp()
    assert torch.allclose(ours, node, atol=1e-5)
    targets = torch.tensor([0, 1, 2, 3, 4, 2])
    assert float(task_loss(spec, raw, targets)) == pytest.approx(
        float(-torch.log(node[torch.arange(6), targets]).mean()), rel=1e-4
    )
    with pytest.raises(ValueError, match="kl_grade"):
        task_loss(spec, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_temperature_fit_recovers_the_scale_of_overconfident_logits() -> None:
    spec = head_spec("acl")
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 1, generator=generator) * 2
    targets = torch.bernoulli(torch.sigmoid(true_logits[:, 0]), generator=generator).long()
    fitted = fit_temperature(spec, true_logits * 3.0, targets)  # 3x overconfident
    assert fitted == pytest.approx(3.0, rel=0.1)


def test_task_metrics_perfect_and_binary_decision() -> None:
    spec = head_spec("oa_present")
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    result = task_metrics(spec, probabilities, [0, 1, 0, 1], resamples=50)
    assert result["auroc"].value == 1.0 and result["accuracy"].value == 1.0
    assert "qwk" not in result
    graded = task_metrics(head_spec("kl_grade"), np.eye(5), np.arange(5), resamples=0)
    assert graded["qwk"].value == pytest.approx(1.0)
