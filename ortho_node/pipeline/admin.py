"""Admin actions on jobs: retry a failed one, cancel a queued one, read a job's audit trail.

Each action is one guarded update plus an audit event, so it is safe against a worker that
changes the same job at the same moment (the guard then simply does not match).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from ortho_node.db.engine import Database
from ortho_node.db.models import Job, JobEvent, JobState, Study, utcnow
from ortho_node.privacy import uid_ref


class JobActionError(ValueError):
    """The job does not exist or is not in a state the action applies to."""


@dataclass(frozen=True)
class JobLine:
    job_id: int
    study: str  # uid_ref
    state: str
    revision: int | None  # of the results the job recorded (its SR), None until it has some
    attempts: int
    created_at: str
    reason: str | None


@dataclass(frozen=True)
class EventLine:
    at: str
    kind: str
    detail: str | None
    is_error: bool


def _guarded(db: Database, job_id: int, *, allowed: tuple[JobState, ...], values: dict, kind: str, detail: str) -> None:
    with db.session() as session:
        moved = session.execute(
            update(Job).where(Job.id == job_id, Job.state.in_([s.value for s in allowed])).values(**values)
        )
        if moved.rowcount != 1:
            state = session.scalar(select(Job.state).where(Job.id == job_id))
            if state is None:
                raise JobActionError(f"job {job_id} does not exist")
            wanted = " or ".join(s.value for s in allowed)
            raise JobActionError(f"job {job_id} is {state}; this action needs it {wanted}")
        session.add(JobEvent(job_id=job_id, kind=kind, detail=detail))


def retry_job(db: Database, job_id: int, *, actor: str = "admin") -> None:
    """Queue a failed or cancelled job again (a running node publishes it within seconds)."""
    _guarded(
        db,
        job_id,
        allowed=(JobState.FAILED, JobState.CANCELLED),
        values=dict(state=JobState.QUEUED.value, published_at=None, reason=None, finished_at=None, attempts=0),
        kind="retried",
        detail=f"by {actor}",
    )


def cancel_job(db: Database, job_id: int, *, actor: str = "admin") -> None:
    """Cancel a job that has not started; a running job finishes (its results would be consistent)."""
    _guarded(
        db,
        job_id,
        allowed=(JobState.QUEUED,),
        values=dict(state=JobState.CANCELLED.value, finished_at=utcnow(), reason=f"cancelled by {actor}"),
        kind="cancelled",
        detail=f"by {actor}",
    )


def list_jobs(db: Database, *, state: str | None = None, limit: int = 50) -> list[JobLine]:
    with db.session() as session:
        query = select(Job, Study.study_instance_uid).join(Study, Job.study_id == Study.id)
        if state is not None:
            query = query.where(Job.state == JobState(state).value)
        rows = session.execute(query.order_by(Job.id.desc()).limit(limit)).all()
        return [
            JobLine(
                job.id, uid_ref(uid), job.state, (job.summary or {}).get("revision"), job.attempts,
                job.created_at.isoformat(timespec="seconds"), job.reason,
            )
            for job, uid in rows
        ]


def job_events(db: Database, job_id: int) -> list[EventLine]:
    with db.session() as session:
        if session.get(Job, job_id) is None:
            raise JobActionError(f"job {job_id} does not exist")
        return [
            EventLine(e.at.isoformat(timespec="seconds"), e.kind, e.detail, e.is_error)
            for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        ]
