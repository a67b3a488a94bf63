"""An unbatched trial's tell and the next ask of its study share one durable write (issue 16).

`StudyRun.on_results` tells one worker result and, when the loop would then ask exactly one
trial under the same plan, asks it in the same journal group (`StudyStore.tell_and_ask`): one
group commit and one call on the Optuna thread per trial, where the tell and the ask took two
of each. The new trial is published only after that commit, and the result is acknowledged
(`on_message` returns) only after it. A SIGKILL before the commit loses nothing acknowledged
(the result comes again and is told once); one after it leaves a trial asked but never
published, which a restart dispatches as any RUNNING trial without a dispatch mark.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_study_failure import Daemonless, quadratic, result_of

from hpod.daemon import store as store_module
from hpod.daemon.store import Outcome
from hpod.engine import DISPATCHED_ATTR
from hpod.journal import GroupCommitJournalBackend, check_journal
from hpod.schema import StudySpec

#: The benchmark's unbatched mode: no efficiency policy, no batching.
MODES = """
[unbatched]
policies = []
[packs]
policies = ["batching"]
batch_seconds = 0.5
"""


def _spec(name: str, trials: int = 6) -> StudySpec:
    return StudySpec.model_validate(
        quadratic(name, trials=trials, mode="unbatched", transfer="off", max_concurrent=1)
    )


@pytest.fixture
def modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "modes.toml"
    path.write_text(MODES)
    monkeypatch.setenv("HPOD_MODES_FILE", str(path))
    # No dispatch mark falls due during a test: none is written by the timer, none rides.
    monkeypatch.setattr(store_module, "MARK_DELAY", 3600.0)
    return path


@pytest.fixture
async def daemon(tmp_path: Path, modes: Path) -> AsyncIterator[Daemonless]:
    d = Daemonless(tmp_path / "data", max_inflight=4)
    yield d
    await d.close()


def _journal_file(d: Daemonless) -> str:
    return d.store.url.removeprefix("journal://")


def _read_back(path: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as a plain Optuna reader of the file sees them."""
    storage = JournalStorage(JournalFileBackend(path))
    study_id = storage.get_study_id_from_name(name)
    return storage.get_all_trials(study_id, deepcopy=False)


async def test_one_unbatched_tell_and_the_next_ask_cost_one_group_commit(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec("one")
    path = _journal_file(daemon)
    published: list[tuple[int, list[TrialState]]] = []

    async def dispatch(message: dict[str, Any], **limits: float) -> None:
        # What the file holds when the task goes out: the trial asked is durable by then.
        states = [t.state for t in _read_back(path, "one")]
        published.append((message["number"], states))

    monkeypatch.setattr(daemon.bus, "dispatch", dispatch)
    await daemon.manager.requests.create(spec)
    await daemon.until(lambda: len(published) == 1)
    run = daemon.manager.runs["one"]
    await daemon.until(lambda: not run.recovering and not run._deciding.locked())
    journal = daemon.store._journal()
    assert isinstance(journal, GroupCommitJournalBackend)

    calls = 0
    call = daemon.store.call

    async def counted(fn: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        return await call(fn, *args)

    monkeypatch.setattr(daemon.store, "call", counted)
    for number in range(1, 4):
        commits = journal.commits
        calls = 0
        flight = run.inflight[number - 1]
        await daemon.manager.results.on_message(result_of("one", flight, float(number)))
        # Acknowledged (returned) only once the tell is durable, in the same commit as the ask.
        told = _read_back(path, "one")[number - 1]
        assert told.state == TrialState.COMPLETE
        await daemon.until(lambda n=number: len(published) == n + 1)
        assert journal.commits - commits == 1
        assert calls == 1
        assert published[number][0] == number
        assert published[number][1] == [TrialState.COMPLETE] * number + [TrialState.RUNNING]


async def test_a_batched_study_tells_alone(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop that may pack trials is left to ask on its own (the pack's size moves with the
    tells), so the tell is one write and the ask another, as before."""
    spec = StudySpec.model_validate(
        quadratic("packs", trials=6, mode="packs", transfer="off", max_concurrent=1)
    )
    published: list[int] = []

    async def dispatch(message: dict[str, Any], **limits: float) -> None:
        published.append(message["number"])

    monkeypatch.setattr(daemon.bus, "dispatch", dispatch)
    await daemon.manager.requests.create(spec)
    await daemon.until(lambda: published == [0])
    run = daemon.manager.runs["packs"]
    journal = daemon.store._journal()
    assert isinstance(journal, GroupCommitJournalBackend)
    await daemon.until(lambda: not run.recovering and not run._deciding.locked())
    commits = journal.commits
    await daemon.manager.results.on_message(result_of("packs", run.inflight[0], 1.0))
    await daemon.until(lambda: published == [0, 1])
    assert journal.commits - commits == 2


#: A child that tells trial 0 with the next ask in one group and is killed in that group's
#: commit: `before` its write, `torn` halfway through it (whole lines of the group's start
#: and a torn one: a prefix, as a power cut leaves), `after` it is durable (before the call
#: returns: so before any acknowledgement or publish).
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import hpod.journal as journal
    from hpod.daemon.store import Outcome, StudyStore
    from hpod.schema import StudySpec

    url, spec_json, mode = sys.argv[1:4]
    spec = StudySpec.model_validate_json(spec_json)
    store = StudyStore(url)
    store.create(spec)
    store.ask(spec)  # trial 0, dispatched; its result comes back:

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if mode in ("before", "torn"):
        def cut(fd, data):
            os.write(fd, data[: len(data) // 2 if mode == "torn" else 0])
            die()
        journal._write_all = cut
    else:
        advance = journal.GroupCommitJournalBackend._advance
        def after(self, *args):
            advance(self, *args)
            die()
        journal.GroupCommitJournalBackend._advance = after
    store.tell_and_ask(spec, [Outcome(0, "complete", [1.0], cost={"cpu": 0.1})], 1)
    sys.exit(3)  # not reached
    """
)


def _kill_in_commit(data: Path, spec: StudySpec, mode: str) -> str:
    from hpod.config import Settings

    url = Settings(data_dir=data, local_workers=0).optuna_storage_url()
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, url, spec.model_dump_json(), mode],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return url.removeprefix("journal://")


@pytest.mark.parametrize("mode", ["before", "torn", "after"])
async def test_a_sigkill_in_the_commit_of_a_tell_with_an_ask_loses_nothing_acknowledged(
    tmp_path: Path, modes: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Whatever part of the group reached the file (none, a prefix with a torn last line,
    all of it), the reopened journal is valid; nothing was acknowledged, so trial 0's result
    comes again and is told once; a trial asked but never published (RUNNING, no dispatch
    mark: trial 0 itself when its tell did not land, trial 1 when the ask did, wholly or in
    part) is dispatched by the restart, as any such trial."""
    spec = _spec("crash")
    data = tmp_path / "data"
    path = _kill_in_commit(data, spec, mode)
    check_journal(path)  # a torn tail is no corruption: the next write cuts it
    trials = _read_back(path, "crash")
    states = [t.state for t in trials]
    if mode == "before":
        assert states == [TrialState.RUNNING]
    elif mode == "after":
        assert states == [TrialState.COMPLETE, TrialState.RUNNING]
        assert trials[1].params.keys() == {"x", "y"}
    else:  # the tell's logs come first in the group: trial 0 told, trial 1 begun
        assert states[0] == TrialState.COMPLETE and len(states) <= 2
    unpublished = {t.number for t in trials if t.state == TrialState.RUNNING}
    assert all(DISPATCHED_ATTR not in t.user_attrs for t in trials)
    published: list[tuple[int, int]] = []
    d = Daemonless(data, max_inflight=4)

    async def dispatch(message: dict[str, Any], **limits: float) -> None:
        published.append((message["number"], message["attempt"]))

    monkeypatch.setattr(d.bus, "dispatch", dispatch)
    try:
        await d.manager.start()
        await d.until(lambda: "crash" in d.manager.runs)
        run = d.manager.runs["crash"]
        await d.until(lambda: not run.recovering and len(published) >= len(unpublished))
        assert {n for n, _ in published[: len(unpublished)]} == unpublished
        assert all(attempt == 1 for _, attempt in published)
        redelivered = {
            "study": "crash",
            "number": 0,
            "trial_id": trials[0]._trial_id,
            "attempt": 1,
            "params": dict(trials[0].params),
            "state": "complete",
            "values": [1.0],
        }
        await d.manager.results.on_message(redelivered, redelivered=True)
        # The loop goes on (a strategy decision, the next trial) before it is shut down.
        await d.until(lambda: bool(run.inflight) and not run._deciding.locked())
    finally:
        await d.close()
    told = _read_back(path, "crash")
    assert told[0].state == TrialState.COMPLETE and told[0].values == [1.0]
    assert sum(t.state == TrialState.RUNNING for t in told) <= 1  # the next one, in flight
    # Trial 0 finished once in the file (Optuna's replay would hide a second finish).
    with open(path, encoding="utf-8") as f:  # noqa: ASYNC230 (the daemon is closed)
        logs = [json.loads(line) for line in f]
    finishes = [
        log
        for log in logs
        if log["op_code"] == 6
        and log["trial_id"] == told[0]._trial_id
        and log["state"] != TrialState.RUNNING
    ]
    assert len(finishes) == 1


async def test_a_storage_fault_in_a_tell_with_an_ask_is_retried_and_the_budget_stays_exact(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group of a tell and an ask fails to commit (ENOSPC, a prefix written first): the
    result is not acknowledged (`on_message` raises, the intake retries it), the loop fails
    and is restarted (recounting its trials from the file), and the study ends at exactly
    its budget, every trial told once."""
    from hpod import journal
    from hpod.daemon import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "RESTART_INITIAL_SECONDS", 0.05)
    monkeypatch.setattr(supervisor_module, "RESTART_MAX_SECONDS", 0.2)
    real_write = journal._write_all
    failures = {"left": 0}

    def disk_full(fd: int, data: bytes) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(journal, "_write_all", disk_full)
    spec = _spec("fault", trials=5)
    await daemon.manager.requests.create(spec)
    await daemon.until(lambda: "fault" in daemon.manager.runs)
    run = daemon.manager.runs["fault"]
    await daemon.until(lambda: bool(run.inflight) and not run._deciding.locked())
    flight = run.inflight[0]
    assert run._ask_with_tell([Outcome(0, "complete", [1.0])], owed=False) == 1
    failures["left"] = 1
    with pytest.raises(OSError):
        await daemon.manager.results.on_message(result_of("fault", flight, 1.0))
    await daemon.until(lambda: daemon.manager.runs.get("fault") not in (None, run))
    while "study.completed" not in daemon.event_names("fault"):
        await daemon.answer("fault")  # the first result again, then the next trials'
        await asyncio.sleep(0.05)
    status = await daemon.manager.reports.status("fault")
    assert status["counts"] == {"complete": 5}
    told = [e["trial"] for e in daemon.events if e["event"] == "trial.completed"]
    assert sorted(told) == list(range(5))


async def test_a_failed_publish_of_the_trial_asked_with_a_tell_fails_the_loop_not_the_result(
    daemon: Daemonless, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker refuses the task of the trial asked with a tell: the tell is durable and
    the result acknowledged (`on_message` returns), the loop fails on the publish as it
    would on its own ask's, and its restart sends the trial again (RUNNING, never marked
    dispatched); the study ends at exactly its budget."""
    from hpod.daemon import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "RESTART_INITIAL_SECONDS", 0.05)
    monkeypatch.setattr(supervisor_module, "RESTART_MAX_SECONDS", 0.2)
    published: list[int] = []
    refuse = {"left": 0}

    async def dispatch(message: dict[str, Any], **limits: float) -> None:
        if refuse["left"] > 0:
            refuse["left"] -= 1
            raise ConnectionResetError("broker gone")
        published.append(message["number"])

    monkeypatch.setattr(daemon.bus, "dispatch", dispatch)
    await daemon.manager.requests.create(_spec("publish", trials=4))
    await daemon.until(lambda: published == [0])
    run = daemon.manager.runs["publish"]
    await daemon.until(lambda: not run.recovering and not run._deciding.locked())
    assert run._ask_with_tell([Outcome(0, "complete", [1.0])], owed=False) == 1
    refuse["left"] = 1
    await daemon.manager.results.on_message(result_of("publish", run.inflight[0], 1.0))
    trials = await daemon.store.call(daemon.store.trials, run.spec, None)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    await daemon.until(lambda: daemon.manager.runs.get("publish") not in (None, run))
    await daemon.until(lambda: published == [0, 1])
    while "study.completed" not in daemon.event_names("publish"):
        await daemon.answer("publish")
        await asyncio.sleep(0.05)
    status = await daemon.manager.reports.status("publish")
    assert status["counts"] == {"complete": 4}
    told = [e["trial"] for e in daemon.events if e["event"] == "trial.completed"]
    assert sorted(told) == list(range(4))
