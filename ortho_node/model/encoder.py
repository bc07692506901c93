"""The image encoder: a timm DINOv3 ViT that returns the CLS token and the patch tokens.

timm builds every DINOv3 ViT on its ``Eva`` class with ``rope_type='dinov3'``. This module

- lists the DINOv3 architectures the node accepts (:data:`DINOV3_ARCHS`) and registers two
  micro-sized ones with the same DINOv3 settings, for fast tests and the CPU demo model
  (:data:`MICRO_ARCHS`);
- describes an architecture without allocating its weights (:func:`arch_info`,
  :func:`arch_state_shapes`, both built on the ``meta`` device);
- wraps the timm model in :class:`OrthoEncoder`, whose forward returns an
  :class:`EncoderOutput` (CLS token, patch tokens without the register tokens, patch grid) and
  which keeps the checkpoint's RoPE periods instead of timm's regenerated ones.

Why the RoPE periods need care: timm's ``rope.periods`` buffer is non-persistent, so it is not
in any state dict, and it is regenerated in float32 on construction and on every dtype cast.
Meta and OrthoFoundation checkpoints carry bf16-rounded periods, and the encoder must use those
to reproduce the original model. :class:`OrthoEncoder` keeps them in its own persistent float32
buffer ``rope_periods`` and pushes them into the timm module after loading and after every
``.to()`` / ``.half()`` / ``.bfloat16()``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.eva import Eva
from torch import nn

__all__ = [
    "DINOV3_ARCHS",
    "MICRO_ARCHS",
    "SUPPORTED_ARCHS",
    "ArchInfo",
    "EncoderOutput",
    "OrthoEncoder",
    "arch_info",
    "arch_state_shapes",
    "available_archs",
    "build_encoder",
    "encoder_state_shapes",
]

DINOV3_ARCHS: tuple[str, ...] = (
    "vit_small_patch16_dinov3",
    "vit_small_patch16_dinov3_qkvb",
    "vit_small_plus_patch16_dinov3",
    "vit_small_plus_patch16_dinov3_qkvb",
    "vit_base_patch16_dinov3",
    "vit_base_patch16_dinov3_qkvb",
    "vit_large_patch16_dinov3",
    "vit_large_patch16_dinov3_qkvb",
    "vit_huge_plus_patch16_dinov3",
    "vit_huge_plus_patch16_dinov3_qkvb",
    "vit_tiny_patch16_dinov3_qkvb",
)
"""timm DINOv3 ViTs the node accepts. The ``_qkvb`` variants carry q and v biases; the plain
ones have none (Meta's distilled S/B/L/H+ checkpoints have all-zero biases, so either loads
them). ``vit_tiny_patch16_dinov3_qkvb`` (EUPE) exists in timm releases from 2026-05 on."""

MICRO_ARCHS: tuple[str, ...] = (
    "ortho_vit_micro_patch16_dinov3",
    "ortho_vit_micro_patch16_dinov3_qkvb",
)
"""DINOv3 ViT-S/16 settings at micro size (embed 96, depth 4, 3 heads; about 0.5M parameters).
For fast tests and the demo model the training package pretrains on CPU; not a clinical model."""

SUPPORTED_ARCHS: tuple[str, ...] = DINOV3_ARCHS + MICRO_ARCHS

_MICRO_SIZE = {"embed_dim": 96, "depth": 4, "num_heads": 3}

default_cfgs = generate_default_cfgs(
    {
        name: {
            "url": "",
            "input_size": (3, 224, 224),
            "crop_pct": 1.0,
            "interpolation": "bicubic",
            "num_classes": 0,
            "license": "apache-2.0",
        }
        for name in MICRO_ARCHS
    }
)


def _micro(variant: str, base: str, pretrained: bool, kwargs: dict[str, Any]) -> Eva:
    # Built by timm's own DINOv3 entry point with only the size overridden, so every other
    # setting (RoPE, registers, layer scale, norm eps) stays exactly DINOv3's.
    if pretrained:
        raise RuntimeError(f"{variant} has no pretrained weights; build it with pretrained=False")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    cfg = default_cfgs[variant].cfgs[""]
    return timm.create_model(
        base,
        pretrained=False,
        pretrained_cfg={**cfg.to_dict(), "architecture": variant},
        **{**_MICRO_SIZE, **kwargs},
    )


@register_model
def ortho_vit_micro_patch16_dinov3(pretrained: bool = False, **kwargs: Any) -> Eva:
    """DINOv3-style ViT at micro size, no q/v bias (see :data:`MICRO_ARCHS`)."""
    return _micro("ortho_vit_micro_patch16_dinov3", "vit_small_patch16_dinov3", pretrained, kwargs)


@register_model
def ortho_vit_micro_patch16_dinov3_qkvb(pretrained: bool = False, **kwargs: Any) -> Eva:
    """DINOv3-style ViT at micro size with q/v bias (see :data:`MICRO_ARCHS`)."""
    return _micro(
        "ortho_vit_micro_patch16_dinov3_qkvb", "vit_small_patch16_dinov3_qkvb", pretrained, kwargs
    )


def available_archs() -> tuple[str, ...]:
    """Return the supported architectures that the installed timm can build."""
    return tuple(name for name in SUPPORTED_ARCHS if timm.is_model(name))


def _check_arch(arch: object) -> str:
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a str, got {type(arch).__name__}")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(SUPPORTED_ARCHS)}; got {arch!r}")
    if not timm.is_model(arch):
        raise ValueError(
            f"arch {arch!r} is not available in the installed timm {timm.__version__}; "
            "upgrade timm or choose another architecture"
        )
    return arch


def _create_vit(arch: str, img_size: int | tuple[int, int]) -> Eva:
    # CLS pooling as upstream DINOv3 and OrthoFoundation use; timm's default for these is 'avg'.
    return timm.create_model(
        arch, pretrained=False, num_classes=0, global_pool="token", img_size=img_size
    )


@dataclass(frozen=True)
class ArchInfo:
    """The shape of one encoder architecture, read from a weightless (``meta``) build.

    Attributes
    ----------
    name : str
        timm model name.
    embed_dim, depth, num_heads, patch_size : int
        Transformer width, number of blocks, attention heads, patch side in pixels.
    num_register_tokens : int
        Register ("storage") tokens after the CLS token.
    qkv_bias : bool
        Whether the attention has q and v biases (the ``_qkvb`` variants).
    swiglu : bool
        Whether the MLP is SwiGLU (the "plus" variants) rather than GELU.
    rope_periods : int
        Length of the RoPE periods vector (``head_dim // 4``).
    num_params : int
        Number of parameters.
    """

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    num_register_tokens: int
    qkv_bias: bool
    swiglu: bool
    rope_periods: int
    num_params: int


@functools.lru_cache(maxsize=None)
def _meta_vit(arch: str) -> Eva:
    with torch.device("meta"):
        return _create_vit(arch, 224)


def arch_info(arch: str) -> ArchInfo:
    """Describe an architecture without allocating its weights.

    Parameters
    ----------
    arch : str
        One of :data:`SUPPORTED_ARCHS`.

    Raises
    ------
    TypeError, ValueError
        If ``arch`` is not a supported architecture available in the installed timm.
    """
    vit = _meta_vit(_check_arch(arch))
    block = vit.blocks[0]
    return ArchInfo(
        name=arch,
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        num_heads=block.attn.num_heads,
        patch_size=vit.patch_embed.patch_size[0],
        num_register_tokens=vit.num_prefix_tokens - 1,
        qkv_bias=block.attn.q_bias is not None,
        swiglu=hasattr(block.mlp, "fc1_g"),
        rope_periods=vit.rope.periods.numel(),
        num_params=sum(p.numel() for p in vit.parameters()),
    )


def arch_state_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Return the timm state-dict keys and shapes of an architecture (no weights allocated).

    The keys are those of the bare timm model (``blocks.0.attn.qkv.weight``, ...), without the
    ``vit.`` prefix :class:`OrthoEncoder` adds and without the non-persistent RoPE periods.
    """
    vit = _meta_vit(_check_arch(arch))
    return {key: tuple(value.shape) for key, value in vit.state_dict().items()}


@dataclass(frozen=True)
class EncoderOutput:
    """What the encoder hands to the task heads.

    Attributes
    ----------
    cls : torch.Tensor
        ``[B, D]`` CLS token after the final norm (the image embedding DINOv3 is trained on).
    patches : torch.Tensor
        ``[B, N, D]`` patch tokens after the final norm, row-major over the patch grid; the
        register tokens are dropped.
    grid : tuple of int
        ``(rows, columns)`` of the patch grid, ``rows * columns == N``.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]


class OrthoEncoder(nn.Module):
    """A timm DINOv3 ViT returning :class:`EncoderOutput`.

    Build it with :func:`build_encoder`; load weights with ``load_state_dict`` (bundle format:
    ``vit.*`` plus ``rope_periods``) or through :mod:`ortho_node.model.checkpoint`.

    Parameters
    ----------
    vit : timm.models.eva.Eva
        A DINOv3 Eva model with a class token, RoPE and ``num_classes=0``.
    arch : str
        The timm name it was built from (kept for manifests and error messages).
    """

    rope_periods: torch.Tensor

    def __init__(self, vit: Eva, *, arch: str) -> None:
        if not isinstance(vit, Eva):
            raise TypeError(f"vit must be a timm Eva model, got {type(vit).__name__}")
        if vit.cls_token is None or vit.rope is None or not hasattr(vit.rope, "periods"):
            raise ValueError("vit must be a DINOv3 Eva: a class token and DINOv3 RoPE are required")
        super().__init__()
        self.vit = vit
        self.arch = arch
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.embed_dim: int = vit.embed_dim
        self.num_prefix_tokens: int = vit.num_prefix_tokens
        self.in_chans: int = vit.in_chans
        self.register_buffer(
            "rope_periods", vit.rope.periods.detach().to(torch.float32).clone(), persistent=True
        )
        self.register_load_state_dict_post_hook(_push_periods_after_load)

    def set_rope_periods(self, periods: torch.Tensor) -> None:
        """Use these RoPE periods (e.g. a checkpoint's bf16-rounded ones) from now on.

        Raises
        ------
        TypeError
            If ``periods`` is not a tensor.
        ValueError
            If its shape differs from the model's periods or it has non-positive values.
        """
        if not isinstance(periods, torch.Tensor):
            raise TypeError(f"periods must be a torch.Tensor, got {type(periods).__name__}")
        if tuple(periods.shape) != tuple(self.rope_periods.shape):
            raise ValueError(
                f"periods must have shape {tuple(self.rope_periods.shape)}, "
                f"got {tuple(periods.shape)}"
            )
        if not bool(torch.all(periods > 0)):
            raise ValueError("periods must all be positive")
        with torch.no_grad():
            self.rope_periods.copy_(periods.to(torch.float32))
        self._push_periods()

    def _push_periods(self) -> None:
        with torch.no_grad():
            target = self.vit.rope.periods
            target.copy_(self.rope_periods.to(device=target.device, dtype=target.dtype))

    def _apply(self, fn: Any, recurse: bool = True) -> "OrthoEncoder":
        # A dtype cast would round our periods and make timm regenerate its own; keep both
        # exact (float32) and re-apply ours after any move or cast.
        exact = self.rope_periods.detach().to(torch.float32).clone()
        super()._apply(fn, recurse)
        self.rope_periods = exact.to(self.vit.rope.periods.device)
        self._push_periods()
        return self

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        """Encode a batch of images.

        Parameters
        ----------
        images : torch.Tensor
            ``[B, C, H, W]`` normalised images; ``H`` and ``W`` multiples of the patch size.

        Returns
        -------
        EncoderOutput

        Raises
        ------
        TypeError
            If ``images`` is not a tensor.
        ValueError
            If its shape does not fit the encoder.
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"images must have shape [B, {self.in_chans}, H, W], got {tuple(images.shape)}"
            )
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image height and width must be multiples of {self.patch_size}, "
                f"got {height}x{width}"
            )
        tokens = self.vit.forward_features(images)
        return EncoderOutput(
            cls=tokens[:, 0],
            patches=tokens[:, self.num_prefix_tokens :],
            grid=(height // self.patch_size, width // self.patch_size),
        )


def _push_periods_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    if isinstance(module, OrthoEncoder):
        module._push_periods()


def build_encoder(
    arch: str, *, img_size: int | tuple[int, int] = 224, initialise: bool = True
) -> OrthoEncoder:
    """Build an encoder skeleton to load weights into (or to pretrain from scratch).

    Nothing in the node runs an encoder that was not loaded from a checksummed bundle or a
    checkpoint; the weights built here are placeholders.

    Parameters
    ----------
    arch : str
        One of :data:`SUPPORTED_ARCHS`.
    img_size : int or (int, int), optional
        Nominal input size (default 224). The encoder accepts any size that is a multiple of
        the patch size; this one is recorded in the timm config.
    initialise : bool, optional
        True (default): timm's random initialisation. False: parameters are allocated but
        left uninitialised (much faster for large models) and must be loaded before use;
        computed buffers (RoPE periods, the zero k bias) are still filled.

    Raises
    ------
    TypeError, ValueError
        For an unknown architecture or a bad ``img_size``.
    """
    _check_arch(arch)
    sizes = (img_size, img_size) if isinstance(img_size, int) else img_size
    if (
        not isinstance(sizes, tuple)
        or len(sizes) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
    ):
        raise ValueError(f"img_size must be a positive int or (height, width), got {img_size!r}")
    patch = arch_info(arch).patch_size
    if sizes[0] % patch or sizes[1] % patch:
        raise ValueError(f"img_size must be a multiple of the patch size {patch}, got {img_size!r}")
    if initialise:
        return OrthoEncoder(_create_vit(arch, sizes), arch=arch)
    with torch.device("meta"):
        vit = _create_vit(arch, sizes)
    vit = vit.to_empty(device="cpu")
    for module in vit.modules():
        # timm's hook for buffers computed from the config (RoPE periods, the zero k bias).
        if module is not vit and hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    return OrthoEncoder(vit, arch=arch)


def encoder_state_shapes(arch: str) -> Mapping[str, tuple[int, ...]]:
    """Return the keys and shapes of an :class:`OrthoEncoder` state dict for ``arch``."""
    shapes = {f"vit.{key}": shape for key, shape in arch_state_shapes(arch).items()}
    shapes["rope_periods"] = (arch_info(arch).rope_periods,)
    return shapes
