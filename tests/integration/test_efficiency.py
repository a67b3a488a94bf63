"""The efficiency policies through a real daemon and real Celery workers: a live mode switch,
SIGHUP reload of the modes file, the cache across studies and restarts, packed tasks."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import optuna
from conftest import Daemon, DaemonFactory, eventually, quadratic_spec, watch

from hpod.engine import COST_ATTR, make_storage


def trials(daemon: Daemon, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read with plain Optuna from the daemon's journal."""
    storage = make_storage(f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal")
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def svc_spec(name: str, trials: int, mode: str) -> dict[str, Any]:
    """A study of a data-fidelity objective big enough for a data ladder to pay."""
    return {
        "name": name,
        "objective": "svc_synthetic",
        "objective_kwargs": {"n_samples": 4000},
        "space": {
            "C": {"type": "float", "low": 0.01, "high": 1000, "log": True},
            "gamma": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        },
        "budget": {"trials": trials},
        "mode": mode,
        # These tests check the mode's own ladder and pruner, not the strategy policy's.
        "strategy": "mode",
        "sampler": {"seed": 5},
    }


def wait_told(daemon: Daemon, name: str, n: int, timeout: float = 120) -> None:
    """Wait until at least `n` trials of the study are finished."""
    eventually(
        lambda: sum(t.state.is_finished() for t in trials(daemon, name)) >= n,
        timeout,
        what=lambda: daemon.log()[-3000:],
    )


def test_a_live_mode_switch_changes_fidelity_and_pruning_of_the_next_trials(
    start_daemon: DaemonFactory,
) -> None:
    """fast: a data ladder, trials pruned on a ninth of the data; switched to thorough over
    HTTP, every trial dispatched afterwards runs on full data and none is pruned; the study
    ends at exactly its budget, each trial told once; a mode.changed event is published."""
    daemon = start_daemon()
    name = "switch"
    events = watch(daemon, until="mode.changed")
    assert daemon.request("POST", "/studies", svc_spec(name, 36, "fast"))[0] == 201
    wait_told(daemon, name, 10)
    status, reply = daemon.request("POST", "/mode", {"study": name, "mode": "thorough"})
    assert status == 200 and reply["result"]["mode"] == "thorough", reply
    final = daemon.wait_study(name, timeout=300)
    assert final["n_trials"] == 36 and final["mode"] == "thorough"
    done = sorted(trials(daemon, name), key=lambda t: t.number)
    modes = [t.user_attrs[COST_ATTR]["mode"] for t in done]
    first_thorough = modes.index("thorough")
    # Trials asked before the switch ran fast, every one asked after it thorough.
    assert set(modes[:first_thorough]) == {"fast"} and set(modes[first_thorough:]) == {"thorough"}
    fast, thorough = done[:first_thorough], done[first_thorough:]
    assert len(thorough) >= 10
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in fast)
    assert all(min(t.intermediate_values, default=100) == 11 for t in fast)
    fast_rungs = [r[0] for t in fast for r in t.user_attrs[COST_ATTR]["rungs"]]
    assert min(fast_rungs) < 0.2
    for t in thorough:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert [r[0] for r in t.user_attrs[COST_ATTR]["rungs"]] == [1.0]
        assert t.intermediate_values == {}
    efficiency = final["efficiency"]
    assert efficiency["pruned"] >= 1 and efficiency["trials"] == 36
    assert "11% of the data" in efficiency["pruned_at"]
    changed = events.first("mode.changed", timeout=30)
    assert {"event": "mode.changed", "study": name, "mode": "thorough"}.items() <= changed.items()


def test_sighup_reloads_the_modes_file_and_refuses_a_bad_one(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """An operator's mode changes on SIGHUP and the next trials follow it; a bad file is
    refused with the mode and key named, and the modes in force stay."""
    modes = tmp_path / "modes.toml"
    modes.write_text("[custom]\nladder = [0.5, 1.0]\npruner = 'none'\nbatch_seconds = 0\n")
    daemon = start_daemon(modes_file=str(modes))
    assert daemon.get("/modes")["modes"]["custom"]["ladder"] == [0.5, 1.0]
    spec = svc_spec("reloaded", 40, "custom")
    spec["objective_kwargs"] = {"n_samples": 1200}
    spec["max_concurrent"] = 1
    assert daemon.request("POST", "/studies", spec)[0] == 201
    wait_told(daemon, "reloaded", 3)
    modes.write_text("[custom]\nladder = [0.25, 1.0]\npruner = 'none'\nbatch_seconds = 0\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_log(daemon, "daemon.reloaded")
    assert daemon.get("/modes")["modes"]["custom"]["ladder"] == [0.25, 1.0]
    modes.write_text("[custom]\nladder = [0.25, 0.5]\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_log(daemon, "daemon.reload_refused")
    refused = next(e for e in log_events(daemon) if e["event"] == "daemon.reload_refused")
    assert "[custom].ladder" in refused["error"] and str(modes) in refused["error"]
    assert daemon.get("/modes")["modes"]["custom"]["ladder"] == [0.25, 1.0]
    final = daemon.wait_study("reloaded", timeout=300)
    assert final["n_trials"] == 40
    ladders = [
        tuple(r[0] for r in t.user_attrs[COST_ATTR]["rungs"])
        for t in sorted(trials(daemon, "reloaded"), key=lambda t: t.number)
    ]
    # Old ladder, then the reloaded one; then, once the subsampling policy has measured that
    # a ladder without pruning costs more than full data, full data only.
    first_new = ladders.index((0.25, 1.0))
    assert set(ladders[:first_new]) == {(0.5, 1.0)}
    after = ladders[first_new:]
    full_only = after.index((1.0,)) if (1.0,) in after else len(after)
    assert set(after[:full_only]) == {(0.25, 1.0)} and set(after[full_only:]) <= {(1.0,)}
    assert daemon.get("/health")["status"] == "ok"


def test_a_repeated_study_is_served_from_the_cache_also_after_a_restart(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """The same configurations again (same seed, random sampler), in another study after a
    daemon restart: every trial is a cache hit, told at once, and no task reaches a worker."""
    data = tmp_path / "data"
    first = start_daemon(data_dir=data)
    spec = quadratic_spec("cached-1", trials=12, sampler={"name": "random", "seed": 7})
    spec["mode"] = "thorough"
    # The very same configurations, in the same order: no warm start from cached-1 first.
    spec["transfer"] = "off"
    assert first.request("POST", "/studies", spec)[0] == 201
    first.wait_study("cached-1")
    first.stop()
    second = start_daemon(data_dir=data)
    tasks_before = second.log().count("Task hpod.evaluate")
    spec["name"] = "cached-2"
    assert second.request("POST", "/studies", spec)[0] == 201
    status = second.wait_study("cached-2")
    assert status["n_trials"] == 12 and status["counts"] == {"complete": 12}
    assert status["efficiency"]["cache_hits"] == 12
    assert status["efficiency"]["cpu_seconds"] == 0
    assert second.log().count("Task hpod.evaluate") == tasks_before
    one = {t.params["x"]: t.value for t in trials(second, "cached-1")}
    two = {t.params["x"]: t.value for t in trials(second, "cached-2")}
    assert one == two
    stats = second.get("/cache")
    assert stats["entries"] >= 12 and stats["hits"] >= 12


def test_cheap_trials_are_packed_into_few_tasks_and_each_told_once(
    start_daemon: DaemonFactory,
) -> None:
    """Batching: once durations are measured, tasks carry many trials; the budget is exact
    and every trial is told exactly once."""
    daemon = start_daemon()
    spec = quadratic_spec("packed", trials=300, sampler={"name": "random", "seed": 1})
    spec["mode"] = "fast"
    assert daemon.request("POST", "/studies", spec)[0] == 201
    status = daemon.wait_study("packed")
    assert status["n_trials"] == 300 and status["counts"] == {"complete": 300}
    assert daemon.log().count("Task hpod.evaluate_batch") >= 1
    tasks = daemon.log().count("] succeeded in")
    assert tasks < 100, f"{tasks} tasks for 300 trials"


def wait_log(daemon: Daemon, event: str, timeout: float = 30) -> None:
    """Wait until the daemon has logged `event`."""
    eventually(lambda: event in daemon.log(), timeout, what=lambda: daemon.log()[-2000:])


def log_events(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's log lines that are JSON objects."""
    return [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
