"""The objective's declared fidelity is known before the first trial (issue 13, item 1): a
balanced study on a data-fidelity objective prunes on the ladder from its first window, and
one whose budget leaves the ladder no room runs on the full data from its first, through a
real daemon and real Celery workers."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from conftest import Daemon, DaemonFactory, eventually

from hpod.engine import COST_ATTR, LADDER_ATTR, make_storage
from hpod.policies.strategy.rules import SMALL_BUDGET

PRUNED = optuna.trial.TrialState.PRUNED


def load(daemon: Daemon, name: str) -> optuna.Study:
    """The study, read with plain Optuna from the daemon's journal."""
    storage = make_storage(f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal")
    return optuna.load_study(study_name=name, storage=storage)


def boosting_spec(name: str, trials: int) -> dict[str, Any]:
    """Gradient boosting on a small data set, left to the strategy policy."""
    return {
        "name": name,
        "objective": "gradient_boosting",
        "objective_kwargs": {"n_samples": 1200},
        "space": {
            "learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
            "max_iter": {"type": "int", "low": 20, "high": 100},
            "max_leaf_nodes": {"type": "int", "low": 4, "high": 64, "log": True},
        },
        "budget": {"trials": trials},
        "mode": "balanced",
        "sampler": {"seed": 7},
    }


def test_a_balanced_study_on_a_data_objective_prunes_on_the_ladder_from_its_first_window(
    start_daemon: DaemonFactory,
) -> None:
    """strategy auto decides before any trial, yet knows the objective subsamples: with a
    budget that leaves the ladder room (more than `SMALL_BUDGET` trials) the first decision's
    plan carries a data ladder and a pruner (every later one too), and trials of that first
    window stop on a lower rung of the data. The study is stopped after its first window."""
    daemon = start_daemon()
    name = "ladder-boosting"
    assert daemon.request("POST", "/studies", boosting_spec(name, SMALL_BUDGET + 40))[0] == 201

    def second_decision() -> bool:
        study = load(daemon, name)
        return len(study.user_attrs.get("hpod:strategy") or []) >= 2

    eventually(second_decision, timeout=300, what="the first window's end")
    assert daemon.request("POST", f"/studies/{name}/stop")[0] == 200
    final = daemon.wait_study(name, timeout=300)

    study = load(daemon, name)
    decisions = study.user_attrs["hpod:strategy"]
    first = decisions[0]
    assert first["told"] == 0 and first["trigger"] == "start"
    assert first["fidelity"] == "data", first
    assert first["plan"]["pruner"] != "none", first
    assert first["plan"]["ladder"] == pytest.approx([1 / 9, 1 / 3, 1.0]), first
    # No decision drops pruning: a strategy without a pruner or ladder keeps the mode's; the
    # ladder goes only once the study measured it not to pay (`hpod:ladder`).
    off = study.user_attrs.get(LADDER_ATTR)
    for decision in decisions:
        assert decision["plan"]["pruner"] != "none"
        dropped = off is not None and decision["told"] >= off["told"]
        assert len(decision["plan"]["ladder"]) > 1 or dropped, (decision, off)

    end = decisions[1]["first_trial"]
    window = [t for t in study.get_trials(deepcopy=False) if t.number < end]
    pruned = [t for t in window if t.state == PRUNED]
    assert pruned, [(t.number, t.state, t.user_attrs.get(COST_ATTR)) for t in window]
    for t in pruned:
        assert t.user_attrs[COST_ATTR]["pruned_at"] < 1.0
    assert final["efficiency"]["pruned"] >= len(pruned)


def test_a_small_budget_balanced_study_on_a_data_objective_runs_on_the_full_data(
    start_daemon: DaemonFactory,
) -> None:
    """Sixteen trials leave a data ladder no room (`rules.ladder_has_room`): the first
    decision knows the objective subsamples and says why it plans the full data; every
    trial then runs on the full data, none is pruned on a rung."""
    daemon = start_daemon()
    name = "small-boosting"
    assert daemon.request("POST", "/studies", boosting_spec(name, 16))[0] == 201
    final = daemon.wait_study(name, timeout=300)
    assert final["n_trials"] == 16, final

    study = load(daemon, name)
    decisions = study.user_attrs["hpod:strategy"]
    first = decisions[0]
    assert first["fidelity"] == "data" and first["trigger"] == "start", first
    assert first["reason"].startswith("rule: no room for a data ladder in 16 trials"), first
    assert all(d["plan"]["ladder"] == [1.0] for d in decisions), decisions
    for t in study.get_trials(deepcopy=False):
        assert t.state != PRUNED, t
        assert [r[0] for r in t.user_attrs[COST_ATTR]["rungs"]] in ([], [1.0]), t.user_attrs


def sgd_study(
    daemon: Daemon, name: str, mode: str, *, passes: int, trials: int, seed: int
) -> tuple[optuna.Study, dict[str, Any]]:
    """Run a study of `sgd_classifier` (a step fidelity: its passes) in `mode` to its trial
    budget; the study and its first strategy decision, which saw the step fidelity."""
    spec = {
        "name": name,
        "objective": "sgd_classifier",
        "objective_kwargs": {"passes": passes, "n_samples": 1000, "n_informative": 6},
        "space": {"alpha": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True}},
        "budget": {"trials": trials},
        "mode": mode,
        "sampler": {"seed": seed},
    }
    assert daemon.request("POST", "/studies", spec)[0] == 201
    final = daemon.wait_study(name, timeout=300)
    assert final["n_trials"] == trials, final
    study = load(daemon, name)
    first: dict[str, Any] = study.user_attrs["hpod:strategy"][0]
    assert first["fidelity"] == "epochs", first
    return study, first


def test_a_balanced_study_on_a_step_objective_prunes_its_passes_with_the_step_pruner(
    start_daemon: DaemonFactory,
) -> None:
    """sgd_classifier declares a step fidelity (its passes): from the first decision on, the
    plan's pruner is balanced's step pruner (median), not the data ladder's successive
    halving, and the worker runs every trial on full data."""
    study, first = sgd_study(start_daemon(), "small-sgd", "balanced", passes=4, trials=6, seed=3)
    assert first["plan"]["pruner"] == "median", first
    for t in study.get_trials(deepcopy=False):
        assert t.user_attrs[COST_ATTR]["fidelity"] == "epochs"
        assert max(t.intermediate_values, default=0) <= 4  # passes, not the ladder's percents


def test_a_fast_study_on_a_step_objective_runs_its_percentile_pruner_through_real_workers(
    start_daemon: DaemonFactory,
) -> None:
    """fast's step pruner (33rd percentile, its own `threshold` option) reaches the workers:
    the task's plan passes the worker's schema (the first held-out run of this rule had
    every trial refused as invalid), every trial completes or is pruned on its passes, and
    none fails."""
    study, first = sgd_study(start_daemon(), "fast-sgd", "fast", passes=6, trials=12, seed=5)
    assert first["plan"]["pruner"] == "percentile", first
    states = {t.state for t in study.get_trials(deepcopy=False)}
    assert states <= {optuna.trial.TrialState.COMPLETE, PRUNED}, states
