"""An encoder with task heads, for training: radiograph batches and MR slice-set batches.

The heads are the node's :class:`~ortho_node.model.head_module.TaskHead` and the features its
:func:`~ortho_node.model.head_module.image_features`, so what is trained here is what the node
runs. MR heads pool slice features with the head's own pooling (:meth:`TaskHead.forward_sets`),
so pooling is trained end to end with the heads (and the encoder when it is not frozen).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ortho_node.model.encoder import OrthoEncoder
from ortho_node.model.head_module import TaskHead, image_features
from ortho_node.model.heads import HeadSpec

__all__ = ["HeadedEncoder"]


class HeadedEncoder(nn.Module):
    """Encoder plus a ``ModuleDict`` of task heads.

    Parameters
    ----------
    encoder : OrthoEncoder
        The image encoder.
    specs : iterable of HeadSpec
        One head is built per spec (initialised deterministically from its name).
    """

    def __init__(self, encoder: OrthoEncoder, specs: Iterable[HeadSpec]) -> None:
        if not isinstance(encoder, OrthoEncoder):
            raise TypeError(f"encoder must be an OrthoEncoder, got {type(encoder).__name__}")
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(
            {spec.name: TaskHead(spec, embed_dim=encoder.embed_dim) for spec in specs}
        )
        if not len(self.heads):
            raise ValueError("specs must name at least one head")

    @property
    def specs(self) -> Mapping[str, HeadSpec]:
        """Head name -> spec."""
        return {name: head.spec for name, head in self.heads.items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> ``[B, 2D]`` image features (CLS and mean patch token)."""
        out = self.encoder(images)
        return image_features(out.cls, out.patches)

    def image_logits(self, features: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Per-image heads on ``[B, 2D]`` features."""
        return {name: self.heads[name](features) for name in names}

    def set_logits(
        self, features: torch.Tensor, mask: torch.Tensor, names: Iterable[str]
    ) -> dict[str, torch.Tensor]:
        """MR heads on slice-set features ``[B, K, 2D]`` with ``[B, K]`` mask."""
        return {name: self.heads[name].forward_sets(features, mask) for name in names}
