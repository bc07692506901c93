"""Run one task head over encoded images and explain its answer at patch resolution.

:func:`evaluate_head` takes the encoder output of the images one head reads for one knee (the
AP/PA radiographs of one side, or the slices of one MR series) and returns the pooled logits,
the weight of each image or slice, the *key* image or slice, and an explanation map over the
key image's patch grid.

**Pooling.** MR heads pool slices with their own pooling (mean, max or attention;
:meth:`TaskHead.pool`). X-ray heads answer per image; when one side has several images in
the head's scope (a repeated AP, or an AP and a PA) their logits are averaged, each image
weighing the same.

**Explanation: gradient × patch token.** The patch tokens are taken as leaf tensors that
require a gradient (the encoder stays in inference mode and is never differentiated); the head
runs forward again on them, and the map of image ``k`` is ``ReLU(sum_d dT/dp[k, n, d] *
p[k, n, d])`` over patches ``n``, normalised so its largest value is 1 (all zero when nothing
speaks for the answer). It is the first-order contribution of each patch token to the target
``T``, positive part only: where the evidence *for* the finding lies. The target is

- binary heads: the logit of the positive label (evidence for the finding even when the
  calibrated probability stays under the threshold);
- ordinal heads: the severity score, as its first cumulative logit ``s - t_0`` (same gradient
  as ``s``): evidence for a higher grade;
- multiclass heads: the logit of the predicted class.

Only the head is differentiated (one LayerNorm and one Linear, plus pooling), so a map costs
far less than the forward pass. A head reads the patch tokens only through their mean ``m_k``
(:func:`~ortho_node.model.head_module.image_features`), so ``dT/dp[k, n] = dT/dm_k / N`` for
every patch: the gradient is taken with respect to the ``[K, 2D]`` image features, and the map
is one product of the tokens with it (a 16-slice MR head: ~1 ms instead of ~4 ms for
back-propagating into all ``K × N × D`` token values). The CLS token's part of the answer is
not attributed to patches; attention rollout would catch it but needs every attention matrix
of the encoder.

**Key image / slice**: the highest pooling weight; where weights tie (mean pooling, X-ray
averaging) the one with the most positive evidence (largest sum of its raw map).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ortho_node.model.encoder import EncoderOutput
from ortho_node.model.findings import HeadKind
from ortho_node.model.head_module import TaskHead, image_features

__all__ = ["HeadEvaluation", "evaluate_head", "explanation_target"]

_TIED = 1e-6


@dataclass(frozen=True)
class HeadEvaluation:
    """One head's answer for one set of images, with its explanation.

    Attributes
    ----------
    logits : torch.Tensor
        ``[1, num_outputs]`` float32 on the CPU, pooled over the inputs (feed to
        :func:`~ortho_node.model.calibration.predict`).
    weights : tuple of float
        Weight of each input image or slice in the answer (sum 1).
    key_index : int
        The input whose map is given.
    patch_map : numpy.ndarray or None
        float32 ``grid`` map in [0, 1] over the key input, in model orientation (canonical
        side); None when no explanation was asked for.
    """

    logits: torch.Tensor
    weights: tuple[float, ...]
    key_index: int
    patch_map: np.ndarray | None


def explanation_target(head: TaskHead, logits: torch.Tensor) -> torch.Tensor:
    """The scalar a map explains, from pooled logits ``[1, num_outputs]`` (module docstring)."""
    kind = head.spec.kind
    if kind is HeadKind.MULTICLASS:
        return logits[0, int(logits[0].argmax())]
    # Binary: the positive log-odds. Ordinal: s - t_0, whose gradient is the score's.
    return logits[0, 0]


def _pooled_logits(head: TaskHead, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([1, outputs] logits, [K] weights)`` of one set of ``K`` inputs."""
    count = features.shape[0]
    if head.spec.pooling is not None:
        logits = head.forward_sets(features.unsqueeze(0))
        with torch.no_grad():
            _, weights = head.pool(features.detach().unsqueeze(0))
        return logits, weights[0]
    logits = head(features).mean(dim=0, keepdim=True)
    return logits, torch.full((count,), 1.0 / count, device=features.device)


def _check_encoded(head: TaskHead, encoded: EncoderOutput) -> None:
    if not isinstance(head, TaskHead):
        raise TypeError(f"head must be a TaskHead, got {type(head).__name__}")
    if not isinstance(encoded, EncoderOutput):
        raise TypeError(f"encoded must be an EncoderOutput, got {type(encoded).__name__}")
    rows, columns = encoded.grid
    if encoded.patches.ndim != 3 or encoded.patches.shape[1] != rows * columns:
        raise ValueError(
            f"encoded patches must be [K, {rows * columns}, D] for grid {encoded.grid}, "
            f"got {tuple(encoded.patches.shape)}"
        )
    if encoded.cls.shape[0] < 1:
        raise ValueError("encoded must hold at least one image")


def evaluate_head(
    head: TaskHead, encoded: EncoderOutput, *, explain: bool = True
) -> HeadEvaluation:
    """Pool one head over a set of encoded images and explain the answer.

    Parameters
    ----------
    head : TaskHead
        The head (on the same device as ``encoded``).
    encoded : EncoderOutput
        ``K`` images: one side's radiographs, or one series' slices in slice order.
    explain : bool, optional
        Compute the explanation map (default True); False runs the head only.

    Returns
    -------
    HeadEvaluation

    Raises
    ------
    TypeError, ValueError
        For inputs that do not fit the head.
    """
    _check_encoded(head, encoded)
    patches = encoded.patches.detach().float()
    features = image_features(encoded.cls.detach().float(), patches)  # [K, 2D]
    if not explain:
        with torch.no_grad():
            logits, weights = _pooled_logits(head, features)
        return HeadEvaluation(
            logits=logits.cpu(),
            weights=tuple(weights.cpu().tolist()),
            key_index=int(weights.argmax()),
            patch_map=None,
        )
    with torch.enable_grad():
        # A fresh leaf: gradients reach the image features and nothing else (the head's
        # parameters are frozen, the encoder is not part of this graph).
        features = features.clone().requires_grad_(True)
        logits, weights = _pooled_logits(head, features)
        (gradient,) = torch.autograd.grad(explanation_target(head, logits), features)
    # The patch half of the features is the tokens' mean: each token's gradient is dT/dm / N.
    token_gradient = gradient[:, patches.shape[-1]:] / patches.shape[1]  # [K, D]
    relevance = torch.bmm(patches, token_gradient.unsqueeze(-1)).squeeze(-1).clamp_min(0.0)  # [K, N]
    weights = weights.detach()
    evidence = relevance.sum(dim=1)
    tied = (weights.max() - weights) <= _TIED
    key = int(torch.where(tied, evidence, torch.full_like(evidence, -1.0)).argmax())
    key_map = relevance[key]
    peak = float(key_map.max())
    normalised = key_map / peak if peak > 0 else torch.zeros_like(key_map)
    return HeadEvaluation(
        logits=logits.detach().cpu(),
        weights=tuple(weights.cpu().tolist()),
        key_index=key,
        patch_map=normalised.reshape(encoded.grid).cpu().numpy().astype(np.float32),
    )
