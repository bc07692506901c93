"""Behaviour of the synthetic knee phantoms: determinism, pathology, DICOM validity, syntaxes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from ortho_node.phantoms import (
    LOSSLESS_TRANSFER_SYNTAXES,
    SUPPORTED_TRANSFER_SYNTAXES,
    MRPhantomSpec,
    XrayPhantomSpec,
    build_knee_study,
    encode_transfer_syntax,
    render_knee_mr,
    render_knee_radiograph,
    write_knee_study,
)

SMALL_XRAY = {"rows": 256, "columns": 256, "pixel_spacing_mm": 0.6}
SMALL_MR = {"slices": 12, "rows": 96, "columns": 96, "pixel_spacing_mm": 1.33}


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _medial_joint_space_px(pixels: np.ndarray, box) -> float:
    """Median height of the dark gap between femur and tibia in the medial compartment (AP, R)."""
    width = box.column1 - box.column0
    columns = range(box.column0 + int(0.66 * width), box.column0 + int(0.80 * width))
    region = pixels[box.row0:box.row1].astype(np.float64)
    heights = []
    for c in columns:
        profile = region[:, c - 2:c + 3].mean(axis=1)
        profile = np.convolve(profile, np.ones(3) / 3, mode="same")
        inner = profile[3:-3]
        lowest = int(np.argmin(inner)) + 3
        bone = min(profile[:lowest].max(), profile[lowest:].max())
        dark = profile < (profile[lowest] + bone) / 2
        top = lowest
        while top > 0 and dark[top - 1]:
            top -= 1
        bottom = lowest
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


def test_different_seeds_differ() -> None:
    spec = XrayPhantomSpec(kl_grade=2, side="R", **SMALL_XRAY)
    a, b = render_knee_radiograph(spec, seed=1), render_knee_radiograph(spec, seed=2)
    assert np.mean(a.pixels != b.pixels) > 0.5
    mr_spec = MRPhantomSpec(**SMALL_MR)
    assert not np.array_equal(render_knee_mr(mr_spec, seed=1).pixels, render_knee_mr(mr_spec, seed=2).pixels)
    study_a = build_knee_study(seed=1, xrays=[spec])
    study_b = build_knee_study(seed=2, xrays=[spec])
    assert study_a.study_instance_uid != study_b.study_instance_uid
    assert study_a.datasets[0].SOPInstanceUID != study_b.datasets[0].SOPInstanceUID


def test_written_study_is_byte_identical_for_same_seed(tmp_path: Path) -> None:
    kwargs = {"seed": 3, "xrays": [XrayPhantomSpec(kl_grade=1, side="L", **SMALL_XRAY)],
              "mr_series": [MRPhantomSpec(meniscus_tear=True, **SMALL_MR)],
              "transfer_syntaxes": [RLELossless, JPEG2000Lossless, ExplicitVRLittleEndian]}
    first = write_knee_study(tmp_path / "a", **kwargs)
    second = write_knee_study(tmp_path / "b", **kwargs)
    assert [f.sop_instance_uid for f in first.files] == [f.sop_instance_uid for f in second.files]
    for a, b in zip(first.files, second.files, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()


# -- pathology and anatomy -------------------------------------------------------------------

def test_joint_space_narrows_with_kl_grade() -> None:
    widths = []
    for grade in range(5):
        image = render_knee_radiograph(XrayPhantomSpec(kl_grade=grade, side="R"), seed=21)
        widths.append(_medial_joint_space_px(image.pixels, image.joint_box))
    assert all(a > b for a, b in zip(widths, widths[1:])), widths
    # Grade 4 is near bone-on-bone medially: well under half the healthy width.
    assert widths[4] < 0.5 * widths[0], widths


def test_monochrome1_stores_inverted_values() -> None:
    spec2 = XrayPhantomSpec(kl_grade=2, side="R", photometric="MONOCHROME2", **SMALL_XRAY)
    spec1 = XrayPhantomSpec(kl_grade=2, side="R", photometric="MONOCHROME1", **SMALL_XRAY)
    mono2 = build_knee_study(seed=4, xrays=[spec2]).datasets[0]
    mono1 = build_knee_study(seed=4, xrays=[spec1]).datasets[0]
    assert mono1.PhotometricInterpretation == "MONOCHROME1"
    assert mono1.PresentationLUTShape == "INVERSE" and mono2.PresentationLUTShape == "IDENTITY"
    np.testing.assert_array_equal(mono1.pixel_array.astype(np.int32), 4095 - mono2.pixel_array.astype(np.int32))


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
    assert torn.pixels[list(torn.acl_slices)][:, inside].mean() > intact.pixels[list(intact.acl_slices)][:, inside].mean()


# -- DICOM validity --------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not installed")
def test_dciodvfy_reports_no_errors(tmp_path: Path) -> None:
    xrays = [
        XrayPhantomSpec(kl_grade=0, side="R", photometric="MONOCHROME2", **SMALL_XRAY),
        XrayPhantomSpec(kl_grade=4, side="L", photometric="MONOCHROME1", view="LAT", **SMALL_XRAY),
        XrayPhantomSpec(kl_grade=0, side="R", modality="CR", photometric="MONOCHROME1", **SMALL_XRAY),
        XrayPhantomSpec(kl_grade=4, side="L", modality="CR", photometric="MONOCHROME2", view="LAT", **SMALL_XRAY),
    ]
    study = write_knee_study(tmp_path, seed=9, xrays=xrays,
                             mr_series=[MRPhantomSpec(acl_tear=True, contrast="T2", **SMALL_MR)])
    checked = [f for f in study.files if f.modality != "MR"] + [f for f in study.files if f.modality == "MR"][:2]
    assert {f.modality for f in checked} == {"DX", "CR", "MR"}
    for phantom_file in checked:
        assert _dciodvfy_errors(phantom_file.path) == [], phantom_file


@pytest.mark.parametrize("transfer_syntax", SUPPORTED_TRANSFER_SYNTAXES, ids=lambda uid: UID(uid).name)
def test_each_transfer_syntax_round_trips(tmp_path: Path, transfer_syntax: str) -> None:
    built = build_knee_study(seed=6, xrays=[XrayPhantomSpec(kl_grade=2, side="L", **SMALL_XRAY)],
                             mr_series=[MRPhantomSpec(**{**SMALL_MR, "slices": 8})])
    for ds in (built.datasets[0], built.datasets[3]):
        reference = ds.pixel_array.copy()
        encode_transfer_syntax(ds, transfer_syntax)
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        assert back.file_meta.TransferSyntaxUID == transfer_syntax
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        decoded = back.pixel_array
        if transfer_syntax in LOSSLESS_TRANSFER_SYNTAXES:
            np.testing.assert_array_equal(decoded, reference)
        else:
            assert back.LossyImageCompression == "01"
            error = np.abs(decoded.astype(np.float64) - reference).mean()
            assert 0 < error < 0.02 * float(reference.max())


def test_study_files_share_patient_study_and_series(tmp_path: Path) -> None:
    study = write_knee_study(
        tmp_path, seed=12,
        xrays=[XrayPhantomSpec(kl_grade=3, side="L", **SMALL_XRAY),
               XrayPhantomSpec(kl_grade=3, side="L", view="LAT", **SMALL_XRAY)],
        mr_series=[MRPhantomSpec(acl_tear=True, side="R", **SMALL_MR)],
        transfer_syntaxes=[JPEG2000, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian],
        patient_index=42,
    )
    headers = [pydicom.dcmread(f.path, stop_before_pixels=True) for f in study.files]
    assert len(headers) == 2 + SMALL_MR["slices"]
    assert {h.StudyInstanceUID for h in headers} == {study.study_instance_uid}
    assert {h.PatientID for h in headers} == {study.patient_id} == {"PHANTOM-00000042"}
    assert {str(h.PatientName) for h in headers} == {"PHANTOM^KNEE^0042"}
    assert len({h.SOPInstanceUID for h in headers}) == len(headers)
    mr = [h for h in headers if h.Modality == "MR"]
    assert len({h.SeriesInstanceUID for h in mr}) == 1 and len({h.FrameOfReferenceUID for h in mr}) == 1
    assert [int(h.InstanceNumber) for h in mr] == list(range(1, SMALL_MR["slices"] + 1))
    assert len({h.SeriesInstanceUID for h in headers}) == 3
    assert {h.file_meta.TransferSyntaxUID for h in headers} == {
        JPEG2000, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian}
    assert dict(study.labels["kl_grade"]) == {"L": 3}
    assert dict(study.labels["acl_tear"]) == {"R": True}
    assert {h.BodyPartExamined for h in headers} == {"KNEE"}
    for f, h in zip(study.files, headers, strict=True):
        assert (f.sop_instance_uid, f.series_instance_uid, f.modality) == (
            h.SOPInstanceUID, h.SeriesInstanceUID, h.Modality)
