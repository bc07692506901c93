"""Where an encoder to train comes from: random init, a model bundle, a pretraining checkpoint
of this package, or a Meta DINOv3 / OrthoFoundation / timm checkpoint (through the node's own
importer, :func:`ortho_node.model.checkpoint.load_encoder_checkpoint`, which strips
``module.`` / ``backbone.``, renames Meta keys and keeps the bf16 RoPE periods).

Nothing here falls back silently: a missing or unfitting file is an error.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from ortho_node.model.encoder import OrthoEncoder, build_encoder

__all__ = ["load_encoder", "pretrain_checkpoint_encoder", "set_layerscale"]


def set_layerscale(encoder: OrthoEncoder, value: float) -> OrthoEncoder:
    """Set every LayerScale gain (timm ``gamma_1`` / ``gamma_2``) of ``encoder`` to ``value``.

    DINOv3 initialises LayerScale at 1e-5, which suits week-long runs of large models: the
    blocks start as near-identities. A micro model trained from scratch for minutes on a CPU
    barely leaves that state (its features hardly depend on the image), so random-init runs
    here may start from a larger gain (e.g. 0.1).

    Raises
    ------
    ValueError
        If ``value`` is not a positive finite number or the encoder has no LayerScale.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value < float("inf")
    ):
        raise ValueError(f"layerscale value must be a positive number, got {value!r}")
    gains = [
        p
        for name, p in encoder.named_parameters()
        if name.rsplit(".", 1)[-1] in ("gamma_1", "gamma_2")
    ]
    if not gains:
        raise ValueError(f"{encoder.arch} has no LayerScale parameters")
    with torch.no_grad():
        for gain in gains:
            gain.fill_(float(value))
    return encoder


def pretrain_checkpoint_encoder(
    state: dict[str, object], *, which: str = "teacher", img_size: int | None = None
) -> OrthoEncoder:
    """The encoder of a loaded pretraining checkpoint (teacher by default, as DINO evaluates).

    Raises
    ------
    ValueError
        If ``which`` is not ``"teacher"`` or ``"student"``.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    config, model_state = state.get("config"), state.get(which)
    if not isinstance(config, dict) or not isinstance(model_state, dict):
        raise ValueError(f"the checkpoint has no config or no {which} weights")
    size = img_size or int(config["global_crop_size"])
    encoder = build_encoder(str(config["arch"]), img_size=size, initialise=False)
    prefix = "encoder."
    encoder.load_state_dict(
        {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}
    )
    return encoder


def load_encoder(
    source: str | os.PathLike[str] | None,
    *,
    arch: str | None,
    img_size: int,
    allow_pickle: bool = False,
    layerscale_init: float | None = None,
) -> OrthoEncoder:
    """A trainable encoder (train mode, gradients on).

    Parameters
    ----------
    source : path-like or None
        None: random initialisation of ``arch``. A folder with ``manifest.json``: a model
        bundle's encoder. A file: a pretraining checkpoint of this package (teacher encoder)
        or any checkpoint the node's importer reads.
    arch : str or None
        Architecture; required for random init; for checkpoints, inferred when None and
        checked when given.
    img_size : int
        Nominal input size recorded in the encoder.
    allow_pickle : bool, optional
        Let the importer unpickle a ``.pth`` holding more than tensors (trusted files only).
    layerscale_init : float, optional
        Random init only: LayerScale gain to start from (see :func:`set_layerscale`).

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    ValueError
        If ``arch`` is missing for random init or disagrees with the checkpoint.
    """
    if source is None:
        if not arch:
            raise ValueError("arch is required to build a randomly initialised encoder")
        encoder = build_encoder(arch, img_size=img_size)
        if layerscale_init is not None:
            set_layerscale(encoder, layerscale_init)
        return encoder.train().requires_grad_(True)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"encoder source not found: {path}")
    if path.is_dir():
        from ortho_node.model import load_bundle

        encoder = load_bundle(path).encoder
    else:
        from training.pretrain.state import is_pretrain_checkpoint

        loaded = None
        if path.suffix in (".pt", ".pth"):
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
                loaded = None  # not ours (e.g. a pickled Meta checkpoint): the importer decides
        if is_pretrain_checkpoint(loaded):
            encoder = pretrain_checkpoint_encoder(loaded, img_size=img_size)  # type: ignore[arg-type]
        else:
            from ortho_node.model.checkpoint import load_encoder_checkpoint

            encoder = load_encoder_checkpoint(
                path, arch=arch, img_size=img_size, allow_pickle=allow_pickle
            ).encoder
    if arch and encoder.arch != arch:
        raise ValueError(
            f"{path.name} holds a {encoder.arch} encoder, but arch {arch!r} was asked for"
        )
    return encoder.train().requires_grad_(True)
