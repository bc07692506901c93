"""Turn a ``--data`` argument into a corpus: a shard folder, a labels CSV, a DICOM folder, or
``phantoms:N[:SEED]`` (N phantom patients rendered in memory: AP + lateral radiographs for all,
a sagittal MR series for every second patient).

Phantom patients of ``phantoms:N:SEED`` are numbered from ``SEED * 100 000`` (``PHANTOM-<number>``),
so specs with different seeds never share a patient (a phantom's anatomy follows from its
number, so a shared number would be the same knee in both sets). Specs with the same seed start
from the same patients: ``phantoms:100`` and ``phantoms:50`` overlap, which ``finetune --val``
refuses.
"""

from __future__ import annotations

from pathlib import Path

from ortho_node.phantoms.identity import MAX_PATIENT_INDEX
from training.data.corpus import TensorCorpus
from training.data.loaders import PipelineOptions
from training.data.shards import INDEX_FILE, ShardIndex, read_shards
from training.data.sources import (
    PhantomCohort,
    corpus_from_dicom_folder,
    corpus_from_labels_csv,
    phantom_corpus,
)

__all__ = ["is_shard_folder", "phantom_spec_cohorts", "resolve_corpus"]

_PHANTOM_PREFIX = "phantoms:"

PATIENTS_PER_SEED = 100_000
"""Patient numbers each seed of a ``phantoms:`` spec owns, from ``seed * PATIENTS_PER_SEED``."""
MAX_SPEC_SEED = (MAX_PATIENT_INDEX + 1) // PATIENTS_PER_SEED - 1


def is_shard_folder(spec: str) -> bool:
    """True when ``spec`` is a folder holding a shard index."""
    return (Path(spec) / INDEX_FILE).is_file()


def phantom_spec_cohorts(spec: str) -> list[PhantomCohort]:
    """Cohorts for ``phantoms:N[:SEED]`` (raises ``ValueError`` for a malformed spec)."""
    parts = spec[len(_PHANTOM_PREFIX) :].split(":")
    try:
        count = int(parts[0])
        seed = int(parts[1]) if len(parts) > 1 else 0
    except (ValueError, IndexError) as exc:
        raise ValueError(f"expected phantoms:N or phantoms:N:SEED, got {spec!r}") from exc
    if count < 2 or len(parts) > 2:
        raise ValueError(f"expected phantoms:N[:SEED] with N >= 2, got {spec!r}")
    with_mr = count // 2
    if not 0 <= seed <= MAX_SPEC_SEED:
        raise ValueError(
            f"phantoms:N:SEED takes a SEED in [0, {MAX_SPEC_SEED}] (each seed owns its own "
            f"patient numbers), got {seed}"
        )
    if count + with_mr > PATIENTS_PER_SEED:  # radiograph patients, a gap, then the MR ones
        raise ValueError(
            f"phantoms:{count} needs {count + with_mr} patient numbers; a seed owns "
            f"{PATIENTS_PER_SEED} (use fewer patients)"
        )
    base = seed * PATIENTS_PER_SEED
    return [
        PhantomCohort(
            count - with_mr, seed=seed, first_patient_index=base, xray_views=("AP", "LAT")
        ),
        PhantomCohort(
            with_mr,
            seed=seed + 1,
            first_patient_index=base + count,
            xray_views=("AP",),
            with_mr=True,
        ),
    ]


def resolve_corpus(
    spec: str, *, image_size: int, workers: int = 1, max_slices: int = 16
) -> TensorCorpus:
    """Load or build the corpus ``spec`` names at ``image_size``.

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    ValueError
        If a shard folder has another image size, or the spec is malformed.
    """
    options = PipelineOptions(image_size=image_size, max_slices=max_slices)
    if spec.startswith(_PHANTOM_PREFIX):
        return phantom_corpus(phantom_spec_cohorts(spec), options=options, workers=workers)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {spec}")
    if is_shard_folder(spec):
        index = ShardIndex.read(path)
        if index.image_size != image_size:
            raise ValueError(
                f"{path} holds {index.image_size} px planes; {image_size} px were asked for "
                "(rebuild the shards or change the image size)"
            )
        return read_shards(path)
    if path.suffix.lower() == ".csv":
        return corpus_from_labels_csv(path, options=options, workers=workers)
    return corpus_from_dicom_folder(path, options=options, workers=workers)
