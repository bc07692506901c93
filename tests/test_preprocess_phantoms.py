"""The preprocessing pipeline on generated knee studies (``ortho_node.phantoms``): real DX/CR
and MR headers from the phantom writer, anatomy with known ground truth."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset
from tests.test_preprocess_support import set_pixels, with_headers

from ortho_node.model.findings import Laterality
from ortho_node.model.pixels import decode_display_frame
from ortho_node.model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    preprocess_image,
)
from ortho_node.model.scope import RadiographView, ScopeRule, assess_instance
from ortho_node.model.series import SliceSampling, prepare_series, select_series, survey_series
from ortho_node.phantoms import (
    LOSSLESS_TRANSFER_SYNTAXES,
    MRPhantomSpec,
    XrayPhantomSpec,
    build_knee_study,
    render_knee_radiograph,
    write_knee_study,
)

AP_LEFT = XrayPhantomSpec(kl_grade=2, side="L", rows=512, columns=512, pixel_spacing_mm=0.3)
MR_SMALL = {"slices": 8, "rows": 128, "columns": 128}
KNEE_RULES = (
    ScopeRule({"CR", "DX"}, {"KNEE"}, {"AP", "PA"}, name="kl_grade"),
    ScopeRule({"MR"}, {"KNEE"}, requires_side=True, name="acl"),
)


def radiograph(spec: XrayPhantomSpec, *, seed: int = 5) -> Dataset:
    return build_knee_study(seed=seed, xrays=[spec]).datasets[0]


def plane_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]


@pytest.fixture(scope="module")
def mr_study() -> tuple[Dataset, ...]:
    """A left knee: DX AP plus sagittal PD, PD-FS and T2 series (8 slices of 128² each)."""
    specs = [MRPhantomSpec(side="L", contrast=c, **MR_SMALL) for c in ("PD", "PD_FS", "T2")]
    return build_knee_study(seed=9, xrays=[AP_LEFT], mr_series=specs).datasets


def test_generated_radiograph_shape_range_and_scope() -> None:
    ds = radiograph(AP_LEFT)
    result = preprocess_image(ds)
    assert result.tensor.shape == (3, 224, 224) and result.tensor.dtype == torch.float32
    plane = plane_of(result.tensor)
    assert 0.0 <= float(plane.min()) and float(plane.max()) <= 1.0 + 1e-5
    assert result.laterality is Laterality.LEFT and result.laterality_source == "ImageLaterality"
    decision = assess_instance(ds, KNEE_RULES, display_values=decode_display_frame(ds).values)
    assert decision.in_scope and decision.view is RadiographView.AP and decision.body_part == "KNEE"
    lateral = radiograph(XrayPhantomSpec(kl_grade=2, side="L", view="LAT", rows=256, columns=256))
    assert not assess_instance(lateral, KNEE_RULES).in_scope


def test_left_knee_flipped_equals_its_mirror_image_as_a_right_knee() -> None:
    rendered = render_knee_radiograph(AP_LEFT, seed=11)
    left = set_pixels(radiograph(AP_LEFT), rendered.pixels)
    right = with_headers(left, ImageLaterality="R", PatientOrientation=["R", "F"])
    set_pixels(right, rendered.pixels[:, ::-1])
    left_result, right_result = preprocess_image(left), preprocess_image(right)
    assert left_result.geometry.flip_columns and not right_result.geometry.flip_columns
    assert torch.allclose(left_result.tensor, right_result.tensor, atol=1e-4)  # float rounding only

    # A map over the joint, as the model sees it, projects onto each source's own joint.
    mirrored_box = rendered.joint_box.mirrored(512)
    row0, column0 = right_result.geometry.source_to_output(mirrored_box.row0, mirrored_box.column0)
    row1, column1 = right_result.geometry.source_to_output(mirrored_box.row1, mirrored_box.column1)
    joint_map = np.zeros((14, 14), dtype=np.float32)
    joint_map[
        int(row0) // 16 : int(np.ceil(row1 / 16)), int(column0) // 16 : int(np.ceil(column1 / 16))
    ] = 1
    on_left = left_result.geometry.source_pixel_map(joint_map)
    on_right = right_result.geometry.source_pixel_map(joint_map)
    assert np.array_equal(on_left, on_right[:, ::-1])
    box = rendered.joint_box
    assert np.all(on_left[box.row0 : box.row1, box.column0 : box.column1] == 1.0)
    assert float(on_left.mean()) < 0.5  # and not everywhere
    values, region = left_result.geometry.project_to_source(joint_map)
    assert region == (0.0, 0.0, 512.0, 512.0)
    assert np.array_equal(values, joint_map[:, ::-1])


def test_monochrome1_radiograph_displays_like_its_monochrome2_twin() -> None:
    mono2 = radiograph(AP_LEFT)
    mono1 = radiograph(
        XrayPhantomSpec(**{**AP_LEFT.__dict__, "photometric": "MONOCHROME1", "modality": "CR"})
    )
    assert mono1.PhotometricInterpretation == "MONOCHROME1"
    assert np.array_equal(mono1.pixel_array, 4095 - mono2.pixel_array)
    # Compared with the percentile window: the phantom's MONOCHROME1 header carries the
    # MONOCHROME2 window centre (see the report), which would shift the contrast.
    no_window = {"WindowCenter": None, "WindowWidth": None}
    display1 = decode_display_frame(with_headers(mono1, **no_window)).values
    display2 = decode_display_frame(with_headers(mono2, **no_window)).values
    assert np.allclose(display1, display2, atol=1e-6)
    rendered = render_knee_radiograph(AP_LEFT, seed=11)
    mono1_rendered = set_pixels(copy.deepcopy(mono1), 4095 - rendered.pixels)
    display = decode_display_frame(mono1_rendered).values
    box = rendered.joint_box
    joint_band = display[box.row0 : box.row1, box.column0 : box.column1].mean()
    corner = display[:40, :40].mean()  # air / soft tissue far from the bones
    assert joint_band > corner + 0.2  # bone bright after inversion


def test_spacing_mode_sees_the_same_millimetres_at_two_detector_resolutions() -> None:
    coarse = radiograph(AP_LEFT)
    fine = radiograph(
        XrayPhantomSpec(kl_grade=2, side="L", rows=1024, columns=1024, pixel_spacing_mm=0.15)
    )
    config = PreprocessConfig(target_spacing_mm=0.6)
    a, b = preprocess_image(coarse, config=config), preprocess_image(fine, config=config)
    assert a.geometry.scale == pytest.approx((0.5, 0.5)) and b.geometry.scale == pytest.approx(
        (0.25, 0.25)
    )
    assert a.geometry.crop_box == (32, 32, 480, 480) and b.geometry.crop_box == (64, 64, 960, 960)
    assert float((plane_of(a.tensor) - plane_of(b.tensor)).abs().mean()) < 0.03


def test_lossless_transfer_syntaxes_of_a_generated_series_decode_identically(
    tmp_path: Path,
) -> None:
    spec = MRPhantomSpec(side="R", contrast="PD_FS", **MR_SMALL)
    reference = {
        ds.SOPInstanceUID: preprocess_image(ds).tensor
        for ds in build_knee_study(seed=4, mr_series=[spec]).datasets
    }
    written = write_knee_study(
        tmp_path, seed=4, mr_series=[spec], transfer_syntaxes=LOSSLESS_TRANSFER_SYNTAXES
    )
    syntaxes = {item.transfer_syntax_uid for item in written.files}
    assert syntaxes == set(LOSSLESS_TRANSFER_SYNTAXES[: len(written.files)])
    for item in written.files:
        assert torch.equal(
            preprocess_image(item.path).tensor, reference[item.sop_instance_uid]
        ), item.path


def test_series_selection_on_a_generated_study(mr_study: tuple[Dataset, ...]) -> None:
    candidates = survey_series(mr_study)
    described = {c.description: c for c in candidates}
    assert described["XR KNEE AP L"].excluded_reason == "modality DX, not MR"
    assert described["SAG PD L"].signature.label == "sagittal PD"
    assert described["SAG T2 L"].signature.label == "sagittal T2"
    chosen = select_series(candidates)
    assert chosen.description == "SAG PD FS L" and chosen.signature.label == "sagittal PD-FS"
    prepared = prepare_series(
        chosen, config=PreprocessConfig(), sampling=SliceSampling(max_slices=4)
    )
    assert prepared.tensor.shape == (4, 3, 224, 224)
    assert prepared.laterality is Laterality.LEFT and prepared.slice_order_mirrored
    # Left knee mirrored: slices run from the patient's left (lateral) toward the midline.
    assert list(prepared.positions_mm) == sorted(prepared.positions_mm, reverse=True)
    by_uid = {ds.SOPInstanceUID: ds for ds in mr_study}
    xs = [float(by_uid[ref.sop_instance_uid].ImagePositionPatient[0]) for ref in prepared.images]
    assert xs == sorted(xs, reverse=True)
    for ds in (by_uid[ref.sop_instance_uid] for ref in prepared.images):
        assert assess_instance(ds, KNEE_RULES).in_scope


def test_laterality_from_position_agrees_with_the_generated_header(
    mr_study: tuple[Dataset, ...],
) -> None:
    slice_ds = next(ds for ds in mr_study if ds.Modality == "MR")
    unlabelled = with_headers(slice_ds, Laterality=None)
    config = PreprocessConfig(mr_laterality_offset_mm=40)
    assert preprocess_image(unlabelled).laterality is None
    assert preprocess_image(unlabelled, config=config).laterality is Laterality.LEFT
    right = build_knee_study(seed=9, mr_series=[MRPhantomSpec(side="R", **MR_SMALL)]).datasets[0]
    assert (
        preprocess_image(with_headers(right, Laterality=None), config=config).laterality
        is Laterality.RIGHT
    )


def test_written_files_read_with_deferred_pixels(tmp_path: Path) -> None:
    written = write_knee_study(
        tmp_path, seed=2, xrays=[AP_LEFT], transfer_syntaxes=[pydicom.uid.JPEG2000Lossless]
    )
    path = written.files[0].path
    deferred = pydicom.dcmread(path, defer_size=1024)
    assert torch.equal(preprocess_image(deferred).tensor, preprocess_image(path).tensor)
