"""The outbox: publish committed work to the broker, and publish again what did not make it.

Jobs and deliveries are rows first (``published_at`` NULL); publishing happens after, and sets
``published_at``. If the broker is down, the rows simply stay unpublished and the next pass
retries, so a broker outage delays work but never loses it. A message may be published twice
(crash between publish and the update, or a republish of a message lost in a broker restart):
harmless, because tasks claim their rows atomically.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celery import Celery
from kombu.exceptions import KombuError, OperationalError
from sqlalchemy import or_, select, update

from ortho_node.db.engine import Database
from ortho_node.db.models import Job, JobEvent, JobState, utcnow
from ortho_node.pipeline.delivery import DELIVER_TASK, mark_published

log = logging.getLogger(__name__)

PROCESS_STUDY_TASK = "ortho.process_study"
_BROKER_ERRORS = (OperationalError, KombuError, ConnectionError, OSError, TimeoutError)


@dataclass(frozen=True)
class OutboxMessage:
    """A task message and what to record once the broker has it."""

    task: str
    args: tuple
    on_published: Callable[[], None]


def job_message(db: Database, job_id: int) -> OutboxMessage:
    def mark() -> None:
        with db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(published_at=utcnow()))
            session.add(JobEvent(job_id=job_id, kind="published"))

    return OutboxMessage(PROCESS_STUDY_TASK, (job_id,), mark)


def delivery_message(db: Database, delivery_ids: Sequence[int]) -> OutboxMessage:
    ids = list(delivery_ids)
    return OutboxMessage(DELIVER_TASK, (ids,), lambda: mark_published(db, ids))


class OutboxPublisher:
    """Publishes outbox messages over one broker connection per pass."""

    def __init__(self, app: Celery, *, connect_timeout_s: float = 3.0) -> None:
        self._app = app
        self._connect_timeout_s = connect_timeout_s
        self._broker_down = False

    @property
    def broker_down(self) -> bool:
        return self._broker_down

    def publish(self, messages: Sequence[OutboxMessage]) -> int:
        """Publish in order; stop at the first broker error. Returns how many went out."""
        if not messages:
            return 0
        published = 0
        try:
            with self._app.connection_for_write() as connection:
                # Fail within seconds when the broker is down, instead of kombu's long retry loop.
                connection.ensure_connection(max_retries=1, timeout=self._connect_timeout_s)
                for message in messages:
                    self._app.send_task(message.task, args=list(message.args), retry=False, connection=connection)
                    message.on_published()
                    published += 1
        except _BROKER_ERRORS as exc:
            if not self._broker_down:
                log.warning("broker unavailable (%s); work stays in the outbox until it is back", type(exc).__name__)
            self._broker_down = True
            return published
        if self._broker_down:
            log.info("broker reachable again; outbox published")
        self._broker_down = False
        return published


def due_jobs(db: Database, *, republish_after: dt.timedelta, now: dt.datetime | None = None) -> list[int]:
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
