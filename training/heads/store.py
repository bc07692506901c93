"""Save and load the result of head training (``heads.pt``): encoder, heads, calibration.

The file (``torch.save`` of tensors and plain containers, loadable with ``weights_only=True``)
holds the encoder architecture, input size and weights, each head's spec (as the manifest
writes it) and weights, the fitted temperatures and the training history. ``ortho-train
export`` turns it into a model bundle.
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

__all__ = ["HEADS_FORMAT", "SavedHeads", "load_heads", "save_heads"]

HEADS_FORMAT = "ortho-train-heads"


@dataclass(frozen=True)
class SavedHeads:
    """A loaded ``heads.pt``."""

    encoder: OrthoEncoder
    heads: dict[str, TaskHead]
    temperatures: dict[str, float]
    image_size: int
    history: list[dict[str, Any]]


def save_heads(path: str | os.PathLike[str], trained: TrainedHeads, *, image_size: int) -> Path:
    """Write ``trained`` (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = trained.model
    payload = {
        "format": HEADS_FORMAT,
        "version": 1,
        "arch": model.encoder.arch,
        "image_size": image_size,
        "encoder": {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()},
        "heads": {
            name: {
                "spec": head.spec.to_dict(),
                "state": {k: v.detach().cpu() for k, v in head.state_dict().items()},
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
    )
