"""Rendering behaviour of the synthetic knee phantoms: determinism, pathology, mirroring, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ortho_node.phantoms import (
    MRPhantomSpec,
    PixelBox,
    XrayPhantomSpec,
    build_knee_study,
    render_knee_mr,
    render_knee_radiograph,
)

SMALL_XRAY = {"rows": 256, "columns": 256, "pixel_spacing_mm": 0.6}
SMALL_MR = {"slices": 12, "rows": 96, "columns": 96, "pixel_spacing_mm": 1.33}


def medial_joint_space_px(pixels: np.ndarray, box: PixelBox) -> float:
    """Median height of the dark gap between femur and tibia in the medial compartment.

    For a right knee AP view the medial compartment lies in the right part of the joint box.
    """
    width = box.column1 - box.column0
    region = pixels[box.row0:box.row1].astype(np.float64)
    heights = []
    for c in range(box.column0 + int(0.66 * width), box.column0 + int(0.80 * width)):
        profile = np.convolve(region[:, c - 2:c + 3].mean(axis=1), np.ones(3) / 3, mode="same")
        lowest = int(np.argmin(profile[3:-3])) + 3
        bone = min(profile[:lowest].max(), profile[lowest:].max())
        dark = profile < (profile[lowest] + bone) / 2
        top = bottom = lowest
        while top > 0 and dark[top - 1]:
            top -= 1
        while bottom < len(dark) - 1 and dark[bottom + 1]:
            bottom += 1
        heights.append(bottom - top + 1)
    return float(np.median(heights))


# -- determinism -----------------------------------------------------------------------------

def test_same_seed_gives_identical_radiograph_and_mr() -> None:
    spec = XrayPhantomSpec(kl_grade=2, side="R", **SMALL_XRAY)
    first, second = render_knee_radiograph(spec, seed=11), render_knee_radiograph(spec, seed=11)
    assert first.pixels.tobytes() == second.pixels.tobytes()
    assert first.joint_box == second.joint_box
    mr_spec = MRPhantomSpec(acl_tear=True, **SMALL_MR)
    assert render_knee_mr(mr_spec, seed=5).pixels.tobytes() == render_knee_mr(mr_spec, seed=5).pixels.tobytes()


def test_different_seeds_differ_in_pixels_pose_and_uids() -> None:
    spec = XrayPhantomSpec(kl_grade=2, side="R", **SMALL_XRAY)
    images = [render_knee_radiograph(spec, seed=seed) for seed in range(6)]
    assert np.mean(images[0].pixels != images[1].pixels) > 0.5
    # Per-image variation: the joint moves and turns a few degrees, so no template fits all.
    assert len({image.joint_box for image in images}) == 6
    rotations = [image.rotation_deg for image in images]
    assert all(abs(r) <= 4.0 for r in rotations) and max(rotations) - min(rotations) > 1.0
    mr_spec = MRPhantomSpec(**SMALL_MR)
    assert not np.array_equal(render_knee_mr(mr_spec, seed=1).pixels, render_knee_mr(mr_spec, seed=2).pixels)
    study_a, study_b = build_knee_study(seed=1, xrays=[spec]), build_knee_study(seed=2, xrays=[spec])
    assert study_a.study_instance_uid != study_b.study_instance_uid
    assert study_a.datasets[0].SOPInstanceUID != study_b.datasets[0].SOPInstanceUID


def test_value_ranges_are_12_bit_radiographs_and_16_bit_mr() -> None:
    image = render_knee_radiograph(XrayPhantomSpec(kl_grade=4, side="L", **SMALL_XRAY), seed=3)
    assert image.pixels.dtype == np.uint16 and int(image.pixels.max()) <= 4095
    assert image.window_width > 0 and 0 < image.window_center < 4095
    volume = render_knee_mr(MRPhantomSpec(contrast="T2", effusion=True, **SMALL_MR), seed=3)
    assert volume.pixels.dtype == np.uint16 and volume.pixels.shape == (12, 96, 96)
    assert int(volume.pixels.max()) > 4095  # uses the 16-bit range, not just 12 bits


# -- pathology and anatomy -------------------------------------------------------------------

def test_joint_space_narrows_with_kl_grade() -> None:
    widths = []
    for grade in range(5):
        image = render_knee_radiograph(XrayPhantomSpec(kl_grade=grade, side="R"), seed=21)
        widths.append(medial_joint_space_px(image.pixels, image.joint_box))
    assert all(a > b for a, b in zip(widths, widths[1:])), widths
    # Grade 4 is near bone-on-bone medially: well under half the healthy width.
    assert widths[4] < 0.5 * widths[0], widths


def test_joint_space_tracks_grade_across_poses() -> None:
    """With a different pose and knee for every image, mean width still falls with grade."""
    spec = {"rows": 512, "columns": 512, "pixel_spacing_mm": 0.3}
    means = []
    for grade in (0, 2, 4):
        images = [render_knee_radiograph(XrayPhantomSpec(kl_grade=grade, side="R", **spec),
                                         seed=100 * grade + k) for k in range(3)]
        means.append(np.mean([medial_joint_space_px(i.pixels, i.joint_box) for i in images]))
    assert means[0] > means[1] > means[2], means


def test_higher_grades_add_bone_at_the_joint_margins() -> None:
    """Osteophytes and sclerosis: more bright bone in the joint region at grade 4 than at 0."""
    healthy = render_knee_radiograph(XrayPhantomSpec(kl_grade=0, side="R"), seed=4)
    severe = render_knee_radiograph(XrayPhantomSpec(kl_grade=4, side="R"), seed=4)
    box = healthy.joint_box
    region = (slice(box.row0, box.row1), slice(box.column0, box.column1))
    threshold = np.percentile(healthy.pixels[region], 90)
    assert (severe.pixels[region] > threshold).mean() > 1.2 * (healthy.pixels[region] > threshold).mean()


def test_left_knee_is_mirror_of_right_knee() -> None:
    for view in ("AP", "LAT"):
        right = render_knee_radiograph(XrayPhantomSpec(kl_grade=3, side="R", view=view, **SMALL_XRAY), seed=8)
        left = render_knee_radiograph(XrayPhantomSpec(kl_grade=3, side="L", view=view, **SMALL_XRAY), seed=8)
        np.testing.assert_array_equal(left.pixels, right.pixels[:, ::-1])
        assert left.joint_box == right.joint_box.mirrored(256)
    right_mr = render_knee_mr(MRPhantomSpec(side="R", **SMALL_MR), seed=8)
    left_mr = render_knee_mr(MRPhantomSpec(side="L", **SMALL_MR), seed=8)
    np.testing.assert_array_equal(left_mr.pixels, right_mr.pixels[::-1])
    assert np.allclose(left_mr.slice_positions_mm, [-p for p in reversed(right_mr.slice_positions_mm)])
    # Slices run from the patient's right to left; each knee sits on its own side.
    assert right_mr.slice_positions_mm == tuple(sorted(right_mr.slice_positions_mm))
    assert max(right_mr.slice_positions_mm) < 0 < min(left_mr.slice_positions_mm)


def test_fibula_is_on_the_lateral_side_of_an_ap_view() -> None:
    """Right knee AP, radiological display: lateral (fibula) on the image left, below the joint."""
    image = render_knee_radiograph(XrayPhantomSpec(kl_grade=0, side="R"), seed=2)
    box = image.joint_box
    width = box.column1 - box.column0
    below = slice(box.row1 + 10, min(image.pixels.shape[0], box.row1 + 120))
    outer_left = image.pixels[below, box.column0 + width // 20:box.column0 + width // 6].mean()
    outer_right = image.pixels[below, box.column1 - width // 6:box.column1 - width // 20].mean()
    assert outer_left > outer_right


def test_torn_acl_differs_from_intact_inside_the_acl_region() -> None:
    spec = {"rows": 256, "columns": 256, "pixel_spacing_mm": 0.5, "slices": 32, "contrast": "PD_FS"}
    intact = render_knee_mr(MRPhantomSpec(acl_tear=False, **spec), seed=13)
    torn = render_knee_mr(MRPhantomSpec(acl_tear=True, **spec), seed=13)
    assert intact.acl_slices and intact.acl_slices == torn.acl_slices
    box = intact.acl_box
    inside = np.zeros(intact.pixels.shape[1:], bool)
    inside[box.row0:box.row1, box.column0:box.column1] = True
    diff = np.abs(torn.pixels.astype(np.int32) - intact.pixels.astype(np.int32))
    acl_diff = diff[list(intact.acl_slices)]
    assert acl_diff[:, inside].mean() > 10 * max(acl_diff[:, ~inside].mean(), 1.0)
    # A torn ACL is brighter (oedema, fluid) than the dark intact ligament.
    acl = list(intact.acl_slices)
    assert torn.pixels[acl][:, inside].mean() > intact.pixels[acl][:, inside].mean()


def test_meniscus_tear_adds_bright_signal_in_the_medial_horn_only() -> None:
    spec = {"rows": 256, "columns": 256, "pixel_spacing_mm": 0.5, "slices": 32, "contrast": "T2"}
    intact = render_knee_mr(MRPhantomSpec(meniscus_tear=False, **spec), seed=17)
    torn = render_knee_mr(MRPhantomSpec(meniscus_tear=True, **spec), seed=17)
    changed = np.argwhere(torn.pixels != intact.pixels)
    assert len(changed) > 0
    assert set(np.unique(changed[:, 0])) <= set(intact.medial_meniscus_slices)
    box = intact.meniscus_box
    assert (box.row0 <= changed[:, 1]).all() and (changed[:, 1] < box.row1).all()
    assert (torn.pixels.astype(np.int64) - intact.pixels).sum() > 0  # brighter, not darker


# -- speed -----------------------------------------------------------------------------------

def test_rendering_is_fast() -> None:
    """A 2000 x 2500 radiograph well under a second and a 256 x 256 MR slice in a few ms
    (generous bounds: the CI machine is shared)."""
    spec = XrayPhantomSpec(kl_grade=3, side="L", rows=2500, columns=2000, pixel_spacing_mm=0.14)
    started = time.process_time()
    render_knee_radiograph(spec, seed=1)
    assert time.process_time() - started < 2.0
    started = time.process_time()
    render_knee_mr(MRPhantomSpec(slices=24), seed=1)
    assert (time.process_time() - started) / 24 < 0.025


# -- input validation ------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "error", "fragment"), [
    ({"kl_grade": 5, "side": "R"}, ValueError, "kl_grade"),
    ({"kl_grade": "2", "side": "R"}, TypeError, "kl_grade"),
    ({"kl_grade": 2, "side": "B"}, ValueError, "side"),
    ({"kl_grade": 2, "side": "R", "view": "PA"}, ValueError, "PA"),
    ({"kl_grade": 2, "side": "R", "rows": 10}, ValueError, "rows"),
    ({"kl_grade": 2, "side": "R", "pixel_spacing_mm": 5.0}, ValueError, "pixel_spacing_mm"),
    ({"kl_grade": 2, "side": "R", "photometric": "RGB"}, ValueError, "RGB"),
])
def test_xray_spec_rejects_bad_input(kwargs: dict, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        XrayPhantomSpec(**kwargs)


def test_specs_normalise_strings_and_reject_bad_mr_input() -> None:
    spec = XrayPhantomSpec(kl_grade=1, side="L", view="LL", modality="CR", photometric="MONOCHROME1")
    assert (spec.side.value, spec.view.value, spec.modality.value) == ("L", "LAT", "CR")
    with pytest.raises(TypeError, match="acl_tear"):
        MRPhantomSpec(acl_tear=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slices"):
        MRPhantomSpec(slices=200)
    with pytest.raises(ValueError, match="T1"):
        MRPhantomSpec(contrast="T1")
    with pytest.raises(TypeError, match="XrayPhantomSpec"):
        render_knee_radiograph(MRPhantomSpec(), seed=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        render_knee_mr(MRPhantomSpec(), seed=-1)
