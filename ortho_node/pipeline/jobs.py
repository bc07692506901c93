"""Job state transitions, each one atomic and idempotent, keyed by job id.

A task never trusts the message that started it: it claims the job with a conditional update
(``queued`` → ``running``). A duplicate message, a job that was cancelled or superseded while
waiting, or one another worker already holds, simply does not claim and is skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update

from ortho_node.db.engine import Database
from ortho_node.db.models import Instance, Job, JobEvent, JobState, Series, Study, utcnow
from ortho_node.privacy import redact

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class JobInstance:
    """One analysable instance of a claimed job (paths relative to the store root)."""

    instance_id: int
    series_id: int
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    modality: str | None
    body_part: str | None
    series_description: str | None
    transfer_syntax_uid: str
    relative_path: str


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job: ids and the instances to read, never ORM objects."""

    job_id: int
    study_id: int
    study_instance_uid: str
    revision: int
    supersedes_job_id: int | None
    attempt: int
    instances: tuple[JobInstance, ...]


def _event(job_id: int, kind: str, detail: str | None = None, *, is_error: bool = False) -> JobEvent:
    return JobEvent(job_id=job_id, kind=kind, detail=_shown(detail), is_error=is_error)


def _shown(reason: str | None) -> str | None:
    """A reason as ``jobs list``, ``status`` and the admin API show it: at most 2,000 characters,
    UIDs by reference (an exception's text may hold a store path of UIDs)."""
    return None if reason is None else redact(reason)[:2000]


# A newer job of a study makes an older one out of date, unless it was ignored or cancelled.
_SUPERSEDING_STATES = tuple(
    state.value for state in (JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.SUPERSEDED)
)


def newer_job(db: Database, job_id: int) -> int | None:
    """The newest job of the same study created after ``job_id`` that makes it out of date."""
    with db.session() as session:
        study_id = select(Job.study_id).where(Job.id == job_id).scalar_subquery()
        return session.scalar(
            select(func.max(Job.id))
            .where(Job.study_id == study_id, Job.id > job_id, Job.state.in_(_SUPERSEDING_STATES))
        )


def supersede(
    db: Database, job_id: int, *, by: int, states: Sequence[JobState] = (JobState.QUEUED, JobState.RUNNING)
) -> bool:
    """End ``job_id`` as superseded by job ``by``, if it is still in one of ``states``."""
    with db.session() as session:
        done = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_([state.value for state in states]))
            .values(state=JobState.SUPERSEDED.value, finished_at=utcnow())
        )
        if done.rowcount == 1:
            session.add(_event(job_id, "superseded", f"by job {by}"))
            log.info("job %d superseded by job %d", job_id, by)
    return done.rowcount == 1


def claim(db: Database, job_id: int, *, worker: str | None = None) -> ClaimedJob | None:
    """Move a queued job to running and return its inputs; None when it is not claimable."""
    worker = worker or worker_name()
    now = utcnow()
    newer = newer_job(db, job_id)
    if newer is not None:  # requeued after a crash, or retried by an admin, behind a newer job
        supersede(db, job_id, by=newer, states=(JobState.QUEUED,))
        return None
    with db.session() as session:
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
            .values(
                state=JobState.RUNNING.value,
                attempts=Job.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                worker=worker[:128],
            )
        )
        if claimed.rowcount != 1:
            state = session.scalar(select(Job.state).where(Job.id == job_id))
            log.info("job %d not claimed (state %s); message skipped", job_id, state or "missing")
            return None
        job = session.get(Job, job_id)
        study = session.get(Study, job.study_id)
        session.add(_event(job_id, "started", f"attempt {job.attempts} on {worker}"))
        series_ids = list((job.routing or {}).get("series", []))
        wanted = [s["series_id"] for s in series_ids if s.get("action") == "process"]
        rows = session.execute(
            select(Instance, Series)
            .join(Series, Instance.series_id == Series.id)
            .where(
                Instance.study_id == job.study_id,
                Instance.out_of_scope_reason.is_(None),
                Instance.series_id.in_(wanted),
            )
            .order_by(Series.id, Instance.instance_number, Instance.id)
        ).all()
        instances = tuple(
            JobInstance(
                instance_id=inst.id,
                series_id=series.id,
                sop_instance_uid=inst.sop_instance_uid,
                sop_class_uid=inst.sop_class_uid,
                series_instance_uid=series.series_instance_uid,
                modality=series.modality,
                body_part=series.body_part,
                series_description=series.series_description,
                transfer_syntax_uid=inst.transfer_syntax_uid,
                relative_path=inst.path,
            )
            for inst, series in rows
        )
        return ClaimedJob(
            job_id=job.id,
            study_id=job.study_id,
            study_instance_uid=study.study_instance_uid,
            revision=job.revision,
            supersedes_job_id=job.supersedes_job_id,
            attempt=job.attempts,
            instances=instances,
        )


def heartbeat(db: Database, job_id: int) -> None:
    with db.session() as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING.value).values(heartbeat_at=utcnow())
        )


class LeaseKeeper:
    """Renews a running job's lease (its heartbeat) when it is due, not at every step.

    A heartbeat is a committed write to the index (2-15 ms on SQLite); a job that finishes well
    within its lease needs none after its claim. Made right after the claim, which set the
    heartbeat; :meth:`renew_if_due` writes one once ``interval_s`` has passed since the last.
    """

    def __init__(self, db: Database, job_id: int, *, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self._db = db
        self._job_id = job_id
        self._interval_s = interval_s
        self._clock = clock
        self._last = clock()

    @classmethod
    def for_lease(cls, db: Database, job_id: int, lease_s: float) -> "LeaseKeeper":
        """Renewing at a tenth of the lease leaves nine tenths for one step to run without one."""
        return cls(db, job_id, interval_s=lease_s / 10)

    def renew_if_due(self) -> bool:
        """Write a heartbeat when ``interval_s`` has passed since the last; whether it did."""
        now = self._clock()
        if now - self._last < self._interval_s:
            return False
        heartbeat(self._db, self._job_id)
        self._last = now
        return True


def _finish(db: Database, job_id: int, state: JobState, *, reason: str | None, summary: dict | None, kind: str) -> bool:
    with db.session() as session:
        done = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING.value)
            .values(state=state.value, reason=_shown(reason), summary=summary, finished_at=utcnow())
        )
        if done.rowcount != 1:
            log.warning("job %d was no longer running when it finished as %s", job_id, state.value)
            return False
        session.add(_event(job_id, kind, reason, is_error=state is JobState.FAILED))
    return True


def complete(db: Database, job_id: int, summary: dict) -> bool:
    return _finish(db, job_id, JobState.DONE, reason=None, summary=summary, kind="done")


def fail(db: Database, job_id: int, reason: str, summary: dict | None = None) -> bool:
    return _finish(db, job_id, JobState.FAILED, reason=reason, summary=summary, kind="failed")


def release_for_retry(db: Database, job_id: int, reason: str) -> bool:
    """Put a running job back to queued after a transient error (the retry message follows)."""
    with db.session() as session:
        released = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING.value)
            .values(state=JobState.QUEUED.value, published_at=utcnow())
        )
        if released.rowcount == 1:
            session.add(_event(job_id, "retry", reason, is_error=True))
        return released.rowcount == 1


def requeue_stale(
    db: Database, *, lease: dt.timedelta, max_attempts: int, now: dt.datetime | None = None
) -> list[int]:
    """Running jobs whose worker went silent longer than ``lease`` go back to the queue.

    This is how a job survives a worker killed mid-run: its message is gone, but its row is
    not, and the outbox publishes it again. A job that has already used ``max_attempts``
    fails instead, so an input that kills workers cannot loop forever.
    """
    now = now or utcnow()
    with db.session() as session:
        stale = session.execute(
            select(Job.id, Job.attempts).where(Job.state == JobState.RUNNING.value, Job.heartbeat_at < now - lease)
        ).all()
        requeued, failed = [], []
        for job_id, attempts in stale:
            silent = f"worker silent for more than {lease.total_seconds():.0f} s"
            if attempts >= max_attempts:
                values = dict(state=JobState.FAILED.value, finished_at=now, reason=f"{silent} on {attempts} attempts")
                event = _event(job_id, "failed", values["reason"], is_error=True)
            else:
                values = dict(state=JobState.QUEUED.value, published_at=None)
                event = _event(job_id, "requeued", silent, is_error=True)
            # the same run, still silent: since the select its worker may have renewed the lease,
            # or another sweep requeued it and a worker claimed it again (one attempt more)
            updated = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.state == JobState.RUNNING.value,
                    Job.attempts == attempts,
                    Job.heartbeat_at < now - lease,
                )
                .values(**values)
            )
            if updated.rowcount == 1:
                session.add(event)
                (requeued if values["state"] == JobState.QUEUED.value else failed).append(job_id)
    if requeued or failed:
        log.warning(
            "%d job(s) with a silent worker: %d requeued, %d failed",
            len(requeued) + len(failed), len(requeued), len(failed),
        )
    return requeued
