"""Pixel grids in anatomical millimetres, and the projected shapes phantoms are built from.

A :class:`Canvas` maps every pixel of an image to anatomical coordinates ``(u, v)`` in mm
(``u`` across the image, ``v`` down it, origin at the joint centre) through a random pose
(shift, rotation, scale). Shapes are written in anatomical terms and only evaluated inside
their own bounding window, which keeps a 2000 x 2500 radiograph well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Field = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""A function of anatomical coordinates ``(u, v)`` (float32 arrays) returning float32 values."""


@dataclass(frozen=True)
class PixelBox:
    """An axis-aligned pixel rectangle: ``column0 <= column < column1``, ``row0 <= row < row1``.

    The order ``(column0, row0, column1, row1)`` matches the ``region`` of
    :class:`ortho_node.model.findings.Heatmap`.
    """

    column0: int
    row0: int
    column1: int
    row1: int

    def __post_init__(self) -> None:
        if self.column1 <= self.column0 or self.row1 <= self.row0:
            raise ValueError(f"PixelBox must have positive size, got {self.as_tuple()}")

    def as_tuple(self) -> tuple[int, int, int, int]:
        """Return ``(column0, row0, column1, row1)``."""
        return (self.column0, self.row0, self.column1, self.row1)

    def mirrored(self, columns: int) -> PixelBox:
        """Return this box flipped left-right in an image ``columns`` wide."""
        return PixelBox(columns - self.column1, self.row0, columns - self.column0, self.row1)


@dataclass(frozen=True)
class Pose:
    """Where the anatomy lies on the detector.

    ``shift_x_mm``/``shift_y_mm`` move the anatomical origin from the image centre,
    ``rotation_deg`` turns the anatomy (positive: clockwise on screen), ``scale`` converts
    anatomical mm to detector mm (body size times geometric magnification).
    """

    shift_x_mm: float = 0.0
    shift_y_mm: float = 0.0
    rotation_deg: float = 0.0
    scale: float = 1.0


class Canvas:
    """Anatomical coordinates of every pixel of one image, and windowed evaluation of shapes."""

    def __init__(self, rows: int, columns: int, *, pixel_spacing_mm: float, pose: Pose) -> None:
        self.rows = rows
        self.columns = columns
        self.pixel_spacing_mm = pixel_spacing_mm
        self.pose = pose
        angle = math.radians(pose.rotation_deg)
        self._cos, self._sin = math.cos(angle), math.sin(angle)
        x = ((np.arange(columns, dtype=np.float32) - (columns - 1) / 2) * pixel_spacing_mm
             - pose.shift_x_mm)[None, :]
        y = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * pixel_spacing_mm
             - pose.shift_y_mm)[:, None]
        inverse = 1.0 / pose.scale
        self.u = ((self._cos * x + self._sin * y) * inverse).astype(np.float32)
        self.v = ((-self._sin * x + self._cos * y) * inverse).astype(np.float32)

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        """Return the ``(column, row)`` of anatomical point ``(u, v)``."""
        x = self.pose.scale * (self._cos * u - self._sin * v) + self.pose.shift_x_mm
        y = self.pose.scale * (self._sin * u + self._cos * v) + self.pose.shift_y_mm
        return (x / self.pixel_spacing_mm + (self.columns - 1) / 2,
                y / self.pixel_spacing_mm + (self.rows - 1) / 2)

    def box(self, u0: float, v0: float, u1: float, v1: float) -> PixelBox | None:
        """Return the pixel box covering anatomical rectangle ``[u0, u1] x [v0, v1]``.

        The box is clipped to the image; ``None`` when the rectangle lies outside it.
        """
        corners = [self.to_pixel(u, v) for u in (u0, u1) for v in (v0, v1)]
        cols = [c for c, _ in corners]
        rows = [r for _, r in corners]
        c0, c1 = max(0, math.floor(min(cols))), min(self.columns, math.ceil(max(cols)) + 1)
        r0, r1 = max(0, math.floor(min(rows))), min(self.rows, math.ceil(max(rows)) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        return PixelBox(c0, r0, c1, r1)

    def add(self, target: np.ndarray, bounds: tuple[float, float, float, float],
            field: Field, *, union: bool = False) -> None:
        """Evaluate ``field`` inside anatomical ``bounds`` (u0, v0, u1, v1) into ``target``.

        With ``union`` the values are combined by maximum (parts of one bone), otherwise added
        (overlapping bones and soft tissue attenuate in sequence).
        """
        box = self.box(*bounds)
        if box is None:
            return
        rs, cs = slice(box.row0, box.row1), slice(box.column0, box.column1)
        values = field(self.u[rs, cs], self.v[rs, cs])
        if union:
            np.maximum(target[rs, cs], values, out=target[rs, cs])
        else:
            target[rs, cs] += values


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Return the cubic smooth step of ``x`` clipped to [0, 1] (0 below 0, 1 above 1)."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def ellipse_chord(u: np.ndarray, v: np.ndarray, *, center: tuple[float, float],
                  radii: tuple[float, float], depth: float, angle_deg: float = 0.0,
                  fullness: float = 1.0) -> np.ndarray:
    """Return the path length through an ellipsoid, projected along the beam.

    The ellipsoid has in-plane semi-axes ``radii`` (before turning by ``angle_deg``) and a full
    thickness of ``depth`` mm along the beam at its centre. ``fullness`` > 1 squares off the
    profile (the thickness saturates at ``depth`` sooner), for bone ends that stay dense right
    up to their articular surface.
    """
    du, dv = u - np.float32(center[0]), v - np.float32(center[1])
    if angle_deg:
        a = math.radians(angle_deg)
        ca, sa = np.float32(math.cos(a)), np.float32(math.sin(a))
        du, dv = ca * du + sa * dv, -sa * du + ca * dv
    q = (du * np.float32(1.0 / radii[0])) ** 2 + (dv * np.float32(1.0 / radii[1])) ** 2
    profile = np.sqrt(np.maximum(np.float32(1.0) - q, np.float32(0.0)))
    if fullness != 1.0:
        profile = np.minimum(profile * np.float32(fullness), np.float32(1.0))
    return np.float32(depth) * profile


def ellipse_bounds(center: tuple[float, float], radii: tuple[float, float]
                   ) -> tuple[float, float, float, float]:
    """Return anatomical bounds ``(u0, v0, u1, v1)`` that hold an ellipse at any angle."""
    r = max(radii)
    return (center[0] - r, center[1] - r, center[0] + r, center[1] + r)
