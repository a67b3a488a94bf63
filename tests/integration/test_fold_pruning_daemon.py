"""Pruning across CV folds through a real daemon and real Celery workers: a trial of the CV
objective stops after fewer than its five folds, and the best trial is never pruned."""

from __future__ import annotations

import json

import optuna
from conftest import DaemonFactory

from hpod.engine import COST_ATTR, make_storage

#: Registered by setting: the workers then know it whether or not the package's entry points
#: were reinstalled.
OBJECTIVES = json.dumps({"svc_cv": "hpod.workers.objectives.cv:svc_cv"})


def test_a_fold_pruned_trial_stops_early_and_the_best_runs_every_fold(
    start_daemon: DaemonFactory,
) -> None:
    """balanced on `svc_cv` (5 folds, random search over a wide space, where many trials
    predict one class): the fold rule prunes some trials after 2 to 4 folds, their cost
    records how many folds ran and their stored reports agree; the best trial ran all five;
    the efficiency report counts them by folds and credits the compute they saved."""
    daemon = start_daemon(objectives=OBJECTIVES)
    name = "folds"
    spec = {
        "name": name,
        "objective": "svc_cv",
        "objective_kwargs": {"n_samples": 600, "n_features": 10, "n_informative": 4},
        "space": {
            "C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True},
            "gamma": {"type": "float", "low": 1e-4, "high": 10.0, "log": True},
        },
        "budget": {"trials": 24},
        "mode": "balanced",
        "sampler": {"name": "random", "seed": 3},
    }
    assert daemon.request("POST", "/studies", spec)[0] == 201
    final = daemon.wait_study(name, timeout=240)
    storage = make_storage(f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal")
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [(t.state, t.intermediate_values) for t in trials]
    for t in pruned:
        folds = t.user_attrs[COST_ATTR]["folds"]
        assert 2 <= folds < 5 and len(t.intermediate_values) == folds
    best = final["best"]
    best_trial = next(t for t in trials if t.number == best["number"])
    assert best_trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(best_trial.intermediate_values) == [0, 1, 2, 3, 4]
    assert best_trial.user_attrs[COST_ATTR]["folds"] == 5
    efficiency = final["efficiency"]
    assert efficiency["pruned"] == len(pruned)
    assert sum(n for where, n in efficiency["pruned_at"].items() if "fold" in where) == len(pruned)
    assert efficiency["compute_ratio"] > 1.0
    # Reporting is measured apart from the objective's CPU, on every trial that reported.
    assert all(t.user_attrs[COST_ATTR]["report_cpu"] > 0 for t in trials)
    assert efficiency["report_cpu_seconds"] > 0
