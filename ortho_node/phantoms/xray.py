"""Synthetic knee radiographs: AP and lateral views with Kellgren-Lawrence pathology.

Display convention (radiological, as a PACS shows these images):

* **AP view** - the patient faces the viewer, so the patient's right is on the image left
  (``PatientOrientation = L\\F``). A right knee therefore shows its fibula (lateral) on the
  image left and the medial compartment on the image right; a left knee is the mirror image.
* **Lateral view** - seen from the knee's lateral side (``PatientOrientation`` ``A\\F`` for a
  right knee, ``P\\F`` for a left one): anterior, with the patella, is on the image right of a
  right knee and on the image left of a left knee.

Values are 12-bit (0-4095) in the MONOCHROME2 sense: bone is bright. The DICOM writer inverts
them for MONOCHROME1. Same seed, same spec -> the same array, byte for byte; a left knee is
exactly the mirror of the right knee rendered from the same seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ortho_node.model.findings import Laterality
from ortho_node.phantoms.detector import detector_values
from ortho_node.phantoms.geometry import Canvas, PixelBox, Pose
from ortho_node.phantoms.seeding import derive_seed, rng_for
from ortho_node.phantoms.specs import XrayPhantomSpec, XrayView
from ortho_node.phantoms.texture import tiled_noise
from ortho_node.phantoms.xray_anatomy import draw_anatomy, draw_pathology
from ortho_node.phantoms.xray_views import draw_ap, draw_lateral


# Anatomical rectangle (u0, v0, u1, v1) holding the tibiofemoral joint on each view.
_JOINT_BOUNDS = {XrayView.AP: (-45.0, -16.0, 45.0, 12.0), XrayView.LATERAL: (-34.0, -16.0, 30.0, 12.0)}


@dataclass(frozen=True)
class KneeRadiograph:
    """A rendered knee radiograph and what is known about it.

    Attributes
    ----------
    pixels : numpy.ndarray
        uint16 array ``(rows, columns)``, values 0-4095, bone bright (MONOCHROME2 sense).
    joint_box : PixelBox
        Bounding box of the tibiofemoral joint (condyles, joint space, plateau) in pixels.
    kl_grade, side, view :
        As requested in the spec.
    pixel_spacing_mm : float
        Detector pixel spacing.
    jsw_medial_mm, jsw_lateral_mm : float
        True joint-space widths drawn, in anatomical mm (before magnification).
    rotation_deg, scale : float
        The random pose: in-plane rotation and anatomical-to-detector scale.
    kvp, exposure_mas : float
        Plausible technique factors for the header.
    window_center, window_width : float
        A VOI window that shows bone and soft tissue.
    """

    pixels: np.ndarray
    joint_box: PixelBox
    kl_grade: int
    side: Laterality
    view: XrayView
    pixel_spacing_mm: float
    jsw_medial_mm: float
    jsw_lateral_mm: float
    rotation_deg: float
    scale: float
    kvp: float
    exposure_mas: float
    window_center: float
    window_width: float


def _draw_pose(rng: np.random.Generator, spec: XrayPhantomSpec, body_scale: float) -> Pose:
    fov_x = spec.columns * spec.pixel_spacing_mm
    fov_y = spec.rows * spec.pixel_spacing_mm
    return Pose(
        shift_x_mm=float(rng.uniform(-0.06, 0.06) * fov_x),
        shift_y_mm=float(rng.uniform(-0.06, 0.06) * fov_y),
        rotation_deg=float(rng.uniform(-4.0, 4.0)),
        scale=body_scale * float(rng.uniform(1.0, 1.08)),  # body size x magnification
    )


def render_knee_radiograph(spec: XrayPhantomSpec, *, seed: int,
                           anatomy_seed: int | None = None) -> KneeRadiograph:
    """Render one synthetic knee radiograph.

    Parameters
    ----------
    spec : XrayPhantomSpec
        Grade, side, view, matrix size and pixel spacing.
    seed : int
        Seeds the acquisition: pose (shift, rotation of a few degrees, magnification),
        exposure and noise.
    anatomy_seed : int, optional
        Seeds the knee itself (bone sizes, soft tissue, the random details of the
        pathology); defaults to ``seed``. Give two views the same ``anatomy_seed`` to show the
        same knee.

    Returns
    -------
    KneeRadiograph
        The pixels (uint16, 12-bit, bone bright) with the joint box and true parameters.

    Raises
    ------
    TypeError
        If ``spec`` is not an :class:`XrayPhantomSpec` or a seed is not an int.
    ValueError
        If a seed is negative.
    """
    if not isinstance(spec, XrayPhantomSpec):
        raise TypeError(f"spec must be an XrayPhantomSpec, got {type(spec).__name__}")
    knee_seed = seed if anatomy_seed is None else anatomy_seed
    anatomy_rng = rng_for(knee_seed, "xray-anatomy")
    anatomy = draw_anatomy(anatomy_rng)
    body_scale = float(anatomy_rng.uniform(0.9, 1.1))
    pathology = draw_pathology(spec.kl_grade, rng_for(knee_seed, "xray-pathology"))

    view_key = spec.view.value
    pose = _draw_pose(rng_for(seed, "xray-pose", view_key), spec, body_scale)
    canvas = Canvas(spec.rows, spec.columns, pixel_spacing_mm=spec.pixel_spacing_mm, pose=pose)
    draw = draw_ap if spec.view is XrayView.AP else draw_lateral
    soft, bone = draw(canvas, anatomy, pathology)

    noise_rng = rng_for(seed, "xray-noise", view_key)
    # Trabeculae run mostly along the bone axis: grain longer vertically.
    grain = 0.45 / spec.pixel_spacing_mm
    texture = tiled_noise(noise_rng, soft.shape, cell_px=(2.5 * grain, grain))
    texture *= np.float32(0.07)
    texture += np.float32(1.0)
    bone *= texture
    soft += bone
    exposure = float(noise_rng.uniform(0.8, 1.25))
    pixels = detector_values(soft, noise_rng, exposure=exposure,
                             blur_factor=max(2, round(5.0 / spec.pixel_spacing_mm)))

    joint_box = canvas.box(*_JOINT_BOUNDS[spec.view])
    if joint_box is None:  # cannot happen with the pose limits above; keep the type honest
        raise ValueError(f"joint region falls outside a {spec.rows}x{spec.columns} image")
    if spec.side is Laterality.LEFT:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
        joint_box = joint_box.mirrored(spec.columns)

    sample = pixels[:: max(1, spec.rows // 256), :: max(1, spec.columns // 256)]
    low_value, high_value = np.percentile(sample, [1.0, 99.5])
    return KneeRadiograph(
        pixels=pixels,
        joint_box=joint_box,
        kl_grade=spec.kl_grade,
        side=spec.side,
        view=spec.view,
        pixel_spacing_mm=spec.pixel_spacing_mm,
        jsw_medial_mm=pathology.jsw_medial_mm,
        jsw_lateral_mm=pathology.jsw_lateral_mm,
        rotation_deg=pose.rotation_deg,
        scale=pose.scale,
        kvp=float(60 + derive_seed(seed, "xray-kvp", view_key) % 16),
        exposure_mas=round(4.0 * exposure, 1),
        window_center=float(round((low_value + high_value) / 2)),
        window_width=float(max(64, round((high_value - low_value) * 1.1))),
    )
