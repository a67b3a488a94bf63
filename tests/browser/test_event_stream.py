"""GET /events, the web page's live feed, against an in-process aiohttp server: filtering,
heartbeats, a slow client's bounded queue, unsubscription on disconnect and on shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from conftest import eventually_async

from hpod.daemon.web import add_web_routes, events
from hpod.daemon.web.keys import MANAGER

Listener = Callable[[dict[str, Any]], None]


class FakeBus:
    """The part of `Bus` the stream uses: listeners, and an `emit` to play the daemon."""

    def __init__(self) -> None:
        self.listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self.listeners.remove(listener)

    def emit(self, name: str, study: str | None, **data: Any) -> None:
        event = {"v": 1, "event": name, "study": study, "time": time.time(), **data}
        for listener in list(self.listeners):
            listener(event)


class FakeManager:
    """The part of `StudyManager` the stream uses: its bus."""

    def __init__(self) -> None:
        self.bus = FakeBus()


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], FakeBus]]:
    app = web.Application()
    manager = FakeManager()
    app[MANAGER] = manager  # type: ignore[assignment]
    add_web_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client, manager.bus


async def _messages(response: Any, count: int) -> list[str]:
    """The next `count` SSE blocks (comments included), each as its raw text."""
    blocks: list[str] = []
    lines: list[str] = []
    while len(blocks) < count:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode()
        if line == "\n":
            blocks.append("".join(lines))
            lines = []
        else:
            lines.append(line)
    return blocks


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until `condition()` holds: polled, as the listeners change inside
    aiohttp's handlers, with no event to wait on."""
    await eventually_async(condition, 5, 0.02)


async def test_a_study_stream_carries_its_events_and_global_mode_changes(served: Any) -> None:
    """?study=a gets a's events and the default-mode change, not another study's events."""
    client, bus = served
    response = await client.get("/events?study=a")
    assert response.headers["Content-Type"] == "text/event-stream"
    assert (await _messages(response, 1))[0].startswith("retry: ")
    await _until(lambda: len(bus.listeners) == 1)
    bus.emit("trial.completed", "b", trial=0)
    bus.emit("trial.completed", "a", trial=1)
    bus.emit("mode.changed", None, mode="fast")
    first, second = await _messages(response, 2)
    assert json.loads(first.removeprefix("data: "))["trial"] == 1
    assert json.loads(second.removeprefix("data: "))["mode"] == "fast"
    response.close()


async def test_an_idle_stream_sends_heartbeats_and_unsubscribes_when_the_client_leaves(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle streams carry a heartbeat comment; a closed connection loses its listener."""
    monkeypatch.setattr(events, "HEARTBEAT_SECONDS", 0.1)
    client, bus = served
    response = await client.get("/events")
    await _messages(response, 1)
    assert (await _messages(response, 1))[0] == ": heartbeat\n"
    response.close()
    await _until(lambda: not bus.listeners)


def test_a_slow_client_loses_the_oldest_events_and_is_told() -> None:
    """A full queue drops its oldest event and counts it, so the page knows to re-read."""
    subscription = events.Subscription(None, size=3)
    for n in range(5):
        subscription({"event": "trial.completed", "study": "a", "trial": n})
    queued = [subscription.queue.get_nowait() for _ in range(3)]
    assert [e["trial"] for e in queued if e] == [2, 3, 4]
    assert subscription.dropped == 2


async def test_a_lagging_stream_says_so(served: Any) -> None:
    """Events dropped for a slow client are announced with a `lagged` message."""
    client, bus = served
    response = await client.get("/events")
    await _messages(response, 1)
    await _until(lambda: len(bus.listeners) == 1)
    subscription = bus.listeners[0]
    assert isinstance(subscription, events.Subscription)
    subscription.dropped = 7
    bus.emit("trial.completed", "a", trial=3)
    lagged, event = await _messages(response, 2)
    assert lagged == 'event: lagged\ndata: {"dropped": 7}\n'
    assert json.loads(event.removeprefix("data: "))["trial"] == 3
    response.close()


async def test_shutdown_ends_open_streams_at_once() -> None:
    """Stopping the server ends every open stream instead of waiting for its client."""
    app = web.Application()
    manager = FakeManager()
    app[MANAGER] = manager  # type: ignore[assignment]
    add_web_routes(app)
    server = TestServer(app)
    await server.start_server()
    async with ClientSession() as session:
        response = await session.get(server.make_url("/events"))
        await _messages(response, 1)
        started = time.monotonic()
        await server.close()  # aiohttp would wait up to 60 s for a handler still running
        assert time.monotonic() - started < 5
        assert manager.bus.listeners == []
        response.close()
