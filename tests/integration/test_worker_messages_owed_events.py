"""A trial the daemon tells itself (a cache hit, a last attempt expired) has no broker message
behind it: if the daemon dies between the tell and its `trial.*` event, nothing is delivered
again. Its event is noted as owed with the tell and published when the daemon restarts
(found by the fault suite: a cache-hit trial of `fault-b` finished without any event)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pika
import pytest
from conftest import Daemon, DaemonFactory, eventually, quadratic_spec

from hpod.daemon.store import Outcome, StudyStore


def _events(url: str) -> tuple[pika.BlockingConnection, str]:
    """A connection and an exclusive queue bound to `trial.*`, before anything is published."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare("hpod.events", exchange_type="topic", durable=True)
    name = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(name, "hpod.events", routing_key="trial.*")
    return connection, name


def _trial_events(connection: pika.BlockingConnection, name: str, timeout: float) -> list[Any]:
    """The `trial.*` events that arrive: waits up to `timeout` for the first, then one second
    more for any repeat."""
    channel = connection.channel()
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, _props, body = channel.basic_get(name, auto_ack=True)
        if method is None:
            connection.process_data_events(time_limit=0.2)
            continue
        if not seen:
            deadline = time.monotonic() + 1.0
        seen.append(json.loads(body))
    return seen


def _kill(daemon: Daemon) -> None:
    """SIGKILL the daemon, as a crash would, and wait for it."""
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()


@pytest.mark.broker
def test_an_event_owed_when_the_daemon_died_after_the_tell_is_published_at_restart(
    rabbitmq: str, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """Trial 0 told with its event owed (as the daemon tells a cache hit) and no event sent,
    as when the daemon is killed right after the tell: the next daemon publishes
    `trial.completed` for trial 0 with the stored values, once, and the note is cleared."""
    data = tmp_path / "data"
    daemon = start_daemon("--no-workers", broker_url=rabbitmq, data_dir=data)
    assert daemon.request("POST", "/studies", quadratic_spec("owed", trials=2))[0] == 201
    eventually(lambda: daemon.get("/studies/owed")["in_flight"] >= 2, 30, 0.2)
    _kill(daemon)  # two trials in flight and no worker: a graceful stop would drain for a minute
    store = StudyStore(f"journal://{data}/studies.journal")
    spec = store.spec("owed")
    (frozen,) = store.tell_many(spec, [Outcome(0, "complete", [1.25])], owe_events=True)
    assert frozen is not None and store.owed_events("owed") == [0]
    store.close()

    connection, queue = _events(rabbitmq)
    try:
        daemon.start()
        events = _trial_events(connection, queue, 30.0)
    finally:
        connection.close()
    _kill(daemon)
    told = [(e["event"], e["study"], e["trial"], e["values"]) for e in events]
    assert told == [("trial.completed", "owed", 0, [1.25])], daemon.log()[-3000:]
    store = StudyStore(f"journal://{data}/studies.journal")
    assert store.owed_events("owed") == []
    store.close()
