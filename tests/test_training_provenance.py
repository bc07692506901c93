"""What a bundle says about its training: heads that never saw a label are exported untrained,
phantom-trained heads are always labelled synthetic, and validation never shares a patient with
training (``phantoms:N:SEED`` numbers each seed's patients apart)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from ortho_node.model import load_bundle, verify_bundle
from tests.test_training_support import tiny_corpus
from training.cli import app
from training.data.corpus import TensorCorpus
from training.data.resolve import phantom_spec_cohorts, resolve_corpus
from training.data.shards import write_shards
from training.export import SYNTHETIC_DISCLAIMER
from training.heads.store import load_heads

RUNNER = CliRunner()
SIZE = "32"


def _cli(*args: str) -> Result:
    return RUNNER.invoke(app, list(args))


def _said(result: Result) -> str:
    # Rich wraps long lines at the terminal width: compare with single spaces.
    return " ".join(result.output.split())


def _finetune(out: Path, data: str, *extra: str) -> Result:
    return _cli(
        "finetune",
        *("--data", data, "--out", str(out), "--image-size", SIZE),
        *("--mode", "linear", "--epochs", "1", "--no-progress", *extra),
    )


def _export(heads: Path, out: Path, *extra: str) -> Result:
    return _cli(
        "export",
        *("--heads", str(heads), "--out", str(out), "--name", "m", "--training-data", "t", *extra),
    )


@pytest.fixture(scope="module")
def phantom_finetune(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    # Phantoms carry KL grade and ACL labels, never PCL: the pcl head sees no training sample.
    out = tmp_path_factory.mktemp("phantom-heads")
    result = _finetune(out, "phantoms:10", "--tasks", "kl_grade,acl,pcl")
    assert result.exit_code == 0, result.output[-3000:]
    return out / "heads.pt", _said(result)


@pytest.fixture
def phantom_heads(phantom_finetune: tuple[Path, str]) -> Path:
    return phantom_finetune[0]


def test_a_head_without_training_labels_is_exported_untrained(
    phantom_finetune: tuple[Path, str], tmp_path: Path
) -> None:
    phantom_heads, said = phantom_finetune
    assert "'pcl' saw no training label" in said
    saved = load_heads(phantom_heads)
    assert saved.version == 2 and saved.train_samples is not None
    assert saved.train_samples["pcl"] == 0
    assert saved.train_samples["kl_grade"] > 0 and saved.train_samples["acl"] > 0
    assert saved.val_samples is not None and saved.val_samples["pcl"] == 0

    result = _export(phantom_heads, tmp_path / "b")
    assert result.exit_code == 0, result.output[-3000:]
    assert "'pcl' saw no training label: exported trained: false" in _said(result)
    manifest = load_bundle(tmp_path / "b").manifest
    assert set(manifest.trained_heads) == {"kl_grade", "acl"}
    assert "pcl" in manifest.head_names  # kept, but the node never reports it
    assert any(n.startswith("pcl: no training labels") for n in manifest.provenance.import_notes)
    assert verify_bundle(tmp_path / "b").ok


def test_a_version_1_heads_file_exports_as_before_with_warnings(
    phantom_heads: Path, tmp_path: Path
) -> None:
    data = torch.load(phantom_heads, map_location="cpu", weights_only=True)
    data["version"] = 1
    del data["synthetic"]
    for entry in data["heads"].values():
        del entry["train_samples"], entry["val_samples"]
    torch.save(data, tmp_path / "old.pt")
    saved = load_heads(tmp_path / "old.pt")
    assert (saved.train_samples, saved.synthetic) == (None, None)

    result = _export(tmp_path / "old.pt", tmp_path / "b")
    assert result.exit_code == 0, result.output[-3000:]
    assert "does not record which heads saw training labels" in _said(result)
    assert "does not record whether its data was synthetic" in _said(result)
    manifest = load_bundle(tmp_path / "b").manifest
    assert set(manifest.trained_heads) == {"kl_grade", "acl", "pcl"}  # unknown: old behaviour
    assert manifest.provenance.synthetic is False


def test_phantom_heads_are_exported_synthetic_whatever_the_flag(
    phantom_heads: Path, tmp_path: Path
) -> None:
    for flags in ((), ("--synthetic",)):
        out = tmp_path / f"b{len(flags)}"
        result = _export(phantom_heads, out, *flags)
        assert result.exit_code == 0, result.output[-3000:]
        provenance = load_bundle(out).manifest.provenance
        assert provenance.synthetic is True and provenance.disclaimer == SYNTHETIC_DISCLAIMER
        assert "NOT FOR CLINICAL USE" in provenance.disclaimer
    refused = _export(phantom_heads, tmp_path / "real", "--no-synthetic")
    assert refused.exit_code == 1 and "synthetic phantom data" in _said(refused)
    assert not (tmp_path / "real").exists()
    assert load_heads(phantom_heads).synthetic is True


def _renamed(corpus: TensorCorpus) -> TensorCorpus:
    # The same pixels under non-phantom patient IDs: what real data looks like to the rule.
    return TensorCorpus(
        dataclasses.replace(s, patient_id=s.patient_id.replace("PHANTOM-", "SITE-"))
        for s in corpus
    )


def test_heads_are_synthetic_when_data_or_encoder_came_from_phantoms(
    phantom_heads: Path, tmp_path: Path
) -> None:
    corpus = tiny_corpus(xray_patients=8, mr_patients=0, size=int(SIZE))
    write_shards(_renamed(corpus), tmp_path / "real", samples_per_shard=8)
    write_shards(corpus, tmp_path / "phantom", samples_per_shard=8)
    real = _finetune(tmp_path / "ft-real", str(tmp_path / "real"), "--tasks", "kl_grade")
    assert real.exit_code == 0, real.output[-3000:]
    assert load_heads(tmp_path / "ft-real" / "heads.pt").synthetic is False
    exported = _export(tmp_path / "ft-real" / "heads.pt", tmp_path / "b-real")
    assert exported.exit_code == 0, exported.output[-3000:]
    assert load_bundle(tmp_path / "b-real").manifest.provenance.synthetic is False

    # Phantoms written as shards keep their IDs, so they count as synthetic too.
    shards = _finetune(tmp_path / "ft-shards", str(tmp_path / "phantom"), "--tasks", "kl_grade")
    assert shards.exit_code == 0, shards.output[-3000:]
    assert load_heads(tmp_path / "ft-shards" / "heads.pt").synthetic is True

    # Real data on an encoder from a synthetic bundle: the weights still come from phantoms.
    assert _export(phantom_heads, tmp_path / "syn").exit_code == 0
    encoder = ("--encoder", str(tmp_path / "syn"))
    tuned = _finetune(tmp_path / "ft-enc", str(tmp_path / "real"), "--tasks", "kl_grade", *encoder)
    assert tuned.exit_code == 0, tuned.output[-3000:]
    assert load_heads(tmp_path / "ft-enc" / "heads.pt").synthetic is True


def _patient_numbers(spec: str) -> set[int]:
    return {
        c.first_patient_index + i for c in phantom_spec_cohorts(spec) for i in range(c.n_patients)
    }


def test_phantom_specs_with_other_seeds_share_no_patient() -> None:
    assert _patient_numbers("phantoms:100") == _patient_numbers("phantoms:100:0")
    for a, b in (("phantoms:100", "phantoms:50:1"), ("phantoms:60000:3", "phantoms:60000:4")):
        assert not _patient_numbers(a) & _patient_numbers(b)
    seeded = resolve_corpus("phantoms:2:7", image_size=int(SIZE))
    assert seeded.patients() == ("PHANTOM-00700000", "PHANTOM-00700002")
    with pytest.raises(ValueError, match="SEED in"):
        phantom_spec_cohorts("phantoms:4:1000")


def test_finetune_refuses_validation_patients_it_trains_on(tmp_path: Path) -> None:
    same_seed = _finetune(
        tmp_path / "a", "phantoms:6", "--val", "phantoms:4", "--tasks", "kl_grade"
    )
    assert same_seed.exit_code == 1
    assert "--data and --val share 2 patient(s)" in _said(same_seed)
    assert not (tmp_path / "a" / "heads.pt").exists()
    other_seed = _finetune(
        tmp_path / "b", "phantoms:6", "--val", "phantoms:4:1", "--tasks", "kl_grade"
    )
    assert other_seed.exit_code == 0, other_seed.output[-3000:]
