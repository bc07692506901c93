"""Temperature calibration (Guo et al. 2017) on a validation split.

One scalar ``T > 0`` per head divides the logits before the link function, exactly as the
node's :func:`ortho_node.model.calibration.probabilities_from_logits` applies the manifest's
temperature. ``T`` minimises the validation negative log-likelihood; it is found by
golden-section search over ``log T`` in ``[log 0.05, log 20]`` (the NLL is unimodal in ``T`` for
these link functions), which needs no gradient tuning and is deterministic.
"""

from __future__ import annotations

import math

import torch

from ortho_node.model.heads import HeadSpec
from training.heads.losses import task_loss

__all__ = ["fit_temperature"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def fit_temperature(
    spec: HeadSpec,
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
    iterations: int = 60,
) -> float:
    """The temperature that minimises the NLL of ``logits / T`` on ``targets``.

    Parameters
    ----------
    spec : HeadSpec
        The head (its kind decides the likelihood).
    logits : torch.Tensor
        ``[N, spec.num_outputs]`` uncalibrated logits.
    targets : torch.Tensor
        ``[N]`` class indices.
    bounds : (float, float), optional
        Search range for ``T``.
    iterations : int, optional
        Golden-section steps (60 narrow the log-range by a factor of about 1e12).

    Raises
    ------
    ValueError
        If there are no cases, or the bounds are not ``0 < low < high``.
    """
    if logits.shape[0] == 0:
        raise ValueError(f"cannot calibrate {spec.name!r} on an empty validation set")
    if not 0 < bounds[0] < bounds[1]:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    logits = logits.detach().float()
    targets = targets.detach().long()

    def nll(log_t: float) -> float:
        return float(task_loss(spec, logits / math.exp(log_t), targets))

    low, high = math.log(bounds[0]), math.log(bounds[1])
    a = high - _GOLDEN * (high - low)
    b = low + _GOLDEN * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(iterations):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - _GOLDEN * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + _GOLDEN * (high - low)
            fb = nll(b)
    return float(math.exp((low + high) / 2.0))
