"""Label-efficiency study: how head quality grows with the share of labelled patients, for a
pretrained and a randomly initialised encoder.

For each fraction (12.5 / 25 / 50 / 100 % by default) the training patients are cut to a
nested, seeded subset (:func:`training.data.splits.patient_subset`), heads are trained on each
encoder (linear probe by default: frozen features are computed once per encoder and reused for
every fraction), calibrated on the validation split and scored on the test split. The results
go to ``label_efficiency.csv``, ``label_efficiency.md`` and ``label_efficiency.png`` (one panel
per task, metric against label fraction, one line per encoder, bootstrap intervals shaded).
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ortho_node.model.encoder import OrthoEncoder
from ortho_node.model.findings import HeadKind
from ortho_node.model.heads import HeadSpec
from training.data.corpus import TensorCorpus
from training.data.splits import patient_subset
from training.evaluate import evaluate_predictions
from training.heads.finetune import FinetuneConfig, predict_heads, train_heads
from training.logs import MetricsLog

__all__ = [
    "DEFAULT_FRACTIONS",
    "EfficiencyRow",
    "headline_metric",
    "run_label_efficiency",
    "write_outputs",
]

DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class EfficiencyRow:
    """One (encoder, fraction, task) result."""

    encoder: str
    fraction: float
    task: str
    n_train: int
    metric: str
    value: float
    ci_low: float
    ci_high: float
    accuracy: float
    auroc: float


def headline_metric(spec: HeadSpec) -> str:
    """The metric a task is summarised by: QWK for graded heads, AUROC for binary ones."""
    return "auroc" if spec.kind is HeadKind.BINARY else "qwk"


def run_label_efficiency(
    encoders: Mapping[str, OrthoEncoder],
    *,
    train: TensorCorpus,
    val: TensorCorpus,
    test: TensorCorpus,
    specs: Sequence[HeadSpec],
    config: FinetuneConfig,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    resamples: int = 1000,
    log: MetricsLog | None = None,
    show_progress: bool = False,
) -> list[EfficiencyRow]:
    """Train and score heads for every encoder and label fraction.

    Parameters
    ----------
    encoders : Mapping[str, OrthoEncoder]
        Named encoders, e.g. ``{"pretrained": ..., "random": ...}`` (copied before training).
    train, val, test : TensorCorpus
        Patient-disjoint splits; only ``train`` is subsampled.
    specs : sequence of HeadSpec
        Heads to train.
    config : FinetuneConfig
        Head training (``mode="linear"`` reuses frozen features across fractions).
    fractions : sequence of float
        Label fractions in (0, 1].
    seed : int
        Subset seed (nested subsets).
    resamples : int
        Bootstrap resamples for the intervals.
    """
    if not encoders:
        raise ValueError("encoders must name at least one encoder")
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {fraction}")
    from training.heads.finetune import extract_features

    rows: list[EfficiencyRow] = []
    patients = train.patients()
    for encoder_name, encoder in encoders.items():
        cache = None
        if config.mode == "linear":
            # Frozen features once per encoder; each fraction selects its samples from them.
            cache = extract_features(
                encoder,
                train,
                **config.encoding(),
            )
        for fraction in sorted(fractions):
            chosen = set(patient_subset(patients, fraction=fraction, seed=seed))
            keep = [i for i, s in enumerate(train) if s.patient_id in chosen]
            subset = train.select(keep)
            trained = train_heads(
                copy.deepcopy(encoder),
                subset,
                specs,
                config=config,
                val=val,
                show_progress=show_progress,
                precomputed=[cache[i] for i in keep] if cache is not None else None,
            )
            predictions = predict_heads(
                trained.model,
                test,
                **config.encoding(),
            )
            evaluations = evaluate_predictions(
                predictions, temperatures=trained.temperatures, resamples=resamples, seed=seed
            )
            for task, evaluation in evaluations.items():
                spec = predictions[task].spec
                name = headline_metric(spec)
                headline = evaluation.metrics[name]
                row = EfficiencyRow(
                    encoder=encoder_name,
                    fraction=fraction,
                    task=task,
                    n_train=sum(1 for s in subset if task in s.labels),
                    metric=name,
                    value=headline.value,
                    ci_low=headline.low,
                    ci_high=headline.high,
                    accuracy=evaluation.metrics["accuracy"].value,
                    auroc=evaluation.metrics["auroc"].value,
                )
                rows.append(row)
                if log is not None:
                    log.write("label_efficiency", **row.__dict__)
    return rows


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def write_outputs(
    rows: Sequence[EfficiencyRow], out_dir: str | Path, *, title: str = ""
) -> dict[str, Path]:
    """Write the CSV, the markdown table and the PNG plot; return their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / "label_efficiency.csv",
        "markdown": out_dir / "label_efficiency.md",
        "plot": out_dir / "label_efficiency.png",
    }
    fields = list(EfficiencyRow.__dataclass_fields__)
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.__dict__)
    tasks = list(dict.fromkeys(r.task for r in rows))
    encoders = list(dict.fromkeys(r.encoder for r in rows))
    fractions = sorted({r.fraction for r in rows})
    lines = [f"# Label efficiency{': ' + title if title else ''}", ""]
    for task in tasks:
        metric = next(r.metric for r in rows if r.task == task)
        lines += [f"## {task} ({metric.upper()}, 95% bootstrap CI)", ""]
        lines.append(
            "| encoder | " + " | ".join(f"{f:g} ({f * 100:g} %)" for f in fractions) + " |"
        )
        lines.append("|---|" + "---|" * len(fractions))
        for encoder in encoders:
            cells = []
            for fraction in fractions:
                match = [
                    r for r in rows if (r.task, r.encoder, r.fraction) == (task, encoder, fraction)
                ]
                cells.append(
                    f"{_fmt(match[0].value)} [{_fmt(match[0].ci_low)}, {_fmt(match[0].ci_high)}]"
                    if match
                    else "-"
                )
            lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
        lines.append("")
    paths["markdown"].write_text("\n".join(lines), encoding="utf-8")
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        metric = next(r.metric for r in rows if r.task == task)
        for encoder in encoders:
            points = sorted(
                (r for r in rows if r.task == task and r.encoder == encoder),
                key=lambda r: r.fraction,
            )
            xs = [p.fraction * 100 for p in points]
            axis.plot(xs, [p.value for p in points], marker="o", label=encoder)
            axis.fill_between(
                xs, [p.ci_low for p in points], [p.ci_high for p in points], alpha=0.15
            )
        axis.set_xscale("log", base=2)
        axis.set_xticks([f * 100 for f in fractions], [f"{f * 100:g}" for f in fractions])
        axis.set_xlabel("labelled training patients (%)")
        axis.set_ylabel(metric.upper())
        axis.set_title(task)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title or "label efficiency")
    figure.tight_layout()
    figure.savefig(paths["plot"], dpi=110)
    plt.close(figure)
    return paths


def probe_config(**overrides: object) -> FinetuneConfig:
    """The linear-probe settings used by the study (many cheap epochs on frozen features)."""
    base = FinetuneConfig(
        mode="linear",
        epochs=60,
        batch_size=64,
        set_batch_size=16,
        lr=3e-3,
        weight_decay=1e-3,
        warmup_fraction=0.05,
        keep_best=True,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]
