"""Linear probes on the self-supervised encoder beat the same probes on the same network before
pretraining (random init), for KL grade (QWK) and for ACL (AUROC), on fresh phantoms.

The self-supervised encoder is ``training/assets/ssl_encoder`` (written by ``ortho-train
demo-model --ssl-out``: DINO pretraining only, no labels). The random-init encoder is the exact
starting point of that run (same seed, same init recipe). The margins were chosen from
``python -m training.probe_margin`` (several fresh phantom sets and probe seeds, the same set
sizes as here); they are about half the smallest gap measured, in November 2026 on a 2-core CPU:

- ``python -m training.probe_margin --repeats 4``: KL QWK gap +0.43 to +0.75 (SSL 0.48-0.60,
  random init -0.23-0.08); ACL AUROC gap +0.24 to +0.36 (SSL 0.75-0.89, random 0.47-0.53);
- this test's own set (seed 3): KL QWK 0.48 vs 0.10 (+0.38), ACL AUROC 0.70 vs 0.55 (+0.15).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_training_support import fresh_corpus
from training.probe_margin import SSL_ENCODER, probe_gap

KL_QWK_MARGIN = 0.15
ACL_AUROC_MARGIN = 0.08


@pytest.fixture(scope="module")
def gaps() -> dict[str, dict[str, float]]:
    return probe_gap(fresh_corpus(), seed=3)


def test_ssl_encoder_is_shipped_and_headless() -> None:
    from ortho_node.model.manifest import read_manifest

    manifest = read_manifest(SSL_ENCODER)
    assert manifest.heads == () and manifest.provenance.synthetic
    assert (Path(SSL_ENCODER) / "weights.safetensors").stat().st_size < 3_000_000


def test_probe_on_ssl_encoder_beats_random_init_for_kl_grade(gaps: dict) -> None:
    kl = gaps["kl_grade"]
    assert kl["ssl"] - kl["random"] >= KL_QWK_MARGIN, gaps


def test_probe_on_ssl_encoder_beats_random_init_for_acl(gaps: dict) -> None:
    acl = gaps["acl"]
    assert acl["ssl"] - acl["random"] >= ACL_AUROC_MARGIN, gaps
