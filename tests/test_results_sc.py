"""Secondary Capture with burned-in findings: DICOM attributes, dciodvfy, and the pixels themselves."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from ortho_node.model.findings import Laterality
from ortho_node.results import FindingsCapture, ResultUIDs, build_result_objects
from ortho_node.results.render import HEAT_ALPHA, Overlay, TextLine, render_findings, window_source
from tests.results_support import (
    acl_finding,
    dciodvfy,
    failed,
    heat_values,
    kl_finding,
    make_dx,
    make_mr_series,
    model,
    ref,
    replace,
    study,
    unexpected_warnings,
)


def _errors(ds, path: Path, *, also_allowed: tuple[str, ...] = ()) -> str:
    errors, out = dciodvfy(ds, path)
    assert not errors, out
    assert not [w for w in unexpected_warnings(out) if not any(a in w for a in also_allowed)], out
    return out


@pytest.fixture(scope="module")
def xray():
    su = generate_uid()
    dx = make_dx(su, laterality="L")
    f = study(su, findings=(kl_finding(dx, region=(40.0, 60.0, 160.0, 180.0)),), evaluated_images=(ref(dx),))
    results = build_result_objects(f, sources=[dx])
    (sc,) = results.secondary_captures
    return dx, f, results, sc


def test_sc_is_rgb_8bit_burned_in_same_study_own_series(xray, tmp_path):
    dx, f, results, sc = xray
    _errors(sc, tmp_path / "sc.dcm")
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.BitsAllocated, sc.BitsStored) == (3, "RGB", 8, 8)
    assert sc.pixel_array.dtype == np.uint8 and sc.pixel_array.ndim == 3
    assert sc.BurnedInAnnotation == "YES"
    assert sc.Laterality == "L"
    assert list(sc.PatientOrientation) == list(dx.PatientOrientation)
    assert sc.StudyInstanceUID == dx.StudyInstanceUID
    assert sc.SeriesInstanceUID not in (dx.SeriesInstanceUID, results.sr.SeriesInstanceUID)
    assert (sc.PatientID, sc.PatientName, sc.AccessionNumber) == (dx.PatientID, dx.PatientName, dx.AccessionNumber)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == dx.SOPInstanceUID
    assert "synthetic model" in sc.SeriesDescription
    assert sc.DeviceUID == model().device_uid


def _image_part(sc, source) -> tuple[np.ndarray, int]:
    scale = int(sc.Columns) // int(source.Columns)
    return sc.pixel_array[: int(source.Rows) * scale], scale


def test_heatmap_colours_inside_the_region_and_leaves_the_rest_grey(xray):
    dx, f, _, sc = xray
    pixels, scale = _image_part(sc, dx)
    c0, r0, c1, r1 = (int(v * scale) for v in f.findings[0].heatmap.region)
    coloured = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 12
    margin = 4 * scale  # ROI outline and the side tag live on the region's edge
    inside = coloured[r0 + margin : r1 - margin, c0 + margin : c1 - margin]
    assert inside.mean() > 0.3, f"only {inside.mean():.0%} of the region is coloured"
    outside = np.ones_like(coloured)
    outside[max(0, r0 - margin) : r1 + margin, max(0, c0 - margin) : c1 + margin] = False
    assert not coloured[outside].any(), "colour outside the ROI"
    # outside the ROI the SC shows the windowed source, pixel for pixel
    grey = np.kron(window_source(dx), np.ones((scale, scale), dtype=np.uint8))
    assert np.array_equal(pixels[..., 0][outside], grey[outside])


def test_render_changes_only_the_region():
    grey = np.full((100, 600), 80, dtype=np.uint8)
    region = (100.0, 20.0, 300.0, 80.0)
    plain = render_findings(grey, overlays=[], lines=[TextLine("x")]).pixels
    heat = render_findings(grey, overlays=[Overlay(region, heat_values(), (255, 0, 0))], lines=[TextLine("x")]).pixels
    changed = np.any(plain != heat, axis=2)
    assert changed[25:75, 105:295].mean() > 0.9
    assert not changed[:, :95].any() and not changed[:, 305:].any()
    assert not changed[:15, :].any() and not changed[85:100, :].any()
    peak = heat[50, 200].astype(float)  # centre of the map: strongest colour
    assert np.abs(peak - 80).max() > HEAT_ALPHA * 100


def test_findings_panel_below_the_image_carries_text():
    grey = np.zeros((50, 600), dtype=np.uint8)
    one = render_findings(grey, overlays=[], lines=[TextLine("KL grade (left knee): KL 3 (p = 0.70)")])
    three = render_findings(grey, overlays=[], lines=[TextLine("a"), TextLine("b"), TextLine("c")])
    assert one.pixels.shape[0] > 50 and three.pixels.shape[0] > one.pixels.shape[0]
    panel = one.pixels[50:]
    assert (panel > 200).any(), "no text drawn in the panel"
    assert one.scale == 1 and one.image_rows == 50


def test_monochrome1_is_inverted_for_display(tmp_path):
    su = generate_uid()
    mono2 = make_dx(su, laterality="L")
    mono1 = make_dx(su, laterality="L", photometric="MONOCHROME1")
    a, b = window_source(mono2), window_source(mono1)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2  # same anatomy, same brightness
    f = study(su, findings=(kl_finding(mono1),))
    (sc,) = build_result_objects(f, sources=[mono2, mono1]).secondary_captures
    _errors(sc, tmp_path / "sc.dcm")


def test_caller_display_array_is_used_and_checked(tmp_path):
    su = generate_uid()
    dx = make_dx(su, rows=240, cols=200)
    f = study(su, findings=(kl_finding(dx, region=(40.0, 60.0, 160.0, 180.0)),))
    display = np.tile(np.linspace(0, 255, 200).astype(np.uint8), (240, 1))
    (sc,) = build_result_objects(f, sources=[dx], display_arrays={dx.SOPInstanceUID: display}).secondary_captures
    pixels, scale = _image_part(sc, dx)
    assert np.array_equal(pixels[: 40 * scale, :, 1], np.kron(display[:40], np.ones((scale, scale), dtype=np.uint8)))
    _errors(sc, tmp_path / "sc.dcm")
    with pytest.raises(ValueError, match=r"must have shape \(240, 200\)"):
        build_result_objects(f, sources=[dx], display_arrays={dx.SOPInstanceUID: display[:10]})
    with pytest.raises(TypeError, match="display_arrays must map str SOP Instance UIDs"):
        build_result_objects(f, sources=[dx], display_arrays={dx.SOPInstanceUID: display.tolist()})


def test_source_without_pixels_needs_a_display_array():
    su = generate_uid()
    dx = make_dx(su, drop=("PixelData",))
    f = study(su, findings=(kl_finding(dx),))
    with pytest.raises(ValueError, match="source has no pixel data"):
        build_result_objects(f, sources=[dx])
    display = np.zeros((int(dx.Rows), int(dx.Columns)), dtype=np.float32)
    assert build_result_objects(f, sources=[dx], display_arrays={dx.SOPInstanceUID: display}).secondary_captures


def test_mri_key_slice_orientation_from_image_orientation(tmp_path):
    su = generate_uid()
    series = make_mr_series(su, n_slices=3)
    f = study(su, findings=(acl_finding(series[1], series),))
    results = build_result_objects(f, sources=series)
    (sc,) = results.secondary_captures
    assert list(sc.PatientOrientation) == ["P", "F"]  # rows run A->P (+y), columns H->F (-z)
    assert sc.Laterality == "R"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == series[1].SOPInstanceUID
    _errors(sc, tmp_path / "sc.dcm")


def test_pydicom_mr_small_test_file(tmp_path):
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    before = copy.deepcopy(mr)
    f = study(mr.StudyInstanceUID, findings=(acl_finding(mr, [mr], region=(8.0, 8.0, 56.0, 40.0)),))
    results = build_result_objects(f, sources=[mr], include_key_objects=True)
    for i, obj in enumerate(results):
        # the test file's own "----" reading physician is copied into the SR (study information)
        _errors(obj.dataset, tmp_path / f"{i}.dcm", also_allowed=("NameOfPhysiciansReadingStudy",))
    (sc,) = results.secondary_captures
    assert sc.Columns == 512 and sc.Rows > 512  # 64 px enlarged 8x, panel below
    assert list(sc.PatientOrientation) == ["L", "P"]
    assert mr == before


def test_unknown_orientation_and_side_are_left_empty(tmp_path):
    su = generate_uid()
    dx = make_dx(su, drop=("PatientOrientation", "ImageLaterality"))
    f = study(su, findings=(replace(kl_finding(dx), laterality=None),))
    (sc,) = build_result_objects(f, sources=[dx]).secondary_captures
    assert sc.PatientOrientation == "" and sc.Laterality == ""
    errors, out = dciodvfy(sc, tmp_path / "sc.dcm")
    assert not errors, out


def test_bilateral_image_gets_image_laterality_both(tmp_path):
    su = generate_uid()
    dx = make_dx(su, laterality="B", cols=240)
    left = kl_finding(dx, laterality=Laterality.LEFT, region=(130.0, 60.0, 230.0, 180.0))
    right = kl_finding(dx, grade=1, laterality=Laterality.RIGHT, region=(10.0, 60.0, 110.0, 180.0))
    (sc,) = build_result_objects(study(su, findings=(left, right)), sources=[dx]).secondary_captures
    assert sc.ImageLaterality == "B" and "Laterality" not in sc
    pixels, scale = _image_part(sc, dx)
    coloured = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 12
    assert coloured[90 * scale : 150 * scale, 30 * scale : 90 * scale].mean() > 0.3  # right knee region
    assert coloured[90 * scale : 150 * scale, 150 * scale : 210 * scale].mean() > 0.3  # left knee region
    _errors(sc, tmp_path / "sc.dcm")


def test_capture_builder_validates_its_key_image():
    su = generate_uid()
    dx, other = make_dx(su), make_dx(su, instance_number=2)
    f = study(su, findings=(kl_finding(dx),))
    uids = ResultUIDs.for_findings(f)
    with pytest.raises(ValueError, match="is not the key image of any finding"):
        FindingsCapture(f, key_image=ref(other), sources=[dx, other], uids=uids, series_number=2, instance_number=1)
    with pytest.raises(TypeError, match="key_image must be an ImageRef"):
        FindingsCapture(f, key_image=dx, sources=[dx], uids=uids, series_number=2, instance_number=1)
    with pytest.raises(ValueError, match="instance_number must be >= 1"):
        FindingsCapture(f, key_image=ref(dx), sources=[dx], uids=uids, series_number=2, instance_number=0)


def test_phantom_study_with_compressed_sources_end_to_end(tmp_path):
    """CR (MONOCHROME1) + sagittal MR from the phantom generator, stored in every lossless syntax."""
    from ortho_node.phantoms import LOSSLESS_TRANSFER_SYNTAXES, MRPhantomSpec, XrayPhantomSpec, write_knee_study

    written = write_knee_study(
        tmp_path / "study",
        seed=11,
        xrays=[XrayPhantomSpec(kl_grade=3, side="L", rows=256, columns=256, modality="CR", photometric="MONOCHROME1")],
        mr_series=[MRPhantomSpec(acl_tear=True, side="R", slices=12)],
        transfer_syntaxes=list(LOSSLESS_TRANSFER_SYNTAXES),
    )
    sources = [pydicom.dcmread(f.path) for f in written.files]
    (cr,) = [d for d in sources if d.Modality == "CR"]
    mr = sorted((d for d in sources if d.Modality == "MR"), key=lambda d: int(d.InstanceNumber))
    key = next(d for d in mr if d.file_meta.TransferSyntaxUID.is_compressed)
    f = study(
        written.study_instance_uid,
        findings=(kl_finding(cr, region=(40.0, 40.0, 216.0, 216.0)), acl_finding(key, mr, region=(60.0, 60.0, 200.0, 180.0))),
        not_evaluated=(replace(failed(), laterality=Laterality.RIGHT),),
        evaluated_images=tuple(ref(d) for d in [cr, *mr]),
    )
    results = build_result_objects(f, sources=sources, include_key_objects=True)
    assert [o.kind.value for o in results] == ["sr", "sc", "sc", "ko"]
    for i, obj in enumerate(results):
        _errors(obj.dataset, tmp_path / f"{i}.dcm")
    cr_sc, mr_sc = results.secondary_captures
    # two knees in one SC series: each capture states its side, the series attribute none
    assert (cr_sc.ImageLaterality, mr_sc.ImageLaterality) == ("L", "R")
    assert "Laterality" not in cr_sc and "Laterality" not in mr_sc
    assert mr_sc.SourceImageSequence[0].ReferencedSOPInstanceUID == key.SOPInstanceUID
    # the MONOCHROME1 radiograph is windowed (its VOI window) and inverted: high raw values dark
    raw = cr.pixel_array.astype(float)
    centre, width = float(cr.WindowCenter), float(cr.WindowWidth)
    expected = 255 - np.round(np.clip((raw - (centre - 0.5)) / (width - 1) + 0.5, 0, 1) * 255)
    assert np.abs(window_source(cr).astype(float) - expected).max() <= 1
    pixels, scale = _image_part(cr_sc, cr)
    assert np.array_equal(pixels[: 30 * scale : scale, : 30 * scale : scale, 0], window_source(cr)[:30, :30])


def test_capture_of_an_enhanced_image_uses_its_per_frame_rescale_and_window():
    """pydicom-data's Enhanced CT keeps its rescale and window per frame (Pixel Value
    Transformation and Frame VOI LUT functional groups), none at the top level. The capture's
    greyscale comes from the model's own decoding: air dark, a few percent at most saturated
    (windowed in stored values instead, a third of the image was pure white)."""
    from tests.test_preprocess_support import read

    ct = read("eCT_Supplemental.dcm")
    assert "RescaleSlope" not in ct and "WindowCenter" not in ct
    for frame in (1, 2):
        grey = window_source(ct, frame_number=frame)
        assert grey.shape == (int(ct.Rows), int(ct.Columns))
        assert (grey == 255).mean() < 0.05 and (grey == 0).mean() > 0.3


def test_burned_in_probabilities_never_read_as_certainty():
    from ortho_node.results.sc import probability_text

    assert [probability_text(p) for p in (0.83, 0.994, 0.9999, 1.0, 0.004, 0.0, 0.005)] == [
        "p = 0.83", "p = 0.99", "p > 0.99", "p > 0.99", "p < 0.01", "p < 0.01", "p = 0.01",
    ]
