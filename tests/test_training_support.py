"""Shared helpers for the training tests: tiny phantom corpora at 64 px (seconds to render) and
one set of fresh phantom studies shared by the probe and demo-bundle tests (built once)."""

from __future__ import annotations

import functools

from ortho_node.phantoms import PhantomDatasets
from training.data.corpus import TensorCorpus
from training.data.loaders import PipelineOptions
from training.data.sources import PhantomCohort, corpus_from_phantom_studies, phantom_corpus
from training.evaluate import phantom_studies

TINY_SIZE = 64
MICRO = "ortho_vit_micro_patch16_dinov3"


def tiny_corpus(
    *,
    xray_patients: int = 16,
    mr_patients: int = 6,
    seed: int = 5,
    first_patient: int = 0,
    views: tuple[str, ...] = ("AP", "LAT"),
    size: int = TINY_SIZE,
) -> TensorCorpus:
    """Radiographs (AP + lateral) and short MR series of a few phantom patients at ``size`` px."""
    cohorts = []
    if xray_patients:
        cohorts.append(
            PhantomCohort(
                xray_patients,
                seed=seed,
                first_patient_index=first_patient,
                xray_views=views,
                xray_rows=256,
                xray_columns=256,
                xray_pixel_spacing_mm=0.6,
            )
        )
    if mr_patients:
        cohorts.append(
            PhantomCohort(
                mr_patients,
                seed=seed + 1,
                first_patient_index=first_patient + 10_000,
                xray_views=(),
                with_mr=True,
                mr_slices=12,
                mr_matrix=128,
            )
        )
    return phantom_corpus(cohorts, options=PipelineOptions(image_size=size, max_slices=6))


FRESH_XRAY_PATIENTS = 200
FRESH_MR_PATIENTS = 200


@functools.lru_cache(maxsize=1)
def fresh_studies() -> tuple[PhantomDatasets, ...]:
    """Phantom studies no training run used (own seeds, patients from 2 000 000), built once per
    test session: AP radiographs (512 px at 0.3 mm) and small sagittal PD-FS MR series (128 px,
    12 slices: quick to render, and the size the node's own inference tests use)."""
    cohorts = [
        PhantomCohort(FRESH_XRAY_PATIENTS, seed=51_001, first_patient_index=2_000_000),
        PhantomCohort(
            FRESH_MR_PATIENTS,
            seed=51_002,
            first_patient_index=2_100_000,
            xray_views=(),
            with_mr=True,
            mr_slices=12,
            mr_matrix=128,
        ),
    ]
    return tuple(phantom_studies(cohorts))


@functools.lru_cache(maxsize=1)
def fresh_corpus() -> TensorCorpus:
    """:func:`fresh_studies` preprocessed at the demo bundle's input size (128 px)."""
    return corpus_from_phantom_studies(fresh_studies(), options=PipelineOptions(image_size=128))
