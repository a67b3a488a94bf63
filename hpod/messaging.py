"""Names and kombu entities of hpod's queues, shared by the daemon, the workers and tests.

Every queue is durable and addressed through the default exchange by its own name, so a plain
AMQP client publishes a request with nothing but the queue name, and the embedded broker
(whose exchange bindings live in each process's memory) routes the same way without any
shared binding table. Events go to the topic exchange ``hpod.events``, routed by event type.
"""

from __future__ import annotations

import json
from typing import Any

from kombu import Connection, Exchange, Queue

from hpod.config import Settings

REQUESTS = "hpod.requests"
RESULTS = "hpod.results"
DEAD_LETTERS = "hpod.requests.dead"
TRIALS = "hpod.trials"
EVENTS_EXCHANGE = "hpod.events"
EVALUATE_TASK = "hpod.evaluate"
#: One task evaluating several trials in turn (cheap evaluations packed by the batching policy).
EVALUATE_BATCH_TASK = "hpod.evaluate_batch"

events_exchange = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)


def queue(name: str) -> Queue:
    """The durable queue `name`, reached through the default exchange."""
    return Queue(name, durable=True)


def connect(settings: Settings) -> Connection:
    """A kombu connection to the broker in force (RabbitMQ or the embedded one)."""
    import hpod.workers.fs_transport  # noqa: F401  (registers the embedded transport)

    return Connection(
        settings.broker,
        transport_options=settings.broker_transport_options(),
        connect_timeout=10,
    )


def dumps(body: dict[str, Any]) -> bytes:
    """Compact JSON: the only encoding on hpod's queues."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
