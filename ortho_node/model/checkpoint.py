"""Turn encoder checkpoints (Meta DINOv3, OrthoFoundation, timm) into :class:`OrthoEncoder` weights.

The steps are pure functions over state dicts, each testable on a small dict:

1. :func:`unwrap_state_dict` finds the tensors inside a training checkpoint
   (``teacher`` / ``model_ema`` / ``model`` / ``state_dict`` / ``student`` / ``module`` ...).
2. :func:`strip_prefixes` removes ``module.``, ``_orig_mod.`` and ``backbone.`` in any order
   or nesting; when some keys sit under ``backbone.``, the rest (a DINO head) is discarded.
3. :func:`convert_dinov3_keys` renames Meta DINOv3 keys to timm's Eva names
   (``storage_tokens`` -> ``reg_token``, ``ls1.gamma`` -> ``gamma_1``, SwiGLU ``w1/w2/w3`` ->
   ``fc1_g/fc1_x/fc2``), splits ``qkv.bias`` (after applying ``bias_mask``) into ``q_bias`` and
   ``v_bias``, keeps ``rope_embed.periods`` aside and drops pretraining-only keys.
4. :func:`infer_arch` / :func:`fit_to_arch` match the result against a timm architecture and
   fail with the first missing / unexpected / mis-shaped keys when it does not fit.

:func:`filter_checkpoint` runs steps 1-3; :func:`load_encoder_checkpoint` runs everything and
returns a loaded encoder. timm's own ``checkpoint_filter_fn`` is not used: it silently drops
``qkv.bias`` when the target has no bias parameter (and prints the exception), while a
checkpoint with non-zero q/v biases must be loaded into a ``_qkvb`` variant or refused.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ortho_node.model.encoder import (
    OrthoEncoder,
    arch_info,
    arch_state_shapes,
    available_archs,
    build_encoder,
)

__all__ = [
    "CONTAINER_KEYS",
    "STRIPPED_PREFIXES",
    "CheckpointError",
    "CheckpointSummary",
    "FilteredCheckpoint",
    "ImportedEncoder",
    "StateMismatch",
    "compare_state_shapes",
    "convert_dinov3_keys",
    "filter_checkpoint",
    "fit_to_arch",
    "infer_arch",
    "is_dinov3_format",
    "load_checkpoint_file",
    "load_encoder_checkpoint",
    "strip_prefixes",
    "summarize_checkpoint",
    "unwrap_state_dict",
]

CONTAINER_KEYS: tuple[str, ...] = (
    "teacher",
    "model_ema",
    "model",
    "state_dict",
    "student",
    "module",
    "backbone",
)
"""Keys under which training checkpoints nest their weights, in order of preference: the DINO
teacher (EMA) is the model evaluated after self-supervised training, so it wins over the
student when both are present."""

STRIPPED_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "backbone.")
"""Key prefixes added by DistributedDataParallel, ``torch.compile`` and DINO's MultiCropWrapper."""

HEADS_PREFIX = "heads."
"""Task-head weights in a checkpoint (ortho-node's own naming) are kept apart from the encoder."""

_DISCARDED_DINOV3 = re.compile(r"^(mask_token|local_cls_norm\..*|projectors\..*)$")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_MISMATCH_LIMIT = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot become the requested encoder; the message says what to fix."""


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class StateMismatch:
    """Differences between the keys/shapes found and those an architecture expects."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    wrong_shape: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    """``(key, expected shape, found shape)`` triples."""

    @property
    def ok(self) -> bool:
        """True when every expected key is present with its shape and nothing else is."""
        return not (self.missing or self.unexpected or self.wrong_shape)

    @property
    def count(self) -> int:
        """Total number of differences."""
        return len(self.missing) + len(self.unexpected) + len(self.wrong_shape)

    def describe(self, *, limit: int = _MISMATCH_LIMIT) -> str:
        """Return a readable multi-line list of the first ``limit`` differences of each kind."""
        lines = [
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.wrong_shape)} with the wrong shape (first {limit} of each listed)"
        ]
        lines += [f"  missing:     {key}" for key in self.missing[:limit]]
        lines += [f"  unexpected:  {key}" for key in self.unexpected[:limit]]
        lines += [
            f"  wrong shape: {key} expected {list(expected)}, found {list(found)}"
            for key, expected, found in self.wrong_shape[:limit]
        ]
        return "\n".join(lines)


def _natural_key(key: str) -> tuple[Any, ...]:
    # blocks.2 before blocks.10, so "first mismatches" means the first in the model.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))


def compare_state_shapes(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> StateMismatch:
    """Compare two ``key -> shape`` maps.

    Parameters
    ----------
    found : Mapping[str, tuple of int]
        Keys and shapes present (e.g. from a checkpoint).
    expected : Mapping[str, tuple of int]
        Keys and shapes the model needs.
    """
    return StateMismatch(
        missing=tuple(sorted(set(expected) - set(found), key=_natural_key)),
        unexpected=tuple(sorted(set(found) - set(expected), key=_natural_key)),
        wrong_shape=tuple(
            (key, tuple(expected[key]), tuple(found[key]))
            for key in sorted(set(found) & set(expected), key=_natural_key)
            if tuple(found[key]) != tuple(expected[key])
        ),
    )


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


# --------------------------------------------------------------------------- steps 1-3


def _is_tensor_dict(obj: Mapping[str, Any]) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(
    checkpoint: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Find the state dict inside a (possibly nested) training checkpoint.

    Parameters
    ----------
    checkpoint : Mapping[str, Any]
        A state dict, or a dict holding one under a key in :data:`CONTAINER_KEYS` (nesting
        allowed, e.g. ``{"model": {"teacher": {...}}}``). Other entries (optimizer, epoch, ...)
        are ignored.

    Returns
    -------
    (dict, tuple of str)
        The tensors, and the path of container keys that led to them.

    Raises
    ------
    TypeError
        If ``checkpoint`` is not a mapping.
    CheckpointError
        If no mapping of tensors can be found.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a mapping, got {type(checkpoint).__name__}")
    path: list[str] = []
    current: Mapping[str, Any] = checkpoint
    while not _is_tensor_dict(current):
        container = next(
            (key for key in CONTAINER_KEYS if isinstance(current.get(key), Mapping)), None
        )
        if container is None:
            where = "/".join(path) or "top level"
            top = ", ".join(sorted(map(str, current))[:12]) or "(empty)"
            raise CheckpointError(
                f"no state dict found in the checkpoint ({where} has keys: {top}); expected a "
                f"mapping of tensors, possibly under one of: {', '.join(CONTAINER_KEYS)}"
            )
        path.append(container)
        current = current[container]
    return {str(key): value for key, value in current.items()}, tuple(path)


def _strip_key(key: str) -> tuple[str, tuple[str, ...]]:
    removed: list[str] = []
    stripping = True
    while stripping:
        stripping = False
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                removed.append(prefix)
                stripping = True
    return key, tuple(removed)


def strip_prefixes(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], tuple[str, ...], tuple[str, ...]]:
    """Remove wrapper prefixes (:data:`STRIPPED_PREFIXES`) in any order and nesting.

    When some keys sit under ``backbone.`` (a whole DINO MultiCropWrapper), the keys outside it
    are discarded (the DINO projection head is pretraining-only); ``heads.*`` task-head keys
    are always kept.

    Returns
    -------
    (dict, tuple of str, tuple of str)
        The renamed state, the distinct prefixes removed, and the discarded keys.

    Raises
    ------
    CheckpointError
        If two keys collapse to the same name.
    """
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    removed_any: list[str] = []
    under_backbone: set[str] = set()
    for key, value in state.items():
        new_key, removed = _strip_key(key)
        if new_key in renamed:
            raise CheckpointError(
                f"keys {origin[new_key]!r} and {key!r} both become {new_key!r} once wrapper "
                "prefixes are removed; the checkpoint mixes two models"
            )
        renamed[new_key] = value
        origin[new_key] = key
        removed_any += [p for p in removed if p not in removed_any]
        if "backbone." in removed:
            under_backbone.add(new_key)
    discarded: tuple[str, ...] = ()
    if under_backbone:
        discarded = tuple(
            origin[k] for k in renamed if k not in under_backbone and not k.startswith(HEADS_PREFIX)
        )
        renamed = {
            k: v for k, v in renamed.items() if k in under_backbone or k.startswith(HEADS_PREFIX)
        }
    return renamed, tuple(removed_any), discarded


def is_dinov3_format(state: Mapping[str, torch.Tensor]) -> bool:
    """True for Meta DINOv3 key names (``storage_tokens``, ``ls1.gamma``, ``rope_embed``...)."""
    return any(
        key in ("storage_tokens", "rope_embed.periods")
        or key.endswith((".ls1.gamma", ".ls2.gamma", ".qkv.bias_mask"))
        for key in state
    )


def _split_qkv_bias(
    key: str, bias: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if bias.ndim != 1 or bias.shape[0] % 3:
        raise CheckpointError(
            f"{key} must be a vector of 3 x embed_dim values, got {list(bias.shape)}"
        )
    if mask is not None:
        if mask.shape != bias.shape:
            raise CheckpointError(
                f"{key}_mask has shape {list(mask.shape)}, expected {list(bias.shape)}"
            )
        bias = bias * mask.to(bias.dtype)
    q_bias, k_bias, v_bias = bias.chunk(3)
    if bool(k_bias.ne(0).any()):
        # timm's Eva has no k bias (DINOv3 masks it); an active one cannot be represented.
        raise CheckpointError(
            f"{key} has a non-zero key (k) bias that no bias_mask removes; DINOv3 encoders "
            "have no k bias, so this checkpoint is not a DINOv3 ViT this node can load"
        )
    return q_bias, v_bias


def convert_dinov3_keys(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, tuple[str, ...]]:
    """Rename a Meta DINOv3 state dict (prefixes already stripped) to timm Eva names.

    Returns
    -------
    (dict, torch.Tensor or None, tuple of str)
        The timm-named state (``q_bias``/``v_bias`` present wherever the checkpoint had
        ``qkv.bias``, even all-zero ones), the checkpoint's ``rope_embed.periods`` (None when
        absent), and the pretraining-only keys dropped.

    Raises
    ------
    CheckpointError
        On a malformed ``qkv.bias`` or an active k bias.
    """
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    periods = state.get("rope_embed.periods")
    for key, value in state.items():
        if key == "rope_embed.periods" or key.endswith(".qkv.bias_mask"):
            continue  # periods are returned apart; masks are applied to their bias below
        if _DISCARDED_DINOV3.match(key):
            dropped.append(key)
            continue
        if key.endswith(".attn.qkv.bias"):
            q_bias, v_bias = _split_qkv_bias(key, value, state.get(key + "_mask"))
            stem = key[: -len("qkv.bias")]
            converted[stem + "q_bias"] = q_bias
            converted[stem + "v_bias"] = v_bias
            continue
        new_key = "reg_token" if key == "storage_tokens" else key
        new_key = new_key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
        new_key = (
            new_key.replace(".mlp.w1.", ".mlp.fc1_g.")
            .replace(".mlp.w2.", ".mlp.fc1_x.")
            .replace(".mlp.w3.", ".mlp.fc2.")
        )
        converted[new_key] = value
    return converted, periods, tuple(dropped)


@dataclass(frozen=True)
class FilteredCheckpoint:
    """A checkpoint reduced to timm Eva key names, plus what was learned on the way.

    Attributes
    ----------
    state : Mapping[str, torch.Tensor]
        Encoder tensors under timm names. ``q_bias``/``v_bias`` are kept whenever the source
        had them, so :func:`fit_to_arch` can decide whether they matter.
    rope_periods : torch.Tensor or None
        The checkpoint's RoPE periods (Meta format only; timm never saves them).
    head_state : Mapping[str, torch.Tensor]
        Task-head tensors found under ``heads.`` (key without that prefix).
    source_format : {"dinov3", "timm"}
        Key naming of the source.
    container : tuple of str
        Container keys unwrapped (e.g. ``("teacher",)``).
    stripped_prefixes : tuple of str
        Wrapper prefixes removed.
    discarded : tuple of str
        Keys dropped as pretraining-only or outside the backbone.
    """

    state: Mapping[str, torch.Tensor]
    rope_periods: torch.Tensor | None
    head_state: Mapping[str, torch.Tensor] = field(default_factory=dict)
    source_format: Literal["dinov3", "timm"] = "timm"
    container: tuple[str, ...] = ()
    stripped_prefixes: tuple[str, ...] = ()
    discarded: tuple[str, ...] = ()

    @property
    def has_qkv_bias(self) -> bool:
        """True when the checkpoint carries q/v biases (zero or not)."""
        return any(key.endswith((".q_bias", ".v_bias")) for key in self.state)

    @property
    def qkv_bias_nonzero(self) -> bool:
        """True when any q or v bias is non-zero (only a ``_qkvb`` encoder can use them)."""
        return any(
            bool(value.ne(0).any())
            for key, value in self.state.items()
            if key.endswith((".q_bias", ".v_bias"))
        )


def filter_checkpoint(checkpoint: Mapping[str, Any]) -> FilteredCheckpoint:
    """Unwrap, strip prefixes and rename a checkpoint to timm Eva names (steps 1-3).

    Parameters
    ----------
    checkpoint : Mapping[str, Any]
        What ``torch.load`` / ``safetensors`` returned: a Meta DINOv3, OrthoFoundation
        (``backbone.`` under ``module.``), or timm state dict, possibly inside containers.

    Raises
    ------
    TypeError
        If ``checkpoint`` is not a mapping.
    CheckpointError
        If no state dict is found, keys collide, or the q/k/v bias is unusable.
    """
    state, container = unwrap_state_dict(checkpoint)
    state, stripped, discarded = strip_prefixes(state)
    heads = {k[len(HEADS_PREFIX) :]: v for k, v in state.items() if k.startswith(HEADS_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(HEADS_PREFIX)}
    if is_dinov3_format(state):
        state, periods, dropped = convert_dinov3_keys(state)
        source: Literal["dinov3", "timm"] = "dinov3"
    else:
        periods, dropped, source = None, (), "timm"
    return FilteredCheckpoint(
        state=state,
        rope_periods=periods,
        head_state=heads,
        source_format=source,
        container=container,
        stripped_prefixes=stripped,
        discarded=discarded + dropped,
    )


# --------------------------------------------------------------------------- step 4


@dataclass(frozen=True)
class CheckpointSummary:
    """What a filtered checkpoint looks like, for messages and architecture inference."""

    embed_dim: int | None
    depth: int
    num_register_tokens: int
    patch_size: int | None
    swiglu: bool
    qkv_bias_nonzero: bool
    rope_periods: int | None

    def describe(self) -> str:
        """One line: embed dim, depth, registers, patch, MLP kind, q/v bias."""
        return (
            f"embed_dim={self.embed_dim}, depth={self.depth}, "
            f"register tokens={self.num_register_tokens}, patch={self.patch_size}, "
            f"mlp={'SwiGLU' if self.swiglu else 'GELU'}, "
            f"q/v bias={'non-zero' if self.qkv_bias_nonzero else 'zero or absent'}"
        )


def summarize_checkpoint(checkpoint: FilteredCheckpoint) -> CheckpointSummary:
    """Read embed dim, depth, register tokens, patch size and MLP kind from the keys/shapes."""
    state = checkpoint.state
    cls_token = state.get("cls_token")
    reg_token = state.get("reg_token")
    patch = state.get("patch_embed.proj.weight")
    blocks = {int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key))}
    return CheckpointSummary(
        embed_dim=int(cls_token.shape[-1]) if cls_token is not None else None,
        depth=max(blocks) + 1 if blocks else 0,
        num_register_tokens=int(reg_token.shape[1]) if reg_token is not None else 0,
        patch_size=int(patch.shape[-1]) if patch is not None and patch.ndim == 4 else None,
        swiglu=any(".mlp.fc1_g." in key for key in state),
        qkv_bias_nonzero=checkpoint.qkv_bias_nonzero,
        rope_periods=(
            int(checkpoint.rope_periods.numel()) if checkpoint.rope_periods is not None else None
        ),
    )


def _without_qv_bias(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: v for k, v in shapes.items() if not k.endswith((".q_bias", ".v_bias"))}


def _structural_mismatch(checkpoint: FilteredCheckpoint, arch: str) -> StateMismatch:
    mismatch = compare_state_shapes(
        _without_qv_bias(_shapes(checkpoint.state)), _without_qv_bias(arch_state_shapes(arch))
    )
    return _with_periods_check(mismatch, checkpoint, arch)


def _with_periods_check(
    mismatch: StateMismatch, checkpoint: FilteredCheckpoint, arch: str
) -> StateMismatch:
    expected = arch_info(arch).rope_periods
    periods = checkpoint.rope_periods
    if periods is None or tuple(periods.shape) == (expected,):
        return mismatch
    return StateMismatch(
        missing=mismatch.missing,
        unexpected=mismatch.unexpected,
        wrong_shape=mismatch.wrong_shape
        + (("rope_embed.periods", (expected,), tuple(periods.shape)),),
    )


def infer_arch(checkpoint: FilteredCheckpoint) -> str:
    """Pick the timm architecture a filtered checkpoint fits.

    Every available architecture is compared on keys and shapes (embed dim, depth, register
    tokens, MLP kind, RoPE periods length), q/v biases aside. Among those that fit, a
    checkpoint with non-zero q/v biases needs a ``_qkvb`` variant; one with zero or no biases
    gets the plain variant (identical outputs, fewer parameters) where one exists.

    Raises
    ------
    CheckpointError
        If no architecture fits (the message lists the closest one's mismatches) or only
        bias-free variants fit a checkpoint whose q/v biases are non-zero.
    """
    if not isinstance(checkpoint, FilteredCheckpoint):
        raise TypeError(
            f"checkpoint must be a FilteredCheckpoint, got {type(checkpoint).__name__}"
        )
    summary = summarize_checkpoint(checkpoint)
    mismatches = {arch: _structural_mismatch(checkpoint, arch) for arch in available_archs()}
    fitting = [arch for arch, mismatch in mismatches.items() if mismatch.ok]
    if not fitting:
        closest = min(mismatches, key=lambda arch: mismatches[arch].count)
        raise CheckpointError(
            f"no supported architecture fits this checkpoint ({summary.describe()}). "
            f"Supported: {', '.join(available_archs())}.\n"
            f"Closest is {closest}: {mismatches[closest].describe()}"
        )
    with_bias = [arch for arch in fitting if arch_info(arch).qkv_bias]
    without_bias = [arch for arch in fitting if not arch_info(arch).qkv_bias]
    if summary.qkv_bias_nonzero:
        if not with_bias:
            raise CheckpointError(
                f"the checkpoint has non-zero q/v biases but only {', '.join(fitting)} fit, "
                "which have no q/v bias; loading it there would silently change the model"
            )
        candidates = with_bias
    else:
        candidates = without_bias or with_bias
    if len(candidates) > 1:
        raise CheckpointError(
            f"the checkpoint fits several architectures ({', '.join(candidates)}); choose one "
            "explicitly (--arch)"
        )
    return candidates[0]


def fit_to_arch(checkpoint: FilteredCheckpoint, arch: str) -> dict[str, torch.Tensor]:
    """Return the checkpoint's encoder state ready for ``build_encoder(arch).vit``.

    - A bias-free ``arch`` drops all-zero q/v biases and refuses non-zero ones.
    - A ``_qkvb`` ``arch`` gets exact zero q/v biases where the checkpoint has none (the same
      function as a bias-free model).

    Raises
    ------
    CheckpointError
        With the first missing / unexpected / mis-shaped keys when the checkpoint does not fit,
        or when non-zero q/v biases would be dropped.
    """
    info = arch_info(arch)
    expected = arch_state_shapes(arch)
    state = dict(checkpoint.state)
    if not info.qkv_bias and checkpoint.has_qkv_bias:
        if checkpoint.qkv_bias_nonzero:
            raise CheckpointError(
                f"the checkpoint has non-zero q/v biases but {arch} has none; "
                f"use {arch}_qkvb (or leave the architecture to inference)"
            )
        state = {k: v for k, v in state.items() if not k.endswith((".q_bias", ".v_bias"))}
    if info.qkv_bias and not checkpoint.has_qkv_bias:
        for key, shape in expected.items():
            if key.endswith((".q_bias", ".v_bias")):
                state[key] = torch.zeros(shape)
    mismatch = _with_periods_check(compare_state_shapes(_shapes(state), expected), checkpoint, arch)
    if not mismatch.ok:
        summary = summarize_checkpoint(checkpoint)
        raise CheckpointError(
            f"the checkpoint ({summary.describe()}) does not fit {arch}: {mismatch.describe()}"
        )
    return state


# --------------------------------------------------------------------------- files and loading


def load_checkpoint_file(path: str | Path, *, allow_pickle: bool = False) -> Mapping[str, Any]:
    """Read a checkpoint file into memory (CPU).

    Parameters
    ----------
    path : str or Path
        ``.safetensors`` files are read with safetensors; anything else with ``torch.load``.
    allow_pickle : bool, optional
        ``torch.load`` reads tensors and plain containers only (``weights_only=True``) unless
        this is True. Only set it for a checkpoint from a source you trust: unpickling can run
        arbitrary code.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CheckpointError
        If the file cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path.name} is not a readable safetensors file: {exc}") from exc
    try:
        # mmap (zip-format files only): a 1.2 GB checkpoint is paged in as it is read
        # instead of copied up front.
        loaded = torch.load(
            path,
            map_location="cpu",
            weights_only=not allow_pickle,
            mmap=zipfile.is_zipfile(path),
        )
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # torch's wording for a disallowed object
            raise CheckpointError(
                f"{path.name} is not a readable PyTorch checkpoint (torch.load failed)"
            ) from exc
        raise CheckpointError(
            f"{path.name} holds Python objects besides tensors, which are not loaded by default "
            "because unpickling can run code. If you trust its source, allow it explicitly "
            "(allow_pickle=True, --allow-pickle)."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{path.name} holds a {type(loaded).__name__}, expected a dict of tensors"
        )
    return loaded


@dataclass(frozen=True)
class ImportedEncoder:
    """An encoder loaded from a checkpoint, with what was done to get there."""

    encoder: OrthoEncoder
    arch: str
    arch_inferred: bool
    checkpoint: FilteredCheckpoint

    @property
    def notes(self) -> tuple[str, ...]:
        """Readable lines describing the conversion, for the import report."""
        ckpt = self.checkpoint
        notes = [
            f"architecture: {self.arch} ({'inferred' if self.arch_inferred else 'given'})",
            f"key format: {'Meta DINOv3' if ckpt.source_format == 'dinov3' else 'timm'}",
        ]
        if ckpt.container:
            notes.append(f"weights taken from: {'/'.join(ckpt.container)}")
        if ckpt.stripped_prefixes:
            notes.append(f"prefixes removed: {', '.join(ckpt.stripped_prefixes)}")
        if ckpt.discarded:
            notes.append(f"keys discarded (pretraining only): {len(ckpt.discarded)}")
        notes.append(
            "RoPE periods: copied from the checkpoint"
            if ckpt.rope_periods is not None
            else "RoPE periods: none in the checkpoint, timm's float32 periods used"
        )
        if ckpt.has_qkv_bias:
            notes.append(
                f"q/v bias: {'non-zero' if ckpt.qkv_bias_nonzero else 'all zero'}"
            )
        return tuple(notes)


def load_encoder_checkpoint(
    checkpoint: str | Path | Mapping[str, Any],
    *,
    arch: str | None = None,
    img_size: int | tuple[int, int] = 224,
    allow_pickle: bool = False,
) -> ImportedEncoder:
    """Build an encoder and load a checkpoint into it (strictly).

    Parameters
    ----------
    checkpoint : str, Path or Mapping
        A checkpoint file, or what loading one returned.
    arch : str, optional
        timm architecture; inferred from the keys and shapes when omitted.
    img_size : int or (int, int), optional
        Nominal input size recorded in the encoder (default 224).
    allow_pickle : bool, optional
        Passed to :func:`load_checkpoint_file`.

    Raises
    ------
    FileNotFoundError
        If a checkpoint path does not exist.
    CheckpointError
        If the checkpoint cannot be read or does not fit the architecture.
    """
    if isinstance(checkpoint, (str, Path)):
        checkpoint = load_checkpoint_file(checkpoint, allow_pickle=allow_pickle)
    filtered = filter_checkpoint(checkpoint)
    chosen = infer_arch(filtered) if arch is None else arch
    state = fit_to_arch(filtered, chosen)
    encoder = build_encoder(chosen, img_size=img_size, initialise=False)
    encoder.vit.load_state_dict(state, strict=True)
    if filtered.rope_periods is not None:
        encoder.set_rope_periods(filtered.rope_periods)
    encoder.eval()
    return ImportedEncoder(
        encoder=encoder, arch=chosen, arch_inferred=arch is None, checkpoint=filtered
    )
