"""Turn a ``--data`` argument into a corpus: a shard folder, a labels CSV, a DICOM folder, or
``phantoms:N[:SEED]`` (N phantom patients rendered in memory: AP + lateral radiographs for all,
a sagittal MR series for every second patient).
"""

from __future__ import annotations

from pathlib import Path

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
    return [
        PhantomCohort(count - with_mr, seed=seed, xray_views=("AP", "LAT")),
        PhantomCohort(
            with_mr, seed=seed + 1, first_patient_index=count, xray_views=("AP",), with_mr=True
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
