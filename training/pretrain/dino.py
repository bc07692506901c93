"""DINO self-distillation: projection head, multi-crop model and the centred cross-entropy.

- :class:`DINOHead`: MLP (``n_layers`` Linear + GELU, no batch norm) to a bottleneck, L2
  normalisation, then a weight-normalised linear layer to ``out_dim`` prototypes whose weight
  norm is fixed at 1 when ``norm_last_layer`` (Caron et al. 2021, ``dino_head`` in the DINO and
  OrthoFoundation code).
- :class:`MultiCropModel`: an :class:`~ortho_node.model.encoder.OrthoEncoder` plus a head; one
  forward takes the global crops and (for the student) the local crops, and returns the head
  outputs of all crops in crop-major order together with the global crops' CLS and patch tokens
  (for KoLeo and Gram anchoring). One forward per step keeps DDP's gradient hooks simple.
- :class:`DINOLoss`: cross-entropy between the centred, sharpened teacher softmax of each
  global crop and the student softmax of every other crop; the centre is an EMA of the
  teacher's mean output, averaged over all processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ortho_node.model.encoder import OrthoEncoder

__all__ = ["DINOHead", "DINOLoss", "MultiCropModel", "MultiCropOutput"]


class DINOHead(nn.Module):
    """The DINO projection head.

    Parameters
    ----------
    in_dim : int
        Encoder width.
    out_dim : int
        Number of prototypes (65,536 in the recipe).
    hidden_dim, bottleneck_dim : int
        MLP width and bottleneck (2048, 256 in the recipe).
    n_layers : int
        Linear layers of the MLP (3).
    norm_last_layer : bool
        Fix the prototype weight norm at 1.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("n_layers", n_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.GELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.apply(self._init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim]`` -> ``[B, out_dim]`` prototype scores."""
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


@dataclass(frozen=True)
class MultiCropOutput:
    """Outputs of one multi-crop forward.

    Attributes
    ----------
    logits : torch.Tensor
        ``[(G + L) * B, out_dim]`` head outputs, crop-major (all images of crop 0 first).
    global_cls : torch.Tensor
        ``[G * B, D]`` CLS tokens of the global crops.
    global_patches : torch.Tensor
        ``[G * B, N, D]`` patch tokens of the global crops.
    """

    logits: torch.Tensor
    global_cls: torch.Tensor
    global_patches: torch.Tensor


class MultiCropModel(nn.Module):
    """Encoder + DINO head over global and local crops (student or teacher)."""

    def __init__(self, encoder: OrthoEncoder, head: DINOHead) -> None:
        if not isinstance(encoder, OrthoEncoder):
            raise TypeError(f"encoder must be an OrthoEncoder, got {type(encoder).__name__}")
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor | None = None
    ) -> MultiCropOutput:
        """Encode crops (two resolutions: two encoder passes) and project all CLS tokens."""
        encoded = self.encoder(global_crops)
        tokens = [encoded.cls]
        if local_crops is not None and local_crops.shape[0]:
            tokens.append(self.encoder(local_crops).cls)
        logits = self.head(torch.cat(tokens))
        return MultiCropOutput(
            logits=logits, global_cls=encoded.cls, global_patches=encoded.patches
        )


class DINOLoss(nn.Module):
    """Centred, sharpened teacher targets against student predictions over crop pairs.

    Parameters
    ----------
    out_dim : int
        Prototypes.
    n_global_crops : int
        Teacher crops (the first ``n_global_crops`` student crops are the same views).
    student_temp : float
        Student softmax temperature (0.1).
    center_momentum : float
        EMA momentum of the centre (0.9).
    """

    center: torch.Tensor

    def __init__(
        self, out_dim: int, *, n_global_crops: int, student_temp: float, center_momentum: float
    ) -> None:
        super().__init__()
        self.n_global_crops = n_global_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, teacher_temp: float
    ) -> torch.Tensor:
        """Mean cross-entropy over all (teacher global crop, other student crop) pairs.

        Parameters
        ----------
        student_logits : torch.Tensor
            ``[C * B, K]`` for all ``C`` crops, crop-major.
        teacher_logits : torch.Tensor
            ``[G * B, K]`` for the global crops, crop-major.
        teacher_temp : float
            Current teacher temperature.
        """
        n_crops = student_logits.shape[0] // (teacher_logits.shape[0] // self.n_global_crops)
        student = (student_logits.float() / self.student_temp).chunk(n_crops)
        targets = F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)
        targets = targets.detach().chunk(self.n_global_crops)
        total = student_logits.new_zeros((), dtype=torch.float32)
        pairs = 0
        for teacher_index, target in enumerate(targets):
            for student_index, prediction in enumerate(student):
                if student_index == teacher_index:
                    continue  # same view: no self-prediction
                total = (
                    total + torch.sum(-target * F.log_softmax(prediction, dim=-1), dim=-1).mean()
                )
                pairs += 1
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the teacher's mean output over the global batch (all processes)."""
        batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor(
            [teacher_logits.shape[0]], dtype=torch.float32, device=batch_sum.device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        batch_center = batch_sum / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1.0 - self.center_momentum))
