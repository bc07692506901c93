"""The embedded Celery broker: kombu's SQLAlchemy transport on a SQLite file, polled faster.

kombu's SQL transport polls its queue table once a second, which put up to a second of idle
wait on every job and every delivery of a node that has no Redis. A study queue is a handful of
rows: polling it ten times a second costs nothing and takes the wait down to ~0.1 s.

Registered as the kombu transport alias ``orthosqla`` (a registry entry written at import,
read-only afterwards); the embedded broker URL is ``orthosqla+sqlite:///<var>/broker.sqlite``.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

ALIAS = "orthosqla"


class Transport(SQLAlchemyTransport):
    polling_interval = 0.1


TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
