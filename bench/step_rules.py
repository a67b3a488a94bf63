"""Aggressive pruning rules on the steps, on the simulated epoch-curve tasks (in-process).

Issue 13, fast mode: which rule stops more trials early on objectives that report epochs
without ending worse than plain TPE at equal compute? Each arm is plain seeded multivariate
TPE with pruners built as the worker builds them (`hpod.pruners.build_pruners`) from a step
pruner, its options and a threshold; every arm gets the same compute budget (in full
evaluations of the task's cost model, `Task.unit`). Tasks: the validation suite's
``epochs_val`` and, with ``--suite training``, the training suite's epoch curves and
``sgd_digits`` (`hpod.policies.strategy.suites`). Never the held-out suite.

Measures, paired by seed: the true (noiseless) final value of the best trial found once
`--budget` full evaluations' worth of compute is spent, arm minus plain and arm minus
balanced, mean [bootstrap 95 %]; and compute to T (T = plain's median true best at the
budget), median over seeds, as a ratio to plain's.

    PYTHONPATH=$PWD .venv/bin/python bench/step_rules.py --seeds 20
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpod.engine import suggest
from hpod.policies.strategy.suites import Task, training_suite, validation_suite
from hpod.pruners import AgreementGate, build_pruners, should_prune, values_at


class SpreadPruner(optuna.pruners.BasePruner):
    """Prune a trial worse than the best trial at the same step by more than `margin`
    inter-quartile ranges of the values reported there (a candidate for fast's rule on the
    steps, measured here and not shipped: it tied balanced's median pruner).

    `ThresholdPruner`'s margin is a share of |best|, which means nothing on a loss scale: 5 %
    of a cross-entropy of 0.1 is a hair, and on mlp_epochs it pruned 141 of 150 trials once
    the agreement gate opened. The spread of the trials' own values at the step is the scale
    the objective gives: a trial that far from the best, counted in the distances that
    separate ordinary trials there, is not coming back. Values are the other COMPLETE and
    PRUNED trials' at the trial's step (NaN left out); fewer than `min_trials`, or no spread
    (inter-quartile range 0): no decision. A NaN value is pruned, as by the threshold.
    """

    def __init__(self, margin: float, min_trials: int = 8) -> None:
        if not margin > 0 or min_trials < 4:
            raise ValueError(f"margin > 0 and min_trials >= 4, got {margin}, {min_trials}")
        self.margin = margin
        self.min_trials = min_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """Whether `trial`'s latest value is `margin` spreads worse than the best there."""
        step = trial.last_step
        if step is None:
            return False
        others = values_at(study, trial, step)
        return spread_rule(
            trial.intermediate_values[step],
            others,
            margin=self.margin,
            min_trials=self.min_trials,
            minimize=study.direction == StudyDirection.MINIMIZE,
        )


def spread_rule(
    value: float, others: list[float], *, margin: float, min_trials: int, minimize: bool
) -> bool:
    """`SpreadPruner`'s decision from plain numbers: the trial's `value` at a step and the
    other trials' values there."""
    if math.isnan(value):
        return True
    finite = sorted(v for v in others if math.isfinite(v))
    if len(finite) < min_trials:
        return False
    q1, q3 = _quantile(finite, 0.25), _quantile(finite, 0.75)
    spread = q3 - q1
    if not spread > 0:
        return False
    if minimize:
        return value > finite[0] + margin * spread
    return value < finite[-1] - margin * spread


def _quantile(ordered: list[float], q: float) -> float:
    """The `q` quantile of sorted values, linear between order statistics (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


#: arm -> (step pruner, its options, threshold (share of |best|)); ``spread<k>`` arms add
#: `SpreadPruner(k)` behind the same agreement gate.
ARMS: dict[str, tuple[str, dict[str, Any], float]] = {
    "plain": ("none", {}, 0.0),
    "balanced": ("median", {"min_agreement": 0.5}, 0.0),
    "fast-0.05": ("median", {"min_agreement": 0.5}, 0.05),
    "p25": ("percentile", {"percentile": 25.0, "min_agreement": 0.5}, 0.0),
    # fast as shipped: its step pruner's own threshold (0) replaces the mode's 5 %.
    "fast": ("percentile", {"percentile": 33.0, "min_agreement": 0.5, "threshold": 0.0}, 0.05),
    "p10": ("percentile", {"percentile": 10.0, "min_agreement": 0.5}, 0.0),
    "p33": ("percentile", {"percentile": 33.0, "min_agreement": 0.5}, 0.0),
    "median-a30": ("median", {"min_agreement": 0.3}, 0.0),
    "spread0.25": ("median", {"min_agreement": 0.5}, 0.0),
    "spread0.5": ("median", {"min_agreement": 0.5}, 0.0),
    "spread1": ("median", {"min_agreement": 0.5}, 0.0),
    "spread2": ("median", {"min_agreement": 0.5}, 0.0),
}


def pruners_of(arm: str) -> list[optuna.pruners.BasePruner]:
    """`arm`'s pruners, built as the worker builds a plan's."""
    name, options, threshold = ARMS[arm]
    pruners = build_pruners(name, options, threshold, 6)
    if arm.startswith("spread"):
        pruners.append(AgreementGate(SpreadPruner(float(arm[len("spread") :]), 6), 0.5))
    return pruners


class Run:
    """One study's running best (true value) against its spent compute, in full evaluations."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []
        self.spent = 0.0
        self.pruned = 0
        self.trials = 0

    def at(self, budget: float) -> float:
        best = math.inf
        for spent, value in self.points:
            if spent > budget:
                break
            best = value
        return best

    def to_target(self, target: float) -> float:
        for spent, value in self.points:
            if value <= target:
                return spent
        return math.inf


def run(task: Task, arm: str, seed: int, budget: float) -> Run:
    """Seeded TPE with `arm`'s pruners on `task` until `budget` full evaluations are spent."""
    pruners = pruners_of(arm)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))
    out, best_seen, true_best = Run(), math.inf, math.inf
    spec = task.spec()
    while out.spent < budget:
        trial = study.ask()
        params = suggest(trial, spec.space)
        rng = np.random.default_rng([seed, trial.number])
        cumulative = [0.0] + [task.cost(params, e / task.epochs) for e in range(1, task.epochs + 1)]
        pruned, value = False, math.nan
        for e in range(1, task.epochs + 1):
            value = task.value(params, e / task.epochs, rng)
            out.spent += max(0.0, cumulative[e] - cumulative[e - 1]) / task.unit
            trial.report(value, e)
            if e < task.epochs and pruners:
                frozen = study._storage.get_trial(trial._trial_id)
                if should_prune(study, frozen, pruners):
                    pruned = True
                    break
        out.trials += 1
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            out.pruned += 1
        else:
            study.tell(trial, value)
            if value < best_seen:
                best_seen, true_best = value, task.value(params, 1.0, None)
        out.points.append((out.spent, true_best))
    return out


def paired(a: list[float], b: list[float], rng: np.random.Generator) -> str:
    d = np.array(a) - np.array(b)
    draws = rng.choice(d, (4000, len(d))).mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return f"{d.mean():+.4f} [{low:+.4f}, {high:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget", type=float, default=30.0, help="full evaluations of compute")
    parser.add_argument("--suite", choices=["validation", "training"], default="validation")
    parser.add_argument("--arms", default=",".join(ARMS))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    suite = validation_suite() if args.suite == "validation" else training_suite()
    tasks = [t for t in suite if t.fidelity == "epochs"]
    arms = [
        "plain",
        "balanced",
        *[a for a in args.arms.split(",") if a not in ("plain", "balanced")],
    ]
    rng = np.random.default_rng(0)
    for task in tasks:
        runs = {
            arm: [run(task, arm, seed, args.budget) for seed in range(args.seeds)] for arm in arms
        }
        finals = {arm: [r.at(args.budget) for r in rs] for arm, rs in runs.items()}
        target = statistics.median(finals["plain"])
        plain_to = statistics.median(r.to_target(target) for r in runs["plain"])
        print(
            f"\n{task.name}: {task.epochs} epochs, budget {args.budget:g} full evaluations, "
            f"{args.seeds} seeds; T = {target:.4f}"
        )
        print(
            "| arm | true best at budget (median) | - plain | - balanced | x plain to T | "
            "reached | pruned/trials |"
        )
        print("|---|---|---|---|---|---|---|")
        for arm in arms:
            to_t = statistics.median(r.to_target(target) for r in runs[arm])
            ratio = 0.0 if math.isinf(to_t) else plain_to / to_t if to_t > 0 else math.inf
            reached = sum(not math.isinf(r.to_target(target)) for r in runs[arm])
            print(
                f"| {arm} | {statistics.median(finals[arm]):.4f} | "
                f"{paired(finals[arm], finals['plain'], rng)} | "
                f"{paired(finals[arm], finals['balanced'], rng)} | "
                f"{ratio:.2f}x | {reached}/{args.seeds} | "
                f"{statistics.median(r.pruned for r in runs[arm]):.0f}/"
                f"{statistics.median(r.trials for r in runs[arm]):.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
