"""Multi-crop views (the DINO recipe on grey planes) and the per-step batch sources.

:class:`MultiCropAugment` makes, from one plane and one seeded generator, the DINO views:
global view 1 (random resized crop, flip, brightness/contrast jitter p=0.8, blur p=1.0),
global view 2 (the same, blur p=0.1, solarisation p=0.2), further global views like view 2,
and local views (small crops, flip, jitter p=0.8, blur p=0.5). Blur sigma is drawn in
[0.1, 2.0] px at 224 px and scaled with the crop size.

Batch sources hand the training loop one rank's share of one global batch per step:

- :class:`MultiCropSteps` (map-style, in memory): global batch ``t`` holds the images at
  positions ``t*B .. (t+1)*B - 1`` of the epoch's permutation (seeded by ``(seed, epoch)``);
  rank ``r`` takes the ``r``-th contiguous block of ``B / world`` of them, and every image's
  views are seeded by ``(seed, epoch, position)``. So the union of the ranks' shares is the
  single-process batch, view for view, and a resumed run restarts at step ``t`` exactly.
- :class:`StreamingMultiCrop` (iterable, from shards): the same views over
  :class:`~training.data.shards.ShardImageStream`, for corpora that do not fit in memory; each
  reader sees its own shards, so it is resumable but not bit-identical across world sizes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ortho_node.model.manifest import IMAGENET_MEAN, IMAGENET_STD
from training.augment import (
    gaussian_blur,
    generator_for,
    jitter_brightness_contrast,
    random_resized_crop,
    solarize,
)
from training.data.corpus import TensorCorpus, to_model_input
from training.data.shards import ShardImageStream
from training.pretrain.config import PretrainConfig

__all__ = ["MultiCropAugment", "MultiCropSteps", "StreamingMultiCrop", "stack_views"]


def _chance(generator: torch.Generator, p: float) -> bool:
    return p > 0 and bool(torch.rand((), generator=generator) < p)


@dataclass(frozen=True)
class MultiCropAugment:
    """DINO multi-crop views of a grey plane (settings from a :class:`PretrainConfig`)."""

    global_size: int
    local_size: int
    n_global: int
    n_local: int
    global_scale: tuple[float, float]
    local_scale: tuple[float, float]
    patch_size: int

    @classmethod
    def from_config(cls, config: PretrainConfig, *, patch_size: int) -> "MultiCropAugment":
        """Views for ``config`` and an encoder with ``patch_size``."""
        return cls(
            global_size=config.global_crop_size,
            local_size=config.local_crop_size,
            n_global=config.n_global_crops,
            n_local=config.n_local_crops,
            global_scale=config.global_crop_scale,
            local_scale=config.local_crop_scale,
            patch_size=patch_size,
        )

    def _view(
        self,
        plane: torch.Tensor,
        size: int,
        scale: tuple[float, float],
        *,
        blur_p: float,
        solarize_p: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        view = random_resized_crop(plane, size, scale=scale, generator=generator)
        if _chance(generator, 0.5):
            view = torch.flip(view, dims=[1])
        if _chance(generator, 0.8):
            view = jitter_brightness_contrast(
                view, brightness=0.4, contrast=0.4, generator=generator
            )
        if _chance(generator, blur_p):
            sigma = (0.1 + 1.9 * float(torch.rand((), generator=generator))) * size / 224.0
            view = gaussian_blur(view, sigma=sigma)
        if _chance(generator, solarize_p):
            view = solarize(view)
        trimmed = size - size % self.patch_size  # what a stride-patch convolution sees
        return view[:trimmed, :trimmed]

    def __call__(
        self, plane: torch.Tensor, *, generator: torch.Generator
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Global and local views (float ``[0, 1]`` planes) of a ``uint8`` or float plane."""
        values = plane.float() / 255.0 if plane.dtype == torch.uint8 else plane.float()
        globals_ = [
            self._view(
                values,
                self.global_size,
                self.global_scale,
                blur_p=1.0 if i == 0 else 0.1,
                solarize_p=0.0 if i == 0 else 0.2,
                generator=generator,
            )
            for i in range(self.n_global)
        ]
        locals_ = [
            self._view(
                values,
                self.local_size,
                self.local_scale,
                blur_p=0.5,
                solarize_p=0.0,
                generator=generator,
            )
            for _ in range(self.n_local)
        ]
        return globals_, locals_


def stack_views(
    views: Sequence[tuple[list[torch.Tensor], list[torch.Tensor]]],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-image views -> crop-major normalised tensors ``[G*b, 3, g, g]``, ``[L*b, 3, l, l]``."""
    n_global, n_local = len(views[0][0]), len(views[0][1])
    global_planes = torch.stack(
        [views[j][0][c] for c in range(n_global) for j in range(len(views))]
    )
    globals_ = to_model_input(global_planes, mean=mean, std=std)
    if not n_local:
        return globals_, None
    local_planes = torch.stack([views[j][1][c] for c in range(n_local) for j in range(len(views))])
    return globals_, to_model_input(local_planes, mean=mean, std=std)


class MultiCropSteps(Dataset):
    """One rank's multi-crop share of global batch ``step`` (rules in the module docstring).

    Parameters
    ----------
    corpus : TensorCorpus
        Images (every plane: radiographs and MR slices mixed).
    augment : MultiCropAugment
        The views.
    batch_size : int
        Global batch.
    seed : int
        Order and view seed.
    total_steps : int
        Length of the dataset (steps of the run).
    rank, world_size : int, optional
        This process's share.

    Raises
    ------
    ValueError
        If the batch does not divide by the world size or exceeds the number of images.
    """

    def __init__(
        self,
        corpus: TensorCorpus,
        augment: MultiCropAugment,
        *,
        batch_size: int,
        seed: int,
        total_steps: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by the world size {world_size}"
            )
        if batch_size > corpus.num_images:
            raise ValueError(f"batch_size {batch_size} exceeds the {corpus.num_images} images")
        self.corpus, self.augment = corpus, augment
        self.batch_size, self.seed, self.total_steps = batch_size, seed, total_steps
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = corpus.num_images // batch_size
        self._epoch: int | None = None
        self._order: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.total_steps

    def positions(self, step: int) -> tuple[int, list[int]]:
        """``(epoch, [global positions of this rank's images])`` for ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        share = self.batch_size // self.world_size
        first = within * self.batch_size + self.rank * share
        return epoch, list(range(first, first + share))

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch != epoch or self._order is None:
            self._order = torch.randperm(
                self.corpus.num_images, generator=generator_for(self.seed, epoch)
            )
            self._epoch = epoch
        return self._order

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        epoch, positions = self.positions(step)
        order = self._permutation(epoch)
        views = [
            self.augment(
                self.corpus.image(int(order[p])), generator=generator_for(self.seed, epoch, p)
            )
            for p in positions
        ]
        return stack_views(views)


class StreamingMultiCrop(IterableDataset):
    """Multi-crop batches of ``batch_size / world_size`` images streamed from a shard folder.

    ``start_step`` batches already consumed (per process) are skipped when iterating, for
    resuming. With ``W`` DataLoader workers, batch ``j`` of a run comes from worker ``j mod W``
    (the DataLoader's round-robin order). A resumed DataLoader asks worker 0 first, but batch
    ``start_step`` belongs to worker ``start_step mod W``, so worker ``w`` of a resumed run
    streams the share of worker ``(start_step + w) mod W``, from that share's next batch.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        augment: MultiCropAugment,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        super().__init__()
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by the world size {world_size}"
            )
        self.root, self.augment = root, augment
        self.share = batch_size // world_size
        self.seed, self.rank, self.world_size, self.start_step = seed, rank, world_size, start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        # Resumed position w holds batch start_step + w: that batch's worker's share, whose
        # (start_step + w) // W earlier batches were used before the restart.
        skipped_batches, role = divmod(self.start_step + worker, workers)
        stream = ShardImageStream(
            self.root,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            start=skipped_batches * self.share,
            worker=role,
        )
        reader, _ = stream._reader()
        pending: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        for plane, epoch, position in stream:
            pending.append(
                self.augment(plane, generator=generator_for(self.seed, epoch, reader, position))
            )
            if len(pending) == self.share:
                yield stack_views(pending)
                pending = []
