"""Continuation through a real daemon and real Celery workers (issue 13, item 2): a trial
paused at a rung on one worker process is continued from its checkpoint on another, and its
cost counts each rung's increment only; a daemon killed with paused trials recovers them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import Daemon, DaemonFactory, eventually

from hpod.daemon.promotion import CONTINUATION_ATTR
from hpod.engine import COST_ATTR, make_storage

pytestmark = pytest.mark.broker

COMPLETE = optuna.trial.TrialState.COMPLETE
RUNNING = optuna.trial.TrialState.RUNNING


def mlp_spec(name: str, trials: int) -> dict[str, Any]:
    """A small balanced study of the digits MLP over 9 epochs: rungs at 1, 3 and 9 epochs
    (with `continued_modes`)."""
    return {
        "name": name,
        "objective": "mlp_digits",
        "objective_kwargs": {"epochs": 9},
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True}},
        "budget": {"trials": trials},
        "mode": "balanced",
        "strategy": "mode",
        "sampler": {"name": "random", "seed": 3},
        "max_concurrent": 2,
    }


def continued_modes(tmp_path: Path) -> str:
    """A modes file that turns continuation on in balanced (no packaged mode continues)."""
    path = tmp_path / "continued-modes.toml"
    path.write_text("[balanced]\ncontinuation = [0.111111, 0.333333, 1.0]\n")
    return str(path)


def trials(daemon: Daemon, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read with plain Optuna from the daemon's journal."""
    storage = make_storage(f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal")
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def paused(daemon: Daemon, name: str) -> list[optuna.trial.FrozenTrial]:
    """Trials waiting at a rung: running in Optuna, with a record and no task running them."""
    return [
        t
        for t in trials(daemon, name)
        if t.state == RUNNING
        and t.user_attrs.get(CONTINUATION_ATTR, {}).get("at") is not None
        and t.user_attrs[CONTINUATION_ATTR].get("to") is None
    ]


def pause_when_some_paused(daemon: Daemon, name: str, at_least: int) -> None:
    """Pause the study once `at_least` trials wait at a rung, and wait for its tasks."""
    eventually(
        lambda: len(paused(daemon, name)) >= at_least, 120, what=lambda: daemon.log()[-3000:]
    )
    assert daemon.request("POST", f"/studies/{name}/pause", {})[0] == 200
    eventually(lambda: daemon.get(f"/studies/{name}")["in_flight"] == 0, 120)


def test_a_paused_trial_continues_on_another_worker_from_its_checkpoint(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Worker A runs the first rungs; the study is paused, A stops, worker B takes over:
    the trials promoted then resume on B from A's checkpoints, and a completed trial's
    cost adds up its rungs' increments (one full evaluation's share of the epochs, not
    the 1/9 + 3/9 + 9/9 a re-training ladder would spend)."""
    daemon = start_daemon("--no-workers", broker_url=rabbitmq, modes_file=continued_modes(tmp_path))
    first = start_worker(daemon.env, concurrency=1)
    name = "continued"
    assert daemon.request("POST", "/studies", mlp_spec(name, trials=6))[0] == 201
    pause_when_some_paused(daemon, name, at_least=2)
    first.stop()
    start_worker(daemon.env, concurrency=1)
    assert daemon.request("POST", f"/studies/{name}/resume", {})[0] == 200
    final = daemon.wait_study(name, timeout=300)
    assert final["n_trials"] == 6, final

    done = trials(daemon, name)
    assert all(t.state != RUNNING for t in done)
    complete = [t for t in done if t.state == COMPLETE]
    assert complete, [(t.number, t.state, t.user_attrs.get(COST_ATTR)) for t in done]
    moved = []
    for t in done:
        cost = t.user_attrs[COST_ATTR]
        tasks = cost["tasks"]
        workers = {task["worker"].split(":", 1)[1] for task in tasks if task.get("worker")}
        if len(workers) == 2 and any(task["resumed"] for task in tasks):
            moved.append(t.number)
        # Each task resumed where the one before stopped: only increments were trained.
        steps = [round(task["to"] * 9) for task in tasks]
        assert [task["resumed"] for task in tasks] == [0, *steps[:-1]], tasks
        assert cost["data"] == pytest.approx(steps[-1] / 9, abs=1e-3), cost
        assert cost["cpu"] == pytest.approx(sum(task["cpu"] for task in tasks), abs=1e-3)
    assert moved, [t.user_attrs[COST_ATTR]["tasks"] for t in done]
    for t in complete:
        assert t.user_attrs[COST_ATTR]["full_cpu"] == t.user_attrs[COST_ATTR]["cpu"]
        assert max(t.intermediate_values) == 9
    checkpoints = Path(daemon.env["HPOD_DATA_DIR"]) / "checkpoints" / name
    assert not list(checkpoints.glob("*.npz")), "a told trial kept its checkpoint"


def test_a_daemon_killed_with_paused_trials_recovers_and_continues_them(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of the daemon while trials wait at a rung: the restarted daemon reads their
    records from the study storage, promotes and prunes them; every trial is told once."""
    daemon = start_daemon("--no-workers", broker_url=rabbitmq, modes_file=continued_modes(tmp_path))
    start_worker(daemon.env, concurrency=1)
    name = "continued-restart"
    assert daemon.request("POST", "/studies", mlp_spec(name, trials=5))[0] == 201
    pause_when_some_paused(daemon, name, at_least=1)
    waiting = {t.number for t in paused(daemon, name)}
    daemon.kill()
    daemon.start()
    assert daemon.request("POST", f"/studies/{name}/resume", {})[0] == 200
    final = daemon.wait_study(name, timeout=300)
    assert final["n_trials"] == 5, final
    done = {t.number: t for t in trials(daemon, name)}
    assert all(t.state != RUNNING for t in done.values())
    assert final["counts"].get("complete", 0) >= 1, final
    for number in waiting:
        # Its record came back from storage: its tasks are all there, told once.
        assert done[number].user_attrs[COST_ATTR]["tasks"][0]["resumed"] == 0
