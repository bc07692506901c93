"""Save and load the result of head training (``heads.pt``): encoder, heads, calibration.

The file (``torch.save`` of tensors and plain containers, loadable with ``weights_only=True``)
holds the encoder architecture, input size and weights, each head's spec (as the manifest
writes it) and weights, the fitted temperatures and the training history. ``ortho-train
export`` turns it into a model bundle.

Version 2 adds what export needs to label the bundle honestly: each head's count of training
and validation samples (a head with no training sample is exported ``trained: false``) and
whether the data held phantoms (``synthetic``). Version 1 files still load; for them these are
``None`` (unknown).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ortho_node.model.encoder import OrthoEncoder, build_encoder
from ortho_node.model.head_module import TaskHead
from ortho_node.model.heads import HeadSpec
from training.heads.finetune import TrainedHeads

__all__ = ["HEADS_FORMAT", "HEADS_VERSION", "SavedHeads", "load_heads", "save_heads"]

HEADS_FORMAT = "ortho-train-heads"
HEADS_VERSION = 2
_READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class SavedHeads:
    """A loaded ``heads.pt``; ``train_samples``, ``val_samples`` and ``synthetic`` are None for
    version 1 files, which did not record them."""

    encoder: OrthoEncoder
    heads: dict[str, TaskHead]
    temperatures: dict[str, float]
    image_size: int
    history: list[dict[str, Any]]
    version: int = HEADS_VERSION
    train_samples: dict[str, int] | None = None
    val_samples: dict[str, int] | None = None
    synthetic: bool | None = None


def save_heads(path: str | os.PathLike[str], trained: TrainedHeads, *, image_size: int) -> Path:
    """Write ``trained`` (atomically) and return the path.

    Raises
    ------
    ValueError
        If ``trained`` lacks a head's sample count (not made by ``train_heads``).
    """
    path = Path(path)
    model = trained.model
    uncounted = [name for name in model.heads if name not in trained.train_samples]
    if uncounted:
        raise ValueError(f"no training sample count for heads {uncounted}")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": HEADS_FORMAT,
        "version": HEADS_VERSION,
        "synthetic": bool(trained.synthetic),
        "arch": model.encoder.arch,
        "image_size": image_size,
        "encoder": {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()},
        "heads": {
            name: {
                "spec": head.spec.to_dict(),
                "state": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                "train_samples": int(trained.train_samples[name]),
                "val_samples": int(trained.val_samples.get(name, 0)),
            }
            for name, head in model.heads.items()
        },
        "temperatures": dict(trained.temperatures),
        "history": list(trained.history),
    }
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, staging)
    os.replace(staging, path)
    return path


def load_heads(path: str | os.PathLike[str]) -> SavedHeads:
    """Read a ``heads.pt``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a heads file of this package.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"heads file not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != HEADS_FORMAT:
        raise ValueError(
            f"{path.name} is not an {HEADS_FORMAT} file (written by ortho-train finetune)"
        )
    version = data.get("version")
    if version not in _READABLE_VERSIONS:
        raise ValueError(
            f"{path.name} is {HEADS_FORMAT} version {version!r}; this package reads "
            f"versions {', '.join(map(str, _READABLE_VERSIONS))}"
        )
    encoder = build_encoder(data["arch"], img_size=int(data["image_size"]), initialise=False)
    encoder.load_state_dict(data["encoder"])
    heads = {}
    for name, entry in data["heads"].items():
        head = TaskHead(HeadSpec.from_dict(entry["spec"]), embed_dim=encoder.embed_dim)
        head.load_state_dict(entry["state"])
        heads[name] = head
    return SavedHeads(
        encoder=encoder,
        heads=heads,
        temperatures={k: float(v) for k, v in data["temperatures"].items()},
        image_size=int(data["image_size"]),
        history=list(data["history"]),
        version=int(version),
        train_samples=_counts(data, "train_samples"),
        val_samples=_counts(data, "val_samples"),
        synthetic=None if version < 2 else bool(data["synthetic"]),
    )


def _counts(data: dict[str, Any], key: str) -> dict[str, int] | None:
    # Version 1 did not count samples: None says "unknown", not "none".
    if data["version"] < 2:
        return None
    return {name: int(entry[key]) for name, entry in data["heads"].items()}
