"""The embedded broker's part of issue 12 (finding 13 and the dead-letter bounds of finding 8).

A message put back after its consumer died must be delivered marked ``redelivered``, as
RabbitMQ does: the daemon republishes a trial's event only for a redelivered result, and
without the mark the events of trials told just before a kill were never published (4 of
2,910 trials in the campaign). And a queue declared with ``x-max-length``/``x-message-ttl``
(hpod's dead letters) is bounded on the embedded broker too.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually
from kombu import Connection, Producer, Queue

import hpod.fs_transport  # noqa: F401  (registers hpodfs://)

HOLD = r"""
import sys, time
import hpod.fs_transport
from kombu import Connection
data, ready = sys.argv[1:3]
options = {"data_folder_in": data, "data_folder_out": data, "control_folder": data + "-control"}
with Connection("hpodfs://", transport_options=options) as conn:
    message = conn.SimpleQueue("jobs").get(timeout=10)
    open(ready, "w").write(message.payload["id"])
    time.sleep(600)  # never acks: killed by the test
"""


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Callable[..., Connection]]:
    """hpodfs:// connections on one test folder; closed at teardown."""
    opened: list[Connection] = []

    def _connect(**extra: Any) -> Connection:
        data = tmp_path / "messages"
        options = {
            "data_folder_in": str(data),
            "data_folder_out": str(data),
            "control_folder": str(data) + "-control",
            "polling_interval": 0.05,
            **extra,
        }
        conn = Connection("hpodfs://", transport_options=options)
        conn.connect()
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.release()


def _publish(conn: Connection, *ids: str, queue: Queue | None = None) -> None:
    producer = Producer(conn.default_channel, serializer="json")
    for ident in ids:
        q = queue or Queue("jobs")
        producer.publish({"id": ident}, routing_key=q.name, declare=[q])


def test_a_message_recovered_from_a_killed_consumer_is_marked_redelivered(
    connect: Callable[..., Connection], tmp_path: Path
) -> None:
    """Claimed by a process that is SIGKILLed before acking: the next consumer gets it with
    ``redelivered`` set; a message never delivered before has it unset."""
    conn = connect(claim_recovery_interval=0.1)
    _publish(conn, "victim")
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "messages"), str(ready)])
    try:

        def claimed() -> bool:
            assert holder.poll() is None, "the holder exited before it claimed"
            return ready.exists()

        eventually(claimed, 30, 0.05, "the holder did not claim")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    _publish(conn, "fresh")
    simple = conn.SimpleQueue("jobs")
    first, second = simple.get(timeout=5), simple.get(timeout=5)
    assert (first.payload["id"], first.delivery_info.get("redelivered")) == ("victim", True)
    assert (second.payload["id"], bool(second.delivery_info.get("redelivered"))) == (
        "fresh",
        False,
    )
    first.ack()
    second.ack()
    simple.close()


def test_a_requeued_message_is_marked_redelivered_and_keeps_its_place(
    connect: Callable[..., Connection],
) -> None:
    """Reject with requeue, as AMQP: the same message again, first in line, redelivered."""
    conn = connect()
    _publish(conn, "a", "b")
    simple = conn.SimpleQueue("jobs")
    first = simple.get(timeout=1)
    assert not first.delivery_info.get("redelivered")
    first.reject(requeue=True)
    again = simple.get(timeout=1)
    assert (again.payload["id"], again.delivery_info.get("redelivered")) == ("a", True)
    again.ack()
    assert simple.get(timeout=1).payload["id"] == "b"
    simple.close()


def test_a_bounded_queue_drops_its_oldest_and_expired_messages(
    connect: Callable[..., Connection],
) -> None:
    """``x-max-length`` keeps the newest messages (drop-head); ``x-message-ttl`` deletes
    the expired ones when the next message is added."""
    conn = connect()
    by_length = Queue("dead", durable=True, queue_arguments={"x-max-length": 3})
    _publish(conn, *[f"m{i}" for i in range(5)], queue=by_length)
    assert conn.default_channel._size("dead") == 3
    simple = conn.SimpleQueue(by_length)
    kept = [simple.get(timeout=1) for _ in range(3)]
    assert [m.payload["id"] for m in kept] == ["m2", "m3", "m4"]
    for message in kept:
        message.ack()
    simple.close()

    by_age = Queue("aged", durable=True, queue_arguments={"x-message-ttl": 200})
    _publish(conn, "old", queue=by_age)
    time.sleep(0.3)
    _publish(conn, "new", queue=by_age)
    assert conn.default_channel._size("aged") == 1
