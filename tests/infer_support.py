"""Helpers for the ``test_engine_*`` / ``test_infer_*`` tests: a tiny test-fixture bundle and
small phantom studies.

The bundle is a TEST FIXTURE: a micro DINOv3 encoder with seeded random weights and heads
whose weights are set from fixed seeds, marked trained so the analyser reports them. Its
answers mean nothing; it exists so the inference path runs end to end in seconds. Never ship it.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ortho_node.model.bundle import Provenance, save_bundle
from ortho_node.model.encoder import build_encoder
from ortho_node.model.heads import create_head
from ortho_node.phantoms import MRPhantomSpec, XrayPhantomSpec, build_knee_study

MICRO = "ortho_vit_micro_patch16_dinov3"
INPUT_SIZE = 112
TRAINED_HEADS = ("kl_grade", "oa_present", "acl", "meniscus", "mcl", "hip_labrum")
UNTRAINED_HEADS = ("tkr",)


def small_xray(kl_grade: int, side: str, **overrides: object) -> XrayPhantomSpec:
    """A 256 x 256 radiograph phantom (fast to render, decode and preprocess)."""
    options = {"rows": 256, "columns": 256, "pixel_spacing_mm": 0.6, **overrides}
    return XrayPhantomSpec(kl_grade=kl_grade, side=side, **options)  # type: ignore[arg-type]


def small_mr(**overrides: object) -> MRPhantomSpec:
    """A 12-slice 128 x 128 sagittal knee MR phantom."""
    options = {"slices": 12, "rows": 128, "columns": 128, "pixel_spacing_mm": 1.0, **overrides}
    return MRPhantomSpec(**options)  # type: ignore[arg-type]


def xray_study(seed: int, sides: Sequence[str] = ("L", "R")):
    """AP radiographs, one per side, in memory."""
    return build_knee_study(seed=seed, xrays=[small_xray(2, side) for side in sides])


def write_fixture_bundle(out_dir: Path, *, input_size: int = INPUT_SIZE) -> Path:
    """Write the test-fixture bundle (see the module docstring) to ``out_dir``."""
    torch.manual_seed(1234)
    encoder = build_encoder(MICRO, img_size=input_size)
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            if ".gamma_" in name:
                parameter.fill_(0.5)  # layer scale 1e-5 would make every block a no-op
    heads = {}
    for index, name in enumerate(TRAINED_HEADS + UNTRAINED_HEADS):
        head = create_head(name, embed_dim=encoder.embed_dim)
        generator = torch.Generator().manual_seed(100 + index)
        with torch.no_grad():
            for parameter_name, parameter in head.named_parameters():
                if parameter_name.endswith("weight") and parameter.ndim == 2:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        heads[name] = head
    return save_bundle(
        out_dir,
        encoder=encoder,
        heads=heads,
        trained=TRAINED_HEADS,
        name="test-fixture-micro",
        version="0.0.1-test",
        provenance=Provenance(
            training_data="TEST FIXTURE: seeded random weights, trained on nothing; never ship",
            synthetic=True,
        ),
        license="test fixture only",
        input_size=(input_size, input_size),
    )


@functools.lru_cache(maxsize=None)
def fixture_bundle_dir() -> Path:
    """The test-fixture bundle, written once per test process (removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="ortho-infer-bundle-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return write_fixture_bundle(root / "bundle")
