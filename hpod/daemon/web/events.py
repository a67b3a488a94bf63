"""GET /events: the daemon's events as Server-Sent Events, for the live web page.

Each connection subscribes one listener to the `Bus`. The listener runs on the event loop
(the bus calls it there) and only puts the event into the connection's own bounded queue,
so a slow or stalled browser can never hold up the daemon: when its queue is full the
oldest event is dropped, and the stream tells the page with a ``lagged`` message so that it
re-reads the state instead of trusting an incomplete history. A comment line every
`HEARTBEAT_SECONDS` keeps proxies from closing an idle stream and is how a vanished client
is noticed (the write fails); the listener is removed when the stream ends, whatever ends
it. On shutdown every stream is ended at once, so that aiohttp's graceful shutdown does
not wait for them.

What a stream may hold is bounded: at most `max_event_streams` streams are open at once (one
more is answered 503 with a JSON error, before it subscribes), each with its own queue of at
most `QUEUE_SIZE` events, and a client that does not take a write within
`WRITE_TIMEOUT_SECONDS` (a stalled reader whose socket buffers are full) is dropped: its
stream ends and its listener goes, instead of its queue and buffers being held forever.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from aiohttp import web

from hpod.daemon.web.keys import MANAGER
from hpod.errors import RequestRejected

log = structlog.get_logger("hpod.web")

#: Seconds between heartbeat comments on an idle stream.
HEARTBEAT_SECONDS = 15.0
#: Events kept for one connection that has not sent them yet; older ones are dropped.
QUEUE_SIZE = 512
#: Milliseconds a browser waits before it reconnects a broken stream (the SSE ``retry``).
RETRY_MS = 3000
#: Open streams at once unless the daemon's settings say otherwise (`max_event_streams`).
MAX_STREAMS = 32
#: Seconds one write to a client may take before the client is dropped as stalled.
WRITE_TIMEOUT_SECONDS = 30.0


class Subscription:
    """One connection's bounded queue of events, fed by a `Bus` listener.

    `study` narrows the stream to that study's events plus the global ``mode.changed``.
    `None` in the queue ends the stream.
    """

    def __init__(self, study: str | None, size: int = QUEUE_SIZE) -> None:
        self.study = study
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(size)
        self.dropped = 0

    def wanted(self, event: dict[str, Any]) -> bool:
        """Whether the connection asked for this event."""
        if self.study is None:
            return True
        if event.get("study") == self.study:
            return True
        return event.get("event") == "mode.changed" and event.get("study") is None

    def __call__(self, event: dict[str, Any]) -> None:
        """The bus listener: queue the event, dropping the oldest when the client lags."""
        if not self.wanted(event):
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    def close(self) -> None:
        """End the stream (the sentinel goes in even when the queue is full)."""
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


SUBSCRIPTIONS = web.AppKey("web_subscriptions", set[Subscription])
STREAM_LIMIT = web.AppKey("web_stream_limit", int)


class Stalled(Exception):
    """A client did not take a write within `WRITE_TIMEOUT_SECONDS`."""


def encode(event: dict[str, Any]) -> bytes:
    """One SSE message carrying the event as JSON (one ``data:`` line: JSON has no newline)."""
    return b"data: " + json.dumps(event, default=str).encode() + b"\n\n"


async def event_stream(request: web.Request) -> web.StreamResponse:
    """GET /events[?study=NAME]: every event the daemon publishes, as it happens."""
    bus = request.app[MANAGER].bus
    subscriptions = request.app[SUBSCRIPTIONS]
    limit = request.app[STREAM_LIMIT]
    if len(subscriptions) >= limit:
        log.warning("web.stream_refused", open=len(subscriptions), limit=limit)
        error = RequestRejected(
            "busy", "", f"{limit} event streams are open, the most allowed; try again later"
        )
        return web.json_response(
            {"v": 1, "ok": False, "error": error.as_dict()},
            status=503,
            headers={"Retry-After": str(RETRY_MS // 1000)},
        )
    subscription = Subscription(request.query.get("study") or None)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",  # a reverse proxy must not buffer the stream
        }
    )
    subscriptions.add(subscription)
    bus.add_listener(subscription)
    try:
        await response.prepare(request)
        await _write(response, f"retry: {RETRY_MS}\n: connected\n\n".encode())
        await _pump(subscription, response)
    except ConnectionError:  # the client went away; aiohttp's ClientConnectionResetError too
        pass
    except Stalled:
        log.warning("web.stream_dropped", reason="stalled client", study=subscription.study)
    finally:
        bus.remove_listener(subscription)
        subscriptions.discard(subscription)
    return response


async def _pump(subscription: Subscription, response: web.StreamResponse) -> None:
    """Write queued events (and heartbeats while idle) until the stream is closed."""
    while True:
        try:
            event = await asyncio.wait_for(subscription.queue.get(), HEARTBEAT_SECONDS)
        except TimeoutError:
            await _write(response, b": heartbeat\n\n")
            continue
        if event is None:
            return
        if subscription.dropped:
            lagged = {"dropped": subscription.dropped}
            subscription.dropped = 0
            await _write(response, b"event: lagged\ndata: " + json.dumps(lagged).encode() + b"\n\n")
        await _write(response, encode(event))


async def _write(response: web.StreamResponse, data: bytes) -> None:
    """Write to the client; `Stalled` if it does not take the data in time."""
    try:
        await asyncio.wait_for(response.write(data), WRITE_TIMEOUT_SECONDS)
    except TimeoutError as exc:
        raise Stalled from exc


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end every open stream so that the server's shutdown need not wait."""
    subscriptions: set[Subscription] = app[SUBSCRIPTIONS]
    for subscription in list(subscriptions):
        subscription.close()
