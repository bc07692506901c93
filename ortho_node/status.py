"""A PHI-free snapshot of what the node is doing, for ``ortho-node status`` and the admin API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from ortho_node.db.engine import Database
from ortho_node.db.models import Delivery, DeliveryState, Instance, Job, JobState, Study, StudyState
from ortho_node.privacy import uid_ref


@dataclass(frozen=True)
class FailureLine:
    job_id: int
    study: str  # uid_ref, never the UID
    finished_at: str | None
    reason: str


@dataclass(frozen=True)
class DeadDelivery:
    delivery_id: int
    job_id: int
    destination: str
    attempts: int
    last_error: str


@dataclass(frozen=True)
class NodeStatus:
    jobs_by_state: dict[str, int]
    queue_depth: int  # queued jobs, published or not
    unpublished_jobs: int  # still in the outbox (broker down or not yet swept)
    running_jobs: int
    studies_receiving: int
    studies_total: int
    instances_total: int
    quarantined_duplicates: int
    recent_failures: list[FailureLine] = field(default_factory=list)
    deliveries_by_state: dict[str, int] = field(default_factory=dict)
    dead_letters: list[DeadDelivery] = field(default_factory=list)
    committing_since: str | None = None  # the oldest acknowledgement still waiting for the PACS's commitment

    def as_json(self) -> dict:
        return asdict(self)


def _count_quarantined(quarantine_dir: Path) -> int:
    if not quarantine_dir.is_dir():
        return 0
    return sum(1 for _ in quarantine_dir.glob("*/*.dcm"))


def collect_status(db: Database, *, quarantine_dir: Path, failures: int = 10) -> NodeStatus:
    with db.session() as session:
        by_state = dict(session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all())
        unpublished = session.scalar(
            select(func.count(Job.id)).where(Job.state == JobState.QUEUED.value, Job.published_at.is_(None))
        )
        receiving = session.scalar(select(func.count(Study.id)).where(Study.state == StudyState.RECEIVING.value))
        studies = session.scalar(select(func.count(Study.id)))
        instances = session.scalar(select(func.count(Instance.id)))
        failed = session.execute(
            select(Job.id, Study.study_instance_uid, Job.finished_at, Job.reason)
            .join(Study, Job.study_id == Study.id)
            .where(Job.state == JobState.FAILED.value)
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(failures)
        ).all()
        deliveries = dict(session.execute(select(Delivery.state, func.count(Delivery.id)).group_by(Delivery.state)).all())
        committing_since = session.scalar(
            select(func.min(Delivery.sent_at)).where(Delivery.state == DeliveryState.COMMITTING.value)
        )
        dead = session.execute(
            select(Delivery.id, Delivery.job_id, Delivery.destination, Delivery.attempts, Delivery.last_error)
            .where(Delivery.state == DeliveryState.DEAD.value)
            .order_by(Delivery.id.desc())
            .limit(50)
        ).all()
    return NodeStatus(
        jobs_by_state={state.value: int(by_state.get(state.value, 0)) for state in JobState},
        queue_depth=int(by_state.get(JobState.QUEUED.value, 0)),
        unpublished_jobs=int(unpublished or 0),
        running_jobs=int(by_state.get(JobState.RUNNING.value, 0)),
        studies_receiving=int(receiving or 0),
        studies_total=int(studies or 0),
        instances_total=int(instances or 0),
        quarantined_duplicates=_count_quarantined(quarantine_dir),
        recent_failures=[
            FailureLine(
                job_id=job_id,
                study=uid_ref(study_uid),
                finished_at=finished.isoformat(timespec="seconds") if finished else None,
                reason=reason or "",
            )
            for job_id, study_uid, finished, reason in failed
        ],
        deliveries_by_state={state.value: int(deliveries.get(state.value, 0)) for state in DeliveryState},
        dead_letters=[
            DeadDelivery(delivery_id=i, job_id=j, destination=d, attempts=a, last_error=e or "") for i, j, d, a, e in dead
        ],
        committing_since=committing_since.isoformat(timespec="seconds") if committing_since else None,
    )
