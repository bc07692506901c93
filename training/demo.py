"""The embedded demo model: a micro DINOv3 ViT pretrained and fine-tuned on phantoms.

:func:`build_demo_model` is what ``ortho-train demo-model --out DIR`` runs. Every step is seeded,
so the same config on the same software gives the same bundle:

1. render phantom cohorts (radiographs AP + lateral, sagittal MR) and preprocess them with the
   node's DICOM pipeline at the bundle's input size;
2. self-supervised DINO pretraining on all images, radiographs and MR slices mixed
   (:mod:`training.pretrain`), unless ``pretrain_steps`` is 0;
3. full fine-tuning of encoder + the four phantom-labelled heads (``kl_grade``, ``oa_present``,
   ``acl``, ``meniscus``) with validation-based epoch choice and temperature calibration;
4. export to a bundle marked synthetic / not for clinical use;
5. evaluation of that bundle, the way the node runs it, on fresh phantoms (other seeds, other
   patients), written into the manifest's provenance notes and ``EVALUATION.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ortho_node.model.encoder import OrthoEncoder
from ortho_node.model.heads import head_spec
from training.data.corpus import TensorCorpus
from training.data.loaders import PipelineOptions
from training.data.shards import read_shards, write_shards
from training.data.sources import PhantomCohort, phantom_corpus
from training.encoders import load_encoder
from training.evaluate import TaskEvaluation, evaluate_bundle_on_phantoms, evaluation_markdown
from training.export import export_bundle, export_encoder_bundle
from training.heads.finetune import FinetuneConfig, heads_for, train_heads
from training.label_efficiency import headline_metric
from training.logs import MetricsLog
from training.tasks import DEMO_TASKS

__all__ = ["DemoConfig", "build_demo_model", "demo_cohorts"]

DEMO_ARCH = "ortho_vit_micro_patch16_dinov3"
RANDOM_LAYERSCALE = 0.1
"""LayerScale start gain of randomly initialised encoders here (see ``set_layerscale``)."""


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and seeds of the demo build (defaults: the shipped bundle).

    Patient ranges: training from 0, validation from 500 000, evaluation from 900 000, each
    with its own cohort seed, so the three sets never share a patient or a random draw.
    """

    image_size: int = 128
    xray_patients: int = 1000
    mr_patients: int = 250
    val_xray_patients: int = 150
    val_mr_patients: int = 60
    eval_xray_patients: int = 250
    eval_mr_patients: int = 100
    pretrain_steps: int = 1200
    pretrain_batch_size: int = 64
    pretrain_crop_size: int = 96
    finetune_epochs: int = 30
    finetune_batch_size: int = 32
    finetune_set_batch_size: int = 8
    finetune_lr: float = 1e-3
    finetune_encoder_lr: float = 5e-4
    seed: int = 20261129
    name: str = "ortho-node-demo-synthetic"
    version: str = "0.1.0"


def demo_cohorts(config: DemoConfig, part: str) -> list[PhantomCohort]:
    """Phantom cohorts of one part: ``"train"``, ``"val"`` or ``"eval"``."""
    base = {"train": 0, "val": 500_000, "eval": 900_000}[part]
    xray_n = {
        "train": config.xray_patients,
        "val": config.val_xray_patients,
        "eval": config.eval_xray_patients,
    }[part]
    mr_n = {
        "train": config.mr_patients,
        "val": config.val_mr_patients,
        "eval": config.eval_mr_patients,
    }[part]
    seed = config.seed + {"train": 1, "val": 2, "eval": 3}[part]
    # Training sees lateral views too (pretraining uses them; the KL heads skip them).
    views = ("AP", "LAT") if part == "train" else ("AP",)
    cohorts = []
    if xray_n:
        cohorts.append(PhantomCohort(xray_n, seed=seed, first_patient_index=base, xray_views=views))
    if mr_n:
        cohorts.append(
            PhantomCohort(
                mr_n,
                seed=seed + 100,
                first_patient_index=base + 200_000,
                xray_views=(),
                with_mr=True,
            )
        )
    return cohorts


def build_demo_model(
    out_dir: str | Path,
    *,
    config: DemoConfig = DemoConfig(),
    workers: int = 1,
    work_dir: str | Path | None = None,
    log: MetricsLog | None = None,
    show_progress: bool = True,
    say: Callable[[str], None] = print,
    overwrite: bool = False,
    ssl_out: str | Path | None = None,
) -> dict[str, TaskEvaluation]:
    """Build, export and evaluate the demo bundle (steps in the module docstring).

    Parameters
    ----------
    out_dir : str or Path
        Bundle folder to write (e.g. ``ortho_node/assets/demo_bundle``).
    config : DemoConfig, optional
        Sizes and seeds.
    workers : int, optional
        Processes rendering phantoms.
    work_dir : str or Path, optional
        Where pretraining checkpoints go (default: a temporary folder).
    log : MetricsLog, optional
        JSON-lines metrics.
    show_progress : bool, optional
        Rich progress bars.
    say : callable, optional
        Receives one-line status messages.
    overwrite : bool, optional
        Replace an existing ``out_dir`` (and ``ssl_out``).
    ssl_out : str or Path, optional
        Also write the self-supervised encoder (before fine-tuning) as an encoder-only bundle
        here (the tests probe it against a random-init encoder).

    Returns
    -------
    dict
        Evaluation per head on the fresh phantoms.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    log = log or MetricsLog(None)
    torch.manual_seed(config.seed)
    options = PipelineOptions(image_size=config.image_size)
    say("rendering training and validation phantoms")
    train = _cached_corpus(config, "train", options, workers, work_dir)
    val = _cached_corpus(config, "val", options, workers, work_dir)
    say(f"train: {len(train)} samples / {train.num_images} images; val: {len(val)} samples")
    encoder = _pretrained_encoder(config, train, work_dir, log, show_progress, say)
    if ssl_out is not None and config.pretrain_steps:
        export_encoder_bundle(
            ssl_out,
            encoder=encoder,
            name=f"{config.name}-ssl",
            version=config.version,
            input_size=config.image_size,
            training_data=(
                f"DINO self-distillation, {config.pretrain_steps} steps, on {train.num_images} "
                "synthetic phantom images (radiographs and MR slices) from ortho_node.phantoms."
            ),
            synthetic=True,
            notes=[f"demo build: {json.dumps(dataclasses.asdict(config), sort_keys=True)}"],
            overwrite=overwrite,
        )
        say(f"wrote the self-supervised encoder to {ssl_out}")
    specs = heads_for(DEMO_TASKS)
    finetune = FinetuneConfig(
        mode="full",
        epochs=config.finetune_epochs,
        batch_size=config.finetune_batch_size,
        set_batch_size=config.finetune_set_batch_size,
        lr=config.finetune_lr,
        encoder_lr=config.finetune_encoder_lr,
        seed=config.seed,
    )
    say("fine-tuning encoder and heads")
    trained = train_heads(
        encoder, train, specs, config=finetune, val=val, log=log, show_progress=show_progress
    )
    heads = dict(trained.model.heads.items())
    notes = [
        f"demo build: {json.dumps(dataclasses.asdict(config), sort_keys=True)}",
        f"fine-tuning: best epoch {trained.best_epoch} of {config.finetune_epochs}; "
        f"temperatures {json.dumps({k: round(v, 4) for k, v in trained.temperatures.items()})}",
    ]
    training_data = (
        f"Synthetic knee phantoms from ortho_node.phantoms only: {len(train)} training samples "
        f"({train.num_images} images: AP and lateral radiographs, sagittal PD-FS MR series), "
        f"{len(val)} validation samples. "
        + (
            f"Encoder: {config.pretrain_steps} steps of DINO self-distillation on the training "
            "images, then fine-tuned with the heads."
            if config.pretrain_steps
            else "Encoder trained from random initialisation with the heads (no pretraining)."
        )
    )
    export_kwargs: dict[str, Any] = dict(
        encoder=trained.model.encoder,
        heads=heads,
        name=config.name,
        version=config.version,
        input_size=config.image_size,
        training_data=training_data,
        synthetic=True,
        temperatures=trained.temperatures,
        train_samples=trained.train_samples,
        description=(
            "Micro DINOv3 ViT (0.5M parameters) with knee X-ray KL grade / OA and knee MRI "
            "ACL / meniscus heads, trained on synthetic phantoms for demonstrations and tests."
        ),
    )
    with tempfile.TemporaryDirectory(prefix="demo-bundle-") as staging:
        draft = export_bundle(Path(staging) / "bundle", notes=notes, **export_kwargs)
        say("evaluating the bundle on fresh phantoms, the way the node runs it")
        evaluations = evaluate_bundle_on_phantoms(
            draft, demo_cohorts(config, "eval"), seed=config.seed
        )
    for name, evaluation in evaluations.items():
        metrics = ", ".join(f"{k} {v}" for k, v in evaluation.metrics.items())
        notes.append(
            f"evaluation on fresh phantoms, {name} (n={evaluation.n}, majority-class accuracy "
            f"{evaluation.chance_accuracy:.3f}): {metrics}"
        )
        log.write("demo_evaluation", **evaluation.to_dict())
    withheld = release_gate(evaluations)
    for name, reason in withheld.items():
        notes.append(f"release gate: {name} withheld (trained: false, never reported): {reason}")
        say(f"release gate: {name} withheld: {reason}")
    export_bundle(out_dir, notes=notes, overwrite=overwrite, withheld=withheld, **export_kwargs)
    (out_dir / "EVALUATION.md").write_text(
        _evaluation_document(config, evaluations, train, val, withheld), encoding="utf-8"
    )
    return evaluations


CHANCE_LEVEL = {"auroc": 0.5, "qwk": 0.0}
"""Headline metric values an uninformative head scores."""


def release_gate(evaluations: Mapping[str, TaskEvaluation]) -> dict[str, str]:
    """Heads to withhold, with the reason: those whose headline metric's 95 % interval on the
    fresh evaluation phantoms does not clear chance (AUROC 0.5, QWK 0). A withheld head ships
    marked ``trained: false``, so the node never shows its output to anyone."""
    withheld: dict[str, str] = {}
    for name, evaluation in evaluations.items():
        metric = headline_metric(head_spec(name))
        value = evaluation.metrics.get(metric)
        if value is None:
            continue
        if value.low <= CHANCE_LEVEL[metric]:
            withheld[name] = (
                f"{metric} {value.value:.3f} [{value.low:.3f}, {value.high:.3f}] on {evaluation.n} "
                f"fresh phantoms does not clear chance ({CHANCE_LEVEL[metric]})"
            )
    return withheld


def _cached_corpus(
    config: DemoConfig,
    part: str,
    options: PipelineOptions,
    workers: int,
    work_dir: str | Path | None,
) -> TensorCorpus:
    # Rendering is the slow part of a rebuild; with a work folder, a part is rendered once per
    # (cohorts, pipeline options) and read back from shards afterwards.
    cohorts = demo_cohorts(config, part)
    if work_dir is None:
        return phantom_corpus(cohorts, options=options, workers=workers)
    key = hashlib.sha256(
        json.dumps(
            [[dataclasses.asdict(c) for c in cohorts], dataclasses.asdict(options)], sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    folder = Path(work_dir) / f"corpus-{part}-{key}"
    if (folder / "index.json").is_file():
        return read_shards(folder)
    corpus = phantom_corpus(cohorts, options=options, workers=workers)
    write_shards(corpus, folder, samples_per_shard=512)
    return corpus


def _pretrained_encoder(
    config: DemoConfig,
    train: TensorCorpus,
    work_dir: str | Path | None,
    log: MetricsLog,
    show_progress: bool,
    say: Callable[[str], None],
) -> OrthoEncoder:
    if not config.pretrain_steps:
        return load_encoder(
            None, arch=DEMO_ARCH, img_size=config.image_size, layerscale_init=RANDOM_LAYERSCALE
        )
    from training.pretrain.config import PretrainConfig
    from training.pretrain.trainer import run_pretraining

    pretrain = PretrainConfig.for_small_images(
        arch=DEMO_ARCH,
        image_size=config.pretrain_crop_size,
        steps=config.pretrain_steps,
        batch_size=config.pretrain_batch_size,
        seed=config.seed,
    )
    say(f"DINO pretraining for {config.pretrain_steps} steps on {train.num_images} images")
    temporary = None
    if work_dir is None:
        temporary = tempfile.mkdtemp(prefix="demo-pretrain-")
        work_dir = temporary
    try:
        # Checkpoints in the work folder: an interrupted build resumes exactly where it stopped.
        result = run_pretraining(
            train,
            config=pretrain,
            out_dir=Path(work_dir) / "pretrain",
            log=log,
            show_progress=show_progress,
        )
        return result.teacher_encoder()
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def _evaluation_document(
    config: DemoConfig,
    evaluations: dict[str, TaskEvaluation],
    train: TensorCorpus,
    val: TensorCorpus,
    withheld: Mapping[str, str],
) -> str:
    return (
        f"# {config.name} {config.version}: evaluation on fresh phantoms\n\n"
        "**Synthetic demo model - not for clinical use.** Trained and evaluated only on "
        "computer-generated knee phantoms (`ortho_node.phantoms`); these figures say nothing "
        "about real patients.\n\n"
        f"Built by `ortho-train demo-model` (input {config.image_size} px, "
        f"{config.pretrain_steps} DINO pretraining steps, {config.finetune_epochs} fine-tuning "
        f"epochs; {len(train)} training / {len(val)} validation samples).\n\n"
        f"Evaluation set: {config.eval_xray_patients} patients with an AP knee radiograph and "
        f"{config.eval_mr_patients} patients with a sagittal PD-FS knee MR series, rendered with "
        "seeds and patient numbers the training never used, run through the node's own "
        "preprocessing, series selection, encoder, heads and calibration "
        "(`training.evaluate.evaluate_bundle_on_phantoms`). 95 % percentile-bootstrap intervals "
        "(1000 resamples).\n\n" + evaluation_markdown(evaluations) + _withheld_markdown(withheld)
    )


def _withheld_markdown(withheld: Mapping[str, str]) -> str:
    if not withheld:
        return ""
    lines = "".join(f"- **{name}**: {reason}.\n" for name, reason in sorted(withheld.items()))
    return (
        "\n## Withheld heads\n\nThe release gate (`training.demo.release_gate`) withholds a head whose "
        "interval does not clear chance: it ships marked `trained: false`, and the node never "
        "reports it.\n\n" + lines
    )


QUICK_DEMO = DemoConfig(
    image_size=64,
    pretrain_crop_size=64,
    xray_patients=40,
    mr_patients=16,
    val_xray_patients=12,
    val_mr_patients=8,
    eval_xray_patients=20,
    eval_mr_patients=10,
    pretrain_steps=4,
    pretrain_batch_size=16,
    finetune_epochs=2,
    name="ortho-node-demo-quick",
)
"""A tiny build for smoke tests (minutes on a CPU); far too small to ship."""
