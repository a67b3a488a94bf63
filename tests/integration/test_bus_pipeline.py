"""On RabbitMQ a told pack's events go out back to back and are confirmed together
(`hpod.daemon.bus._ConfirmPipeline`); if that fails they are sent one by one: either way
every event reaches the events exchange, in order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from hpod.config import Settings
from hpod.daemon import bus as bus_module
from hpod.daemon.bus import Bus
from hpod.workers.celery_config import make_celery

pytestmark = pytest.mark.broker


@pytest.fixture
def bus(rabbitmq: str, tmp_path: Path) -> Iterator[Bus]:
    settings = Settings(data_dir=tmp_path, local_workers=0, broker_url=rabbitmq)
    bus = Bus(settings, make_celery(settings))
    yield bus
    bus.close()


@pytest.fixture
def watched(rabbitmq: str) -> Iterator[tuple[Any, str]]:
    """A channel and an exclusive queue bound to every `trial.*` event."""
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq))
    channel = conn.channel()
    channel.exchange_declare("hpod.events", exchange_type="topic", durable=True)
    name = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(name, "hpod.events", routing_key="trial.*")
    yield channel, name
    conn.close()


def received(channel: Any, queue: str, n: int) -> list[int]:
    """The trial numbers of the first `n` events on `queue` (they are there: the bus
    returned only after the broker confirmed them)."""
    numbers = []
    for _ in range(n):
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None, f"only {len(numbers)} of {n} events arrived"
        numbers.append(json.loads(body)["trial"])
    return numbers


def _events(n: int) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [("trial.completed", "s", {"trial": i}) for i in range(n)]


async def test_a_packs_events_are_confirmed_together_and_arrive_in_order(
    bus: Bus, watched: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    one_by_one: list[str] = []
    real = bus._send_event
    monkeypatch.setattr(bus, "_send_event", lambda b, t: (one_by_one.append(t), real(b, t)))
    await bus.events(_events(300))
    await bus.events(_events(3))  # a second batch on the same channel: its tags go on
    assert received(*watched, 303) == [*range(300), *range(3)]
    assert one_by_one == []  # all through the pipeline
    assert bus.outbox == 0


async def test_a_single_event_goes_through_the_pipeline_too(
    bus: Bus, watched: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unbatched trial's one event: the pipeline's direct publish, not kombu's."""
    one_by_one: list[str] = []
    real = bus._send_event
    monkeypatch.setattr(bus, "_send_event", lambda b, t: (one_by_one.append(t), real(b, t)))
    for i in range(3):
        await bus.events([("trial.completed", "s", {"trial": i})])
    assert received(*watched, 3) == [0, 1, 2]
    assert one_by_one == []
    assert bus.outbox == 0


async def test_a_failed_pipeline_sends_the_events_one_by_one(
    bus: Bus, watched: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Any, exchange: str, messages: Any, timeout: float) -> None:
        raise ConnectionError("confirms lost")

    monkeypatch.setattr(bus_module._ConfirmPipeline, "publish", refuse)
    await bus.events(_events(4))
    await bus.events(_events(1))  # a single event falls back too
    assert received(*watched, 5) == [0, 1, 2, 3, 0]
    assert bus.outbox == 0


async def test_the_trials_queue_is_bound_once_per_connection_and_declared_on_a_new_one(
    bus: Bus, rabbitmq: str
) -> None:
    """A dispatch passes the trials queue bound to the publisher's channel (kombu would bind
    a copy per publish); after a reconnect it is bound, and declared, on the new channel:
    a deleted queue is there again and gets the task."""
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq))
    channel = conn.channel()
    channel.queue_declare("hpod.trials", durable=True)
    channel.queue_purge("hpod.trials")
    task = {"study": "s", "trial_id": 1, "number": 0, "params": {}, "attempt": 1}
    await bus.dispatch(task, soft_limit=30, hard_limit=60)
    first = bus._main._bound["hpod.trials"]
    await bus.dispatch(task, soft_limit=30, hard_limit=60)
    assert bus._main._bound["hpod.trials"] is first
    await bus._main.run(bus._main.drop)
    channel.queue_delete("hpod.trials")
    await bus.dispatch(task, soft_limit=30, hard_limit=60)
    assert bus._main._bound["hpod.trials"] is not first
    assert channel.queue_declare("hpod.trials", passive=True).method.message_count == 1
    channel.queue_purge("hpod.trials")
    conn.close()
