"""Tissue label maps of sagittal knee MR slices.

Each slice is painted back to front (later tissue wins) in anatomical millimetres: ``u`` points
posterior (image right, as in a standard sagittal display with anterior on the left), ``v``
points inferior, the centre of the tibial plateau is the origin, and ``x`` (the slice position)
points medial. A left knee reuses these maps in reverse slice order.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ortho_node.phantoms.geometry import Canvas, smoothstep

_FAR = 2000.0
Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]
Bounds = tuple[float, float, float, float]


class Tissue(enum.IntEnum):
    """Label values of the map; :mod:`ortho_node.phantoms.mri` gives each a signal."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    MARROW = 3
    CORTEX = 4
    CARTILAGE = 5
    MENISCUS = 6
    LIGAMENT = 7
    FLUID = 8
    TEAR = 9
    ACL = 10
    EDEMA = 11
    TORN_ACL = 12


@dataclass(frozen=True)
class MRKnee:
    """Per-knee shape and the pathology drawn, in anatomical mm."""

    condyle_radius: float
    medial_center_x: float
    lateral_center_x: float
    condyle_half_width: float
    plateau_half_depth: float
    jsw: float
    leg_half_width: float
    fat_thickness: float
    acl_tear: bool
    meniscus_tear: bool
    effusion: bool
    tear_angle_deg: float


def draw_mr_knee(rng: np.random.Generator, *, acl_tear: bool, meniscus_tear: bool,
                 effusion: bool) -> MRKnee:
    """Return a random adult knee with the requested pathology."""
    return MRKnee(
        condyle_radius=float(rng.uniform(20.5, 23.5)),
        medial_center_x=float(rng.uniform(22.0, 26.0)),
        lateral_center_x=float(rng.uniform(-25.0, -21.0)),
        condyle_half_width=float(rng.uniform(14.5, 17.0)),
        plateau_half_depth=float(rng.uniform(23.0, 26.0)),
        jsw=float(rng.uniform(4.5, 5.5)),
        leg_half_width=float(rng.uniform(52.0, 60.0)),
        fat_thickness=float(rng.uniform(4.0, 11.0)),
        acl_tear=acl_tear,
        meniscus_tear=meniscus_tear,
        effusion=effusion,
        tear_angle_deg=float(rng.uniform(-28.0, -12.0)),
    )


# ACL from its femoral footprint (back of the notch) to its tibial one (in front of the spines).
ACL_FEMUR = (12.0, -21.0)
ACL_TIBIA = (-8.0, -1.0)
ACL_SLICES = (-10.0, 1.0)
"""Medio-lateral range (mm, + medial) of the slices that show the ACL."""
ACL_BOUNDS = (-15.0, -27.0, 19.0, 3.0)
"""Anatomical rectangle (u0, v0, u1, v1) holding the ACL (intact or torn) on those slices."""
MEDIAL_MENISCUS_SLICES = (8.0, 42.0)
"""Medio-lateral range of the slices through the medial meniscus."""
_NOTCH_HALF_WIDTH = 9.0


@dataclass(frozen=True)
class SliceLabels:
    """One painted slice: tissue labels and bone-marrow oedema (0-1, soft-edged)."""

    labels: np.ndarray
    edema: np.ndarray | None


def _profile(x: float, center: float, half_width: float) -> float:
    """Elliptic cross-section factor: 1 at ``center``, 0 at ``center +- half_width``."""
    q = 1.0 - ((x - center) / half_width) ** 2
    return math.sqrt(q) if q > 0.0 else 0.0


def _ellipse(center: tuple[float, float], radii: tuple[float, float], angle_deg: float = 0.0) -> Mask:
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    inv_u, inv_v = 1.0 / max(radii[0], 1e-3), 1.0 / max(radii[1], 1e-3)

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        du, dv = u - center[0], v - center[1]
        ru, rv = (ca * du + sa * dv) * inv_u, (-sa * du + ca * dv) * inv_v
        return ru * ru + rv * rv <= 1.0
    return inside


def _ellipse_bounds(center: tuple[float, float], radii: tuple[float, float], pad: float = 0.0) -> Bounds:
    r = max(radii) + pad
    return (center[0] - r, center[1] - r, center[0] + r, center[1] + r)


def _band(start: tuple[float, float], end: tuple[float, float], half_width: float) -> Mask:
    """Points within ``half_width`` of the segment ``start``-``end``."""
    du, dv = end[0] - start[0], end[1] - start[1]
    length2 = du * du + dv * dv

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = np.clip(((u - start[0]) * du + (v - start[1]) * dv) / length2, 0.0, 1.0)
        eu, ev = u - start[0] - t * du, v - start[1] - t * dv
        return eu * eu + ev * ev <= half_width * half_width
    return inside


def _band_bounds(start: tuple[float, float], end: tuple[float, float], pad: float) -> Bounds:
    return (min(start[0], end[0]) - pad, min(start[1], end[1]) - pad,
            max(start[0], end[0]) + pad, max(start[1], end[1]) + pad)


class _Painter:
    """Paints masks into the label map of one slice, each evaluated inside its own window."""

    def __init__(self, canvas: Canvas) -> None:
        self.canvas = canvas
        self.labels = np.zeros((canvas.rows, canvas.columns), np.uint8)

    def fill(self, bounds: Bounds, inside: Mask, tissue: Tissue, *, only: Tissue | None = None) -> None:
        """Set ``tissue`` where ``inside(u, v)``; with ``only``, just over that tissue."""
        box = self.canvas.box(*bounds)
        if box is None:
            return
        rs, cs = slice(box.row0, box.row1), slice(box.column0, box.column1)
        window = self.labels[rs, cs]
        mask = inside(self.canvas.u[rs, cs], self.canvas.v[rs, cs])
        if only is not None:
            mask &= window == only
        window[mask] = tissue

    def bone(self, bounds: Bounds, inside: Callable[[np.ndarray, np.ndarray, float], np.ndarray],
             *, cortex: float = 1.4) -> None:
        """A bone: cortex where ``inside(u, v, 0)``, marrow where ``inside(u, v, -cortex)``."""
        box = self.canvas.box(*bounds)
        if box is None:
            return
        rs, cs = slice(box.row0, box.row1), slice(box.column0, box.column1)
        u, v = self.canvas.u[rs, cs], self.canvas.v[rs, cs]
        window = self.labels[rs, cs]
        window[inside(u, v, 0.0)] = Tissue.CORTEX
        window[inside(u, v, -cortex)] = Tissue.MARROW


def paint_slice(canvas: Canvas, knee: MRKnee, x: float) -> SliceLabels:
    """Return the tissue map of the sagittal slice at medio-lateral position ``x`` mm."""
    painter = _Painter(canvas)
    k = knee
    leg = _profile(x, 0.0, k.leg_half_width * 1.05)
    if leg <= 0.0:
        return SliceLabels(painter.labels, None)
    medial = _profile(x, k.medial_center_x, k.condyle_half_width)
    lateral = _profile(x, k.lateral_center_x, k.condyle_half_width)
    central = _profile(x, -2.0, 28.0)
    plateau = _profile(x, 0.0, 40.0)

    # Leg: fat coat around muscle (thigh above, calf below and behind).
    half = k.leg_half_width * leg
    painter.fill((-80.0, -_FAR, 100.0, _FAR), lambda u, v: np.abs(u - 8.0) <= half, Tissue.FAT)
    core = max(half - k.fat_thickness, 1.0)
    painter.fill((-80.0, -_FAR, 100.0, _FAR), lambda u, v: np.abs(u - 8.0) <= core, Tissue.MUSCLE)
    # Fat pads: popliteal (behind the joint), Hoffa (under the patella), suprapatellar.
    painter.fill((-5.0, -45.0, 45.0, 25.0), _ellipse((24.0, -12.0), (11.0 * leg, 26.0)), Tissue.FAT)
    if central > 0.0:
        painter.fill((-40.0, -25.0, -5.0, 12.0), _ellipse((-24.0, -6.0), (9.0 * central, 13.0), -15.0),
                     Tissue.FAT)
        painter.fill((-45.0, -90.0, -10.0, -40.0), _ellipse((-29.0, -64.0), (6.0 * central, 16.0)),
                     Tissue.FAT)
        _paint_joint_fluid(painter, k, central)

    if abs(x + 1.0) < _NOTCH_HALF_WIDTH:
        # The intercondylar notch is padded with fat around the cruciate ligaments.
        painter.fill((-15.0, -30.0, 20.0, 2.0), _ellipse((3.0, -13.0), (15.0, 11.0)), Tissue.FAT)
    if plateau > 0.0:
        # A thin film of joint fluid wherever the cartilage layers do not quite meet.
        depth = k.plateau_half_depth * (0.55 + 0.45 * plateau)
        painter.fill((-depth, -12.0, depth, 4.0),
                     lambda u, v: (np.abs(v - 0.1 * u + 0.5 * k.jsw) <= 0.5 * k.jsw + 0.6)
                     & (np.abs(u) < depth - 1.0), Tissue.FLUID)
    if ACL_SLICES[0] < x < ACL_SLICES[1]:
        _paint_acl(painter, k)
    if 0.5 < x < 10.0:  # the PCL runs just medial to the ACL
        points = [(-6.0, -24.0), (4.0, -22.0), (12.0, -14.0), (17.0, -3.0), (20.0, 8.0)]
        for start, end in zip(points, points[1:]):
            painter.fill(_band_bounds(start, end, 4.0), _band(start, end, 3.2), Tissue.LIGAMENT)

    condyle = max(medial, lateral)
    _paint_tibia(painter, k, x, plateau)
    _paint_femur(painter, k, x, condyle)
    if condyle > 0.0 and abs(x + 1.0) >= _NOTCH_HALF_WIDTH:
        # Peripheral slices (beyond the condyle centre) cut the meniscal body: a bow-tie.
        peripheral = x > k.medial_center_x if medial > 0.0 else x < k.lateral_center_x
        _paint_menisci(painter, k, x, medial > 0.0, plateau, body=peripheral and condyle < 0.45)
    if central > 0.25:
        _paint_patella(painter, central)
    if x < -28.0:  # fibular head behind the lateral tibial plateau
        head = _profile(x, -40.0, 11.0)
        if head > 0.0:
            radii = (9.0 * head + 1.0, 10.0 * head + 1.0)
            painter.bone(_ellipse_bounds((18.0, 24.0), radii),
                         lambda u, v, grow: _ellipse((18.0, 24.0), (radii[0] + grow, radii[1] + grow))(u, v))

    edema = None
    if k.acl_tear and lateral > 0.3:
        edema = _bone_bruises(canvas, k, lateral)
    return SliceLabels(painter.labels, edema)


def _paint_joint_fluid(painter: _Painter, k: MRKnee, central: float) -> None:
    """Physiological fluid lines, or an effusion distending the recesses."""
    scale = 1.0 if k.effusion else 0.25
    painter.fill((-45.0, -95.0, -5.0, -15.0),
                 _ellipse((-22.0, -50.0), (6.0 * central * scale + 0.8, 24.0 * (0.5 + 0.5 * scale)), -10.0),
                 Tissue.FLUID)
    painter.fill((5.0, -40.0, 45.0, 5.0),
                 _ellipse((24.0, -18.0), (5.0 * central * scale + 0.6, 12.0 * (0.5 + 0.5 * scale))),
                 Tissue.FLUID)


def _plateau_top(u: np.ndarray, *, spines: float, depth: float) -> np.ndarray:
    """The tibial articular surface: posterior slope, spines, rounded front and back rims."""
    return (0.1 * u - 6.0 * spines * np.exp(-((u + 1.0) / 4.5) ** 2)
            + 3.5 * smoothstep((np.abs(u) - (depth - 6.0)) / 6.0))


def _paint_tibia(painter: _Painter, k: MRKnee, x: float, plateau: float) -> None:
    if plateau <= 0.0:
        return
    depth = k.plateau_half_depth * (0.55 + 0.45 * plateau)
    spines = _profile(x, -1.0, 9.0)
    tuberosity = _profile(x, -4.0, 16.0)

    def inside(u: np.ndarray, v: np.ndarray, grow: float) -> np.ndarray:
        t = smoothstep(v / 65.0)
        half = depth + (14.0 * (0.6 + 0.4 * plateau) - depth) * t + grow
        mid = 2.0 * t
        body = (np.abs(u - mid) <= half) & (v >= _plateau_top(u, spines=spines, depth=depth) - grow)
        if tuberosity > 0.0:
            body |= _ellipse((-depth + 1.5, 22.0), (5.0 * tuberosity + grow, 13.0 + grow), 12.0)(u, v)
        return body

    # Tibial cartilage: a layer on the plateau meeting the femoral one (not on the rims).
    painter.fill((-depth, -8.0, depth, 8.0),
                 lambda u, v: inside(u, v, 2.5) & (np.abs(u) < depth - 4.0) & (v < 6.0), Tissue.CARTILAGE)
    painter.bone((-depth - 12.0, -12.0, depth + 6.0, _FAR), inside)


def _paint_femur(painter: _Painter, k: MRKnee, x: float, condyle: float) -> None:
    """Shaft, metaphysis, and either a condyle (with its anterior lobe) or the notch roof."""
    r = k.condyle_radius * (0.5 + 0.5 * condyle) if condyle > 0.0 else 0.0
    center = (4.0, -k.jsw - r)
    lobe_center, lobe_radii = (-9.0, -k.jsw - 17.0), (12.0 * condyle + 2.0, 14.0)
    notch = abs(x + 1.0) < _NOTCH_HALF_WIDTH

    def inside(u: np.ndarray, v: np.ndarray, grow: float) -> np.ndarray:
        t = smoothstep((v + 95.0) / 55.0)
        half = 12.5 + 9.5 * t + grow
        mid = -3.0 + 1.5 * t
        bone = (np.abs(u - mid) <= half) & (v <= -26.0 - k.jsw + grow)
        # Trochlea in front, above the joint.
        bone |= _ellipse((-11.0, -30.0 - k.jsw), (11.0 + grow, 14.0 + grow))(u, v)
        if r > 0.0:
            bone |= (u - center[0]) ** 2 + (v - center[1]) ** 2 <= (r + grow) ** 2
            bone |= _ellipse(lobe_center, (lobe_radii[0] + grow, lobe_radii[1] + grow))(u, v)
        if notch:
            # Blumensaat line: the notch roof rises from front to back.
            bone &= ~((v > -14.0 - k.jsw - 0.6 * (u + 10.0) - grow) & (u > -12.0))
        return bone

    if r > 0.0:
        # Cartilage on the weight-bearing (inferior and posterior) surface of the condyle.
        painter.fill((-30.0, -60.0, 35.0, 2.0),
                     lambda u, v: inside(u, v, 2.4) & (v > center[1] - 0.45 * r), Tissue.CARTILAGE)
    painter.fill((-30.0, -60.0, 0.0, -10.0),
                 lambda u, v: inside(u, v, 2.2) & (u < -14.0), Tissue.CARTILAGE)  # trochlear
    painter.bone((-40.0, -_FAR, 35.0, 2.0), inside, cortex=1.5)


def _paint_menisci(painter: _Painter, k: MRKnee, x: float, medial: bool, plateau: float, *,
                   body: bool) -> None:
    """Anterior and posterior horns as wedges on the plateau rim, or with ``body`` the
    continuous meniscal body of a peripheral slice (a bow-tie)."""
    depth = k.plateau_half_depth * (0.55 + 0.45 * plateau)
    post_len, ant_len = (13.0, 9.0) if medial else (10.0, 10.0)
    post_h, ant_h = (6.0, 4.5) if medial else (5.0, 5.0)
    if body:
        post_len = ant_len = depth
    for outer, length, height, sign in ((depth, post_len, post_h, 1.0), (-depth, ant_len, ant_h, -1.0)):
        inner = outer - sign * length

        def wedge(u: np.ndarray, v: np.ndarray, o: float = outer, i: float = inner,
                  h: float = height, s: float = sign) -> np.ndarray:
            frac = np.clip((u - i) * s / abs(o - i), 0.0, 1.0)
            top = _plateau_top(u, spines=0.0, depth=depth + 8.0)
            return ((u - i) * s >= 0.0) & ((o - u) * s >= -1.0) & (v <= top) & (v >= top - 0.6 - h * frac)

        painter.fill((min(outer, inner) - 2.0, -12.0, max(outer, inner) + 2.0, 6.0), wedge,
                     Tissue.MENISCUS)
    torn_slices = MEDIAL_MENISCUS_SLICES[0] + 6.0 < x < MEDIAL_MENISCUS_SLICES[1] - 6.0
    if k.meniscus_tear and medial and torn_slices:
        # An oblique linear signal through the posterior horn reaching its tibial surface.
        a = math.radians(k.tear_angle_deg)
        start = (depth - post_len * 0.8, 0.1 * (depth - post_len * 0.8) + 0.3)
        end = (start[0] + 12.0 * math.cos(a), start[1] + 12.0 * math.sin(a))
        painter.fill(_band_bounds(start, end, 1.0), _band(start, end, 0.6), Tissue.TEAR,
                     only=Tissue.MENISCUS)


def _paint_patella(painter: _Painter, central: float) -> None:
    center, radii = (-33.0, -36.0), (9.5 * central + 1.0, 20.0 * central + 2.0)
    bounds = _ellipse_bounds(center, radii, 4.0)
    # Quadriceps and patellar tendons, then the thick articular cartilage behind the patella.
    painter.fill((-50.0, -_FAR, -20.0, -45.0),
                 _band((center[0] - 2.0, center[1] - radii[1] + 2.0), (-27.0, -120.0), 3.0), Tissue.LIGAMENT)
    painter.fill((-50.0, -30.0, -20.0, 40.0),
                 _band((center[0] - 1.0, center[1] + radii[1] - 2.0), (-31.0, 24.0), 2.4), Tissue.LIGAMENT)
    painter.fill(bounds, lambda u, v: _ellipse(center, (radii[0] + 3.2, radii[1] - 1.0), -8.0)(u, v)
                 & (u > center[0]), Tissue.CARTILAGE)
    painter.bone(bounds, lambda u, v, grow: _ellipse(center, (radii[0] + grow, radii[1] + grow), -8.0)(u, v))


def _paint_acl(painter: _Painter, k: MRKnee) -> None:
    if not k.acl_tear:
        painter.fill(ACL_BOUNDS, _band(ACL_FEMUR, ACL_TIBIA, 3.0), Tissue.ACL)
        return
    # Torn: fibres discontinuous in mid-substance with oedema around them; both stumps are
    # swollen, the distal one lax (flatter than an intact ligament).
    mid = ((ACL_FEMUR[0] + ACL_TIBIA[0]) / 2, (ACL_FEMUR[1] + ACL_TIBIA[1]) / 2)
    painter.fill(ACL_BOUNDS, _ellipse(mid, (12.0, 5.5), 42.0), Tissue.EDEMA)
    proximal_end = (ACL_FEMUR[0] - 7.0, ACL_FEMUR[1] + 6.0)
    painter.fill(ACL_BOUNDS, _band(ACL_FEMUR, proximal_end, 4.2), Tissue.TORN_ACL)
    distal_start = (ACL_TIBIA[0] + 11.0, ACL_TIBIA[1] - 4.0)
    painter.fill(ACL_BOUNDS, _band(distal_start, ACL_TIBIA, 4.2), Tissue.TORN_ACL)


def _bone_bruises(canvas: Canvas, k: MRKnee, lateral: float) -> np.ndarray:
    """Pivot-shift bone bruises (lateral femoral condyle, posterolateral tibia), soft-edged."""
    edema = np.zeros((canvas.rows, canvas.columns), np.float32)
    for center, radii in (((-4.0, -k.jsw - 5.0), (10.0, 6.0)), ((15.0, 6.0), (8.0, 5.0))):
        box = canvas.box(*_ellipse_bounds(center, radii, 4.0))
        if box is None:
            continue
        rs, cs = slice(box.row0, box.row1), slice(box.column0, box.column1)
        du = (canvas.u[rs, cs] - center[0]) / radii[0]
        dv = (canvas.v[rs, cs] - center[1]) / radii[1]
        edema[rs, cs] += np.exp(-(du * du + dv * dv) * 1.5) * np.float32(lateral)
    return np.minimum(edema, 1.0)
