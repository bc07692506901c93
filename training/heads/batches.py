"""Batches for head training: radiographs one image per sample, MR series as slice sets.

A head takes a sample when the sample is labelled for it and fits its scope: MR heads take MR
series, the other heads take radiographs of the views the head's scope lists (the KL heads
read AP/PA views only, so lateral radiographs never feed them).

Fine-tuning augmentation is mild on purpose: the node shows the model the whole image fitted
to the input, so views stay close to that (a random crop of 80-100 % of the area, aspect
0.9-1.1, brightness and contrast within 20 %). Images are never flipped: the node mirrors every
knee to the right side, and a flip would swap medial and lateral. All slices of a series get
the same crop and jitter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ortho_node.model.heads import HeadSpec
from training.augment import jitter_brightness_contrast, sample_crop
from training.data.corpus import Sample, TensorCorpus, to_model_input

__all__ = [
    "HeadBatch",
    "augment_planes",
    "make_batch",
    "sample_fits",
    "samples_for_heads",
]

_VIEW_NAMES = {"LAT": "LATERAL", "LL": "LATERAL", "RL": "LATERAL", "ML": "LATERAL"}


def sample_fits(spec: HeadSpec, sample: Sample) -> bool:
    """True when ``sample`` is labelled for ``spec`` and matches its modality and view/plane."""
    if spec.name not in sample.labels or spec.scope.is_mri != sample.is_mri:
        return False
    if sample.is_mri:
        return not spec.scope.planes or not sample.view or sample.view.upper() in spec.scope.planes
    view = _VIEW_NAMES.get(sample.view.upper(), sample.view.upper())
    return not spec.scope.views or not view or view in spec.scope.views


def samples_for_heads(corpus: TensorCorpus, specs: Sequence[HeadSpec], *, mri: bool) -> list[int]:
    """Positions of the samples (radiographs or MR series) that feed at least one head."""
    chosen = [s for s in specs if s.scope.is_mri == mri]
    return [i for i, sample in enumerate(corpus) if any(sample_fits(s, sample) for s in chosen)]


def augment_planes(planes: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """One mild random view of ``uint8`` ``[K, S, S]`` planes -> float ``[K, S, S]`` in [0, 1]."""
    size = planes.shape[-1]
    box = sample_crop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), generator=generator)
    values = planes.float() / 255.0
    crop = values[:, box.top : box.top + box.height, box.left : box.left + box.width]
    resized = F.interpolate(
        crop[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[:, 0]
    state = generator.get_state()
    out = []
    for plane in resized:
        # The same brightness/contrast draw for every slice of a series.
        generator.set_state(state)
        out.append(
            jitter_brightness_contrast(plane, brightness=0.2, contrast=0.2, generator=generator)
        )
    return torch.stack(out)


@dataclass(frozen=True)
class HeadBatch:
    """Model input and targets for one step.

    Attributes
    ----------
    images : torch.Tensor
        ``[N, 3, S, S]`` normalised; for slice sets ``N = B * K`` (row-major by series).
    mask : torch.Tensor or None
        ``[B, K]`` real-slice mask for slice sets; None for radiographs.
    targets : Mapping[str, torch.Tensor]
        Head name -> ``[B]`` class indices, -1 where the sample does not feed that head.
    """

    images: torch.Tensor
    mask: torch.Tensor | None
    targets: Mapping[str, torch.Tensor]

    @property
    def size(self) -> int:
        """Number of samples ``B``."""
        return int(next(iter(self.targets.values())).shape[0])


def make_batch(
    samples: Sequence[Sample],
    specs: Sequence[HeadSpec],
    *,
    generator: torch.Generator | None = None,
    mean: Sequence[float],
    std: Sequence[float],
    max_slices: int | None = None,
) -> HeadBatch:
    """Stack samples (all radiographs or all MR series) into a :class:`HeadBatch`.

    Parameters
    ----------
    samples : sequence of Sample
        The batch.
    specs : sequence of HeadSpec
        Heads to give targets for.
    generator : torch.Generator, optional
        When given, each sample gets a random :func:`augment_planes` view.
    mean, std : sequence of float
        Normalisation of the bundle.
    max_slices : int, optional
        With a generator: keep a random subset of this many slices of each MR series (in
        order). Mean and attention pooling see the same slice distribution on average, at a
        fraction of the cost; inference still uses every sampled slice.
    """
    if not samples:
        raise ValueError("a batch needs at least one sample")
    kinds = {sample.is_mri for sample in samples}
    if len(kinds) != 1:
        raise ValueError("a batch must hold only radiographs or only MR series")
    is_set = kinds.pop()
    views = []
    for sample in samples:
        planes = sample.planes
        if generator is not None and max_slices is not None and planes.shape[0] > max_slices:
            keep = torch.randperm(planes.shape[0], generator=generator)[:max_slices].sort().values
            planes = planes[keep]
        views.append(
            augment_planes(planes, generator=generator) if generator is not None else planes
        )
    targets = {
        spec.name: torch.tensor(
            [s.labels[spec.name] if sample_fits(spec, s) else -1 for s in samples],
            dtype=torch.long,
        )
        for spec in specs
    }
    if not is_set:
        images = to_model_input(torch.stack([v[0] for v in views]), mean=mean, std=std)
        return HeadBatch(images=images, mask=None, targets=targets)
    longest = max(v.shape[0] for v in views)
    size = views[0].shape[-1]
    padded = torch.zeros(len(views), longest, size, size, dtype=views[0].dtype)
    mask = torch.zeros(len(views), longest, dtype=torch.bool)
    for i, view in enumerate(views):
        padded[i, : view.shape[0]] = view
        mask[i, : view.shape[0]] = True
    images = to_model_input(padded.flatten(0, 1), mean=mean, std=std)
    return HeadBatch(images=images, mask=mask, targets=targets)
