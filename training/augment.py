"""Image augmentations on grey planes, driven by an explicit ``torch.Generator``.

Every random choice takes a generator, so an augmented view is a pure function of the plane
and the generator's seed. The pretraining loop seeds one generator per (seed, epoch, global
sample position); that is what makes resumed runs and multi-process (DDP) runs see exactly
the views a single uninterrupted process would.

Planes are float ``[S, S]`` in ``[0, 1]`` (grey); the DINO recipe's colour operations reduce to
brightness and contrast on grey images (saturation and hue do nothing, random grayscale is the
identity), which is what :func:`jitter_brightness_contrast` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "CropParams",
    "gaussian_blur",
    "generator_for",
    "jitter_brightness_contrast",
    "random_resized_crop",
    "sample_crop",
    "solarize",
]

_MASK64 = (1 << 63) - 1


def generator_for(*parts: int) -> torch.Generator:
    """A CPU generator seeded from integers (e.g. ``seed, epoch, position``), order-sensitive."""
    value = 1469598103934665603
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int):
            raise TypeError(f"generator_for takes ints, got {type(part).__name__}")
        # FNV-1a style mixing over 64-bit words: cheap, deterministic, order-sensitive.
        value = ((value ^ (part & _MASK64)) * 1099511628211) & _MASK64
        value ^= value >> 29
    return torch.Generator().manual_seed(value)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


@dataclass(frozen=True)
class CropParams:
    """A crop box in pixels: top, left, height, width."""

    top: int
    left: int
    height: int
    width: int


def sample_crop(
    size: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator,
) -> CropParams:
    """Pick a RandomResizedCrop box on a square ``size`` plane (torchvision's algorithm).

    Ten attempts at a box of the sampled area and aspect ratio; then a centre crop fallback.
    """
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    area = size * size
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        width = int(round(math.sqrt(target * aspect)))
        height = int(round(math.sqrt(target / aspect)))
        if 0 < width <= size and 0 < height <= size:
            top = int(torch.randint(0, size - height + 1, (), generator=generator))
            left = int(torch.randint(0, size - width + 1, (), generator=generator))
            return CropParams(top, left, height, width)
    side = max(1, int(round(size * math.sqrt(scale[1]))))
    offset = (size - side) // 2
    return CropParams(offset, offset, side, side)


def random_resized_crop(
    plane: torch.Tensor,
    output_size: int,
    *,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Crop a random box and resize it to ``output_size`` (bilinear, antialiased)."""
    if plane.ndim != 2 or plane.shape[0] != plane.shape[1]:
        raise ValueError(f"plane must be a square [S, S] tensor, got {tuple(plane.shape)}")
    box = sample_crop(plane.shape[0], scale=scale, ratio=ratio, generator=generator)
    crop = plane[box.top : box.top + box.height, box.left : box.left + box.width]
    return F.interpolate(
        crop[None, None],
        size=(output_size, output_size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0, 0]


def jitter_brightness_contrast(
    plane: torch.Tensor, *, brightness: float, contrast: float, generator: torch.Generator
) -> torch.Tensor:
    """torchvision ColorJitter's brightness and contrast factors on a grey plane, random order."""
    b = _uniform(generator, max(0.0, 1 - brightness), 1 + brightness)
    c = _uniform(generator, max(0.0, 1 - contrast), 1 + contrast)
    brightness_first = bool(torch.rand((), generator=generator) < 0.5)
    out = plane
    for step in ("b", "c") if brightness_first else ("c", "b"):
        if step == "b":
            out = (out * b).clamp(0.0, 1.0)
        else:
            mean = out.mean()
            out = ((out - mean) * c + mean).clamp(0.0, 1.0)
    return out


def gaussian_blur(plane: torch.Tensor, *, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (kernel radius 3 sigma, at least 1)."""
    if sigma <= 0:
        return plane
    radius = max(1, int(math.ceil(3.0 * sigma)))
    radius = min(radius, plane.shape[-1] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=plane.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = plane[None, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x[0, 0]


def solarize(plane: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Invert values at or above ``threshold`` (PIL ImageOps.solarize on [0, 1])."""
    return torch.where(plane >= threshold, 1.0 - plane, plane)
