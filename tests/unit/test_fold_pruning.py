"""Pruning across cross-validation folds: the fold rule's decisions, the trial context's fold
API, the shipped CV objective and how the plans switch the rule on."""

from __future__ import annotations

import math
import time
from typing import Any

import optuna
import pytest

from hpod.modes import load_modes
from hpod.policies import HookContext
from hpod.policies.compose import compose, resolve_plan
from hpod.policies.pruning import PruningPolicy
from hpod.policies.strategy.actions import BUILTIN
from hpod.pruners import FoldPruner, fold_rule
from hpod.schema import StudySpec
from hpod.workers.context import NoPruning, TrialContext, TrialPruned
from hpod.workers.evaluation import evaluate, fidelity_of
from hpod.workers.messages import TaskPlan, validate
from hpod.workers.objectives.cv import svc_cv
from hpod.workers.registry import InvalidObjectiveKwargs, checked_kwargs

BEST = {0: 0.10, 1: 0.12, 2: 0.08, 3: 0.11, 4: 0.09}
#: A finished trial 0.03 worse than the best on average, its per-fold differences from the
#: best spread by exactly 0.01 (residuals -0.01, 0.01, -0.01, 0.01, 0).
OTHER = {f: BEST[f] + d for f, d in zip(BEST, (0.02, 0.04, 0.02, 0.04, 0.03), strict=True)}
#: k = 2 after 2 of 5 folds: 2 * 0.01 * sqrt(3 / (5 * 2)) = 0.010954...
MARGIN = 2 * 0.01 * math.sqrt(3 / 10)


def decide(seen: dict[int, float], others: int = 3, **kwargs: Any) -> bool:
    """The rule at k = 2, two folds at least, three other finished trials at least."""
    options: dict[str, Any] = {"k": 2.0, "min_folds": 2, "min_trials": 3, "minimize": True}
    return fold_rule(seen, BEST, [OTHER] * others, **{**options, **kwargs})


class TestFoldRule:
    """`fold_rule` on exact numbers."""

    def test_a_trial_worse_than_the_margin_is_pruned_and_one_within_it_is_not(self) -> None:
        """Mean paired difference 0.015 > 0.01095 prunes; 0.0075 does not."""
        assert pytest.approx(0.0109545, abs=1e-6) == MARGIN
        assert decide({0: 0.115, 1: 0.135}) is True
        assert decide({0: 0.105, 1: 0.13}) is False

    def test_the_margin_narrows_as_folds_come_in(self) -> None:
        """The same 0.0075 mean difference prunes after four folds (margin 0.0035)."""
        seen = {f: BEST[f] + 0.0075 for f in (0, 1, 2, 3)}
        assert decide(seen) is True

    def test_never_before_min_folds_nor_after_the_last_fold(self) -> None:
        """One terrible fold is not enough; a trial whose folds are all in is never pruned
        (its evaluation is paid for)."""
        assert decide({0: 0.5}) is False
        assert decide({f: 0.5 for f in BEST}) is False

    def test_not_before_enough_finished_trials_measured_the_spread(self) -> None:
        """Two other trials when three are needed: no decision."""
        assert decide({0: 0.5, 1: 0.5}, others=2) is False

    def test_maximizing_flips_the_sign(self) -> None:
        """Higher is better: a lower trial is the worse one."""
        assert decide({0: 0.085, 1: 0.105}, minimize=False) is True
        assert decide({0: 0.115, 1: 0.135}, minimize=False) is False

    def test_a_zero_spread_prunes_any_trial_worse_on_the_folds_seen(self) -> None:
        """Finished trials that differ from the best by a constant: no noise, no margin."""
        constant = {f: v + 0.05 for f, v in BEST.items()}
        assert (
            fold_rule(
                {0: 0.1001, 1: 0.1201},
                BEST,
                [constant] * 3,
                k=3.0,
                min_folds=2,
                min_trials=3,
                minimize=True,
            )
            is True
        )


def study_with(finished: list[dict[int, float]], direction: str = "minimize") -> optuna.Study:
    """An in-memory study holding complete trials with these per-fold values."""
    study = optuna.create_study(direction=direction)
    for values in finished:
        study.add_trial(
            optuna.trial.create_trial(
                value=sum(values.values()) / len(values), intermediate_values=values
            )
        )
    return study


def running(study: optuna.Study, values: dict[int, float]) -> optuna.trial.FrozenTrial:
    """A running trial of `study` that has reported `values`."""
    trial = study.ask()
    for step, value in values.items():
        trial.report(value, step)
    return study._storage.get_trial(trial._trial_id)


class TestFoldPruner:
    """`FoldPruner` reads the best trial and the spread from the study."""

    def test_it_finds_the_best_and_the_spread_in_the_study(self) -> None:
        """The same decisions as the plain rule, from a study's trials."""
        study = study_with([BEST, OTHER, OTHER, OTHER])
        pruner = FoldPruner(2.0, min_folds=2, min_trials=4)
        assert pruner.prune(study, running(study, {0: 0.115, 1: 0.135})) is True
        assert pruner.prune(study, running(study, {0: 0.105, 1: 0.13})) is False

    def test_no_finished_trial_means_no_pruning(self) -> None:
        """The study's first trial always runs to the end."""
        study = study_with([])
        assert FoldPruner(1.0).prune(study, running(study, {0: 0.9, 1: 0.9})) is False

    def test_with_many_folds_wilcoxon_decides(self) -> None:
        """Twelve folds: Optuna's Wilcoxon test prunes a trial worse on all six folds seen
        (one-sided p = 1/64), which the fold rule would not judge without others."""
        best = {f: 0.1 + 0.01 * (f % 3) for f in range(12)}
        study = study_with([best])
        pruner = FoldPruner(2.0, min_trials=4)
        worse = {f: best[f] + 0.01 * (1 + f % 2) for f in range(6)}
        assert pruner.prune(study, running(study, worse)) is True
        mixed = {f: best[f] + (0.01 if f % 2 else -0.01) for f in range(6)}
        assert pruner.prune(study, running(study, mixed)) is False
        # Optuna's Wilcoxon would prune on the last fold too, throwing a paid value away.
        done = {f: best[f] + 0.01 for f in range(12)}
        assert pruner.prune(study, running(study, done)) is False


class Condemning:
    """A reporter that keeps reports and says prune after `after` reports."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.reports: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return len(self.reports) >= self.after


class TestContextFolds:
    """`TrialContext.folds`, `report_fold` and `fold_mean`."""

    def test_fold_order_is_a_permutation_reproducible_per_trial_and_shuffled_between(
        self,
    ) -> None:
        """The same parameters visit folds in the same order; other parameters (most of
        them) in another."""
        order = list(TrialContext({"C": 1.0}).folds(5))
        assert sorted(order) == [0, 1, 2, 3, 4]
        assert list(TrialContext({"C": 1.0}).folds(5)) == order
        orders = {tuple(TrialContext({"C": float(c)}).folds(5)) for c in range(20)}
        assert len(orders) > 5

    def test_report_fold_reports_at_the_fold_and_raises_when_pruned(self) -> None:
        """Each fold is reported at its index; the pruners' verdict after the second fold
        raises TrialPruned naming the folds done."""
        reporter = Condemning(after=2)
        ctx = TrialContext({}, reporter=reporter)
        ctx.report_fold(3, 0.2)
        with pytest.raises(TrialPruned, match="2 fold"):
            ctx.report_fold(1, 0.4)
        assert reporter.reports == [(3, 0.2), (1, 0.4)]
        assert ctx.fold_mean() == pytest.approx(0.3)

    def test_fold_mean_needs_a_fold_and_folds_needs_one(self) -> None:
        """Misuse is named."""
        with pytest.raises(ValueError, match="no fold"):
            TrialContext({}).fold_mean()
        with pytest.raises(ValueError, match="at least one"):
            list(TrialContext({}).folds(0))


class Burning:
    """A reporter whose every call burns `seconds` of CPU (a slow storage round trip)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def _burn(self) -> None:
        end = time.process_time() + self.seconds
        while time.process_time() < end:
            pass

    def report(self, value: float, step: int) -> None:
        self._burn()

    def should_prune(self) -> bool:
        self._burn()
        return False


def test_the_reporters_cpu_is_counted_apart_from_the_evaluations() -> None:
    """An objective that only reports: the 5 x 2 x 0.02 s its reporter burns are the
    evaluation's `report_cpu`, not its `cpu_seconds` (nor its full-data rung's)."""

    def reporting(ctx: TrialContext) -> float:
        for fold in ctx.folds(5):
            ctx.report_fold(fold, 0.5)
        return ctx.fold_mean()

    result = evaluate(reporting, {}, {}, [1.0], Burning(0.02))
    assert result.values == [0.5]
    assert result.report_cpu >= 0.2
    assert result.cpu_seconds < 0.1
    assert result.full_cpu_seconds == result.cpu_seconds


class TestCVObjective:
    """The shipped `svc_cv`."""

    def test_it_reports_every_fold_in_the_trials_order_and_returns_their_mean(self) -> None:
        """Five folds, reported in `ctx.folds` order; the value is their mean error."""
        reporter = NoPruning()
        ctx = TrialContext({"C": 1.0, "gamma": 0.05}, reporter=reporter)
        value = svc_cv(ctx, n_samples=200, n_features=6, n_informative=3)
        assert [step for step, _ in reporter.reports] == list(ctx.folds(5))
        assert value == pytest.approx(sum(v for _, v in reporter.reports) / 5)
        assert 0.0 <= value < 0.5
        assert fidelity_of(svc_cv) == "folds"

    def test_a_pruned_trial_stops_between_folds(self) -> None:
        """Condemned after two folds: two fits, then TrialPruned."""
        reporter = Condemning(after=2)
        with pytest.raises(TrialPruned):
            svc_cv(
                TrialContext({"C": 1.0}, reporter=reporter),
                n_samples=200,
                n_features=6,
                n_informative=3,
            )
        assert len(reporter.reports) == 2

    def test_its_kwargs_are_bounded(self) -> None:
        """Too many cells, or more informative features than make_classification allows."""
        model = svc_cv
        with pytest.raises(InvalidObjectiveKwargs, match="n_samples"):
            checked_kwargs(model, "svc_cv", {"n_samples": 20_000, "n_features": 200})
        with pytest.raises(InvalidObjectiveKwargs, match="n_informative"):
            checked_kwargs(model, "svc_cv", {"n_features": 5, "n_informative": 4})


MODES = load_modes(None)


def cv_spec(**extra: Any) -> StudySpec:
    """A study of the CV objective."""
    return StudySpec.model_validate(
        {
            "name": "cv",
            "objective": "svc_cv",
            "space": {"C": {"type": "float", "low": 0.01, "high": 1000, "log": True}},
            "budget": {"trials": 16},
            **extra,
        }
    )


class TestPlans:
    """Modes switch the fold rule on; a spec's pruner or a forced strategy switches it off."""

    def test_balanced_and_fast_prune_on_folds_and_thorough_more_gently(self) -> None:
        """Every packaged mode has a fold margin; thorough's is the widest."""
        margins = {name: resolve_plan(cv_spec(), name, MODES[name]).fold_margin for name in MODES}
        assert 0 < margins["fast"] < margins["balanced"] < margins["thorough"]

    def test_a_spec_pruner_and_a_multi_objective_study_have_no_fold_rule(self) -> None:
        """The spec's own pruner wins; Optuna cannot prune several objectives."""
        own = cv_spec(pruner={"name": "wilcoxon"})
        assert resolve_plan(own, "balanced", MODES["balanced"]).fold_margin == 0.0
        multi = cv_spec(directions=["minimize", "minimize"])
        assert resolve_plan(multi, "balanced", MODES["balanced"]).fold_margin == 0.0

    def test_auto_keeps_the_fold_rule_and_a_forced_strategy_drops_it(self) -> None:
        """`auto` never silently drops pruning; a forced strategy gets what it names."""
        plan = resolve_plan(cv_spec(), "balanced", MODES["balanced"])
        qmc = next(s for s in BUILTIN if s.name == "qmc")
        assert compose(plan, qmc, "epochs", keep_mode_pruning=True).fold_margin == plan.fold_margin
        assert compose(plan, qmc, "epochs", keep_mode_pruning=False).fold_margin == 0.0

    def test_the_pruning_policy_sends_the_margin_on_a_valid_task(self) -> None:
        """The worker's part of the plan carries `fold_margin`, as `TaskPlan` accepts it."""
        plan = resolve_plan(cv_spec(), "balanced", MODES["balanced"])
        trial = HookContext(cv_spec(), 0, {"C": 1.0}, plan=plan, task_plan=plan.base_task_plan())
        PruningPolicy().before_dispatch(trial)
        assert trial.task_plan["fold_margin"] == MODES["balanced"].fold_margin
        assert validate(TaskPlan, trial.task_plan).fold_margin == MODES["balanced"].fold_margin
