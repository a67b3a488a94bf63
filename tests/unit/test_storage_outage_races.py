"""A storage outage restarts a study's loop; results keep arriving meanwhile (issue 12,
"storage failure is an exit or a recovery, never a wedge").

The PostgreSQL-outage test (tests/integration/test_storage_faults_daemon.py) stalled about one
run in four: the intake retries results whose tell failed on the outage with back-off, the
manager restarts the crashed loop with back-off, and a result that came back while the new
loop was recovering its trials from storage was refused as "not in flight" and dead-lettered.
The loop then waited for it until the trial timeout (600 s by default) with its slots taken.
Each test here replays one such interleaving exactly, holding one side at a gate, on a real
`StudyManager` (journal storage, embedded broker; `test_study_failure.Daemonless`).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually_async
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState
from sqlalchemy import exc as sa_exc
from test_study_failure import Daemonless, quadratic, result_of

from hpod.daemon import supervisor as supervisor_module
from hpod.daemon.results import WorkerResults
from hpod.daemon.store import FINISHED, Outcome, is_storage_fault
from hpod.daemon.studies import StudyRun
from hpod.daemon.supervisor import LoopSupervisor
from hpod.engine import DISPATCHED_ATTR
from hpod.schema import StudySpec

#: Optuna's journal operation that finishes a trial (`JournalOperation.SET_TRIAL_STATE_VALUES`).
SET_TRIAL_STATE_VALUES = 6
#: What a test waits for the study to go on: far below the trial timeout (600 s) + grace
#: (60 s) that a trial wrongly kept in flight waits out.
WITHIN = 20.0


def commit_error() -> StorageInternalError:
    """What Optuna's RDB storage raises when PostgreSQL goes away during a commit."""
    error = StorageInternalError("An exception is raised during the commit.")
    error.__cause__ = sa_exc.OperationalError(
        "COMMIT", {}, Exception("server closed the connection unexpectedly")
    )
    return error


@pytest.fixture
async def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Daemonless]:
    """A manager that restarts a crashed loop after 50 ms; two trials in flight at most."""
    monkeypatch.setattr(supervisor_module, "RESTART_INITIAL_SECONDS", 0.05)
    monkeypatch.setattr(supervisor_module, "RESTART_MAX_SECONDS", 0.2)
    d = Daemonless(tmp_path, max_inflight=2)
    yield d
    await d.close()


@pytest.fixture
def refused(daemon: Daemonless, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Why each worker result was refused (dead-lettered), in order."""
    reasons: list[str] = []

    async def refuse(body: Any, reason: str) -> None:
        reasons.append(reason)

    monkeypatch.setattr(daemon.manager.results, "_refuse", refuse)
    return reasons


async def two_trials_dispatched(d: Daemonless, name: str) -> list[dict[str, Any]]:
    """Start a 2-trial study; once both trials are dispatched and marked so in storage,
    the results a worker would publish for them."""
    spec = StudySpec.model_validate(quadratic(name, trials=2))
    await d.manager.requests.create(spec)
    await d.until(lambda: name in d.manager.runs and len(d.manager.runs[name].inflight) == 2)

    async def marked() -> bool:
        trials = await d.store.call(d.store.trials, spec, None)
        return all(t.user_attrs.get(DISPATCHED_ATTR) for t in trials)

    await eventually_async(marked, 10, what="the trials were never marked dispatched")
    run = d.manager.runs[name]
    return [result_of(name, flight, 0.5 + n) for n, flight in sorted(run.inflight.items())]


async def crash_on_a_commit_error(
    d: Daemonless, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study's loop fails once on PostgreSQL's commit error (a storage fault: restarted
    with back-off, never failed); returns once the crashed loop is gone."""
    crashed = d.manager.runs[name]
    original = StudyRun._fill
    left = [commit_error()]

    async def failing_fill(self: StudyRun) -> None:
        if self is crashed and left:
            raise left.pop()
        await original(self)

    monkeypatch.setattr(StudyRun, "_fill", failing_fill)
    assert is_storage_fault(commit_error())
    crashed.wake.set()
    await d.until(lambda: d.manager.runs.get(name) is not crashed)


async def completed(d: Daemonless, name: str) -> list[int]:
    """Wait (at most `WITHIN` s) for the study to complete; its trials told, by event."""
    await d.until(lambda: "study.completed" in d.event_names(name), within=WITHIN)
    return sorted(e["trial"] for e in d.events if e["event"] == "trial.completed")


async def test_results_arriving_while_a_restarted_loop_recovers_are_told(
    daemon: Daemonless, refused: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop crashes on a commit error with 2 trials dispatched; the restarted loop is
    registered (results reach it) but still reading its trials from storage when the two
    results come back from the intake's retry queue. They are told, not dead-lettered as
    "not in flight", and the study completes at once, each trial told once."""
    results = await two_trials_dispatched(daemon, "pg")
    recovering = asyncio.Event()
    gate = asyncio.Event()
    original = StudyRun._recover

    async def held(self: StudyRun) -> None:
        recovering.set()
        await gate.wait()
        await original(self)

    monkeypatch.setattr(StudyRun, "_recover", held)
    await crash_on_a_commit_error(daemon, "pg", monkeypatch)
    await asyncio.wait_for(recovering.wait(), WITHIN)
    assert "pg" in daemon.manager.runs  # registered before recovering: results reach it
    for result in results:
        await daemon.manager.results.on_message(result)
    gate.set()
    assert await completed(daemon, "pg") == [0, 1]
    assert refused == []
    status = await daemon.manager.reports.status("pg")
    assert status["counts"] == {"complete": 2} and status["in_flight"] == 0
    assert daemon.manager.slots.inflight == 0


async def test_a_direct_tell_racing_the_loops_restart_reaches_the_new_loop(
    daemon: Daemonless, refused: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While no loop runs (crashed, its restart backing off) a result is told directly; the
    restarted loop reads its trials before that tell lands and so recovers the trial as in
    flight. The tell lets the new loop know: it does not wait for a result that was told."""
    results = await two_trials_dispatched(daemon, "pg")
    restart_gate = asyncio.Event()
    original_restart = LoopSupervisor._restart

    async def held_restart(self: LoopSupervisor, spec: StudySpec, delay: float) -> None:
        await restart_gate.wait()
        await original_restart(self, spec, delay)

    monkeypatch.setattr(LoopSupervisor, "_restart", held_restart)
    await crash_on_a_commit_error(daemon, "pg", monkeypatch)
    assert "pg" not in daemon.manager.runs
    telling = asyncio.Event()
    tell_gate = asyncio.Event()
    original_tell = WorkerResults._tell_directly

    async def held_tell(self: WorkerResults, spec: StudySpec, result: Outcome) -> bool:
        telling.set()
        await tell_gate.wait()
        return await original_tell(self, spec, result)

    monkeypatch.setattr(WorkerResults, "_tell_directly", held_tell)
    first = asyncio.create_task(daemon.manager.results.on_message(results[0]))
    await asyncio.wait_for(telling.wait(), WITHIN)  # matched against storage, not yet told
    restart_gate.set()
    await daemon.until(
        lambda: "pg" in daemon.manager.runs and len(daemon.manager.runs["pg"].inflight) == 2
    )
    tell_gate.set()
    await first
    await daemon.manager.results.on_message(results[1])
    assert await completed(daemon, "pg") == [0, 1]
    assert refused == []
    assert daemon.manager.slots.inflight == 0


async def test_a_tell_whose_commit_landed_though_it_failed_is_not_told_twice(
    daemon: Daemonless, refused: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL acknowledged the tell's COMMIT, then the connection broke before the
    client saw it: the tell raises, yet it is stored. The intake retries the result (marked
    redelivered): the trial is not told again, its event is published once the retry
    finds it told, and the study completes."""
    results = await two_trials_dispatched(daemon, "pg")
    store = daemon.store
    original = store.tell_many
    left = [commit_error()]

    def landed_then_failed(*args: Any, **kwargs: Any) -> Any:
        told = original(*args, **kwargs)
        if left:
            raise left.pop()
        return told

    monkeypatch.setattr(store, "tell_many", landed_then_failed)
    with pytest.raises(StorageInternalError):
        await daemon.manager.results.on_message(results[0])
    spec = StudySpec.model_validate(quadratic("pg", trials=2))
    trials = await store.call(store.trials, spec, None)
    assert trials[0].state == TrialState.COMPLETE  # stored, though the caller saw an error
    await daemon.manager.results.on_message(results[0], redelivered=True)
    await daemon.manager.results.on_message(results[1])
    assert await completed(daemon, "pg") == [0, 1]
    assert refused == []


async def test_a_create_whose_last_commit_landed_though_it_failed_starts_on_the_retry(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stored the study's spec (the create's last write), then the connection
    broke before the client saw the COMMIT: the create raises and the intake retries it. The
    retry finds the study stored with the very same spec; it used to answer `created: false`
    and leave the study stored as running with no loop (and no `study.created`) until the
    daemon restarted. Now the retry starts it, and the study runs to its budget."""
    store = daemon.store
    original = store.create
    left = [commit_error()]

    def landed_then_failed(spec: StudySpec) -> bool:
        created = original(spec)
        if left:
            raise left.pop()
        return created

    monkeypatch.setattr(store, "create", landed_then_failed)
    starts: list[str] = []
    original_start = LoopSupervisor.start_run

    async def counted_start(self: LoopSupervisor, spec: StudySpec) -> None:
        starts.append(spec.name)
        await original_start(self, spec)

    monkeypatch.setattr(LoopSupervisor, "start_run", counted_start)
    spec = StudySpec.model_validate(quadratic("pg", trials=2))
    with pytest.raises(StorageInternalError):
        await daemon.manager.requests.create(spec)
    assert "pg" not in daemon.manager.runs and daemon.event_names("pg") == []
    # The intake retries it, and a client sends it again over HTTP at the same moment:
    # the study is started once.
    replies = await asyncio.gather(
        daemon.manager.requests.create(spec), daemon.manager.requests.create(spec)
    )
    assert sorted(r["created"] for r in replies) == [False, True]
    assert all(r["running"] for r in replies if r["created"])
    again = await daemon.manager.requests.create(spec)  # once more: nothing more happens
    assert again["created"] is False and again["running"] is True
    assert daemon.event_names("pg").count("study.created") == 1
    assert starts == ["pg"]  # one loop started

    async def completed() -> bool:
        if "study.completed" in daemon.event_names("pg"):
            return True
        await daemon.answer("pg")
        return False

    await eventually_async(completed, WITHIN)
    assert (await daemon.manager.reports.status("pg"))["counts"] == {"complete": 2}


async def test_a_result_whose_dispatch_mark_was_lost_is_told_not_refused(
    daemon: Daemonless, refused: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task is published before its dispatch mark is written, and the mark rides on a
    later durable write (`StudyStore.mark_dispatched_soon`); PostgreSQL refuses that write.
    The mark waits for the next write instead of being lost, the loop goes on (before, a
    lost mark crashed it and the worker's result was refused as "attempt 1 was never
    dispatched"), and the result is told once: the trial is not evaluated again."""
    published: list[dict[str, Any]] = []
    bus = daemon.bus
    real_dispatch, real_pack = bus.dispatch, bus.dispatch_pack

    async def dispatch(message: dict[str, Any], **limits: float) -> None:
        published.append(message)
        await real_dispatch(message, **limits)

    async def dispatch_pack(messages: list[dict[str, Any]], **limits: float) -> None:
        published.extend(messages)
        await real_pack(messages, **limits)

    monkeypatch.setattr(bus, "dispatch", dispatch)
    monkeypatch.setattr(bus, "dispatch_pack", dispatch_pack)
    left = [commit_error()]
    real_mark = daemon.store.mark_dispatched

    def mark_lost(trial_id: int, attempt: int) -> None:
        if left:
            raise left.pop()
        real_mark(trial_id, attempt)

    monkeypatch.setattr(daemon.store, "mark_dispatched", mark_lost)
    crashes: list[BaseException] = []
    original_failure = LoopSupervisor._on_failure

    def on_failure(self: LoopSupervisor, spec: StudySpec, exc: BaseException) -> None:
        crashes.append(exc)
        original_failure(self, spec, exc)

    monkeypatch.setattr(LoopSupervisor, "_on_failure", on_failure)
    await daemon.manager.requests.create(StudySpec.model_validate(quadratic("pg", trials=1)))
    await daemon.until(lambda: not left and bool(published))
    assert [m["number"] for m in published] == [0]
    for message in published:
        await daemon.manager.results.on_message(
            {
                **{k: message[k] for k in ("study", "number", "trial_id", "attempt", "params")},
                "state": "complete",
                "values": [0.5],
            }
        )
    assert refused == []
    assert await completed(daemon, "pg") == [0]
    assert [m["number"] for m in published] == [0]  # not evaluated twice
    assert crashes == []  # the loop never crashed
    spec = StudySpec.model_validate(quadratic("pg", trials=1))
    trial = await daemon.store.call(daemon.store.trial, spec, 0)
    # The mark was kept for a later write: written with it, or, when that write was the
    # trial's own tell, left out there (a told trial needs none); never left waiting.
    assert trial.user_attrs.get(DISPATCHED_ATTR, 1) == 1 and not daemon.store._marks


async def test_a_journal_write_that_stayed_though_it_failed_is_not_told_twice(
    daemon: Daemonless, refused: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's ambiguous commit: a tell's group is written, its fsync fails (EIO), and
    cutting the group back fails too, so its lines stay in the file though the tell raised.
    The store reads the file anew; the retried result finds the trial told, publishes its
    event, and the trial is finished once in the file."""
    results = await two_trials_dispatched(daemon, "pg")
    real_fsync, real_ftruncate = os.fsync, os.ftruncate
    armed = [True]

    def on_optuna_thread() -> bool:
        return armed[0] and threading.current_thread().name.startswith("hpod-optuna")

    def fsync(fd: int) -> None:
        if on_optuna_thread():
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    def ftruncate(fd: int, length: int) -> None:
        if on_optuna_thread():
            armed[0] = False  # the cut-back fails; everything works again after it
            raise OSError(errno.EIO, "Input/output error")
        real_ftruncate(fd, length)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    with pytest.raises(OSError):
        await daemon.manager.results.on_message(results[0])
    assert not armed[0] and daemon.store.fault is not None
    journal = daemon.settings.data_dir / "studies.journal"
    assert finished_in(journal) == [results[0]["trial_id"]]  # stayed, though it raised
    await daemon.manager.results.on_message(results[0], redelivered=True)
    await daemon.manager.results.on_message(results[1])
    assert await completed(daemon, "pg") == [0, 1]
    assert refused == []
    assert sorted(finished_in(journal)) == sorted(r["trial_id"] for r in results)


def finished_in(journal: Path) -> list[int]:
    """The trial ids finished in a journal file, once per finishing operation."""
    with journal.open("rb") as f:
        return [
            op["trial_id"]
            for op in map(json.loads, f)
            if op.get("op_code") == SET_TRIAL_STATE_VALUES
            and op.get("state") in {state.value for state in FINISHED}
        ]
