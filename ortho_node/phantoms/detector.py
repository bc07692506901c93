"""The detector of the radiograph phantoms: noise, DX-style processing, 12-bit output."""

from __future__ import annotations

import numpy as np

from ortho_node.phantoms.texture import box_blur

MAX_VALUE = 4095
"""Largest stored value: radiograph phantoms are 12-bit (Bits Stored 12)."""


def detector_values(line_integral: np.ndarray, rng: np.random.Generator, *, exposure: float,
                     blur_factor: int) -> np.ndarray:
    """Turn a line-integral map into processed 12-bit detector values (modified in place).

    Adds noise (quantum noise grows where fewer photons get through, roughly exp(L/2) in the
    log domain, plus a small electronic floor), applies unsharp masking as DX processing does,
    and maps to 0-4095 with a random gain and offset.
    """
    gain = np.float32(720.0 * float(rng.uniform(0.88, 1.12)))
    offset = np.float32(160.0 * float(rng.uniform(0.6, 1.4)))
    sigma = np.exp(np.float32(0.4) * line_integral)
    sigma *= np.float32(0.006 / np.sqrt(exposure))
    sigma += np.float32(3.0) / gain
    noise = rng.standard_normal(line_integral.shape, dtype=np.float32)
    noise *= sigma
    line_integral += noise
    # gain * (1.15 * (L - low) + 0.8 * low) + offset: details up, large-scale range down.
    low = box_blur(line_integral, factor=blur_factor)
    low *= np.float32(-0.35) * gain
    line_integral *= np.float32(1.15) * gain
    line_integral += low
    line_integral += offset + np.float32(0.5)  # + 0.5: the cast below then rounds
    np.clip(line_integral, 0, MAX_VALUE, out=line_integral)
    return line_integral.astype(np.uint16)
