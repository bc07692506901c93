"""Classification metrics with percentile-bootstrap confidence intervals (numpy only).

- AUROC: the Mann-Whitney statistic (ties count one half); for more than two classes the
  macro average of one-vs-rest AUROCs over classes present with both outcomes.
- accuracy: share of argmax (or thresholded, binary) predictions equal to the target.
- quadratic-weighted kappa (Cohen 1968): agreement of ordered grades, 1 = perfect,
  0 = chance.

:func:`bootstrap_ci` resamples cases with replacement (seeded), recomputes a metric, and
returns the 2.5 / 97.5 percentiles; resamples where the metric is undefined (e.g. one class
only) are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ortho_node.model.findings import HeadKind
from ortho_node.model.heads import HeadSpec

__all__ = [
    "MetricValue",
    "accuracy",
    "auroc",
    "binary_auroc",
    "bootstrap_ci",
    "predicted_labels",
    "quadratic_weighted_kappa",
    "task_metrics",
]


def _as_targets(targets: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(targets)
    if array.ndim != 1:
        raise ValueError(f"targets must be 1-D, got shape {array.shape}")
    return array.astype(np.int64)


def binary_auroc(
    scores: Sequence[float] | np.ndarray, positives: Sequence[int] | np.ndarray
) -> float:
    """AUROC of ``scores`` for binary ``positives`` (1 = positive); NaN if a class is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positives).astype(bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(
            f"scores and positives must be equal 1-D, got {scores.shape}, {positive.shape}"
        )
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties (1-based).
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(probabilities: np.ndarray, targets: Sequence[int] | np.ndarray) -> float:
    """AUROC from ``[N, K]`` class probabilities: binary for K = 2, else one-vs-rest macro."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = _as_targets(targets)
    if probabilities.ndim != 2 or probabilities.shape[0] != targets.size:
        raise ValueError(f"probabilities must be [N={targets.size}, K], got {probabilities.shape}")
    if probabilities.shape[1] == 2:
        return binary_auroc(probabilities[:, 1], targets == 1)
    values = [
        binary_auroc(probabilities[:, k], targets == k) for k in range(probabilities.shape[1])
    ]
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def accuracy(predicted: Sequence[int] | np.ndarray, targets: Sequence[int] | np.ndarray) -> float:
    """Share of predictions equal to the targets."""
    predicted, targets = _as_targets(predicted), _as_targets(targets)
    if predicted.shape != targets.shape or predicted.size == 0:
        raise ValueError("predicted and targets must be non-empty and of equal length")
    return float((predicted == targets).mean())


def quadratic_weighted_kappa(
    predicted: Sequence[int] | np.ndarray, targets: Sequence[int] | np.ndarray, *, num_classes: int
) -> float:
    """Cohen's quadratic-weighted kappa between predicted and true grades ``0..num_classes-1``."""
    predicted, targets = _as_targets(predicted), _as_targets(targets)
    if predicted.shape != targets.shape or predicted.size == 0:
        raise ValueError("predicted and targets must be non-empty and of equal length")
    if (
        min(predicted.min(), targets.min()) < 0
        or max(predicted.max(), targets.max()) >= num_classes
    ):
        raise ValueError(f"grades must lie in [0, {num_classes - 1}]")
    observed = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(observed, (targets, predicted), 1.0)
    grades = np.arange(num_classes)
    weights = (grades[:, None] - grades[None, :]) ** 2 / float((num_classes - 1) ** 2)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    denominator = float((weights * expected).sum())
    if denominator == 0.0:
        return float("nan")
    return 1.0 - float((weights * observed).sum()) / denominator


def predicted_labels(spec: HeadSpec, probabilities: np.ndarray) -> np.ndarray:
    """The node's decision rule: binary heads threshold ``P(positive)``, others take argmax."""
    probabilities = np.asarray(probabilities)
    if spec.kind is HeadKind.BINARY:
        threshold = spec.threshold if spec.threshold is not None else 0.5
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1).astype(np.int64)


def bootstrap_ci(
    metric: Callable[[np.ndarray], float],
    n: int,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(indices)`` over ``n`` cases.

    Parameters
    ----------
    metric : callable
        Takes an index array (a resample of ``range(n)``) and returns the metric.
    n : int
        Number of cases.
    resamples : int, optional
        Bootstrap resamples (default 1000).
    seed : int, optional
        RNG seed (default 0).
    level : float, optional
        Coverage (default 0.95).

    Returns
    -------
    (float, float)
        Lower and upper bound; NaN when no resample gives a defined metric.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = metric(rng.integers(0, n, size=n))
        if not math.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class MetricValue:
    """A metric with its bootstrap interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def task_metrics(
    spec: HeadSpec,
    probabilities: np.ndarray,
    targets: Sequence[int] | np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, MetricValue]:
    """AUROC and accuracy for every head, plus quadratic-weighted kappa for graded heads.

    Parameters
    ----------
    spec : HeadSpec
        The head (decision rule, number of classes).
    probabilities : numpy.ndarray
        ``[N, K]`` calibrated class probabilities.
    targets : sequence of int
        ``[N]`` true class indices.
    resamples, seed :
        Bootstrap settings (``resamples=0`` gives the point estimates with NaN intervals).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = _as_targets(targets)
    predicted = predicted_labels(spec, probabilities)
    metrics: dict[str, Callable[[np.ndarray], float]] = {
        "auroc": lambda idx: auroc(probabilities[idx], targets[idx]),
        "accuracy": lambda idx: accuracy(predicted[idx], targets[idx]),
    }
    if spec.kind is not HeadKind.BINARY:
        classes = len(spec.labels)
        metrics["qwk"] = lambda idx: quadratic_weighted_kappa(
            predicted[idx], targets[idx], num_classes=classes
        )
    everything = np.arange(targets.size)
    result = {}
    for name, function in metrics.items():
        low, high = (
            bootstrap_ci(function, targets.size, resamples=resamples, seed=seed)
            if resamples
            else (float("nan"), float("nan"))
        )
        result[name] = MetricValue(function(everything), low, high)
    return result
