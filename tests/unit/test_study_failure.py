"""A study that fails never harms the daemon (issue 12, findings 1, 5 and 13).

These run a real `StudyManager` in the test's process, on a journal file and the embedded
broker in a temporary data directory; the test plays the worker by handing results to
`manager.results.on_message`, as the intake does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import eventually_async, quadratic_spec
from optuna.trial import TrialState

from hpod.config import Settings
from hpod.daemon import supervisor as supervisor_module
from hpod.daemon.bus import Bus
from hpod.daemon.manager import StudyManager
from hpod.daemon.running import RunningStudies
from hpod.daemon.slots import TaskSlots
from hpod.daemon.store import FAILURE_ATTR, StudyStore
from hpod.daemon.studies import InFlight, StudyRun
from hpod.engine import CREATED_ATTR, SPEC_ATTR, STATE_ATTR
from hpod.errors import RequestRejected
from hpod.journal import JournalGroupError
from hpod.schema import FloatParam, StudySpec
from hpod.workers.celery_config import make_celery

#: The exact unsampleable space of issue 12, finding 1 (Optuna: "Range exceeds valid bounds").
HUGE_SPACE = {
    "x": {"type": "float", "low": -1.7976931348623157e308, "high": 1.7976931348623157e308}
}


def quadratic(name: str, trials: int = 6, **extra: Any) -> dict[str, Any]:
    """A small quadratic study, as a request would carry it (conftest's, with 6 trials)."""
    return quadratic_spec(name, trials, **extra)


class Daemonless:
    """A manager with its store and bus, and the events it published."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.settings = Settings(
            data_dir=tmp_path, local_workers=0, trial_grace_seconds=60, **settings
        )
        self.store = StudyStore(self.settings.optuna_storage_url())
        self.bus = Bus(self.settings, make_celery(self.settings))
        self.manager = StudyManager(self.settings, self.store, self.bus)
        self.events: list[dict[str, Any]] = []
        self.bus.add_listener(self.events.append)

    async def close(self) -> None:
        """Stop the loops and release everything."""
        await self.manager.shutdown()
        self.bus.close()
        self.store.close()

    def event_names(self, study: str) -> list[str]:
        """The events published for `study`, in order."""
        return [e["event"] for e in self.events if e.get("study") == study]

    async def until(self, check: Callable[[], bool], within: float = 20) -> None:
        """Wait until `check()` holds."""
        await eventually_async(check, within, what=lambda: f"events: {self.events}")

    async def answer(self, name: str) -> int:
        """Play the worker: tell every trial in flight of study `name` complete. A result
        whose tell fails on storage is left for the next call, as the intake requeues it."""
        run = self.manager.runs.get(name)
        results = [result_of(name, flight, 1.0) for flight in run.inflight.values()] if run else []
        for result in results:
            with contextlib.suppress(OSError, JournalGroupError):
                await self.manager.results.on_message(result)
        return len(results)


def result_of(study: str, flight: InFlight, value: float) -> dict[str, Any]:
    """The result a worker publishes for the trial in flight `flight` (every field the daemon
    checks: trial id, attempt, params)."""
    return {
        "study": study,
        "number": flight.trial.number,
        "trial_id": flight.trial.trial_id,
        "attempt": flight.attempt,
        "params": dict(flight.trial.params),
        "state": "complete",
        "values": [value],
    }


@pytest.fixture
async def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Daemonless]:
    """A manager that restarts failed loops after 50 ms, failing a study after 2 failures."""
    monkeypatch.setattr(supervisor_module, "RESTART_INITIAL_SECONDS", 0.05)
    monkeypatch.setattr(supervisor_module, "RESTART_MAX_SECONDS", 0.2)
    d = Daemonless(tmp_path, study_max_failures=2, max_inflight=2)
    yield d
    await d.close()


def store_as_an_older_daemon(
    store: StudyStore, name: str, space: dict[str, Any], seed: int = 0
) -> None:
    """Write a running study the way an older daemon did, with the trial its crashed loop
    left RUNNING (asked, never dispatched)."""
    spec = json.dumps(
        {
            "name": name,
            "objective": "quadratic",
            "space": space,
            "budget": {"trials": 4},
            "sampler": {"name": "random", "seed": seed},
            "mode": "balanced",
        }
    )
    storage = store.storage
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
    storage.set_study_user_attr(study_id, CREATED_ATTR, time.time())
    storage.set_study_user_attr(study_id, STATE_ATTR, "running")
    storage.set_study_user_attr(study_id, SPEC_ATTR, spec)
    optuna.load_study(study_name=name, storage=storage).ask()


async def test_a_stored_unsampleable_study_is_marked_failed_and_the_start_goes_on(
    daemon: Daemonless,
) -> None:
    """The issue's spec (float low -1.797e308, high 1.797e308) stored with a RUNNING trial:
    `start` no longer raises; the study is failed with the reason (stored), its trial failed,
    `study.failed` published, and a healthy study next to it runs."""
    store_as_an_older_daemon(daemon.store, "huge", HUGE_SPACE)
    store_as_an_older_daemon(daemon.store, "fine", quadratic("fine")["space"])
    await daemon.manager.start()
    await daemon.until(lambda: "study.failed" in daemon.event_names("huge"))
    status = await daemon.manager.reports.status("huge")
    assert status["state"] == "failed" and status["running"] is False
    assert status["failure"]  # the reason: the stored spec is refused, or Optuna's overflow
    assert "overflow" in status["failure"].lower() or "invalid" in status["failure"]
    event = next(e for e in daemon.events if e["event"] == "study.failed")
    assert event["reason"] == status["failure"]
    attrs = await daemon.store.call(daemon.store.study_attrs, "huge")
    assert attrs[STATE_ATTR] == "failed" and attrs[FAILURE_ATTR] == status["failure"]
    trials = optuna.load_study(study_name="huge", storage=daemon.store.storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert "fine" in daemon.manager.runs  # the other study goes on
    # A restart of the daemon resumes only the healthy study.
    specs, invalid = await daemon.store.call(daemon.store.running_studies)
    assert [s.name for s in specs] == ["fine"] and not invalid


@pytest.mark.parametrize(
    ("space", "seed"),
    [
        ({"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 5e-324}}, 0),
        ({"n": {"type": "int", "low": 0, "high": 10**400}}, 0),
        ({"x": {"type": "float", "low": 0.0, "high": 1.0}}, -1),
        ({"x": {"type": "float", "low": 0.0, "high": 1.0}}, 2**32),
    ],
    ids=["float-step-5e-324", "int-bound-10**400", "seed--1", "seed-2**32"],
)
async def test_every_unstartable_spec_of_the_issue_is_failed_at_start(
    daemon: Daemonless, space: dict[str, Any], seed: int
) -> None:
    """The other specs of finding 1 that made `hpod run` exit on every start, stored as an
    older daemon accepted them: `start` returns, each study is failed with a reason and its
    stuck trial failed."""
    store_as_an_older_daemon(daemon.store, "bad", space, seed)
    await daemon.manager.start()
    await daemon.until(lambda: "study.failed" in daemon.event_names("bad"))
    status = await daemon.manager.reports.status("bad")
    assert status["state"] == "failed" and status["failure"] and status["running"] is False
    assert status["counts"] == {"fail": 1}
    assert daemon.manager.slots.inflight == 0


async def test_a_study_whose_loop_fails_every_time_is_failed_not_restarted_forever(
    daemon: Daemonless,
) -> None:
    """An ask that raises the same error each time: after `study_max_failures` tries the
    study is failed, the asked trial failed with the reason, and `hpod status` shows it."""
    # The edge refuses this space now; an older daemon accepted it. Build the spec past the
    # validators, as such a daemon's stored spec is, so that the loop meets the real error.
    valid = StudySpec.model_validate(quadratic("broken"))
    huge = FloatParam.model_construct(**{**HUGE_SPACE["x"], "log": False, "step": None})
    parsed = valid.model_copy(update={"space": {"x": huge}})
    reply = await daemon.manager.requests.create(parsed)
    assert reply["created"] is True
    await daemon.until(lambda: "study.failed" in daemon.event_names("broken"))
    status = await daemon.manager.reports.status("broken")
    assert status["state"] == "failed" and "overflow" in status["failure"].lower()
    assert status["counts"] == {"fail": 1}  # the asked trial: failed, not stuck RUNNING
    assert daemon.manager.slots.inflight == 0
    assert "study.completed" not in daemon.event_names("broken")


async def test_a_crashed_loop_gives_back_its_slots_and_other_studies_dispatch(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With max_inflight 2, a study with 2 tasks in flight whose loop then fails for good:
    the global count returns to 0 (it is derived from the running loops), a new study gets
    both slots, and the failed study's dispatched trials are still told once when their
    results come (nothing lost, nothing told twice)."""
    await daemon.manager.requests.create(StudySpec.model_validate(quadratic("a", trials=6)))
    await daemon.until(lambda: daemon.manager.slots.inflight == 2)
    in_flight = sorted(daemon.manager.runs["a"].inflight)
    results = [result_of("a", f, 0.5) for f in daemon.manager.runs["a"].inflight.values()]
    original_fill = StudyRun._fill

    async def failing_fill(self: StudyRun) -> None:
        if self.name == "a":
            raise RuntimeError("sampler exploded")
        await original_fill(self)

    monkeypatch.setattr(StudyRun, "_fill", failing_fill)
    daemon.manager.runs["a"].wake.set()
    await daemon.until(lambda: "study.failed" in daemon.event_names("a"))
    assert daemon.manager.slots.inflight == 0
    await daemon.manager.requests.create(StudySpec.model_validate(quadratic("b", trials=2)))
    await daemon.until(
        lambda: "b" in daemon.manager.runs and len(daemon.manager.runs["b"].tasks) == 2
    )
    assert daemon.manager.slots.inflight == 2
    # The results of a's dispatched trials arrive later: told once, not lost.
    for result in results:
        await daemon.manager.results.on_message(result)
        await daemon.manager.results.on_message(result)
    told = [e["trial"] for e in daemon.events if e["event"] == "trial.completed"]
    assert sorted(told) == in_flight
    assert (await daemon.manager.reports.status("a"))["counts"] == {"complete": 2}


async def test_a_storage_outage_is_retried_until_storage_is_back(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's durable write fails with ENOSPC five times (more than
    study_max_failures): the study is not failed; the storage is re-read from the file,
    the loop restarted with back-off, and once writes work the study completes at exactly
    its budget, every trial told once."""
    from hpod import journal

    failures = {"left": 0}
    real_write = journal._write_all

    def disk_full(fd: int, data: bytes) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(journal, "_write_all", disk_full)
    await daemon.manager.requests.create(StudySpec.model_validate(quadratic("outage", trials=5)))
    failures["left"] = 5  # the disk fills up while the study runs
    before = daemon.store.storage
    await daemon.answer("outage")
    # Five restarts back off 0.5 + 1 + 2 + 4 + 8 s (with jitter): up to ~16 s before load,
    # so the default 20 s wait was too close (it ran out once under load).
    await daemon.until(lambda: failures["left"] == 0 and "outage" in daemon.manager.runs, within=60)
    while "study.completed" not in daemon.event_names("outage"):
        await daemon.answer("outage")
        await asyncio.sleep(0.05)
        assert "study.failed" not in daemon.event_names("outage")
    # The outage happened, and the storage was read again from the file.
    assert failures["left"] == 0 and daemon.store.storage is not before
    status = await daemon.manager.reports.status("outage")
    assert status["state"] == "completed" and status["counts"] == {"complete": 5}
    told = [e["trial"] for e in daemon.events if e["event"] == "trial.completed"]
    assert sorted(told) == list(range(5))
    assert daemon.store.fault is None


async def test_the_number_of_studies_is_limited(tmp_path: Path) -> None:
    """Beyond max_studies, study.create is refused with `too_many_studies`; the same create
    again is still answered."""
    d = Daemonless(tmp_path, max_studies=2)
    try:
        for name in ("one", "two"):
            spec = StudySpec.model_validate(quadratic(name, objective=None))
            assert (await d.manager.requests.create(spec))["created"] is True
        assert (await d.manager.requests.create(spec))["created"] is False
        with pytest.raises(RequestRejected) as refused:
            await d.manager.requests.create(
                StudySpec.model_validate(quadratic("three", objective=None))
            )
        assert refused.value.code == "too_many_studies" and refused.value.field == "study.name"
    finally:
        await d.close()


def test_a_stall_of_the_daemon_moves_the_deadlines_instead_of_expiring() -> None:
    """A gap between two ticks longer than STALL_SECONDS (SIGSTOP) pushes every deadline in
    flight back by the gap: results waiting in the broker get their chance first."""
    running = RunningStudies(TaskSlots(max_inflight=4))
    running.last_tick -= 152
    assert running.check_stall() == 0.0  # no ticker running: a gap proves nothing
    running.ticking = True
    assert running.check_stall() == 0.0
    running.last_tick -= 152
    assert running.check_stall() >= 152
    assert running.check_stall() == 0.0


async def test_the_store_keeps_a_bounded_number_of_studies_open(daemon: Daemonless) -> None:
    """Status reads of many studies keep at most OPEN_STUDIES idle ones open (finding 8:
    `StudyStore._studies` never evicted); a running study's stays, and a loop that ends has
    its study and plan dropped (re-opened on demand)."""
    from hpod.daemon.store import OPEN_STUDIES

    await daemon.manager.requests.create(StudySpec.model_validate(quadratic("live", trials=2)))
    for i in range(OPEN_STUDIES + 20):
        spec = StudySpec.model_validate(quadratic(f"idle-{i}", objective=None))
        await daemon.store.call(daemon.store.create, spec)
        await daemon.manager.reports.status(spec.name)
    assert len(daemon.store._studies) <= OPEN_STUDIES + 1
    assert "live" in daemon.store._studies and "live" in daemon.store._plans
    while "study.completed" not in daemon.event_names("live"):
        await daemon.answer("live")
        await asyncio.sleep(0.05)
    await daemon.until(lambda: "live" not in daemon.store._plans)
    assert "live" not in daemon.store._studies
    assert (await daemon.manager.reports.status("live"))["counts"] == {"complete": 2}
