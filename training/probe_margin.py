"""Linear probes on the self-supervised encoder against the same network before pretraining.

``probe_gap`` trains the same linear probe (frozen features, the node's heads) on both encoders
over a patient-level split of a labelled corpus and returns the test metric of each: QWK for
``kl_grade``, AUROC for ``acl``. Run as a script it repeats that over several fresh phantom sets
and probe seeds and prints every figure, which is how the margins asserted by the tests were
chosen::

    python -m training.probe_margin --repeats 4
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from ortho_node.model.encoder import OrthoEncoder
from training.data.corpus import TensorCorpus
from training.data.splits import split_by_patient
from training.encoders import load_encoder
from training.evaluate import evaluate_predictions
from training.heads.finetune import extract_features, heads_for, predict_heads, train_heads
from training.label_efficiency import headline_metric, probe_config

__all__ = ["SSL_ENCODER", "PROBE_TASKS", "probe_gap", "ssl_and_random_encoders"]

SSL_ENCODER = Path(__file__).resolve().parent / "assets" / "ssl_encoder"
"""The shipped self-supervised micro encoder (``ortho-train demo-model --ssl-out``)."""

PROBE_TASKS = ("kl_grade", "acl")


def ssl_and_random_encoders(source: str | Path = SSL_ENCODER) -> dict[str, OrthoEncoder]:
    """The self-supervised encoder and the network it started from (same seed and init recipe).

    The starting point is rebuilt from the seed and LayerScale gain recorded in the encoder
    bundle's build notes (the demo configuration), exactly as pretraining built it.
    """
    from ortho_node.model.manifest import read_manifest
    from training.demo import DEMO_ARCH, RANDOM_LAYERSCALE, DemoConfig

    ssl = load_encoder(source, arch=None, img_size=DemoConfig().image_size)
    manifest = read_manifest(source)
    seed = DemoConfig().seed
    for note in manifest.provenance.import_notes:
        if note.startswith("demo build: "):
            import json

            seed = int(json.loads(note[len("demo build: ") :])["seed"])
    torch.manual_seed(seed)
    random_init = load_encoder(
        None,
        arch=DEMO_ARCH,
        img_size=ssl.vit.patch_embed.img_size[0],
        layerscale_init=RANDOM_LAYERSCALE,
    )
    return {"ssl": ssl, "random": random_init}


def probe_gap(
    corpus: TensorCorpus,
    *,
    seed: int = 0,
    tasks: Sequence[str] = PROBE_TASKS,
    encoders: dict[str, OrthoEncoder] | None = None,
    epochs: int = 60,
) -> dict[str, dict[str, float]]:
    """``{task: {encoder name: test metric}}`` of identical linear probes on each encoder.

    The corpus is split by patient 70 / 30 (seeded); the probe trains on the 70 %, with no
    epoch selection, and is scored on the 30 %.
    """
    encoders = encoders or ssl_and_random_encoders()
    split = split_by_patient(corpus, fractions=(0.7, 0.0, 0.3), seed=seed)
    if split.test is None:
        raise ValueError("the corpus is too small for a test split")
    specs = heads_for(tasks)
    config = probe_config(epochs=epochs, seed=seed, keep_best=False)
    result: dict[str, dict[str, float]] = {task: {} for task in tasks}
    for name, encoder in encoders.items():
        features = extract_features(encoder, split.train)
        trained = train_heads(
            copy.deepcopy(encoder),
            split.train,
            specs,
            config=config,
            show_progress=False,
            precomputed=features,
        )
        evaluations = evaluate_predictions(predict_heads(trained.model, split.test), resamples=0)
        for task, evaluation in evaluations.items():
            spec = next(s for s in specs if s.name == task)
            result[task][name] = evaluation.metrics[headline_metric(spec)].value
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the probe gap over fresh phantom sets and probe seeds (prints every figure)."""
    from training.data.loaders import PipelineOptions
    from training.data.sources import PhantomCohort, phantom_corpus

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--xray", type=int, default=200, help="Radiograph patients per set.")
    parser.add_argument("--mr", type=int, default=200, help="MR patients per set.")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    encoders = ssl_and_random_encoders()
    for repeat in range(args.repeats):
        cohorts = [
            PhantomCohort(
                args.xray, seed=61_000 + repeat, first_patient_index=3_000_000 + 10_000 * repeat
            ),
            PhantomCohort(
                args.mr,
                seed=62_000 + repeat,
                first_patient_index=3_500_000 + 10_000 * repeat,
                xray_views=(),
                with_mr=True,
                mr_slices=12,
                mr_matrix=128,
            ),
        ]
        corpus = phantom_corpus(
            cohorts, options=PipelineOptions(image_size=128), workers=args.workers
        )
        gaps = probe_gap(corpus, seed=repeat, encoders=encoders)
        print(
            f"set {repeat}: "
            + "; ".join(
                f"{task} ssl {v['ssl']:.3f} random {v['random']:.3f} gap {v['ssl'] - v['random']:+.3f}"
                for task, v in gaps.items()
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
