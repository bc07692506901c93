"""One process or ``torchrun`` DDP: the process group and small collective helpers.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address);
:func:`init_distributed` reads them and joins the group with gloo on CPU and nccl on CUDA. With
no ``WORLD_SIZE`` (or 1) nothing is initialised and the helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "all_reduce_mean", "barrier", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0 (it writes checkpoints, logs and progress)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an int, got {value!r}") from exc


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group when launched by ``torchrun`` (else a single-process env).

    Parameters
    ----------
    device : torch.device
        The device type asked for; with CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return DistEnv(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes (a copy; the input is not changed)."""
    out = value.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return out


def barrier() -> None:
    """Wait for all processes (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
