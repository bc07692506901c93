"""Patient-level splits: every sample of a patient lands in the same split.

A patient's place is decided by a hash of ``(seed, patient_id)``, so a split does not depend on
the order of the corpus, and label-fraction subsets are nested (the 12.5 % subset is inside the
25 % one, and so on), as a label-efficiency study needs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from training.data.corpus import TensorCorpus

__all__ = [
    "PatientSplit",
    "check_disjoint_patients",
    "patient_order",
    "patient_subset",
    "split_by_patient",
]


def _rank(seed: int, patient_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{patient_id}".encode()).digest()


def patient_order(patient_ids: Iterable[str], *, seed: int) -> list[str]:
    """Patients in a seed-determined order that ignores the input order."""
    return sorted(set(patient_ids), key=lambda pid: (_rank(seed, pid), pid))


def patient_subset(patient_ids: Iterable[str], *, fraction: float, seed: int) -> list[str]:
    """The first ``ceil(fraction * n)`` patients of :func:`patient_order` (nested in ``fraction``).

    Raises
    ------
    ValueError
        If ``fraction`` is not in (0, 1].
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number, got {type(fraction).__name__}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    ordered = patient_order(patient_ids, seed=seed)
    return ordered[: max(1, math.ceil(fraction * len(ordered)))]


@dataclass(frozen=True)
class PatientSplit:
    """Train / validation / test corpora with disjoint patients (a part may be None if empty)."""

    train: TensorCorpus
    val: TensorCorpus | None
    test: TensorCorpus | None


def split_by_patient(
    corpus: TensorCorpus, *, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> PatientSplit:
    """Split a corpus by patient into train / validation / test.

    Parameters
    ----------
    corpus : TensorCorpus
        What to split.
    fractions : (float, float, float), optional
        Shares of patients (default 70 / 15 / 15); must sum to 1, train > 0.
    seed : int, optional
        Decides which patients go where.

    Raises
    ------
    ValueError
        For bad fractions or a corpus too small to give the train split a patient.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise ValueError(f"fractions must be 3 shares (train > 0), got {tuple(fractions)}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {sum(fractions)}")
    ordered = patient_order(corpus.patients(), seed=seed)
    n = len(ordered)
    n_val = round(fractions[1] * n)
    n_test = round(fractions[2] * n)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"a corpus of {n} patients is too small for fractions {tuple(fractions)}")
    parts = (ordered[:n_train], ordered[n_train : n_train + n_val], ordered[n_train + n_val :])
    val, test = (corpus.for_patients(ids) if ids else None for ids in parts[1:])
    return PatientSplit(train=corpus.for_patients(parts[0]), val=val, test=test)


def check_disjoint_patients(
    train: TensorCorpus,
    val: TensorCorpus,
    *,
    names: tuple[str, str] = ("training data", "validation data"),
) -> None:
    """Refuse two corpora that share a patient (validation on training patients says nothing).

    Raises
    ------
    ValueError
        Naming how many patients are shared and a few of them.
    """
    shared = sorted(set(train.patients()) & set(val.patients()))
    if shared:
        shown = ", ".join(shared[:3]) + (", ..." if len(shared) > 3 else "")
        raise ValueError(
            f"{names[0]} and {names[1]} share {len(shared)} patient(s) ({shown}); validation "
            "needs patients training never saw (phantoms:N:SEED: give each its own SEED)"
        )
