"""The embedded broker (kombu's SQLAlchemy transport on SQLite): messages handed out are deleted,
messages still waiting are kept, and nothing is lost on the way."""

from __future__ import annotations

import sqlite3

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
