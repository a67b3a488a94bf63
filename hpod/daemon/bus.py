"""Everything the daemon sends: replies, events, dead letters and trial dispatches.

kombu connections are not thread-safe and a publish with confirms blocks, so sends run on
dedicated threads with their own connections (one for events, one for the rest); the event loop
only awaits them. A send returns
once the broker has the message (publisher confirms on RabbitMQ, an fsynced file on the
embedded broker), which is what lets a request be acknowledged only after its effects exist.

Events never fail or hold up the request that caused them: an event that cannot be published
within a short retry (the broker is down) goes to a bounded in-memory outbox, and every later
event queues behind it, in order, until a flusher with back-off has published them all (at
least once; a kill of the daemon while the broker is down loses what is in the outbox).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from celery import Celery
from kombu import Connection, Producer

from hpod.backoff import Backoff
from hpod.config import Settings
from hpod.messaging import (
    DEAD_LETTERS,
    EVALUATE_BATCH_TASK,
    EVALUATE_TASK,
    REQUESTS,
    TRIALS,
    connect,
    dumps,
    events_exchange,
    queue,
)

log = structlog.get_logger("hpod.bus")
RETRY_POLICY = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3}
#: An event tries briefly, then waits in the outbox: it must not hold up its request.
EVENT_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.3}
#: Seconds a pipelined batch of events waits for the broker's confirms before it is sent
#: again one by one.
PIPELINE_CONFIRM_SECONDS = 5.0


class _Publisher:
    """One publishing thread with its own connection (kombu connections are not thread-safe)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self._pipeline: _ConfirmPipeline | None = None
        #: Queues and exchanges bound to this connection's producer channel, by name.
        self._bound: dict[str, Any] = {}

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on this publisher's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def producer(self) -> Producer:
        """The producer (on the publishing thread only); connects on first use."""
        if self._producer is None:
            conn = connect(self._settings)
            # kombu would retry the first connect forever: one try, the caller retries.
            conn.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2)
            self._conn = conn
            self._producer = conn.Producer()
        return self._producer

    def bound(self, entity: Any) -> Any:
        """`entity` (a kombu queue or exchange) bound to the producer's channel, once per
        connection (on the publishing thread only). Given unbound, kombu's publish binds it
        anew on every call, a copy of the queue and its exchange: a tenth of an unbatched
        trial's dispatch CPU. kombu still declares it once per connection, and again on a
        channel a retry opened."""
        producer = self.producer()
        bound = self._bound.get(entity.name)
        if bound is None:
            bound = self._bound[entity.name] = entity(producer.channel)
        return bound

    def pipeline(self) -> _ConfirmPipeline:
        """A channel of this publisher's connection for pipelined confirmed publishes (on
        the publishing thread only; RabbitMQ only)."""
        if self._pipeline is None:
            self.producer()
            assert self._conn is not None
            self._pipeline = _ConfirmPipeline(self._conn.connection.channel())
        return self._pipeline

    def drop(self) -> None:
        """After a failed send (on the publishing thread): the next send connects afresh."""
        conn, self._conn, self._producer = self._conn, None, None
        self._pipeline = None
        self._bound = {}
        if conn is not None:
            try:
                conn.release()
            except Exception as exc:  # a dead connection may fail to close: it is gone anyway
                log.debug("bus.release_failed", error=repr(exc))

    def close(self) -> None:
        """Finish pending sends and close the connection."""
        self.executor.shutdown(wait=True)
        if self._conn is not None:
            self._conn.release()


class _ConfirmPipeline:
    """A py-amqp channel in confirm mode that publishes several messages, then waits once for
    the broker's confirms of all of them.

    A publish with confirms through kombu waits for each message's confirm before sending
    the next: a round trip to RabbitMQ per message, a third of the wall time of a batched
    study of trivial trials (one event per trial). Here the messages go out back to back and
    the broker's acks, which come in order of its own, are counted against the channel's
    delivery tags (1, 2, ... from `confirm_select`): the call returns when every message it
    sent is confirmed, as many sequential confirmed publishes would.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        self._sent = 0  # delivery tag of the last message sent
        self._confirmed = 0  # every tag up to this one is acked
        self._acked: set[int] = set()  # acked tags above `_confirmed`
        self._nacked = False
        self._declared: set[str] = set()

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._confirmed = max(self._confirmed, tag)
            self._acked = {t for t in self._acked if t > tag}
        else:
            self._acked.add(tag)
        while self._confirmed + 1 in self._acked:
            self._confirmed += 1
            self._acked.discard(self._confirmed)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked = True

    def publish(self, exchange: str, messages: list[tuple[bytes, str]], timeout: float) -> None:
        """Publish `messages` (body, routing key) to the topic `exchange`, persistent JSON,
        and return once the broker confirmed all of them; raise if it refused one or did
        not confirm within `timeout` seconds (then none of them counts as sent)."""
        from amqp import Message  # type: ignore[import-untyped]

        channel = self.channel
        if exchange not in self._declared:
            channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
            self._declared.add(exchange)
        for body, routing_key in messages:
            message = Message(
                body,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
            )
            channel._basic_publish(message, exchange=exchange, routing_key=routing_key)
            self._sent += 1
        deadline = time.monotonic() + timeout
        connection = channel.connection
        while self._confirmed < self._sent and not self._nacked:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the broker confirmed no publish for {timeout} s")
            connection.drain_events(timeout=left)
        if self._nacked:
            raise RuntimeError("the broker refused (nacked) a published message")


class Bus:
    """The daemon's outgoing messages, sent from two publishing threads: one for events (so
    that an event never waits behind a dispatch retrying while the broker is down) and one for
    everything else."""

    def __init__(self, settings: Settings, celery: Celery) -> None:
        self._settings = settings
        self._celery = celery
        self._main = _Publisher(settings, "hpod-publish")
        self._events = _Publisher(settings, "hpod-events")
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        #: Events not published yet (the broker was unreachable), oldest first.
        self._outbox: deque[tuple[bytes, str]] = deque()
        self._outbox_size = settings.event_outbox_size
        self._flusher: asyncio.Task[None] | None = None
        self.events_dropped = 0
        self._trials = queue(TRIALS)
        self._origin = f"hpod-daemon@{socket.gethostname()}"

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener(event)` on the event loop for every event the daemon publishes
        (the web page's live updates), in addition to the broker."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._main.run(fn, *args, **kwargs)

    def _get_producer(self) -> Producer:
        return self._main.producer()

    def _send(
        self,
        body: bytes,
        exchange: Any,
        routing_key: str,
        declare: list[Any],
        retry_policy: dict[str, Any] = RETRY_POLICY,
        publisher: _Publisher | None = None,
        **props: Any,
    ) -> None:
        (publisher or self._main).producer().publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            declare=declare,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
            retry_policy=retry_policy,
            **props,
        )

    def _send_event(self, body: bytes, event_type: str) -> None:
        try:
            self._send(
                body,
                events_exchange,
                event_type,
                [events_exchange],
                EVENT_RETRY_POLICY,
                publisher=self._events,
            )
        except Exception:
            self._events.drop()
            raise

    async def event(self, event_type: str, study: str | None, **data: Any) -> None:
        """Publish an event on `hpod.events` with routing key `event_type`.

        Returns once the broker has it, or, when the broker cannot be reached, once it is in
        the outbox: never raises for a broker fault, never waits for the broker to come back.
        """
        await self.events([(event_type, study, data)])

    async def events(self, events: list[tuple[str, str | None, dict[str, Any]]]) -> None:
        """Publish several events, in order, in one call to the events thread (a pack's
        trials told together): as `event` for each, without a hop per event."""
        now = time.time()
        built = [
            {"v": 1, "event": event_type, "study": study, "time": now, **data}
            for event_type, study, data in events
        ]
        bodies = [(dumps(event), event["event"]) for event in built]
        if self._outbox:  # the broker is known to be down: keep the order, do not wait
            for body, event_type in bodies:
                self._keep(body, event_type)
        elif bodies:
            sent = [0]
            try:
                await self._events.run(self._send_events, bodies, sent)
            except Exception as exc:  # any broker fault: publish the rest later
                log.warning("bus.event_deferred", event_type=bodies[sent[0]][1], error=repr(exc))
                for body, event_type in bodies[sent[0] :]:
                    self._keep(body, event_type)
        for event in built:
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:  # a listener (a web page) must never break the daemon
                    log.exception("bus.listener_failed")

    def _send_events(self, bodies: list[tuple[bytes, str]], sent: list[int]) -> None:
        """Publish `bodies` in order (on the events thread), counting in `sent[0]` those the
        broker has: on a fault the caller keeps the rest, from the one that failed.

        On RabbitMQ the events go out back to back, confirmed together (`_ConfirmPipeline`),
        also a single one (the pipeline's direct publish costs less CPU than kombu's
        `Producer.publish`: an unbatched trial's event); if that fails they are sent again
        one by one, with kombu's retry (events are at least once: a consumer may see one
        twice after a fault)."""
        if len(bodies) > sent[0] and not self._settings.embedded:
            try:
                self._events.pipeline().publish(
                    events_exchange.name, bodies[sent[0] :], PIPELINE_CONFIRM_SECONDS
                )
                sent[0] = len(bodies)
                return
            except Exception as exc:
                log.info("bus.pipeline_failed", error=repr(exc))
                self._events.drop()
        for body, event_type in bodies[sent[0] :]:
            self._send_event(body, event_type)
            sent[0] += 1

    @property
    def outbox(self) -> int:
        """Events waiting for the broker."""
        return len(self._outbox)

    def _keep(self, body: bytes, event_type: str) -> None:
        """Put an event in the outbox (dropping the oldest when full) and make sure a flusher
        runs."""
        if len(self._outbox) >= self._outbox_size:
            self._outbox.popleft()
            self.events_dropped += 1
            log.error("bus.event_dropped", reason="outbox full", size=self._outbox_size)
        self._outbox.append((body, event_type))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="hpod-event-outbox"
            )

    async def _flush(self) -> None:
        """Publish the outbox in order, waiting with back-off while the broker is down."""
        backoff = Backoff(initial=0.5, maximum=10.0)  # as the consumers: soon after the broker
        while self._outbox:
            body, event_type = self._outbox[0]
            try:
                await self._events.run(self._send_event, body, event_type)
            except Exception as exc:
                delay = backoff.next_delay()
                log.info(
                    "bus.outbox_waiting",
                    events=len(self._outbox),
                    retry_in=round(delay, 2),
                    error=repr(exc),
                )
                await asyncio.sleep(delay)
                continue
            if self._outbox and self._outbox[0][0] is body:
                self._outbox.popleft()
            backoff.reset()
        log.info("bus.outbox_flushed")

    async def reply(self, reply_to: str, correlation_id: str | None, body: dict[str, Any]) -> None:
        """Answer a queued request on its `reply_to` queue."""
        await self._run(self._send, dumps(body), "", reply_to, [], correlation_id=correlation_id)

    async def dead_letter(self, raw: bytes, reason: str, origin: dict[str, Any]) -> None:
        """Keep a message that cannot be handled on the bounded `hpod.dead`, with the reason;
        `origin["queue"]` names the queue it came from (requests when absent)."""
        headers = {"x-hpod-error": reason, "x-hpod-queue": str(origin.get("queue") or REQUESTS)}
        headers.update({f"x-original-{k}": str(v) for k, v in origin.items() if v})
        await self._run(
            lambda: self._get_producer().publish(  # connects on the publishing thread
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
        )

    async def dispatch(self, task: dict[str, Any], soft_limit: float, hard_limit: float) -> None:
        """Send one trial to the Celery workers."""
        await self._run(self._send_task, EVALUATE_TASK, task, soft_limit, hard_limit)

    async def dispatch_pack(
        self, tasks: list[dict[str, Any]], soft_limit: float, hard_limit: float
    ) -> None:
        """Send several trials to one Celery worker, as one task (see the batching policy)."""
        await self._run(
            self._send_task, EVALUATE_BATCH_TASK, {"trials": tasks}, soft_limit, hard_limit
        )

    def _send_task(
        self, name: str, kwargs: dict[str, Any], soft_limit: float, hard_limit: float
    ) -> None:
        """Publish a Celery task message on `hpod.trials` (on the publishing thread).

        The message is Celery's own (protocol 2, built by ``app.amqp.create_task_message``)
        and a stock worker consumes it unchanged; it is published on this publisher's kept
        kombu producer rather than through ``Celery.send_task``, whose per-call routing,
        producer-pool checkout, option merging, signals and result object were a sixth of the
        daemon's CPU per trial. ``kwargsrepr`` is a short summary: Celery's default walks the
        whole pack with ``saferepr``, and it is only shown in monitoring tools.
        """
        task_id = str(uuid.uuid4())
        trials = kwargs.get("trials")
        if isinstance(trials, list):
            first = trials[0] if trials and isinstance(trials[0], dict) else {}
            summary = f"study {first.get('study')!r}, {len(trials)} trials"
        else:
            summary = f"study {kwargs.get('study')!r}, trial {kwargs.get('number')}"
        message = self._celery.amqp.create_task_message(
            task_id,
            name,
            (),
            kwargs,
            time_limit=hard_limit,
            soft_time_limit=soft_limit,
            ignore_result=True,
            argsrepr="()",
            kwargsrepr=summary,
            origin=self._origin,
        )
        self._main.producer().publish(
            message.body,
            exchange="",
            routing_key=TRIALS,
            declare=[self._main.bound(self._trials)],
            serializer="json",
            headers=message.headers,
            delivery_mode=2,
            retry=True,
            retry_policy=RETRY_POLICY,
            **message.properties,
        )

    def close(self) -> None:
        """Finish pending sends and close the connection."""
        if self._flusher is not None:
            self._flusher.cancel()
        if self._outbox:
            log.error("bus.events_unpublished", events=len(self._outbox))
        self._events.close()
        self._main.close()
