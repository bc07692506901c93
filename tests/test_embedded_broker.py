"""The embedded broker (kombu's SQLAlchemy transport on SQLite): messages handed out are deleted,
messages still waiting are kept, and nothing is lost on the way."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from kombu import Connection

from ortho_node.pipeline import embedded_broker


def rows(path) -> list[tuple[int]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT visible FROM kombu_message ORDER BY id").fetchall()


def test_handed_out_messages_are_swept_and_waiting_ones_kept(tmp_path, monkeypatch):
    path = tmp_path / "broker.sqlite"
    monkeypatch.setattr(embedded_broker.Channel, "sweep_interval_s", 3600.0)
    with Connection(f"{embedded_broker.ALIAS}+sqlite:///{path}") as connection:
        queue = connection.SimpleQueue("ortho")
        for n in range(5):
            queue.put({"job": n})
        received = []
        for _ in range(3):
            message = queue.get(timeout=5)
            received.append(message.payload["job"])
            message.ack()
        assert received == [0, 1, 2]
        # The first get swept its own message; the next two (within the interval) left theirs.
        assert rows(path).count((0,)) == 2 and rows(path).count((1,)) == 2

        channel = queue.channel
        assert channel.sweep_consumed() == 2
        assert rows(path) == [(1,), (1,)], "messages not yet handed out stay"

        channel.sweep_interval_s = 0.0  # now every get sweeps
        assert [queue.get(timeout=5).payload["job"] for _ in range(2)] == [3, 4]
        queue.put({"job": 5})
        assert queue.get(timeout=5).payload["job"] == 5
        assert rows(path) == [], "every handed-out message is gone, none was lost on the way"
        queue.close()


def _consume_one(url: str, received: list, timeout: float) -> None:
    """Take one message (None if none came within ``timeout``), then whether this consumer had
    the doorbell."""
    with Connection(url) as connection:
        queue = connection.SimpleQueue("ortho")
        try:
            message = queue.get(timeout=timeout)
        except queue.Empty:
            received.append(None)
        else:
            received.append(message.payload)
            message.ack()
        finally:
            received.append(connection.transport._doorbell.listening)
            queue.close()


def _publish(url: str, payload: dict) -> None:
    with Connection(url) as connection:
        connection.SimpleQueue("ortho").put(payload)


linux_only = pytest.mark.skipif(not embedded_broker.Doorbell.supported, reason="abstract Unix sockets are Linux only")


@linux_only
def test_a_publish_wakes_the_waiting_consumer_before_its_next_poll(tmp_path, monkeypatch):
    url = f"{embedded_broker.ALIAS}+sqlite:///{tmp_path / 'broker.sqlite'}"
    # The next poll would come after the consumer's own limit: only the doorbell can deliver in time.
    monkeypatch.setattr(embedded_broker.Transport, "polling_interval", 60.0)
    waiting = threading.Event()
    rung: list[bool] = []
    original_wait = embedded_broker.Doorbell.wait

    def wait(self, timeout):  # the consumer has polled an empty queue and now waits
        waiting.set()
        rung.append(original_wait(self, timeout))
        return rung[-1]

    monkeypatch.setattr(embedded_broker.Doorbell, "wait", wait)
    received: list = []
    consumer = threading.Thread(target=_consume_one, args=(url, received, 20.0))
    consumer.start()
    assert waiting.wait(20), "the consumer never started waiting"
    _publish(url, {"job": 7})
    consumer.join(30)
    assert received == [{"job": 7}, True]
    assert rung == [True], "the wait ended by a ring, not by running out"


@linux_only
def test_a_consumer_without_the_doorbell_still_receives_by_polling(tmp_path):
    path = tmp_path / "broker.sqlite"
    url = f"{embedded_broker.ALIAS}+sqlite:///{path}"
    holder = embedded_broker.Doorbell(f"sqlite:///{path}")  # another consumer of this broker
    assert holder.listen()
    try:
        received: list = []
        consumer = threading.Thread(target=_consume_one, args=(url, received, 20.0))
        consumer.start()
        time.sleep(0.3)  # the consumer is between polls; the ring goes to the holder
        _publish(url, {"job": 8})
        consumer.join(30)
        assert received == [{"job": 8}, False]
        assert holder.wait(0), "the publish rang the doorbell's holder"
    finally:
        holder.close()


def test_ringing_with_nobody_listening_is_harmless(tmp_path):
    doorbell = embedded_broker.Doorbell(f"sqlite:///{tmp_path / 'nobody.sqlite'}")
    doorbell.ring()  # ECONNREFUSED (or unsupported): swallowed
    assert doorbell.listen() is doorbell.supported
    doorbell.close()
