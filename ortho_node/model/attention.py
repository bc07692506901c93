"""The engine's attention for bf16 inference on a CPU: padded keys when eager, written out
as matrix products when compiled.

A DINOv3 ViT at 224 x 224 attends over 201 tokens (class token, four registers, 14 x 14
patches). Two ways past PyTorch's CPU flash-attention kernel, which is slow in bf16 at such a
length:

- **Eager: keys padded to a multiple of 16.** Whole ViT-S/16 forwards at batch 32 ran 13-17 %
  faster (ViT-L/16 at batch 16 about 9 %) with keys and values padded to 208 and the padding
  masked out (2-core AMX CPU, torch 2.14, forwards interleaved in one process). The padded keys
  get a score of -inf, so they take no weight: the same attention, rounded in a different order
  (within one bf16 step). Re-measured on 2026-12-05 (same machine and torch): eager ViT-S/16 b32
  forwards 1,218 ms unpadded against 1,213 ms padded, no gain that day; kept, as it costs nothing.
- **Compiled: written out** as ``softmax(q k^T / sqrt(d)) v`` (:func:`written_out_attention`),
  the scores and the softmax in float32 and the two products in bf16, as autocast computes
  attention without a fused kernel. Inductor fuses the scaling and the softmax and runs the
  products as oneDNN batched matrix products: at batch 32 the ViT-S/16 attention took 11 ms per
  block instead of the flash kernel's 17 ms, and whole compiled, frozen forwards ran 8 % faster
  (ViT-S/16 b32 932 -> 863 ms, ViT-L/16 b16 5.39 -> 5.03 s; same machine, 2026-12-05). Eagerly
  the written-out form is slower than the flash kernel (its products meet the strided views
  timm's attention passes), so eager keeps the padded kernel.

In fp32, and on CUDA, neither pays, and nothing is changed.

:class:`CpuBf16Attention` wraps an encoder; inside its forward a
:class:`~torch.overrides.TorchFunctionMode` rewrites each
``F.scaled_dot_product_attention`` call that qualifies (CPU, bf16, no mask, not causal), so
timm's attention code stays as it is. ``torch.compile`` traces through the mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["KEY_MULTIPLE", "CpuBf16Attention", "padded_keys_attention", "written_out_attention"]

KEY_MULTIPLE = 16
"""Key sequences are padded up to a multiple of this."""


def padded_keys_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, multiple: int = KEY_MULTIPLE
) -> torch.Tensor:
    """``F.scaled_dot_product_attention(query, key, value)`` computed with ``key`` and ``value``
    padded along the sequence to a multiple of ``multiple``, the padding masked out."""
    length = key.shape[-2]
    pad = -length % multiple
    if not pad:
        return F.scaled_dot_product_attention(query, key, value)
    key = F.pad(key, (0, 0, 0, pad))
    value = F.pad(value, (0, 0, 0, pad))
    # An additive mask in the query dtype, broadcast over batch, heads and queries.
    mask = torch.zeros((1, length + pad), dtype=query.dtype, device=query.device)
    mask[:, length:] = float("-inf")
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def written_out_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(query, key, value)`` as two matrix products and a
    softmax: scores and softmax in float32, the products in the inputs' dtype."""
    scores = (query @ key.transpose(-2, -1)).float() * query.shape[-1] ** -0.5
    return scores.softmax(dim=-1).to(value.dtype) @ value


def _qualifies(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if len(args) != 3 or set(kwargs) - {"attn_mask", "dropout_p", "is_causal"}:
        return False  # scale=, enable_gqa= or positional extras: leave the call alone
    if kwargs.get("attn_mask") is not None or kwargs.get("is_causal") or kwargs.get("dropout_p"):
        return False
    query, key, value = args
    return all(
        isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == torch.bfloat16
        for t in (query, key, value)
    )


class _RouteAttention(TorchFunctionMode):
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and _qualifies(args, kwargs):
            if torch.compiler.is_compiling():
                return written_out_attention(*args)
            if args[1].shape[-2] % KEY_MULTIPLE:
                return padded_keys_attention(*args)
        return func(*args, **kwargs)


class CpuBf16Attention(nn.Module):
    """``module`` whose bf16 CPU attention runs with keys padded, or written out when compiled
    (see the module docstring).

    Parameters
    ----------
    module : torch.nn.Module
        Usually an :class:`~ortho_node.model.encoder.OrthoEncoder`; its forward's arguments and
        result pass through unchanged.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with _RouteAttention():
            return self.module(*args, **kwargs)
