"""``ortho-train`` (also ``python -m training``): phantoms, pretrain, finetune, evaluate,
label-efficiency, export, demo-model.

Commands parse options and call the package; torch loads when a command runs. Errors a user
can fix (missing file, bad option, checkpoint made with other settings) print one line and exit
with status 1. ``pretrain`` also runs under ``torchrun`` (one process per GPU or CPU slot):
``torchrun --nproc_per_node=2 -m training pretrain ...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:  # torch loads only when a command runs
    from training.heads.finetune import TrainedHeads
    from training.heads.store import SavedHeads

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Train ortho-node models: phantom data, DINO pretraining, task heads, bundles.",
)
console = Console()
err_console = Console(stderr=True)

DEFAULT_ARCH = "ortho_vit_micro_patch16_dinov3"
_DATA_HELP = "Shard folder, labels CSV (DICOM or image files), DICOM folder, or phantoms:N[:SEED]."


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code=1)


def _say(message: str) -> None:
    console.print(escape(message), highlight=False)


def _tasks(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)


def _synthetic_encoder(source: Optional[str]) -> bool:
    # A bundle records whether its weights came from phantoms; fine-tuning keeps that label.
    if source is None or not (Path(source) / "manifest.json").is_file():
        return False
    from ortho_node.model.manifest import read_manifest

    return read_manifest(source).provenance.synthetic


def _report_heads(trained: TrainedHeads) -> None:
    for name in trained.unlabelled():
        _warn(
            f"head {name!r} saw no training label: it keeps its initial weights, and export "
            "marks it trained: false (the node never reports it)"
        )
    for name, count in trained.val_samples.items():
        if trained.train_samples.get(name) and not count:
            _warn(f"head {name!r} has no validation sample: its temperature is not calibrated")
    if trained.synthetic:
        _say("training data holds synthetic phantoms: export labels the bundle synthetic")


@app.command("phantoms")
def phantoms_command(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write."),
    patients: int = typer.Option(100, "--patients", help="Number of phantom patients."),
    seed: int = typer.Option(0, "--seed", help="Cohort seed."),
    first_patient: int = typer.Option(0, "--first-patient", help="First patient number."),
    views: str = typer.Option("AP", "--views", help="Radiograph views, comma-separated (AP,LAT)."),
    with_mr: bool = typer.Option(False, "--with-mr", help="Add a sagittal MR series per knee."),
    shards: Optional[int] = typer.Option(
        None, "--shards", help="Write preprocessed shards at this image size instead of DICOM."
    ),
    workers: int = typer.Option(1, "--workers", help="Rendering processes (shards only)."),
) -> None:
    """Write a labelled phantom cohort: DICOM studies + labels.csv, or preprocessed shards."""
    try:
        if shards is None:
            from ortho_node.phantoms import write_phantom_cohort

            csv_path = write_phantom_cohort(
                out,
                patients,
                seed=seed,
                xray_views=tuple(_tasks(views)),
                with_mr=with_mr,
                first_patient_index=first_patient,
            )
            _say(f"wrote {patients} phantom studies and {csv_path}")
            return
        from training.data.loaders import PipelineOptions
        from training.data.shards import write_shards
        from training.data.sources import PhantomCohort, phantom_corpus

        corpus = phantom_corpus(
            [
                PhantomCohort(
                    patients,
                    seed=seed,
                    first_patient_index=first_patient,
                    xray_views=tuple(_tasks(views)),
                    with_mr=with_mr,
                )
            ],
            options=PipelineOptions(image_size=shards),
            workers=workers,
        )
        index = write_shards(corpus, out, samples_per_shard=256)
        _say(
            f"wrote {len(corpus)} samples ({index.num_images} images) "
            f"in {len(index.shards)} shards to {out}"
        )
    except (OSError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from exc


@app.command("pretrain")
def pretrain_command(
    data: str = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (checkpoints, metrics)."),
    preset: str = typer.Option(
        "small",
        "--preset",
        help="'recipe' (OrthoFoundation: 224/98 px, 65,536 prototypes) or "
        "'small' (the recipe scaled to --image-size, 4096 prototypes).",
    ),
    arch: str = typer.Option(DEFAULT_ARCH, "--arch", help="Encoder architecture."),
    init: Optional[str] = typer.Option(
        None,
        "--init",
        help="Start from a DINOv3/OrthoFoundation checkpoint, bundle or pretrain checkpoint.",
    ),
    image_size: int = typer.Option(128, "--image-size", help="Plane size of the corpus."),
    crop_size: Optional[int] = typer.Option(
        None, "--crop-size", help="Global crop size (default: --image-size)."
    ),
    layerscale_init: Optional[float] = typer.Option(
        None, "--layerscale-init", help="Random init: LayerScale start gain (small preset: 0.1)."
    ),
    steps: int = typer.Option(1000, "--steps", help="Optimisation steps."),
    batch_size: int = typer.Option(64, "--batch-size", help="Global batch (all processes)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    koleo: Optional[float] = typer.Option(
        None, "--koleo", help="KoLeo loss weight (small preset: 0.1, recipe: 0)."
    ),
    gram: float = typer.Option(0.0, "--gram", help="Gram anchoring loss weight."),
    precision: str = typer.Option("auto", "--precision", help="auto, bf16 or fp32."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    workers: int = typer.Option(0, "--workers", help="DataLoader workers making crops."),
    render_workers: int = typer.Option(
        1,
        "--render-workers",
        help="Processes building the corpus.",
    ),
    stream: bool = typer.Option(
        False,
        "--stream",
        help="Stream a shard folder instead of loading it.",
    ),
    checkpoint_every: int = typer.Option(
        500,
        "--checkpoint-every",
        help="Steps between checkpoints.",
    ),
    resume: bool = typer.Option(
        True,
        "--resume/--no-resume",
        help="Continue from out/checkpoint-last.pt.",
    ),
    stop_at: Optional[int] = typer.Option(
        None,
        "--stop-at",
        help="Stop after this step (schedules span --steps).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Self-supervised DINO pretraining (one process or torchrun DDP)."""
    from training.logs import MetricsLog
    from training.pretrain.config import PretrainConfig
    from training.pretrain.distributed import shutdown_distributed
    from training.pretrain.trainer import run_pretraining

    try:
        optional = {"lr": lr, "koleo_weight": koleo, "layerscale_init": layerscale_init}
        overrides = {k: v for k, v in optional.items() if v is not None}
        common = dict(
            arch=arch,
            init=init,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            precision=precision,
            device=device,
            gram_weight=gram,
            num_workers=workers,
            checkpoint_every=checkpoint_every,
            **overrides,
        )
        if preset == "small":
            config = PretrainConfig.for_small_images(
                image_size=crop_size or image_size, **common  # type: ignore[arg-type]
            )
        elif preset == "recipe":
            config = PretrainConfig(
                global_crop_size=crop_size or image_size, **common  # type: ignore[arg-type]
            )
        else:
            raise ValueError(f"--preset must be 'small' or 'recipe', got {preset!r}")
        from training.data.resolve import is_shard_folder, resolve_corpus

        if stream:
            if not is_shard_folder(data):
                raise ValueError(
                    "--stream needs a shard folder (write one with ortho-train phantoms --shards)"
                )
            source: object = data
        else:
            source = resolve_corpus(data, image_size=image_size, workers=render_workers)
        result = run_pretraining(
            source,  # type: ignore[arg-type]
            config=config,
            out_dir=out,
            resume=resume,
            stop_at_step=stop_at,
            log=MetricsLog(out / "metrics.jsonl"),
            show_progress=progress,
        )
        if result.losses:
            first, last = result.losses[0], result.losses[-1]
            _say(f"pretrained to step {result.step}: loss {first:.4f} -> {last:.4f}")
    except (OSError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from exc
    finally:
        shutdown_distributed()


@app.command("finetune")
def finetune_command(
    data: str = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (heads.pt, metrics.jsonl)."),
    val: Optional[str] = typer.Option(
        None,
        "--val",
        help="Validation data (default: 20 % of patients).",
    ),
    encoder: Optional[str] = typer.Option(
        None,
        "--encoder",
        help="Pretrain checkpoint, bundle or checkpoint (default: random init).",
    ),
    arch: str = typer.Option(DEFAULT_ARCH, "--arch", help="Architecture for random init."),
    image_size: int = typer.Option(128, "--image-size", help="Input size."),
    tasks: str = typer.Option(
        "kl_grade,oa_present,acl,meniscus",
        "--tasks",
        help="Heads to train.",
    ),
    mode: str = typer.Option("full", "--mode", help="linear (frozen encoder) or full."),
    epochs: int = typer.Option(20, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    set_batch_size: int = typer.Option(8, "--set-batch-size", help="MR series per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Head learning rate."),
    encoder_lr: float = typer.Option(
        5e-4,
        "--encoder-lr",
        help="Encoder learning rate (full mode).",
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    precision: str = typer.Option("auto", "--precision"),
    render_workers: int = typer.Option(1, "--render-workers"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train task heads (linear probe or full fine-tune), calibrated on validation patients."""
    from training.data.resolve import resolve_corpus
    from training.data.splits import check_disjoint_patients, split_by_patient
    from training.encoders import load_encoder
    from training.evaluate import evaluate_predictions, evaluation_markdown
    from training.heads.finetune import FinetuneConfig, heads_for, predict_heads, train_heads
    from training.heads.store import save_heads
    from training.logs import MetricsLog

    try:
        corpus = resolve_corpus(data, image_size=image_size, workers=render_workers)
        if val is None:
            split = split_by_patient(corpus, fractions=(0.8, 0.2, 0.0), seed=seed)
            train_part, val_part = split.train, split.val
        else:
            train_part = corpus
            val_part = resolve_corpus(val, image_size=image_size, workers=render_workers)
            check_disjoint_patients(train_part, val_part, names=("--data", "--val"))
        model_encoder = load_encoder(encoder, arch=None if encoder else arch, img_size=image_size)
        config = FinetuneConfig(
            mode=mode,
            epochs=epochs,
            batch_size=batch_size,
            set_batch_size=set_batch_size,
            lr=lr,
            encoder_lr=encoder_lr,
            seed=seed,
            device=device,
            precision=precision,
        )
        log = MetricsLog(out / "metrics.jsonl")
        trained = train_heads(
            model_encoder,
            train_part,
            heads_for(_tasks(tasks)),
            config=config,
            val=val_part,
            log=log,
            show_progress=progress,
        )
        trained.synthetic = trained.synthetic or _synthetic_encoder(encoder)
        _report_heads(trained)
        path = save_heads(out / "heads.pt", trained, image_size=image_size)
        if val_part is not None:
            evaluations = evaluate_predictions(
                predict_heads(trained.model, val_part), temperatures=trained.temperatures
            )
            table = evaluation_markdown(evaluations)
            (out / "validation.md").write_text(table, encoding="utf-8")
            console.print(table)
        _say(f"wrote {path}")
    except (OSError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from exc


@app.command("evaluate")
def evaluate_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    phantoms: int = typer.Option(
        0,
        "--phantoms",
        help="Evaluate on this many fresh phantom patients per modality, the node's way.",
    ),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help="Or a labelled corpus (" + _DATA_HELP + ")",
    ),
    seed: int = typer.Option(987654, "--seed", help="Phantom seed (use one training never used)."),
    first_patient: int = typer.Option(
        990000,
        "--first-patient",
        help="First phantom patient number.",
    ),
    tasks: Optional[str] = typer.Option(
        None,
        "--tasks",
        help="Heads to score (default: trained heads).",
    ),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples."),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        help="Write evaluation.json and evaluation.md here.",
    ),
) -> None:
    """Score a bundle's heads (accuracy, AUROC, QWK with bootstrap 95 % CIs)."""
    from training.evaluate import evaluate_bundle_on_phantoms, evaluation_markdown

    try:
        if phantoms:
            from training.data.sources import PhantomCohort

            cohorts = [
                PhantomCohort(phantoms, seed=seed, first_patient_index=first_patient),
                PhantomCohort(
                    phantoms,
                    seed=seed + 1,
                    first_patient_index=first_patient + phantoms,
                    xray_views=(),
                    with_mr=True,
                ),
            ]
            evaluations = evaluate_bundle_on_phantoms(
                bundle, cohorts, tasks=_tasks(tasks) if tasks else None, resamples=resamples
            )
        elif data is not None:
            evaluations = _evaluate_bundle_on_corpus(bundle, data, tasks, resamples)
        else:
            raise ValueError("give --phantoms N or --data")
    except (OSError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from exc
    table = evaluation_markdown(evaluations)
    console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.md").write_text(table, encoding="utf-8")
        (out / "evaluation.json").write_text(
            json.dumps({k: v.to_dict() for k, v in evaluations.items()}, indent=2), encoding="utf-8"
        )


def _evaluate_bundle_on_corpus(
    bundle: Path, data: str, tasks: Optional[str], resamples: int
) -> dict:
    from ortho_node.model import load_bundle
    from training.data.resolve import resolve_corpus
    from training.evaluate import evaluate_predictions
    from training.heads.finetune import predict_heads
    from training.heads.model import HeadedEncoder

    loaded = load_bundle(bundle)
    names = _tasks(tasks) if tasks else list(loaded.reportable_heads)
    model = HeadedEncoder(loaded.encoder, [loaded.heads[n].spec for n in names])
    for name in names:
        model.heads[name].load_state_dict(loaded.heads[name].state_dict())
    corpus = resolve_corpus(data, image_size=loaded.manifest.input_size[0])
    predictions = predict_heads(model, corpus, mean=loaded.manifest.mean, std=loaded.manifest.std)
    temperatures = {n: loaded.heads[n].spec.temperature for n in names}
    return evaluate_predictions(predictions, temperatures=temperatures, resamples=resamples)


@app.command("label-efficiency")
def label_efficiency_command(
    data: str = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the CSV, markdown and PNG."),
    pretrained: str = typer.Option(
        ...,
        "--pretrained",
        help="Pretrained encoder (pretrain checkpoint, bundle, checkpoint).",
    ),
    arch: Optional[str] = typer.Option(
        None,
        "--arch",
        help="Architecture (default: the pretrained one's).",
    ),
    image_size: int = typer.Option(128, "--image-size"),
    tasks: str = typer.Option("kl_grade,oa_present,acl,meniscus", "--tasks"),
    fractions: str = typer.Option("0.125,0.25,0.5,1.0", "--fractions"),
    mode: str = typer.Option("linear", "--mode", help="linear (frozen features) or full."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    resamples: int = typer.Option(1000, "--resamples"),
    render_workers: int = typer.Option(1, "--render-workers"),
) -> None:
    """Heads at 12.5/25/50/100 % labels for the pretrained and a random-init encoder."""
    from dataclasses import replace

    from ortho_node.model.encoder import build_encoder
    from training.data.resolve import resolve_corpus
    from training.data.splits import split_by_patient
    from training.encoders import load_encoder
    from training.heads.finetune import heads_for
    from training.label_efficiency import probe_config, run_label_efficiency, write_outputs
    from training.logs import MetricsLog

    try:
        corpus = resolve_corpus(data, image_size=image_size, workers=render_workers)
        split = split_by_patient(corpus, fractions=(0.6, 0.2, 0.2), seed=seed)
        if split.val is None or split.test is None:
            raise ValueError("the data set is too small for train / validation / test patients")
        ssl = load_encoder(pretrained, arch=arch, img_size=image_size)
        import torch

        torch.manual_seed(seed)
        random_init = build_encoder(ssl.arch, img_size=image_size)
        config = probe_config(mode=mode, seed=seed)
        if epochs is not None:
            config = replace(config, epochs=epochs)
        rows = run_label_efficiency(
            {"pretrained": ssl, "random init": random_init},
            train=split.train,
            val=split.val,
            test=split.test,
            specs=heads_for(_tasks(tasks)),
            config=config,
            fractions=[float(f) for f in _tasks(fractions)],
            seed=seed,
            resamples=resamples,
            log=MetricsLog(out / "metrics.jsonl"),
        )
        paths = write_outputs(rows, out, title=f"{ssl.arch}, {mode} heads")
    except (OSError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from exc
    console.print(paths["markdown"].read_text(encoding="utf-8"))
    _say(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command("export")
def export_command(
    heads: Path = typer.Option(..., "--heads", help="heads.pt written by ortho-train finetune."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to create."),
    name: str = typer.Option(..., "--name", help="Model name (goes into every result)."),
    version: str = typer.Option("0.1.0", "--version"),
    training_data: str = typer.Option(
        ...,
        "--training-data",
        help="What the model was trained on.",
    ),
    synthetic: Optional[bool] = typer.Option(
        None,
        "--synthetic/--no-synthetic",
        help="Trained on synthetic data (labelled not for clinical use). Heads that finetune "
        "recorded as phantom-trained are always synthetic; --no-synthetic is refused for them.",
    ),
    license_text: str = typer.Option("Apache-2.0", "--license"),
    include_untrained: bool = typer.Option(
        False,
        "--include-untrained",
        help="Add all other registered heads, marked trained: false.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing folder."),
) -> None:
    """Export trained heads + encoder as a model bundle the node loads."""
    from ortho_node.model.bundle import verify_bundle
    from training.export import export_saved_heads, resolve_synthetic
    from training.heads.store import load_heads

    try:
        saved = load_heads(heads)
        resolve_synthetic(saved.synthetic, synthetic)  # refuse before any warning
        _warn_export(saved, synthetic)
        path = export_saved_heads(
            out,
            saved,
            synthetic=synthetic,
            name=name,
            version=version,
            training_data=training_data,
            include_untrained=include_untrained,
            license=license_text,
            overwrite=force,
        )
    except (OSError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from exc
    report = verify_bundle(path)
    console.print(escape(report.describe()), highlight=False)
    if not report.ok:
        raise typer.Exit(code=1)


def _warn_export(saved: SavedHeads, synthetic: Optional[bool]) -> None:
    # Version 1 heads files recorded neither sample counts nor data origin: say what is assumed.
    from training.export import unlabelled_heads

    if saved.train_samples is None:
        _warn(
            f"heads file version {saved.version} does not record which heads saw training "
            "labels: every head is exported trained: true (re-run finetune to check)"
        )
    if saved.synthetic is None and synthetic is None:
        _warn(
            f"heads file version {saved.version} does not record whether its data was "
            "synthetic: exported as not synthetic (pass --synthetic if it was trained on phantoms)"
        )
    elif saved.synthetic:
        _say("heads trained on synthetic phantoms: the bundle is labelled synthetic")
    for name in unlabelled_heads(saved.train_samples):
        _warn(f"head {name!r} saw no training label: exported trained: false (never reported)")


@app.command("demo-model")
def demo_model_command(
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Bundle folder (e.g. ortho_node/assets/demo_bundle).",
    ),
    work_dir: Optional[Path] = typer.Option(
        None,
        "--work-dir",
        help="Cache for rendered phantoms and checkpoints.",
    ),
    workers: int = typer.Option(2, "--workers", help="Phantom rendering processes."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="A tiny build (minutes; for smoke tests, not for shipping).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle folder."),
    ssl_out: Optional[Path] = typer.Option(
        None, "--ssl-out", help="Also write the self-supervised encoder (no heads) here."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Build the synthetic demo bundle: phantoms -> pretrain -> fine-tune -> export -> evaluate."""
    from training.demo import DemoConfig, QUICK_DEMO, build_demo_model
    from training.evaluate import evaluation_markdown
    from training.logs import MetricsLog

    config = QUICK_DEMO if quick else DemoConfig()
    try:
        evaluations = build_demo_model(
            out,
            config=config,
            workers=workers,
            work_dir=work_dir,
            log=MetricsLog((work_dir or out.parent) / f"{out.name}-build.jsonl"),
            show_progress=progress,
            say=_say,
            overwrite=force,
            ssl_out=ssl_out,
        )
    except (OSError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from exc
    console.print(evaluation_markdown(evaluations))
    _say(f"wrote {out}")


def main() -> None:
    """Console-script entry point."""
    app()
