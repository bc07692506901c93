"""The outbox: publish committed jobs to the broker, and publish again what did not make it.

A job row commits first (``published_at`` NULL); publishing happens after, and sets
``published_at``. If the broker is down, the row simply stays unpublished and the sweeper
retries on its next pass, so a broker outage delays jobs but never loses them. A message may be
published twice (crash between publish and the update, or a republish of a message lost in a
broker restart): harmless, because tasks claim their job atomically.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

from celery import Celery
from kombu.exceptions import KombuError, OperationalError
from sqlalchemy import or_, select, update

from ortho_node.db.engine import Database
from ortho_node.db.models import Job, JobEvent, JobState, utcnow

log = logging.getLogger(__name__)

PROCESS_STUDY_TASK = "ortho.process_study"
_BROKER_ERRORS = (OperationalError, KombuError, ConnectionError, OSError, TimeoutError)


class JobPublisher:
    """Publishes ``process_study`` messages and records that they went out."""

    def __init__(self, db: Database, app: Celery, *, connect_timeout_s: float = 3.0) -> None:
        self._db = db
        self._app = app
        self._connect_timeout_s = connect_timeout_s
        self._broker_down = False

    @property
    def broker_down(self) -> bool:
        return self._broker_down

    def publish(self, job_ids: Iterable[int]) -> int:
        """Publish each job; stop at the first broker error. Returns how many went out."""
        job_ids = list(job_ids)
        if not job_ids:
            return 0
        published = 0
        try:
            with self._app.connection_for_write() as connection:
                # Fail within seconds when the broker is down, instead of kombu's long retry loop.
                connection.ensure_connection(max_retries=1, timeout=self._connect_timeout_s)
                for job_id in job_ids:
                    self._app.send_task(PROCESS_STUDY_TASK, args=[job_id], retry=False, connection=connection)
                    self._mark_published(job_id)
                    published += 1
        except _BROKER_ERRORS as exc:
            if not self._broker_down:
                log.warning("broker unavailable (%s); jobs stay in the outbox until it is back", type(exc).__name__)
            self._broker_down = True
            return published
        if self._broker_down:
            log.info("broker reachable again; outbox published")
        self._broker_down = False
        return published

    def _mark_published(self, job_id: int) -> None:
        with self._db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(published_at=utcnow()))
            session.add(JobEvent(job_id=job_id, kind="published"))


def due_for_publishing(db: Database, *, republish_after: dt.timedelta, now: dt.datetime | None = None) -> list[int]:
    """Queued jobs never published, or published so long ago that the message may be lost."""
    now = now or utcnow()
    with db.session() as session:
        return list(
            session.scalars(
                select(Job.id)
                .where(
                    Job.state == JobState.QUEUED.value,
                    or_(Job.published_at.is_(None), Job.published_at < now - republish_after),
                )
                .order_by(Job.priority, Job.id)
                .limit(500)
            )
        )
