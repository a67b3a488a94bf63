"""Pruning across cross-validation folds: plain TPE against three ways of pruning on folds.

The objective is the shipped `svc_cv` (an RBF SVC scored by 5-fold CV), run in-process
through hpod's own evaluation (`hpod.workers.evaluation.evaluate`, so the CPU counted is the
objective's alone, as a worker counts it). Arms, all with Optuna's default TPE seeded alike:

- ``plain``: no pruning (the yardstick);
- ``median``: Optuna's MedianPruner on the running mean of the folds seen (step = folds seen),
  what a user of plain Optuna would write;
- ``folds:K``: hpod's fold rule (`FoldPruner`, margin ``k`` standard errors), per-fold values;
- ``wilcoxon``: Optuna's WilcoxonPruner on per-fold values.

Each pruning arm gets, per seed, the objective CPU plain spent on that seed (equal compute,
so it runs more trials). A run's figure is the objective CPU it spent until its best reached
the target, plain's median final best over the seeds; the ratio is plain's CPU to that target
over the arm's, per seed (same seed: paired; a plain seed that never reaches the target
counts its total, an arm's seed that never does is left out and counted in ``reached``),
summarised by the geometric mean with a bootstrap 95 % interval. ``best_minus_plain`` is the
arm's best within plain's CPU minus plain's final best, per seed (mean, 95 % interval).

    python bench/folds.py [--seeds 5] [--trials 40] [--k 1.0]
    python bench/folds.py --calibrate   # chooses k on the validation task
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from hpod.pruners import FoldPruner, should_prune
from hpod.workers.evaluation import evaluate
from hpod.workers.objectives.cv import svc_cv

#: The task the figures are reported on.
REPORT_TASK: dict[str, Any] = {"n_samples": 2000, "seed": 0}
#: The task k is calibrated on (other data, other size): never the reported one.
VALIDATION_TASK: dict[str, Any] = {
    "n_samples": 1500,
    "n_features": 30,
    "n_informative": 10,
    "seed": 7,
}
SPACE: dict[str, tuple[float, float]] = {"C": (1e-2, 1e3), "gamma": (1e-4, 1.0)}


class Reporter:
    """Reports into an in-process Optuna trial and asks the arm's pruners."""

    def __init__(
        self, trial: optuna.Trial, pruners: list[optuna.pruners.BasePruner], running_mean: bool
    ) -> None:
        self.trial = trial
        self.pruners = pruners
        self.running_mean = running_mean
        self.values: list[float] = []

    def report(self, value: float, step: int) -> None:
        """Per fold (step = fold index), or the running mean (step = folds seen)."""
        self.values.append(value)
        if self.running_mean:
            self.trial.report(sum(self.values) / len(self.values), len(self.values))
        else:
            self.trial.report(value, step)

    def should_prune(self) -> bool:
        """The arm's pruners, with hpod's own `should_prune`."""
        if not self.pruners:
            return False
        frozen = self.trial.study._storage.get_trial(self.trial._trial_id)
        return should_prune(self.trial.study, frozen, self.pruners)


def arm_pruners(arm: str) -> tuple[list[optuna.pruners.BasePruner], bool]:
    """The pruners of an arm (``folds:K`` is the fold rule at margin K), and whether it
    reports running means."""
    if arm == "plain":
        return [], False
    if arm == "median":
        return [optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)], True
    if arm.startswith("folds:"):
        return [FoldPruner(float(arm.partition(":")[2]))], False
    if arm == "wilcoxon":
        return [optuna.pruners.WilcoxonPruner(p_threshold=0.1)], False
    raise ValueError(arm)


def run(
    arm: str, seed: int, trials: int, task: dict[str, Any], cpu_budget: float | None = None
) -> dict[str, Any]:
    """One study: per trial its value (None if pruned), CPU and folds evaluated. With
    `cpu_budget` it runs until its objective CPU reaches that (at most 4 x `trials`)."""
    pruners, running_mean = arm_pruners(arm)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    out: dict[str, list[Any]] = {"values": [], "cpu": [], "folds": []}
    for _ in range(trials if cpu_budget is None else 4 * trials):
        if cpu_budget is not None and sum(out["cpu"]) >= cpu_budget:
            break
        trial = study.ask()
        params = {n: trial.suggest_float(n, lo, hi, log=True) for n, (lo, hi) in SPACE.items()}
        reporter = Reporter(trial, pruners, running_mean)
        result = evaluate(svc_cv, params, task, [1.0], reporter)
        if result.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            out["values"].append(None)
        else:
            assert result.values is not None
            study.tell(trial, result.values[0])
            out["values"].append(result.values[0])
        out["cpu"].append(result.cpu_seconds)
        out["folds"].append(len(reporter.values))
    return out


def cpu_to(target: float, record: dict[str, Any]) -> float | None:
    """Objective CPU spent until the best value reached `target`; None if never."""
    spent, best = 0.0, math.inf
    for value, cpu in zip(record["values"], record["cpu"], strict=True):
        spent += cpu
        if value is not None:
            best = min(best, value)
        if best <= target + 1e-12:
            return spent
    return None


def final_best(record: dict[str, Any], cpu: float = math.inf) -> float:
    """The best complete value of a run within `cpu` objective seconds."""
    spent, best = 0.0, math.inf
    for value, used in zip(record["values"], record["cpu"], strict=True):
        spent += used
        if spent > cpu + 1e-9:
            break
        if value is not None:
            best = min(best, value)
    return best


def mean_interval(values: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean of `values` and its bootstrap 95 % interval (over seeds)."""
    data = np.asarray(values)
    rng = np.random.default_rng(seed)
    means = [rng.choice(data, len(data)).mean() for _ in range(5000)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(data.mean()), float(lo), float(hi)


def geo_interval(ratios: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Geometric mean of `ratios` and its bootstrap 95 % interval (over seeds)."""
    logs = np.log(np.asarray(ratios))
    rng = np.random.default_rng(seed)
    means = [rng.choice(logs, len(logs)).mean() for _ in range(5000)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(np.exp(logs.mean())), float(np.exp(lo)), float(np.exp(hi))


def compare(
    arms: list[str], seeds: int, trials: int, task: dict[str, Any], log: Callable[..., None]
) -> dict[str, Any]:
    """Every arm on every seed, each pruning arm given the objective CPU plain spent on
    that seed (equal compute); the ratios against plain."""
    records: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ["plain", *arms]}
    for seed in range(seeds):
        budget = None
        for arm in records:
            started = time.perf_counter()
            records[arm].append(run(arm, seed, trials, task, budget))
            record = records[arm][-1]
            if budget is None:
                budget = sum(record["cpu"])
            log(arm, seed, len(record["values"]), final_best(record), time.perf_counter() - started)
    plain_cpu_total = [sum(r["cpu"]) for r in records["plain"]]
    target = statistics.median(final_best(r) for r in records["plain"])
    table: dict[str, Any] = {"target": target}
    for arm, runs in records.items():
        # A plain seed that never reaches the target counts its total (so its ratio is a
        # lower bound); an arm's seed that never reaches it is left out, and counted apart.
        plain_cpu = [
            cpu_to(target, r) or total
            for r, total in zip(records["plain"], plain_cpu_total, strict=True)
        ]
        arm_cpu = [cpu_to(target, r) for r in runs]
        ratios = [p / a for p, a in zip(plain_cpu, arm_cpu, strict=True) if a is not None]
        pruned = sum(v is None for r in runs for v in r["values"])
        folds = sum(f for r in runs for f in r["folds"])
        row: dict[str, Any] = {
            "reached": sum(a is not None for a in arm_cpu),
            "paired": len(ratios),
            "pruned": pruned,
            "trials": sum(len(r["values"]) for r in runs),
            "folds_per_trial": folds / sum(len(r["values"]) for r in runs),
            "total_cpu": sum(sum(r["cpu"]) for r in runs),
            "final_best_median": statistics.median(final_best(r) for r in runs),
        }
        # Quality at equal compute: the arm's best within plain's CPU, minus plain's best.
        diffs = [
            final_best(r, cpu) - final_best(p)
            for r, p, cpu in zip(runs, records["plain"], plain_cpu_total, strict=True)
        ]
        row["best_minus_plain"], row["best_lo"], row["best_hi"] = mean_interval(diffs)
        if len(ratios) >= 2:
            row["ratio"], row["lo"], row["hi"] = geo_interval(ratios)
        row["ratios"] = [round(x, 3) for x in ratios]
        table[arm] = row
    return table


def main() -> None:
    """Run the comparison (or the calibration of k) and print a JSON table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--k", type=float, default=1.0)
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--ks", default="1,2,3")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def log(*parts: Any) -> None:
        print(*parts, flush=True)

    if args.calibrate:
        arms = [f"folds:{float(k)}" for k in args.ks.split(",")]
        table = compare(arms, args.seeds, args.trials, VALIDATION_TASK, log)
    else:
        arms = ["median", f"folds:{args.k}", "wilcoxon"]
        table = compare(arms, args.seeds, args.trials, REPORT_TASK, log)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
