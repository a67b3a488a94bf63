"""Per-study state held in memory is bounded (issue 12, finding 8): Prometheus series by
study, the doctor's breakdowns and the web page's event streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import optuna
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import eventually_async
from optuna.trial import TrialState

from hpod.daemon.doctor import Doctor
from hpod.daemon.metrics import Metrics
from hpod.daemon.web import add_web_routes, events
from hpod.daemon.web.keys import MANAGER

Listener = Callable[[dict[str, Any]], None]


def frozen(state: TrialState, steps: int = 0) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=state,
        values=[1.0] if state == TrialState.COMPLETE else None,
        intermediate_values={i: 1.0 for i in range(steps)},
    )


def study_labels(metrics: Metrics) -> set[str]:
    text = metrics.exposition().decode()
    return {
        line.split('study="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if not line.startswith("#") and 'study="' in line
    }


def test_series_of_finished_studies_beyond_the_bound_are_removed() -> None:
    running = {"r0", "r1"}
    metrics = Metrics(max_finished_studies=5)
    metrics.watch_inflight(lambda: 0, lambda: dict.fromkeys(sorted(running), 1))
    for name in sorted(running):
        metrics.told(name, frozen(TrialState.COMPLETE))
    for n in range(50):
        metrics.told(f"s{n}", frozen(TrialState.COMPLETE))
        metrics.told(f"s{n}", frozen(TrialState.PRUNED, steps=3))
    kept = study_labels(metrics)
    assert kept == running | {f"s{n}" for n in range(45, 50)}
    assert metrics.studies()[-1] == "s49"
    # An active older study moves to the end: it is kept over quieter ones.
    metrics.told("s45", frozen(TrialState.COMPLETE))
    metrics.told("s50", frozen(TrialState.COMPLETE))
    assert "s45" in study_labels(metrics) and "s46" not in study_labels(metrics)
    text = metrics.exposition().decode()
    assert 'hpod_trials_total{state="complete",study="s45"} 2.0' in text


def test_the_rung_label_of_a_study_is_bounded() -> None:
    metrics = Metrics()
    for steps in range(1, 400):
        metrics.told("a", frozen(TrialState.PRUNED, steps=steps))
    text = metrics.exposition().decode()
    rungs = [line for line in text.splitlines() if line.startswith("hpod_prunes_total{")]
    assert len(rungs) == 101
    assert 'hpod_prunes_total{rung="100+",study="a"} 299.0' in text


def test_the_doctor_keeps_running_studies_and_the_latest_finished() -> None:
    running = {"r0"}
    doctor = Doctor(max_finished=3, running=lambda name: name in running)
    doctor.breakdown("r0").add("sampler", 1.0)
    for n in range(20):
        doctor.breakdown(f"s{n}").add("evaluation", 2.0)
    assert sorted(doctor.reports()) == ["r0", "s17", "s18", "s19"]
    assert doctor.report("r0")["seconds"]["sampler"] == 1.0
    assert doctor.report("s0")["bottleneck"] is None  # forgotten: an empty report
    doctor.breakdown("s17")  # restarted: the most recent now
    doctor.breakdown("s20")
    assert sorted(doctor.reports()) == ["r0", "s17", "s19", "s20"]


class FakeBus:
    def __init__(self) -> None:
        self.listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self.listeners.remove(listener)


class FakeManager:
    def __init__(self) -> None:
        self.bus = FakeBus()


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], FakeBus]]:
    app = web.Application()
    manager = FakeManager()
    app[MANAGER] = manager  # type: ignore[assignment]
    add_web_routes(app, max_streams=2)
    async with TestClient(TestServer(app)) as client:
        yield client, manager.bus


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until `condition()` holds: polled, as the listeners change inside
    aiohttp's handlers, with no event to wait on."""
    await eventually_async(condition, 5, 0.02)


async def test_one_stream_over_the_limit_is_answered_503_json(served: Any) -> None:
    client, bus = served
    first = await client.get("/events")
    second = await client.get("/events?study=a")
    await _until(lambda: len(bus.listeners) == 2)
    third = await client.get("/events")
    assert third.status == 503
    body = await third.json()
    assert body["ok"] is False and body["error"]["code"] == "busy"
    assert len(bus.listeners) == 2  # the refused one never subscribed
    first.close()
    await _until(lambda: len(bus.listeners) == 1)
    fourth = await client.get("/events")
    assert fourth.status == 200
    second.close()
    fourth.close()


async def test_a_stalled_client_is_dropped(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that stops reading fills its socket buffers; its writes then block and,
    after WRITE_TIMEOUT_SECONDS, the stream ends and its listener goes."""
    monkeypatch.setattr(events, "WRITE_TIMEOUT_SECONDS", 0.5)
    client, bus = served
    response = await client.get("/events")  # never read from here on
    await _until(lambda: len(bus.listeners) == 1)
    subscription = bus.listeners[0]
    big = "x" * 200_000
    async with asyncio.timeout(30):
        while bus.listeners:
            subscription({"v": 1, "event": "trial.completed", "study": "a", "pad": big})
            await asyncio.sleep(0.01)
    assert subscription.queue.qsize() <= events.QUEUE_SIZE
    response.close()


def test_a_subscription_queue_is_bounded() -> None:
    subscription = events.Subscription(None, size=4)
    for n in range(10_000):
        subscription({"event": "trial.completed", "study": "a", "trial": n})
    assert subscription.queue.qsize() == 4 and subscription.dropped == 9_996
