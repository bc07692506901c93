"""The ingest entry point shared by every way data comes in (DIMSE C-STORE, STOW-RS, import).

``receive`` parses the header, checks it against what the sender declared, stores the Part 10
file durably, records it in the index, and only then returns. The caller acknowledges the
instance (0x0000 / HTTP 200) only on a normal return; every failure is a typed exception that
the caller maps to a precise status.
"""

from __future__ import annotations

import enum
import io
import logging
from dataclasses import dataclass
from typing import BinaryIO

from ortho_node.ingest.header import InstanceHeader, InvalidDatasetError, parse_header
from ortho_node.ingest.indexer import HierarchyConflictError, Indexer
from ortho_node.ingest.part10 import part10_header
from ortho_node.ingest.reconcile import index_stored_file
from ortho_node.ingest.sop_classes import out_of_scope_reason
from ortho_node.privacy import uid_ref
from ortho_node.store import InstanceStore, InvalidUidError

log = logging.getLogger(__name__)


class IngestOutcome(str, enum.Enum):
    STORED = "stored"  # new instance, stored and indexed
    DUPLICATE = "duplicate"  # identical bytes were already stored
    CONFLICT = "conflict"  # same SOP Instance UID, different bytes: original kept, new bytes quarantined


@dataclass(frozen=True)
class ReceivedInstance:
    """A data set as received, before anything is decoded.

    ``dataset`` holds the encoded data set without File Meta, in ``transfer_syntax_uid``.
    ``declared_sop_class_uid`` / ``declared_sop_instance_uid`` are what the sender announced
    (DIMSE Affected SOP Class/Instance UID); None when the protocol has no such field.
    ``expected_study_uid``: the study the request addressed (STOW-RS ``/studies/{study}``).
    """

    dataset: BinaryIO | bytes | memoryview
    transfer_syntax_uid: str
    declared_sop_class_uid: str | None = None
    declared_sop_instance_uid: str | None = None
    calling_ae: str | None = None
    source: str = "dimse"
    expected_study_uid: str | None = None


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    header: InstanceHeader
    study_id: int | None  # None for a conflict: nothing new was indexed
    relative_path: str


def _dataset_view(data: BinaryIO | bytes) -> memoryview:
    if isinstance(data, io.BytesIO):
        return data.getbuffer()  # no copy of the (possibly 10 MB) data set
    if isinstance(data, (bytes, bytearray, memoryview)):
        return memoryview(data)
    data.seek(0)
    return memoryview(data.read())


class IngestService:
    """Parse → check → store durably → index, for one instance at a time (thread-safe)."""

    def __init__(self, store: InstanceStore, indexer: Indexer) -> None:
        self.store = store
        self.indexer = indexer

    def receive(self, item: ReceivedInstance) -> IngestResult:
        """Store and index one received instance; return only when both are durable.

        Raises
        ------
        InvalidDatasetError
            The data set does not parse, lacks a required UID, contradicts what the sender
            declared, or contradicts the index's hierarchy (``HierarchyConflictError``: its SOP
            Instance UID stored in another study or series, its series in another study).
            Nothing is stored.
        ortho_node.store.StoreError
            The file could not be made durable (``StoreFullError`` when out of space).
        ortho_node.ingest.indexer.IndexUnavailableError
            The index could not record the instance.
        """
        header = parse_header(item.dataset, item.transfer_syntax_uid)
        self._check_declared(item, header)
        view = _dataset_view(item.dataset)
        try:
            chunks = (
                part10_header(
                    sop_class_uid=header.sop_class_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    transfer_syntax_uid=item.transfer_syntax_uid,
                ),
                view,
            )
            try:
                put = self.store.put(
                    chunks,
                    study_uid=header.study_instance_uid,
                    series_uid=header.series_instance_uid,
                    sop_instance_uid=header.sop_instance_uid,
                )
            except InvalidUidError as exc:
                raise InvalidDatasetError(str(exc)) from exc
        finally:
            view.release()
        if put.conflict:
            # The stored original may never have been indexed: its index write failed (0xA702)
            # and the sender retried with other bytes (e.g. another transfer syntax). Index it
            # from the file (put's path: the original's) before acknowledging, or this instance is
            # acknowledged and lost.
            index_stored_file(
                self.store, self.indexer, put.relative_path, calling_ae=item.calling_ae, source=item.source
            )
            return IngestResult(IngestOutcome.CONFLICT, header, study_id=None, relative_path=put.relative_path)
        try:
            indexed = self.indexer.record_instance(
                header,
                relative_path=put.relative_path,
                size_bytes=put.size_bytes,
                sha256=put.sha256,
                transfer_syntax_uid=item.transfer_syntax_uid,
                calling_ae=item.calling_ae,
                source=item.source,
                out_of_scope_reason=out_of_scope_reason(header.sop_class_uid),
            )
        except HierarchyConflictError:
            if put.created:  # refused: the file under the contradicting path goes again
                self.store.withdraw(put.relative_path)
            raise
        outcome = IngestOutcome.STORED if indexed.new else IngestOutcome.DUPLICATE
        return IngestResult(outcome, header, study_id=indexed.study_id, relative_path=put.relative_path)

    @staticmethod
    def _check_declared(item: ReceivedInstance, header: InstanceHeader) -> None:
        if item.declared_sop_instance_uid and item.declared_sop_instance_uid != header.sop_instance_uid:
            raise InvalidDatasetError(
                "SOP Instance UID in the data set differs from the declared one "
                f"({uid_ref(header.sop_instance_uid)} vs {uid_ref(item.declared_sop_instance_uid)})"
            )
        if item.expected_study_uid and item.expected_study_uid != header.study_instance_uid:
            raise InvalidDatasetError(
                f"Study Instance UID {uid_ref(header.study_instance_uid)} is not the study the request "
                f"addressed ({uid_ref(item.expected_study_uid)})"
            )
        if item.declared_sop_class_uid and item.declared_sop_class_uid != header.sop_class_uid:
            raise InvalidDatasetError(
                f"SOP Class UID in the data set ({header.sop_class_uid}) differs from the declared "
                f"one ({item.declared_sop_class_uid})"
            )
