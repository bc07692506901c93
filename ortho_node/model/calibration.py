"""From head logits to calibrated probabilities and a decision.

Calibration divides logits by the head's temperature before the link function (sigmoid for
binary, softmax for multiclass, cumulative sigmoid for ordinal). The predicted label is the most
probable class, except for binary heads, which answer positive when
``P(positive) >= threshold`` (threshold and temperature come from the head's spec, i.e. the
bundle manifest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ortho_node.model.findings import CodeTriple, HeadKind
from ortho_node.model.heads import HeadSpec

__all__ = ["Prediction", "decide", "predict", "probabilities_from_logits"]


def probabilities_from_logits(
    logits: torch.Tensor, *, kind: HeadKind | str, temperature: float = 1.0
) -> torch.Tensor:
    """Calibrated class probabilities from head logits.

    Parameters
    ----------
    logits : torch.Tensor
        ``[..., num_outputs]`` in the logit convention of ``kind``
        (see :mod:`ortho_node.model.heads`).
    kind : HeadKind or str
        Head kind.
    temperature : float, optional
        Logits are divided by it before the link function (default 1.0).

    Returns
    -------
    torch.Tensor
        ``[..., K]`` probabilities summing to 1 over the last axis.

    Raises
    ------
    ValueError
        For a non-positive temperature, a binary input that is not 1 logit wide, or ordinal
        cumulative logits that increase (they must be non-increasing).
    """
    kind = HeadKind(kind)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    scaled = logits.float() / temperature
    if kind is HeadKind.BINARY:
        if scaled.shape[-1] != 1:
            raise ValueError(f"binary logits must have 1 value, got {scaled.shape[-1]}")
        positive = torch.sigmoid(scaled)
        return torch.cat([1.0 - positive, positive], dim=-1)
    if kind is HeadKind.MULTICLASS:
        return torch.softmax(scaled, dim=-1)
    if scaled.shape[-1] > 1 and bool((scaled.diff(dim=-1) > 1e-6).any()):
        raise ValueError("ordinal cumulative logits must be non-increasing (logit P(y > k))")
    exceed = torch.sigmoid(scaled)  # P(y > k), k = 0..K-2
    ones = torch.ones_like(exceed[..., :1])
    zeros = torch.zeros_like(exceed[..., :1])
    at_least = torch.cat([ones, exceed, zeros], dim=-1)  # P(y >= k), k = 0..K
    return (at_least[..., :-1] - at_least[..., 1:]).clamp_min(0.0)


@dataclass(frozen=True)
class Prediction:
    """One head's answer for one image or slice set.

    Attributes
    ----------
    label, label_index : str, int
        Predicted label and its index in ``spec.labels``.
    value_code : CodeTriple
        The coded value of that label.
    probability : float
        Calibrated probability of the predicted label.
    probabilities : tuple of float
        All calibrated probabilities, in label order.
    positive_probability : float or None
        ``P(positive)`` for binary heads.
    """

    label: str
    label_index: int
    value_code: CodeTriple
    probability: float
    probabilities: tuple[float, ...]
    positive_probability: float | None = None


def decide(probabilities: Sequence[float] | torch.Tensor, spec: HeadSpec) -> Prediction:
    """Pick a label from one set of calibrated probabilities.

    Binary: positive when ``P(positive) >= spec.threshold``. Others: the most probable class.

    Raises
    ------
    ValueError
        If the number of probabilities differs from the number of labels, or they are not a
        distribution.
    """
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.tolist()
    values = tuple(float(p) for p in probabilities)
    if len(values) != len(spec.labels):
        raise ValueError(
            f"expected {len(spec.labels)} probabilities for {spec.name!r}, got {len(values)}"
        )
    if any(not 0.0 <= p <= 1.0 for p in values) or abs(sum(values) - 1.0) > 1e-4:
        raise ValueError(f"probabilities must lie in [0, 1] and sum to 1, got {values}")
    positive = None
    if spec.kind is HeadKind.BINARY:
        positive = values[1]
        if spec.threshold is None:  # HeadSpec validation makes this unreachable
            raise ValueError(f"binary head {spec.name!r} has no threshold")
        index = 1 if positive >= spec.threshold else 0
    else:
        index = max(range(len(values)), key=values.__getitem__)
    return Prediction(
        label=spec.labels[index],
        label_index=index,
        value_code=spec.codes.values[index],
        probability=values[index],
        probabilities=values,
        positive_probability=positive,
    )


def predict(logits: torch.Tensor, spec: HeadSpec) -> tuple[Prediction, ...]:
    """Calibrate and decide for a batch of logits ``[B, num_outputs]`` of one head."""
    if logits.ndim != 2 or logits.shape[-1] != spec.num_outputs:
        raise ValueError(
            f"logits for {spec.name!r} must be [B, {spec.num_outputs}], got {tuple(logits.shape)}"
        )
    probabilities = probabilities_from_logits(
        logits.detach(), kind=spec.kind, temperature=spec.temperature
    )
    return tuple(decide(row, spec) for row in probabilities.cpu())
