"""``infer`` on phantom DICOM files: tables, JSON, skipped files, progress, errors; and
``run_infer`` as a plain function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.infer_support import fixture_bundle_dir, small_mr, small_xray
from typer.testing import CliRunner

import ortho_node.model.study as study_module
from ortho_node.model.cli import app
from ortho_node.model.infer import collect_studies, run_infer
from ortho_node.phantoms import write_knee_study, write_non_knee_study

RUNNER = CliRunner()
WIDE = {"COLUMNS": "250"}  # rich wraps tables at the terminal width


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("infer-cli")
    write_knee_study(root / "xray", seed=51, xrays=[small_xray(3, "L"), small_xray(1, "R")])
    write_knee_study(root / "mri", seed=52, mr_series=[small_mr(acl_tear=True, side="R")])
    write_non_knee_study(root / "chest", seed=53)
    (root / "notes.txt").write_text("not DICOM", "utf-8")
    return root


def infer(*args: str) -> object:
    return RUNNER.invoke(app, ["infer", *args, "--bundle", str(fixture_bundle_dir())], env=WIDE)


def test_table_per_study(dicom_folder: Path) -> None:
    result = infer(str(dicom_folder))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("synthetic model - not for clinical use") == 2  # one per in-scope study
    assert "Kellgren-Lawrence grade" in out and "ACL injury" in out
    assert "left" in out and "right" in out
    assert "out of scope" in out and "CHEST (from BodyPartExamined CHEST)" in out
    assert "no series matches the task's preference" in out  # mcl on a sagittal-only MRI
    assert "skipped" in result.stderr and "notes.txt" in result.stderr


def test_json_output(dicom_folder: Path) -> None:
    result = infer(str(dicom_folder), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    studies = {len(s["findings"]): s for s in document["studies"]}
    assert len(document["studies"]) == 3
    xray = studies[4]
    assert {(f["task"], f["side"]) for f in xray["findings"]} == {
        ("kl_grade", "L"), ("kl_grade", "R"), ("oa_present", "L"), ("oa_present", "R")}
    kl = next(f for f in xray["findings"] if f["task"] == "kl_grade")
    assert kl["result"] in {"0", "1", "2", "3", "4"} and 0.0 <= kl["probability"] <= 1.0
    assert sum(kl["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert len(kl["heatmap"]["values"]) == 7 and kl["heatmap"]["region"] == [0.0, 0.0, 256.0, 256.0]
    assert xray["model"]["synthetic"] is True
    mri = studies[2]
    assert {(f["task"], f["side"]) for f in mri["findings"]} == {("acl", "R"), ("meniscus", "R")}
    assert [o["task"] for o in mri["not_evaluated"]] == ["mcl"]
    chest = studies[0]
    assert chest["in_scope"] is False and "CHEST" in chest["out_of_scope_reason"]
    assert [Path(s["path"]).name for s in document["skipped_files"]] == ["notes.txt"]


def test_progress_bar_can_be_forced(dicom_folder: Path) -> None:
    result = infer(str(dicom_folder / "xray"), "--progress")
    assert result.exit_code == 0, result.output
    assert "analysing" in result.stderr and "2/2 files" in result.stderr


def test_missing_bundle_tells_the_admin_what_to_set(
    dicom_folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(study_module, "DEMO_BUNDLE_DIR", tmp_path / "no-demo-bundle")
    result = RUNNER.invoke(app, ["infer", str(dicom_folder / "xray")], env=WIDE)
    assert result.exit_code == 1
    assert "worker.bundle" in result.stderr and "Traceback" not in result.output


def test_default_bundle_dir_is_the_packaged_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(study_module, "DEMO_BUNDLE_DIR", fixture_bundle_dir())
    assert study_module.default_bundle_dir() == fixture_bundle_dir()


def test_bad_paths_are_reported(tmp_path: Path) -> None:
    result = infer(str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "no such file or folder" in result.stderr
    (tmp_path / "empty").mkdir()
    result = infer(str(tmp_path / "empty"))
    assert result.exit_code == 1 and "no DICOM study found" in result.stderr


def test_bad_engine_options_are_reported(dicom_folder: Path) -> None:
    result = infer(str(dicom_folder / "xray"), "--precision", "fp16")
    assert result.exit_code == 1 and "precision must be one of auto, fp32, bf16" in result.stderr
    result = infer(str(dicom_folder / "xray"), "--device", "gpu")
    assert result.exit_code == 1 and "device must be 'cpu', 'cuda' or 'cuda:N'" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_reported(dicom_folder: Path) -> None:
    result = infer(str(dicom_folder / "xray"), "--device", "cuda")
    assert result.exit_code == 1 and "CUDA is not available" in result.stderr


def test_run_infer_returns_findings_in_study_order(dicom_folder: Path) -> None:
    found = collect_studies([dicom_folder])
    results = run_infer([dicom_folder], bundle_dir=fixture_bundle_dir(), max_wait_ms=5)
    assert [r.study_instance_uid for r in results] == [
        s.study_instance_uid for s in found.studies
    ]
    assert found.file_count == 2 + 12 + 1
