"""Continuation against the re-training data ladder, step pruning and plain TPE.

Tasks: ``boosting`` (gradient_boosting, 150 rounds, four parameters) and ``sgd``
(sgd_classifier, 30 passes). One process, one evaluation at a time (one worker), the objective
code and the worker's own evaluation paths, Optuna's TPE (seeded) in every arm; only the way
fidelity is used differs:

- ``plain``: every trial fits all its boosting rounds on all the data (plain Optuna).
- ``ladder``: hpod's data ladder as the balanced mode runs it without continuation: each
  trial fits on 1/9, 1/3, then all of the data, re-training from scratch at each rung, and
  Optuna's successive halving pruner (reduction factor 3) stops losers
  (`hpod.workers.evaluation.evaluate`; the objective declared ``"data"`` for this arm).
- ``pruned``: one task per trial that reports every step (round, pass), stopped by Optuna's
  successive halving pruner on those steps (what balanced does for an epochs objective).
- ``continued``: continuation as the balanced mode runs it now: a trial runs a ninth of its
  rounds and pauses with its trees saved (`hpod.checkpoints`); the best third at a rung are
  continued from their checkpoints to 1/3, then all rounds (`hpod.daemon.promotion`, the
  study loop's rule, driven here the way the loop drives it: promotions first, then new
  trials; paused trials stay RUNNING in Optuna until the end, as in the daemon).

The metric is bench/quality.py's: the target T is the median over seeds of plain's final best;
compute to target is the cumulative objective CPU (process time, every rung and every task
included) when the running best over COMPLETE trials first reaches T. The multi-fidelity arms
get twice plain's trials. The ratio is plain's median compute to target over the arm's.

    nice -n 10 .venv/bin/python bench/continuation.py --task sgd --seeds 3 --trials 24
    nice -n 10 .venv/bin/python bench/continuation.py --task boosting --arms ladder,continued
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from hpod.checkpoints import CheckpointStore
from hpod.daemon.promotion import Promotions
from hpod.pruners import build_pruners, should_prune
from hpod.workers.evaluation import Continuation, evaluate, evaluate_continued
from hpod.workers.objectives.gradient_boosting import gradient_boosting, gradient_boosting_rounds
from hpod.workers.objectives.sgd import sgd_classifier

LADDER = (0.111111, 0.333333, 1.0)
KWARGS = {"n_samples": 4000, "seed": 0}
ROUNDS = 150


def space(trial: optuna.Trial) -> dict[str, Any]:
    """gradient_boosting's space (bench/quality.py's, without max_iter: the fidelity)."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.5, log=True),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 4, 128, log=True),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 2, 100, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-6, 10.0, log=True),
    }


def sgd_space(trial: optuna.Trial) -> dict[str, Any]:
    """sgd_classifier's recommended space."""
    return {
        "alpha": trial.suggest_float("alpha", 1e-6, 1e-1, log=True),
        "learning_rate": trial.suggest_categorical(
            "learning_rate", ["optimal", "invscaling", "adaptive", "constant"]
        ),
        "eta0": trial.suggest_float("eta0", 1e-4, 1.0, log=True),
        "penalty": trial.suggest_categorical("penalty", ["l2", "l1", "elasticnet"]),
        "l1_ratio": trial.suggest_float("l1_ratio", 0.0, 1.0),
    }


def _sgd_by_data(ctx: Any, **kwargs: Any) -> float:
    """sgd_classifier declared as a data-fidelity objective: the re-training ladder's arm."""
    return float(sgd_classifier(ctx, **kwargs))


_sgd_by_data.hpod_fidelity = "data"  # type: ignore[attr-defined]


#: task -> (objective, by-data objective, kwargs, params of a trial)
TASKS: dict[str, tuple[Any, Any, dict[str, Any], Callable[[optuna.Trial], dict[str, Any]]]] = {
    "boosting": (
        gradient_boosting_rounds,
        gradient_boosting,
        KWARGS,
        lambda t: {**space(t), "max_iter": ROUNDS},
    ),
    "sgd": (sgd_classifier, _sgd_by_data, {"passes": 30}, sgd_space),
}
TASK = "boosting"


def objective() -> Any:
    return TASKS[TASK][0]


def params_of(trial: optuna.Trial) -> dict[str, Any]:
    return TASKS[TASK][3](trial)


Trace = list[tuple[float, float]]  # (cumulative CPU, running best over complete trials)


class Curve:
    """Cumulative CPU and running best, as bench/quality.py reads them."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.best = math.inf
        self.trace: Trace = []

    def spend(self, cpu: float) -> None:
        self.cpu += cpu
        self.trace.append((self.cpu, self.best))

    def complete(self, value: float) -> None:
        self.best = min(self.best, value)
        self.trace.append((self.cpu, self.best))


def sampler(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def plain(seed: int, trials: int) -> Curve:
    study = optuna.create_study(sampler=sampler(seed))
    curve = Curve()
    for _ in range(trials):
        trial = study.ask()
        started = time.process_time()
        value = objective()(_ctx(params_of(trial)), **TASKS[TASK][2])
        curve.spend(time.process_time() - started)
        study.tell(trial, value)
        curve.complete(value)
    return curve


def _ctx(params: dict[str, Any]) -> Any:
    from hpod.workers.context import TrialContext

    return TrialContext(params)


class OptunaReporter:
    """The worker's StorageReporter, on an in-memory study."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, pruners: list[Any]) -> None:
        self.study, self.trial, self.pruners = study, trial, pruners

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)

    def should_prune(self) -> bool:
        frozen = self.study._storage.get_trial(self.trial._trial_id)
        return should_prune(self.study, frozen, self.pruners)


def ladder(seed: int, trials: int) -> Curve:
    study = optuna.create_study(sampler=sampler(seed))
    pruners = build_pruners("successive_halving", {"reduction_factor": 3}, 0.0, 8, LADDER)
    curve = Curve()
    for _ in range(trials):
        trial = study.ask()
        reporter = OptunaReporter(study, trial, pruners)
        by_data = TASKS[TASK][1]
        result = evaluate(by_data, params_of(trial), TASKS[TASK][2], LADDER, reporter)
        curve.spend(result.cpu_seconds)
        if result.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            assert result.values is not None
            study.tell(trial, result.values[0])
            curve.complete(result.values[0])
    return curve


def pruned(seed: int, trials: int) -> Curve:
    """hpod's behaviour for an objective that reports its steps and is not resumable: one
    task per trial, Optuna's successive halving (reduction factor 3) on its reports."""
    study = optuna.create_study(sampler=sampler(seed))
    pruners = build_pruners("successive_halving", {"reduction_factor": 3}, 0.0, 8, [1.0])
    curve = Curve()
    for _ in range(trials):
        trial = study.ask()
        reporter = OptunaReporter(study, trial, pruners)
        result = evaluate(objective(), params_of(trial), TASKS[TASK][2], [1.0], reporter)
        curve.spend(result.cpu_seconds)
        if result.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            assert result.values is not None
            study.tell(trial, result.values[0])
            curve.complete(result.values[0])
    return curve


def continued(seed: int, trials: int, root: Path) -> Curve:
    study = optuna.create_study(sampler=sampler(seed))
    store = CheckpointStore(root / f"seed-{seed}")
    rungs = Promotions(LADDER, eta=3)
    curve = Curve()
    running: dict[int, optuna.Trial] = {}
    params: dict[int, dict[str, Any]] = {}
    asked = 0

    def run(number: int, to: float) -> None:
        trial = running[number]
        task = Continuation(store, "bench", trial._trial_id, to)
        reporter = OptunaReporter(study, trial, [])
        result = evaluate_continued(objective(), params[number], TASKS[TASK][2], reporter, task)
        curve.spend(result.cpu_seconds)
        assert result.values is not None
        if to >= 1.0:
            study.tell(trial, result.values[0])
            rungs.told(number, result.values[0])
            del running[number]
            curve.complete(result.values[0])
        else:
            rungs.paused(number, to, result.values[0], result.cpu_seconds, result.data_evaluated)

    while True:
        promotion = rungs.next_promotion(final=asked >= trials)
        if promotion is not None:
            number, to = promotion
            rungs.dispatched(number, to)
            run(number, to)
            continue
        if asked >= trials:
            break
        trial = study.ask()
        asked += 1
        running[trial.number] = trial
        params[trial.number] = params_of(trial)
        rungs.dispatched(trial.number, LADDER[0])
        run(trial.number, LADDER[0])
    for trial in list(running.values()):
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        store.delete("bench", trial._trial_id)
    return curve


def to_target(curve: Curve, target: float) -> float | None:
    return next((cpu for cpu, best in curve.trace if best <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=24, help="plain's trials; 2x for the others")
    parser.add_argument("--arms", default="plain,ladder,pruned,continued")
    parser.add_argument("--task", choices=sorted(TASKS), default="boosting")
    args = parser.parse_args()
    global TASK
    TASK = args.task
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = list(range(args.seeds))
    arms: dict[str, Callable[[int], Curve]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        arms = {
            "plain": lambda s: plain(s, args.trials),
            "ladder": lambda s: ladder(s, 2 * args.trials),
            "pruned": lambda s: pruned(s, 2 * args.trials),
            "continued": lambda s: continued(s, 2 * args.trials, Path(tmp)),
        }
        chosen = ["plain", *[a for a in args.arms.split(",") if a != "plain"]]
        curves = {name: [arms[name](seed) for seed in seeds] for name in chosen}
    target = statistics.median(c.best for c in curves["plain"])
    plain_cpu = statistics.median(
        x for x in (to_target(c, target) for c in curves["plain"]) if x is not None
    )
    print(
        f"{objective().__name__}, kwargs {TASKS[TASK][2]}; seeds {seeds}; "
        f"plain {args.trials} trials, others {2 * args.trials}; target T = {target:.5f}"
    )
    print(
        "arm        per-seed CPU to T (s)            reached  median  ratio   final best "
        "(median)  total CPU (median)"
    )
    for name, runs in curves.items():
        reach = [to_target(c, target) for c in runs]
        got = [x for x in reach if x is not None]
        median = statistics.median(got) if len(got) * 2 > len(runs) else None
        ratio = f"{plain_cpu / median:5.2f}x" if median else "  n/a"
        cells = " ".join(f"{x:7.1f}" if x is not None else "      -" for x in reach)
        print(
            f"{name:10} {cells:32} {len(got)}/{len(runs)}      "
            f"{(f'{median:6.1f}' if median else '   n/a')}  {ratio}  "
            f"{statistics.median(c.best for c in runs):.5f}          "
            f"{statistics.median(c.cpu for c in runs):7.1f}"
        )


if __name__ == "__main__":
    main()
