"""Queue intake: consume `hpod.requests` and `hpod.results` and hand them to the event loop.

kombu's consumers are synchronous and work the same on RabbitMQ and on the embedded broker, so
they run in one thread; each message is handed to an async handler on the event loop and
acknowledged only after that handler returns, i.e. after its effect is persisted. A handler
that raises (storage down, say) gets the message requeued after a pause, never dropped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from kombu import Connection, Consumer, Message

from hpod.config import Settings
from hpod.errors import RequestRejected
from hpod.logs import bind_ids
from hpod.messaging import REQUESTS, RESULTS, connect, queue
from hpod.schema import load_json

log = structlog.get_logger("hpod.intake")

Handler = Callable[[bytes, dict[str, Any]], Coroutine[Any, Any, None]]


class QueueIntake:
    """Consumes the daemon's queues in a thread; one async handler per queue."""

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        on_request: Handler,
        on_result: Handler,
        prefetch: int = 64,
    ) -> None:
        self._settings = settings
        self._loop = loop
        self._handlers = {REQUESTS: on_request, RESULTS: on_result}
        self._prefetch = prefetch
        self._stopping = threading.Event()
        self._requests_paused = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpod-intake", daemon=True)

    def start(self) -> None:
        """Start consuming; returns once the queues are declared and consumed."""
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("could not start consuming from the broker within 30 s")

    def pause_requests(self) -> None:
        """Stop taking requests (a drain); results keep flowing so running trials finish."""
        self._requests_paused.set()

    def stop(self) -> None:
        """Stop consuming; the message being handled finishes and is acknowledged first."""
        self._stopping.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                with connect(self._settings) as conn:
                    self._consume(conn)
                    delay = 0.5
            except Exception as exc:  # broker gone: retry with backoff, never crash the daemon
                log.warning("intake.broker_error", error=repr(exc), retry_in=delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 10)

    def _consume(self, conn: Connection) -> None:
        channel = conn.channel()
        channel.basic_qos(0, self._prefetch, False)
        consumers = {
            name: Consumer(channel, queues=[queue(name)], on_message=self._bind(name), accept=None)
            for name in self._handlers
        }
        for name, consumer in consumers.items():
            if not (name == REQUESTS and self._requests_paused.is_set()):
                consumer.consume()
        self._ready.set()
        requests_active = not self._requests_paused.is_set()
        try:
            while not self._stopping.is_set():
                if requests_active and self._requests_paused.is_set():
                    # A drain: requests stay on the queue for the next start.
                    consumers[REQUESTS].cancel()
                    requests_active = False
                    log.info("intake.requests_paused")
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    conn.heartbeat_check()
        finally:
            for consumer in consumers.values():
                consumer.cancel()

    def _bind(self, name: str) -> Callable[[Message], None]:
        def on_message(message: Message) -> None:
            self._handle(name, message)

        return on_message

    def _handle(self, name: str, message: Message) -> None:
        body = message.body
        raw = body if isinstance(body, bytes) else str(body).encode()
        props = dict(message.properties)
        props["headers"] = dict(message.headers or {})
        props["redelivered"] = bool((message.delivery_info or {}).get("redelivered"))
        try:
            # The handler's task inherits this thread's context: ids bound here are on every
            # log line the handler writes.
            with bind_ids(**_ids(name, raw, self._settings.max_message_bytes)):
                handler = self._handlers[name](raw, props)
                future = asyncio.run_coroutine_threadsafe(handler, self._loop)
            future.result()
        except Exception as exc:
            log.error("intake.handler_failed", queue=name, error=repr(exc))
            time.sleep(1.0)
            message.requeue()
        else:
            message.ack()


def _ids(queue_name: str, raw: bytes, max_bytes: int) -> dict[str, Any]:
    """The study, trial and request ids of a message, for its log lines (best effort)."""
    try:
        data = load_json(raw, max_bytes)  # size and depth checked first (issue 12)
    except RequestRejected:
        return {}
    if not isinstance(data, dict):
        return {}
    study = data.get("study")
    if isinstance(study, dict):  # study.create carries the whole spec
        study = study.get("name")
    if queue_name == RESULTS:
        return {"study": study, "trial": data.get("number")}
    return {
        "request": data.get("id"),
        "study": study if isinstance(study, str) else data.get("name"),
    }
