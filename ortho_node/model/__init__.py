"""The model stage: DINOv3 encoder, task heads, model bundles, DICOM-to-tensor preprocessing.

Importing this package is cheap: the public names below load their module (and torch) on
first use. ``findings``, ``heads``, ``codes`` and ``manifest`` never import torch.

Main entry points::

    from ortho_node.model import load_bundle, verify_bundle, import_checkpoint
    bundle = load_bundle("bundles/orthofoundation-l", device="cuda")
    out = bundle.encoder(images)            # EncoderOutput(cls, patches, grid)

    from ortho_node.model import StudyAnalyser
    analyser = StudyAnalyser.from_bundle_dir("bundles/orthofoundation-l", device="cuda")
    findings = analyser.analyse(datasets, study_instance_uid=uid)   # StudyFindings
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    # encoder
    "OrthoEncoder": "encoder",
    "EncoderOutput": "encoder",
    "build_encoder": "encoder",
    "arch_info": "encoder",
    "SUPPORTED_ARCHS": "encoder",
    # checkpoints
    "CheckpointError": "checkpoint",
    "filter_checkpoint": "checkpoint",
    "load_encoder_checkpoint": "checkpoint",
    # heads
    "HeadSpec": "heads",
    "create_head": "heads",
    "head_spec": "heads",
    "list_heads": "heads",
    "register_head": "heads",
    "TaskHead": "head_module",
    "image_features": "head_module",
    "predict": "calibration",
    "probabilities_from_logits": "calibration",
    # bundles
    "BundleManifest": "manifest",
    "BundleError": "manifest",
    "read_manifest": "manifest",
    "LoadedBundle": "bundle",
    "import_checkpoint": "bundle",
    "load_bundle": "bundle",
    "save_bundle": "bundle",
    "verify_bundle": "bundle",
    # inference
    "InferenceEngine": "engine",
    "Precision": "engine",
    "evaluate_head": "explain",
    "StudyAnalyser": "study",
    "default_bundle_dir": "study",
    "run_infer": "infer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # PEP 562: resolve public names on first access so "import ortho_node.model" stays light.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
