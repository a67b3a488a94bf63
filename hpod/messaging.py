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
#: Dead letters of every intake queue (requests and results), bounded by `DEAD_LETTER_ARGUMENTS`.
DEAD_LETTERS = "hpod.dead"
#: Where hpod before issue 12 kept dead requests, declared without bounds. RabbitMQ refuses to
#: redeclare a queue with other arguments (PRECONDITION_FAILED), so the bounded queue has a new
#: name and this one is only checked at start (a warning when it still holds messages).
LEGACY_DEAD_LETTERS = "hpod.requests.dead"
#: The bounds of `DEAD_LETTERS`: fixed, because RabbitMQ fixes a queue's arguments when it is
#: first declared; an operator lowers them with a policy (docs/operations.md). 14 days, 10,000
#: messages, 64 MiB, oldest dropped first so that the newest failures are the ones kept.
DEAD_LETTER_MAX_LENGTH = 10_000
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
DEAD_LETTER_TTL_MS = 14 * 24 * 3600 * 1000
DEAD_LETTER_ARGUMENTS: dict[str, Any] = {
    "x-max-length": DEAD_LETTER_MAX_LENGTH,
    "x-max-length-bytes": DEAD_LETTER_MAX_BYTES,
    "x-message-ttl": DEAD_LETTER_TTL_MS,
    "x-overflow": "drop-head",
}
#: Header counting how many times a message's handling failed (kept across restarts).
ATTEMPTS_HEADER = "x-hpod-attempts"
TRIALS = "hpod.trials"
EVENTS_EXCHANGE = "hpod.events"
EVALUATE_TASK = "hpod.evaluate"
#: One task evaluating several trials in turn (cheap evaluations packed by the batching policy).
EVALUATE_BATCH_TASK = "hpod.evaluate_batch"

events_exchange = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)


def retry_queue_name(name: str) -> str:
    """The queue where failed messages of `name` wait for their next try."""
    return f"{name}.retry"


def queue(name: str) -> Queue:
    """The durable queue `name`, reached through the default exchange.

    Only the dead-letter queue has arguments (its bounds); every other queue is declared
    without, as before, so that existing deployments redeclare them unchanged.
    """
    if name == DEAD_LETTERS:
        return Queue(name, durable=True, queue_arguments=dict(DEAD_LETTER_ARGUMENTS))
    return Queue(name, durable=True)


def connect(settings: Settings, heartbeat: float = 0) -> Connection:
    """A kombu connection to the broker in force (RabbitMQ or the embedded one).

    `heartbeat` (seconds, RabbitMQ only) is for connections whose owner calls
    ``heartbeat_check`` often enough (the intake does); a publisher that sits idle for long
    keeps 0 and reconnects on its next send instead.
    """
    import hpod.fs_transport  # noqa: F401  (registers the embedded transport)

    return Connection(
        settings.broker,
        transport_options=settings.broker_transport_options(),
        connect_timeout=10,
        heartbeat=0 if settings.embedded else heartbeat,
    )


def dumps(body: dict[str, Any]) -> bytes:
    """Compact JSON: the only encoding on hpod's queues."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
