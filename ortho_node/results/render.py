"""Pixels for the Secondary Capture: a greyscale source made 8-bit, a heatmap, ROI boxes and text.

Pure numpy + Pillow; nothing here builds DICOM. Two ways in:

- :func:`window_source` decodes a source dataset as the model does (:mod:`ortho_node.model.pixels`:
  pydicom's decoders, the modality LUT, then the VOI window or VOI LUT, per frame for enhanced
  images, else a 0.5-99.5 percentile window; MONOCHROME1 inverted so that bright means dense,
  as on a viewer);
- :func:`display_to_uint8` takes an array the caller already decoded ("display array": 2-D,
  higher values brighter, MONOCHROME1 already inverted); a ``uint8`` array is used as is,
  anything else is stretched over its 0.5-99.5 percentile range.

:func:`render_findings` then draws the explanation heatmaps (colour map over ``heatmap.values``
resized onto ``heatmap.region``), an ROI box per finding and a text panel *below* the image, so
the burned-in findings never hide anatomy. Narrow images (MR slices) are enlarged by an integer
factor first so the text stays legible; :class:`Rendering` reports that factor.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from ortho_node.model.pixels import UnsupportedImageError, decode_display_frame

MIN_WIDTH = 512
"""Images narrower than this are enlarged by an integer factor before drawing."""

HEAT_ALPHA = 0.6
"""Opacity of the heatmap colour where the map is 1 (it falls to 0 with the map)."""

FONT_FILES = ("DejaVuSans.ttf",)
"""Fonts tried first (Pillow looks in the system font folders); then Pillow's built-in font."""

_JET = ((0.0, (0, 0, 128)), (0.125, (0, 0, 255)), (0.375, (0, 255, 255)), (0.625, (255, 255, 0)),
        (0.875, (255, 0, 0)), (1.0, (128, 0, 0)))


def _colour_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    stops = np.array([s for s, _ in _JET])
    rgb = np.array([c for _, c in _JET], dtype=np.float64)
    return np.stack([np.interp(x, stops, rgb[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


HEAT_LUT = _colour_lut()
"""256 x 3 uint8 colour map ("jet"-like: blue for low, red for high) for heatmaps."""


@dataclass(frozen=True)
class Overlay:
    """One finding drawn on the image: a region in source pixel coordinates, its map and colour.

    ``region`` is ``(column0, row0, column1, row1)``; ``values`` (2-D, 0..1) is stretched over it.
    """

    region: tuple[float, float, float, float]
    values: np.ndarray | None
    colour: tuple[int, int, int]
    tag: str = ""


@dataclass(frozen=True)
class TextLine:
    text: str
    colour: tuple[int, int, int] = (255, 255, 255)


@dataclass(frozen=True)
class Rendering:
    """An RGB 8-bit picture: the (enlarged) image on top, the text panel below.

    ``scale`` is the integer enlargement of the source image; source pixel ``(row, col)`` lies
    at ``(row * scale, col * scale)``. ``image_rows`` / ``image_columns`` bound the image part.
    """

    pixels: np.ndarray
    scale: int
    image_rows: int
    image_columns: int


# --- greyscale ---------------------------------------------------------------------------


def _percentile_stretch(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, [0.5, 99.5])
    if not high > low:
        high = low + 1.0
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def window_source(ds: Dataset, *, frame_number: int | None = None) -> np.ndarray:
    """Decode one frame of a greyscale source and window it to 8-bit (bright = dense).

    Parameters
    ----------
    ds: pydicom.Dataset
        A MONOCHROME1 / MONOCHROME2 image with pixel data; not modified.
    frame_number: int | None, optional
        1-based frame of a multi-frame image (``None``: the first).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape (Rows, Columns).

    Raises
    ------
    ValueError
        The dataset has no pixel data or is not greyscale.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("source has no pixel data; pass a display array or a dataset read with pixels")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"source photometric interpretation must be MONOCHROME1/2 to render, got {photometric!r}")
    try:  # the model's own decoding: per-frame rescale and VOI of enhanced images included
        display = decode_display_frame(ds, frame_index=(frame_number or 1) - 1).values
    except UnsupportedImageError as exc:
        raise ValueError(f"source cannot be rendered: {exc}") from exc
    return np.round(display * 255.0).astype(np.uint8)


def display_to_uint8(display: np.ndarray) -> np.ndarray:
    """A caller's 2-D display array (higher = brighter) as ``uint8``; ``uint8`` input is kept."""
    if not isinstance(display, np.ndarray) or display.ndim != 2:
        raise ValueError(f"display array must be a 2-D numpy array, got {getattr(display, 'shape', type(display))}")
    if display.dtype == np.uint8:
        return display
    values = display.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("display array must be finite")
    return np.round(_percentile_stretch(values) * 255.0).astype(np.uint8)


# --- drawing -----------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    """The font for ``size`` px and whether it covers non-ASCII text (DejaVu does)."""
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size), True
        except OSError:
            continue
    return ImageFont.load_default(size=size), False


def _printable(text: str, unicode_ok: bool) -> str:
    if unicode_ok:
        return text
    text = text.replace("\u2014", "-").replace("\u2013", "-")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    words, lines, current = text.split(), [], ""
    for word in words:
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    lines.append(current)
    return lines


def _pixel_box(region: tuple[float, float, float, float], scale: int, rows: int, cols: int) -> tuple[int, int, int, int]:
    c0, r0, c1, r1 = region
    x0 = max(0, min(cols - 1, int(math.floor(c0 * scale))))
    y0 = max(0, min(rows - 1, int(math.floor(r0 * scale))))
    x1 = max(x0 + 1, min(cols, int(math.ceil(c1 * scale))))
    y1 = max(y0 + 1, min(rows, int(math.ceil(r1 * scale))))
    return x0, y0, x1, y1


def render_findings(grey: np.ndarray, *, overlays: Sequence[Overlay], lines: Sequence[TextLine]) -> Rendering:
    """Draw heatmaps, ROI boxes and the findings panel over an 8-bit greyscale image.

    Parameters
    ----------
    grey: numpy.ndarray
        ``uint8`` image (rows, columns), bright = dense.
    overlays: Sequence[Overlay]
        Findings to draw; regions in source pixel coordinates.
    lines: Sequence[TextLine]
        Text of the findings panel, top to bottom (wrapped to the image width).

    Returns
    -------
    Rendering
        RGB ``uint8`` pixels and the enlargement used.
    """
    if not isinstance(grey, np.ndarray) or grey.dtype != np.uint8 or grey.ndim != 2:
        raise ValueError(f"grey must be a 2-D uint8 array, got {getattr(grey, 'dtype', type(grey))} {getattr(grey, 'shape', '')}")
    scale = max(1, math.ceil(MIN_WIDTH / grey.shape[1]))
    image = np.kron(grey, np.ones((scale, scale), dtype=np.uint8)) if scale > 1 else grey
    rows, cols = image.shape
    rgb = np.repeat(image[:, :, None], 3, axis=2).astype(np.float32)

    heat = np.zeros((rows, cols), dtype=np.float32)
    boxes = []
    for overlay in overlays:
        x0, y0, x1, y1 = _pixel_box(overlay.region, scale, rows, cols)
        boxes.append((x0, y0, x1, y1, overlay))
        if overlay.values is None:
            continue
        values = np.clip(np.nan_to_num(overlay.values.astype(np.float32)), 0.0, 1.0)
        resized = np.asarray(Image.fromarray(values, mode="F").resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
        heat[y0:y1, x0:x1] = np.maximum(heat[y0:y1, x0:x1], np.clip(resized, 0.0, 1.0))
    alpha = (HEAT_ALPHA * heat)[:, :, None]
    colour = HEAT_LUT[np.round(heat * 255).astype(np.uint8)].astype(np.float32)
    rgb = rgb * (1.0 - alpha) + colour * alpha

    font_size = max(12, round(cols / 40))
    font, unicode_ok = _font(font_size)
    pad = max(4, font_size // 2)
    line_height = round(font_size * 1.3)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped: list[TextLine] = []
    for line in lines:
        for part in _wrap(measure, _printable(line.text, unicode_ok), font, cols - 2 * pad):
            wrapped.append(TextLine(part, line.colour))
    panel = 2 * pad + line_height * len(wrapped)

    canvas = Image.new("RGB", (cols, rows + panel), (24, 24, 24))
    canvas.paste(Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    width = max(2, font_size // 8)
    for x0, y0, x1, y1, overlay in boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=overlay.colour, width=width)
        if overlay.tag:
            draw.text((x0 + width + 2, y0 + width + 1), _printable(overlay.tag, unicode_ok), font=font,
                      fill=overlay.colour, stroke_width=1, stroke_fill=(0, 0, 0))
    draw.line((0, rows, cols, rows), fill=(128, 128, 128), width=1)
    y = rows + pad
    for line in wrapped:
        draw.text((pad, y), line.text, font=font, fill=line.colour)
        y += line_height
    return Rendering(pixels=np.asarray(canvas, dtype=np.uint8).copy(), scale=scale, image_rows=rows, image_columns=cols)
