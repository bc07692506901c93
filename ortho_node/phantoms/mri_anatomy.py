"""Tissue label maps of sagittal knee MR slices.

Each slice is painted back to front (later tissue wins) in anatomical millimetres: ``u`` points
posterior (image right, as in a standard sagittal display with anterior on the left), ``v``
points inferior, the tibial plateau centre is the origin, and ``x`` (the slice position) points
medial. A left knee reuses these maps in reverse slice order.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from ortho_node.phantoms.geometry import Canvas

_FAR = 2000.0


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
        condyle_radius=float(rng.uniform(20.5, 24.0)),
        medial_center_x=float(rng.uniform(22.0, 26.0)),
        lateral_center_x=float(rng.uniform(-25.0, -21.0)),
        condyle_half_width=float(rng.uniform(14.0, 17.0)),
        plateau_half_depth=float(rng.uniform(24.0, 27.0)),
        jsw=float(rng.uniform(4.5, 5.5)),
        leg_half_width=float(rng.uniform(52.0, 60.0)),
        fat_thickness=float(rng.uniform(4.0, 11.0)),
        acl_tear=acl_tear,
        meniscus_tear=meniscus_tear,
        effusion=effusion,
        tear_angle_deg=float(rng.uniform(-25.0, -10.0)),
    )


# ACL from its femoral footprint (posterior notch) to its tibial one (in front of the spines).
ACL_FEMUR = (13.0, -19.0)
ACL_TIBIA = (-9.0, -1.0)
ACL_SLICES = (-10.0, 1.0)
"""Medio-lateral range (mm, + medial) of the slices that show the ACL."""
ACL_BOUNDS = (-14.0, -25.0, 19.0, 3.0)
"""Anatomical rectangle (u0, v0, u1, v1) holding the ACL (intact or torn) on those slices."""
MEDIAL_MENISCUS_SLICES = (8.0, 42.0)


def _fill(canvas: Canvas, labels: np.ndarray, bounds: tuple[float, float, float, float],
          inside, tissue: Tissue) -> None:
    """Set ``tissue`` where ``inside(u, v)`` is true within anatomical ``bounds``."""
    box = canvas.box(*bounds)
    if box is None:
        return
    rs, cs = slice(box.row0, box.row1), slice(box.column0, box.column1)
    mask = inside(canvas.u[rs, cs], canvas.v[rs, cs])
    labels[rs, cs][mask] = tissue


def _ellipse(center: tuple[float, float], radii: tuple[float, float], angle_deg: float = 0.0):
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        du, dv = u - center[0], v - center[1]
        ru, rv = ca * du + sa * dv, -sa * du + ca * dv
        return (ru / radii[0]) ** 2 + (rv / radii[1]) ** 2 <= 1.0
    return inside


def _ellipse_bounds(center: tuple[float, float], radii: tuple[float, float]):
    r = max(radii)
    return (center[0] - r, center[1] - r, center[0] + r, center[1] + r)


def _band(start: tuple[float, float], end: tuple[float, float], half_width: float):
    """Points within ``half_width`` of the segment ``start``-``end``."""
    du, dv = end[0] - start[0], end[1] - start[1]
    length2 = du * du + dv * dv

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = np.clip(((u - start[0]) * du + (v - start[1]) * dv) / length2, 0.0, 1.0)
        return (u - start[0] - t * du) ** 2 + (v - start[1] - t * dv) ** 2 <= half_width ** 2
    return inside


def _band_bounds(start: tuple[float, float], end: tuple[float, float], pad: float):
    return (min(start[0], end[0]) - pad, min(start[1], end[1]) - pad,
            max(start[0], end[0]) + pad, max(start[1], end[1]) + pad)


def _profile(x: float, center: float, half_width: float) -> float:
    """Elliptic cross-section factor: 1 at ``center``, 0 at ``center +- half_width``."""
    q = 1.0 - ((x - center) / half_width) ** 2
    return math.sqrt(q) if q > 0.0 else 0.0


def paint_slice(canvas: Canvas, knee: MRKnee, x: float) -> np.ndarray:
    """Return the uint8 tissue map of the sagittal slice at medio-lateral position ``x`` mm."""
    labels = np.zeros((canvas.rows, canvas.columns), np.uint8)
    k = knee
    leg = _profile(x, 0.0, k.leg_half_width * 1.05)
    if leg <= 0.0:
        return labels
    # Leg: fat coat around muscle; the calf and thigh make the posterior side deep.
    leg_center, leg_half = (10.0, 0.0), (k.leg_half_width * leg, _FAR)
    _fill(canvas, labels, (-80.0, -_FAR, 100.0, _FAR),
          lambda u, v: np.abs(u - leg_center[0]) <= leg_half[0], Tissue.FAT)
    muscle_half = max(leg_half[0] - k.fat_thickness, 1.0)
    _fill(canvas, labels, (-80.0, -_FAR, 100.0, _FAR),
          lambda u, v: np.abs(u - leg_center[0]) <= muscle_half, Tissue.MUSCLE)
    # Fat pads: popliteal (posterior), Hoffa (anterior, under the patella), suprapatellar.
    _fill(canvas, labels, (-5.0, -40.0, 45.0, 25.0), _ellipse((26.0, -8.0), (14.0, 24.0)), Tissue.FAT)
    central = _profile(x, -2.0, 30.0)
    if central > 0.0:
        _fill(canvas, labels, (-40.0, -25.0, 0.0, 15.0),
              _ellipse((-20.0, -4.0), (13.0 * central, 11.0)), Tissue.FAT)
        _fill(canvas, labels, (-45.0, -90.0, -10.0, -40.0),
              _ellipse((-27.0, -62.0), (8.0 * central, 18.0)), Tissue.FAT)

    medial = _profile(x, k.medial_center_x, k.condyle_half_width)
    lateral = _profile(x, k.lateral_center_x, k.condyle_half_width)
    condyle = max(medial, lateral)
    plateau = _profile(x, 0.0, 40.0)
    if k.effusion and central > 0.0:
        _fill(canvas, labels, (-45.0, -95.0, -5.0, -15.0),
              _ellipse((-24.0, -52.0), (7.0 * central, 26.0), -8.0), Tissue.FLUID)
        _fill(canvas, labels, (5.0, -35.0, 40.0, 5.0),
              _ellipse((22.0, -14.0), (6.0 * central, 12.0)), Tissue.FLUID)

    _paint_tibia(canvas, labels, k, x, plateau)
    _paint_femur(canvas, labels, k, condyle)
    if condyle > 0.0:
        _paint_menisci(canvas, labels, k, x, medial > 0.0, condyle)
    _paint_patella(canvas, labels, central)
    if k.acl_tear and lateral > 0.3:
        # Pivot-shift bone bruises: lateral femoral condyle and posterolateral tibial plateau.
        for center, radii in (((-4.0, -k.jsw - 5.0), (9.0, 5.0)), ((16.0, 6.0), (7.0, 4.5))):
            _replace(canvas, labels, _ellipse_bounds(center, radii), _ellipse(center, radii),
                     Tissue.MARROW, Tissue.EDEMA)
    if x > ACL_SLICES[0] and x < ACL_SLICES[1]:
        _paint_acl(canvas, labels, k)
    if 0.0 < x < 9.0:  # the PCL sits medial to the ACL
        _paint_pcl(canvas, labels)
    if x < -30.0:  # fibular head on the lateral, posterior slices
        head = _profile(x, -40.0, 10.0)
        if head > 0.0:
            _fill(canvas, labels, (0.0, 5.0, 40.0, 45.0), _ellipse((19.0, 24.0), (9.0 * head, 10.0 * head)),
                  Tissue.CORTEX)
            _fill(canvas, labels, (0.0, 5.0, 40.0, 45.0),
                  _ellipse((19.0, 24.0), (max(9.0 * head - 1.2, 0.1), max(10.0 * head - 1.2, 0.1))),
                  Tissue.MARROW)
    return labels


def _paint_femur(canvas: Canvas, labels: np.ndarray, k: MRKnee, condyle: float) -> None:
    r = k.condyle_radius * (0.55 + 0.45 * condyle) if condyle > 0.0 else 0.0
    center = (4.0, -k.jsw - r)

    def shaft(u: np.ndarray, v: np.ndarray, grow: float) -> np.ndarray:
        # Shaft above, widening into the metaphysis; on notch slices the Blumensaat line
        # (roof of the notch) cuts it obliquely.
        t = np.clip((v + 90.0) / 60.0, 0.0, 1.0)
        half = 14.0 + 10.0 * t + grow
        mid = -2.0 + 2.0 * t
        roof = -12.0 - 0.55 * (u + 18.0) + grow
        return (np.abs(u - mid) <= half) & (v <= roof)

    def condyle_in(u: np.ndarray, v: np.ndarray, grow: float) -> np.ndarray:
        if r <= 0.0:
            return np.zeros(u.shape, bool)
        return (u - center[0]) ** 2 + (v - center[1]) ** 2 <= (r + grow) ** 2

    bounds = (-45.0, -_FAR, 45.0, 2.0)
    if r > 0.0:
        # Cartilage coats the weight-bearing (inferior and posterior) surface of the condyle.
        _fill(canvas, labels, bounds, lambda u, v: condyle_in(u, v, 2.4) & (v > center[1] - 0.4 * r),
              Tissue.CARTILAGE)
    _fill(canvas, labels, bounds, lambda u, v: shaft(u, v, 0.0) | condyle_in(u, v, 0.0), Tissue.CORTEX)
    _fill(canvas, labels, bounds, lambda u, v: shaft(u, v, -1.6) | condyle_in(u, v, -1.3), Tissue.MARROW)


def _plateau_top(u: np.ndarray, spines: float) -> np.ndarray:
    return 0.10 * u - 6.0 * spines * np.exp(-((u + 1.0) / 4.0) ** 2)


def _paint_tibia(canvas: Canvas, labels: np.ndarray, k: MRKnee, x: float, plateau: float) -> None:
    if plateau <= 0.0:
        return
    depth = k.plateau_half_depth * (0.6 + 0.4 * plateau)
    spines = _profile(x, -1.0, 9.0)

    def body(u: np.ndarray, v: np.ndarray, grow: float) -> np.ndarray:
        t = np.clip(v / 60.0, 0.0, 1.0)
        half = depth - (depth - 15.0 * plateau) * t + grow
        mid = 1.0 - 2.0 * t
        top = _plateau_top(u, spines) - grow
        tuberosity = ((u + depth + 1.0) ** 2 / 36.0 + (v - 22.0) ** 2 / 160.0 <= 1.0) & (plateau > 0.7)
        return ((np.abs(u - mid) <= half) & (v >= top)) | tuberosity

    bounds = (-45.0, -12.0, 45.0, _FAR)
    _fill(canvas, labels, bounds, lambda u, v: body(u, v, 2.2) & (np.abs(u) < depth - 3.0)
          & (v < 10.0), Tissue.CARTILAGE)
    _fill(canvas, labels, bounds, lambda u, v: body(u, v, 0.0), Tissue.CORTEX)
    _fill(canvas, labels, bounds, lambda u, v: body(u, v, -1.3), Tissue.MARROW)


def _paint_menisci(canvas: Canvas, labels: np.ndarray, k: MRKnee, x: float, medial: bool,
                   condyle: float) -> None:
    """Anterior and posterior horns as wedges on the plateau rim; a bow-tie at the periphery."""
    depth = k.plateau_half_depth * (0.6 + 0.4 * _profile(x, 0.0, 40.0))
    post_len, ant_len = (13.0, 9.0) if medial else (10.0, 10.0)
    post_h, ant_h = (6.0, 4.5) if medial else (5.0, 5.0)
    if condyle < 0.45:  # outer slices show the meniscal body as one continuous band
        post_len = ant_len = depth
    for outer, length, height, sign in ((depth, post_len, post_h, 1.0), (-depth, ant_len, ant_h, -1.0)):
        inner = outer - sign * length

        def wedge(u: np.ndarray, v: np.ndarray, o=outer, i=inner, h=height, s=sign) -> np.ndarray:
            frac = np.clip((u - i) * s / abs(o - i), 0.0, 1.0)
            top = _plateau_top(u, 0.0)
            return ((u - i) * s >= 0.0) & ((o - u) * s >= 0.0) & (v <= top) & (v >= top - 0.6 - h * frac)

        _fill(canvas, labels, (min(outer, inner) - 1.0, -12.0, max(outer, inner) + 1.0, 6.0), wedge,
              Tissue.MENISCUS)
    in_tear_range = MEDIAL_MENISCUS_SLICES[0] + 6.0 < x < MEDIAL_MENISCUS_SLICES[1] - 6.0
    if k.meniscus_tear and medial and in_tear_range:
        # An oblique linear signal through the posterior horn reaching its tibial surface.
        a = math.radians(k.tear_angle_deg)
        start = (depth - post_len * 0.75, 0.1 * (depth - post_len * 0.75) - 0.2)
        end = (start[0] + 9.0 * math.cos(a), start[1] + 9.0 * math.sin(a))
        _replace(canvas, labels, _band_bounds(start, end, 1.0), _band(start, end, 0.55),
                 Tissue.MENISCUS, Tissue.TEAR)


def _replace(canvas: Canvas, labels: np.ndarray, bounds: tuple[float, float, float, float],
             inside, old: Tissue, new: Tissue) -> None:
    """Relabel ``old`` as ``new`` where ``inside(u, v)`` within ``bounds`` (lesions in a tissue)."""
    box = canvas.box(*bounds)
    if box is None:
        return
    rs, cs = slice(box.row0, box.row1), slice(box.column0, box.column1)
    window = labels[rs, cs]
    window[inside(canvas.u[rs, cs], canvas.v[rs, cs]) & (window == old)] = new


def _paint_patella(canvas: Canvas, labels: np.ndarray, central: float) -> None:
    if central <= 0.2:
        return
    center, radii = (-31.0, -32.0), (9.0 * central + 1.0, 20.0 * central + 2.0)
    bounds = _ellipse_bounds(center, (radii[0] + 4.0, radii[1] + 4.0))
    # Patellar cartilage on the posterior (articular) surface, then tendons above and below.
    _fill(canvas, labels, bounds, lambda u, v: _ellipse(center, (radii[0] + 3.0, radii[1]), -8.0)(u, v)
          & (u > center[0]), Tissue.CARTILAGE)
    _fill(canvas, labels, (-45.0, -_FAR, -20.0, -40.0),
          _band((center[0] - 2.0, center[1] - radii[1]), (-25.0, -110.0), 3.0), Tissue.LIGAMENT)
    _fill(canvas, labels, (-45.0, -20.0, -20.0, 40.0),
          _band((center[0] - 1.0, center[1] + radii[1] - 1.0), (-29.0, 22.0), 2.3), Tissue.LIGAMENT)
    _fill(canvas, labels, bounds, _ellipse(center, radii, -8.0), Tissue.CORTEX)
    _fill(canvas, labels, bounds, _ellipse(center, (radii[0] - 1.3, radii[1] - 1.3), -8.0),
          Tissue.MARROW)


def _paint_acl(canvas: Canvas, labels: np.ndarray, k: MRKnee) -> None:
    if not k.acl_tear:
        _fill(canvas, labels, ACL_BOUNDS, _band(ACL_FEMUR, ACL_TIBIA, 3.2), Tissue.ACL)
        return
    # Torn: the mid-substance is replaced by oedema, both stumps swollen; the distal stump lies
    # flatter (lax) than an intact ligament.
    mid = ((ACL_FEMUR[0] + ACL_TIBIA[0]) / 2, (ACL_FEMUR[1] + ACL_TIBIA[1]) / 2)
    _fill(canvas, labels, ACL_BOUNDS, _ellipse(mid, (13.0, 6.5), 45.0), Tissue.EDEMA)
    proximal_end = (ACL_FEMUR[0] - 6.0, ACL_FEMUR[1] + 5.0)
    _fill(canvas, labels, ACL_BOUNDS, _band(ACL_FEMUR, proximal_end, 4.6), Tissue.TORN_ACL)
    distal_start = (ACL_TIBIA[0] + 10.0, ACL_TIBIA[1] - 3.0)
    _fill(canvas, labels, ACL_BOUNDS, _band(distal_start, ACL_TIBIA, 4.6), Tissue.TORN_ACL)


def _paint_pcl(canvas: Canvas, labels: np.ndarray) -> None:
    # A thick dark arc from the anterior notch down to the back of the tibia.
    points = [(-6.0, -22.0), (4.0, -20.0), (12.0, -12.0), (17.0, -2.0), (20.0, 8.0)]
    for start, end in zip(points, points[1:]):
        _fill(canvas, labels, _band_bounds(start, end, 4.0), _band(start, end, 3.3), Tissue.LIGAMENT)
