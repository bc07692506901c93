"""Device and autocast choices shared by pretraining and head training.

``precision="auto"`` means bf16 autocast on CUDA and float32 on CPU: CPUs without native bf16
(no AVX512-BF16 / AMX, as the 2-core development machines) run bf16 matmuls several times
slower than float32 (measured 4.6x on the ViT-micro step), and float32 keeps CPU runs exactly
reproducible. ``"bf16"`` forces autocast on any device; ``"fp32"`` disables it.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["PRECISIONS", "autocast_context", "resolve_device", "uses_bf16"]

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other strings as torch understands them.

    Raises
    ------
    ValueError
        For a device string torch does not know, or CUDA requested where there is none.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return resolved


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` turns bf16 autocast on for ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast_context(precision: str, device: torch.device) -> ContextManager[object]:
    """bf16 autocast when :func:`uses_bf16`, else a no-op context."""
    if uses_bf16(precision, device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
