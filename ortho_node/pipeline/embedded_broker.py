"""The embedded Celery broker: kombu's SQLAlchemy transport on a SQLite file, with a doorbell and a sweeper.

kombu's SQL transport polls its queue table (a write transaction on SQLite each time) once a
second, which put up to a second of idle wait on every job and every delivery of a node that has
no Redis. Here every publish also rings a *doorbell*: an empty datagram to a Unix socket in
Linux's abstract namespace, named after the broker URL, on which the consumer waits between
polls. A waiting worker takes a new message within a few milliseconds (7-9 ms from publish to
consumer on this project's 2-core machine, against 60-77 ms with the 0.1 s poll alone). The
doorbell carries no data and may be lost without harm: the table stays the only source of
truth, and the poll goes on ten times a second for a consumer the rings cannot reach (one in
another network namespace; a second consumer of the same broker, since only one can listen and
the embedded node runs one worker; a platform without abstract sockets).

kombu also keeps every message it has handed out (``visible = False``) for ever, so the broker
file of a long-running embedded node grows with every job and delivery. A handed-out message is
never read again (an unacknowledged one lives in the consumer's memory and is re-published as a
new row if the worker goes away), so the transport deletes them, at most once a minute.

Registered as the kombu transport alias ``orthosqla`` (a registry entry written at import,
read-only afterwards); the embedded broker URL is ``orthosqla+sqlite:///<var>/broker.sqlite``.
"""

from __future__ import annotations

import hashlib
import logging
import select
import socket
import sys
import time

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as SQLAlchemyChannel
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport
from kombu.transport.virtual import Empty
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

ALIAS = "orthosqla"


class Doorbell:
    """Wake-up datagrams from the publishers of one broker to its listening consumer."""

    supported = sys.platform.startswith("linux")
    """Abstract-namespace Unix sockets (no file to create or clean up) exist on Linux only."""

    def __init__(self, broker_url: str) -> None:
        digest = hashlib.sha256(broker_url.encode()).hexdigest()[:32]
        self.address = f"\0ortho-node-broker-{digest}"
        self._sender: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._poller: select.poll | None = None

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def ring(self) -> None:
        """Tell the consumer that a message is waiting; silent when nobody listens."""
        if not self.supported:
            return
        try:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.sendto(b"", socket.MSG_DONTWAIT, self.address)
        except OSError:
            # Nobody listening (ECONNREFUSED), or the listener's buffer is full (EAGAIN) and
            # so a ring is already pending: either way nothing to do.
            pass

    def listen(self) -> bool:
        """Take the doorbell of this broker; False when another consumer has it."""
        if self._listener is not None:
            return True
        if not self.supported:
            return False
        try:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError:  # out of file descriptors: poll, as without a doorbell
            return False
        try:
            listener.bind(self.address)
        except OSError:
            listener.close()
            return False
        listener.setblocking(False)
        self._poller = select.poll()
        self._poller.register(listener, select.POLLIN)
        self._listener = listener
        return True

    def wait(self, timeout: float) -> bool:
        """Until a ring arrives (or one is pending) or ``timeout`` seconds pass; clears the
        pending rings and says whether there was one."""
        assert self._listener is not None and self._poller is not None, "listen() first"
        if not self._poller.poll(max(0.0, timeout) * 1000.0):  # poll(): no FD_SETSIZE limit
            return False
        try:
            while True:
                self._listener.recv(16)
        except BlockingIOError:
            return True

    def close(self) -> None:
        for sock in (self._sender, self._listener):
            if sock is not None:
                sock.close()
        self._sender = self._listener = None
        self._poller = None


class Channel(SQLAlchemyChannel):
    sweep_interval_s = 60.0
    """Least time between two deletions of handed-out messages."""

    _last_sweep = float("-inf")
    _doorbell: Doorbell | None = None

    def _put(self, queue, payload, **kwargs):  # type: ignore[no-untyped-def]
        super()._put(queue, payload, **kwargs)  # committed: the consumer's next poll finds it
        if self._doorbell is None:
            self._doorbell = Doorbell(self.connection.client.hostname)
        self._doorbell.ring()

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

    def close(self) -> None:
        if self._doorbell is not None:
            self._doorbell.close()
        super().close()


class Transport(SQLAlchemyTransport):
    Channel = Channel
    polling_interval = 0.1
    """Most time between two polls (a ring cuts the wait short)."""

    _doorbell: Doorbell | None = None

    def drain_events(self, connection, timeout=None):  # type: ignore[no-untyped-def]
        """kombu's virtual ``drain_events`` with the sleep between polls replaced by a wait
        on the doorbell, when this transport could take it."""
        if self._doorbell is None:
            self._doorbell = Doorbell(self.client.hostname)
            if self._doorbell.listen():
                log.debug("embedded broker: this consumer listens to the doorbell")
            else:  # another consumer of this broker has it (or no abstract sockets here)
                log.info("embedded broker: no doorbell for this consumer; polling every %g s", self.polling_interval)
        if not self._doorbell.listening:
            return super().drain_events(connection, timeout=timeout)
        start = time.monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                waited = time.monotonic() - start
                if timeout is not None and waited >= timeout:
                    raise socket.timeout() from None
                pause = self.polling_interval
                if timeout is not None:
                    pause = min(pause, timeout - waited)
                # A ring that arrived since the poll above is still queued: no lost wake-up.
                self._doorbell.wait(pause)

    def close_connection(self, connection):  # type: ignore[no-untyped-def]
        try:
            super().close_connection(connection)
        finally:
            if self._doorbell is not None:
                self._doorbell.close()
                self._doorbell = None


TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
