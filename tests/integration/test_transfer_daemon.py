"""Transfer across studies in a real daemon with real workers (docs/transfer.md): a study on
shifted data starts with the best configurations of a finished one, also after a restart and
on PostgreSQL; `transfer: off` starts cold; a past study whose surface disagrees stops being
used. Cheap analytic studies (`quadratic`, whose `offset` kwarg shifts the optimum)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
from conftest import Daemon, DaemonFactory, quadratic_spec, watch

from hpod.engine import make_storage
from hpod.transfer.memory import MEMORY_ATTR
from hpod.transfer.store import DROPPED_ATTR, TRANSFER_ATTR, TRANSFERRED_ATTR


def spec(name: str, offset: float, trials: int = 24, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """A quadratic study with its optimum at (offset, offset); two trials in flight."""
    return quadratic_spec(
        name,
        trials,
        objective_kwargs={"offset": offset},
        sampler={"name": "random", "seed": seed},
        mode="thorough",
        max_concurrent=2,
        **extra,
    )


def study(daemon: Daemon, name: str) -> optuna.Study:
    """The study as plain Optuna reads it from the daemon's storage."""
    url = daemon.env.get("HPOD_STORAGE_URL") or (
        f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal"
    )
    return optuna.load_study(study_name=name, storage=make_storage(url))


def transferred(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials marked as transferred from a past study."""
    return [t for t in trials if TRANSFERRED_ATTR in t.user_attrs]


def run(daemon: Daemon, body: dict[str, Any]) -> dict[str, Any]:
    """Create a study and wait until it ends; its final status."""
    status, reply = daemon.request("POST", "/studies", body)
    assert status == 201, reply
    return daemon.wait_study(body["name"])


def check_warm(daemon: Daemon, past: str, name: str, expected: int) -> dict[str, Any]:
    """Study `name` began with `expected` configurations from `past`: the best of `past`
    first (its first trials), each marked with where it came from, counted in the budget;
    its status says so. Returns the status's transfer section."""
    old = study(daemon, past)
    assert isinstance(old.user_attrs.get(MEMORY_ATTR), dict)
    new = study(daemon, name)
    moved = transferred(new.trials)
    assert len(moved) == expected, [t.user_attrs for t in moved]
    assert all(t.user_attrs[TRANSFERRED_ATTR]["from"] == past for t in moved)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in moved)
    best = sorted(old.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.value)
    first = next(t for t in moved if t.user_attrs[TRANSFERRED_ATTR]["rank"] == 0)
    assert first.number == 0 and first.params == best[0].params
    assert len(new.trials) == 24  # the budget: transferred trials count in it
    status = daemon.get(f"/studies/{name}")["transfer"]
    assert status["transferred"] == expected and status["dropped"] == 0
    assert [s["study"] for s in status["sources"]] == [past]
    assert status["sources"][0]["state"] == "active"
    return status


def test_a_study_on_shifted_data_starts_warm_and_transfer_off_starts_cold(
    start_daemon: DaemonFactory,
) -> None:
    """The same objective on shifted data (another offset): the new study's first trial is
    the best of the finished one, and more of its best follow once eight of the study's own
    results support it (a quarter of the budget in all), shown in its status, `hpod status`
    and a `study.transfer` event; with `transfer: off` the same study starts cold."""
    daemon = start_daemon()
    run(daemon, spec("past", 0.5))
    events = watch(daemon, "shifted")
    run(daemon, spec("shifted", 0.6, seed=1))
    events.join(timeout=30)
    shown = check_warm(daemon, "past", "shifted", expected=6)
    assert shown["setting"] == "auto" and shown["held"] == 0 and shown["limit"] == 6
    assert shown["sources"][0]["correlation"] > 0
    changes = [e["change"] for e in events.of("study.transfer")]
    assert changes == ["planned", "released"], events.events
    assert events.of("study.transfer")[0]["sources"][0]["study"] == "past"
    cli = subprocess.run(
        [sys.executable, "-m", "hpod", "status", "shifted", "--url", daemon.url],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "6 configurations transferred" in cli and "from past" in cli

    run(daemon, spec("cold", 0.6, seed=1, transfer="off"))
    cold = study(daemon, "cold")
    assert transferred(cold.trials) == [] and TRANSFER_ATTR not in cold.user_attrs
    assert daemon.get("/studies/cold")["transfer"]["reason"].startswith("transfer off")


def test_transfer_after_a_daemon_restart(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    """The memory lives in the storage: a study created after a restart, naming the past
    study, starts from it; a restart while it runs never plans or enqueues again."""
    data = tmp_path / "data"
    first = start_daemon(data_dir=data)
    run(first, spec("before", 0.5))
    first.stop()
    second = start_daemon(data_dir=data)
    after = spec("after", 0.4, seed=1, transfer=["before"])
    status, reply = second.request("POST", "/studies", after)
    assert status == 201, reply
    second.wait_complete("after", 2)
    second.stop()
    third = start_daemon(data_dir=data)
    third.wait_study("after")
    shown = check_warm(third, "before", "after", expected=6)
    assert shown["setting"] == ["before"]
    status, reply = third.request("POST", "/studies", spec("named", 0.4, seed=1, transfer=["nope"]))
    assert status == 400 and reply["error"]["field"] == "study.transfer", reply


def test_transfer_on_postgresql(start_daemon: DaemonFactory, postgres_url: str) -> None:
    """On PostgreSQL storage the memory is written and read like on the journal file."""
    daemon = start_daemon(storage_url=postgres_url)
    run(daemon, spec("pg-past", 0.5))
    run(daemon, spec("pg-shifted", 0.6, seed=2))
    check_warm(daemon, "pg-past", "pg-shifted", expected=6)


def test_a_disagreeing_past_study_stops_being_used(start_daemon: DaemonFactory) -> None:
    """A past study of the same objective and parameters whose optimum lies at the opposite
    corner: its best configurations are the new study's worst. Once eight of the study's own
    results are in, the rank correlation is negative: the source is marked as disagreeing,
    its held configurations are never enqueued, and no trial of it runs after the first."""
    daemon = start_daemon()
    run(daemon, spec("corner", 1.5, trials=40))
    run(daemon, spec("opposite", -1.5, trials=40, seed=4))
    new = study(daemon, "opposite")
    moved = transferred(new.trials)
    assert len(moved) == 1  # the first of 10 (a quarter of 40)
    assert all(t.number == 0 for t in moved)
    assert not [t for t in new.trials if DROPPED_ATTR in t.user_attrs]
    shown = daemon.get("/studies/opposite")["transfer"]
    source = shown["sources"][0]
    assert source["state"] == "disagrees" and source["correlation"] < 0, shown
    assert source["pairs"] >= 8 and shown["held"] == 0 and shown["transferred"] == 1
    assert len(new.trials) == 40
