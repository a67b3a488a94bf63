"""Everything the daemon sends: replies, events, dead letters and trial dispatches.

kombu connections are not thread-safe and a publish with confirms blocks, so all sends run on
one dedicated thread with its own connection; the event loop only awaits them. A send returns
once the broker has the message (publisher confirms on RabbitMQ, an fsynced file on the
embedded broker), which is what lets a request be acknowledged only after its effects exist.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from celery import Celery
from kombu import Connection, Producer

from hpod.config import Settings
from hpod.messaging import (
    DEAD_LETTERS,
    EVALUATE_BATCH_TASK,
    EVALUATE_TASK,
    connect,
    dumps,
    events_exchange,
    queue,
)

log = structlog.get_logger("hpod.bus")
RETRY_POLICY = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3}


class Bus:
    """The daemon's outgoing messages, sent from one publishing thread."""

    def __init__(self, settings: Settings, celery: Celery) -> None:
        self._settings = settings
        self._celery = celery
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="hpod-publish")
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener(event)` on the event loop for every event the daemon publishes
        (the web page's live updates), in addition to the broker."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    def _get_producer(self) -> Producer:
        if self._producer is None:
            self._conn = connect(self._settings)
            self._producer = self._conn.Producer()
        return self._producer

    def _send(
        self, body: bytes, exchange: Any, routing_key: str, declare: list[Any], **props: Any
    ) -> None:
        self._get_producer().publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            declare=declare,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
            retry_policy=RETRY_POLICY,
            **props,
        )

    async def event(self, event_type: str, study: str | None, **data: Any) -> None:
        """Publish an event on `hpod.events` with routing key `event_type`."""
        event = {"v": 1, "event": event_type, "study": study, "time": time.time(), **data}
        await self._run(self._send, dumps(event), events_exchange, event_type, [events_exchange])
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener (a web page) must never break the daemon
                log.exception("bus.listener_failed")

    async def reply(self, reply_to: str, correlation_id: str | None, body: dict[str, Any]) -> None:
        """Answer a queued request on its `reply_to` queue."""
        await self._run(self._send, dumps(body), "", reply_to, [], correlation_id=correlation_id)

    async def dead_letter(self, raw: bytes, reason: str, origin: dict[str, Any]) -> None:
        """Keep a message that cannot be parsed on `hpod.requests.dead`, with the reason."""
        headers = {"x-hpod-error": reason}
        headers.update({f"x-original-{k}": str(v) for k, v in origin.items() if v})
        await self._run(
            self._get_producer().publish,
            raw,
            exchange="",
            routing_key=DEAD_LETTERS,
            declare=[queue(DEAD_LETTERS)],
            content_type="application/octet-stream",
            content_encoding="binary",
            delivery_mode=2,
            retry=True,
            retry_policy=RETRY_POLICY,
            headers=headers,
        )

    async def dispatch(self, task: dict[str, Any], soft_limit: float, hard_limit: float) -> None:
        """Send one trial to the Celery workers."""
        await self._run(
            self._celery.send_task,
            EVALUATE_TASK,
            kwargs=task,
            soft_time_limit=soft_limit,
            time_limit=hard_limit,
            retry=True,
            retry_policy=RETRY_POLICY,
        )

    async def dispatch_pack(
        self, tasks: list[dict[str, Any]], soft_limit: float, hard_limit: float
    ) -> None:
        """Send several trials to one Celery worker, as one task (see the batching policy)."""
        await self._run(
            self._celery.send_task,
            EVALUATE_BATCH_TASK,
            kwargs={"trials": tasks},
            soft_time_limit=soft_limit,
            time_limit=hard_limit,
            retry=True,
            retry_policy=RETRY_POLICY,
        )

    def close(self) -> None:
        """Finish pending sends and close the connection."""
        self._thread.shutdown(wait=True)
        if self._conn is not None:
            self._conn.release()
