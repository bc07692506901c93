"""Head training (linear probe, full fine-tune with MR pooling), calibration, export to a bundle
the node loads, and the finetune / export / label-efficiency commands."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ortho_node.model import load_bundle, verify_bundle
from ortho_node.model.heads import Pooling, head_spec
from tests.test_training_support import MICRO, TINY_SIZE, tiny_corpus
from training.data.corpus import TensorCorpus
from training.data.shards import write_shards
from training.export import export_bundle
from training.heads.batches import make_batch, sample_fits
from training.heads.finetune import FinetuneConfig, heads_for, predict_heads, train_heads
from training.heads.store import load_heads, save_heads
from ortho_node.model.encoder import build_encoder
from click.testing import Result
from typer.testing import CliRunner
from training.cli import app


@pytest.fixture(scope="module")
def corpus() -> TensorCorpus:
    return tiny_corpus(xray_patients=12, mr_patients=8, seed=31)


def test_batches_respect_scope_and_mask(corpus: TensorCorpus) -> None:
    kl = head_spec("kl_grade")
    lateral = next(s for s in corpus if s.view == "LAT")
    assert not sample_fits(kl, lateral)  # KL heads read AP/PA only
    series = [s for s in corpus if s.is_mri][:2]
    batch = make_batch(
        series,
        heads_for(["acl", "kl_grade"]),
        generator=torch.Generator().manual_seed(0),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        max_slices=4,
    )
    assert batch.images.shape == (2 * 4, 3, TINY_SIZE, TINY_SIZE) and batch.mask.all()
    assert batch.targets["kl_grade"].tolist() == [-1, -1]
    with pytest.raises(ValueError, match="only radiographs or only MR"):
        make_batch([series[0], lateral], heads_for(["acl"]), mean=(0.5,) * 3, std=(0.25,) * 3)


def test_full_finetune_trains_pooling_end_to_end_and_exports(
    corpus: TensorCorpus, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(MICRO, img_size=TINY_SIZE)
    before = copy.deepcopy(encoder.state_dict())
    specs = [
        head_spec("kl_grade"),
        head_spec("oa_present"),
        head_spec("acl", pooling=Pooling.ATTENTION),
        head_spec("meniscus"),
    ]
    config = FinetuneConfig(mode="full", epochs=2, batch_size=8, set_batch_size=2, seed=1)
    trained = train_heads(encoder, corpus, specs, config=config, val=corpus, show_progress=False)
    after = trained.model.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the encoder trained too
    attention = trained.model.heads["acl"].attention_gate.weight
    assert attention.abs().sum() > 0 and set(trained.temperatures) == {s.name for s in specs}
    assert all(t > 0 for t in trained.temperatures.values()) and len(trained.history) == 2

    path = save_heads(tmp_path / "heads.pt", trained, image_size=TINY_SIZE)
    saved = load_heads(path)
    assert saved.heads["acl"].spec.pooling is Pooling.ATTENTION
    bundle = export_bundle(
        tmp_path / "bundle",
        encoder=saved.encoder,
        heads=saved.heads,
        name="test-model",
        version="1.0.0",
        input_size=TINY_SIZE,
        training_data="tiny phantom corpus",
        synthetic=True,
        temperatures=saved.temperatures,
        include_untrained=["pcl"],
        withheld=["meniscus"],
    )
    report = verify_bundle(bundle)
    assert report.ok, report.describe()
    loaded = load_bundle(bundle)
    assert (
        loaded.manifest.provenance.synthetic
        and "NOT FOR CLINICAL USE" in loaded.manifest.provenance.disclaimer
    )
    assert set(loaded.reportable_heads) == {"kl_grade", "oa_present", "acl"}
    assert loaded.manifest.head("pcl").trained is False
    # Withheld: its trained weights ship, but it is marked untrained and never reported.
    assert loaded.manifest.head("meniscus").trained is False
    withheld_weights = loaded.head("meniscus", allow_untrained=True).state_dict()
    assert all(torch.equal(v, saved.heads["meniscus"].state_dict()[k]) for k, v in withheld_weights.items())
    assert loaded.heads["acl"].spec.temperature == pytest.approx(trained.temperatures["acl"])
    # The bundle computes exactly what the trained modules compute.
    predictions = predict_heads(trained.model, corpus)
    model_in = predictions["acl"]
    from training.heads.finetune import extract_features

    features = extract_features(loaded.encoder, corpus)
    series = [i for i, s in enumerate(corpus) if sample_fits(head_spec("acl"), s)]
    with torch.no_grad():
        logits = torch.cat(
            [loaded.heads["acl"].forward_sets(features[i].unsqueeze(0)) for i in series]
        )
    assert torch.allclose(logits, model_in.logits, atol=1e-5)


def test_linear_probe_keeps_the_encoder_frozen(corpus: TensorCorpus) -> None:
    encoder = build_encoder(MICRO, img_size=TINY_SIZE)
    before = copy.deepcopy(encoder.state_dict())
    config = FinetuneConfig(mode="linear", epochs=3, batch_size=16, set_batch_size=4)
    trained = train_heads(
        encoder, corpus, heads_for(["kl_grade", "acl"]), config=config, show_progress=False
    )
    assert all(torch.equal(before[k], v) for k, v in trained.model.encoder.state_dict().items())
    assert trained.temperatures == {}  # no validation split, nothing calibrated


RUNNER = CliRunner()


def _cli(*args: str) -> Result:
    return RUNNER.invoke(app, list(args))


def test_finetune_export_and_label_efficiency_commands(
    corpus: TensorCorpus, tmp_path: Path
) -> None:
    write_shards(corpus, tmp_path / "data", samples_per_shard=8)
    data = str(tmp_path / "data")
    finetune = _cli(
        "finetune",
        "--data",
        data,
        "--out",
        str(tmp_path / "ft"),
        "--image-size",
        "64",
        "--tasks",
        "kl_grade,acl",
        "--mode",
        "linear",
        "--epochs",
        "2",
        "--no-progress",
    )
    assert finetune.exit_code == 0, finetune.output[-3000:]
    export = _cli(
        "export",
        "--heads",
        str(tmp_path / "ft" / "heads.pt"),
        "--out",
        str(tmp_path / "b"),
        "--name",
        "cli-model",
        "--training-data",
        "phantoms",
        "--synthetic",
    )
    assert export.exit_code == 0, export.output[-3000:]
    assert load_bundle(tmp_path / "b").manifest.trained_heads == ("kl_grade", "acl")

    efficiency = _cli(
        "label-efficiency",
        "--data",
        data,
        "--pretrained",
        str(tmp_path / "b"),
        "--out",
        str(tmp_path / "le"),
        "--image-size",
        "64",
        "--tasks",
        "kl_grade,acl",
        "--epochs",
        "3",
        "--resamples",
        "50",
    )
    assert efficiency.exit_code == 0, efficiency.output[-3000:]
    rows = (tmp_path / "le" / "label_efficiency.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4 * 2  # header + encoders x fractions x tasks
    assert rows[0].startswith("encoder,fraction,task,n_train,metric")
    markdown = (tmp_path / "le" / "label_efficiency.md").read_text()
    assert (
        "## kl_grade (QWK" in markdown and "## acl (AUROC" in markdown and "random init" in markdown
    )
    png = (tmp_path / "le" / "label_efficiency.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    missing = _cli(
        "export",
        "--heads",
        str(tmp_path / "nope.pt"),
        "--out",
        str(tmp_path / "x"),
        "--name",
        "m",
        "--training-data",
        "t",
    )
    assert missing.exit_code == 1 and "not found" in missing.output
    assert (
        json.loads((tmp_path / "le" / "metrics.jsonl").read_text().splitlines()[0])["event"]
        == "label_efficiency"
    )
