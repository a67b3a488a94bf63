"""The efficiency report credits pruning after epochs and folds, not only on data rungs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpod.daemon.store import StudyStore
from hpod.engine import COST_ATTR
from hpod.schema import StudySpec
from hpod.workers import tasks
from hpod.workers.messages import Cost

SPEC = StudySpec.model_validate(
    {
        "name": "eff",
        "objective": "svc_cv",
        "space": {"C": {"type": "float", "low": 0.01, "high": 100, "log": True}},
        "budget": {"trials": 10},
    }
)
THIRDS = (0.111111, 0.333333, 1.0)


def cost(cpu: float, rungs: list[list[Any]], **extra: Any) -> dict[str, Any]:
    """A cost record as the daemon stores it (only the fields the report reads)."""
    full = next((r[3] for r in rungs if r[0] == 1.0), None)
    return {"cpu": cpu, "full_cpu": full, "data": 1.0, "rungs": rungs, **extra}


def add(
    study: optuna.Study, state: TrialState, record: dict[str, Any], steps: dict[int, float]
) -> None:
    """A finished trial with its cost record and intermediate values."""
    value = 0.1 if state == TrialState.COMPLETE else None
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            value=value,
            params={"C": 1.0},
            distributions={"C": optuna.distributions.FloatDistribution(0.01, 100, log=True)},
            user_attrs={COST_ATTR: record},
            intermediate_values=steps,
        )
    )


def test_pruned_epochs_and_folds_are_priced_as_full_evaluations(tmp_path: Path) -> None:
    """Exact input: two complete trials of 5 steps (10 and 6 CPU s), one pruned after 2
    epochs (2 s: priced 2 / 2 x 5 = 5), one after 1 fold (1.5 s: 7.5), one complete on the
    data ladder (11 s, full rung 8 s, first rung 1 s) and one pruned on its first rung (1 s:
    priced 1 / (1/8) = 8). Estimate 10 + 6 + 5 + 7.5 + 11 -> 8 + 8 = 44.5 for 31.5 spent."""
    store = StudyStore(f"journal://{tmp_path / 'j.log'}")
    store.create(SPEC)
    study = store.open(SPEC)
    five = {step: 0.1 for step in range(5)}
    add(study, TrialState.COMPLETE, cost(10.0, [[1.0, 0.1, False, 10.0]], report_cpu=0.5), five)
    add(study, TrialState.COMPLETE, cost(6.0, [[1.0, 0.1, False, 6.0]], report_cpu=0.5), five)
    add(study, TrialState.PRUNED, cost(2.0, [[1.0, 0.3, False, 2.0]]), {1: 0.3, 2: 0.3})
    add(study, TrialState.PRUNED, cost(1.5, [[1.0, 0.4, False, 1.5]], folds=1), {3: 0.4})
    ladder = [[THIRDS[0], 0.2, False, 1.0], [THIRDS[1], 0.15, False, 2.0], [1.0, 0.1, False, 8.0]]
    add(study, TrialState.COMPLETE, cost(11.0, ladder), {11: 0.2, 33: 0.15, 100: 0.1})
    pruned_rung = cost(1.0, [[THIRDS[0], 0.5, False, 1.0]], pruned_at=THIRDS[0])
    add(study, TrialState.PRUNED, pruned_rung, {11: 0.5})
    report = store.efficiency(SPEC)
    assert report["cpu_seconds"] == pytest.approx(31.5)
    assert report["full_evaluation_cpu_seconds"] == pytest.approx(44.5)
    assert report["saved_cpu_seconds"] == pytest.approx(13.0)
    assert report["compute_ratio"] == pytest.approx(round(44.5 / 31.5, 3))
    assert report["pruned"] == 3
    assert report["pruned_at"] == {"step 2": 1, "1 fold(s)": 1, "11% of the data": 1}
    assert report["report_cpu_seconds"] == pytest.approx(1.0)
    store.close()


def test_without_complete_trials_a_step_pruned_trial_costs_what_it_spent(tmp_path: Path) -> None:
    """Nothing measured a full evaluation yet: no estimate (a pruned trial's partial CPU on
    the full data is not one, which made the ratio read 1.0)."""
    store = StudyStore(f"journal://{tmp_path / 'j.log'}")
    store.create(SPEC)
    study = store.open(SPEC)
    add(study, TrialState.PRUNED, cost(2.0, [[1.0, 0.3, False, 2.0]]), {1: 0.3, 2: 0.3})
    report = store.efficiency(SPEC)
    assert report["cpu_seconds"] == pytest.approx(2.0)
    assert report["full_evaluation_cpu_seconds"] is None and report["compute_ratio"] is None
    store.close()


def test_a_worker_process_first_evaluation_is_left_out_of_both_sides(tmp_path: Path) -> None:
    """Exact input: two worker processes' first trials on the ladder (warm-up ~1.3 s in their
    first rung): one complete (1.3 + 0.1 + 0.3 + 1.0 = 2.7 s spent, full fit 1.0) and one
    pruned on its first rung (1.4 s); then two complete ladder trials (0.1 + 0.3 + 1.0) and
    two pruned on their first rung (0.1 s). Priced with the warm-ups, plain read
    1.0 + 1.4 / 0.1 + 2 x 1.0 + 2 x 1.0 = 19.0 for 7.1 spent; left out of both sides (and of
    the rung ratios), plain is 2 x 1.0 + 2 x (0.1 / 0.1) = 4.0 for 2 x 1.4 + 2 x 0.1 = 3.0."""
    store = StudyStore(f"journal://{tmp_path / 'j.log'}")
    store.create(SPEC)
    study = store.open(SPEC)

    def ladder(first: float) -> list[list[Any]]:
        return [
            [THIRDS[0], 0.2, False, first],
            [THIRDS[1], 0.15, False, 0.3],
            [1.0, 0.1, False, 1.0],
        ]

    def pruned(first: float, **extra: Any) -> dict[str, Any]:
        return cost(first, [[THIRDS[0], 0.5, False, first]], pruned_at=THIRDS[0], **extra)

    steps = {11: 0.2, 33: 0.15, 100: 0.1}
    add(study, TrialState.COMPLETE, cost(2.7, ladder(1.4), warm_up=True), steps)
    add(study, TrialState.PRUNED, pruned(1.4, warm_up=True), {11: 0.5})
    for _ in range(2):
        add(study, TrialState.COMPLETE, cost(1.4, ladder(0.1)), steps)
        add(study, TrialState.PRUNED, pruned(0.1), {11: 0.5})
    report = store.efficiency(SPEC)
    assert report["trials"] == 6 and report["pruned"] == 3
    assert report["warm_up"] == {"trials": 2, "cpu_seconds": pytest.approx(4.1)}
    assert report["cpu_seconds"] == pytest.approx(3.0)
    assert report["full_evaluation_cpu_seconds"] == pytest.approx(4.0)
    assert report["compute_ratio"] == pytest.approx(round(4.0 / 3.0, 3))
    store.close()


def test_a_worker_marks_its_first_evaluation_of_each_objective_and_kwargs() -> None:
    """The flag the report reads: first per (objective, kwargs) in this process, then not."""
    tasks._WARM.clear()
    assert tasks._first_here("svc_cv", {"n": 1})
    assert not tasks._first_here("svc_cv", {"n": 1})
    assert tasks._first_here("svc_cv", {"n": 2}) and tasks._first_here("other", {"n": 1})
    assert Cost(warm_up=True).model_dump(mode="json")["warm_up"] is True
    tasks._WARM.clear()
