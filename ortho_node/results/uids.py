"""Deterministic UIDs for result objects, and references to a previous result version.

Every UID a result object carries (series and SOP instance UIDs of the SR, each Secondary
Capture and the Key Object Selection; tracking UIDs of the SR measurement groups) is a pure
function of the study, the model bundle (device UID and version), the kind of object, a key
within that kind and the result revision. A retried job therefore rebuilds objects with the
*same* UIDs, and the PACS sees a re-delivery rather than a duplicate. A re-run after late images
passes ``revision + 1``: series and instance UIDs change, and the new SR names its predecessor
in the Predecessor Documents Sequence.

Tracking UIDs (TID 4108) do not depend on the revision: they identify *the same finding* (task
and side) across versions of the report, which is what tracking identifiers are for.

UIDs are derived as ``2.25.<uuid5>`` (ISO/IEC 9834-8 name-based UUIDs, which need no registered
root) or, when an organisation root ``prefix`` is configured, with
:func:`pydicom.uid.generate_uid` and the same name as entropy.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import RE_VALID_UID, UID, generate_uid

from ortho_node.model.findings import StudyFindings

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "ortho-node.results")
_SEPARATOR = "\x1f"  # unit separator: the parts of a name can never run into each other
_PREFIX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")


class ResultKind(str, enum.Enum):
    """The kinds of result object ortho-node builds."""

    SR = "sr"
    """Comprehensive 3D SR, TID 1500 measurement report."""

    SC = "sc"
    """Secondary Capture image with burned-in findings and heatmap."""

    KO = "ko"
    """Key Object Selection document."""


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a syntactically valid DICOM UID (PS3.5 9.1)."""
    return isinstance(value, str) and len(value) <= 64 and re.match(RE_VALID_UID, value) is not None


def derive_uid(*parts: str, prefix: str | None = None) -> UID:
    """A UID that depends only on ``parts`` (and ``prefix``).

    Parameters
    ----------
    *parts: str
        The name of the object; joined with a separator that cannot occur in a UID or a kind.
    prefix: str | None, optional
        Organisation UID root ending in ``"."`` (at most 54 characters); ``None`` derives a
        ``2.25.`` UUID-based UID.

    Returns
    -------
    pydicom.uid.UID
        A valid UID of at most 64 characters.
    """
    name = _SEPARATOR.join(parts)
    if prefix is None:
        return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")
    return generate_uid(prefix=prefix, entropy_srcs=[name])


@dataclass(frozen=True)
class PredecessorRef:
    """The identifiers of the previous version of an SR, for its Predecessor Documents Sequence.

    Parameters
    ----------
    study_instance_uid: str
        Study of the predecessor (must be the study of the new SR).
    series_instance_uid: str
        Series of the predecessor SR.
    sop_instance_uid: str
        SOP Instance UID of the predecessor SR.
    sop_class_uid: str, optional
        SOP Class UID of the predecessor (default Comprehensive 3D SR Storage).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = COMPREHENSIVE_3D_SR

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "sop_class_uid"):
            value = getattr(self, name)
            if not is_valid_uid(value):
                raise ValueError(f"PredecessorRef.{name} must be a valid DICOM UID, got {value!r}")

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> "PredecessorRef":
        """The reference to an existing SR dataset (e.g. the previous result read back)."""
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be a pydicom Dataset, got {type(dataset).__name__}")
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if k not in dataset]
        if missing:
            raise ValueError(f"dataset lacks {', '.join(missing)}; cannot reference it as a predecessor")
        return cls(
            study_instance_uid=str(dataset.StudyInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            sop_class_uid=str(dataset.SOPClassUID),
        )

    def as_dataset(self) -> Dataset:
        """A header-only dataset with the four UIDs, as highdicom's ``previous_versions=`` reads them.

        highdicom groups these into the Predecessor Documents Sequence as
        Study Instance UID -> Referenced Series Sequence -> Referenced SOP Sequence.
        """
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


@dataclass(frozen=True)
class ResultUIDs:
    """All UIDs of one result version of one study, derived deterministically.

    Parameters
    ----------
    study_instance_uid: str
        The study the results belong to.
    device_uid: str
        Device UID of the model bundle version (``ModelIdentity.device_uid``).
    model_version: str
        Model bundle version (``ModelIdentity.version``).
    revision: int, optional
        Result version of this study with this model, 0 for the first; each revision gets new
        series and instance UIDs.
    prefix: str | None, optional
        Organisation UID root ending in ``"."``; ``None`` for ``2.25.`` UUID-derived UIDs.
    """

    study_instance_uid: str
    device_uid: str
    model_version: str
    revision: int = 0
    prefix: str | None = None

    def __post_init__(self) -> None:
        if not is_valid_uid(self.study_instance_uid):
            raise ValueError(f"study_instance_uid must be a valid DICOM UID, got {self.study_instance_uid!r}")
        if not is_valid_uid(self.device_uid):
            raise ValueError(f"device_uid must be a valid DICOM UID, got {self.device_uid!r}")
        if not isinstance(self.model_version, str) or not self.model_version:
            raise ValueError(f"model_version must be a non-empty string, got {self.model_version!r}")
        if isinstance(self.revision, bool) or not isinstance(self.revision, int):
            raise TypeError(f"revision must be an int, got {type(self.revision).__name__}")
        if self.revision < 0:
            raise ValueError(f"revision must be >= 0, got {self.revision}")
        if self.prefix is not None:
            if not isinstance(self.prefix, str) or not _PREFIX.match(self.prefix) or len(self.prefix) > 54:
                raise ValueError(
                    f"prefix must be a UID root of at most 54 characters ending in '.', got {self.prefix!r}"
                )

    @classmethod
    def for_findings(cls, findings: StudyFindings, *, revision: int = 0, prefix: str | None = None) -> "ResultUIDs":
        """The UIDs for the results of ``findings`` (its study and model)."""
        if not isinstance(findings, StudyFindings):
            raise TypeError(f"findings must be a StudyFindings, got {type(findings).__name__}")
        return cls(
            study_instance_uid=findings.study_instance_uid,
            device_uid=findings.model.device_uid,
            model_version=findings.model.version,
            revision=revision,
            prefix=prefix,
        )

    def _uid(self, *parts: str, versioned: bool = True) -> UID:
        base = ["ortho-node", self.study_instance_uid, self.device_uid, self.model_version]
        if versioned:
            base.append(f"rev{self.revision}")
        return derive_uid(*base, *parts, prefix=self.prefix)

    def series(self, kind: ResultKind) -> UID:
        """Series Instance UID of the series holding objects of ``kind``."""
        return self._uid("series", ResultKind(kind).value)

    def instance(self, kind: ResultKind, key: str = "") -> UID:
        """SOP Instance UID of the object of ``kind`` identified by ``key`` (e.g. a source image UID)."""
        return self._uid("instance", ResultKind(kind).value, key)

    def tracking(self, *key: str) -> UID:
        """Tracking Unique Identifier (TID 4108) of a finding; the same in every revision."""
        return self._uid("tracking", *key, versioned=False)
