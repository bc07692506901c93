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


def box_blur(image: np.ndarray, *, factor: int) -> np.ndarray:
    """Return a low-pass copy of ``image``: area-reduce by ``factor``, then bilinear upsample."""
    rows, columns = image.shape
    small = Image.fromarray(image.astype(np.float32, copy=False)).reduce(factor)
    return np.asarray(small.resize((columns, rows), Image.Resampling.BILINEAR), dtype=np.float32)
