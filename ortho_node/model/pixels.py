"""Decode one DICOM frame into display values in [0, 1], bone / high signal bright.

This is the first step of the DICOM → tensor pipeline (:mod:`ortho_node.model.preprocess`). It
turns stored pixel values into what a radiologist's viewer would show, without resampling:

1. **Decode** the frame with pydicom 3's pixel backends (native, deflated, RLE, JPEG baseline /
   extended / lossless via pylibjpeg-libjpeg, JPEG-LS via pyjpegls, JPEG 2000 via
   pylibjpeg-openjpeg). Multi-frame objects are decoded one frame at a time.
2. **Modality LUT** (PS3.3 C.11.1): Modality LUT Sequence or Rescale Slope/Intercept, taken
   from the frame's Pixel Value Transformation functional group when the object has one.
3. **VOI** (PS3.3 C.11.2), first that applies:

   a. the VOI LUT Sequence, preferred over a window when both exist (pydicom's default: the
      vendor's non-linear LUT is the intended presentation), normalised by the LUT's own
      output range;
   b. the first Window Center/Width pair (frame-level Frame VOI LUT functional group first),
      with its VOI LUT Function;
   c. a window handed in by the caller for frames whose header has none (a series-wide
      window, see :mod:`.series`);
   d. otherwise a **percentile window**: the 0.5th to 99.5th percentile of the frame's
      modality values (configurable). If that range is empty (over 99 % of pixels share one
      value) the full min–max range is used; a constant frame is rejected.

4. **Polarity**: MONOCHROME1 is inverted, so that dense tissue (bone) is always bright.
   Windows are in modality units whatever the polarity (PS3.3 C.11.2.1.2); the inversion
   comes after them, as in a viewer.

Anything that cannot be turned into a trustworthy grayscale frame raises
:class:`UnsupportedImageError` with a reason an admin can act on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut, pixel_array

__all__ = [
    "MIN_IMAGE_SIDE",
    "MAX_IMAGE_SIDE",
    "DEFAULT_WINDOW_PERCENTILES",
    "UnsupportedImageError",
    "Window",
    "RawFrame",
    "DisplayFrame",
    "frame_count",
    "functional_group_value",
    "frame_orientation",
    "frame_position",
    "check_decodable",
    "check_percentiles",
    "decode_frame",
    "to_display",
    "decode_display_frame",
    "percentile_window",
]

#: Smallest accepted row / column count: below this nothing a 16-px-patch ViT can use remains.
MIN_IMAGE_SIDE = 32
#: Largest accepted row / column count: larger is not a plausible radiograph or MR slice.
MAX_IMAGE_SIDE = 16_384
#: Default VOI percentiles when the header has no window.
DEFAULT_WINDOW_PERCENTILES = (0.5, 99.5)

_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# pydicom's windowing output range for BitsStored 16, unsigned, no rescale: [0, 65535].
_WINDOW_OUTPUT_MAX = 65535.0


class UnsupportedImageError(Exception):
    """The dataset holds no grayscale image this node can use; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Window:
    """A linear VOI window in modality units (PS3.3 C.11.2.1.2)."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError(f"window must be finite, got center={self.center}, width={self.width}")
        if self.width <= 0:
            raise ValueError(f"window width must be > 0, got {self.width}")

    @classmethod
    def from_range(cls, low: float, high: float) -> Window:
        """Window that maps ``low`` to black and ``high`` to white."""
        return cls(center=(low + high) / 2.0, width=high - low)


@dataclass(frozen=True)
class RawFrame:
    """One decoded frame in modality units (after the Modality LUT, before VOI)."""

    values: np.ndarray
    """(rows, columns) modality values (e.g. HU, or vendor units for MR): float32 for 8- and
    16-bit integer pixels, float64 for wider or float ones."""
    frame_index: int
    """0-based frame index inside the object (0 for single-frame images)."""
    header_voi: str | None
    """``"voi-lut"`` or ``"window"`` when the header defines the VOI for this frame, else None."""


@dataclass(frozen=True)
class DisplayFrame:
    """One frame as display values: float32 (rows, columns) in [0, 1], dense tissue bright."""

    values: np.ndarray
    frame_index: int
    voi: str
    """How the values were windowed, e.g. ``"window 600/1600"`` or ``"percentile 0.5-99.5"``."""


def frame_count(ds: Dataset) -> int:
    """Number of frames in ``ds`` (1 when Number of Frames is absent)."""
    value = ds.get("NumberOfFrames", 1)
    try:
        count = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError) as exc:
        raise UnsupportedImageError(f"Number of Frames {value!r} is not an integer") from exc
    if count < 1:
        raise UnsupportedImageError(f"Number of Frames must be >= 1, found {count}")
    return count


def functional_group_value(
    ds: Dataset, frame_index: int, sequence_keyword: str, keyword: str
) -> Any | None:
    """Return ``keyword`` for one frame of a multi-frame object, or from the top level.

    Looks in the frame's Per-Frame Functional Groups item, then the Shared Functional Groups,
    then the dataset itself (single-frame images and flattened multi-frame headers).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image.
    frame_index : int
        0-based frame index.
    sequence_keyword : str
        The functional group macro's sequence, e.g. ``"PixelMeasuresSequence"``.
    keyword : str
        The attribute inside it, e.g. ``"PixelSpacing"``.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame_index < len(per_frame):
        found = _value_in_group(per_frame[frame_index], sequence_keyword, keyword)
        if found is not None:
            return found
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        found = _value_in_group(shared[0], sequence_keyword, keyword)
        if found is not None:
            return found
    value = ds.get(keyword)
    return None if value in (None, "") else value


def _frame_vector(
    ds: Dataset, frame_index: int, group: str, keyword: str, size: int
) -> np.ndarray | None:
    value = functional_group_value(ds, frame_index, group, keyword)
    if value is None:
        return None
    try:
        vector = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UnsupportedImageError(f"{keyword} {value!r} is not {size} numbers") from exc
    if vector.shape != (size,) or not np.isfinite(vector).all():
        raise UnsupportedImageError(
            f"{keyword} must hold {size} finite numbers, got {list(value)!r}"
        )
    return vector


def frame_orientation(ds: Dataset, *, frame_index: int = 0) -> np.ndarray | None:
    """Image Orientation (Patient) of one frame as 6 floats (row then column direction).

    Frame-level Plane Orientation first. None when absent.

    Raises
    ------
    UnsupportedImageError
        Present but not two orthogonal unit vectors.
    """
    group, keyword = "PlaneOrientationSequence", "ImageOrientationPatient"
    vector = _frame_vector(ds, frame_index, group, keyword, 6)
    if vector is None:
        return None
    row, column = vector[:3], vector[3:]
    unit = abs(np.linalg.norm(row) - 1) <= 0.01 and abs(np.linalg.norm(column) - 1) <= 0.01
    if not unit or abs(row @ column) > 0.01:
        raise UnsupportedImageError(
            f"ImageOrientationPatient {vector.tolist()} is not two orthogonal unit vectors"
        )
    return vector


def frame_position(ds: Dataset, *, frame_index: int = 0) -> np.ndarray | None:
    """Image Position (Patient) of one frame (frame-level Plane Position first), or None."""
    return _frame_vector(ds, frame_index, "PlanePositionSequence", "ImagePositionPatient", 3)


def _value_in_group(group: Dataset, sequence_keyword: str, keyword: str) -> Any | None:
    macro = group.get(sequence_keyword)
    if not macro:
        return None
    value = macro[0].get(keyword)
    return None if value in (None, "") else value


def check_decodable(ds: Dataset) -> None:
    """Reject datasets whose pixel data is not a usable grayscale image, before decoding.

    Raises
    ------
    TypeError
        ``ds`` is not a pydicom Dataset.
    UnsupportedImageError
        No Pixel Data, float pixel data, colour, 1-bit, or absurd dimensions.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds).__name__}")
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedImageError("float pixel data (parametric map) is not an image to read")
        raise UnsupportedImageError("the dataset has no Pixel Data (7FE0,0010)")
    samples = ds.get("SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in _GRAYSCALE:
        raise UnsupportedImageError(
            f"colour or palette image (Photometric Interpretation {photometric or 'missing'!r}, "
            f"{samples} sample(s) per pixel) where grayscale MONOCHROME1/2 is expected"
        )
    if ds.get("BitsAllocated") == 1:
        raise UnsupportedImageError("1-bit pixel data is a binary mask, not a grayscale image")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not isinstance(rows, int) or not isinstance(columns, int):
        raise UnsupportedImageError(
            f"Rows/Columns missing or not integers ({rows!r} x {columns!r})"
        )
    for name, side in (("Rows", rows), ("Columns", columns)):
        if not MIN_IMAGE_SIDE <= side <= MAX_IMAGE_SIDE:
            raise UnsupportedImageError(
                f"{name} {side} is outside the accepted {MIN_IMAGE_SIDE}-{MAX_IMAGE_SIDE} pixels"
            )
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME2" and shape == "INVERSE":
        # DX ties INVERSE to MONOCHROME1; on MONOCHROME2 the intended polarity is contradictory.
        raise UnsupportedImageError(
            "Presentation LUT Shape INVERSE on a MONOCHROME2 image: display polarity is ambiguous"
        )
    frame_count(ds)


def decode_frame(ds: Dataset, *, frame_index: int = 0) -> RawFrame:
    """Decode one frame and apply its Modality LUT.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image; its Pixel Data may be deferred (read on access from the file).
    frame_index : int, optional
        0-based frame to decode (default 0).

    Returns
    -------
    RawFrame
        Modality values (rows, columns), float32 for 8/16-bit integer pixels, else float64.

    Raises
    ------
    UnsupportedImageError
        Not a usable grayscale image, or the compressed data cannot be decoded.
    """
    check_decodable(ds)
    count = frame_count(ds)
    if not isinstance(frame_index, int) or isinstance(frame_index, bool):
        raise TypeError(f"frame_index must be an int, got {type(frame_index).__name__}")
    if not 0 <= frame_index < count:
        raise ValueError(f"frame_index must lie in [0, {count - 1}], got {frame_index}")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not syntax:
        raise UnsupportedImageError("no Transfer Syntax UID in the file meta: cannot decode pixels")
    try:
        stored = pixel_array(ds, index=frame_index)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError, EOFError) as exc:
        raise UnsupportedImageError(
            f"pixel data in {syntax.name} could not be decoded: {exc}"
        ) from exc
    if stored.shape != (ds.Rows, ds.Columns):
        raise UnsupportedImageError(
            f"decoded frame has shape {stored.shape}, expected ({ds.Rows}, {ds.Columns})"
        )
    modality = _modality_values(stored, _modality_view(ds, frame_index))
    # Float pixels, and a rescale that overflows or is itself non-finite, end up here.
    if not np.isfinite(modality).all():
        raise UnsupportedImageError("modality LUT produced non-finite values")
    voi_view = _voi_view(ds, frame_index)
    header_voi: str | None = None
    if _has_voi_lut(voi_view):
        header_voi = "voi-lut"
    elif "WindowCenter" in voi_view:
        header_voi = "window"
    return RawFrame(values=modality, frame_index=frame_index, header_voi=header_voi)


def to_display(
    raw: RawFrame,
    ds: Dataset,
    *,
    window: Window | None = None,
    percentiles: tuple[float, float] = DEFAULT_WINDOW_PERCENTILES,
) -> DisplayFrame:
    """Apply VOI and polarity to a decoded frame (rules in the module docstring).

    Parameters
    ----------
    raw : RawFrame
        Output of :func:`decode_frame` for ``ds``.
    ds : pydicom.dataset.Dataset
        The same image (its VOI attributes and Photometric Interpretation are read).
    window : Window or None, optional
        Used instead of a percentile window when the header defines no VOI for this frame.
    percentiles : tuple of float, optional
        Low/high percentiles for the fallback window (default 0.5, 99.5).

    Raises
    ------
    UnsupportedImageError
        The frame is constant, or its VOI LUT is degenerate.
    """
    low_pct, high_pct = check_percentiles(percentiles)
    if not isinstance(raw, RawFrame):
        raise TypeError(f"raw must be a RawFrame, got {type(raw).__name__}")
    view = _voi_view(ds, raw.frame_index)
    values = raw.values
    if raw.header_voi == "voi-lut":
        display, voi = _apply_voi_lut_sequence(values, view), "VOI LUT sequence"
    elif raw.header_voi == "window":
        display = _header_window(values, view)
        voi = f"window {float(view.WindowCenter):g}/{float(view.WindowWidth):g}"
    else:
        if window is None:
            window = percentile_window(values, percentiles=(low_pct, high_pct))
            voi = f"percentile {low_pct:g}-{high_pct:g}"
        else:
            voi = f"supplied window {window.center:g}/{window.width:g}"
        display = _window_map(values, low=window.center - window.width / 2.0, width=window.width)
    display = np.asarray(display, dtype=np.float32)  # the window paths already give float32
    np.clip(display, 0.0, 1.0, out=display)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        # MONOCHROME1: minimum value is white; invert so dense tissue is bright everywhere.
        np.subtract(1.0, display, out=display)
    return DisplayFrame(values=display, frame_index=raw.frame_index, voi=voi)


def decode_display_frame(
    ds: Dataset,
    *,
    frame_index: int = 0,
    percentiles: tuple[float, float] = DEFAULT_WINDOW_PERCENTILES,
) -> DisplayFrame:
    """Decode one frame straight to display values (:func:`decode_frame` + :func:`to_display`)."""
    return to_display(decode_frame(ds, frame_index=frame_index), ds, percentiles=percentiles)


def percentile_window(
    values: np.ndarray, *, percentiles: tuple[float, float] = DEFAULT_WINDOW_PERCENTILES
) -> Window:
    """Robust window over ``values``: the given percentiles, else min–max if they coincide.

    Raises
    ------
    UnsupportedImageError
        All values are equal (a blank frame carries no image).
    """
    low_pct, high_pct = check_percentiles(percentiles)
    low, high = (float(v) for v in np.percentile(values, [low_pct, high_pct]))
    if high <= low:
        # Mostly uniform background: the percentiles collapse; the full range still has contrast.
        low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        raise UnsupportedImageError(f"the frame is constant (all pixels {low:g}): no image content")
    return Window.from_range(low, high)


def check_percentiles(
    percentiles: Sequence[float], name: str = "percentiles"
) -> tuple[float, float]:
    """Validate a (low, high) percentile pair; ``name`` is the argument named in errors."""
    if not isinstance(percentiles, tuple) or len(percentiles) != 2:
        raise TypeError(f"{name} must be a (low, high) tuple, got {percentiles!r}")
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"{name} must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    return low, high


def _header_window(values: np.ndarray, view: Dataset) -> np.ndarray:
    """The header's first window over modality values, as display values (clipped later).

    LINEAR and LINEAR_EXACT (PS3.3 C.11.2.1.2.1, C.11.2.1.3.2) are one affine map into
    float32 (:func:`_window_map`): pydicom's ``apply_windowing`` computes the same values
    through boolean masks and took two thirds of preparing a 1024² radiograph. SIGMOID goes
    through pydicom.
    """
    function = str(view.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    center, width = _first(view.WindowCenter), _first(view.WindowWidth)
    if function == "LINEAR":
        if width < 1:
            raise UnsupportedImageError(f"unusable window in the header: LINEAR window width {width:g} < 1")
        center, width = center - 0.5, width - 1.0
        if width == 0:  # a threshold: below or at the centre black, above it white
            return (values > center).astype(np.float32)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise UnsupportedImageError(f"unusable window in the header: LINEAR_EXACT window width {width:g} <= 0")
    else:
        try:
            windowed = apply_voi_lut(values, view, index=0, prefer_lut=False)
        except ValueError as exc:  # SIGMOID with width <= 0, an unknown VOI LUT Function
            raise UnsupportedImageError(f"unusable window in the header: {exc}") from exc
        return windowed / _WINDOW_OUTPUT_MAX
    return _window_map(values, low=center - width / 2.0, width=width)


def _window_map(values: np.ndarray, *, low: float, width: float) -> np.ndarray:
    """``(values - low) / width`` as float32, in two passes over the image: the subtraction
    in the values' own precision (so a narrow window far from zero keeps its resolution), the
    scaling in float32. Within 1e-7 of the float64 expression over the window's range for
    float64 values; float32 values (8/16-bit pixels) add only their own rounding, none at all
    for unscaled integers and half-integer window edges."""
    out = np.empty(values.shape, dtype=np.float32)
    np.subtract(values, low, out=out, casting="same_kind")
    out *= np.float32(1.0 / width)
    return out


def _modality_dtype(stored: np.ndarray) -> type[np.floating]:
    """float32 for 8- and 16-bit integer pixels, float64 for wider or float ones.

    Every 8/16-bit value is exact in float32, and a rescale keeps ~7 significant digits there:
    far more than display values need (the encoder sees them as bf16, 3 digits). Half the bytes
    of float64 make each later pass over the frame (rescale, finiteness, window) about twice as
    fast. 32-bit integers are not all exact in float32, so they, and float pixels, stay float64.
    """
    return np.float32 if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 else np.float64


def _modality_values(stored: np.ndarray, view: Dataset) -> np.ndarray:
    """Modality values of stored values (dtype: :func:`_modality_dtype`). A Modality LUT
    Sequence goes through pydicom; Rescale Slope / Intercept, the usual case, is one
    conversion and at most two in-place operations (pydicom's ``apply_modality_lut`` gives the
    same values, with more temporary copies of the frame)."""
    dtype = _modality_dtype(stored)
    if "ModalityLUTSequence" in view:
        return np.asarray(apply_modality_lut(stored, view), dtype=dtype)
    values = stored.astype(dtype)
    slope, intercept = float(view.get("RescaleSlope", 1.0)), float(view.get("RescaleIntercept", 0.0))
    with np.errstate(over="ignore"):  # an overflow gives inf, which decode_frame rejects
        if slope != 1.0:
            values *= slope
        if intercept != 0.0:
            values += intercept
    return values


def _first(value: Any) -> float:
    # Window Center/Width are VM 1-n; the first pair is the default presentation.
    if isinstance(value, (MultiValue, list, tuple)):
        return float(value[0])
    return float(value)


def _has_voi_lut(view: Dataset) -> bool:
    sequence = view.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def _apply_voi_lut_sequence(values: np.ndarray, view: Dataset) -> np.ndarray:
    descriptor = view.VOILUTSequence[0].LUTDescriptor
    entries, first_mapped = int(descriptor[0]) or 65536, int(descriptor[1])
    # Run every LUT input through pydicom once to learn the LUT's real output range: some
    # vendors declare 16 bits per entry but only fill 12.
    try:
        lut_inputs = np.arange(first_mapped, first_mapped + entries)
        lut_outputs = apply_voi(lut_inputs, view).astype(np.float64)
        mapped = apply_voi(np.rint(values).astype(np.int64), view).astype(np.float64)
    except (NotImplementedError, ValueError, IndexError) as exc:
        raise UnsupportedImageError(f"unusable VOI LUT Sequence: {exc}") from exc
    low, high = float(lut_outputs.min()), float(lut_outputs.max())
    if high <= low:
        raise UnsupportedImageError("the VOI LUT maps every value to one output (degenerate LUT)")
    return (mapped - low) / (high - low)


def _modality_view(ds: Dataset, frame_index: int) -> Dataset:
    """A small dataset holding one frame's Modality LUT / rescale for pydicom.

    Frame-level functional groups are resolved here, and pydicom's helpers (some assign to the
    dataset they are given) never touch the caller's dataset.
    """
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    if ds.get("ModalityLUTSequence"):
        view.ModalityLUTSequence = ds.ModalityLUTSequence
        return view
    group = "PixelValueTransformationSequence"
    slope = functional_group_value(ds, frame_index, group, "RescaleSlope")
    intercept = functional_group_value(ds, frame_index, group, "RescaleIntercept")
    if slope is not None and intercept is not None:
        view.RescaleSlope, view.RescaleIntercept = float(slope), float(intercept)
    return view


def _voi_view(ds: Dataset, frame_index: int) -> Dataset:
    """A small dataset holding one frame's VOI for pydicom, applied to modality values.

    It declares unsigned 16-bit MONOCHROME2 without rescale, so pydicom's windowing output
    range is exactly [0, 65535] whatever the source's bit depth.
    """
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    view.PhotometricInterpretation = "MONOCHROME2"
    view.BitsStored = 16
    view.PixelRepresentation = 0
    if _has_voi_lut(ds):
        view.VOILUTSequence = ds.VOILUTSequence
    group = "FrameVOILUTSequence"
    center = functional_group_value(ds, frame_index, group, "WindowCenter")
    width = functional_group_value(ds, frame_index, group, "WindowWidth")
    if center is not None and width is not None:
        view.WindowCenter, view.WindowWidth = _first(center), _first(width)
        function = functional_group_value(ds, frame_index, group, "VOILUTFunction")
        if function is not None:
            view.VOILUTFunction = str(function).strip()
    return view
