"""Evaluation: head metrics on a corpus, and a bundle evaluated the way the node runs it.

:func:`evaluate_predictions` turns :class:`~training.heads.finetune.HeadPredictions` into
metrics with bootstrap intervals (temperature applied as the manifest will apply it).

:func:`evaluate_bundle_on_phantoms` is the end-to-end check: it loads a bundle with
:func:`ortho_node.model.load_bundle`, renders fresh phantom studies as DICOM datasets, and runs
the node's own steps on them (``PreprocessConfig.from_manifest``; radiographs through
``preprocess_image``; MR through ``survey_series`` / ``select_series`` with the head's plane
preference / ``prepare_series``; features by ``image_features``; heads, including slice pooling;
calibration and decision by ``ortho_node.model.calibration``). Nothing from training touches
the images on the way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ortho_node.model.calibration import probabilities_from_logits
from ortho_node.model.heads import HeadSpec
from ortho_node.phantoms import PhantomDatasets
from training.data.sources import PhantomCohort
from training.heads.finetune import HeadPredictions
from training.metrics import MetricValue, task_metrics
from training.tasks import labels_from_row

__all__ = [
    "TaskEvaluation",
    "evaluate_bundle_on_phantoms",
    "evaluate_bundle_on_studies",
    "phantom_studies",
    "evaluate_predictions",
    "evaluation_markdown",
]


@dataclass(frozen=True)
class TaskEvaluation:
    """Metrics of one head on one evaluation set."""

    task: str
    n: int
    chance_accuracy: float
    """Accuracy of always answering the most frequent class of this set."""
    metrics: Mapping[str, MetricValue]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "task": self.task,
            "n": self.n,
            "chance_accuracy": self.chance_accuracy,
            **{name: value.to_dict() for name, value in self.metrics.items()},
        }


def _evaluate(
    spec: HeadSpec, probabilities: np.ndarray, targets: np.ndarray, *, resamples: int, seed: int
) -> TaskEvaluation:
    counts = np.bincount(targets, minlength=len(spec.labels))
    return TaskEvaluation(
        task=spec.name,
        n=int(targets.size),
        chance_accuracy=float(counts.max() / counts.sum()),
        metrics=task_metrics(spec, probabilities, targets, resamples=resamples, seed=seed),
    )


def evaluate_predictions(
    predictions: Mapping[str, HeadPredictions],
    *,
    temperatures: Mapping[str, float] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, TaskEvaluation]:
    """Metrics per head from logits (divided by the head's fitted temperature first)."""
    temperatures = temperatures or {}
    result = {}
    for name, prediction in predictions.items():
        probabilities = probabilities_from_logits(
            prediction.logits, kind=prediction.spec.kind, temperature=temperatures.get(name, 1.0)
        ).numpy()
        result[name] = _evaluate(
            prediction.spec,
            probabilities,
            prediction.targets.numpy(),
            resamples=resamples,
            seed=seed,
        )
    return result


def evaluate_bundle_on_phantoms(
    bundle_dir: str | Path,
    cohorts: Sequence[PhantomCohort],
    *,
    tasks: Iterable[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, TaskEvaluation]:
    """Run a bundle on fresh phantom studies exactly as the node would, and score it.

    Parameters
    ----------
    bundle_dir : str or Path
        The bundle folder.
    cohorts : sequence of PhantomCohort
        Fresh phantoms (give them a seed and patient range the training never used).
    tasks : iterable of str, optional
        Heads to score (default: every trained head of the bundle).
    resamples, seed :
        Bootstrap settings.
    device : str, optional
        Torch device for the bundle.

    Returns
    -------
    dict
        Head name -> :class:`TaskEvaluation` (heads with no labelled phantom are absent).
    """
    return evaluate_bundle_on_studies(
        bundle_dir,
        phantom_studies(cohorts),
        tasks=tasks,
        resamples=resamples,
        seed=seed,
        device=device,
    )


def phantom_studies(cohorts: Sequence[PhantomCohort]) -> Iterator[PhantomDatasets]:
    """The phantom studies (DICOM datasets in memory, with labels) of some cohorts."""
    from ortho_node.phantoms import build_knee_study

    for cohort in cohorts:
        for case in cohort.cases():
            yield build_knee_study(
                seed=case.seed,
                xrays=case.xrays,
                mr_series=case.mr_series,
                patient_index=case.patient_index,
            )


def evaluate_bundle_on_studies(
    bundle_dir: str | Path,
    studies: Iterable[PhantomDatasets],
    *,
    tasks: Iterable[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, TaskEvaluation]:
    """:func:`evaluate_bundle_on_phantoms` on already built phantom studies."""
    from ortho_node.model import load_bundle
    from ortho_node.model.head_module import image_features
    from ortho_node.model.preprocess import PreprocessConfig, preprocess_image
    from ortho_node.model.series import (
        preference_for_planes,
        prepare_series,
        select_series,
        survey_series,
    )

    bundle = load_bundle(bundle_dir, device=device)
    config = PreprocessConfig.from_manifest(bundle.manifest)
    names = list(tasks) if tasks is not None else list(bundle.reportable_heads)
    heads = {name: bundle.head(name) for name in names}
    collected: dict[str, tuple[list[np.ndarray], list[int]]] = {n: ([], []) for n in names}

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = bundle.encoder(images.to(bundle.device))
            return image_features(out.cls, out.patches).cpu()  # the heads live on the CPU

    for study in studies:
        radiographs = [ds for ds in study.datasets if ds.Modality != "MR"]
        mr = [ds for ds in study.datasets if ds.Modality == "MR"]
        for name, head in heads.items():
            spec = head.spec
            if spec.scope.is_mri and mr:
                candidate = select_series(
                    survey_series(mr), preference=preference_for_planes(spec.scope.planes)
                )
                labels = labels_from_row(study.series_labels[candidate.series_instance_uid])
                if name not in labels:
                    continue
                prepared = prepare_series(candidate, config=config)
                with torch.inference_mode():
                    logits = head.forward_sets(encode(prepared.tensor).unsqueeze(0))
                _collect(collected[name], spec, logits, labels[name])
            elif not spec.scope.is_mri:
                for ds in radiographs:
                    view = str(ds.get("ViewPosition", "")).upper()
                    if spec.scope.views and view not in spec.scope.views:
                        continue
                    labels = labels_from_row(study.series_labels[str(ds.SeriesInstanceUID)])
                    if name not in labels:
                        continue
                    image = preprocess_image(ds, config=config).tensor.unsqueeze(0)
                    with torch.inference_mode():
                        logits = head(encode(image))
                    _collect(collected[name], spec, logits, labels[name])
    result = {}
    for name, (probabilities, targets) in collected.items():
        if targets:
            result[name] = _evaluate(
                heads[name].spec,
                np.stack(probabilities),
                np.asarray(targets),
                resamples=resamples,
                seed=seed,
            )
    return result


def _collect(
    into: tuple[list[np.ndarray], list[int]], spec: HeadSpec, logits: torch.Tensor, target: int
) -> None:
    probabilities = probabilities_from_logits(
        logits.float().cpu(), kind=spec.kind, temperature=spec.temperature
    )
    into[0].append(probabilities[0].numpy())
    into[1].append(int(target))


def evaluation_markdown(evaluations: Mapping[str, TaskEvaluation]) -> str:
    """A markdown table: task, n, accuracy, AUROC, QWK (95 % bootstrap CIs), chance accuracy."""
    lines = [
        "| task | n | accuracy [95% CI] | AUROC [95% CI] | QWK [95% CI] | majority-class accuracy |",
        "|---|---:|---|---|---|---:|",
    ]
    for name, evaluation in evaluations.items():
        qwk = evaluation.metrics.get("qwk")
        lines.append(
            f"| {name} | {evaluation.n} | {evaluation.metrics['accuracy']} | "
            f"{evaluation.metrics['auroc']} | {qwk if qwk is not None else '-'} | "
            f"{evaluation.chance_accuracy:.3f} |"
        )
    return "\n".join(lines) + "\n"
