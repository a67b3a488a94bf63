"""Budgets in compute: what each trial spends, when a study may ask, and the edge checks."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpod.daemon.budget import (
    Spend,
    budget_left,
    budget_used,
    cpu_allowance,
    cpu_limit,
    trials_affordable,
)
from hpod.engine import COST_ATTR
from hpod.errors import RequestRejected
from hpod.schema import MAX_BUDGET_TRIALS, Budget, StudySpec, parse_request


def _cost(cpu: float, data: float, full_cpu: float | None = None, **extra: Any) -> dict[str, Any]:
    return {"cpu": cpu, "data": data, "full_cpu": full_cpu, **extra}


class TestSpend:
    def test_before_a_full_evaluation_trials_count_their_data_fraction(self) -> None:
        """A trial pruned after a ninth counts 1/9, a cache hit 0, a failure 1."""
        spend = Spend()
        spend.add(0, "pruned", _cost(0.2, 1 / 9), None, 600)
        spend.add(1, "complete", _cost(0.0, 0.0, cache="hit", cached_cpu=3.0), None, 600)
        spend.add(2, "failed", None, 0.5, 600)
        assert spend.full_evaluation_cpu is None
        assert spend.full_evaluations == pytest.approx(1 / 9 + 0 + 1)
        assert spend.cpu_seconds == pytest.approx(0.2 + 0.0 + 0.5)

    def test_full_evaluations_are_cpu_over_the_mean_complete_full_evaluation(self) -> None:
        """Complete full-fidelity trials of 2 s and 4 s make one full evaluation 3 s; a trial
        pruned after a ninth that cost 0.3 s then spends 0.1 of one."""
        spend = Spend()
        spend.add(0, "complete", _cost(2.0, 1.0, 2.0), None, 600)
        spend.add(1, "complete", _cost(4.0, 1.0, 4.0), None, 600)
        spend.add(2, "pruned", _cost(0.3, 1 / 9), None, 600)
        assert spend.full_evaluation_cpu == pytest.approx(3.0)
        assert spend.cpu_seconds == pytest.approx(6.3)
        assert spend.full_evaluations == pytest.approx(6.3 / 3.0)

    def test_a_ladder_trial_spends_every_rung_but_its_full_rung_sets_the_unit(self) -> None:
        """A complete trial on the ladder 1/9, 1/3, 1 cost 0.1 + 0.4 + 1.5 s: the unit is its
        full rung (1.5 s), so it spends 2/1.5 full evaluations."""
        spend = Spend()
        spend.add(0, "complete", _cost(2.0, 1 / 9 + 1 / 3 + 1, 1.5), None, 600)
        assert spend.full_evaluation_cpu == pytest.approx(1.5)
        assert spend.full_evaluations == pytest.approx(2.0 / 1.5)

    def test_pruned_cached_and_partially_cached_trials_do_not_set_the_unit(self) -> None:
        """Only complete trials that evaluated the full fidelity themselves measure it: an
        epoch trial pruned part-way (full_cpu set by the worker) and a cache hit do not."""
        spend = Spend()
        spend.add(0, "pruned", _cost(0.5, 1.0, 0.5), None, 600)
        spend.add(1, "complete", _cost(0.0, 0.0, None, cache="hit"), None, 600)
        spend.add(2, "complete", _cost(0.2, 0.44, None, cache="partial"), None, 600)
        assert spend.full_evaluation_cpu is None
        spend.add(3, "complete", _cost(2.0, 1.0, 2.0), None, 600)
        assert spend.full_evaluation_cpu == pytest.approx(2.0)
        assert spend.full_evaluations == pytest.approx(2.7 / 2.0)

    def test_a_failed_trial_spends_its_wall_time_at_most_its_time_limit(self) -> None:
        spend = Spend()
        spend.add(0, "failed", None, 7.0, 5.0)
        spend.add(1, "failed", None, None, 5.0)
        assert spend.cpu_seconds == pytest.approx(5.0)

    def test_an_external_trial_spends_nothing_and_a_trial_counts_once(self) -> None:
        spend = Spend()
        assert spend.add(0, "complete", None, 3.0, 600)
        assert not spend.add(0, "complete", _cost(9.0, 1.0, 9.0), None, 600)
        assert (spend.cpu_seconds, spend.full_evaluations) == (0.0, 0.0)

    def test_stored_trials_give_the_same_spend_as_told_ones(self) -> None:
        """What a restarted loop rebuilds from storage equals what it had counted live."""
        start = dt.datetime(2026, 1, 1)
        trials = [
            create_trial(
                state=state,
                value=1.0 if state == TrialState.COMPLETE else None,
                params={"x": 0.0},
                distributions={"x": FloatDistribution(-1, 1)},
                user_attrs={COST_ATTR: cost} if cost else {},
            )
            for state, cost in (
                (TrialState.COMPLETE, _cost(2.0, 1.0, 2.0)),
                (TrialState.PRUNED, _cost(0.5, 1 / 3)),
                (TrialState.FAIL, None),
            )
        ]
        for number, trial in enumerate(trials):
            trial.number = number
            trial.datetime_start = start
            trial.datetime_complete = start + dt.timedelta(seconds=1.5)
        spend = Spend.of_trials(trials, 600)
        live = Spend()
        live.add(0, "complete", _cost(2.0, 1.0, 2.0), 1.5, 600)
        live.add(1, "pruned", _cost(0.5, 1 / 3), 1.5, 600)
        live.add(2, "failed", None, 1.5, 600)
        assert spend.report() == live.report()
        assert spend.report() == {
            "cpu_seconds": 4.0,
            "full_evaluations": 2.0,
            "full_evaluation_cpu_seconds": 2.0,
        }


class TestBudgetLeft:
    def test_any_limit_spent_ends_the_study(self) -> None:
        spend = Spend()
        spend.add(0, "complete", _cost(2.0, 1.0, 2.0), None, 600)
        assert budget_left(Budget(trials=2, cpu_seconds=10), 1, 0.0, spend)
        assert not budget_left(Budget(trials=1, cpu_seconds=10), 1, 0.0, spend)
        assert not budget_left(Budget(trials=5, cpu_seconds=2.0), 1, 0.0, spend)
        assert not budget_left(Budget(full_evaluations=1), 1, 0.0, spend)
        assert not budget_left(Budget(full_evaluations=1.5), 1, 0.0, spend)  # half a trial left
        assert budget_left(Budget(full_evaluations=2), 1, 0.0, spend)
        assert not budget_left(Budget(seconds=5, full_evaluations=9), 1, 5.0, spend)

    def test_trials_in_flight_are_reserved_at_their_allowances(self) -> None:
        """Two trials told at 1 s each (one full evaluation = 1 s), budget 4 s: with 1 s
        allocated to a trial in flight one more fits (4 - 2 - 1 >= 1), with 1.5 s not."""
        spend = Spend()
        spend.add(0, "complete", _cost(1.0, 1.0, 1.0), None, 600)
        spend.add(1, "complete", _cost(1.0, 1.0, 1.0), None, 600)
        budget = Budget(cpu_seconds=4.0)
        assert budget_left(budget, 3, 0.0, spend, in_flight=1, allocated=1.0)
        assert not budget_left(budget, 4, 0.0, spend, in_flight=1, allocated=1.5)
        assert budget_left(budget, 4, 0.0, spend)
        assert not budget_left(Budget(full_evaluations=3), 4, 0.0, spend, 1, allocated=1.5)

    def test_before_a_full_evaluation_is_measured_in_flight_trials_reserve_the_mean(self) -> None:
        """Full evaluations before one is measured (the fallback rule): two trials pruned at a
        third, budget 1: one in flight leaves room (2/3 + 1/3 = 1 is not below 1: no)."""
        spend = Spend()
        spend.add(0, "pruned", _cost(0.1, 1 / 3), None, 600)
        spend.add(1, "pruned", _cost(0.1, 1 / 3), None, 600)
        assert budget_left(Budget(full_evaluations=1), 2, 0.0, spend)
        assert not budget_left(Budget(full_evaluations=1), 3, 0.0, spend, in_flight=1)

    def test_nothing_told_yet_reserves_nothing(self) -> None:
        assert budget_left(Budget(cpu_seconds=1.0), 4, 0.0, Spend(), in_flight=4)

    def test_a_pruning_study_asks_more_trials_than_its_full_evaluations(self) -> None:
        """Budget 3 full evaluations: complete trials of 1 s and trials pruned after a ninth
        (0.1 s) leave room for more trials than 3; the study stops once what is left cannot
        pay one more full evaluation."""
        spend = Spend()
        budget = Budget(full_evaluations=3)
        created = 0
        while budget_left(budget, created, 0.0, spend):
            pruned = created % 3 != 0
            cost = _cost(0.1, 1 / 9) if pruned else _cost(1.0, 1.0, 1.0)
            spend.add(created, "pruned" if pruned else "complete", cost, None, 600)
            created += 1
        assert created == 4  # 1 + .1 + .1 + 1 = 2.2: 0.8 left < one full evaluation (1.0)
        assert spend.full_evaluations == pytest.approx(2.2)


class TestAllowance:
    """`cpu_allowance`: what the next trial may spend; its decisions in plain numbers."""

    @staticmethod
    def _measured(*full: float) -> Spend:
        spend = Spend()
        for number, cpu in enumerate(full):
            spend.add(number, "complete", _cost(cpu, 1.0, cpu), None, 600)
        return spend

    def test_no_compute_limit_no_allowance(self) -> None:
        assert cpu_allowance(Budget(trials=5), self._measured(1.0)) is None
        assert cpu_allowance(Budget(full_evaluations=5), Spend()) is None

    def test_a_trial_is_dispatched_only_if_the_rest_covers_a_full_evaluation(self) -> None:
        """Full evaluations measured at 1 and 3 s (expected 2 s), 4 s spent, budget 10."""
        spend = self._measured(1.0, 3.0)
        assert cpu_allowance(Budget(cpu_seconds=10), spend) == pytest.approx(6.0)
        assert cpu_allowance(Budget(cpu_seconds=10), spend, allocated=4.0) == pytest.approx(2.0)
        assert cpu_allowance(Budget(cpu_seconds=10), spend, allocated=4.5) == 0.0
        assert cpu_allowance(Budget(cpu_seconds=3), spend) == 0.0

    def test_before_any_measurement_anything_left_is_shared(self) -> None:
        spend = Spend()
        spend.add(0, "pruned", _cost(0.5, 0.2), None, 600)
        assert cpu_allowance(Budget(cpu_seconds=2.5), spend, free_slots=4) == pytest.approx(0.5)
        assert cpu_allowance(Budget(cpu_seconds=0.5), spend) == 0.0

    def test_free_slots_share_the_rest_but_each_gets_two_full_evaluations(self) -> None:
        spend = self._measured(1.0)  # 1 s spent; budget 41: 40 left
        assert cpu_allowance(Budget(cpu_seconds=41), spend, free_slots=4) == pytest.approx(10)
        assert cpu_allowance(Budget(cpu_seconds=5), spend, free_slots=4) == pytest.approx(2.0)
        assert cpu_allowance(Budget(cpu_seconds=2.5), spend, free_slots=4) == pytest.approx(1.5)

    def test_a_budget_in_full_evaluations_is_a_cpu_limit_once_one_is_measured(self) -> None:
        spend = self._measured(2.0)  # 1 full evaluation = 2 s; 4 of them = 8 s, 2 s spent
        assert cpu_limit(Budget(full_evaluations=4), spend) == pytest.approx(8.0)
        assert cpu_limit(Budget(full_evaluations=4, cpu_seconds=5), spend) == pytest.approx(5.0)
        assert cpu_allowance(Budget(full_evaluations=4), spend) == pytest.approx(6.0)

    def test_allowances_never_add_up_to_more_than_the_budget(self) -> None:
        """Dispatching into every free slot in turn, each with what `cpu_allowance` gives,
        allocates at most the budget left, and stops once a full evaluation does not fit."""
        spend = self._measured(1.0, 2.0, 3.0)  # 6 s spent, expected 2 s
        budget = Budget(cpu_seconds=20)
        allocated, dispatched = 0.0, 0
        for free in (4, 3, 2, 1, 1, 1):
            allowance = cpu_allowance(budget, spend, allocated, free)
            assert allowance is not None
            if allowance <= 0:
                break
            assert allowance >= 2.0
            allocated += allowance
            dispatched += 1
        assert allocated <= 14.0 + 1e-9
        assert 14.0 - allocated < 2.0  # what is left cannot pay a full evaluation
        assert dispatched >= 4


def _spec(budget: dict[str, Any], objective: str | None = "quadratic") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "b",
        "space": {"x": {"type": "float", "low": -1, "high": 1}},
        "budget": budget,
    }
    if objective:
        spec["objective"] = objective
    return {"v": 1, "type": "study.create", "study": spec}


class TestEdge:
    @pytest.mark.parametrize(
        ("budget", "field"),
        [
            ({"cpu_seconds": 0}, "study.budget.cpu_seconds"),
            ({"cpu_seconds": -1.5}, "study.budget.cpu_seconds"),
            ({"cpu_seconds": True}, "study.budget.cpu_seconds"),
            ({"cpu_seconds": "10"}, "study.budget.cpu_seconds"),
            ({"cpu_seconds": 1e300}, "study.budget.cpu_seconds"),
            ({"full_evaluations": 0}, "study.budget.full_evaluations"),
            ({"full_evaluations": 2_000_000}, "study.budget.full_evaluations"),
            ({}, "study.budget"),
        ],
    )
    def test_bad_compute_budgets_are_refused_naming_the_field(
        self, budget: dict[str, Any], field: str
    ) -> None:
        with pytest.raises(RequestRejected) as refused:
            parse_request(_spec(budget))
        assert (refused.value.code, refused.value.field) == ("invalid", field)

    def test_non_finite_budgets_are_refused(self) -> None:
        raw = b'{"v":1,"type":"study.budget","name":"b","budget":{"full_evaluations":NaN}}'
        with pytest.raises(RequestRejected) as refused:
            parse_request(raw)
        assert refused.value.field == "budget.full_evaluations"

    def test_a_budget_in_compute_needs_an_objective(self) -> None:
        with pytest.raises(RequestRejected) as refused:
            parse_request(_spec({"cpu_seconds": 10}, objective=None))
        assert refused.value.field == "study.budget.cpu_seconds"

    def test_compute_limits_combine_with_the_others(self) -> None:
        body = parse_request(_spec({"trials": 50, "full_evaluations": 12.5})).body
        assert isinstance(body.study, StudySpec)  # type: ignore[union-attr]
        assert body.study.budget.full_evaluations == 12.5  # type: ignore[union-attr]
        assert body.study.budget.model_dump() == {  # type: ignore[union-attr]
            "trials": 50,
            "seconds": None,
            "cpu_seconds": None,
            "full_evaluations": 12.5,
        }


class TestPackLimit:
    def test_a_pack_fits_the_compute_left_at_the_mean_spend(self) -> None:
        """4 trials told for 2 full evaluations (0.5 each), budget 5, one in flight: room
        for (5 - 2) / 0.5 - 1 = 5 more trials."""
        spend = Spend()
        for n in range(4):
            spend.add(n, "complete", _cost(0.5, 1.0, 1.0 if n == 0 else 0.5), None, 600)
        # one full evaluation = mean(1.0, 0.5, 0.5, 0.5) = 0.625 CPU s; 2 s spent = 3.2 units
        assert spend.full_evaluations == pytest.approx(3.2)
        assert trials_affordable(Budget(cpu_seconds=5), spend, in_flight=1) == 5
        assert trials_affordable(Budget(full_evaluations=4), spend, in_flight=0) == 1
        assert trials_affordable(Budget(trials=9), spend) is None
        assert trials_affordable(Budget(cpu_seconds=5), Spend()) is None


def test_budget_used_is_the_tightest_limit_compute_included() -> None:
    """The strategy policy's `budget_used` feature: 3 of 10 trials, 4 of 8 CPU seconds."""
    spend = Spend()
    spend.add(0, "complete", _cost(4.0, 1.0, 4.0), None, 600)
    assert budget_used(Budget(trials=10, cpu_seconds=8), 3, 0.0, spend) == pytest.approx(0.5)
    assert budget_used(Budget(trials=10, full_evaluations=2), 3, 0.0, spend) == 0.5
    assert budget_used(Budget(trials=10), 3, 0.0, spend) == pytest.approx(0.3)
    assert budget_used(Budget(cpu_seconds=1), 3, 0.0, spend) == 1.0


def test_a_budget_in_compute_alone_still_ends_at_the_largest_trial_count() -> None:
    """Trials that are all cache hits spend nothing: the largest trial budget bounds them."""
    spend = Spend()
    for n in range(3):
        spend.add(n, "complete", _cost(0.0, 0.0, cache="hit"), None, 600)
    budget = Budget(cpu_seconds=10)
    assert budget_left(budget, MAX_BUDGET_TRIALS - 1, 0.0, spend)
    assert not budget_left(budget, MAX_BUDGET_TRIALS, 0.0, spend)
