"""Deterministic, clearly fake identities for phantom studies: UIDs, patient, study.

UIDs use the ``2.25`` root with a name-based (SHA-1, version 5) UUID, so the same seed and
names always give the same UID and different names never collide in practice. (pydicom's
``generate_uid(prefix=None, ...)`` ignores its entropy sources and is random, so it is not
used here.) Patients are named ``PHANTOM^KNEE^0042``: nobody can mistake them for a person.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from ortho_node.phantoms.seeding import derive_seed, rng_for

# Fixed namespace: changing it would change every phantom UID ever written.
_PHANTOM_NAMESPACE = uuid.UUID("5f0c1d2e-7a8b-5c4d-9e0f-1a2b3c4d5e6f")

MAX_PATIENT_INDEX = 99_999_999


def phantom_uid(*names: object) -> str:
    """Return a deterministic DICOM UID (``2.25.<int>``) for the given names.

    Parameters
    ----------
    *names : object
        What the UID identifies, e.g. ``("study", seed, patient_index)``; ``str()`` of each
        is used.

    Returns
    -------
    str
        A UID of at most 44 characters, valid under PS3.5 section 9.
    """
    if not names:
        raise ValueError("phantom_uid needs at least one name, got none")
    key = "\x1f".join(str(name) for name in names)
    return f"2.25.{uuid.uuid5(_PHANTOM_NAMESPACE, key).int}"


@dataclass(frozen=True)
class PatientIdentity:
    """A synthetic patient: same ``patient_index`` gives the same patient in every study."""

    patient_index: int
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str

    @classmethod
    def from_index(cls, patient_index: int) -> PatientIdentity:
        """Build the patient numbered ``patient_index`` (0 to 99,999,999).

        Raises
        ------
        TypeError
            If ``patient_index`` is not an int.
        ValueError
            If it is out of range.
        """
        if not isinstance(patient_index, int) or isinstance(patient_index, bool):
            raise TypeError(f"patient_index must be an int, got {type(patient_index).__name__}")
        if not 0 <= patient_index <= MAX_PATIENT_INDEX:
            raise ValueError(
                f"patient_index must lie in [0, {MAX_PATIENT_INDEX}], got {patient_index}"
            )
        rng = rng_for(patient_index, "patient")
        birth = dt.date(1945, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 55)))
        return cls(
            patient_index=patient_index,
            patient_name=f"PHANTOM^KNEE^{patient_index:04d}",
            patient_id=f"PHANTOM-{patient_index:08d}",
            birth_date=birth.strftime("%Y%m%d"),
            sex=("F", "M")[int(rng.integers(0, 2))],
        )


@dataclass(frozen=True)
class StudyIdentity:
    """Study-level identifiers and times for one phantom study."""

    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    referring_physician_name: str
    description: str

    @classmethod
    def from_seed(cls, seed: int, *, patient_index: int, description: str) -> StudyIdentity:
        """Build the identity of the study made from ``seed`` for patient ``patient_index``.

        ``description`` is the Study Description (LO, at most 64 characters), e.g. "XR KNEE".
        """
        if not description or len(description) > 64:
            raise ValueError(f"description must be 1-64 characters, got {description!r}")
        rng = rng_for(seed, "study", patient_index)
        day = dt.date(2021, 1, 4) + dt.timedelta(days=int(rng.integers(0, 1400)))
        seconds = int(rng.integers(7 * 3600, 19 * 3600))
        number = derive_seed(seed, "accession", patient_index) % 10**10
        return cls(
            study_instance_uid=phantom_uid("study", seed, patient_index),
            study_date=day.strftime("%Y%m%d"),
            study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
            accession_number=f"PH{number:010d}",
            study_id=f"K{number % 10**8:08d}",
            referring_physician_name="PHANTOM^REFERRER",
            description=description,
        )
