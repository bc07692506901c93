"""The embedded Celery broker: kombu's SQLAlchemy transport on a SQLite file, polled faster and swept.

kombu's SQL transport polls its queue table once a second, which put up to a second of idle
wait on every job and every delivery of a node that has no Redis. A study queue is a handful of
rows: polling it ten times a second costs nothing and takes the wait down to ~0.1 s.

kombu also keeps every message it has handed out (``visible = False``) for ever, so the broker
file of a long-running embedded node grows with every job and delivery. A handed-out message is
never read again (an unacknowledged one lives in the consumer's memory and is re-published as a
new row if the worker goes away), so the transport deletes them, at most once a minute.

Registered as the kombu transport alias ``orthosqla`` (a registry entry written at import,
read-only afterwards); the embedded broker URL is ``orthosqla+sqlite:///<var>/broker.sqlite``.
"""

from __future__ import annotations

import logging
import time

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as SQLAlchemyChannel
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

ALIAS = "orthosqla"


class Channel(SQLAlchemyChannel):
    sweep_interval_s = 60.0
    """Least time between two deletions of handed-out messages."""

    _last_sweep = float("-inf")

    def _get(self, queue):  # type: ignore[no-untyped-def]
        try:
            return super()._get(queue)
        finally:
            if time.monotonic() - self._last_sweep >= self.sweep_interval_s:
                self.sweep_consumed()

    def sweep_consumed(self) -> int:
        """Delete messages already handed to a consumer; returns how many."""
        self._last_sweep = time.monotonic()
        try:
            deleted = (
                self.session.query(self.message_cls)
                .filter(self.message_cls.visible == False)  # noqa: E712 - SQL, not Python truth
                .delete(synchronize_session=False)
            )
            self.session.commit()
        except OperationalError as exc:  # a busy file: the next sweep takes them
            self.session.rollback()
            log.debug("broker sweep skipped: %s", exc)
            return 0
        return deleted or 0


class Transport(SQLAlchemyTransport):
    Channel = Channel
    polling_interval = 0.1


TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
