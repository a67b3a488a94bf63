"""A budget in compute is a limit through a real daemon and real Celery workers: trials that
would each cost several times a study's CPU budget are stopped at their allowance, whether
the objective reports (pruned at its next report) or not (interrupted), and the study ends
near its budget, every trial told once, its CPU counted."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import DaemonFactory

from hpod.engine import COST_ATTR, make_storage

OBJECTIVES = json.dumps(
    {
        "burn_reporting": "budget_objectives:burn_reporting",
        "burn_silent": "budget_objectives:burn_silent",
        "burn_in_c": "budget_objectives:burn_in_c",
    }
)
#: As in budget_objectives.py: CPU seconds of one step (a report interval), steps in all.
STEP_CPU = 0.05
STEPS = 40
#: The CPU budget: 0.6 s, where one full evaluation costs STEPS x STEP_CPU = 2 s.
BUDGET = 0.6
#: Trials in flight at once (one `hpod worker` with two pool processes).
SLOTS = 2


@pytest.mark.parametrize("objective", ["burn_reporting", "burn_silent"])
def test_a_study_stops_near_its_cpu_budget(
    start_daemon: DaemonFactory,
    start_worker: Callable[..., object],
    rabbitmq: str,
    monkeypatch: pytest.MonkeyPatch,
    objective: str,
) -> None:
    """Each trial gets a share of the 0.6 s and stops there, pruned, with `stopped:
    "budget"` in its cost. The study spends at most its budget plus one report interval
    (one step's CPU, with as much again for the timer's granularity) per trial in flight;
    without the allowance its first two trials alone would spend 4 s."""
    here = str(Path(__file__).parent)  # the workers import budget_objectives from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    daemon = start_daemon("--no-workers", broker_url=rabbitmq, objectives=OBJECTIVES)
    start_worker(daemon.env, concurrency=SLOTS)
    name = f"budget-stop-{objective}"
    spec = {
        "name": name,
        "objective": objective,
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "budget": {"cpu_seconds": BUDGET, "trials": 50},
        "max_concurrent": SLOTS,
        "mode": "thorough",
        "pruner": {"name": "none"},
        "sampler": {"name": "random", "seed": 1},
    }
    status, reply = daemon.request("POST", "/studies", spec)
    assert status == 201, reply
    final = daemon.wait_study(name, timeout=120)
    assert final["state"] == "completed"
    storage = make_storage(f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal")
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    assert trials and all(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    costs = [t.user_attrs[COST_ATTR] for t in trials]
    assert all(c.get("stopped") == "budget" for c in costs), costs
    assert all(c["cpu"] < STEP_CPU * STEPS / 2 for c in costs), costs
    if objective == "burn_reporting":
        assert all(0 < len(t.intermediate_values) < STEPS for t in trials)
    spent = sum(c["cpu"] for c in costs)
    assert abs(final["spent"]["cpu_seconds"] - spent) < 1e-3  # each trial counted once
    assert final["spent"]["trials"] == len(trials)
    assert spent <= BUDGET + SLOTS * 2 * STEP_CPU, costs


def test_a_trial_stuck_in_one_call_into_c_is_ended_with_its_process(
    start_daemon: DaemonFactory,
    start_worker: Callable[..., object],
    rabbitmq: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An objective that spends 4 CPU seconds in one call into C cannot be interrupted: past
    its allowance and the grace (1 CPU second here) its worker process publishes it pruned
    and ends. The task Celery sends again does not run it a second time (the study
    completes, each trial told once with the CPU measured), and the worker goes on."""
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    daemon = start_daemon("--no-workers", broker_url=rabbitmq, objectives=OBJECTIVES)
    start_worker(daemon.env, concurrency=SLOTS)
    name = "budget-stop-in-c"
    spec = {
        "name": name,
        "objective": "burn_in_c",
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "budget": {"cpu_seconds": BUDGET, "trials": 50},
        "max_concurrent": SLOTS,
        "mode": "thorough",
        "pruner": {"name": "none"},
        "sampler": {"name": "random", "seed": 1},
    }
    assert daemon.request("POST", "/studies", spec)[0] == 201
    final = daemon.wait_study(name, timeout=120)
    assert final["state"] == "completed"
    storage = make_storage(f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal")
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    assert trials and all(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    costs = [t.user_attrs[COST_ATTR] for t in trials]
    assert all(c.get("stopped") == "budget" and 0 < c["cpu"] < 3.0 for c in costs), costs
    spent = sum(c["cpu"] for c in costs)
    assert abs(final["spent"]["cpu_seconds"] - spent) < 1e-3
    grace = 1.0
    assert spent <= BUDGET + SLOTS * (grace + 0.5), costs
    # The worker still evaluates: a study of cheap trials completes.
    cheap = {**spec, "name": "after-overrun", "objective": "burn_reporting"}
    cheap["budget"] = {"trials": 2}
    assert daemon.request("POST", "/studies", cheap)[0] == 201
    assert daemon.wait_study("after-overrun", timeout=120)["counts"].get("complete") == 2
