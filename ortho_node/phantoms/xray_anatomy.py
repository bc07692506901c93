"""The knee a radiograph phantom shows: per-knee anatomy and Kellgren-Lawrence pathology.

Coordinates are anatomical millimetres of a right knee as displayed: ``v`` points down (distal),
the tibial plateau lies at ``v = 0``; on the AP view ``u`` points to the image right, which is
the patient's left, so the medial compartment of a right knee has ``u > 0`` and the fibula
``u < 0``; on the lateral view ``u`` points anterior. A left knee is drawn as this right
knee mirrored left-right (see :mod:`ortho_node.phantoms.xray`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Joint-space width in mm per KL grade, medial and lateral compartment (medial narrows first).
_JSW_MEDIAL_MM = (5.2, 4.6, 3.8, 2.4, 0.8)
_JSW_LATERAL_MM = (6.0, 5.8, 5.4, 4.7, 3.6)
# Osteophyte length in mm per grade: none, doubtful lipping, definite, moderate, large.
_OSTEOPHYTE_MM = (0.0, 1.2, 2.8, 4.5, 7.0)
# Extra density of the subchondral band per grade (sclerosis from grade 3).
_SCLEROSIS = (0.0, 0.0, 0.0, 0.55, 0.95)


@dataclass(frozen=True)
class KneeAnatomy:
    """Size and shape details of one knee that stay the same across its views."""

    medial_condyle_radii: tuple[float, float]
    lateral_condyle_radii: tuple[float, float]
    plateau_half_width: float
    fibula_offset: tuple[float, float]
    patella_radii: tuple[float, float]
    soft_half_width: float
    fat_thickness: float
    patella_height: float


@dataclass(frozen=True)
class KneePathology:
    """What a KL grade does to one knee, with the per-knee random details drawn."""

    kl_grade: int
    jsw_medial_mm: float
    jsw_lateral_mm: float
    osteophyte_mm: tuple[float, ...]
    """Lengths at the sites medial tibia, medial femur, lateral tibia, lateral femur, spines."""
    sclerosis: float
    condyle_flattening_mm: float
    plateau_depression_mm: float
    subluxation_mm: float
    cysts: tuple[tuple[float, float, float], ...]
    """Subchondral cysts as ``(u, v, radius)`` in the medial compartment."""


def draw_anatomy(rng: np.random.Generator) -> KneeAnatomy:
    """Return a random but plausible adult knee shape."""
    def jitter(value: float, spread: float) -> float:
        return float(value * (1.0 + rng.uniform(-spread, spread)))

    return KneeAnatomy(
        medial_condyle_radii=(jitter(20.0, 0.06), jitter(23.0, 0.06)),
        lateral_condyle_radii=(jitter(19.0, 0.06), jitter(21.5, 0.06)),
        plateau_half_width=jitter(39.0, 0.05),
        fibula_offset=(float(rng.uniform(-2.5, 2.5)), float(rng.uniform(-3.0, 3.0))),
        patella_radii=(jitter(21.0, 0.08), jitter(23.0, 0.08)),
        soft_half_width=jitter(62.0, 0.15),
        fat_thickness=float(rng.uniform(4.0, 16.0)),
        patella_height=float(rng.uniform(-4.0, 6.0)),
    )


def draw_pathology(kl_grade: int, rng: np.random.Generator) -> KneePathology:
    """Return the pathology of a knee with Kellgren-Lawrence grade ``kl_grade`` (0-4)."""
    if kl_grade not in range(5):
        raise ValueError(f"kl_grade must be 0-4, got {kl_grade!r}")
    jsw_jitter = float(rng.uniform(-0.2, 0.2))
    spur = _OSTEOPHYTE_MM[kl_grade]
    # Medial sites grow first; the tibial spines sharpen from grade 2.
    site_scale = (1.0, 0.9, 0.7, 0.6, 0.5 if kl_grade >= 2 else 0.0)
    osteophytes = tuple(
        float(spur * scale * rng.uniform(0.8, 1.2)) if spur else 0.0 for scale in site_scale
    )
    cysts: tuple[tuple[float, float, float], ...] = ()
    if kl_grade == 4:
        cysts = tuple(
            (float(rng.uniform(12.0, 28.0)), float(rng.uniform(3.0, 7.0)), float(rng.uniform(1.2, 2.5)))
            for _ in range(int(rng.integers(1, 4)))
        )
    return KneePathology(
        kl_grade=kl_grade,
        jsw_medial_mm=max(0.3, _JSW_MEDIAL_MM[kl_grade] + jsw_jitter),
        jsw_lateral_mm=_JSW_LATERAL_MM[kl_grade] + jsw_jitter,
        osteophyte_mm=osteophytes,
        sclerosis=_SCLEROSIS[kl_grade] * float(rng.uniform(0.85, 1.15)),
        condyle_flattening_mm=float(rng.uniform(1.0, 2.0)) if kl_grade == 4 else 0.0,
        plateau_depression_mm=float(rng.uniform(1.5, 3.0)) if kl_grade == 4 else 0.0,
        subluxation_mm=float(rng.uniform(2.0, 4.0)) if kl_grade == 4 else 0.0,
        cysts=cysts,
    )
