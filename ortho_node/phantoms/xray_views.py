"""Attenuation maps of the AP and lateral knee views, drawn on a :class:`Canvas`.

Each view returns two line-integral maps (dimensionless, like ``ln(I0 / I)``): soft tissue and
bone. See :mod:`ortho_node.phantoms.xray_anatomy` for the coordinate convention and
:mod:`ortho_node.phantoms.xray_bone` for how bones are built.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ortho_node.phantoms.geometry import Canvas, ellipse_bounds, ellipse_chord, smoothstep
from ortho_node.phantoms.xray_anatomy import KneeAnatomy, KneePathology
from ortho_node.phantoms.xray_bone import (
    MU_CORTEX,
    MU_TRABECULAR,
    BoneBuilder,
    Paths,
    add_fat_pad,
    add_soft_tissue,
    ellipsoid_paths,
    tube_paths,
)

_FAR = 2000.0  # "to the edge of any image", in mm
_CONDYLE_FULLNESS = 2.5

Contour = Callable[[np.ndarray], np.ndarray]


def _bump(u: np.ndarray, center: float, radius: float) -> np.ndarray:
    """An inverted parabola of height 1 at ``center``, zero beyond ``radius``."""
    return np.maximum(1.0 - ((u - center) / radius) ** 2, 0.0)


def _add_femur_shaft(femur: BoneBuilder, *, end_v: float, center: float,
                     flare_half_width: float, depth_ratio: tuple[float, float],
                     fade_mm: float = 6.0) -> None:
    """Femoral shaft widening into the metaphysis, fading out over ``fade_mm`` above ``end_v``
    (a long fade hides the seam where a shallower condyle takes over)."""
    def field(u: np.ndarray, v: np.ndarray) -> Paths:
        t = smoothstep((v + 105.0) / 75.0)
        # The flare is concave: slow at first, then out to the epicondyles.
        width = 14.0 + (flare_half_width - 14.0) * t * t
        depth = 2.0 * width * (depth_ratio[0] + (depth_ratio[1] - depth_ratio[0]) * t)
        # Round shaft, boxy metaphysis: as deep as the condyles it carries.
        outer, inner = tube_paths(u, center * t, width, depth, 4.5 - 3.5 * t, 1.0 + 1.5 * t)
        fade = smoothstep((end_v - v) / fade_mm)
        return outer * fade, inner * fade

    reach = flare_half_width + abs(center) + 2.0
    femur.add_part((-reach, -_FAR, reach, end_v + 1.0), field)


def _add_condyle(femur: BoneBuilder, center: tuple[float, float], radii: tuple[float, float],
                 depth: float, *, bottom: float, sclerosis: float) -> None:
    """A femoral condyle, dense to its articular surface and cut flat at ``bottom`` when
    deformed, with subchondral sclerosis fading upwards from the joint."""
    def field(u: np.ndarray, v: np.ndarray) -> Paths:
        outer, inner = ellipsoid_paths(u, v, center, radii, depth, fullness=_CONDYLE_FULLNESS)
        clip = smoothstep((bottom - v) / 0.5 + 0.5)
        return outer * clip, inner * clip

    bounds = ellipse_bounds(center, radii)
    femur.add_part(bounds, field)
    if sclerosis > 0.0:
        femur.add_density(bounds, lambda u, v: np.float32(MU_TRABECULAR * sclerosis)
                          * ellipse_chord(u, v, center=center, radii=radii, depth=depth,
                                          fullness=_CONDYLE_FULLNESS)
                          * np.exp(-np.maximum(bottom - v, 0.0) / 4.0)
                          * smoothstep((bottom - v) / 0.5 + 0.5))


def _rim(u: np.ndarray, v: np.ndarray, center: tuple[float, float], radii: tuple[float, float],
         depth: float, bottom: float) -> np.ndarray:
    """Cortical attenuation of a condyle's outline alone (its shell, without the marrow)."""
    outer, inner = ellipsoid_paths(u, v, center, radii, depth, fullness=_CONDYLE_FULLNESS)
    clip = smoothstep((bottom - v) / 0.5 + 0.5)
    return (np.float32(MU_CORTEX - MU_TRABECULAR) * (outer - inner) * clip).astype(np.float32)


def _condyle_edge(center: tuple[float, float], radii: tuple[float, float], v: float,
                  sign: float) -> float:
    """The ``u`` of the condyle outline at height ``v`` on the side ``sign`` (+1 / -1)."""
    q = max(0.0, 1.0 - ((v - center[1]) / radii[1]) ** 2)
    return center[0] + sign * radii[0] * math.sqrt(q)


def _add_tibia(tibia: BoneBuilder, *, top: Contour, center: tuple[float, float],
               half_width: float, depth_at_top: float, sclerosis: Contour) -> None:
    """Tibia from the plateau contour ``top(u)`` down: epiphysis narrowing to the shaft, with
    the subchondral plate and ``sclerosis(u)`` (extra density across the plateau)."""
    def field(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = smoothstep((v - 12.0) / 70.0)
        width = half_width + (16.0 - half_width) * t
        mid = center[0] + (center[1] - center[0]) * t
        depth = depth_at_top + (30.0 - depth_at_top) * t
        outer, inner = tube_paths(u, mid, width, depth, 0.9 + 3.3 * t)
        below = v - top(u)
        inside = smoothstep(below / 0.5 + 0.5)
        outer *= inside
        inner *= inside
        # The subchondral plate is a sheet seen edge-on: a bright line under the cartilage.
        near = np.maximum(below, 0.0)
        density = 0.035 * np.exp(-((below - 0.8) / 0.7) ** 2)
        density += MU_TRABECULAR * sclerosis(u) * np.exp(-near / 4.5)
        density *= outer
        return outer, inner, density.astype(np.float32, copy=False)

    tibia.add_part((center[0] - half_width - 4.0, -15.0, center[0] + half_width + 4.0, _FAR), field)


def _add_fibula(fibula: BoneBuilder, head: tuple[float, float], *, drift: float,
                styloid: bool) -> None:
    """Fibular head (with its styloid apex on the AP view) and the shaft below it."""
    fibula.add_ellipsoid(head, (9.0, 11.0), 21.0, fullness=1.5)
    if styloid:
        fibula.add_ellipsoid((head[0] - 4.0, head[1] - 9.0), (3.5, 6.0), 9.0, angle_deg=70.0)

    def shaft(u: np.ndarray, v: np.ndarray) -> Paths:
        outer, inner = tube_paths(u, head[0] + drift * (v - head[1]), 6.0, 12.0, 2.2)
        fade = smoothstep((v - head[1] - 2.0) / 8.0)
        return outer * fade, inner * fade

    fibula.add_part((head[0] - 12.0, head[1], head[0] + 12.0, _FAR), shaft)


def _add_cysts(tibia: BoneBuilder, p: KneePathology) -> None:
    """Subchondral cysts: small lucent holes in the sclerotic medial plateau."""
    for cu, cv, radius in p.cysts:
        center = (cu, cv + p.plateau_depression_mm)
        tibia.add_density(ellipse_bounds(center, (radius, radius)),
                          lambda u, v, c=center, r=radius: np.float32(-MU_TRABECULAR * 1.5)
                          * ellipse_chord(u, v, center=c, radii=(r, r), depth=2.0 * r))


def draw_ap(canvas: Canvas, anatomy: KneeAnatomy, pathology: KneePathology
            ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(soft, bone)`` attenuation maps of an AP view of a right knee."""
    shape = (canvas.rows, canvas.columns)
    soft, bone = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    p, spurs, w = pathology, pathology.osteophyte_mm, anatomy.plateau_half_width
    shift = p.subluxation_mm  # grade 4: the tibia slides laterally under the femur

    add_soft_tissue(canvas, soft, center=0.0, half_width=anatomy.soft_half_width,
                    fat=anatomy.fat_thickness, depth_ratio=0.9)

    # Femur: metaphysis + two condyles; the medial one is larger and sits on the narrower space.
    # A depressed plateau (grade 4) takes the condyle down with it: bone stays on bone.
    femur = BoneBuilder(canvas)
    med_r, lat_r = anatomy.medial_condyle_radii, anatomy.lateral_condyle_radii
    med_bottom, lat_bottom = p.plateau_depression_mm - p.jsw_medial_mm, -p.jsw_lateral_mm
    med_center = (20.5, med_bottom - med_r[1] + p.condyle_flattening_mm)
    lat_center = (-19.5, lat_bottom - lat_r[1])
    _add_femur_shaft(femur, end_v=min(med_center[1], lat_center[1]) + 3.0, center=0.5,
                     flare_half_width=39.5, depth_ratio=(1.0, 0.78))
    _add_condyle(femur, med_center, med_r, 58.0, bottom=med_bottom, sclerosis=p.sclerosis)
    _add_condyle(femur, lat_center, lat_r, 54.0, bottom=lat_bottom, sclerosis=0.35 * p.sclerosis)
    # The intercondylar notch is not empty on an AP view: the trochlea lies in front of it.
    femur.add_ellipsoid((0.0, max(med_bottom, lat_bottom) - 13.0), (12.0, 8.0), 16.0, cortex=0.5)

    def plateau(u: np.ndarray) -> np.ndarray:
        spine = 1.0 + 0.15 * spurs[4]
        x = u + shift
        return (1.0 * _bump(x, 19.0, 15.0) - 0.4 * _bump(x, -19.0, 15.0)
                + p.plateau_depression_mm * _bump(x, 20.5, 12.0)
                - 5.0 * spine * np.exp(-((x - 4.5) / 4.0) ** 2)
                - 4.0 * spine * np.exp(-((x + 5.0) / 4.0) ** 2)
                + 3.5 * smoothstep((np.abs(x) - (w - 8.0)) / 8.0))

    def plateau_sclerosis(u: np.ndarray) -> np.ndarray:
        x = u + shift
        return p.sclerosis * (_bump(x, 20.0, 17.0) + 0.35 * _bump(x, -19.0, 17.0))

    tibia = BoneBuilder(canvas)
    _add_tibia(tibia, top=plateau, center=(-shift, -shift - 1.5), half_width=w,
               depth_at_top=50.0, sclerosis=plateau_sclerosis)
    _add_cysts(tibia, p)

    # Osteophytes at the joint margins (medial first), growing outwards and towards the joint.
    for sign, tibia_spur, femur_spur, center, radii in (
            (1.0, spurs[0], spurs[1], med_center, med_r),
            (-1.0, spurs[2], spurs[3], lat_center, lat_r)):
        rim_u = sign * (w - 1.5) - shift
        tibia.add_spur((rim_u, float(plateau(np.float32(rim_u))) + 0.8), (sign, -0.3), tibia_spur)
        edge_v = center[1] + 0.75 * radii[1]
        femur.add_spur((_condyle_edge(center, radii, edge_v, sign) - sign * 1.0, edge_v),
                       (sign, 0.6), femur_spur)

    # Fibula on the lateral side, its head overlapping the tibia a little.
    fibula = BoneBuilder(canvas)
    _add_fibula(fibula, (-35.0 + anatomy.fibula_offset[0] - shift, 24.0 + anatomy.fibula_offset[1]),
                drift=0.04, styloid=True)

    # Patella superimposed on the femur: faint on the AP view.
    patella = BoneBuilder(canvas)
    patella.add_ellipsoid((2.0, -40.0 - anatomy.patella_height), anatomy.patella_radii, 11.0)
    for part in (femur, tibia, fibula, patella):
        part.render_into(bone)
    return soft, bone


def draw_lateral(canvas: Canvas, anatomy: KneeAnatomy, pathology: KneePathology
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(soft, bone)`` attenuation maps of a lateral view of a right knee (anterior +u)."""
    shape = (canvas.rows, canvas.columns)
    soft, bone = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    p, spurs = pathology, pathology.osteophyte_mm

    add_soft_tissue(canvas, soft, center=-3.0, half_width=anatomy.soft_half_width * 0.92,
                    fat=anatomy.fat_thickness, depth_ratio=1.05)
    # Fat pads are darker than the muscle around them: Hoffa's pad behind the patellar tendon,
    # the suprapatellar pad, and the popliteal fossa.
    for center, radii in (((26.0, -4.0), (8.0, 12.0)), ((24.0, -64.0), (7.0, 14.0)),
                          ((-42.0, -20.0), (9.0, 22.0))):
        add_fat_pad(canvas, soft, center, radii, 40.0)

    # Femur: shaft flaring backwards into the condyles, trochlea in front. The two condyles
    # are drawn as separate bones so that unequal narrowing shows as two contours.
    med_bottom = p.plateau_depression_mm - p.jsw_medial_mm
    med_r = (anatomy.medial_condyle_radii[1], anatomy.medial_condyle_radii[1])
    lat_r = (anatomy.lateral_condyle_radii[1], anatomy.lateral_condyle_radii[1])
    # The condyles sit behind the shaft axis (posterior condylar offset), the trochlea in front.
    med_center = (-10.5, med_bottom - med_r[1] + p.condyle_flattening_mm)
    lat_center = (-9.0, -p.jsw_lateral_mm - lat_r[1])
    femur = BoneBuilder(canvas)
    _add_femur_shaft(femur, end_v=min(med_center[1], lat_center[1]) + 3.0, center=-7.0,
                     flare_half_width=25.0, depth_ratio=(1.0, 1.8), fade_mm=22.0)
    femur.add_ellipsoid((7.0, med_center[1] - 4.0), (13.0, 17.0), 70.0, fullness=1.5)
    _add_condyle(femur, med_center, med_r, 68.0, bottom=med_bottom, sclerosis=p.sclerosis)
    _add_condyle(femur, lat_center, lat_r, 66.0, bottom=-p.jsw_lateral_mm,
                 sclerosis=0.35 * p.sclerosis)
    # The other condyle's cortex still shows as a second, fainter contour.
    femur.add_density(ellipse_bounds(lat_center, lat_r),
                      lambda u, v: _rim(u, v, lat_center, lat_r, 30.0, -p.jsw_lateral_mm))
    back_v = med_center[1] + 0.3 * med_r[1]
    femur.add_spur((_condyle_edge(med_center, med_r, back_v, -1.0) + 1.0, back_v), (-1.0, 0.3),
                   spurs[1])

    def plateau(u: np.ndarray) -> np.ndarray:
        spine = 1.0 + 0.15 * spurs[4]
        return (-0.13 * u - 4.5 * spine * np.exp(-((u + 2.0) / 4.0) ** 2)
                + p.plateau_depression_mm * _bump(u, -6.0, 12.0)
                + 3.5 * smoothstep((np.abs(u + 1.0) - 19.0) / 7.0))

    def plateau_sclerosis(u: np.ndarray) -> np.ndarray:
        return p.sclerosis * _bump(u, -4.0, 22.0)

    tibia = BoneBuilder(canvas)
    _add_tibia(tibia, top=plateau, center=(-1.0, 2.5), half_width=26.0,
               depth_at_top=2.0 * anatomy.plateau_half_width, sclerosis=plateau_sclerosis)
    tibia.add_ellipsoid((22.5, 30.0), (4.5, 14.0), 30.0, angle_deg=-10.0)  # tibial tuberosity
    for rim, direction, length in ((22.5, (1.0, -0.5), spurs[0]), (-24.0, (-1.0, -0.4), spurs[2])):
        tibia.add_spur((rim, float(plateau(np.float32(rim))) + 1.0), direction, length)
    _add_cysts(tibia, p)

    fibula = BoneBuilder(canvas)
    _add_fibula(fibula, (-19.0 + anatomy.fibula_offset[0], 26.0 + anatomy.fibula_offset[1]),
                drift=0.03, styloid=False)

    # Patella in profile in front of the trochlea: clearly visible here; spurs at its poles.
    patella = BoneBuilder(canvas)
    pat_center = (29.0, -31.0 - anatomy.patella_height)
    pat_radii = (9.5, anatomy.patella_radii[1])
    patella.add_ellipsoid(pat_center, pat_radii, 42.0, angle_deg=-12.0, cortex=1.5, fullness=1.5)
    tilt = math.radians(12.0)
    pole = (pat_radii[1] * math.sin(tilt), pat_radii[1] * math.cos(tilt))
    # The long axis leans forward at the bottom: poles at -/+ (sin, cos) of the tilt.
    patella.add_spur((pat_center[0] - pole[0], pat_center[1] - pole[1] + 1.0), (-0.2, -1.0),
                     0.6 * spurs[3])
    patella.add_spur((pat_center[0] + pole[0], pat_center[1] + pole[1] - 1.0), (0.2, 1.0),
                     0.6 * spurs[3])
    for part in (femur, tibia, fibula, patella):
        part.render_into(bone)
    return soft, bone
