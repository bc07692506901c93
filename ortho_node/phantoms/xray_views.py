"""Attenuation maps of the AP and lateral knee views, drawn on a :class:`Canvas`.

Each view returns two line-integral maps (dimensionless, like ``ln(I0 / I)``): soft tissue and
bone. Bones are built from projected ellipsoids and tubes with a denser cortical shell, so
their edges and the subchondral plates come out bright as on a real radiograph. See
:mod:`ortho_node.phantoms.xray_anatomy` for the coordinate convention.
"""

from __future__ import annotations

import math

import numpy as np

from ortho_node.phantoms.geometry import Canvas, ellipse_bounds, ellipse_chord, smoothstep
from ortho_node.phantoms.xray_anatomy import KneeAnatomy, KneePathology

# Linear attenuation per mm relative to air, at a typical knee kVp.
MU_SOFT = 0.018
MU_FAT = 0.014
MU_TRABECULAR = 0.024
MU_CORTEX = 0.060
_FAR = 2000.0  # "to the edge of any image", in mm


def _tube(u: np.ndarray, center: np.ndarray | float, half_width: np.ndarray | float,
          depth: np.ndarray | float) -> np.ndarray:
    """Path length through an elliptic cylinder along ``v`` (width and depth may vary with v)."""
    q = ((u - center) / half_width) ** 2
    return (depth * np.sqrt(np.maximum(1.0 - q, 0.0))).astype(np.float32, copy=False)


def _bump(u: np.ndarray, center: float, radius: float) -> np.ndarray:
    """An inverted parabola of height 1 at ``center``, zero beyond ``radius``."""
    return np.maximum(1.0 - ((u - center) / radius) ** 2, 0.0)


def _shell(u: np.ndarray, v: np.ndarray, center: tuple[float, float], radii: tuple[float, float],
           depth: float, *, cortex: float = 1.2, angle_deg: float = 0.0) -> np.ndarray:
    """Attenuation of an ellipsoidal bone with a cortical shell ``cortex`` mm thick."""
    outer = ellipse_chord(u, v, center=center, radii=radii, depth=depth, angle_deg=angle_deg)
    inner = ellipse_chord(u, v, center=center, radii=(radii[0] - cortex, radii[1] - cortex),
                          depth=depth - 2 * cortex, angle_deg=angle_deg)
    return np.float32(MU_TRABECULAR) * outer + np.float32(MU_CORTEX - MU_TRABECULAR) * (outer - inner)


def _add_shell(canvas: Canvas, target: np.ndarray, center: tuple[float, float],
               radii: tuple[float, float], depth: float, *, union: bool = False,
               cortex: float = 1.2, angle_deg: float = 0.0, weight: float = 1.0) -> None:
    canvas.add(target, ellipse_bounds(center, radii),
               lambda u, v: np.float32(weight) * _shell(u, v, center, radii, depth, cortex=cortex,
                                                       angle_deg=angle_deg),
               union=union)


def _add_osteophyte(canvas: Canvas, target: np.ndarray, base: tuple[float, float],
                    direction: tuple[float, float], length: float) -> None:
    """A beak-shaped spur ``length`` mm long growing from ``base`` along ``direction``."""
    if length <= 0.0:
        return
    norm = math.hypot(*direction)
    du, dv = direction[0] / norm, direction[1] / norm
    center = (base[0] + du * length * 0.45, base[1] + dv * length * 0.45)
    radii = (length * 0.55 + 0.4, length * 0.28 + 0.4)
    angle = math.degrees(math.atan2(dv, du))
    _add_shell(canvas, target, center, radii, 8.0 + 2.5 * length, cortex=0.4, angle_deg=angle,
               weight=1.3)


def _add_soft_tissue(canvas: Canvas, soft: np.ndarray, *, center: float, half_width: float,
                     fat: float, depth_ratio: float) -> None:
    """The leg as a fat-coated cylinder, slightly wider towards the thigh."""
    def field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        width = half_width * (1.0 - 0.0012 * np.clip(v, -150.0, 150.0))
        outer = _tube(u, center, width, 2.0 * width * depth_ratio)
        inner = _tube(u, center, width - fat, 2.0 * (width - fat) * depth_ratio)
        return np.float32(MU_FAT) * outer + np.float32(MU_SOFT - MU_FAT) * inner

    reach = half_width * 1.2 + 5.0
    canvas.add(soft, (center - reach, -_FAR, center + reach, _FAR), field)


def _add_femur_shaft(canvas: Canvas, femur: np.ndarray, *, end_v: float, center_shift: float,
                     flare_half_width: float, depth_ratio: tuple[float, float]) -> None:
    """Femoral shaft and metaphysis widening towards the condyles, fading out at ``end_v``."""
    def field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = smoothstep((v + 100.0) / 65.0)
        width = 14.5 + (flare_half_width - 14.5) * t
        center = center_shift * t
        depth = 2.0 * width * (depth_ratio[0] + (depth_ratio[1] - depth_ratio[0]) * t)
        cortex = 4.5 - 3.3 * t
        outer = _tube(u, center, width, depth)
        inner = _tube(u, center, width - cortex, depth - 2.0 * cortex)
        fade = smoothstep((end_v - v) / 10.0)
        return fade * (MU_TRABECULAR * outer + (MU_CORTEX - MU_TRABECULAR) * (outer - inner))

    reach = flare_half_width + abs(center_shift) + 2.0
    canvas.add(femur, (-reach, -_FAR, reach, end_v + 1.0), field, union=True)


def _add_tibia(canvas: Canvas, tibia: np.ndarray, *, top, center: tuple[float, float],
               half_width: float, depth_at_top: float, extent: float) -> None:
    """Tibia from the plateau contour ``top(u)`` down: epiphysis narrowing to the shaft."""
    def field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = smoothstep((v - 18.0) / 57.0)
        width = half_width + (16.5 - half_width) * t
        mid = center[0] + (center[1] - center[0]) * t
        depth = depth_at_top + (31.0 - depth_at_top) * t
        cortex = 1.0 + 3.0 * t
        outer = _tube(u, mid, width, depth)
        inner = _tube(u, mid, width - cortex, depth - 2.0 * cortex)
        below = v - top(u)
        inside = smoothstep(below / 0.6 + 0.5)
        # The subchondral plate is a sheet seen edge-on: a bright line under the cartilage.
        plate = np.exp(-((below - 0.9) / 0.75) ** 2)
        return inside * (MU_TRABECULAR * outer + (MU_CORTEX - MU_TRABECULAR)
                         * ((outer - inner) + 0.55 * plate * outer))

    canvas.add(tibia, (center[0] - extent, -15.0, center[0] + extent, _FAR), field, union=True)


def draw_ap(canvas: Canvas, anatomy: KneeAnatomy, pathology: KneePathology
            ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(soft, bone)`` attenuation maps of an AP view of a right knee."""
    shape = (canvas.rows, canvas.columns)
    soft = np.zeros(shape, np.float32)
    femur = np.zeros(shape, np.float32)
    tibia = np.zeros(shape, np.float32)
    bone = np.zeros(shape, np.float32)
    p = pathology
    spurs = p.osteophyte_mm

    _add_soft_tissue(canvas, soft, center=0.0, half_width=anatomy.soft_half_width,
                     fat=anatomy.fat_thickness, depth_ratio=0.9)

    # Femur: shaft + two condyles; the medial one is larger and sits on the narrower space.
    med_r, lat_r = anatomy.medial_condyle_radii, anatomy.lateral_condyle_radii
    # A depressed plateau (grade 4) takes the condyle down with it: bone stays on bone.
    med_bottom, lat_bottom = p.plateau_depression_mm - p.jsw_medial_mm, -p.jsw_lateral_mm
    med_center = (21.0, med_bottom - med_r[1] + p.condyle_flattening_mm)
    lat_center = (-20.0, lat_bottom - lat_r[1])
    _add_femur_shaft(canvas, femur, end_v=min(med_center[1], lat_center[1]) + 2.0,
                     center_shift=0.5, flare_half_width=41.0, depth_ratio=(1.0, 0.75))
    canvas.add(femur, ellipse_bounds(med_center, med_r),
               lambda u, v: _shell(u, v, med_center, med_r, 62.0)
               * smoothstep((med_bottom - v) / 0.5 + 0.5), union=True)
    _add_shell(canvas, femur, lat_center, lat_r, 58.0, union=True)

    def plateau(u: np.ndarray) -> np.ndarray:
        w = anatomy.plateau_half_width
        spine = 1.0 + 0.12 * spurs[4]
        return (1.1 * _bump(u, 19.0, 15.0) - 0.4 * _bump(u, -19.0, 15.0)
                + p.plateau_depression_mm * _bump(u, 21.0, 11.0)
                - 8.0 * spine * np.exp(-((u - 4.0) / 3.0) ** 2)
                - 6.5 * spine * np.exp(-((u + 4.5) / 3.0) ** 2)
                + 3.0 * smoothstep((np.abs(u + p.subluxation_mm) - (w - 7.0)) / 7.0))

    _add_tibia(canvas, tibia, top=plateau, center=(-p.subluxation_mm, -p.subluxation_mm - 1.5),
               half_width=anatomy.plateau_half_width, depth_at_top=50.0,
               extent=anatomy.plateau_half_width + 4.0)

    # Fibula: head, styloid and shaft on the lateral side, overlapping the tibia a little.
    fu, fv = -35.0 + anatomy.fibula_offset[0] - p.subluxation_mm, 24.0 + anatomy.fibula_offset[1]
    fibula = np.zeros(shape, np.float32)
    _add_shell(canvas, fibula, (fu, fv), (9.0, 11.0), 22.0, union=True)
    _add_shell(canvas, fibula, (fu - 4.0, fv - 10.0), (3.5, 6.0), 9.0, angle_deg=70.0, union=True)

    def fibula_shaft(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        mid = fu + 0.04 * (v - fv)
        outer = _tube(u, mid, 6.0, 12.0)
        inner = _tube(u, mid, 3.8, 8.0)
        return smoothstep((v - fv - 2.0) / 8.0) * (MU_TRABECULAR * outer
                                                   + (MU_CORTEX - MU_TRABECULAR) * (outer - inner))

    canvas.add(fibula, (fu - 12.0, fv, fu + 12.0, _FAR), fibula_shaft, union=True)

    # Patella superimposed on the femur: faint on the AP view.
    _add_shell(canvas, bone, (2.0, -40.0 - anatomy.patella_height), anatomy.patella_radii, 20.0,
               weight=0.55)

    # Osteophytes at the joint margins (medial first), sclerosis, cysts.
    w = anatomy.plateau_half_width
    _add_osteophyte(canvas, bone, (w - 1.0 - p.subluxation_mm, 1.5), (1.0, -0.35), spurs[0])
    _add_osteophyte(canvas, bone, (40.0, med_bottom - 9.0), (1.0, 0.55), spurs[1])
    _add_osteophyte(canvas, bone, (-w + 1.0 - p.subluxation_mm, 1.5), (-1.0, -0.35), spurs[2])
    _add_osteophyte(canvas, bone, (-38.0, lat_bottom - 8.0), (-1.0, 0.55), spurs[3])
    _add_sclerosis(canvas, bone, pathology, medial_u=20.0, lateral_u=-19.0)
    bone += femur
    bone += tibia
    bone += fibula
    return soft, bone


def _add_sclerosis(canvas: Canvas, bone: np.ndarray, p: KneePathology, *, medial_u: float,
                   lateral_u: float | None) -> None:
    """Dense subchondral bands above and below the joint line, and cysts inside them."""
    if p.sclerosis <= 0.0:
        return
    bands = [(medial_u, p.sclerosis, p.plateau_depression_mm - p.jsw_medial_mm)]
    if lateral_u is not None:
        bands.append((lateral_u, 0.35 * p.sclerosis, -p.jsw_lateral_mm))
    for u0, strength, femur_bottom in bands:
        for center in ((u0, 4.5 + p.plateau_depression_mm), (u0 + 1.0, femur_bottom - 4.5)):
            canvas.add(bone, ellipse_bounds(center, (16.0, 5.0)),
                       lambda u, v, c=center, s=strength: np.float32(MU_TRABECULAR * s)
                       * ellipse_chord(u, v, center=c, radii=(16.0, 5.0), depth=45.0))
    for cu, cv, radius in p.cysts:
        center = (cu, cv + p.plateau_depression_mm)
        canvas.add(bone, ellipse_bounds(center, (radius, radius)),
                   lambda u, v, c=center, r=radius: np.float32(-MU_TRABECULAR * 1.6)
                   * ellipse_chord(u, v, center=c, radii=(r, r), depth=2.0 * r))


def draw_lateral(canvas: Canvas, anatomy: KneeAnatomy, pathology: KneePathology
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(soft, bone)`` attenuation maps of a lateral view of a right knee (anterior +u)."""
    shape = (canvas.rows, canvas.columns)
    soft = np.zeros(shape, np.float32)
    femur = np.zeros(shape, np.float32)
    condyles = np.zeros(shape, np.float32)
    tibia = np.zeros(shape, np.float32)
    bone = np.zeros(shape, np.float32)
    p = pathology
    spurs = p.osteophyte_mm

    _add_soft_tissue(canvas, soft, center=-3.0, half_width=anatomy.soft_half_width * 0.9,
                     fat=anatomy.fat_thickness, depth_ratio=1.05)
    # Fat pads are darker than the muscle around them: Hoffa's pad behind the patellar tendon,
    # the suprapatellar pad, and the popliteal fossa.
    for center, radii in (((17.0, -4.0), (9.0, 13.0)), ((12.0, -58.0), (7.0, 12.0)),
                          ((-40.0, -20.0), (10.0, 22.0))):
        canvas.add(soft, ellipse_bounds(center, radii),
                   lambda u, v, c=center, r=radii: np.float32(MU_FAT - MU_SOFT)
                   * ellipse_chord(u, v, center=c, radii=r, depth=40.0))

    # Femur: shaft bending back into two superimposed condyles (two contours when narrowed
    # unequally, as on a real lateral view).
    med_r = (anatomy.medial_condyle_radii[1] + 1.0, anatomy.medial_condyle_radii[1])
    lat_r = (anatomy.lateral_condyle_radii[1] + 1.0, anatomy.lateral_condyle_radii[1])
    med_bottom = p.plateau_depression_mm - p.jsw_medial_mm
    med_center = (-7.0, med_bottom - med_r[1] + p.condyle_flattening_mm)
    lat_center = (-5.0, -p.jsw_lateral_mm - lat_r[1])
    _add_femur_shaft(canvas, femur, end_v=med_center[1] - 4.0, center_shift=-6.0,
                     flare_half_width=28.0, depth_ratio=(1.0, 1.35))
    canvas.add(condyles, ellipse_bounds(med_center, med_r),
               lambda u, v: _shell(u, v, med_center, med_r, 34.0)
               * smoothstep((med_bottom - v) / 0.5 + 0.5))
    _add_shell(canvas, condyles, lat_center, lat_r, 34.0)
    np.maximum(femur, condyles, out=femur)

    def plateau(u: np.ndarray) -> np.ndarray:
        spine = 1.0 + 0.12 * spurs[4]
        return (-0.13 * u - 7.0 * spine * np.exp(-((u + 1.0) / 3.5) ** 2)
                + p.plateau_depression_mm * _bump(u, -4.0, 12.0)
                + 3.0 * smoothstep((np.abs(u + 1.0) - 20.0) / 6.0))

    _add_tibia(canvas, tibia, top=plateau, center=(-1.0, 2.5), half_width=26.0,
               depth_at_top=2.0 * anatomy.plateau_half_width, extent=30.0)
    _add_shell(canvas, tibia, (21.0, 30.0), (6.5, 16.0), 30.0, angle_deg=-15.0, union=True)

    fu, fv = -19.0 + anatomy.fibula_offset[0], 26.0 + anatomy.fibula_offset[1]
    _add_shell(canvas, bone, (fu, fv), (9.5, 11.0), 20.0)

    def fibula_shaft(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        mid = fu + 0.03 * (v - fv)
        outer = _tube(u, mid, 6.0, 12.0)
        inner = _tube(u, mid, 3.8, 8.0)
        return smoothstep((v - fv - 4.0) / 8.0) * (MU_TRABECULAR * outer
                                                   + (MU_CORTEX - MU_TRABECULAR) * (outer - inner))

    canvas.add(bone, (fu - 12.0, fv, fu + 12.0, _FAR), fibula_shaft)

    # Patella in profile, anterior to the femoral condyles: clearly visible here.
    pat_center = (31.0, -36.0 - anatomy.patella_height)
    pat_radii = (10.0, anatomy.patella_radii[1])
    _add_shell(canvas, bone, pat_center, pat_radii, 42.0, angle_deg=-12.0, cortex=1.5)
    tilt = math.radians(-12.0)
    top = (pat_center[0] + pat_radii[1] * math.sin(tilt) * -1.0, pat_center[1] - pat_radii[1] * math.cos(tilt))
    bottom = (2 * pat_center[0] - top[0], 2 * pat_center[1] - top[1])

    _add_osteophyte(canvas, bone, (24.0, 1.8), (1.0, -0.5), spurs[0])
    _add_osteophyte(canvas, bone, (-25.0, 5.5), (-1.0, -0.4), spurs[2])
    _add_osteophyte(canvas, bone, (med_center[0] - med_r[0] + 1.5, med_center[1] + 6.0),
                    (-1.0, 0.35), spurs[1])
    _add_osteophyte(canvas, bone, top, (top[0] - pat_center[0], top[1] - pat_center[1]),
                    0.6 * spurs[3])
    _add_osteophyte(canvas, bone, bottom, (bottom[0] - pat_center[0], bottom[1] - pat_center[1]),
                    0.6 * spurs[3])
    _add_sclerosis(canvas, bone, pathology, medial_u=-3.0, lateral_u=None)
    bone += femur
    bone += tibia
    return soft, bone
