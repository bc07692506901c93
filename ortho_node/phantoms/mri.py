"""Synthetic sagittal knee MR series: PD, PD fat-suppressed or T2 contrast, ACL and meniscus tears.

Slices are ordered as the DICOM series stores them: from the patient's right to left (patient
x increasing). Within a slice, anterior is on the image left and superior at the top
(Image Orientation (Patient) ``0\\1\\0\\0\\0\\-1``). For a right knee the first slices are
lateral; a left knee is the same volume with the slice order reversed (same seeds), so the
two are exact mirrors. Values are 16-bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ortho_node.model.findings import Laterality
from ortho_node.phantoms.geometry import Canvas, PixelBox, Pose
from ortho_node.phantoms.mri_anatomy import (
    ACL_BOUNDS,
    ACL_SLICES,
    MEDIAL_MENISCUS_SLICES,
    Tissue,
    draw_mr_knee,
    paint_slice,
)
from ortho_node.phantoms.seeding import rng_for
from ortho_node.phantoms.specs import MRContrast, MRPhantomSpec
from ortho_node.phantoms.texture import smooth_noise

# Relative signal of each tissue per contrast (index = Tissue value).
_SIGNAL = {
    #                 AIR  FAT   MUS   MARR  CORT  CART  MEN   LIG   FLUID TEAR  ACL   EDEMA TORN
    MRContrast.PD: (0.0, 0.90, 0.35, 0.80, 0.03, 0.55, 0.05, 0.08, 0.62, 0.78, 0.22, 0.55, 0.48),
    MRContrast.PD_FS: (0.0, 0.12, 0.30, 0.15, 0.02, 0.50, 0.04, 0.06, 0.95, 0.88, 0.18, 0.78, 0.58),
    MRContrast.T2: (0.0, 0.45, 0.18, 0.40, 0.02, 0.28, 0.03, 0.05, 1.00, 0.92, 0.12, 0.82, 0.55),
}
KNEE_CENTER_X_MM = {Laterality.RIGHT: -95.0, Laterality.LEFT: 95.0}
"""Patient-x of the knee centre: right knee on the patient's right (negative x in LPS)."""


@dataclass(frozen=True)
class SequenceTiming:
    """Acquisition parameters consistent with the contrast."""

    repetition_time_ms: float
    echo_time_ms: float
    echo_train_length: int
    fat_suppressed: bool
    field_strength_t: float


@dataclass(frozen=True)
class KneeMRSeries:
    """A rendered sagittal knee MR series and what is known about it.

    Attributes
    ----------
    pixels : numpy.ndarray
        uint16 ``(slices, rows, columns)`` in storage order (patient right to left).
    slice_positions_mm : tuple of float
        Patient x (LPS, mm) of each slice.
    top_left_mm : tuple of float
        Patient ``(y, z)`` of the centre of the top-left pixel, the same for all slices.
    acl_slices : tuple of int
        Indices (into ``pixels``) of the slices that show the ACL.
    acl_box : PixelBox
        Pixel box holding the ACL, intact or torn, on those slices.
    medial_meniscus_slices : tuple of int
        Indices of the slices through the medial meniscus.
    meniscus_box : PixelBox
        Pixel box holding the posterior horn of the menisci.
    """

    pixels: np.ndarray
    spec: MRPhantomSpec
    slice_positions_mm: tuple[float, ...]
    top_left_mm: tuple[float, float]
    acl_slices: tuple[int, ...]
    acl_box: PixelBox
    medial_meniscus_slices: tuple[int, ...]
    meniscus_box: PixelBox
    timing: SequenceTiming
    window_center: float
    window_width: float


def _timing(spec: MRPhantomSpec, rng: np.random.Generator) -> SequenceTiming:
    field = float(rng.choice([1.5, 3.0]))
    if spec.contrast is MRContrast.T2:
        return SequenceTiming(float(rng.integers(3500, 4600)), float(rng.integers(70, 96)),
                              int(rng.integers(12, 18)), False, field)
    return SequenceTiming(float(rng.integers(2600, 3600)), float(rng.integers(24, 38)),
                          int(rng.integers(8, 13)), spec.contrast is MRContrast.PD_FS, field)


def _blur3(image: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both axes: the partial-volume softening of a real slice."""
    out = image * np.float32(0.5)
    out[1:] += image[:-1] * np.float32(0.25)
    out[:-1] += image[1:] * np.float32(0.25)
    result = out * np.float32(0.5)
    result[:, 1:] += out[:, :-1] * np.float32(0.25)
    result[:, :-1] += out[:, 1:] * np.float32(0.25)
    return result


def render_knee_mr(spec: MRPhantomSpec, *, seed: int, anatomy_seed: int | None = None) -> KneeMRSeries:
    """Render one sagittal knee MR series.

    Parameters
    ----------
    spec : MRPhantomSpec
        Pathology, side, contrast, slice count, matrix and spacing.
    seed : int
        Seeds the acquisition: position, small rotation, scale, coil sensitivity, noise.
    anatomy_seed : int, optional
        Seeds the knee itself; defaults to ``seed``. Series of one knee share it.

    Returns
    -------
    KneeMRSeries
        Pixels (uint16) with slice geometry and the regions of the ACL and menisci.

    Raises
    ------
    TypeError
        If ``spec`` is not an :class:`MRPhantomSpec`.
    """
    if not isinstance(spec, MRPhantomSpec):
        raise TypeError(f"spec must be an MRPhantomSpec, got {type(spec).__name__}")
    knee = draw_mr_knee(rng_for(seed if anatomy_seed is None else anatomy_seed, "mr-anatomy"),
                        acl_tear=spec.acl_tear, meniscus_tear=spec.meniscus_tear,
                        effusion=spec.effusion)
    pose_rng = rng_for(seed, "mr-pose")
    pose = Pose(shift_x_mm=float(pose_rng.uniform(-6.0, 6.0)),
                shift_y_mm=float(pose_rng.uniform(-6.0, 6.0)),
                rotation_deg=float(pose_rng.uniform(-6.0, 6.0)),
                scale=float(pose_rng.uniform(0.93, 1.07)))
    canvas = Canvas(spec.rows, spec.columns, pixel_spacing_mm=spec.pixel_spacing_mm, pose=pose)
    spacing = spec.spacing_between_slices_mm
    offset = float(pose_rng.uniform(-3.0, 3.0))
    medial_x = [(k - (spec.slices - 1) / 2) * spacing + offset for k in range(spec.slices)]
    timing = _timing(spec, rng_for(seed, "mr-timing"))

    noise_rng = rng_for(seed, "mr-noise")
    shape = (spec.rows, spec.columns)
    # Surface-coil sensitivity: smooth, brighter towards the anterior coil elements.
    coil = 1.0 + 0.12 * smooth_noise(noise_rng, shape, cell_px=(spec.rows / 3, spec.columns / 3))
    coil *= np.linspace(1.12, 0.88, spec.columns, dtype=np.float32)[None, :]
    gain = float(noise_rng.uniform(9000.0, 14000.0)) * (timing.field_strength_t / 3.0) ** 0.5
    sigma = np.float32(gain * float(noise_rng.uniform(0.012, 0.022)))
    lut = np.asarray(_SIGNAL[spec.contrast], np.float32) * np.float32(gain)

    # Tissue grain: crops of one larger noise field, a different crop per slice.
    grain_field = smooth_noise(noise_rng, (2 * spec.rows, 2 * spec.columns), cell_px=(2.5, 2.5))
    grain_field *= np.float32(0.07)
    grain_field += np.float32(1.0)
    offsets = noise_rng.integers(0, [spec.rows, spec.columns], size=(spec.slices, 2))
    edema_gain = lut[Tissue.EDEMA] - lut[Tissue.MARROW]

    signal = np.empty((spec.slices, *shape), np.float32)
    for k, x in enumerate(medial_x):
        painted = paint_slice(canvas, knee, x)
        image = lut[painted.labels]
        if painted.edema is not None:
            # Marrow oedema fades into normal marrow: blend the two signals.
            image += painted.edema * (painted.labels == Tissue.MARROW) * edema_gain
        row, column = offsets[k]
        image *= grain_field[row:row + spec.rows, column:column + spec.columns]
        signal[k] = _blur3(image)
    signal *= coil
    # Magnitude images of complex Gaussian noise: Rician, with a non-zero floor in air.
    imaginary = noise_rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary *= sigma
    signal += noise_rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    np.square(signal, out=signal)
    np.square(imaginary, out=imaginary)
    signal += imaginary
    np.sqrt(signal, out=signal)
    signal += np.float32(0.5)  # the cast below then rounds
    np.clip(signal, 0, 65535, out=signal)
    volume = signal.astype(np.uint16)

    acl_slices = [k for k, x in enumerate(medial_x) if ACL_SLICES[0] < x < ACL_SLICES[1]]
    meniscus_slices = [k for k, x in enumerate(medial_x)
                       if MEDIAL_MENISCUS_SLICES[0] < x < MEDIAL_MENISCUS_SLICES[1]]
    center_x = KNEE_CENTER_X_MM[spec.side]
    if spec.side is Laterality.RIGHT:  # medial is towards the patient's left (+x)
        positions = [center_x + x for x in medial_x]
    else:
        volume = np.ascontiguousarray(volume[::-1])
        positions = [center_x - x for x in reversed(medial_x)]
        acl_slices = [spec.slices - 1 - k for k in reversed(acl_slices)]
        meniscus_slices = [spec.slices - 1 - k for k in reversed(meniscus_slices)]
    acl_box = canvas.box(*ACL_BOUNDS)
    meniscus_box = canvas.box(-30.0, -10.0, 30.0, 4.0)
    if acl_box is None or meniscus_box is None:
        raise ValueError(f"knee falls outside a {spec.rows}x{spec.columns} field of view")

    middle = volume[spec.slices // 2]
    low, high = np.percentile(middle[::2, ::2], [1.0, 99.5])
    half_fov_y = (spec.columns - 1) / 2 * spec.pixel_spacing_mm
    half_fov_z = (spec.rows - 1) / 2 * spec.pixel_spacing_mm
    return KneeMRSeries(
        pixels=volume,
        spec=spec,
        slice_positions_mm=tuple(round(p, 4) for p in positions),
        top_left_mm=(round(-half_fov_y, 4), round(half_fov_z, 4)),
        acl_slices=tuple(acl_slices),
        acl_box=acl_box,
        medial_meniscus_slices=tuple(meniscus_slices),
        meniscus_box=meniscus_box,
        timing=timing,
        window_center=float(round((low + high) / 2)),
        window_width=float(max(64, round((high - low) * 1.1))),
    )
