"""Shared helpers for the training tests: tiny phantom corpora at 64 px (seconds to render)."""

from __future__ import annotations

from training.data.corpus import TensorCorpus
from training.data.loaders import PipelineOptions
from training.data.sources import PhantomCohort, phantom_corpus

TINY_SIZE = 64
MICRO = "ortho_vit_micro_patch16_dinov3"


def tiny_corpus(*, xray_patients: int = 16, mr_patients: int = 6, seed: int = 5,
                first_patient: int = 0, views: tuple[str, ...] = ("AP", "LAT")) -> TensorCorpus:
    """Radiographs (AP + lateral) and short MR series of a few phantom patients at 64 px."""
    cohorts = []
    if xray_patients:
        cohorts.append(PhantomCohort(xray_patients, seed=seed, first_patient_index=first_patient,
                                     xray_views=views, xray_rows=256, xray_columns=256,
                                     xray_pixel_spacing_mm=0.6))
    if mr_patients:
        cohorts.append(PhantomCohort(mr_patients, seed=seed + 1,
                                     first_patient_index=first_patient + 10_000, xray_views=(),
                                     with_mr=True, mr_slices=12))
    return phantom_corpus(cohorts, options=PipelineOptions(image_size=TINY_SIZE, max_slices=6))
