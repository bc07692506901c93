"""Pixel decoding on real DICOM files: transfer syntaxes, LUTs, polarity, rejections."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.pixels import apply_modality_lut
from tests.test_preprocess_support import enhanced_mr, read, set_pixels, test_file, with_headers

from ortho_node.model.pixels import (
    UnsupportedImageError,
    Window,
    decode_display_frame,
    decode_frame,
    percentile_window,
    to_display,
)
from ortho_node.model.preprocess import preprocess_image

MR_SMALL_LOSSLESS = [
    "MR_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]
EMRI_LOSSLESS = [
    "emri_small.dcm",
    "emri_small_big_endian.dcm",
    "emri_small_RLE.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
]


def test_lossless_transfer_syntaxes_give_identical_tensors() -> None:
    reference = preprocess_image(test_file(MR_SMALL_LOSSLESS[0]))
    for name in MR_SMALL_LOSSLESS[1:]:
        other = preprocess_image(test_file(name))
        assert torch.equal(other.tensor, reference.tensor), name
        assert other.voi == reference.voi == "window 600/1600"


def test_enhanced_mr_frames_identical_across_transfer_syntaxes() -> None:
    reference = [
        decode_display_frame(read(EMRI_LOSSLESS[0]), frame_index=i).values for i in range(10)
    ]
    for name in EMRI_LOSSLESS[1:]:
        ds = read(name)
        for index in range(10):
            assert np.array_equal(
                decode_display_frame(ds, frame_index=index).values, reference[index]
            ), (name, index)
    # The frames are different images, not one frame repeated.
    assert not np.array_equal(reference[0], reference[5])


@pytest.mark.parametrize("stem", ["MR2", "RG3"])
def test_jpeg2000_lossless_equals_uncompressed_and_lossy_is_close(stem: str) -> None:
    uncompressed = decode_display_frame(read(f"{stem}_UNCR.dcm")).values
    lossless = decode_display_frame(read(f"{stem}_J2KR.dcm")).values
    lossy = decode_display_frame(read(f"{stem}_J2KI.dcm")).values
    assert np.array_equal(lossless, uncompressed)
    assert not np.array_equal(lossy, uncompressed)
    assert float(np.abs(lossy - uncompressed).mean()) < 0.01


def _dcmtk(tool: str, option: str, source: Path, target: Path) -> Path:
    subprocess.run([tool, option, str(source), str(target)], check=True, capture_output=True)
    return target


def test_jpeg_lossless_and_jpeg_ls_written_by_dcmtk_decode_to_the_same_tensor(
    tmp_path: Path,
) -> None:
    source = test_file("MR_small.dcm")
    reference = preprocess_image(source).tensor
    written = [
        (_dcmtk("dcmcjpeg", "+e1", source, tmp_path / "sv1.dcm"), pydicom.uid.JPEGLosslessSV1),
        (_dcmtk("dcmcjpeg", "+el", source, tmp_path / "p14.dcm"), pydicom.uid.JPEGLossless),
        (_dcmtk("dcmcjpls", "+el", source, tmp_path / "jls.dcm"), pydicom.uid.JPEGLSLossless),
        (_dcmtk("dcmcrle", "+e", source, tmp_path / "rle.dcm"), pydicom.uid.RLELossless),
    ]
    for path, syntax in written:
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
        assert torch.equal(preprocess_image(path).tensor, reference), path.name


def test_jpeg_baseline_grayscale_decodes_close_to_the_original(tmp_path: Path) -> None:
    # image_dfl.dcm is deflated 8-bit grayscale: a real source for an 8-bit baseline JPEG.
    source = test_file("image_dfl.dcm")
    original = read("image_dfl.dcm")
    assert original.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    baseline = _dcmtk("dcmcjpeg", "+eb", source, tmp_path / "baseline.dcm")
    assert pydicom.dcmread(baseline).file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    deflated = decode_frame(original).values
    decoded = decode_frame(pydicom.dcmread(baseline)).values
    assert deflated.shape == decoded.shape == (512, 512)
    assert float(np.abs(decoded - deflated).mean()) < 3.0  # of 255 grey levels


def test_jpeg_extended_12_bit_decodes() -> None:
    ds = read("JPGExtended.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGExtended12Bit
    frame = decode_display_frame(ds)
    assert frame.values.shape == (1024, 256) and frame.values.dtype == np.float32
    assert 0.0 == frame.values.min() and frame.values.max() == 1.0
    assert frame.voi == "percentile 0.5-99.5"


def test_undecodable_jpeg_is_rejected_with_the_transfer_syntax_named() -> None:
    with pytest.raises(UnsupportedImageError, match="JPEG Extended.*could not be decoded"):
        decode_frame(read("JPEG-lossy.dcm"))


def test_truncated_pixel_data_is_rejected() -> None:
    with pytest.raises(UnsupportedImageError, match="could not be decoded"):
        decode_frame(read("MR_truncated.dcm"))


def test_monochrome1_radiograph_is_inverted_so_dense_tissue_is_bright() -> None:
    ds = read("RG1_UNCR.dcm")  # PA chest CR, MONOCHROME1
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    display = decode_display_frame(ds).values
    stored = ds.pixel_array.astype(np.float64)
    assert np.corrcoef(display[::8, ::8].ravel(), stored[::8, ::8].ravel())[0, 1] < -0.95
    rows, columns = display.shape
    mediastinum = display[rows // 3 : rows // 2, columns // 2 - 60 : columns // 2 + 60].mean()
    right_lung = display[rows // 3 : rows // 2, columns // 5 : columns // 5 + 120].mean()
    assert mediastinum > right_lung + 0.1  # soft tissue + spine brighter than air-filled lung


def test_monochrome1_copy_of_an_image_displays_identically() -> None:
    original = with_headers(read("MR_small.dcm"), WindowCenter=None, WindowWidth=None)
    inverted = copy.deepcopy(original)
    set_pixels(inverted, 4095 - original.pixel_array.astype(np.int32))
    inverted.PhotometricInterpretation = "MONOCHROME1"
    assert np.allclose(
        decode_display_frame(inverted).values, decode_display_frame(original).values, atol=1e-6
    )


def test_header_window_then_percentile_window() -> None:
    ds = read("MR_small.dcm")
    windowed = decode_display_frame(ds)
    values = decode_frame(ds).values
    low, high = 600 - 800, 600 + 800  # Window 600/1600
    inside = (values > low + 2) & (values < high - 2)
    expected = (values[inside] - (600 - 0.5 - 1599 / 2)) / 1599  # PS3.3 C.11.2.1.2.1 LINEAR
    assert np.allclose(windowed.values[inside], expected, atol=1e-5)
    plain = decode_display_frame(with_headers(ds, WindowCenter=None, WindowWidth=None))
    assert plain.voi == "percentile 0.5-99.5"
    assert 0.002 <= float(np.mean(plain.values <= 0.0)) <= 0.02
    assert 0.002 <= float(np.mean(plain.values >= 1.0)) <= 0.02


def test_rescale_and_modality_lut_are_applied() -> None:
    ct = read("CT_small.dcm")
    assert np.array_equal(decode_frame(ct).values, ct.pixel_array.astype(np.float64) * 1.0 - 1024.0)
    mlut = read("mlut_18.dcm")
    assert "ModalityLUTSequence" in mlut
    assert np.array_equal(
        decode_frame(mlut).values, apply_modality_lut(mlut.pixel_array, mlut).astype(np.float64)
    )


def test_modality_values_are_float32_only_where_every_stored_value_is_exact() -> None:
    # 16-bit pixels: float32, the rescale within float32 rounding of the float64 values.
    ct = with_headers(read("CT_small.dcm"), RescaleSlope="0.37", RescaleIntercept="-1024.5")
    values = decode_frame(ct).values
    assert values.dtype == np.float32
    assert np.allclose(values, ct.pixel_array.astype(np.float64) * 0.37 - 1024.5, rtol=1e-7, atol=1e-4)
    # 32-bit pixels above 2**24 are not all exact in float32: they stay float64, exact.
    wide = read("CT_small.dcm")
    wide.BitsAllocated, wide.BitsStored, wide.HighBit, wide.PixelRepresentation = 32, 32, 31, 0
    big = (np.arange(wide.Rows * wide.Columns, dtype=np.uint32) * 7 + (1 << 24) + 1).reshape(wide.Rows, wide.Columns)
    set_pixels(wide, big)
    values = decode_frame(with_headers(wide, RescaleSlope="1", RescaleIntercept="0")).values
    assert values.dtype == np.float64
    assert np.array_equal(values, big.astype(np.float64))


def test_rescale_that_overflows_is_rejected() -> None:
    # A finite slope can still carry integer pixels past the float range.
    ct = with_headers(read("CT_small.dcm"), RescaleSlope="1e308", RescaleIntercept="0")
    with pytest.raises(UnsupportedImageError, match="non-finite"):
        decode_frame(ct)


def test_voi_lut_sequence_is_used_and_spans_zero_to_one() -> None:
    frame = decode_display_frame(read("vlut_04.dcm"))
    assert frame.voi == "VOI LUT sequence"
    assert frame.values.min() >= 0.0 and frame.values.max() <= 1.0
    assert frame.values.std() > 0.1


def test_decoding_never_changes_the_callers_dataset() -> None:
    ds = read("CT_small.dcm")
    before = copy.deepcopy(ds)
    decode_display_frame(ds)
    assert ds == before


def test_deferred_pixel_data_is_read_on_demand() -> None:
    deferred = pydicom.dcmread(test_file("MR_small_RLE.dcm"), defer_size=256)
    assert torch.equal(
        preprocess_image(deferred).tensor, preprocess_image(test_file("MR_small.dcm")).tensor
    )


def test_enhanced_mr_frame_level_window_is_used_per_frame() -> None:
    windows = [(200.0 + 20 * i, 400.0) for i in range(10)]
    ds = enhanced_mr(windows=windows)
    raw = decode_frame(ds, frame_index=3)
    frame = to_display(raw, ds)
    assert frame.voi == "window 260/400"
    assert np.allclose(
        frame.values, np.clip((raw.values - (260 - 0.5 - 399 / 2)) / 399, 0, 1), atol=1e-5
    )
    other = decode_display_frame(ds, frame_index=7)
    assert other.voi == "window 340/400"


def test_supplied_window_replaces_the_percentile_fallback() -> None:
    ds = read("emri_small.dcm")
    raw = decode_frame(ds, frame_index=2)
    frame = to_display(raw, ds, window=Window(center=200.0, width=200.0))
    assert frame.voi == "supplied window 200/200"
    assert np.allclose(frame.values, np.clip((raw.values - 100.0) / 200.0, 0, 1))


def test_percentile_window_falls_back_to_min_max_then_rejects_constant() -> None:
    mostly_flat = np.zeros((100, 100))
    mostly_flat[0, :5] = 10.0  # 0.05 % of pixels: the 99.5th percentile is still 0
    window = percentile_window(mostly_flat)
    assert (window.center, window.width) == (5.0, 10.0)
    with pytest.raises(UnsupportedImageError, match="constant"):
        percentile_window(np.full((64, 64), 7.0))


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("MR_small.dcm", {"PixelData": None}, "no Pixel Data"),
        ("SC_rgb.dcm", {}, "colour or palette image.*'RGB'"),
        ("US1_UNCR.dcm", {}, "colour or palette image"),
        ("OBXXXX1A.dcm", {}, "'PALETTE COLOR'"),
        ("liver.dcm", {}, "1-bit pixel data"),
        ("JPEGLSNearLossless_16.dcm", {}, "Columns 10 is outside"),
        ("MR_small.dcm", {"Rows": 20000}, "Rows 20000 is outside"),
        ("MR_small.dcm", {"PresentationLUTShape": "INVERSE"}, "polarity is ambiguous"),
    ],
)
def test_unusable_images_are_rejected_with_a_reason(name: str, change: dict, message: str) -> None:
    ds = with_headers(read(name), **change)
    with pytest.raises(UnsupportedImageError, match=message):
        decode_frame(ds)


def test_float_pixel_data_is_rejected() -> None:
    ds = with_headers(read("MR_small.dcm"), PixelData=None)
    ds.FloatPixelData = np.zeros((64, 64), dtype=np.float32).tobytes()
    with pytest.raises(UnsupportedImageError, match="float pixel data"):
        decode_frame(ds)


def test_frame_index_is_checked() -> None:
    with pytest.raises(ValueError, match=r"frame_index must lie in \[0, 9\], got 10"):
        decode_frame(read("emri_small.dcm"), frame_index=10)
    with pytest.raises(TypeError, match="frame_index must be an int"):
        decode_frame(read("emri_small.dcm"), frame_index=1.0)  # type: ignore[arg-type]


# --- header windows: the vectorised LINEAR / LINEAR_EXACT path against pydicom ---------------------


def _windowed(values: np.ndarray, center: float, width: float, function: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(to_display's values, pydicom's apply_voi_lut on the same window scaled to 0..1)."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_voi_lut

    from ortho_node.model.pixels import RawFrame

    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = center, width
    if function is not None:
        ds.VOILUTFunction = function
    ours = to_display(RawFrame(values=values, frame_index=0, header_voi="window"), ds).values
    reference = copy.deepcopy(ds)
    reference.BitsStored, reference.PixelRepresentation = 16, 0
    theirs = np.clip(apply_voi_lut(values.copy(), reference, index=0, prefer_lut=False) / 65535.0, 0.0, 1.0)
    return ours, theirs.astype(np.float32)


@pytest.mark.parametrize("function", [None, "LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center,width", [(40.0, 400.0), (1024.0, 1.5), (-600.5, 1500.0), (2047.5, 4096.0), (10.0, 1.0)])
def test_header_window_matches_pydicom(function, center, width):
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.uniform(-2000, 4000, 20_000), [center, center - 0.5, center + 0.5, center - width / 2]])
    ours, theirs = _windowed(values.reshape(1, -1), center, width, function)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("function,width,message", [("LINEAR", 0.5, "LINEAR window width 0.5 < 1"),
                                                    ("LINEAR_EXACT", 0.0, "LINEAR_EXACT window width 0 <= 0"),
                                                    ("SIGMOID", 0.0, "Window Width must be greater than 0"),
                                                    ("CUBIC", 10.0, "Unsupported")])
def test_unusable_header_window_is_rejected_with_a_reason(function, width, message):
    with pytest.raises(UnsupportedImageError, match=f"unusable window in the header: .*{message}"):
        _windowed(np.zeros((2, 2)), 5.0, width, function)
