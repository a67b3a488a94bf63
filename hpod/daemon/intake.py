"""Queue intake: consume `hpod.requests` and `hpod.results` and hand them to the event loop.

kombu's consumers are synchronous and work the same on RabbitMQ and on the embedded broker, so
each queue has its own *lane*: a thread with its own connection, so that a request that fails
(or is slow) never delays a worker's result, and the reverse. Each message is handed to an
async handler on the event loop and acknowledged only after that handler returns, i.e. after
its effect is persisted.

A message whose handling fails is never retried in place (no sleep in the lane while other
messages wait) and never forever:

* it is copied to ``<queue>.retry`` with its try count in the header ``x-hpod-attempts`` and
  the time of its next try in ``x-hpod-retry-at`` (published first, then the original is
  acknowledged, so nothing is lost between the two), and the lane goes on with the next
  message. The lane also consumes ``<queue>.retry``: it holds each waiting copy until its time
  and then moves it back to ``<queue>``. The count travels in the message, so it survives
  restarts, on RabbitMQ and on the embedded broker alike (which has no delivery limit, TTL
  or dead-letter exchange to lean on). Waits grow with `hpod.backoff.Backoff`.
* after `redelivery_max_attempts` failed tries, or at once for a message that can never be
  handled (a content type other than JSON, or `Unprocessable` raised by a handler), it goes to
  the bounded dead-letter queue ``hpod.dead`` with the reason, the queue it came from and the
  tries in its headers; a request's sender gets an error reply and a ``request.rejected`` event.

Each lane measures its lag (how long messages have waited without the lane making progress)
for ``/health``, which answers 503 when a lane is stuck. The results lane consumes
``hpod.results`` as RabbitMQ's *exclusive* consumer: a second daemon on the same broker and
vhost is refused at start (`BrokerInUse`) instead of taking this daemon's results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from amqp.exceptions import AccessRefused, ResourceLocked  # type: ignore[import-untyped]
from kombu import Connection, Consumer, Message, Producer, Queue
from kombu.serialization import TRUSTED_CONTENT, prepare_accept_content

from hpod.backoff import Backoff
from hpod.config import Settings
from hpod.errors import HpodError
from hpod.logs import bind_ids
from hpod.messaging import (
    ATTEMPTS_HEADER,
    DEAD_LETTERS,
    LEGACY_DEAD_LETTERS,
    REQUESTS,
    RESULTS,
    connect,
    queue,
    retry_queue_name,
)
from hpod.schema import load_json

log = structlog.get_logger("hpod.intake")

Handler = Callable[[bytes, dict[str, Any]], Coroutine[Any, Any, None]]
#: Called (fire and forget, on the event loop) when a message is dead-lettered:
#: (queue, body, properties, reason).
DeadHandler = Callable[[str, bytes, dict[str, Any], str], Coroutine[Any, Any, None]]

RETRY_AT_HEADER = "x-hpod-retry-at"
#: Tries that failed for a fault of the infrastructure (not counted against the limit).
OUTAGES_HEADER = "x-hpod-outages"
ERROR_HEADER = "x-hpod-error"
QUEUE_HEADER = "x-hpod-queue"
#: The content types a lane takes: JSON (``accept=["json"]``, never pickle), and kombu's
#: "trusted" raw types, which are what a plain AMQP client sends when it sets none.
ACCEPT = prepare_accept_content(["json"])
#: How often a lane counts the messages waiting on its queue, for its lag.
BACKLOG_EVERY = 5.0
#: Waiting copies a lane holds at once (each an unacknowledged message of ``<queue>.retry``, in
#: memory: at most this many times `max_message_bytes`); the rest wait on the queue.
RETRY_PREFETCH = 50


class Unprocessable(HpodError):
    """Raised by a handler for a message that can never be handled: dead-lettered at once."""


class BrokerInUse(HpodError):
    """Another daemon already consumes this broker's (and vhost's) `hpod.results`."""


@dataclass
class _Parked:
    """A copy waiting on ``<queue>.retry`` for its next try."""

    due: float
    seq: int
    message: Message = field(compare=False)

    def __lt__(self, other: _Parked) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


class _ExclusiveQueue(Queue):  # type: ignore[misc]  # kombu is untyped
    """A queue consumed exclusively: RabbitMQ refuses any other consumer while we consume.

    kombu's `Queue.consume` has no ``exclusive`` flag, so this passes it to ``basic_consume``
    (the embedded broker's channels accept and ignore it; the data-dir lock covers them).
    """

    def consume(
        self,
        consumer_tag: str = "",
        callback: Any = None,
        no_ack: bool | None = None,
        nowait: bool = False,
        on_cancel: Any = None,
    ) -> Any:
        return self.channel.basic_consume(
            queue=self.name,
            no_ack=bool(no_ack),
            consumer_tag=consumer_tag or "",
            callback=callback,
            nowait=nowait,
            arguments=self.consumer_arguments,
            on_cancel=on_cancel,
            exclusive=True,
        )


class Lane:
    """One queue, its retry queue, one connection and one thread."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        handler: Handler,
        prefetch: int,
        exclusive: bool = False,
        on_dead: DeadHandler | None = None,
    ) -> None:
        self.name = name
        self._settings = settings
        self._loop = loop
        self._handler = handler
        self._on_dead = on_dead
        self._prefetch = prefetch
        self._exclusive = exclusive
        self.stopping = threading.Event()
        self.paused = threading.Event()
        self.opened = threading.Event()
        self.ready = threading.Event()
        self.refused: str | None = None
        self._inbox: deque[Message] = deque()
        self._parked: list[_Parked] = []
        self._seq = itertools.count()
        self._reconnect = Backoff(initial=0.5, maximum=10.0)
        self._thread = threading.Thread(target=self._run, name=f"hpod-intake-{name}", daemon=True)
        # Health, written by the lane thread and read by /health (plain floats: atomic enough).
        self.connected = False
        self.disconnected_since: float | None = time.monotonic()
        self.last_progress = time.monotonic()
        self.busy_since: float | None = None
        self.backlog = 0
        self.dead_lettered = 0
        self.retried = 0

    # --- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread: it connects, declares and consumes, then waits for `opened`."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming; a message being handled finishes and is acknowledged first."""
        self.stopping.set()
        self.opened.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    @property
    def alive(self) -> bool:
        """Whether the lane's thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                with connect(self._settings, self._settings.broker_heartbeat_seconds) as conn:
                    self._consume(conn)
            except (AccessRefused, ResourceLocked) as exc:
                self.refused = (
                    f"another consumer holds {self.name} on this broker and vhost "
                    f"(another hpod daemon?): {exc}"
                )
                log.error("intake.consumer_refused", queue=self.name, error=str(exc))
            except Exception as exc:  # broker gone: retry with back-off, never crash the daemon
                log.warning("intake.broker_error", queue=self.name, error=repr(exc))
            finally:
                self._inbox.clear()  # unacknowledged: the broker delivers them again
                self._parked.clear()
                if self.connected:
                    self.disconnected_since = time.monotonic()
                self.connected = False
            if not self.stopping.is_set():
                delay = self._reconnect.next_delay()
                log.info("intake.reconnecting", queue=self.name, retry_in=round(delay, 2))
                self.stopping.wait(delay)

    def _consume(self, conn: Connection) -> None:
        self._conn = conn
        channel = conn.channel()
        channel.basic_qos(0, self._prefetch, False)
        retry_channel = conn.channel()
        retry_channel.basic_qos(0, RETRY_PREFETCH, False)
        self._producer = Producer(conn.channel())
        origin_queue = _ExclusiveQueue(self.name, durable=True) if self._exclusive else None
        consumer = Consumer(
            channel,
            queues=[origin_queue or queue(self.name)],
            on_message=self._inbox.append,
            accept=["json"],
        )
        retry = Consumer(
            retry_channel,
            queues=[queue(retry_queue_name(self.name))],
            on_message=self._park,
            accept=["json"],
        )
        for entity in (queue(retry_queue_name(self.name)), queue(DEAD_LETTERS)):
            entity.bind(retry_channel).declare()
        consumer.consume()
        retry.consume()
        self.refused = None
        self.connected = True
        self.disconnected_since = None
        self.last_progress = time.monotonic()
        # A good connection: the next fault starts with a short wait again.
        self._reconnect.reset()
        self.ready.set()
        while not self.opened.is_set():  # the daemon is still starting: hold the messages
            self.opened.wait(0.5)
            conn.heartbeat_check()
        self._serve(conn, channel, [consumer, retry])

    def _serve(self, conn: Connection, channel: Any, consumers: list[Consumer]) -> None:
        active = True
        next_backlog = 0.0
        try:
            while not self.stopping.is_set():
                if active and self.paused.is_set():  # a drain: requests wait for the next start
                    for consumer in consumers:
                        consumer.cancel()
                    active = False
                    log.info("intake.paused", queue=self.name)
                self._drain(conn)
                self._work(active)
                if time.monotonic() >= next_backlog:
                    self.backlog = _ready_count(channel, self.name)
                    next_backlog = time.monotonic() + BACKLOG_EVERY
        finally:
            for consumer in consumers:
                consumer.cancel()

    def _drain(self, conn: Connection) -> None:
        timeout = 0.5
        if self._parked:
            timeout = max(0.0, min(timeout, self._parked[0].due - time.time()))
        if self._inbox:
            timeout = 0.0
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=timeout)
        conn.heartbeat_check()

    def _work(self, active: bool) -> None:
        while self._inbox and not self.stopping.is_set():
            message = self._inbox.popleft()
            if active and not self.paused.is_set():
                self._handle(message)
            else:
                message.requeue()
        while self._parked and self._parked[0].due <= time.time() and active:
            self._unpark(heapq.heappop(self._parked).message)

    # --- one message ----------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        raw = _raw(message)
        props = _props(message)
        attempts = _attempts(message)
        self.busy_since = time.monotonic()
        try:
            with bind_ids(**message_ids(self.name, raw)):
                self._check_content_type(message)
                self._call(raw, props)
        except Unprocessable as exc:
            self._dead_letter(message, raw, props, str(exc), attempts + 1)
        except (concurrent.futures.CancelledError, RuntimeError) as exc:
            if self._loop.is_closed() or isinstance(exc, concurrent.futures.CancelledError):
                message.requeue()  # the daemon is going away: not the message's fault
                self.stopping.set()
                return
            self._failed(message, raw, props, exc, attempts + 1)
        except Exception as exc:
            self._failed(message, raw, props, exc, attempts + 1)
        else:
            message.ack()
        finally:
            self.busy_since = None
            self.last_progress = time.monotonic()

    def _check_content_type(self, message: Message) -> None:
        """JSON only: `application/json` (parameters such as ``; charset=utf-8`` allowed), or
        none / kombu's raw types (a plain client's default). Never a deserialiser's choice."""
        content_type = message.content_type
        media = str(content_type or "").split(";")[0].strip().lower()
        if media and media not in ACCEPT and media not in TRUSTED_CONTENT:
            raise Unprocessable(f"content type {content_type!r} is not accepted (JSON only)")

    def _call(self, raw: bytes, props: dict[str, Any]) -> None:
        """Run the handler on the event loop and wait for it, keeping the connection alive."""
        future = asyncio.run_coroutine_threadsafe(self._handler(raw, props), self._loop)
        while True:
            try:
                future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if future.done():  # the handler itself raised TimeoutError
                    raise
                self._keep_alive()
                continue
            return

    def _keep_alive(self) -> None:
        """During a long handler: read what arrived (heartbeats; deliveries only go to the
        inbox) and send our heartbeat, so the broker does not drop the connection."""
        try:
            self._conn.drain_events(timeout=0)
        except TimeoutError:
            pass
        except Exception as exc:  # the next drain sees a dead connection and reconnects
            log.debug("intake.keep_alive_failed", queue=self.name, error=repr(exc))
        try:
            self._conn.heartbeat_check()
        except Exception as exc:
            log.debug("intake.heartbeat_failed", queue=self.name, error=repr(exc))

    def _failed(
        self, message: Message, raw: bytes, props: dict[str, Any], exc: BaseException, tries: int
    ) -> None:
        """Handling raised: retry later, or dead-letter after the last try.

        A fault of the infrastructure (`is_transient`: storage or broker unreachable, disk
        full) is not the message's fault: that try is not counted, and the message waits
        with back-off for as long as the fault lasts (the lane goes on meanwhile).
        """
        error = repr(exc)[:1000]
        limit = self._settings.redelivery_max_attempts
        transient = is_transient(exc)
        if transient:
            tries -= 1
            outages = _int_header(message, OUTAGES_HEADER) + 1
        elif tries >= limit:
            reason = f"handling failed {tries} times; last error: {error}"
            self._dead_letter(message, raw, props, reason, tries)
            return
        backoff = Backoff(
            initial=self._settings.redelivery_backoff_seconds,
            maximum=self._settings.redelivery_backoff_max_seconds,
        )
        backoff.tries = (outages if transient else tries) - 1
        delay = backoff.next_delay()
        headers = {
            **props["headers"],
            ATTEMPTS_HEADER: tries,
            RETRY_AT_HEADER: time.time() + delay,
            ERROR_HEADER: error,
        }
        if transient:
            headers[OUTAGES_HEADER] = outages
        self._publish(raw, message, retry_queue_name(self.name), headers)
        message.ack()
        self.retried += 1
        log.warning(
            "intake.handler_failed",
            queue=self.name,
            error=error,
            attempt=tries,
            max_attempts=limit,
            counted=not transient,
            retry_in=round(delay, 2),
        )

    def _dead_letter(
        self, message: Message, raw: bytes, props: dict[str, Any], reason: str, tries: int
    ) -> None:
        """Keep the message on ``hpod.dead`` with why, then acknowledge it."""
        headers = {
            **props["headers"],
            ERROR_HEADER: reason[:2000],
            QUEUE_HEADER: self.name,
            ATTEMPTS_HEADER: tries,
        }
        headers.pop(RETRY_AT_HEADER, None)
        for key in ("reply_to", "correlation_id", "message_id"):
            if props.get(key):
                headers[f"x-original-{key}"] = str(props[key])
        self._publish(raw, message, DEAD_LETTERS, headers)
        message.ack()
        self.dead_lettered += 1
        log.error("intake.dead_lettered", queue=self.name, reason=reason, attempts=tries)
        if self._on_dead is not None:
            asyncio.run_coroutine_threadsafe(self._guarded_on_dead(raw, props, reason), self._loop)

    async def _guarded_on_dead(self, raw: bytes, props: dict[str, Any], reason: str) -> None:
        assert self._on_dead is not None
        try:
            await self._on_dead(self.name, raw, props, reason)
        except Exception as exc:  # a reply or event that cannot go out loses nothing else
            log.warning("intake.on_dead_failed", queue=self.name, error=repr(exc))

    def _publish(
        self, raw: bytes, message: Message, routing_key: str, headers: dict[str, Any]
    ) -> None:
        """Publish a copy of `message` (body and properties) with `headers`, confirmed."""
        extra = {
            key: message.properties[key]
            for key in ("reply_to", "correlation_id", "message_id")
            if message.properties.get(key)
        }
        self._producer.publish(
            raw,
            exchange="",
            routing_key=routing_key,
            content_type=message.content_type or "application/data",
            content_encoding=message.content_encoding or "binary",
            delivery_mode=2,
            headers=headers,
            **extra,
        )

    # --- the retry queue ------------------------------------------------------------------

    def _park(self, message: Message) -> None:
        """A copy arrived on ``<queue>.retry``: hold it (unacknowledged) until its time."""
        try:
            due = float((message.headers or {}).get(RETRY_AT_HEADER, 0))
        except (TypeError, ValueError, OverflowError):
            due = 0.0
        # Never trust a queue's contents: no copy waits longer than the back-off's cap.
        latest = time.time() + self._settings.redelivery_backoff_max_seconds
        due = 0.0 if math.isnan(due) else min(due, latest)
        heapq.heappush(self._parked, _Parked(due, next(self._seq), message))

    def _unpark(self, message: Message) -> None:
        """Its time has come: back on the lane's queue (publish first, then acknowledge)."""
        raw = _raw(message)
        headers = dict(message.headers or {})
        headers.pop(RETRY_AT_HEADER, None)
        self._publish(raw, message, self.name, headers)
        message.ack()

    # --- health ---------------------------------------------------------------------------

    def health(self, stuck_after: float) -> dict[str, Any]:
        """Lag and state of the lane; ``stuck`` names why it is stuck, or is None."""
        now = time.monotonic()
        waiting = bool(self.backlog or self._inbox or self.busy_since is not None)
        lag = now - self.last_progress if waiting and not self.paused.is_set() else 0.0
        busy = now - self.busy_since if self.busy_since is not None else 0.0
        down = now - self.disconnected_since if self.disconnected_since is not None else 0.0
        stuck = None
        if not self.alive and not self.stopping.is_set():
            stuck = f"{self.name}: the intake thread has stopped"
        elif self.refused:
            stuck = self.refused
        elif down > stuck_after:
            stuck = f"{self.name}: broker unreachable for {down:.0f} s"
        elif lag > stuck_after:
            stuck = f"{self.name}: messages waiting, no progress for {lag:.0f} s"
        return {
            "connected": self.connected,
            "waiting": self.backlog + len(self._inbox),
            "lag_s": round(lag, 1),
            "handling_s": round(busy, 1),
            "retrying": len(self._parked),
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
            "stuck": stuck,
        }


class QueueIntake:
    """Consumes the daemon's queues, one lane (thread and connection) per queue."""

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        on_request: Handler,
        on_result: Handler,
        prefetch: int = 64,
        on_dead: DeadHandler | None = None,
    ) -> None:
        self._settings = settings
        self.lanes = {
            REQUESTS: Lane(REQUESTS, settings, loop, on_request, prefetch, on_dead=on_dead),
            RESULTS: Lane(RESULTS, settings, loop, on_result, prefetch, exclusive=True),
        }

    def start(self, timeout: float = 30.0) -> None:
        """Connect and consume; returns once every lane consumes, messages held until `open`.

        Raises `BrokerInUse` when another daemon consumes `hpod.results`, and RuntimeError
        when the broker cannot be reached within `timeout`.
        """
        for lane in self.lanes.values():
            lane.start()
        deadline = time.monotonic() + timeout
        for lane in self.lanes.values():
            while not lane.ready.wait(0.1):
                if lane.refused:
                    self.stop()
                    raise BrokerInUse(lane.refused)
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"could not start consuming from the broker within {timeout:.0f} s"
                    )
        self._warn_legacy_dead_letters()

    def open(self) -> None:
        """Start handling messages (the daemon's handlers are ready)."""
        for lane in self.lanes.values():
            lane.opened.set()

    def pause_requests(self) -> None:
        """Stop taking requests (a drain); results keep flowing so running trials finish."""
        self.lanes[REQUESTS].paused.set()

    def stop(self) -> None:
        """Stop consuming; messages being handled finish and are acknowledged first."""
        for lane in self.lanes.values():
            lane.stopping.set()
            lane.opened.set()
        for lane in self.lanes.values():
            lane.stop()

    def health(self) -> dict[str, Any]:
        """Each lane's lag and state, and whether intake is stuck (with the reasons)."""
        lanes = {
            name: lane.health(self._settings.intake_stuck_seconds)
            for name, lane in self.lanes.items()
        }
        reasons = [lane["stuck"] for lane in lanes.values() if lane["stuck"]]
        return {"stuck": bool(reasons), "reasons": reasons, "queues": lanes}

    def _warn_legacy_dead_letters(self) -> None:
        """Tell the operator about dead letters left on the pre-issue-12, unbounded queue."""
        if self._settings.embedded:
            return
        try:
            with connect(self._settings) as conn:
                channel = conn.channel()
                _, count, _ = channel.queue_declare(LEGACY_DEAD_LETTERS, passive=True)
        except Exception:  # absent (404 closes the channel): nothing to tell
            return
        log.warning(
            "intake.legacy_dead_letters",
            queue=LEGACY_DEAD_LETTERS,
            messages=count,
            hint=f"dead letters now go to the bounded {DEAD_LETTERS}; inspect and delete "
            f"{LEGACY_DEAD_LETTERS} (docs/operations.md)",
        )


def _raw(message: Message) -> bytes:
    body = message.body
    return body if isinstance(body, bytes) else str(body).encode()


def _props(message: Message) -> dict[str, Any]:
    """The properties a handler sees; a retried copy counts as redelivered (it may have had
    effects before it failed, e.g. a result told whose event did not go out). That includes
    a copy retried after an outage, whose try was not counted: a commit can land though the
    client saw it fail (PostgreSQL gone between COMMIT and its answer)."""
    props = dict(message.properties)
    props["headers"] = dict(message.headers or {})
    props["redelivered"] = (
        bool((message.delivery_info or {}).get("redelivered"))
        or _attempts(message) > 0
        or _int_header(message, OUTAGES_HEADER) > 0
    )
    return props


def _attempts(message: Message) -> int:
    """Failed tries so far, from the message's own header (0 for a fresh message)."""
    return _int_header(message, ATTEMPTS_HEADER)


def _int_header(message: Message, name: str) -> int:
    """A count from the message's headers; 0 when absent or not a count (never trusted)."""
    value = (message.headers or {}).get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return min(max(0, int(value)), 1_000_000)
    except (ValueError, OverflowError):
        return 0


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is a fault of the infrastructure,
    not of the message: a database that is down, a broker connection lost, a full disk, a
    journal write that failed. Anything else counts as the message's fault."""
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import InterfaceError, OperationalError

    from hpod.journal import JournalGroupError

    transient = (OSError, BrokerError, OperationalError, InterfaceError, JournalGroupError)
    seen: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; a cycle must not hang the lane
        if seen is None:
            return False
        if isinstance(seen, transient):
            return True
        seen = seen.__cause__
    return False


def _ready_count(channel: Any, name: str) -> int:
    """Messages ready on queue `name` (a passive declare; 0 when it cannot be read)."""
    try:
        ok = channel.queue_declare(queue=name, passive=True)
        return int(ok.message_count)
    except Exception as exc:
        log.debug("intake.backlog_unknown", queue=name, error=repr(exc))
        return 0


#: Result messages longer than this are not read for log ids (`message_ids`): a single
#: trial's result is a few hundred bytes, a pack's is long and has no ids at its top.
SMALL_RESULT_BYTES = 8192


def message_ids(queue_name: str, raw: bytes) -> dict[str, Any]:
    """The study, trial and request ids of a message, for its log lines (best effort: any
    body, however deep or broken, gives at most an empty dict).

    A large result message is a pack's (``{"v": 1, "results": [...]}``), which names no
    study or trial at its top: it is not parsed here (its parse was a tenth of the daemon's
    CPU per trial of a batched study, to find nothing)."""
    if queue_name == RESULTS and len(raw) > SMALL_RESULT_BYTES:
        return {}
    try:
        data = load_json(raw, max(len(raw), 1))  # depth-limited: never recurses (issue 12)
    except Exception:  # RequestRejected, MemoryError…: no ids, not a failure
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
