"""Model bundles: save/load round trip, checksum, verification, untrained heads, identity."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from pydicom.uid import UID

from ortho_node.model.bundle import (
    BundleChecksumError,
    BundleError,
    Provenance,
    UntrainedHeadError,
    bundle_device_uid,
    import_checkpoint,
    load_bundle,
    read_manifest,
    save_bundle,
    verify_bundle,
)
from ortho_node.model.encoder import build_encoder
from ortho_node.model.head_module import image_features
from ortho_node.model.heads import UnknownHeadError, create_head
from tests.test_model_support import (
    MICRO_QKVB,
    bf16_rounded,
    meta_checkpoint_from_timm,
    randomised_micro_vit_state,
)

HEADS = ("kl_grade", "oa_present", "acl", "meniscus")
TRAINED = ("kl_grade", "acl")


def _trained_modules() -> tuple:
    encoder = build_encoder(MICRO_QKVB, img_size=(64, 96))
    encoder.vit.load_state_dict(randomised_micro_vit_state(MICRO_QKVB, seed=1))
    encoder.set_rope_periods(bf16_rounded(encoder.rope_periods * 1.1))
    heads = {name: create_head(name, embed_dim=encoder.embed_dim) for name in HEADS}
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in TRAINED:  # stand-in for training: weights that differ from the init
            for parameter in heads[name].parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return encoder.eval(), heads


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, object, dict]:
    encoder, heads = _trained_modules()
    path = save_bundle(
        tmp_path / "demo-bundle",
        encoder=encoder,
        heads=heads,
        trained=TRAINED,
        name="ortho demo",
        version="0.3.1",
        provenance=Provenance(training_data="synthetic phantoms", synthetic=True),
        license="Apache-2.0",
        input_size=(64, 96),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    return path, encoder, heads


def test_round_trip_reproduces_encoder_and_heads(saved: tuple) -> None:
    path, encoder, heads = saved
    bundle = load_bundle(path)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        before, after = encoder(images), bundle.encoder(images)
        features = image_features(after.cls, after.patches)
        for name in HEADS:
            assert torch.equal(bundle.heads[name](features), heads[name](features)), name
    assert torch.equal(after.cls, before.cls) and torch.equal(after.patches, before.patches)
    assert torch.equal(bundle.encoder.vit.rope.periods, encoder.rope_periods)
    assert not any(p.requires_grad for p in bundle.encoder.parameters())
    assert not bundle.encoder.training


def test_manifest_records_what_the_node_needs(saved: tuple) -> None:
    path, _, _ = saved
    manifest = read_manifest(path)
    assert (manifest.name, manifest.version, manifest.arch) == ("ortho demo", "0.3.1", MICRO_QKVB)
    assert manifest.input_size == (64, 96) and manifest.patch_size == 16
    assert manifest.mean == (0.5, 0.5, 0.5) and manifest.std == (0.25, 0.25, 0.25)
    assert manifest.head_names == HEADS and manifest.trained_heads == TRAINED
    assert manifest.provenance.synthetic is True
    assert manifest.weights_sha256 == hashlib.sha256((path / "weights.safetensors").read_bytes()).hexdigest()
    raw = json.loads((path / "manifest.json").read_text())
    assert [head["trained"] for head in raw["heads"]] == [name in TRAINED for name in HEADS]
    assert raw["heads"][0]["codes"]["finding_site"]["value"] == "49076000"
    assert not list(path.parent.glob(".demo-bundle*"))  # no staging leftovers


def test_untrained_heads_are_refused_for_reporting(saved: tuple) -> None:
    bundle = load_bundle(saved[0])
    assert bundle.reportable_heads == TRAINED
    assert bundle.head("acl") is bundle.heads["acl"]
    with pytest.raises(UntrainedHeadError, match="'meniscus'.*must not be reported"):
        bundle.head("meniscus")
    assert bundle.head("meniscus", allow_untrained=True) is bundle.heads["meniscus"]
    with pytest.raises(KeyError, match="no head 'tkr'"):
        bundle.head("tkr")


def test_identity_and_device_uid(saved: tuple) -> None:
    identity = load_bundle(saved[0]).identity
    manifest = read_manifest(saved[0])
    assert (identity.name, identity.version, identity.synthetic) == ("ortho demo", "0.3.1", True)
    assert identity.weights_sha256 == manifest.weights_sha256
    assert identity.device_uid == bundle_device_uid(manifest.weights_sha256, "0.3.1")
    assert UID(identity.device_uid).is_valid
    assert bundle_device_uid(manifest.weights_sha256, "0.3.2") != identity.device_uid
    assert bundle_device_uid("0" * 64, "0.3.1") != identity.device_uid
    assert bundle_device_uid(manifest.weights_sha256, "0.3.1", prefix="1.2.3.").startswith("1.2.3.")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        bundle_device_uid("abc", "1")


def test_tampered_weights_are_refused(saved: tuple) -> None:
    path = saved[0]
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleChecksumError, match="refusing to load"):
        load_bundle(path)
    report = verify_bundle(path)
    assert not report.ok
    statuses = {check.name: check.status for check in report.checks}
    assert statuses["checksum"] == "fail" and statuses["forward pass"] == "skip"


def test_verify_passes_and_warns_about_untrained_heads(saved: tuple) -> None:
    report = verify_bundle(saved[0])
    assert report.ok, report.describe()
    statuses = {check.name: check.status for check in report.checks}
    assert statuses == {
        "manifest": "pass", "weights file": "pass", "checksum": "pass",
        "keys and shapes": "pass", "forward pass": "pass", "heads trained": "warn",
        "study analysis": "warn",  # this bundle's input is 64 x 96: the encoder runs it, preparation needs a square
    }
    assert "oa_present, meniscus" in report.describe()
    assert "must be square" in report.describe() and "no study can be analysed" in report.describe()


def _rewrite_manifest(path: Path, change) -> None:
    data = json.loads((path / "manifest.json").read_text())
    change(data)
    (path / "manifest.json").write_text(json.dumps(data))


def test_verify_fails_on_weights_that_do_not_fit_the_manifest(saved: tuple) -> None:
    path = saved[0]
    _rewrite_manifest(path, lambda data: data["heads"].pop(2))  # drop "acl", keep its weights
    report = verify_bundle(path)
    assert not report.ok
    failed = [check for check in report.checks if check.status == "fail"]
    assert failed[0].name == "keys and shapes" and "unexpected:  heads.acl." in failed[0].detail
    with pytest.raises(BundleError, match="unexpected:  heads.acl"):
        load_bundle(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["heads"][2].update(threshold=1.5), "heads/2/threshold"),
        (lambda d: d["provenance"].pop("synthetic"), "'synthetic' is a required property"),
        (lambda d: d["heads"][0]["codes"]["concept"].update(value="X" * 17), "is too long"),
        (lambda d: d["encoder"].update(depth=5), "depth 5 .is 4."),
        (lambda d: d["encoder"].update(arch="vit_giant_patch14_dinov2"), "arch must be one of"),
    ],
)
def test_verify_fails_on_a_bad_manifest(saved: tuple, change, message: str) -> None:
    _rewrite_manifest(saved[0], change)
    report = verify_bundle(saved[0])
    assert not report.ok
    assert report.checks[0].name == "manifest" and report.checks[0].status == "fail"
    assert re.search(message, report.checks[0].detail), report.checks[0].detail
    assert all(check.status == "skip" for check in report.checks[1:])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["input"].update(interpolation="nearest"), "is not one of"),
        (lambda d: d["input"].update(size=[16, 16]), "less than the minimum of 32"),
        (lambda d: d["encoder"].update(embed_dim=float(d["encoder"]["embed_dim"])), "embed_dim must be an int"),
    ],
)
def test_a_manifest_the_analyser_could_not_use_is_refused_by_verify_and_load(saved: tuple, change, message: str) -> None:
    """The schema let these through: verify said OK (or raised, for 96.0) and every analyser
    then failed at start-up. Now the manifest check fails and the bundle does not load."""
    _rewrite_manifest(saved[0], change)
    report = verify_bundle(saved[0])
    assert not report.ok and report.checks[0].status == "fail"
    assert re.search(message, report.checks[0].detail), report.checks[0].detail
    with pytest.raises(BundleError, match=message):
        load_bundle(saved[0])


def test_missing_pieces_are_reported(tmp_path: Path, saved: tuple) -> None:
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path / "nowhere")
    foreign = tmp_path / "foreign"
    shutil.copytree(saved[0], foreign)
    _rewrite_manifest(foreign, lambda data: data["encoder"].update(arch="vit_giant_patch14_dinov2"))
    with pytest.raises(BundleError, match="encoder cannot be built here"):
        load_bundle(foreign)
    copy = tmp_path / "copy"
    shutil.copytree(saved[0], copy)
    (copy / "weights.safetensors").unlink()
    report = verify_bundle(copy)
    assert [c.status for c in report.checks][:2] == ["pass", "fail"]
    with pytest.raises(BundleError, match="weights file weights.safetensors is missing"):
        load_bundle(copy)


def test_save_refuses_to_overwrite_unless_asked(saved: tuple) -> None:
    path, encoder, heads = saved
    arguments = dict(encoder=encoder, heads=heads, trained=(), name="again", version="1",
                     provenance=Provenance(training_data="x", synthetic=False), license="x",
                     input_size=(64, 96))
    with pytest.raises(FileExistsError):
        save_bundle(path, **arguments)
    save_bundle(path, overwrite=True, **arguments)
    assert read_manifest(path).trained_heads == ()
    with pytest.raises(ValueError, match="multiple of patch_size"):
        save_bundle(path.parent / "odd", **{**arguments, "input_size": (60, 96)})
    assert not (path.parent / "odd").exists()


def test_import_marks_heads_and_is_deterministic(tmp_path: Path) -> None:
    state = randomised_micro_vit_state(MICRO_QKVB, seed=2)
    checkpoint = meta_checkpoint_from_timm(state, periods=torch.ones(8) * 2, prefix="backbone.")
    trained_acl = create_head("acl", embed_dim=96)
    with torch.no_grad():
        trained_acl.classifier.bias.fill_(3.0)
    checkpoint.update({f"heads.acl.{k}": v for k, v in trained_acl.state_dict().items()})
    source = tmp_path / "knee-ssl.pth"
    torch.save({"model": checkpoint}, source)

    first = import_checkpoint(source, tmp_path / "a", name="knee", version="2", heads=("acl", "pcl"))
    second = import_checkpoint(source, tmp_path / "b", name="knee", version="2", heads=("acl", "pcl"))

    manifest = read_manifest(first)
    assert manifest.trained_heads == ("acl",)
    assert manifest.weights_sha256 == read_manifest(second).weights_sha256
    assert manifest.provenance.source_checkpoint == "knee-ssl.pth"
    notes = " | ".join(manifest.provenance.import_notes)
    assert "inferred" in notes and "heads initialised, untrained: pcl" in notes
    bundle = load_bundle(first)
    assert bundle.heads["acl"].classifier.bias.item() == 3.0
    assert torch.equal(bundle.encoder.rope_periods, torch.ones(8) * 2)


def test_import_checks_cheap_things_first(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    with pytest.raises(UnknownHeadError, match="unknown head 'acl_tear'"):
        import_checkpoint(missing, tmp_path / "x", name="n", version="1", heads=("acl_tear",))
    with pytest.raises(ValueError, match="version must match"):
        import_checkpoint(missing, tmp_path / "x", name="n", version="1 beta")
    with pytest.raises(FileNotFoundError):
        import_checkpoint(missing, tmp_path / "x", name="n", version="1")
    assert not (tmp_path / "x").exists()
