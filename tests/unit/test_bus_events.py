"""The bus publishes a told pack's events in one call to its events thread, in order, and
keeps the events a broker fault left unsent in its outbox, in order (`Bus.events`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hpod.config import Settings
from hpod.daemon.bus import Bus
from hpod.workers.celery_config import make_celery


@pytest.fixture
def bus(tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path, local_workers=0)
    bus = Bus(settings, make_celery(settings))
    yield bus
    bus.close()


def _events(n: int) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [("trial.completed", "s", {"trial": i}) for i in range(n)]


async def test_a_packs_events_go_out_in_order_in_one_call(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bytes] = []
    calls: list[int] = []
    real_run = bus._events.run

    async def run(fn: Any, *args: Any) -> Any:
        calls.append(1)
        return await real_run(fn, *args)

    monkeypatch.setattr(bus, "_send_event", lambda body, _type: sent.append(body))
    monkeypatch.setattr(bus._events, "run", run)
    seen: list[dict[str, Any]] = []
    bus.add_listener(seen.append)
    await bus.events(_events(5))
    assert len(calls) == 1
    assert [b'"trial":%d' % i in body for i, body in enumerate(sent)] == [True] * 5
    assert [e["trial"] for e in seen] == [0, 1, 2, 3, 4]
    assert bus.outbox == 0


async def test_the_events_a_fault_left_unsent_wait_in_the_outbox_in_order(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bytes] = []
    down = [True]

    def send(body: bytes, _type: str) -> None:
        if down[0] and len(sent) == 2:
            raise ConnectionError("broker gone")
        sent.append(body)

    monkeypatch.setattr(bus, "_send_event", send)
    await bus.events(_events(5))
    assert len(sent) == 2
    assert bus.outbox == 3
    down[0] = False
    for _ in range(100):
        if bus.outbox == 0:
            break
        await asyncio.sleep(0.05)
    assert [int(body.split(b'"trial":')[1].split(b"}")[0]) for body in sent] == [0, 1, 2, 3, 4]
