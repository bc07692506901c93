"""``ortho-node model import / info / verify`` through typer's CliRunner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ortho_node.model.cli import app
from tests.test_model_support import MICRO, meta_checkpoint_from_timm, randomised_micro_vit_state

runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that table cells do not wrap


def _flat(text: str) -> str:
    # Rich wraps tables to the terminal width; compare on whitespace-normalised text.
    return " ".join(text.split())


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    state = randomised_micro_vit_state(MICRO, seed=4)
    path = tmp_path / "OrthoFoudation-micro.pth"
    torch.save(meta_checkpoint_from_timm(state, periods=torch.ones(8), prefix="module.backbone."), path)
    return path


def test_import_info_verify(checkpoint: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    result = runner.invoke(
        app,
        ["import", str(checkpoint), "--out", str(bundle), "--heads", "kl_grade, acl",
         "--version", "0.9.0", "--synthetic", "--training-data", "phantom knees"],
    )
    assert result.exit_code == 0, result.output
    output = _flat(result.output)
    assert f"architecture: {MICRO} (inferred)" in output
    assert "2 heads are untrained" in output

    info = runner.invoke(app, ["info", str(bundle)])
    assert info.exit_code == 0, info.output
    text = _flat(info.output)
    for expected in (MICRO, "OrthoFoudation-micro 0.9.0", "224 x 224", "phantom knees",
                     "kl_grade", "acl", "ordinal", "binary", "not reported"):
        assert expected in text, expected
    assert "YES" in text  # synthetic flag

    verify = runner.invoke(app, ["verify", str(bundle)])
    assert verify.exit_code == 0, verify.output
    assert "OK" in verify.output and "WARN" in verify.output


def test_verify_exits_1_on_a_tampered_bundle(checkpoint: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert runner.invoke(app, ["import", str(checkpoint), "-o", str(bundle), "--heads", "acl"]).exit_code == 0
    weights = bundle / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(bundle)])
    assert result.exit_code == 1
    assert "FAILED" in result.output and "does not match the manifest" in _flat(result.output)


def test_import_errors_are_one_readable_line(checkpoint: Path, tmp_path: Path) -> None:
    wrong_arch = runner.invoke(
        app, ["import", str(checkpoint), "--out", str(tmp_path / "b"), "--arch", "vit_small_patch16_dinov3"]
    )
    assert wrong_arch.exit_code == 1
    assert "does not fit vit_small_patch16_dinov3" in _flat(wrong_arch.output)
    assert "Traceback" not in wrong_arch.output
    assert not (tmp_path / "b").exists()

    unknown_head = runner.invoke(
        app, ["import", str(checkpoint), "-o", str(tmp_path / "c"), "--heads", "acl,xyz"]
    )
    assert unknown_head.exit_code == 1 and "unknown head 'xyz'" in unknown_head.output

    missing = runner.invoke(app, ["import", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "d")])
    assert missing.exit_code == 1 and "checkpoint file not found" in _flat(missing.output)

    info = runner.invoke(app, ["info", str(tmp_path)])
    assert info.exit_code == 1 and "no manifest.json" in info.output


def test_specs_and_manifests_load_without_torch() -> None:
    # `model info`, the main CLI and result builders read specs/manifests; torch stays unloaded.
    code = (
        "import sys; import ortho_node.cli, ortho_node.model.manifest, ortho_node.model.heads; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
