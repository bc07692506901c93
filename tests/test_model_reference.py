"""Acceptance: the encoder reproduces the official DINOv3 implementation (ViT-S/16 and ViT-L/16).

Weights follow the fixture's fill rule; the golden numbers are outputs of Meta's own code on
the fixture's input. Both routes must match within 1e-4: importing the Meta state dict
directly, and importing an OrthoFoundation-style ``.pth`` (keys under ``module.backbone.``)
into a bundle, then loading that bundle.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from ortho_node.model.bundle import import_checkpoint, load_bundle
from ortho_node.model.checkpoint import load_encoder_checkpoint
from tests.test_model_support import (
    TOLERANCE,
    golden_differences,
    reference_fixture,
    reference_input,
    reference_meta_state,
)

EXPECTED_ARCH = {"vits16": "vit_small_patch16_dinov3_qkvb", "vitl16": "vit_large_patch16_dinov3_qkvb"}


@pytest.fixture(scope="module", params=["vits16", "vitl16"])
def reference(request: pytest.FixtureRequest) -> tuple[str, dict[str, torch.Tensor]]:
    return request.param, reference_meta_state(request.param)


def _within_tolerance(model: str, cls: torch.Tensor, patches: torch.Tensor) -> None:
    golden = reference_fixture()["models"][model]["golden"]
    assert cls.shape == (2, golden["D"])
    assert patches.shape == (2, 196, golden["D"])  # 14 x 14 patches; registers dropped
    differences = golden_differences(model, cls, patches)
    assert max(differences.values()) <= TOLERANCE, differences


def test_meta_state_dict_matches_official_outputs(reference: tuple[str, dict]) -> None:
    model, state = reference
    imported = load_encoder_checkpoint(state)
    # q/v biases of the fixture are non-zero, so only the _qkvb variant reproduces it.
    assert imported.arch == EXPECTED_ARCH[model]
    assert imported.arch_inferred
    with torch.inference_mode():
        out = imported.encoder(reference_input())
    assert out.grid == (14, 14)
    _within_tolerance(model, out.cls, out.patches)


def test_orthofoundation_checkpoint_bundle_matches_official_outputs(
    reference: tuple[str, dict], tmp_path: Path
) -> None:
    model, state = reference
    checkpoint = tmp_path / "OrthoFoudation-L.pth"
    torch.save({f"module.backbone.{key}": value for key, value in state.items()}, checkpoint)

    bundle_dir = import_checkpoint(
        checkpoint, tmp_path / "bundle", name="OrthoFoundation reference", version="1.0.0",
        heads=("kl_grade", "acl"),
    )
    bundle = load_bundle(bundle_dir)

    manifest = bundle.manifest
    assert manifest.arch == EXPECTED_ARCH[model]
    assert manifest.provenance.source_checkpoint == checkpoint.name
    assert manifest.provenance.source_checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert manifest.trained_heads == ()  # the checkpoint holds no head weights
    fixture_periods = torch.tensor(reference_fixture()["models"][model]["buffers"]["rope_embed.periods"])
    assert torch.equal(bundle.encoder.vit.rope.periods, fixture_periods)
    with torch.inference_mode():
        out = bundle.encoder(reference_input())
    _within_tolerance(model, out.cls, out.patches)
