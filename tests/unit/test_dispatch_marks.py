"""Dispatch marks ride on the daemon's next durable write (`StudyStore.mark_dispatched_soon`):
written on their own within `MARK_DELAY` when nothing else is written, and a restarted
daemon waits for the result of a trial whose mark was written instead of dispatching it
again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_study_failure import Daemonless, quadratic

from hpod.daemon.store import MARK_DELAY
from hpod.engine import DISPATCHED_ATTR
from hpod.schema import StudySpec


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemonless]:
    d = Daemonless(tmp_path, max_inflight=2)
    yield d
    await d.close()


def _record_dispatches(d: Daemonless, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    published: list[int] = []

    async def dispatch(message: dict[str, Any], **limits: float) -> None:
        published.append(message["number"])

    async def dispatch_pack(messages: list[dict[str, Any]], **limits: float) -> None:
        published.extend(m["number"] for m in messages)

    monkeypatch.setattr(d.bus, "dispatch", dispatch)
    monkeypatch.setattr(d.bus, "dispatch_pack", dispatch_pack)
    return published


async def _marks(d: Daemonless, spec: StudySpec) -> dict[int, Any]:
    trials = await d.store.call(d.store.trials, spec, None)
    return {t.number: t.user_attrs.get(DISPATCHED_ATTR) for t in trials}


async def test_a_mark_is_written_on_its_own_when_nothing_else_is(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = _record_dispatches(daemon, monkeypatch)
    spec = StudySpec.model_validate(quadratic("m", trials=2, max_concurrent=2))
    await daemon.manager.requests.create(spec)
    await daemon.until(lambda: len(published) == 2)
    await asyncio.sleep(MARK_DELAY * 3)
    assert await _marks(daemon, spec) == {0: 1, 1: 1}


async def test_a_restart_waits_for_a_marked_trial_instead_of_dispatching_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Daemonless(tmp_path, max_inflight=2)
    published = _record_dispatches(first, monkeypatch)
    spec = StudySpec.model_validate(quadratic("r", trials=1))
    await first.manager.requests.create(spec)
    await first.until(lambda: published == [0])
    await first.close()  # writes the marks still waiting
    second = Daemonless(tmp_path, max_inflight=2)
    again = _record_dispatches(second, monkeypatch)
    try:
        assert await _marks(second, spec) == {0: 1}
        await second.manager.start()
        await second.until(lambda: "r" in second.manager.runs)
        run = second.manager.runs["r"]
        await second.until(lambda: not run.recovering)
        assert 0 in run.inflight
        assert again == []
    finally:
        await second.close()


async def test_a_trial_told_in_the_write_its_mark_rides_on_gets_no_mark(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the journal, the mark of a trial told before it was written is left out (the trial
    is finished in that same durable write); the mark of a trial still running is written."""
    from hpod.daemon import store as store_module
    from hpod.daemon.store import Outcome

    monkeypatch.setattr(store_module, "MARK_DELAY", 3600.0)  # marks wait for the next write
    published = _record_dispatches(daemon, monkeypatch)
    spec = StudySpec.model_validate(quadratic("t", trials=2, max_concurrent=2))
    await daemon.manager.requests.create(spec)
    await daemon.until(lambda: len(published) == 2)
    run = daemon.manager.runs["t"]
    ids = {n: flight.trial.trial_id for n, flight in run.inflight.items()}
    # Trial 0's mark rode on trial 1's ask; trial 1's waits for the next write (read here
    # without a storage call, which would carry it).
    assert daemon.store._marks == [(ids[1], 1)]
    daemon.store.mark_dispatched_soon([ids[0]], 2)  # as a re-dispatch of trial 0 would
    assert await run.on_results([Outcome(1, "complete", [1.0])]) == [True]
    assert await _marks(daemon, spec) == {0: 2, 1: None}
