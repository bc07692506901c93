"""Pretraining checkpoints: everything needed to continue a run exactly.

A checkpoint (``torch.save`` of plain containers and tensors, loadable with
``weights_only=True``) holds: format tag and version, the config, the step (the whole schedule
state: lr, weight decay, momentum and teacher temperature are functions of it), student and
teacher (encoder + DINO head), the Gram teacher if any, AdamW state, the DINO centre, RNG
states (torch, CUDA, numpy, python) and the data position (step, epoch, images seen). It is
written to a temporary file, fsynced and renamed, so a crash never leaves a torn checkpoint;
``checkpoint-last.pt`` is always the newest.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "LAST_CHECKPOINT",
    "capture_rng",
    "is_pretrain_checkpoint",
    "load_state",
    "restore_rng",
    "save_state",
]

CHECKPOINT_FORMAT = "ortho-train-pretrain"
LAST_CHECKPOINT = "checkpoint-last.pt"


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and python as tensors and plain values."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(staging, "wb") as handle:
        torch.save({"format": CHECKPOINT_FORMAT, "version": 1, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    return path


def is_pretrain_checkpoint(data: object) -> bool:
    """True for a mapping written by :func:`save_state`."""
    return isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT


def load_state(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_state`.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a pretraining checkpoint of this package.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = torch.load(path, map_location=map_location, weights_only=True)
    if not is_pretrain_checkpoint(data) or data.get("version") != 1:
        raise ValueError(f"{path.name} is not an {CHECKPOINT_FORMAT} v1 checkpoint")
    return data
