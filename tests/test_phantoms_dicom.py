"""The phantoms as DICOM: dciodvfy-clean headers, transfer syntaxes, study consistency, DCMTK
JPEG test files and the non-knee helper."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from ortho_node.phantoms import (
    LOSSLESS_TRANSFER_SYNTAXES,
    SUPPORTED_TRANSFER_SYNTAXES,
    MRPhantomSpec,
    XrayPhantomSpec,
    build_knee_study,
    build_non_knee_study,
    encode_transfer_syntax,
    write_knee_study,
    write_non_knee_study,
)
from ortho_node.phantoms.dcmtk_testsupport import (
    TRANSFER_SYNTAX_BY_PROCESS,
    DcmtkJpegProcess,
    encode_jpeg_with_dcmtk_for_tests,
    to_8bit_for_tests,
)
from tests.test_phantoms import SMALL_MR, SMALL_XRAY

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
needs_dcmtk = pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="DCMTK not installed")
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of ``dciodvfy -new`` that report an error (warnings are allowed)."""
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


# -- validity --------------------------------------------------------------------------------

@needs_dciodvfy
def test_dciodvfy_reports_no_errors_for_dx_cr_and_mr(tmp_path: Path) -> None:
    xrays = [
        XrayPhantomSpec(kl_grade=0, side="R", photometric="MONOCHROME2", **SMALL_XRAY),
        XrayPhantomSpec(kl_grade=4, side="L", photometric="MONOCHROME1", view="LAT", **SMALL_XRAY),
        XrayPhantomSpec(kl_grade=0, side="R", modality="CR", photometric="MONOCHROME1", **SMALL_XRAY),
        XrayPhantomSpec(kl_grade=4, side="L", modality="CR", photometric="MONOCHROME2", view="LAT", **SMALL_XRAY),
    ]
    study = write_knee_study(tmp_path, seed=9, xrays=xrays,
                             mr_series=[MRPhantomSpec(acl_tear=True, contrast="PD_FS", **SMALL_MR)])
    mr_files = [f for f in study.files if f.modality == "MR"]
    checked = [f for f in study.files if f.modality != "MR"] + [mr_files[0], mr_files[-1]]
    assert {f.modality for f in checked} == {"DX", "CR", "MR"}
    for phantom_file in checked:
        assert dciodvfy_errors(phantom_file.path) == [], phantom_file


@needs_dciodvfy
def test_compressed_files_are_dciodvfy_clean(tmp_path: Path) -> None:
    # (dciodvfy cannot read Deflated files; pydicom round-trips them in the syntax test.)
    syntaxes = [s for s in SUPPORTED_TRANSFER_SYNTAXES if s != "1.2.840.10008.1.2.1.99"]
    study = write_knee_study(tmp_path, seed=2, xrays=[XrayPhantomSpec(kl_grade=2, side="R", **SMALL_XRAY)] * 1,
                             mr_series=[MRPhantomSpec(**{**SMALL_MR, "slices": 8})], transfer_syntaxes=syntaxes)
    assert {f.transfer_syntax_uid for f in study.files} == set(syntaxes)
    for phantom_file in study.files[: len(syntaxes)]:
        assert dciodvfy_errors(phantom_file.path) == [], phantom_file


def test_headers_carry_the_modality_modules() -> None:
    built = build_knee_study(seed=4, xrays=[
        XrayPhantomSpec(kl_grade=1, side="L", view="LAT", **SMALL_XRAY),
        XrayPhantomSpec(kl_grade=1, side="L", modality="CR", **SMALL_XRAY),
    ], mr_series=[MRPhantomSpec(contrast="T2", side="R", **SMALL_MR)])
    dx, cr, mr = built.datasets[0], built.datasets[1], built.datasets[2]
    assert (dx.PresentationIntentType, dx.ViewPosition, dx.ImageLaterality) == ("FOR PRESENTATION", "LL", "L")
    assert list(dx.PatientOrientation) == ["P", "F"] and dx.BitsStored == 12 and dx.DetectorType
    assert dx.ImagerPixelSpacing == dx.PixelSpacing and float(dx.KVP) > 0
    assert dx.Manufacturer == "ortho-node phantom" and str(dx.PatientName).startswith("PHANTOM^KNEE^")
    assert (cr.Modality, cr.ViewPosition, list(cr.PatientOrientation)) == ("CR", "AP", ["L", "F"])
    assert mr.SeriesDescription.startswith("SAG T2") and mr.Laterality == "R"
    assert [float(v) for v in mr.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
    assert float(mr.EchoTime) >= 70 and float(mr.RepetitionTime) >= 3000  # T2 timing
    assert mr.MRAcquisitionType == "2D" and mr.BitsStored == 16 and float(mr.MagneticFieldStrength) in (1.5, 3.0)
    positions = [float(ds.ImagePositionPatient[0]) for ds in built.datasets[2:]]
    steps = np.diff(positions)
    assert np.allclose(steps, float(mr.SpacingBetweenSlices))
    locations = [float(ds.SliceLocation) for ds in built.datasets[2:]]
    assert np.allclose(locations, [-p for p in positions])  # along the normal (-1, 0, 0)
    pd_fs = build_knee_study(seed=4, mr_series=[MRPhantomSpec(contrast="PD_FS", **SMALL_MR)]).datasets[0]
    assert pd_fs.SeriesDescription.startswith("SAG PD FS") and "FS" in pd_fs.ScanOptions
    assert float(pd_fs.EchoTime) < 40


def test_monochrome1_stores_inverted_values() -> None:
    spec2 = XrayPhantomSpec(kl_grade=2, side="R", photometric="MONOCHROME2", **SMALL_XRAY)
    spec1 = XrayPhantomSpec(kl_grade=2, side="R", photometric="MONOCHROME1", **SMALL_XRAY)
    mono2 = build_knee_study(seed=4, xrays=[spec2]).datasets[0]
    mono1 = build_knee_study(seed=4, xrays=[spec1]).datasets[0]
    assert mono1.PhotometricInterpretation == "MONOCHROME1"
    assert mono1.PresentationLUTShape == "INVERSE" and mono2.PresentationLUTShape == "IDENTITY"
    np.testing.assert_array_equal(mono1.pixel_array.astype(np.int32), 4095 - mono2.pixel_array.astype(np.int32))


# -- transfer syntaxes -----------------------------------------------------------------------

@pytest.mark.parametrize("transfer_syntax", SUPPORTED_TRANSFER_SYNTAXES, ids=lambda uid: UID(uid).name)
def test_each_transfer_syntax_round_trips(tmp_path: Path, transfer_syntax: str) -> None:
    built = build_knee_study(seed=6, xrays=[XrayPhantomSpec(kl_grade=2, side="L", photometric="MONOCHROME1",
                                                            **SMALL_XRAY)],
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


def test_unsupported_transfer_syntax_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="transfer_syntaxes"):
        write_knee_study(tmp_path / "out", seed=1, xrays=[XrayPhantomSpec(kl_grade=0, side="R", **SMALL_XRAY)],
                         transfer_syntaxes=["1.2.840.10008.1.2.4.50"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(TypeError, match="transfer_syntaxes"):
        write_knee_study(tmp_path / "out", seed=1, xrays=[XrayPhantomSpec(kl_grade=0, side="R", **SMALL_XRAY)],
                         transfer_syntaxes=ExplicitVRLittleEndian)  # a str, not a sequence of UIDs
    ds = build_knee_study(seed=1, xrays=[XrayPhantomSpec(kl_grade=0, side="R", **SMALL_XRAY)]).datasets[0]
    encode_transfer_syntax(ds, RLELossless)
    with pytest.raises(ValueError, match="already compressed"):
        encode_transfer_syntax(ds, JPEGLSLossless)


@needs_dcmtk
@pytest.mark.parametrize("process", list(DcmtkJpegProcess), ids=lambda p: p.name)
def test_dcmtk_jpeg_test_files_decode(tmp_path: Path, process: DcmtkJpegProcess) -> None:
    ds = build_knee_study(seed=3, xrays=[XrayPhantomSpec(kl_grade=3, side="R", **SMALL_XRAY)]).datasets[0]
    if process is DcmtkJpegProcess.BASELINE:
        to_8bit_for_tests(ds)
    source = tmp_path / "native.dcm"
    ds.save_as(source, enforce_file_format=True)
    encoded = encode_jpeg_with_dcmtk_for_tests(source, tmp_path / "jpeg.dcm", process=process)
    reference, back = ds.pixel_array.astype(np.float64), pydicom.dcmread(encoded)
    assert back.file_meta.TransferSyntaxUID == TRANSFER_SYNTAX_BY_PROCESS[process]
    error = np.abs(back.pixel_array - reference)
    if process is DcmtkJpegProcess.LOSSLESS_SV1:
        assert error.max() == 0 and back.SOPInstanceUID == ds.SOPInstanceUID
    else:
        assert 0 < error.mean() < 0.01 * (2 ** int(ds.BitsStored))


@needs_dcmtk
def test_dcmtk_helper_refuses_too_many_bits(tmp_path: Path) -> None:
    ds = build_knee_study(seed=3, mr_series=[MRPhantomSpec(**{**SMALL_MR, "slices": 8})]).datasets[0]
    source = tmp_path / "mr.dcm"
    ds.save_as(source, enforce_file_format=True)
    with pytest.raises(ValueError, match="BitsStored 16"):
        encode_jpeg_with_dcmtk_for_tests(source, tmp_path / "out.dcm", process="+ee")


# -- study consistency -----------------------------------------------------------------------

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
    assert {(h.AccessionNumber, h.StudyDate, h.StudyTime, h.StudyID, h.StudyDescription, h.PatientAge)
            for h in headers} == {(headers[0].AccessionNumber, headers[0].StudyDate, headers[0].StudyTime,
                                   headers[0].StudyID, "XR MR KNEE", headers[0].PatientAge)}
    assert len({h.SOPInstanceUID for h in headers}) == len(headers)
    mr = [h for h in headers if h.Modality == "MR"]
    assert len({h.SeriesInstanceUID for h in mr}) == 1 and len({h.FrameOfReferenceUID for h in mr}) == 1
    assert [int(h.InstanceNumber) for h in mr] == list(range(1, SMALL_MR["slices"] + 1))
    assert len({h.SeriesInstanceUID for h in headers}) == 3
    assert sorted(int(h.SeriesNumber) for h in headers if h.Modality != "MR") == [1, 2]
    assert {h.file_meta.TransferSyntaxUID for h in headers} == {
        JPEG2000, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian}
    assert dict(study.labels["kl_grade"]) == {"L": 3}
    assert dict(study.labels["acl_tear"]) == {"R": True}
    assert dict(study.labels["meniscus_tear"]) == {"R": False}
    assert {h.BodyPartExamined for h in headers} == {"KNEE"}
    for f, h in zip(study.files, headers, strict=True):
        assert (f.sop_instance_uid, f.series_instance_uid, f.modality) == (
            h.SOPInstanceUID, h.SeriesInstanceUID, h.Modality)
        for uid in (h.SOPInstanceUID, h.SeriesInstanceUID, h.StudyInstanceUID):
            assert len(uid) <= 64 and UID_PATTERN.match(uid)


def test_same_patient_index_gives_a_follow_up_of_the_same_patient() -> None:
    spec = XrayPhantomSpec(kl_grade=1, side="R", **SMALL_XRAY)
    first = build_knee_study(seed=1, xrays=[spec], patient_index=77)
    later = build_knee_study(seed=2, xrays=[spec], patient_index=77)
    assert first.patient_id == later.patient_id
    assert first.datasets[0].PatientBirthDate == later.datasets[0].PatientBirthDate
    assert first.study_instance_uid != later.study_instance_uid


def test_conflicting_labels_for_one_knee_are_refused() -> None:
    with pytest.raises(ValueError, match="conflicting kl_grade labels for side R"):
        build_knee_study(seed=1, xrays=[XrayPhantomSpec(kl_grade=1, side="R", **SMALL_XRAY),
                                        XrayPhantomSpec(kl_grade=3, side="R", view="LAT", **SMALL_XRAY)])
    with pytest.raises(ValueError, match="at least one"):
        build_knee_study(seed=1)
    with pytest.raises(TypeError, match="xrays"):
        build_knee_study(seed=1, xrays=[MRPhantomSpec()])  # type: ignore[list-item]


# -- non-knee studies ------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "body_part", "modality"), [
    ("chest_cr", None, "CR"), ("head_mr", None, "MR"), ("head_mr", "BRAIN", "MR")])
def test_non_knee_studies_name_their_body_part(tmp_path: Path, kind: str, body_part: str | None,
                                               modality: str) -> None:
    study = write_non_knee_study(tmp_path, seed=5, kind=kind, body_part=body_part)
    expected = body_part or ("CHEST" if kind == "chest_cr" else "HEAD")
    headers = [pydicom.dcmread(f.path) for f in study.files]
    assert {h.BodyPartExamined for h in headers} == {expected}
    assert {h.Modality for h in headers} == {modality}
    assert dict(study.labels) == {}
    assert all(h.pixel_array.max() > 0 for h in headers)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(study.files[0].path) == []


def test_non_knee_rejects_mismatched_body_part() -> None:
    with pytest.raises(ValueError, match="body_part"):
        build_non_knee_study(seed=1, kind="chest_cr", body_part="KNEE")
    with pytest.raises(ValueError, match="spine"):
        build_non_knee_study(seed=1, kind="spine")
