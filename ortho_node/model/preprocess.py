"""DICOM image → normalised float32 tensor (3, S, S) for the encoder, with the way back.

The pipeline for one frame, each step a pure function of the dataset and the config:

1. **Display values** (:mod:`.pixels`): decode, Modality LUT, VOI, MONOCHROME1 inverted.
2. **Laterality** (:func:`determine_laterality`): Frame Laterality (Frame Anatomy functional
   group), then Image Laterality, then the series' Laterality; conflicting values are
   rejected. ``"U"`` (unpaired) or nothing means *unknown*: the image is **not flipped** and
   keeps ``laterality=None``; heads that need a side declare it in their scope and the scope
   gate rejects such images for them (unknown is never guessed as left or right). Bilateral
   (``"B"``) images are not flipped either. Free text (descriptions, burned-in markers) is not
   read. For MR only, and only when :attr:`PreprocessConfig.mr_laterality_offset_mm` is set,
   a header without laterality may be completed from patient-coordinate geometry (see
   :func:`laterality_from_position`); it is off by default because it assumes the patient
   lies centred on the table.
3. **Mirroring to the canonical side** (default: every knee is shown as a RIGHT knee). The
   mirror is across the patient's sagittal plane, so the image axis that runs along the
   patient's left-right direction is flipped: for MR the axis is read from Image Orientation
   (Patient); for radiographs from Patient Orientation, and when that does not name a
   left/right axis (lateral views) or is absent, the columns (horizontal flip: the display
   convention for knee radiographs). A sagittal MR slice has no in-plane left-right axis: its
   mirror is the reversal of the slice order, which :mod:`.series` applies.
4. **Geometry** (:class:`ImageGeometry`), one of two documented modes:

   * ``fit`` (default, :attr:`PreprocessConfig.target_spacing_mm` is None): the whole image is
     scaled, keeping its physical aspect ratio (from the pixel spacing when known, else
     square pixels), so its longer side fills S; the shorter side is centred and padded
     with black. Nothing is cropped, so a detector-size-independent view of the whole knee
     reaches the model.
   * ``spacing``: resampled to ``target_spacing_mm`` per pixel, then centre-cropped (if larger)
     or padded (if smaller) to S × S. Spacing is Pixel Spacing (frame-level Pixel Measures
     first), else Imager Pixel Spacing divided by the Estimated Radiographic Magnification
     Factor when one is given. An image without a usable spacing falls back to ``fit``
     or is rejected, as :attr:`PreprocessConfig.missing_spacing` says; the geometry records
     which mode ran.

   Resampling is antialiased bilinear (or bicubic) via ``torch.nn.functional.interpolate``,
   on integer crop boxes and integer output sizes, so the source ↔ model mapping is exact.
5. **Channels and normalisation**: the [0, 1] plane is repeated to 3 channels (as the paper's
   PIL ``convert("RGB")``) and normalised with the bundle's mean/std (ImageNet by default).

:meth:`ImageGeometry.project_to_source` takes a patch-grid map over the model input back to
the source image (flip undone, padding dropped) and returns the ``(values, region)`` pair a
:class:`~ortho_node.model.findings.Heatmap` wants.
"""

from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ortho_node.model.findings import Heatmap, ImageRef, Laterality
from ortho_node.model.pixels import (
    DEFAULT_WINDOW_PERCENTILES,
    DisplayFrame,
    RawFrame,
    check_percentiles,
    UnsupportedImageError,
    Window,
    decode_frame,
    frame_orientation,
    frame_position,
    functional_group_value,
    to_display,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResizeMode",
    "MissingSpacing",
    "Interpolation",
    "MirrorAxis",
    "ManifestInputs",
    "PreprocessConfig",
    "LateralityEvidence",
    "ImageGeometry",
    "PreprocessedImage",
    "UnsupportedImageError",
    "determine_laterality",
    "laterality_from_position",
    "mirror_axis",
    "pixel_spacing",
    "image_ref",
    "plan_geometry",
    "preprocess_image",
    "preprocess_frame",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResizeMode(str, enum.Enum):
    """How the source image is brought to S × S (see the module docstring)."""

    FIT = "fit"
    """Aspect-preserving fit of the whole image, longer side = S, centred, padded with black."""
    SPACING = "spacing"
    """Resample to a target mm per pixel, then centre crop / pad to S × S."""


class MissingSpacing(str, enum.Enum):
    """What ``spacing`` mode does with an image that states no usable pixel spacing."""

    FIT = "fit"
    """Use ``fit`` for that image; :attr:`ImageGeometry.resize_mode` records it."""
    REJECT = "reject"
    """Raise :class:`UnsupportedImageError`."""


class Interpolation(str, enum.Enum):
    """Resampling kernel (antialiased when downsampling)."""

    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


class MirrorAxis(str, enum.Enum):
    """Which axis runs along the patient's left-right direction, i.e. what a mirror flips."""

    COLUMNS = "columns"
    """Left-right runs along the rows: flip horizontally."""
    ROWS = "rows"
    """Left-right runs along the columns: flip vertically."""
    SLICES = "slices"
    """Left-right is the slice normal (sagittal MR): reverse the slice order, not the image."""


class ManifestInputs(Protocol):
    """The input facts of a model bundle manifest that preprocessing follows."""

    input_size: tuple[int, int] | int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def _check_positive_int(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def _check_optional_mm(name: str, value: object, low: float, high: float) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of mm or None, got {type(value).__name__}")
    if not low <= float(value) <= high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}] mm, got {value}")


def _check_triple(name: str, value: object, *, positive: bool) -> tuple[float, float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise TypeError(f"{name} must be a 3-tuple of floats, got {value!r}")
    numbers = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in numbers) or (positive and min(numbers) <= 0):
        raise ValueError(
            f"{name} must hold finite{' positive' if positive else ''} values, got {value!r}"
        )
    return numbers  # type: ignore[return-value]


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become model input. Mean/std and size come from the bundle manifest.

    Parameters
    ----------
    input_size : int, optional
        Side S of the square model input in pixels, 32-4096 (default 224, as in the paper).
    mean, std : tuple of float, optional
        Per-channel normalisation (default ImageNet, as the paper used).
    target_spacing_mm : float or None, optional
        ``None`` (default): ``fit`` mode. A number (0.01-10 mm): ``spacing`` mode at that
        resolution.
    missing_spacing : MissingSpacing or str, optional
        ``spacing`` mode with no usable pixel spacing: ``"fit"`` (default) or ``"reject"``.
    canonical_side : Laterality or str, optional
        Side every left/right image is mirrored to, ``"R"`` (default) or ``"L"``.
    window_percentiles : tuple of float, optional
        Percentiles of the fallback VOI window (default 0.5, 99.5).
    interpolation : Interpolation or str, optional
        ``"bilinear"`` (default) or ``"bicubic"``.
    mr_laterality_offset_mm : float or None, optional
        ``None`` (default): never infer laterality from geometry. A number: an MR image whose
        header has no laterality gets one from the x coordinate of its field-of-view centre
        when that lies at least this far from x = 0 (see :func:`laterality_from_position`).
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    target_spacing_mm: float | None = None
    missing_spacing: MissingSpacing = MissingSpacing.FIT
    canonical_side: Laterality = Laterality.RIGHT
    window_percentiles: tuple[float, float] = DEFAULT_WINDOW_PERCENTILES
    interpolation: Interpolation = Interpolation.BILINEAR
    mr_laterality_offset_mm: float | None = None

    def __post_init__(self) -> None:
        _check_positive_int("input_size", self.input_size, 32, 4096)
        object.__setattr__(self, "mean", _check_triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _check_triple("std", self.std, positive=True))
        _check_optional_mm("target_spacing_mm", self.target_spacing_mm, 0.01, 10.0)
        object.__setattr__(self, "missing_spacing", MissingSpacing(self.missing_spacing))
        side = Laterality(self.canonical_side)
        if side is Laterality.BOTH:
            raise ValueError("canonical_side must be 'L' or 'R', got 'B'")
        object.__setattr__(self, "canonical_side", side)
        object.__setattr__(
            self,
            "window_percentiles",
            check_percentiles(self.window_percentiles, "window_percentiles"),
        )
        object.__setattr__(self, "interpolation", Interpolation(self.interpolation))
        _check_optional_mm("mr_laterality_offset_mm", self.mr_laterality_offset_mm, 1.0, 500.0)

    @property
    def resize_mode(self) -> ResizeMode:
        """The configured mode (an image without spacing may still fall back to ``fit``)."""
        return ResizeMode.FIT if self.target_spacing_mm is None else ResizeMode.SPACING

    @classmethod
    def from_manifest(cls, manifest: ManifestInputs, **options: Any) -> PreprocessConfig:
        """The config a model bundle asks for: its input size, mean/std and interpolation.

        Parameters
        ----------
        manifest : ManifestInputs
            A bundle manifest (``ortho_node.model.manifest.BundleManifest`` fits).
        **options
            The node's own choices (``target_spacing_mm``, ``canonical_side``, ...).

        Raises
        ------
        ValueError
            The manifest asks for a non-square input, or an unknown interpolation.
        """
        size = manifest.input_size
        if not isinstance(size, int):
            height, width = size
            if height != width:
                raise ValueError(f"manifest input_size must be square, got {height}x{width}")
            size = height
        return cls(
            input_size=size,
            mean=tuple(manifest.mean),  # type: ignore[arg-type]
            std=tuple(manifest.std),  # type: ignore[arg-type]
            interpolation=Interpolation(manifest.interpolation),
            **options,
        )


# --- laterality -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LateralityEvidence:
    """The side of one image and where it was read."""

    laterality: Laterality | None
    """L, R, B, or None when unknown."""
    source: str
    """Attribute that gave it, e.g. ``"ImageLaterality"``; ``"none"`` when unknown."""


def _laterality_value(raw: Any, attribute: str) -> Laterality | None:
    text = str(raw).strip().upper() if raw is not None else ""
    if text in ("", "U"):  # "U" = unpaired: says nothing about a side
        return None
    try:
        return Laterality(text)
    except ValueError as exc:
        raise UnsupportedImageError(f"{attribute} {text!r} is not one of L, R, B, U") from exc


def determine_laterality(ds: Dataset, *, frame_index: int = 0) -> LateralityEvidence:
    """Read the side of one frame from its header (rules in the module docstring).

    Raises
    ------
    UnsupportedImageError
        A laterality attribute holds an unknown value, or two levels disagree.
    """
    candidates = (
        (
            "FrameLaterality",
            functional_group_value(ds, frame_index, "FrameAnatomySequence", "FrameLaterality"),
        ),
        ("ImageLaterality", ds.get("ImageLaterality")),
        ("Laterality", ds.get("Laterality")),
    )
    found = [(name, _laterality_value(value, name)) for name, value in candidates]
    stated = [(name, side) for name, side in found if side is not None]
    if not stated:
        return LateralityEvidence(laterality=None, source="none")
    sides = {side for _, side in stated}
    if len(sides) > 1:
        listing = ", ".join(f"{name} {side.value}" for name, side in stated)
        raise UnsupportedImageError(f"conflicting laterality in the header: {listing}")
    name, side = stated[0]
    return LateralityEvidence(laterality=side, source=name)


def laterality_from_position(
    ds: Dataset, *, frame_index: int = 0, min_offset_mm: float
) -> LateralityEvidence:
    """Infer the side of an MR image from where its field of view lies in patient coordinates.

    The patient coordinate system (PS3.3 C.7.6.2.1.1) has +x toward the patient's left. With
    the patient centred on the table, a knee imaged off-centre lies on its own side: a
    field-of-view centre at x <= -``min_offset_mm`` is a RIGHT knee, at x >= +``min_offset_mm``
    a LEFT knee; anything nearer the midline stays unknown. This is a heuristic (a patient
    shifted on the table defeats it), which is why it is opt-in.
    """
    orientation = frame_orientation(ds, frame_index=frame_index)
    position = frame_position(ds, frame_index=frame_index)
    spacing = pixel_spacing(ds, frame_index=frame_index)
    if orientation is None or position is None or spacing is None:
        return LateralityEvidence(laterality=None, source="none")
    (row_spacing, column_spacing), _ = spacing
    centre = (
        position
        + orientation[:3] * column_spacing * (ds.Columns - 1) / 2.0
        + orientation[3:] * row_spacing * (ds.Rows - 1) / 2.0
    )
    x = float(centre[0])
    source = f"field-of-view centre x={x:.0f} mm"
    if x <= -min_offset_mm:
        return LateralityEvidence(laterality=Laterality.RIGHT, source=source)
    if x >= min_offset_mm:
        return LateralityEvidence(laterality=Laterality.LEFT, source=source)
    return LateralityEvidence(laterality=None, source="none")


def mirror_axis(ds: Dataset, *, frame_index: int = 0) -> MirrorAxis:
    """The axis a left-right mirror of this frame flips (rules in the module docstring)."""
    orientation = frame_orientation(ds, frame_index=frame_index)
    if orientation is not None:
        row, column = orientation[:3], orientation[3:]
        normal = np.cross(row, column)
        # Patient x is left-right; whichever image axis is most aligned with it gets mirrored.
        weights = {
            MirrorAxis.COLUMNS: abs(row[0]),
            MirrorAxis.ROWS: abs(column[0]),
            MirrorAxis.SLICES: abs(normal[0]),
        }
        return max(weights, key=lambda axis: weights[axis])
    patient_orientation = ds.get("PatientOrientation")
    if patient_orientation and len(patient_orientation) == 2:
        along_row, along_column = (str(v).upper() for v in patient_orientation)
        if "L" in along_row or "R" in along_row:
            return MirrorAxis.COLUMNS
        if "L" in along_column or "R" in along_column:
            return MirrorAxis.ROWS
    return MirrorAxis.COLUMNS


# --- spacing and geometry -------------------------------------------------------------------


def pixel_spacing(ds: Dataset, *, frame_index: int = 0) -> tuple[tuple[float, float], str] | None:
    """Physical (row, column) spacing in mm and its source, or None when none is usable.

    Pixel Spacing (frame-level Pixel Measures first) is preferred: it is calibrated to the
    patient. Imager Pixel Spacing is at the detector; divided by the Estimated Radiographic
    Magnification Factor when present. A Pixel Spacing equal to Imager Pixel Spacing without a
    Pixel Spacing Calibration Type is the detector's, not corrected (PS3.3 10.7.1.1): the
    magnification-corrected Imager Pixel Spacing is used instead. Zero, negative or non-numeric
    values count as unusable.
    """
    spacing = functional_group_value(ds, frame_index, "PixelMeasuresSequence", "PixelSpacing")
    imager = ds.get("ImagerPixelSpacing")
    uncalibrated = (
        spacing is not None
        and imager is not None
        and not ds.get("PixelSpacingCalibrationType")
        and _same_spacing(spacing, imager)
    )
    candidates: list[tuple[Any, str, float]] = [] if uncalibrated else [(spacing, "PixelSpacing", 1.0)]
    magnification = ds.get("EstimatedRadiographicMagnificationFactor")
    try:
        factor = float(magnification) if magnification not in (None, "") else 1.0
    except (TypeError, ValueError):
        factor = float("nan")
    if math.isfinite(factor) and factor >= 1.0:
        label = (
            "ImagerPixelSpacing"
            if factor == 1.0
            else f"ImagerPixelSpacing / magnification {factor:g}"
        )
        candidates.append((imager, label, factor))
    for value, source, divisor in candidates:
        if value is None or len(value) != 2:
            continue
        try:
            row, column = (float(v) / divisor for v in value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(row) and math.isfinite(column) and row > 0 and column > 0:
            return (row, column), source
    return None


def _same_spacing(first: Any, second: Any) -> bool:
    try:
        return len(first) == len(second) == 2 and all(
            math.isclose(float(a), float(b), rel_tol=1e-6) for a, b in zip(first, second)
        )
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class ImageGeometry:
    """How a source frame maps onto the S × S model input, and back.

    Coordinates are continuous pixel-edge coordinates: pixel (r, c) covers [r, r+1) × [c, c+1).
    The source region ``crop_box`` is resized to ``resized_shape``, placed at
    (``pad[0]``, ``pad[1]``) on the S × S canvas, then the canvas is flipped as recorded.
    """

    source_shape: tuple[int, int]
    """(rows, columns) of the source frame."""
    output_size: int
    """S."""
    crop_box: tuple[int, int, int, int]
    """(column0, row0, column1, row1) of the source region the model saw, end exclusive."""
    resized_shape: tuple[int, int]
    """(rows, columns) the crop was resampled to; each at most S."""
    flip_rows: bool = False
    flip_columns: bool = False
    resize_mode: ResizeMode = ResizeMode.FIT
    pixel_spacing_mm: tuple[float, float] | None = None
    """(row, column) spacing used, or None when the image states none."""
    spacing_source: str = "none"

    def __post_init__(self) -> None:
        rows, columns = self.source_shape
        column0, row0, column1, row1 = self.crop_box
        if not (0 <= column0 < column1 <= columns and 0 <= row0 < row1 <= rows):
            raise ValueError(
                f"crop_box {self.crop_box} does not lie inside a {rows}x{columns} image"
            )
        if not all(1 <= side <= self.output_size for side in self.resized_shape):
            raise ValueError(
                f"resized_shape {self.resized_shape} must lie in [1, {self.output_size}]"
            )

    @property
    def pad(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) black padding on the canvas before any flip."""
        top = (self.output_size - self.resized_shape[0]) // 2
        left = (self.output_size - self.resized_shape[1]) // 2
        return (
            top,
            left,
            self.output_size - self.resized_shape[0] - top,
            self.output_size - self.resized_shape[1] - left,
        )

    @property
    def scale(self) -> tuple[float, float]:
        """(row, column) output pixels per source pixel."""
        column0, row0, column1, row1 = self.crop_box
        return (self.resized_shape[0] / (row1 - row0), self.resized_shape[1] / (column1 - column0))

    @property
    def region(self) -> tuple[float, float, float, float]:
        """The evaluated source area (column0, row0, column1, row1), as ``Heatmap.region``."""
        return tuple(float(v) for v in self.crop_box)  # type: ignore[return-value]

    def source_to_output(self, row: float, column: float) -> tuple[float, float]:
        """Map a source point to model-input coordinates (flip included)."""
        top, left, _, _ = self.pad
        scale_row, scale_column = self.scale
        out_row = (row - self.crop_box[1]) * scale_row + top
        out_column = (column - self.crop_box[0]) * scale_column + left
        if self.flip_rows:
            out_row = self.output_size - out_row
        if self.flip_columns:
            out_column = self.output_size - out_column
        return out_row, out_column

    def output_to_source(self, row: float, column: float) -> tuple[float, float]:
        """Map a model-input point back to source coordinates (may fall in the padding)."""
        if self.flip_rows:
            row = self.output_size - row
        if self.flip_columns:
            column = self.output_size - column
        top, left, _, _ = self.pad
        scale_row, scale_column = self.scale
        return (
            (row - top) / scale_row + self.crop_box[1],
            (column - left) / scale_column + self.crop_box[0],
        )

    def _image_part(self, patch_map: np.ndarray) -> np.ndarray:
        """The map at canvas resolution, flips undone, padding removed: resized_shape."""
        if not isinstance(patch_map, np.ndarray):
            raise TypeError(f"patch_map must be a numpy array, got {type(patch_map).__name__}")
        if (
            patch_map.ndim != 2
            or min(patch_map.shape) < 1
            or max(patch_map.shape) > self.output_size
        ):
            raise ValueError(
                f"patch_map must be 2-D with 1-{self.output_size} cells per side, "
                f"got shape {patch_map.shape}"
            )
        grid_rows, grid_columns = patch_map.shape
        size = self.output_size
        # Each canvas pixel takes the value of the patch that covers it.
        canvas = patch_map.astype(np.float32)[(np.arange(size) * grid_rows) // size][
            :, (np.arange(size) * grid_columns) // size
        ]
        if self.flip_rows:
            canvas = canvas[::-1, :]
        if self.flip_columns:
            canvas = canvas[:, ::-1]
        top, left, _, _ = self.pad
        return np.ascontiguousarray(
            canvas[top : top + self.resized_shape[0], left : left + self.resized_shape[1]]
        )

    def project_to_source(
        self, patch_map: np.ndarray
    ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """Take a patch-grid map over the model input back onto the source image.

        Parameters
        ----------
        patch_map : numpy.ndarray
            2-D map over the whole model input (e.g. 14 × 14 for 224 px and 16 px patches), in
            the model's (canonical-side) orientation.

        Returns
        -------
        values : numpy.ndarray
            float32 map in the source's own orientation, covering exactly ``region``, at about
            the same cell size as the input grid (area-averaged, padding dropped).
        region : tuple of float
            (column0, row0, column1, row1) in source pixels: :attr:`region`.
        """
        image_part = self._image_part(patch_map)
        grid_rows, grid_columns = patch_map.shape
        target = (
            max(1, round(self.resized_shape[0] * grid_rows / self.output_size)),
            max(1, round(self.resized_shape[1] * grid_columns / self.output_size)),
        )
        pooled = F.adaptive_avg_pool2d(torch.from_numpy(image_part)[None, None], target)[0, 0]
        return pooled.numpy().astype(np.float32), self.region

    def source_pixel_map(self, patch_map: np.ndarray, *, fill: float = float("nan")) -> np.ndarray:
        """The map painted onto every source pixel (nearest), ``fill`` outside the region."""
        image_part = self._image_part(patch_map)
        column0, row0, column1, row1 = self.crop_box
        rows_out, columns_out = self.resized_shape
        # Source pixel centre (j + 0.5) lands in resized pixel floor((j + 0.5) * scale).
        row_index = np.minimum(
            ((np.arange(row1 - row0) + 0.5) * rows_out / (row1 - row0)).astype(int), rows_out - 1
        )
        column_index = np.minimum(
            ((np.arange(column1 - column0) + 0.5) * columns_out / (column1 - column0)).astype(int),
            columns_out - 1,
        )
        painted = np.full(self.source_shape, fill, dtype=np.float32)
        painted[row0:row1, column0:column1] = image_part[row_index][:, column_index]
        return painted


def _axis_plan(length: int, scale: float, size: int) -> tuple[int, int, int]:
    """(crop start, crop length, resized length) along one axis."""
    if length * scale > size:
        crop = min(length, max(1, round(size / scale)))
        start = (length - crop) // 2
    else:
        crop, start = length, 0
    resized = min(size, max(1, round(crop * scale)))
    return start, crop, resized


def plan_geometry(
    source_shape: tuple[int, int],
    *,
    output_size: int,
    spacing: tuple[tuple[float, float], str] | None,
    target_spacing_mm: float | None,
    missing_spacing: MissingSpacing = MissingSpacing.FIT,
) -> ImageGeometry:
    """Choose crop, resize and padding for one source frame (modes in the module docstring).

    Raises
    ------
    UnsupportedImageError
        ``spacing`` mode, no usable spacing, and ``missing_spacing`` is ``reject``.
    """
    rows, columns = source_shape
    (row_mm, column_mm), source = spacing if spacing is not None else ((1.0, 1.0), "none")
    if target_spacing_mm is not None and spacing is not None:
        mode = ResizeMode.SPACING
        scale_row, scale_column = row_mm / target_spacing_mm, column_mm / target_spacing_mm
    else:
        if target_spacing_mm is not None and missing_spacing is MissingSpacing.REJECT:
            raise UnsupportedImageError(
                "no usable Pixel Spacing / Imager Pixel Spacing: cannot resample to "
                f"{target_spacing_mm:g} mm per pixel"
            )
        mode = ResizeMode.FIT
        # Output pixels per mm so that the longer physical side fills the canvas.
        per_mm = output_size / max(rows * row_mm, columns * column_mm)
        scale_row, scale_column = row_mm * per_mm, column_mm * per_mm
    row0, crop_rows, resized_rows = _axis_plan(rows, scale_row, output_size)
    column0, crop_columns, resized_columns = _axis_plan(columns, scale_column, output_size)
    return ImageGeometry(
        source_shape=(rows, columns),
        output_size=output_size,
        crop_box=(column0, row0, column0 + crop_columns, row0 + crop_rows),
        resized_shape=(resized_rows, resized_columns),
        resize_mode=mode,
        pixel_spacing_mm=None if spacing is None else (row_mm, column_mm),
        spacing_source=source,
    )


def _render(
    values: np.ndarray, geometry: ImageGeometry, interpolation: Interpolation
) -> torch.Tensor:
    """Crop, resample, pad and flip display values into an S × S float32 plane in [0, 1]."""
    column0, row0, column1, row1 = geometry.crop_box
    crop = torch.from_numpy(
        np.ascontiguousarray(values[row0:row1, column0:column1], dtype=np.float32)
    )
    resized = F.interpolate(
        crop[None, None],
        size=geometry.resized_shape,
        mode=interpolation.value,
        align_corners=False,
        antialias=True,
    )[0, 0].clamp_(0.0, 1.0)
    top, left, bottom, right = geometry.pad
    canvas = F.pad(resized, (left, right, top, bottom), value=0.0)
    flip_dims = [dim for dim, flip in ((0, geometry.flip_rows), (1, geometry.flip_columns)) if flip]
    return torch.flip(canvas, flip_dims) if flip_dims else canvas


# --- the pipeline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessedImage:
    """One frame ready for the encoder, with what is needed to map results back."""

    tensor: torch.Tensor
    """float32 (3, S, S), normalised with the config's mean/std."""
    image: ImageRef
    geometry: ImageGeometry
    laterality: Laterality | None
    laterality_source: str
    mirror: MirrorAxis | None
    """The mirror to canonical side: applied in-plane (COLUMNS/ROWS, see the geometry) or left
    to the slice order (SLICES); None when no mirror was needed or the side is unknown."""
    voi: str
    """How the pixel values were windowed."""
    position_mm: tuple[float, float, float] | None = field(default=None)
    """Image Position (Patient) of the frame, when known."""
    orientation: tuple[float, ...] | None = field(default=None)
    """Image Orientation (Patient) of the frame, when known."""

    def heatmap(self, patch_map: np.ndarray) -> Heatmap:
        """A :class:`Heatmap` for this image from a patch-grid map over the model input."""
        values, region = self.geometry.project_to_source(patch_map)
        return Heatmap(image=self.image, values=values, region=region)


def image_ref(ds: Dataset, *, frame_index: int = 0) -> ImageRef:
    """The :class:`ImageRef` of one frame (frame number set for multi-frame objects)."""
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID") if not ds.get(k)]
    if missing:
        raise UnsupportedImageError(f"missing identifying attributes: {', '.join(missing)}")
    return ImageRef(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        frame_number=frame_index + 1 if "NumberOfFrames" in ds else None,
    )


def side_of(ds: Dataset, frame_index: int, config: PreprocessConfig) -> LateralityEvidence:
    """The side of one frame as preprocessing reads it: the header, else (MR, when
    ``config.mr_laterality_offset_mm`` is set) the field of view's position."""
    evidence = determine_laterality(ds, frame_index=frame_index)
    if (
        evidence.laterality is None
        and config.mr_laterality_offset_mm is not None
        and ds.get("Modality") == "MR"
    ):
        evidence = laterality_from_position(
            ds, frame_index=frame_index, min_offset_mm=config.mr_laterality_offset_mm
        )
    return evidence


def preprocess_frame(
    ds: Dataset,
    raw: RawFrame,
    *,
    config: PreprocessConfig,
    window: Window | None = None,
    display: DisplayFrame | None = None,
) -> PreprocessedImage:
    """Turn one decoded frame into model input (steps 1-5 of the module docstring).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image the frame came from.
    raw : RawFrame
        :func:`~ortho_node.model.pixels.decode_frame` output for ``ds``.
    config : PreprocessConfig
        Size, normalisation, resize mode and canonical side.
    window : Window or None, optional
        VOI window to use when the header has none (a series-wide window), instead of the
        frame's own percentile window.
    display : DisplayFrame or None, optional
        ``to_display(raw, ds, ...)`` already computed by the caller (e.g. for a content check),
        so the VOI is not applied twice; it must come from ``raw`` with ``config``'s
        percentiles and ``window``.
    """
    if not isinstance(config, PreprocessConfig):
        raise TypeError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    frame_index = raw.frame_index
    if display is None:
        display = to_display(raw, ds, window=window, percentiles=config.window_percentiles)
    elif not isinstance(display, DisplayFrame) or display.frame_index != frame_index:
        raise ValueError(f"display must be the DisplayFrame of frame {frame_index} of raw")
    evidence = side_of(ds, frame_index, config)
    mirror: MirrorAxis | None = None
    if (
        evidence.laterality in (Laterality.LEFT, Laterality.RIGHT)
        and evidence.laterality is not config.canonical_side
    ):
        mirror = mirror_axis(ds, frame_index=frame_index)
    geometry = plan_geometry(
        display.values.shape,
        output_size=config.input_size,
        spacing=pixel_spacing(ds, frame_index=frame_index),
        target_spacing_mm=config.target_spacing_mm,
        missing_spacing=config.missing_spacing,
    )
    geometry = _with_flips(geometry, mirror)
    plane = _render(display.values, geometry, config.interpolation)
    mean = torch.tensor(config.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(config.std, dtype=torch.float32)[:, None, None]
    tensor = ((plane[None].expand(3, -1, -1) - mean) / std).contiguous()
    position = frame_position(ds, frame_index=frame_index)
    orientation = frame_orientation(ds, frame_index=frame_index)
    return PreprocessedImage(
        tensor=tensor,
        image=image_ref(ds, frame_index=frame_index),
        geometry=geometry,
        laterality=evidence.laterality,
        laterality_source=evidence.source,
        mirror=mirror,
        voi=display.voi,
        position_mm=None if position is None else _floats(position),  # type: ignore[arg-type]
        orientation=None if orientation is None else _floats(orientation),
    )


def _floats(vector: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in vector)


def _with_flips(geometry: ImageGeometry, mirror: MirrorAxis | None) -> ImageGeometry:
    return replace(
        geometry, flip_rows=mirror is MirrorAxis.ROWS, flip_columns=mirror is MirrorAxis.COLUMNS
    )


def preprocess_image(
    source: Dataset | str | os.PathLike[str],
    *,
    config: PreprocessConfig | None = None,
    frame_index: int = 0,
) -> PreprocessedImage:
    """Decode and preprocess one frame of a DICOM image.

    Parameters
    ----------
    source : pydicom.dataset.Dataset or path
        A dataset (its Pixel Data may be deferred) or a Part 10 file path.
    config : PreprocessConfig or None, optional
        Defaults to ``PreprocessConfig()`` (224 px, ImageNet normalisation, ``fit``, RIGHT).
    frame_index : int, optional
        0-based frame of a multi-frame image (default 0).

    Returns
    -------
    PreprocessedImage

    Raises
    ------
    UnsupportedImageError
        Not a usable grayscale image (no Pixel Data, colour, absurd size, undecodable,
        conflicting laterality, ...). The reason says which.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            ds = pydicom.dcmread(source)
        except (InvalidDicomError, OSError, EOFError) as exc:
            raise UnsupportedImageError(f"not a readable DICOM file: {exc}") from exc
    elif isinstance(source, Dataset):
        ds = source
    else:
        raise TypeError(f"source must be a pydicom Dataset or a path, got {type(source).__name__}")
    config = config if config is not None else PreprocessConfig()
    return preprocess_frame(ds, decode_frame(ds, frame_index=frame_index), config=config)
