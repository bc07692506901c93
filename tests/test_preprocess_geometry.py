"""Tensor shape, normalisation, geometry, laterality mirroring and the way back to source pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from tests.test_preprocess_support import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    enhanced_mr,
    read,
    set_pixels,
    with_headers,
)

from ortho_node.model.findings import Heatmap, Laterality
from ortho_node.model.pixels import UnsupportedImageError, decode_display_frame
from ortho_node.model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageGeometry,
    Interpolation,
    MirrorAxis,
    PreprocessConfig,
    ResizeMode,
    determine_laterality,
    mirror_axis,
    pixel_spacing,
    plan_geometry,
    preprocess_image,
)

MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


def plane_of(tensor: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: the [0, 1] grey plane the three channels were made from."""
    planes = tensor * STD + MEAN
    assert torch.allclose(planes[0], planes[1], atol=1e-5) and torch.allclose(
        planes[0], planes[2], atol=1e-5
    )
    return planes[0]


@pytest.fixture(scope="module")
def radiograph() -> Dataset:
    """RG3: a real AP extremity CR, 1760², MONOCHROME1, Laterality R, with an 'R' marker."""
    return read("RG3_UNCR.dcm")


def test_tensor_is_float32_three_equal_channels_normalised(radiograph: Dataset) -> None:
    result = preprocess_image(radiograph)
    assert result.tensor.shape == (3, 224, 224) and result.tensor.dtype == torch.float32
    plane = plane_of(result.tensor)
    assert float(plane.min()) >= -1e-5 and float(plane.max()) <= 1 + 1e-5
    assert float(plane.std()) > 0.1
    custom = preprocess_image(
        radiograph, config=PreprocessConfig(input_size=256, mean=(0.5,) * 3, std=(0.25,) * 3)
    )
    assert custom.tensor.shape == (3, 256, 256)
    custom_plane = custom.tensor[0] * 0.25 + 0.5
    assert float(custom_plane.min()) >= -1e-5 and float(custom_plane.max()) <= 1 + 1e-5
    upsampled = F.interpolate(plane[None, None], size=256, mode="bilinear")[0, 0]
    assert np.corrcoef(custom_plane.ravel(), upsampled.ravel())[0, 1] > 0.99


def test_the_image_keeps_its_orientation(radiograph: Dataset) -> None:
    display = torch.from_numpy(decode_display_frame(radiograph).values)
    expected = F.adaptive_avg_pool2d(display[None, None], 224)[0, 0]
    plane = plane_of(preprocess_image(radiograph).tensor)
    same = np.corrcoef(plane.ravel(), expected.ravel())[0, 1]
    assert same > 0.99
    for flipped in (expected.flip(0), expected.flip(1), expected.T):
        assert np.corrcoef(plane.ravel(), flipped.ravel())[0, 1] < same - 0.1


def test_fit_mode_keeps_aspect_and_pads_with_black() -> None:
    ds = read("examples_overlay.dcm")  # real MR, 300 rows x 484 columns
    result = preprocess_image(ds)
    geometry = result.geometry
    assert geometry.resize_mode is ResizeMode.FIT
    assert geometry.crop_box == (0, 0, 484, 300)
    assert geometry.resized_shape == (round(300 * 224 / 484), 224)
    top, left, bottom, right = geometry.pad
    assert (
        (left, right) == (0, 0)
        and abs(top - bottom) <= 1
        and top + bottom == 224 - geometry.resized_shape[0]
    )
    plane = plane_of(result.tensor)
    assert torch.all(plane[:top] == 0) and torch.all(plane[224 - bottom :] == 0)
    assert float(plane[top:-bottom].std()) > 0.05


def test_fit_mode_respects_anisotropic_pixel_spacing() -> None:
    ds = with_headers(read("MR_small.dcm"), PixelSpacing=[0.5, 0.25])  # rows 32 mm, columns 16 mm
    geometry = preprocess_image(ds).geometry
    assert geometry.resized_shape == (224, 112)
    assert geometry.pixel_spacing_mm == (0.5, 0.25)


def test_spacing_mode_resamples_to_the_target_resolution_and_centre_crops() -> None:
    ds = read("MR2_UNCR.dcm")  # 1024² at 0.195313 mm
    geometry = preprocess_image(ds, config=PreprocessConfig(target_spacing_mm=0.390626)).geometry
    assert geometry.resize_mode is ResizeMode.SPACING and geometry.spacing_source == "PixelSpacing"
    assert geometry.crop_box == (288, 288, 736, 736)  # 448 source pixels = 224 at twice the spacing
    assert geometry.resized_shape == (224, 224) and geometry.pad == (0, 0, 0, 0)
    assert geometry.scale == pytest.approx((0.5, 0.5))


def test_spacing_mode_pads_a_small_field_of_view() -> None:
    ds = read("MR_small.dcm")  # 64² at 0.3125 mm = 20 mm
    geometry = preprocess_image(ds, config=PreprocessConfig(target_spacing_mm=0.625)).geometry
    assert geometry.crop_box == (0, 0, 64, 64) and geometry.resized_shape == (32, 32)
    assert geometry.pad == (96, 96, 96, 96)
    physical = [size * 0.625 for size in geometry.resized_shape]
    assert physical == pytest.approx([64 * 0.3125] * 2)


def test_same_anatomy_at_two_spacings_gives_the_same_tensor_in_spacing_mode() -> None:
    fine = read("MR2_UNCR.dcm")
    values = fine.pixel_array.astype(np.float64)
    coarse = with_headers(fine, Rows=512, Columns=512, PixelSpacing=[0.390626, 0.390626])
    set_pixels(coarse, np.rint(values.reshape(512, 2, 512, 2).mean(axis=(1, 3))).astype(np.uint16))
    config = PreprocessConfig(target_spacing_mm=0.78125)
    a, b = preprocess_image(fine, config=config), preprocess_image(coarse, config=config)
    assert a.geometry.resized_shape == b.geometry.resized_shape == (224, 224)
    assert float((plane_of(a.tensor) - plane_of(b.tensor)).abs().mean()) < 0.01
    fit = preprocess_image(coarse).geometry  # fit mode would show the whole 200 mm instead
    assert fit.crop_box == (0, 0, 512, 512)


def test_missing_spacing_falls_back_to_fit_or_is_rejected(radiograph: Dataset) -> None:
    assert pixel_spacing(radiograph) is None  # RG3 states no spacing
    fallback = preprocess_image(radiograph, config=PreprocessConfig(target_spacing_mm=0.2))
    assert (
        fallback.geometry.resize_mode is ResizeMode.FIT
        and fallback.geometry.spacing_source == "none"
    )
    with pytest.raises(UnsupportedImageError, match="no usable Pixel Spacing"):
        preprocess_image(
            radiograph, config=PreprocessConfig(target_spacing_mm=0.2, missing_spacing="reject")
        )


def test_pixel_spacing_sources() -> None:
    chest = read("RG1_UNCR.dcm")  # PixelSpacing 0\0: stated but unusable
    assert pixel_spacing(chest) is None
    detector = with_headers(chest, PixelSpacing=None, ImagerPixelSpacing=[0.15, 0.15])
    assert pixel_spacing(detector) == ((0.15, 0.15), "ImagerPixelSpacing")
    magnified = with_headers(detector, EstimatedRadiographicMagnificationFactor=1.2)
    (row, column), source = pixel_spacing(magnified)
    assert (row, column) == pytest.approx((0.125, 0.125)) and "magnification 1.2" in source
    frames = enhanced_mr(spacings=[(0.5 + 0.1 * i, 0.5) for i in range(10)])
    (row, column), source = pixel_spacing(frames, frame_index=4)
    assert (row, column, source) == (pytest.approx(0.9), 0.5, "PixelSpacing")
    # PS3.3 10.7.1.1: a Pixel Spacing that repeats Imager Pixel Spacing, with no calibration
    # type, is not corrected for magnification: the corrected detector spacing wins
    copied = with_headers(magnified, PixelSpacing=[0.15, 0.15])
    (row, column), source = pixel_spacing(copied)
    assert (row, column) == pytest.approx((0.125, 0.125)) and "magnification 1.2" in source
    calibrated = with_headers(copied, PixelSpacingCalibrationType="GEOMETRY")
    assert pixel_spacing(calibrated) == ((0.15, 0.15), "PixelSpacing")
    measured = with_headers(magnified, PixelSpacing=[0.13, 0.13])  # differs: a calibration
    assert pixel_spacing(measured) == ((0.13, 0.13), "PixelSpacing")


def test_left_knee_flipped_equals_right_knee_mirrored(radiograph: Dataset) -> None:
    right = preprocess_image(radiograph)
    left = preprocess_image(with_headers(radiograph, Laterality="L"))
    assert right.laterality is Laterality.RIGHT and right.mirror is None
    assert left.laterality is Laterality.LEFT and left.mirror is MirrorAxis.COLUMNS
    assert left.geometry.flip_columns and not left.geometry.flip_rows
    assert torch.equal(left.tensor, right.tensor.flip(-1))
    as_left = preprocess_image(radiograph, config=PreprocessConfig(canonical_side="L"))
    assert torch.equal(as_left.tensor, right.tensor.flip(-1))


def test_unknown_and_bilateral_images_are_not_flipped(radiograph: Dataset) -> None:
    right = preprocess_image(radiograph)
    for value in ("U", None, "B"):
        other = preprocess_image(with_headers(radiograph, Laterality=value))
        assert other.mirror is None and torch.equal(other.tensor, right.tensor)
    assert preprocess_image(with_headers(radiograph, Laterality="U")).laterality is None
    assert preprocess_image(with_headers(radiograph, Laterality="B")).laterality is Laterality.BOTH


def test_laterality_sources_and_conflicts(radiograph: Dataset) -> None:
    assert determine_laterality(radiograph).source == "Laterality"
    image_level = with_headers(radiograph, ImageLaterality="R")
    assert determine_laterality(image_level).source == "ImageLaterality"
    with pytest.raises(
        UnsupportedImageError, match="conflicting laterality.*ImageLaterality L, Laterality R"
    ):
        determine_laterality(with_headers(radiograph, ImageLaterality="L"))
    with pytest.raises(UnsupportedImageError, match="'X' is not one of L, R, B, U"):
        determine_laterality(with_headers(radiograph, Laterality="X"))
    frames = enhanced_mr(frame_laterality="L")
    evidence = determine_laterality(frames, frame_index=6)
    assert (evidence.laterality, evidence.source) == (Laterality.LEFT, "FrameLaterality")


def test_patient_orientation_chooses_the_mirror_axis_of_a_radiograph(radiograph: Dataset) -> None:
    assert list(radiograph.PatientOrientation) == ["R", "F"]
    assert mirror_axis(radiograph) is MirrorAxis.COLUMNS
    assert mirror_axis(with_headers(radiograph, PatientOrientation=["F", "L"])) is MirrorAxis.ROWS
    assert (
        mirror_axis(with_headers(radiograph, PatientOrientation=["A", "F"])) is MirrorAxis.COLUMNS
    )  # lateral
    rotated = preprocess_image(
        with_headers(radiograph, Laterality="L", PatientOrientation=["F", "L"])
    )
    assert rotated.geometry.flip_rows and not rotated.geometry.flip_columns


@pytest.mark.parametrize(
    ("orientation", "axis"),
    [
        (AXIAL, MirrorAxis.COLUMNS),
        (CORONAL, MirrorAxis.COLUMNS),
        (SAGITTAL, MirrorAxis.SLICES),
        ((0.0, 0.0, -1.0, 1.0, 0.0, 0.0), MirrorAxis.ROWS),
    ],
)
def test_mr_mirror_axis_follows_image_orientation(
    orientation: tuple[float, ...], axis: MirrorAxis
) -> None:
    ds = with_headers(
        read("MR_small.dcm"), ImageOrientationPatient=list(orientation), Laterality="L"
    )
    assert mirror_axis(ds) is axis
    result = preprocess_image(ds)
    assert result.mirror is axis
    assert result.geometry.flip_columns == (axis is MirrorAxis.COLUMNS)
    assert result.geometry.flip_rows == (axis is MirrorAxis.ROWS)


def test_mr_laterality_from_position_is_opt_in() -> None:
    ds = read("MR_small.dcm")  # axial slice centred at x ≈ -74 mm: the patient's right
    assert preprocess_image(ds).laterality is None
    inferred = preprocess_image(ds, config=PreprocessConfig(mr_laterality_offset_mm=40))
    assert inferred.laterality is Laterality.RIGHT and inferred.laterality_source.startswith(
        "field-of-view centre x=-74"
    )
    centred = preprocess_image(ds, config=PreprocessConfig(mr_laterality_offset_mm=80))
    assert centred.laterality is None


def _with_marker(ds: Dataset, rows: slice, columns: slice) -> Dataset:
    marked = with_headers(ds)
    pixels = ds.pixel_array.copy()
    pixels[rows, columns] = 0  # MONOCHROME1: 0 displays white
    return set_pixels(marked, pixels)


@pytest.mark.parametrize(("side", "hot_patch"), [("R", (2, 10)), ("L", (2, 3))])
def test_a_map_on_the_marker_projects_back_onto_the_marker(
    radiograph: Dataset, side: str, hot_patch: tuple[int, int]
) -> None:
    # Source patch (2, 10) of the 14 x 14 grid spans rows [251.4, 377.1), columns [1257.1, 1382.9).
    source = with_headers(radiograph, Laterality=side)
    marked = _with_marker(source, slice(260, 370), slice(1265, 1375))
    result = preprocess_image(marked)
    change = (plane_of(result.tensor) - plane_of(preprocess_image(source).tensor)).abs()
    patch_means = F.avg_pool2d(change[None, None], 16)[0, 0]  # 14 x 14 patches of 16 px
    assert np.unravel_index(int(patch_means.argmax()), (14, 14)) == hot_patch  # mirrored for L
    hot = np.zeros((14, 14), dtype=np.float32)
    hot[hot_patch] = 1.0
    painted = result.geometry.source_pixel_map(hot)
    assert np.all(painted[260:370, 1265:1375] == 1.0)
    rows, columns = np.nonzero(painted == 1.0)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (251, 376, 1257, 1382)
    values, region = result.geometry.project_to_source(hot)
    assert region == (0.0, 0.0, 1760.0, 1760.0) and values.shape == (14, 14)
    assert np.unravel_index(int(values.argmax()), values.shape) == (2, 10)
    heatmap = result.heatmap(hot)
    assert (
        isinstance(heatmap, Heatmap) and heatmap.image == result.image and heatmap.region == region
    )


def test_projection_drops_padding_and_covers_the_crop_box() -> None:
    ds = with_headers(read("MR_small.dcm"), Laterality="L", ImageOrientationPatient=list(CORONAL))
    result = preprocess_image(ds, config=PreprocessConfig(target_spacing_mm=0.625))
    geometry = result.geometry  # 32 x 32 image in the middle of a 224 canvas, flipped
    patch_map = np.zeros((14, 14), dtype=np.float32)
    patch_map[6:8, 6:8] = 1.0  # exactly the 32-px centre patches
    values, region = geometry.project_to_source(patch_map)
    assert region == (0.0, 0.0, 64.0, 64.0) and values.shape == (2, 2) and np.all(values == 1.0)
    painted = geometry.source_pixel_map(patch_map, fill=-1.0)
    assert np.all(painted == 1.0)


def test_source_and_output_coordinates_round_trip() -> None:
    geometry = plan_geometry(
        (300, 484), output_size=224, spacing=((0.7, 0.7), "PixelSpacing"), target_spacing_mm=None
    )
    flipped = ImageGeometry(**{**geometry.__dict__, "flip_columns": True})
    for g in (geometry, flipped):
        for point in ((0.0, 0.0), (150.0, 242.0), (299.5, 483.0)):
            assert g.output_to_source(*g.source_to_output(*point)) == pytest.approx(point)
    assert geometry.source_to_output(0.0, 0.0) == pytest.approx((geometry.pad[0], 0.0))
    assert flipped.source_to_output(0.0, 0.0) == pytest.approx((geometry.pad[0], 224.0))


def test_enhanced_mr_frames_carry_their_frame_number_and_position() -> None:
    ds = enhanced_mr(positions_x=[10.0 * i for i in range(10)])
    result = preprocess_image(ds, frame_index=4)
    assert result.image.frame_number == 5 and result.image.sop_instance_uid == ds.SOPInstanceUID
    assert result.position_mm == (40.0, -60.0, 40.0) and result.orientation == SAGITTAL
    assert preprocess_image(read("MR_small.dcm")).image.frame_number is None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_size": 16}, ValueError, "input_size must lie in"),
        ({"input_size": 224.0}, TypeError, "input_size must be an int"),
        ({"std": (0.2, 0.0, 0.2)}, ValueError, "std must hold finite positive"),
        ({"mean": (0.5, 0.5)}, TypeError, "mean must be a 3-tuple"),
        ({"target_spacing_mm": 0.0}, ValueError, "target_spacing_mm must lie in \\[0.01, 10\\] mm"),
        ({"canonical_side": "B"}, ValueError, "canonical_side must be 'L' or 'R'"),
        ({"canonical_side": "X"}, ValueError, "'X' is not a valid Laterality"),
        ({"window_percentiles": (99.0, 1.0)}, ValueError, "window_percentiles must satisfy"),
        ({"interpolation": "nearest"}, ValueError, "'nearest' is not a valid Interpolation"),
        ({"mr_laterality_offset_mm": -5}, ValueError, "mr_laterality_offset_mm must lie in"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        PreprocessConfig(**kwargs)


def test_map_shape_is_checked(radiograph: Dataset) -> None:
    geometry = preprocess_image(radiograph).geometry
    with pytest.raises(ValueError, match="patch_map must be 2-D"):
        geometry.project_to_source(np.zeros((2, 14, 14)))
    with pytest.raises(TypeError, match="patch_map must be a numpy array"):
        geometry.project_to_source([[0.0]])  # type: ignore[arg-type]


@dataclass(frozen=True)
class ManifestFacts:
    """The input facts a bundle manifest carries (``manifest.BundleManifest`` has these)."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


def test_config_from_a_bundle_manifest() -> None:
    facts = ManifestFacts((256, 256), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    config = PreprocessConfig.from_manifest(facts, target_spacing_mm=0.3, canonical_side="L")
    assert (config.input_size, config.mean, config.std) == (256, (0.5,) * 3, (0.25,) * 3)
    assert (
        config.interpolation is Interpolation.BICUBIC and config.canonical_side is Laterality.LEFT
    )
    assert config.target_spacing_mm == 0.3
    with pytest.raises(ValueError, match="input_size must be square, got 224x256"):
        PreprocessConfig.from_manifest(ManifestFacts((224, 256), (0.5,) * 3, (0.25,) * 3))
    with pytest.raises(ValueError, match="'lanczos' is not a valid Interpolation"):
        PreprocessConfig.from_manifest(
            ManifestFacts((224, 224), (0.5,) * 3, (0.25,) * 3, "lanczos")
        )


def test_a_path_that_is_not_dicom_is_rejected(tmp_path: Path) -> None:
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not an image")
    with pytest.raises(UnsupportedImageError, match="not a readable DICOM file"):
        preprocess_image(not_dicom)
    with pytest.raises(TypeError, match="source must be a pydicom Dataset or a path"):
        preprocess_image(b"DICM")  # type: ignore[arg-type]
