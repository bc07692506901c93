"""Optional pretraining regularisers from DINOv2 / DINOv3.

- :func:`koleo_loss` (Sablayrolles et al. 2019, used by DINOv2/v3): ``-mean(log(d_nn))`` of the
  L2-normalised embeddings, where ``d_nn`` is each embedding's distance to its nearest
  neighbour in the batch; it spreads embeddings out. Computed per process (as DINOv2 does).
- :func:`gram_loss` (DINOv3 "Gram anchoring"): mean squared difference between the Gram
  matrices (patch-patch cosine similarities) of the student's patch tokens and of a Gram
  teacher's, which keeps dense features from degrading over long training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gram_loss", "koleo_loss"]


def koleo_loss(embeddings: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo entropy estimator loss of ``[B, D]`` embeddings (B >= 2)."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings must be [B >= 2, D], got {tuple(embeddings.shape)}")
    x = F.normalize(embeddings.float(), dim=-1, p=2, eps=eps)
    similarity = x @ x.T
    similarity.fill_diagonal_(-2.0)  # never one's own neighbour
    nearest = similarity.argmax(dim=1)
    distance = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distance + eps).mean()


def gram_loss(student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
    """MSE between patch Gram matrices of ``[B, N, D]`` student and (detached) teacher tokens."""
    if student_patches.shape[:2] != teacher_patches.shape[:2] or student_patches.ndim != 3:
        raise ValueError(
            f"patch tokens must be [B, N, D] with equal B, N; got {tuple(student_patches.shape)} "
            f"and {tuple(teacher_patches.shape)}"
        )
    student = F.normalize(student_patches.float(), dim=-1)
    teacher = F.normalize(teacher_patches.detach().float(), dim=-1)
    return F.mse_loss(student @ student.transpose(1, 2), teacher @ teacher.transpose(1, 2))
