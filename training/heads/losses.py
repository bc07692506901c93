"""Training losses per head kind, in the node's logit conventions (see ``ortho_node.model.heads``).

- binary: binary cross-entropy on the single positive-class logit;
- multiclass: cross-entropy over ``K`` logits;
- ordinal: negative log-likelihood of the cumulative-link model, whose ``K - 1`` logits are
  ``z_k = logit P(y > k)``; ``P(y = k) = sigmoid(z_{k-1}) - sigmoid(z_k)`` with
  ``sigmoid(z_{-1}) = 1`` and ``sigmoid(z_{K-1}) = 0``, computed in log space for stability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ortho_node.model.findings import HeadKind
from ortho_node.model.heads import HeadSpec

__all__ = ["ordinal_log_probabilities", "task_loss"]


def ordinal_log_probabilities(cumulative_logits: torch.Tensor) -> torch.Tensor:
    """``[B, K-1]`` cumulative logits ``logit P(y > k)`` -> ``[B, K]`` class log-probabilities."""
    if cumulative_logits.ndim != 2:
        raise ValueError(f"expected [B, K-1] logits, got {tuple(cumulative_logits.shape)}")
    z = cumulative_logits.float()
    batch = z.shape[0]
    inf = torch.full((batch, 1), float("inf"), dtype=z.dtype, device=z.device)
    upper = torch.cat([inf, z], dim=1)  # z_{k-1}: P(y > k-1)
    lower = torch.cat([z, -inf], dim=1)  # z_k
    # log(sigmoid(a) - sigmoid(b)) for a >= b:
    #   = log(sigmoid(a)) + log(1 - exp(log(sigmoid(b)) - log(sigmoid(a))))
    log_upper = F.logsigmoid(upper)
    log_lower = F.logsigmoid(lower)
    difference = (log_lower - log_upper).clamp(max=-1e-6)
    return log_upper + torch.log(-torch.expm1(difference))


def task_loss(spec: HeadSpec, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean loss of one head over a batch.

    Parameters
    ----------
    spec : HeadSpec
        The head (its kind picks the loss).
    logits : torch.Tensor
        ``[B, spec.num_outputs]``.
    targets : torch.Tensor
        ``[B]`` class indices (long).

    Raises
    ------
    ValueError
        If shapes do not fit the head.
    """
    if logits.ndim != 2 or logits.shape[1] != spec.num_outputs:
        raise ValueError(
            f"logits for {spec.name!r} must be [B, {spec.num_outputs}], got {tuple(logits.shape)}"
        )
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must be [B={logits.shape[0]}], got {tuple(targets.shape)}")
    if spec.kind is HeadKind.BINARY:
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), targets.float())
    if spec.kind is HeadKind.MULTICLASS:
        return F.cross_entropy(logits.float(), targets.long())
    return F.nll_loss(ordinal_log_probabilities(logits), targets.long())
