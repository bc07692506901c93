"""Record stored instances in the index: study, series and instance rows, one transaction each.

The instance row and the study's "new data arrived" mark commit together, before the caller
acknowledges the instance. Study and series ids are cached per process, so the common case (the
next slice of a known series) costs two statements: insert the instance, touch the study.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy import Connection

from ortho_node.db.engine import Database
from ortho_node.db.models import Instance, Series, StoredResult, Study, StudyState, utcnow
from ortho_node.ingest.header import InstanceHeader, InvalidDatasetError
from ortho_node.privacy import uid_ref


# SOP classes of the objects the node itself produces (Comprehensive 3D SR, Secondary Capture, KOS).
_RESULT_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.59"}
)
PRODUCED_HERE = "result object produced by this node"


class IndexUnavailableError(Exception):
    """The index database could not record an instance (it is not acknowledged)."""


class HierarchyConflictError(InvalidDatasetError):
    """The instance contradicts the index's patient/study/series hierarchy: its SOP Instance UID
    is already stored under another study or series, or its series belongs to another study.
    UIDs are unique; one of the two copies is wrong, and the node cannot tell which."""


@dataclass(frozen=True)
class IndexedInstance:
    """What recording an instance did: ``new`` is False when the row already existed."""

    study_id: int
    series_id: int
    new: bool


class Indexer:
    """Writes instance rows; safe to call from many association threads at once."""

    def __init__(self, db: Database) -> None:
        self._db = db
        dialect = db.engine.dialect.name
        self._insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._study_ids: dict[str, int] = {}
        self._series_ids: dict[str, tuple[int, int]] = {}  # series UID -> (series id, its study id)
        self._cache_lock = threading.Lock()
        # Built once: constructing statements per instance cost more than the commit itself.
        self._insert_instance = (
            self._insert(Instance)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(Instance.id)  # rowcount is not reliable for ON CONFLICT on every driver
        )
        self._touch_study = (
            update(Study)
            .where(Study.id == bindparam("study"))
            .values(state=StudyState.RECEIVING.value, last_received_at=bindparam("now"))
        )

    def record_instance(
        self,
        header: InstanceHeader,
        *,
        relative_path: str,
        size_bytes: int,
        sha256: str,
        transfer_syntax_uid: str,
        calling_ae: str | None,
        source: str,
        out_of_scope_reason: str | None,
    ) -> IndexedInstance:
        """Insert the instance (idempotent) and mark its study as receiving if it is new.

        Raises
        ------
        IndexUnavailableError
            The database refused or is unreachable; nothing was committed.
        """
        try:
            with self._db.connection() as conn:
                if header.sop_class_uid in _RESULT_SOP_CLASSES and self._produced_here(conn, header):
                    # A PACS that routes the whole study back must not make the node re-run on its own output.
                    out_of_scope_reason = PRODUCED_HERE
                study_id = self._study_id(conn, header)
                series_id = self._series_id(conn, header, study_id, calling_ae)
                now = utcnow()
                inserted = conn.execute(
                    self._insert_instance,
                    dict(
                        study_id=study_id,
                        series_id=series_id,
                        sop_instance_uid=header.sop_instance_uid,
                        sop_class_uid=header.sop_class_uid,
                        transfer_syntax_uid=transfer_syntax_uid,
                        instance_number=header.instance_number,
                        path=relative_path,
                        size_bytes=size_bytes,
                        sha256=sha256,
                        calling_ae=calling_ae,
                        source=source,
                        out_of_scope_reason=out_of_scope_reason,
                        received_at=now,
                    ),
                )
                new = inserted.scalar_one_or_none() is not None
                if new:
                    conn.execute(self._touch_study, dict(study=study_id, now=now))
                else:
                    self._check_same_place(conn, header, relative_path)
        except (SQLAlchemyError, HierarchyConflictError) as exc:
            # A rolled-back transaction may have cached ids of rows that never committed.
            with self._cache_lock:
                self._study_ids.pop(header.study_instance_uid, None)
                self._series_ids.pop(header.series_instance_uid, None)
            if isinstance(exc, HierarchyConflictError):
                raise
            raise IndexUnavailableError(f"index database error: {type(exc).__name__}") from exc
        return IndexedInstance(study_id=study_id, series_id=series_id, new=new)

    @staticmethod
    def _check_same_place(conn: Connection, header: InstanceHeader, relative_path: str) -> None:
        """A known SOP Instance UID must come back in its study and series (its stored path)."""
        stored = conn.scalar(select(Instance.path).where(Instance.sop_instance_uid == header.sop_instance_uid))
        if stored is not None and stored != relative_path:
            raise HierarchyConflictError(
                f"SOP Instance UID {uid_ref(header.sop_instance_uid)} is already stored in another "
                "study or series"
            )

    @staticmethod
    def _produced_here(conn: Connection, header: InstanceHeader) -> bool:
        found = conn.scalar(select(StoredResult.id).where(StoredResult.sop_instance_uid == header.sop_instance_uid))
        return found is not None

    def _study_id(self, conn: Connection, header: InstanceHeader) -> int:
        cached = self._study_ids.get(header.study_instance_uid)
        if cached is not None:
            return cached
        conn.execute(
            self._insert(Study)
            .values(
                study_instance_uid=header.study_instance_uid,
                state=StudyState.RECEIVING.value,
                study_description=header.study_description,
                first_received_at=utcnow(),
                last_received_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["study_instance_uid"])
        )
        study_id = conn.scalar(select(Study.id).where(Study.study_instance_uid == header.study_instance_uid))
        with self._cache_lock:
            self._study_ids[header.study_instance_uid] = study_id
        return study_id

    def _series_id(self, conn: Connection, header: InstanceHeader, study_id: int, calling_ae: str | None) -> int:
        cached = self._series_ids.get(header.series_instance_uid)
        if cached is None:
            cached = self._series_row(conn, header, study_id, calling_ae)
        series_id, series_study_id = cached
        if series_study_id != study_id:
            raise HierarchyConflictError(
                f"Series Instance UID {uid_ref(header.series_instance_uid)} belongs to another study "
                f"than {uid_ref(header.study_instance_uid)}"
            )
        return series_id

    def _series_row(
        self, conn: Connection, header: InstanceHeader, study_id: int, calling_ae: str | None
    ) -> tuple[int, int]:
        conn.execute(
            self._insert(Series)
            .values(
                study_id=study_id,
                series_instance_uid=header.series_instance_uid,
                modality=header.modality,
                body_part=header.body_part,
                series_description=header.series_description,
                series_number=header.series_number,
                calling_ae=calling_ae,
            )
            .on_conflict_do_nothing(index_elements=["series_instance_uid"])
        )
        row = conn.execute(
            select(Series.id, Series.study_id).where(Series.series_instance_uid == header.series_instance_uid)
        ).one()
        found = (int(row.id), int(row.study_id))
        with self._cache_lock:
            self._series_ids[header.series_instance_uid] = found
        return found
