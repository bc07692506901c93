"""Keep the result objects of a job: durable files under ``var/results``, index rows, deliveries.

Writing is idempotent: result UIDs are deterministic, so a job that runs again after a crash
finds its files and rows already there and only adds what is missing. A new revision (a job
that supersedes one with results) has new UIDs and references its predecessor SR.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.db.models import Delivery, DeliveryState, StoredResult, utcnow
from ortho_node.results import PredecessorRef
from ortho_node.results.encoding import encode_part10
from ortho_node.store import InstanceStore


@dataclass(frozen=True)
class PreviousReport:
    """The latest SR the node produced for a study: what a new revision supersedes."""

    revision: int
    reference: PredecessorRef


def previous_report(
    db: Database, study_id: int, study_instance_uid: str, *, exclude_job_id: int | None = None
) -> PreviousReport | None:
    """The newest SR of the study from another job (a job re-run after a crash is not its own predecessor)."""
    with db.session() as session:
        query = select(StoredResult).where(StoredResult.study_id == study_id, StoredResult.kind == "sr")
        if exclude_job_id is not None:
            query = query.where(StoredResult.job_id != exclude_job_id)
        row = session.scalars(
            query
            .order_by(StoredResult.revision.desc(), StoredResult.id.desc())
        ).first()
        if row is None:
            return None
        return PreviousReport(
            revision=row.revision,
            reference=PredecessorRef(
                study_instance_uid=study_instance_uid,
                series_instance_uid=row.series_instance_uid,
                sop_instance_uid=row.sop_instance_uid,
                sop_class_uid=row.sop_class_uid,
            ),
        )


def record_results(
    db: Database,
    settings: Settings,
    *,
    job_id: int,
    study_id: int,
    revision: int,
    objects: Iterable[tuple[str, Dataset]],
) -> list[int]:
    """Store ``(kind, dataset)`` objects durably, index them and queue one delivery per destination.

    Returns the result row ids. Objects already stored (same SOP Instance UID) are kept as they
    are: a re-delivery sends exactly the bytes that were sent before.
    """
    store = InstanceStore(settings.results_dir, quarantine=settings.quarantine_dir / "results")
    rows = []
    for kind, dataset in objects:
        relative = store.relative_path(
            study_uid=dataset.StudyInstanceUID,
            series_uid=dataset.SeriesInstanceUID,
            sop_instance_uid=dataset.SOPInstanceUID,
        )
        if not store.absolute(relative).exists():
            store.put(
                [encode_part10(dataset)],
                study_uid=dataset.StudyInstanceUID,
                series_uid=dataset.SeriesInstanceUID,
                sop_instance_uid=dataset.SOPInstanceUID,
            )
        rows.append(
            dict(
                job_id=job_id,
                study_id=study_id,
                kind=kind,
                sop_class_uid=str(dataset.SOPClassUID),
                sop_instance_uid=str(dataset.SOPInstanceUID),
                series_instance_uid=str(dataset.SeriesInstanceUID),
                revision=revision,
                path=relative,
                created_at=utcnow(),
            )
        )
    insert = postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert
    with db.session() as session:
        ids = []
        for row in rows:
            session.execute(insert(StoredResult).values(**row).on_conflict_do_nothing(index_elements=["sop_instance_uid"]))
            ids.append(session.scalar(select(StoredResult.id).where(StoredResult.sop_instance_uid == row["sop_instance_uid"])))
        for result_id in ids:
            for destination in settings.destinations:
                session.execute(
                    insert(Delivery)
                    .values(
                        result_id=result_id,
                        job_id=job_id,
                        destination=destination.name,
                        state=DeliveryState.PENDING.value,
                        next_attempt_at=utcnow(),
                        created_at=utcnow(),
                    )
                    .on_conflict_do_nothing(index_elements=["result_id", "destination"])
                )
    return ids
