"""Projected bones for the radiograph phantoms: attenuation from outer and inner (marrow) paths.

A bone is the union of simple parts (ellipsoids, tubes). Each part gives two path lengths
along the beam: through its outer surface and through its marrow cavity. :class:`BoneBuilder`
takes the union of all parts' outer paths and of all inner paths *before* turning them into
attenuation, so the cortex shows only on the outline of the whole bone, never where two parts
overlap, just as the cortical line of a real condyle merges into the metaphysis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ortho_node.phantoms.geometry import Canvas, PixelBox, ellipse_bounds, ellipse_chord
from ortho_node.phantoms.texture import upsample

# Linear attenuation per mm relative to air, at a typical knee kVp.
MU_SOFT = 0.018
MU_FAT = 0.014
MU_TRABECULAR = 0.022
MU_CORTEX = 0.062

Paths = tuple[np.ndarray, np.ndarray]
PartField = Callable[[np.ndarray, np.ndarray], "Paths | tuple[np.ndarray, np.ndarray, np.ndarray]"]
"""A function of anatomical ``(u, v)`` giving ``(outer, inner)`` path lengths in mm, and
optionally a third array of extra attenuation (plates, sclerosis) computed alongside."""


def tube_paths(u: np.ndarray, center: np.ndarray | float, half_width: np.ndarray | float,
               depth: np.ndarray | float, cortex: np.ndarray | float,
               fullness: np.ndarray | float = 1.0) -> Paths:
    """Paths through a cylinder along ``v`` with a wall ``cortex`` mm thick.

    The cross-section is an ellipse for ``fullness`` 1 and squarer (the path saturates at
    ``depth`` sooner) above 1, like the boxy distal femur.
    """
    def profile(half: np.ndarray | float) -> np.ndarray:
        chord = np.sqrt(np.maximum(1.0 - ((u - center) / half) ** 2, 0.0))
        if isinstance(fullness, float) and fullness == 1.0:
            return chord
        return np.minimum(chord * fullness, 1.0)

    outer = depth * profile(half_width)
    inner = (depth - 2.0 * cortex) * profile(np.maximum(half_width - cortex, 0.1))
    return outer.astype(np.float32, copy=False), inner.astype(np.float32, copy=False)


def ellipsoid_paths(u: np.ndarray, v: np.ndarray, center: tuple[float, float],
                    radii: tuple[float, float], depth: float, *, cortex: float = 1.2,
                    angle_deg: float = 0.0, fullness: float = 1.0) -> Paths:
    """Paths through an ellipsoid with a cortical shell ``cortex`` mm thick."""
    outer = ellipse_chord(u, v, center=center, radii=radii, depth=depth, angle_deg=angle_deg,
                          fullness=fullness)
    inner_radii = (max(radii[0] - cortex, 0.1), max(radii[1] - cortex, 0.1))
    inner = ellipse_chord(u, v, center=center, radii=inner_radii, depth=max(depth - 2 * cortex, 0.1),
                          angle_deg=angle_deg, fullness=fullness)
    return outer, inner


def attenuation(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Line integral of a bone from its outer and marrow path lengths."""
    return np.float32(MU_TRABECULAR) * inner + np.float32(MU_CORTEX) * (outer - inner)


class BoneBuilder:
    """Collects the parts of one bone on a canvas and renders their union into a bone map."""

    def __init__(self, canvas: Canvas) -> None:
        self.canvas = canvas
        shape = (canvas.rows, canvas.columns)
        self._outer = np.zeros(shape, np.float32)
        self._inner = np.zeros(shape, np.float32)
        self._extra = np.zeros(shape, np.float32)
        self._box: PixelBox | None = None

    def _window(self, bounds: tuple[float, float, float, float]) -> tuple[slice, slice] | None:
        box = self.canvas.box(*bounds)
        if box is None:
            return None
        if self._box is None:
            self._box = box
        else:
            self._box = PixelBox(min(box.column0, self._box.column0), min(box.row0, self._box.row0),
                                 max(box.column1, self._box.column1), max(box.row1, self._box.row1))
        return slice(box.row0, box.row1), slice(box.column0, box.column1)

    def add_part(self, bounds: tuple[float, float, float, float], field: PartField) -> None:
        """Unite the part given by ``field`` (evaluated inside anatomical ``bounds``) with the bone."""
        window = self._window(bounds)
        if window is None:
            return
        u, v = self.canvas.u[window], self.canvas.v[window]
        paths = field(u, v)
        np.maximum(self._outer[window], paths[0], out=self._outer[window])
        np.maximum(self._inner[window], paths[1], out=self._inner[window])
        if len(paths) == 3:
            self._extra[window] += paths[2]

    def add_ellipsoid(self, center: tuple[float, float], radii: tuple[float, float], depth: float,
                      **options: float) -> None:
        """Unite an ellipsoid (see :func:`ellipsoid_paths` for ``options``) with the bone."""
        self.add_part(ellipse_bounds(center, radii),
                      lambda u, v: ellipsoid_paths(u, v, center, radii, depth, **options))

    def add_density(self, bounds: tuple[float, float, float, float],
                    field: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        """Add attenuation that is not an outline: subchondral plates, sclerosis, cysts."""
        window = self._window(bounds)
        if window is None:
            return
        self._extra[window] += field(self.canvas.u[window], self.canvas.v[window])

    def add_spur(self, base: tuple[float, float], direction: tuple[float, float],
                 length: float) -> None:
        """An osteophyte: a dense lip ``length`` mm long growing out of the bone margin.

        ``base`` is a point on the margin; the lip is an elongated ellipsoid whose inner end
        lies inside the bone, so it joins the cortex instead of floating beside it.
        """
        if length <= 0.0:
            return
        norm = math.hypot(*direction)
        du, dv = direction[0] / norm, direction[1] / norm
        half_length = 0.5 * length + 1.0
        center = (base[0] + du * (half_length - 1.5), base[1] + dv * (half_length - 1.5))
        radii = (half_length, 0.22 * length + 0.5)
        angle = math.degrees(math.atan2(dv, du))
        depth = 14.0 + 3.0 * length

        def field(u: np.ndarray, v: np.ndarray) -> Paths:
            outer = ellipse_chord(u, v, center=center, radii=radii, depth=depth,
                                  angle_deg=angle, fullness=2.0)
            return outer, outer * np.float32(0.3)  # mostly cortical bone

        self.add_part(ellipse_bounds(center, radii), field)

    def render_into(self, bone: np.ndarray) -> None:
        """Add this bone's attenuation to ``bone`` (only over the area its parts cover)."""
        if self._box is None:
            return
        window = (slice(self._box.row0, self._box.row1), slice(self._box.column0, self._box.column1))
        outer = self._outer[window]
        inner = np.minimum(self._inner[window], outer)
        bone[window] += attenuation(outer, inner) + self._extra[window]


def add_soft_tissue(canvas: Canvas, soft: np.ndarray, *, center: float, half_width: float,
                    fat: float, depth_ratio: float) -> None:
    """The leg as a fat-coated cylinder, slightly wider towards the thigh.

    Soft tissue has no fine detail, so it is evaluated on every 4th pixel and interpolated.
    """
    step = 4
    u, v = canvas.u[::step, ::step], canvas.v[::step, ::step]
    width = half_width * (1.0 - 0.0012 * np.clip(v, -150.0, 150.0))
    outer, inner = tube_paths(u, center, width, 2.0 * width * depth_ratio, fat)
    coarse = np.float32(MU_FAT) * outer + np.float32(MU_SOFT - MU_FAT) * inner
    soft += upsample(coarse, soft.shape, step=step)


def add_fat_pad(canvas: Canvas, soft: np.ndarray, center: tuple[float, float],
                radii: tuple[float, float], depth: float) -> None:
    """A fat pad: less dense than the muscle it replaces, so a darker patch."""
    canvas.add(soft, ellipse_bounds(center, radii),
               lambda u, v: np.float32(MU_FAT - MU_SOFT)
               * ellipse_chord(u, v, center=center, radii=radii, depth=depth))
