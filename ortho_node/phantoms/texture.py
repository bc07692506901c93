"""Cheap smooth random textures: coarse Gaussian noise upsampled with bicubic interpolation.

Used for trabecular bone, soft-tissue inhomogeneity and MR coil sensitivity. Pillow does the
upsampling in C, so a 2000 x 2500 texture costs a few tens of milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], *,
                 cell_px: tuple[float, float]) -> np.ndarray:
    """Return float32 noise of ``shape`` with structures about ``cell_px`` (rows, cols) in size.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    shape : tuple of int
        Output ``(rows, columns)``.
    cell_px : tuple of float
        Grain size in pixels along rows and columns (>= 1); different values give streaks.

    Returns
    -------
    numpy.ndarray
        float32 array, about zero mean and unit standard deviation.
    """
    rows, columns = shape
    coarse_rows = max(2, math.ceil(rows / max(cell_px[0], 1.0)) + 1)
    coarse_cols = max(2, math.ceil(columns / max(cell_px[1], 1.0)) + 1)
    coarse = rng.standard_normal((coarse_rows, coarse_cols)).astype(np.float32)
    image = Image.fromarray(coarse).resize((columns, rows), Image.Resampling.BICUBIC)
    fine = np.array(image, dtype=np.float32)
    # The coarse grid is zero-mean; only the spread changes with interpolation.
    fine *= np.float32(1.0 / (float(fine[:: max(1, rows // 64), :: max(1, columns // 64)].std()) or 1.0))
    return fine


def _interpolation(size: int, samples: int, *, step: float, offset: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of linear interpolation: sample ``j`` sits at ``offset + j*step``."""
    position = np.clip((np.arange(size, dtype=np.float64) - offset) / step, 0.0, samples - 1.0)
    low = np.minimum(np.floor(position).astype(np.intp), max(samples - 2, 0))
    high = np.minimum(low + 1, samples - 1)
    return low, high, (position - low).astype(np.float32)


def upsample(small: np.ndarray, shape: tuple[int, int], *, step: float,
             offset: float = 0.0) -> np.ndarray:
    """Linearly interpolate a coarse grid to ``shape``.

    ``small[i, j]`` is the value at fine pixel ``(offset + i*step, offset + j*step)``; pixels
    outside the grid take the nearest edge value.
    """
    small = small.astype(np.float32, copy=False)
    low, high, frac = _interpolation(shape[0], small.shape[0], step=step, offset=offset)
    tall = small[low] * (1.0 - frac)[:, None] + small[high] * frac[:, None]
    low, high, frac = _interpolation(shape[1], small.shape[1], step=step, offset=offset)
    out = tall[:, low]
    out *= 1.0 - frac
    right = tall[:, high]
    right *= frac
    out += right
    return out


def box_blur(image: np.ndarray, *, factor: int) -> np.ndarray:
    """Return a low-pass copy of ``image``: block means of ``factor`` pixels, linearly upsampled."""
    rows, columns = image.shape
    factor = max(1, min(factor, rows, columns))
    h, w = rows // factor, columns // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))
    return upsample(blocks, image.shape, step=factor, offset=(factor - 1) / 2)


def tiled_noise(rng: np.random.Generator, shape: tuple[int, int], *,
                cell_px: tuple[float, float], tiles: tuple[int, int] = (251, 331)) -> np.ndarray:
    """Return smooth noise like :func:`smooth_noise`, built from two small wrapped tiles.

    Two tiles with co-prime sizes are repeated across the image and averaged, so no pattern
    repeats within ``tiles[0] * tiles[1]`` pixels, at a fraction of the cost of full-size noise.
    """
    rows, columns = shape
    total = np.zeros(shape, np.float32)
    for size in tiles:
        tile = smooth_noise(rng, (min(size, rows), min(size, columns)), cell_px=cell_px)
        total += np.pad(tile, ((0, rows - tile.shape[0]), (0, columns - tile.shape[1])), mode="wrap")
    total *= np.float32(1.0 / np.sqrt(len(tiles)))
    return total
