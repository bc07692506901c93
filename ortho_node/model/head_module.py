"""The torch module behind a task head: LayerNorm + Linear over image features.

Every image is summarised as ``[CLS, mean of patch tokens]`` (:func:`image_features`, ``2 * D``
values); a head applies LayerNorm and one Linear layer. For MR, the normalised features of the
slices of a series are pooled (mean, max, or gated attention after Ilse et al. 2018) before the
Linear layer; the paper's "slice-averaging" aggregation is the default (mean).

Ordinal heads are cumulative-link (proportional-odds) models: one score ``s`` and ordered
cut-points ``t_0 < t_1 < ...`` give cumulative logits ``z_k = s - t_k = logit P(y > k)``, which
decrease in ``k`` by construction, so class probabilities are always valid. CORAL's independent
biases can cross (negative probabilities), and a plain softmax ignores the order of the grades.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from ortho_node.model.findings import HeadKind
from ortho_node.model.heads import HeadSpec, Pooling

__all__ = ["TaskHead", "image_features"]


def image_features(cls_token: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Summarise images as ``[CLS, mean patch token]``: ``[B, D]``, ``[B, N, D]`` -> ``[B, 2D]``."""
    if cls_token.ndim != 2 or patches.ndim != 3 or patches.shape[::2] != cls_token.shape:
        raise ValueError(
            f"expected cls [B, D] and patches [B, N, D], got {tuple(cls_token.shape)} "
            f"and {tuple(patches.shape)}"
        )
    return torch.cat([cls_token, patches.mean(dim=1)], dim=-1)


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


class TaskHead(nn.Module):
    """LayerNorm + Linear over image features, with slice pooling for MR heads.

    Parameters are initialised deterministically from the head's name (so importing the
    same checkpoint twice gives identical bundles); an initialised head is still untrained.

    Parameters
    ----------
    spec : HeadSpec
        The task.
    embed_dim : int
        Encoder width ``D``; features are ``2 * D`` wide.
    """

    def __init__(self, spec: HeadSpec, *, embed_dim: int) -> None:
        if not isinstance(spec, HeadSpec):
            raise TypeError(f"spec must be a HeadSpec, got {type(spec).__name__}")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        super().__init__()
        self.spec = spec
        self.in_features = 2 * embed_dim
        self.norm = nn.LayerNorm(self.in_features)
        if spec.pooling is Pooling.ATTENTION:
            self.attention_value = nn.Linear(self.in_features, spec.attention_dim)
            self.attention_gate = nn.Linear(self.in_features, spec.attention_dim)
            self.attention_score = nn.Linear(spec.attention_dim, 1)
        if spec.kind is HeadKind.ORDINAL:
            self.score = nn.Linear(self.in_features, 1)
            self.first_cutpoint = nn.Parameter(torch.zeros(1))
            # Gaps between consecutive cut-points before softplus, so the order always holds.
            self.cutpoint_gaps = nn.Parameter(torch.zeros(spec.num_outputs - 1))
        else:
            self.classifier = nn.Linear(self.in_features, spec.num_outputs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise deterministically (seeded by the head name)."""
        generator = torch.Generator().manual_seed(_seed(self.spec.name))
        with torch.no_grad():
            nn.init.ones_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02, generator=generator)
                    nn.init.zeros_(module.bias)
            if self.spec.kind is HeadKind.ORDINAL:
                # Evenly spaced cut-points in [-2, 2]: softplus(gap) = 4 / (K - 2).
                steps = self.spec.num_outputs
                self.first_cutpoint.fill_(-2.0 if steps > 1 else 0.0)
                if steps > 1:
                    spacing = torch.tensor(4.0 / (steps - 1))
                    self.cutpoint_gaps.fill_(float(spacing + torch.log(-torch.expm1(-spacing))))

    def cutpoints(self) -> torch.Tensor:
        """Ordered cut-points ``t_0 < t_1 < ...`` of an ordinal head."""
        if self.spec.kind is not HeadKind.ORDINAL:
            raise ValueError(f"head {self.spec.name!r} is {self.spec.kind.value}, not ordinal")
        gaps = F.softplus(self.cutpoint_gaps)
        return torch.cat([self.first_cutpoint, self.first_cutpoint + torch.cumsum(gaps, dim=0)])

    def _logits(self, normalised: torch.Tensor) -> torch.Tensor:
        if self.spec.kind is HeadKind.ORDINAL:
            return self.score(normalised) - self.cutpoints()
        return self.classifier(normalised)

    def _check_features(self, features: torch.Tensor, ndim: int) -> None:
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.ndim != ndim or features.shape[-1] != self.in_features:
            layout = "[B, F]" if ndim == 2 else "[B, S, F]"
            raise ValueError(
                f"features must be {layout} with F={self.in_features}, got {tuple(features.shape)}"
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits per image: features ``[B, 2D]`` (:func:`image_features`) -> ``[B, outputs]``."""
        self._check_features(features, 2)
        return self._logits(self.norm(features))

    def pool(
        self, features: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool slice features per set.

        Parameters
        ----------
        features : torch.Tensor
            ``[B, S, 2D]`` image features of ``S`` slices per set (padded).
        mask : torch.Tensor, optional
            ``[B, S]`` bool, True for real slices; every set needs at least one.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            Pooled normalised features ``[B, 2D]`` and per-slice weights ``[B, S]`` summing to 1
            (mean: uniform; attention: the attention; max: share of feature channels where
            the slice is the maximum).

        Raises
        ------
        ValueError
            For a non-MR head, bad shapes, or an empty set.
        """
        if self.spec.pooling is None:
            raise ValueError(f"head {self.spec.name!r} is not an MR head; it has no slice pooling")
        self._check_features(features, 3)
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        if mask.shape != features.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool {tuple(features.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every slice set needs at least one slice (mask row all False)")
        normalised = self.norm(features)
        valid = mask.unsqueeze(-1)
        if self.spec.pooling is Pooling.MEAN:
            weights = mask.to(normalised.dtype) / mask.sum(dim=1, keepdim=True)
            pooled = (normalised * weights.unsqueeze(-1)).sum(dim=1)
        elif self.spec.pooling is Pooling.MAX:
            filled = normalised.masked_fill(~valid, float("-inf"))
            pooled, winner = filled.max(dim=1)
            counts = F.one_hot(winner, num_classes=features.shape[1]).sum(dim=1)
            weights = counts.to(normalised.dtype) / self.in_features
        else:
            hidden = torch.tanh(self.attention_value(normalised)) * torch.sigmoid(
                self.attention_gate(normalised)
            )
            scores = self.attention_score(hidden).squeeze(-1).masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=1)
            pooled = (normalised * weights.unsqueeze(-1)).sum(dim=1)
        return pooled, weights

    def forward_sets(
        self, features: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits per slice set: ``[B, S, 2D]`` (+ mask ``[B, S]``) -> ``[B, num_outputs]``."""
        pooled, _ = self.pool(features, mask)
        return self._logits(pooled)
