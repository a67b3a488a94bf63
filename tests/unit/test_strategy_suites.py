"""The strategy benchmark's ground: disjoint suites, costs fitted from measured CPU, recorded
real runs, and a simulator that charges CPU seconds as the daemon's workers measure them."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pytest

from hpod.engine import COST_ATTR
from hpod.policies.ladder_payoff import measure
from hpod.policies.strategy import costs, recorded
from hpod.policies.strategy.actions import BUILTIN, THIRDS, Strategy
from hpod.policies.strategy.simulate import Simulation, as_auto
from hpod.policies.strategy.suites import (
    Task,
    held_out_suite,
    recorded_task,
    training_suite,
    validation_suite,
)

BY_NAME = {s.name: s for s in BUILTIN}
#: The generators whose tasks the held-out suite must not contain (issue 14).
TRAINING_GENERATOR_FAMILIES = {"mixed", "conditional", "data_ladder", "epochs"}


def test_the_three_suites_share_no_task_and_held_out_shares_no_family() -> None:
    training, validation, held_out = training_suite(), validation_suite(), held_out_suite()
    names = [{t.name for t in suite} for suite in (training, validation, held_out)]
    assert not names[0] & names[1] and not names[0] & names[2] and not names[1] & names[2]
    families = {t.family for t in held_out}
    assert not families & ({t.family for t in training} | {t.family for t in validation})
    assert not families & TRAINING_GENERATOR_FAMILIES
    assert any(t.recorded for t in held_out) and not any(t.recorded for t in training)


def test_a_cost_model_fit_recovers_overhead_exponent_and_spread() -> None:
    truth = costs.CostModel(unit=2.0, overhead=0.3, exponent=0.8, spread=0.5)
    rows = []
    for i in range(40):
        params = {"x": i}
        rows.append({"cpu": {f"{f:.4f}": truth.cost(params, f) for f in (1 / 9, 1 / 3, 1.0)}})
    fitted = costs.fit(rows, "test")
    assert fitted.overhead == pytest.approx(0.3, abs=0.02)
    assert fitted.exponent == pytest.approx(0.8, abs=0.06)
    assert 0.3 < fitted.spread < 0.7  # the sample's spread of 40 log-normal factors


def test_recorded_lookup_takes_the_nearest_grid_point_on_the_log_scale() -> None:
    rec = recorded.by_name("rf_data")
    point = recorded.nearest(
        rec, {"n_estimators": 40, "max_depth": 5, "min_samples_leaf": 3, "max_features": 0.5}
    )
    # 40 is nearer 25 than 60 on the log scale (1.6x vs 1.5x: 60); 5 nearer 4; 3 nearer 4.
    assert point == {"n_estimators": 60, "max_depth": 4, "min_samples_leaf": 4, "max_features": 0.6}
    value, cpu = recorded.lookup("rf_data", point, 1.0)
    low_value, low_cpu = recorded.lookup("rf_data", point, 1 / 9)
    assert math.isfinite(value) and math.isfinite(low_value) and low_cpu > 0 and cpu > 0


def test_the_simulator_charges_cpu_seconds_and_counts_the_budget_in_full_evaluations() -> None:
    task = recorded_task("hgb_data")
    sim = Simulation(task, seed=1, mode="balanced", budget=3.0, window=4)
    sim.use(BY_NAME["tpe-multivariate"])
    sim.run_window()
    trials = sim.trials()
    cpu = [t.user_attrs[COST_ATTR]["cpu"] for t in trials]
    expected = [recorded.lookup(task.name, t.params, 1.0)[1] for t in trials]
    assert cpu == pytest.approx(expected)
    assert sim.spent == pytest.approx(sum(cpu) / task.unit)
    assert sim.shape.evaluation_cpu is not None


def test_auto_choices_are_laid_over_the_mode_plan_as_the_daemon_does() -> None:
    assert as_auto(BY_NAME["tpe-multivariate"], "data").name == "tpe-halving-ladder"
    assert as_auto(BY_NAME["tpe-multivariate"], "epochs").name == "tpe-median"
    assert as_auto(BY_NAME["tpe-multivariate"], "none").name == "tpe-multivariate"
    cmaes = as_auto(BY_NAME["cmaes"], "data")
    assert (cmaes.sampler, cmaes.pruner, len(cmaes.ladder)) == ("cmaes", "successive_halving", 3)


class _RungCost(Task):
    """A data task whose fit on a fraction f of the data costs f ** exponent of a full one
    (a full one costs the task's unit)."""

    exponent: float = 0.0

    def cost(self, params: dict[str, Any], fidelity: float) -> float:
        return self.unit * float(fidelity) ** self.exponent


def _ladder_study(exponent: float) -> tuple[Simulation, list[bool | None]]:
    base = next(t for t in training_suite() if t.fidelity == "data")
    task = _RungCost(**{f.name: getattr(base, f.name) for f in fields(Task)})
    object.__setattr__(task, "exponent", exponent)
    verdicts: list[bool | None] = []

    def chooser(*args: Any) -> tuple[Strategy, str]:
        verdicts.append(args[-1])
        return BY_NAME["tpe-halving-ladder"], "forced"

    sim = Simulation(task, 3, "balanced", 30.0, 6)
    while not sim.done:
        told = len(sim.trials())
        strategy, _ = chooser(sim.shape, [], told, told, sim.ladder_pays)
        if sim.strategy is None:
            sim.use(strategy)
        sim.run_window()
    return sim, verdicts


def test_a_simulated_ladder_that_does_not_pay_is_turned_off_as_the_daemon_does() -> None:
    """Every rung costing a full fit: the subsampling policy's verdict (from its own
    measurement) turns the ladder off, later trials go straight to the full data, and the
    chooser is told the ladder does not pay."""
    sim, verdicts = _ladder_study(exponent=0.0)
    records = [t.user_attrs[COST_ATTR] for t in sim.trials()]
    starts = [r["rungs"][0][0] for r in records]
    first_full = starts.index(1.0)
    assert all(f < 1.0 for f in starts[:first_full]) and set(starts[first_full:]) == {1.0}
    assert measure(records[:first_full], THIRDS, 3).verdict == "off"
    assert measure(records[: first_full - 1], THIRDS, 3).verdict != "off"
    assert sim.ladder_pays is False and verdicts[-1] is False and verdicts[0] is None


def test_a_simulated_ladder_that_pays_stays_on() -> None:
    sim, verdicts = _ladder_study(exponent=2.0)
    starts = [t.user_attrs[COST_ATTR]["rungs"][0][0] for t in sim.trials()]
    assert all(f < 1.0 for f in starts)
    assert sim.ladder_pays is True and verdicts[-1] is True
