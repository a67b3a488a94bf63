"""Dispatch marks ride on the daemon's next durable write once due, half `MARK_DELAY` after
the dispatch (`StudyStore.mark_dispatched_soon`): written on their own when nothing else is
written, never for a trial told before then, and a restarted daemon waits for the result of
a trial whose mark was written instead of dispatching it again."""

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


async def test_a_trial_told_before_its_mark_is_due_gets_no_mark(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mark is due half `MARK_DELAY` after its dispatch: the next storage calls before then (an
    ask, a tell) do not carry it, a trial told before then never gets one (its tell dropped
    it), and the mark of a trial still running is written once due, the latest attempt's."""
    from hpod.daemon import store as store_module
    from hpod.daemon.store import Outcome

    monkeypatch.setattr(store_module, "MARK_DELAY", 2.0)  # due after 1 s
    published = _record_dispatches(daemon, monkeypatch)
    spec = StudySpec.model_validate(quadratic("t", trials=2, max_concurrent=2))
    await daemon.manager.requests.create(spec)
    await daemon.until(lambda: len(published) == 2)
    run = daemon.manager.runs["t"]
    ids = {n: flight.trial.trial_id for n, flight in run.inflight.items()}
    daemon.store.mark_dispatched_soon([ids[0]], 2)  # as a re-dispatch of trial 0 would
    assert await run.on_results([Outcome(1, "complete", [1.0])]) == [True]
    # Trial 1's tell dropped its mark; trial 0's two are not due yet: nothing carried them.
    assert [(trial_id, attempt) for trial_id, attempt, _ in daemon.store._marks] == [
        (ids[0], 1),
        (ids[0], 2),
    ]
    assert await _marks(daemon, spec) == {0: None, 1: None}
    await asyncio.sleep(2.0 * 1.5)
    assert await _marks(daemon, spec) == {0: 2, 1: None}
    assert daemon.store._marks == []


async def test_a_due_mark_of_a_trial_told_in_the_same_write_is_left_out(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the journal, a due mark whose trial the call carrying it tells is not written (the
    trial is finished in that same durable write)."""
    from hpod.daemon import store as store_module
    from hpod.daemon.store import Outcome

    monkeypatch.setattr(store_module, "MARK_DELAY", 3600.0)  # no timer writes them
    published = _record_dispatches(daemon, monkeypatch)
    spec = StudySpec.model_validate(quadratic("d", trials=2, max_concurrent=2))
    await daemon.manager.requests.create(spec)
    await daemon.until(lambda: len(published) == 2)
    run = daemon.manager.runs["d"]
    ids = {n: flight.trial.trial_id for n, flight in run.inflight.items()}
    with daemon.store._marks_lock:  # both due now
        daemon.store._marks = [
            (trial_id, attempt, 0.0) for trial_id, attempt, _ in daemon.store._marks
        ]
    assert sorted(m[0] for m in daemon.store._marks) == sorted(ids.values())
    assert await run.on_results([Outcome(1, "complete", [1.0])]) == [True]
    assert await _marks(daemon, spec) == {0: 1, 1: None}
    assert daemon.store._marks == []


async def test_the_mark_timer_writes_at_most_once_per_half_delay(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many trials are dispatched, the timer hands the Optuna thread at most one
    write of marks per half `MARK_DELAY` (one per mark would be a thread hop per dispatch),
    and none while no mark is due."""
    from hpod.daemon import store as store_module

    monkeypatch.setattr(store_module, "MARK_DELAY", 0.4)
    store = daemon.store
    submitted: list[float] = []
    real_submit = store._thread.submit

    def submit(fn: Any, *args: Any) -> Any:
        submitted.append(asyncio.get_running_loop().time())
        return real_submit(fn, *args)

    monkeypatch.setattr(store._thread, "submit", submit)
    started = asyncio.get_running_loop().time()
    for i in range(40):  # a dispatch every 10 ms for 0.4 s (ids of no trial: nothing written)
        store.mark_dispatched_soon([10_000 + i], 1)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.4)
    assert not store._marks  # every mark was due and taken
    assert submitted and min(submitted) - started >= 0.2 - 0.01  # none before one was due
    assert len(submitted) <= 6  # ~0.8 s / 0.2 s, not 40


async def test_during_a_storage_fault_the_timer_tries_each_due_mark_once(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While storage fails, a mark whose write failed waits for the next storage call: the
    timer does not retry it every half `MARK_DELAY` (each failed journal write makes the next
    call re-read the file); a mark newly due is tried once."""
    from hpod.daemon import store as store_module

    monkeypatch.setattr(store_module, "MARK_DELAY", 0.2)
    store = daemon.store
    submitted: list[float] = []
    real_submit = store._thread.submit

    def submit(fn: Any, *args: Any) -> Any:
        submitted.append(asyncio.get_running_loop().time())
        return real_submit(fn, *args)

    def refused(marks: list[Any]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store._thread, "submit", submit)
    monkeypatch.setattr(store, "_write_marks", refused)
    monkeypatch.setattr(store, "probe", lambda: None)  # the fault lasts
    store.mark_dispatched_soon([1], 1)
    await asyncio.sleep(0.6)  # due after 0.1 s; three more looks since
    assert len(submitted) == 1 and store.fault is not None
    assert [m[:2] for m in store._marks] == [(1, 1)]  # kept for the next call
    store.mark_dispatched_soon([2], 1)
    await asyncio.sleep(0.4)
    assert len(submitted) == 2
    assert [m[:2] for m in store._marks] == [(1, 1), (2, 1)]
