"""Continuation against plain TPE, TPE with Optuna's own pruners on the steps, and the
re-training data ladder.

Tasks: ``sgd`` (sgd_classifier, 30 passes, five parameters), ``boosting``
(gradient_boosting_rounds, 150 rounds, four parameters) and ``mlp`` (mlp_digits, 27 epochs,
six parameters). One process, one evaluation at a time (one worker), the objective code and
the worker's own evaluation paths, Optuna's multivariate TPE (seeded) in every arm; only the
way the fidelity is used differs:

- ``plain``: every trial runs all its steps (plain Optuna, no pruning).
- ``median-w<pct>``: ``median`` that prunes no trial before it has run <pct> % of the steps
  (`hpod.pruners.ShareWarmup`); ``median-a<pct>``: ``median`` only at steps where the
  complete trials' values rank them as their final values do, Spearman rho >= <pct> / 100
  (`hpod.pruners.AgreementGate`).
- ``median``, ``sha``, ``hyperband``: plain TPE with Optuna's own pruner on the steps the
  objective reports (`MedianPruner()`, `SuccessiveHalvingPruner(reduction_factor=3)`,
  `HyperbandPruner(1, steps)`): one task per trial, a pruned trial simply stops (it never
  re-trains either) and is told PRUNED with its intermediate values. For ``boosting`` the
  objective is fitted by warm start up to 6, 17, 50 and 150 rounds, reporting after each
  (`CHECKPOINTS`), and Hyperband's smallest resource is 6 rounds.
- ``spread<k>``: balanced's step pruner (median behind the 0.5 agreement gate) and a spread
  margin of k (`step_rules.SpreadPruner`); ``p<pct>``: the percentile pruner at <pct>
  behind the same gate.
- ``fast``, ``balanced``: plain TPE with the pruners that mode's plan names for an objective
  of step fidelity (`hpod.policies.compose`, `hpod.pruners.build_pruners`: the step pruner
  and the mode's threshold), asked the way the worker asks them (`should_prune`).
- ``continued``: hpod's continuation as the daemon runs it: a trial runs to the first rung of
  its steps and pauses with its state saved (`hpod.checkpoints`); the best 1/eta at a rung
  continue from their checkpoints (`hpod.daemon.promotion`, driven the way the study loop
  drives it: promotions first, then new trials). Paused trials stay RUNNING in Optuna, so
  TPE (no lie with one worker) learns only from trials that finished the last rung.
- ``view``: continuation whose sampler reads every paused trial as pruned at its rung values
  (`PausedAsPruned`), the way TPE reads a trial stopped by a pruner.
- ``liar``: continuation with TPE's ``constant_liar`` (what the daemon does with parallelism
  above one: every paused trial counts as bad).
- ``continued4``: ``continued`` with one more rung below the first (1/27 of the steps).
- ``ladder``: hpod's data ladder without continuation (1/9, 1/3, all of the data,
  re-training at each rung, successive halving); ``boosting`` and ``sgd`` only.

The metric is bench/quality.py's: the target T is the median over seeds of plain's best
after `--trials` trials; compute to T is the cumulative objective CPU (process time, every
rung and every task included) when the running best over COMPLETE trials first reaches T,
infinite if never. Every arm, plain included, runs twice `--trials` trials. The ratio is
median(plain's compute to T) / median(the arm's), with a paired bootstrap 95 % interval over
seeds (`savings.bootstrap_ratio`); ``vs best pruner`` divides the best pruner arm's median
by continued's the same way (above 1: continuation reaches T sooner).

    nice -n 5 .venv/bin/python bench/continuation.py --task sgd --seeds 10
    nice -n 5 .venv/bin/python bench/continuation.py --task boosting --seeds 8 --first-seed 100
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).parent))
import step_rules
from savings import bootstrap_ratio

from hpod.checkpoints import CheckpointStore
from hpod.daemon.promotion import Promotions
from hpod.modes import load_modes
from hpod.policies.compose import compose_plan
from hpod.pruners import AgreementGate, ShareWarmup, build_pruners, should_prune
from hpod.schema import StudySpec
from hpod.workers.context import NoPruning, TrialContext, TrialPruned
from hpod.workers.evaluation import Continuation, evaluate, evaluate_continued
from hpod.workers.objectives import gradient_boosting as gb
from hpod.workers.objectives.mlp import mlp_digits
from hpod.workers.objectives.sgd import sgd_classifier

LADDER = (0.111111, 0.333333, 1.0)
ROUNDS = 150
#: The rounds after which the pruner arms' boosting reports: a geometric schedule (1/27, 1/9,
#: 1/3, all), since each warm-started fit in scikit-learn re-bins the data and recomputes
#: the training predictions of every tree so far (reports every 10 rounds cost 2.2x a plain
#: fit; these cost about as much as continuation's three rungs).
CHECKPOINTS = (6, 17, 50, ROUNDS)
#: A configuration each task runs once before the arms (imports, data), untimed.
WARM_UP: dict[str, dict[str, Any]] = {
    "boosting": {
        "learning_rate": 0.5,
        "max_leaf_nodes": 4,
        "min_samples_leaf": 50,
        "l2_regularization": 1.0,
    },
    "sgd": {
        "alpha": 1e-3,
        "learning_rate": "optimal",
        "eta0": 0.01,
        "penalty": "l2",
        "l1_ratio": 0.5,
    },
    "mlp": {
        "lr": 1e-3,
        "hidden": 16,
        "layers": 1,
        "dropout": 0.0,
        "weight_decay": 1e-4,
        "batch_size": 256,
    },
}
PRUNERS = ("median", "sha", "hyperband")
#: Modes whose step pruners run as arms (what the daemon runs on a step-fidelity objective).
MODE_ARMS = ("fast", "balanced")
CONTINUED = ("continued", "continued4", "view", "liar")


def boosting_space(trial: optuna.Trial) -> dict[str, Any]:
    """gradient_boosting's space (bench/quality.py's), its rounds fixed: the fidelity."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.5, log=True),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 4, 128, log=True),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 2, 100, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-6, 10.0, log=True),
        "max_iter": ROUNDS,
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


def mlp_space(trial: optuna.Trial) -> dict[str, Any]:
    """mlp_digits's recommended space."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "hidden": trial.suggest_int("hidden", 16, 256, log=True),
        "layers": trial.suggest_int("layers", 1, 3),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128, 256]),
    }


def boosting_by_chunks(ctx: TrialContext, **kwargs: Any) -> float:
    """gradient_boosting_rounds as a user would prune it with Optuna: one warm-started model
    fitted up to each of `CHECKPOINTS`, the validation loss reported after each."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import log_loss
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    seed = int(kwargs.get("seed", 0))
    x_train, x_val, y_train, y_val = gb._data(
        int(kwargs.get("n_samples", 4000)), 20, 8, 2, 0.25, seed
    )
    p = ctx.params
    model = HistGradientBoostingClassifier(
        learning_rate=float(p["learning_rate"]),
        max_iter=CHECKPOINTS[0],
        warm_start=True,
        max_leaf_nodes=int(p["max_leaf_nodes"]),
        min_samples_leaf=int(p["min_samples_leaf"]),
        l2_regularization=float(p["l2_regularization"]),
        early_stopping=False,
        random_state=seed,
    )
    value = math.nan
    with threadpool_limits(limits=1, user_api="openmp"):
        for rounds in CHECKPOINTS:
            model.set_params(max_iter=rounds)
            model.fit(x_train, y_train)
            value = float(log_loss(y_val, model.predict_proba(x_val), labels=np.unique(y_val)))
            ctx.report(value, rounds)
            if ctx.should_prune():
                raise TrialPruned(f"pruned after {rounds} rounds")
    return value


boosting_by_chunks.hpod_fidelity = "epochs"  # type: ignore[attr-defined]


def _sgd_by_data(ctx: Any, **kwargs: Any) -> float:
    """sgd_classifier declared as a data-fidelity objective: the re-training ladder's arm."""
    return float(sgd_classifier(ctx, **kwargs))


_sgd_by_data.hpod_fidelity = "data"  # type: ignore[attr-defined]


class Task:
    """An objective in its three forms (continued, pruned by steps, by data) and its space."""

    def __init__(
        self,
        resumable: Callable[..., float],
        stepwise: Callable[..., float],
        by_data: Callable[..., float] | None,
        kwargs: dict[str, Any],
        space: Callable[[optuna.Trial], dict[str, Any]],
        steps: int,
        min_resource: int = 1,
    ) -> None:
        self.resumable, self.stepwise, self.by_data = resumable, stepwise, by_data
        self.kwargs, self.space, self.steps = kwargs, space, steps
        self.min_resource = min_resource


def make_task(name: str, data_seed: int) -> Task:
    if name == "boosting":
        kwargs = {"n_samples": 4000, "seed": data_seed}
        return Task(
            gb.gradient_boosting_rounds,
            boosting_by_chunks,
            gb.gradient_boosting,
            kwargs,
            boosting_space,
            ROUNDS,
            CHECKPOINTS[0],
        )
    if name == "sgd":
        kwargs = {"passes": 30, "seed": data_seed}
        return Task(sgd_classifier, sgd_classifier, _sgd_by_data, kwargs, sgd_space, 30)
    kwargs = {"epochs": 27, "seed": data_seed}
    return Task(mlp_digits, mlp_digits, None, kwargs, mlp_space, 27)


class PausedAsPruned(optuna.samplers.BaseSampler):
    """`inner`, reading each continued trial not told yet (paused, or running to its next
    rung) as a PRUNED trial whose intermediate values are its rung values: TPE then ranks it
    as it ranks pruned trials (after the complete ones, by the highest rung reached and its
    value there). Nothing changes in the storage; the trial can still be promoted."""

    def __init__(self, inner: optuna.samplers.BaseSampler, promotions: Promotions) -> None:
        self.inner, self.promotions = inner, promotions

    def view(self, study: Any) -> Any:
        paused = {n: dict(r.values) for n, r in self.promotions.records.items() if r.values}
        return _StudyView(study, paused) if paused else study

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self.inner.infer_relative_search_space(self.view(study), trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self.inner.sample_relative(self.view(study), trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return self.inner.sample_independent(self.view(study), trial, name, dist)


class _StudyView:
    """A study whose RUNNING trials named in `paused` read as PRUNED (Optuna's samplers read
    trials through the private ``Study._get_trials``)."""

    def __init__(self, study: optuna.Study, paused: dict[int, dict[float, float]]) -> None:
        self._study, self._paused = study, paused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self, deepcopy: bool = True, states: Any = None, use_cache: bool = False
    ) -> list[optuna.trial.FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=None, use_cache=use_cache)
        shown = [self._shown(t) for t in trials]
        return [t for t in shown if states is None or t.state in states]

    def _shown(self, trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
        values = self._paused.get(trial.number)
        if trial.state != optuna.trial.TrialState.RUNNING or not values:
            return trial
        return optuna.trial.FrozenTrial(
            number=trial.number,
            state=optuna.trial.TrialState.PRUNED,
            value=None,
            values=None,
            datetime_start=trial.datetime_start,
            datetime_complete=None,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=trial.system_attrs,
            intermediate_values={round(r * 1_000_000): v for r, v in values.items()},
            trial_id=trial._trial_id,
        )


Trace = list[tuple[float, float]]  # (cumulative CPU, running best over complete trials)


class Curve:
    """Cumulative CPU and running best, as bench/quality.py reads them."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.best = math.inf
        self.trace: Trace = []
        self.bests: list[float] = []  # running best after each trial told
        self.told_cpu: list[float] = []  # cumulative CPU after each trial told
        self.pruned = 0

    def spend(self, cpu: float) -> None:
        self.cpu += cpu
        self.trace.append((self.cpu, self.best))

    def complete(self, value: float) -> None:
        self.best = min(self.best, value)
        self.trace.append((self.cpu, self.best))

    def told(self) -> None:
        self.bests.append(self.best)
        self.told_cpu.append(self.cpu)

    def at(self, budget: float) -> float:
        """The running best once `budget` CPU seconds are spent (quality at equal compute)."""
        return next((best for cpu, best in reversed(self.trace) if cpu <= budget), math.inf)

    def to_target(self, target: float) -> float:
        return next((cpu for cpu, best in self.trace if best <= target), math.inf)


def tpe(seed: int, liar: bool = False) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=liar)


def stepwise(task: Task, seed: int, trials: int, pruner: optuna.pruners.BasePruner) -> Curve:
    """Plain TPE (`NopPruner`) or TPE with one of Optuna's pruners on the reported steps."""
    study = optuna.create_study(sampler=tpe(seed), pruner=pruner, study_name=f"bench-{seed}")
    curve = Curve()
    for _ in range(trials):
        trial = study.ask()
        ctx = TrialContext(task.space(trial), reporter=_TrialReporter(trial))
        # Plain runs the objective as shipped, in one go (no chunked reports to pay for).
        fn = task.resumable if isinstance(pruner, optuna.pruners.NopPruner) else task.stepwise
        started = time.process_time()
        try:
            value: float | None = float(fn(ctx, **task.kwargs))
        except (TrialPruned, optuna.TrialPruned):
            value = None
        curve.spend(time.process_time() - started - ctx.reporter_cpu)
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            curve.pruned += 1
        else:
            study.tell(trial, value)
            curve.complete(value)
        curve.told()
    return curve


class _TrialReporter:
    """Reports and prune decisions straight to an Optuna trial (its pruner decides)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)

    def should_prune(self) -> bool:
        return self.trial.should_prune()


class ModePruners(optuna.pruners.BasePruner):
    """A mode's pruners for a step-fidelity objective, asked as the worker asks them."""

    def __init__(self, mode: str) -> None:
        spec = StudySpec.model_validate(
            {
                "name": "bench",
                "objective": "sgd_classifier",
                "space": {"x": {"type": "float", "low": 0, "high": 1}},
                "budget": {"trials": 1},
            }
        )
        plan = compose_plan(spec, mode, load_modes(None)[mode], None, "epochs")
        self.pruners = build_pruners(
            plan.pruner, plan.pruner_options, plan.threshold, plan.threshold_min_trials
        )

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        try:
            return should_prune(study, trial, self.pruners)
        finally:
            study.pruner = self  # should_prune sets each pruner in turn as the study's


class PrunerList(optuna.pruners.BasePruner):
    """Several pruners asked as the worker asks them: a trial stops when any says so."""

    def __init__(self, pruners: list[optuna.pruners.BasePruner]) -> None:
        self.pruners = pruners

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        try:
            return should_prune(study, trial, self.pruners)
        finally:
            study.pruner = self


def pruner_of(arm: str, task: Task) -> optuna.pruners.BasePruner:
    if arm in MODE_ARMS:
        return ModePruners(arm)
    if arm.startswith("spread"):  # balanced's median + gate, and a spread margin of <k>
        return PrunerList(step_rules.pruners_of(arm))
    if arm.startswith("p") and arm[1:].isdigit():  # percentile <p> behind the 0.5 gate
        options = {"percentile": float(arm[1:]), "min_agreement": 0.5}
        return PrunerList(build_pruners("percentile", options))
    if arm == "median":
        return optuna.pruners.MedianPruner()
    if arm.startswith("median-w"):  # median held back for a share of the steps, in percent
        return ShareWarmup(optuna.pruners.MedianPruner(), int(arm[len("median-w") :]) / 100)
    if arm.startswith("median-a"):  # median where the early order agrees, rho in percent
        return AgreementGate(optuna.pruners.MedianPruner(), int(arm[len("median-a") :]) / 100)
    if arm == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(reduction_factor=3)
    if arm == "hyperband":
        return optuna.pruners.HyperbandPruner(task.min_resource, task.steps)
    return optuna.pruners.NopPruner()


class OptunaReporter:
    """The worker's StorageReporter, on an in-memory study."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, pruners: list[Any]) -> None:
        self.study, self.trial, self.pruners = study, trial, pruners

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)

    def should_prune(self) -> bool:
        frozen = self.study._storage.get_trial(self.trial._trial_id)
        return should_prune(self.study, frozen, self.pruners)


def ladder(task: Task, seed: int, trials: int) -> Curve:
    """The re-training data ladder with successive halving (hpod without continuation)."""
    assert task.by_data is not None, "this task has no data fidelity"
    study = optuna.create_study(sampler=tpe(seed))
    pruners = build_pruners("successive_halving", {"reduction_factor": 3}, 0.0, 8, LADDER)
    curve = Curve()
    for _ in range(trials):
        trial = study.ask()
        reporter = OptunaReporter(study, trial, pruners)
        result = evaluate(task.by_data, task.space(trial), task.kwargs, LADDER, reporter)
        curve.spend(result.cpu_seconds)
        if result.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            curve.pruned += 1
        else:
            assert result.values is not None
            study.tell(trial, result.values[0])
            curve.complete(result.values[0])
        curve.told()
    return curve


def continued(
    task: Task, seed: int, trials: int, root: Path, arm: str, rungs: tuple[float, ...], eta: int
) -> Curve:
    """Continuation driven as the study loop drives it (one slot)."""
    promotions = Promotions(rungs, eta=eta)
    sampler: optuna.samplers.BaseSampler = tpe(seed, liar=arm == "liar")
    if arm == "view":
        sampler = PausedAsPruned(sampler, promotions)
    study = optuna.create_study(sampler=sampler)
    store = CheckpointStore(root / f"{arm}-{seed}")
    curve = Curve()
    running: dict[int, optuna.Trial] = {}
    params: dict[int, dict[str, Any]] = {}
    asked = 0

    def run(number: int, to: float) -> None:
        trial = running[number]
        job = Continuation(store, "bench", trial._trial_id, to)
        # No step pruner: the promotions are the pruning (and the sampler reads their values).
        result = evaluate_continued(task.resumable, params[number], task.kwargs, NoPruning(), job)
        curve.spend(result.cpu_seconds)
        assert result.values is not None
        if to >= 1.0:
            study.tell(trial, result.values[0])
            promotions.told(number, result.values[0])
            del running[number]
            curve.complete(result.values[0])
            curve.told()
        else:
            promotions.paused(
                number, to, result.values[0], result.cpu_seconds, result.data_evaluated
            )

    while True:
        promotion = promotions.next_promotion(final=asked >= trials)
        if promotion is not None:
            number, to = promotion
            promotions.dispatched(number, to)
            run(number, to)
            continue
        if asked >= trials:
            break
        trial = study.ask()
        asked += 1
        running[trial.number] = trial
        params[trial.number] = task.space(trial)
        promotions.dispatched(trial.number, rungs[0])
        run(trial.number, rungs[0])
    for trial in list(running.values()):
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        store.delete("bench", trial._trial_id)
        curve.pruned += 1
    return curve


def run_arm(
    arm: str, task: Task, seed: int, trials: int, root: Path, rungs: tuple[float, ...], eta: int
) -> Curve:
    if arm == "ladder":
        return ladder(task, seed, trials)
    if arm == "continued4":  # one more rung below the first (1/27 with the default rungs)
        return continued(task, seed, trials, root, arm, (rungs[0] / eta, *rungs), eta)
    if arm in CONTINUED:
        return continued(task, seed, trials, root, arm, rungs, eta)
    return stepwise(task, seed, trials, pruner_of(arm, task))


def _x(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.2f}x"


def _cell(ratio: Any) -> str:
    return f"{_x(ratio.value)} [{_x(ratio.low)}, {_x(ratio.high)}]"


def _s(value: float) -> str:
    return "-" if math.isinf(value) else f"{value:.1f}"


def report(curves: dict[str, dict[int, Curve]], trials: int, rng: np.random.Generator) -> None:
    """The table: per arm, compute to T per seed, reached, ratio to plain with its interval,
    final best, total CPU; then continued against the best pruner arm."""
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # percentiles over inf draws
    plain = curves["plain"]
    target = statistics.median(c.bests[trials - 1] for c in plain.values())
    to_t = {arm: {s: c.to_target(target) for s, c in runs.items()} for arm, runs in curves.items()}
    print(f"target T = {target:.5f} (plain's median best after {trials} trials)")
    print(
        "| arm | CPU to T per seed (s) | reached | median to T | x plain [95 % CI] | "
        "final best (median) | total CPU (median) | pruned (median) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for arm, runs in curves.items():
        cpu = to_t[arm]
        median = statistics.median(cpu.values())
        ratio = bootstrap_ratio(to_t["plain"], cpu, rng)
        print(
            f"| {arm} | {', '.join(_s(v) for v in cpu.values())} | "
            f"{sum(not math.isinf(v) for v in cpu.values())}/{len(cpu)} | {_s(median)} s | "
            f"{_cell(ratio)} | {statistics.median(c.best for c in runs.values()):.5f} | "
            f"{statistics.median(c.cpu for c in runs.values()):.1f} s | "
            f"{statistics.median(c.pruned for c in runs.values()):.0f} |"
        )
    finals = {arm: {s: c.best for s, c in runs.items()} for arm, runs in curves.items()}
    for arm in [a for a in CONTINUED if a in curves]:
        for other in ["plain", *PRUNERS]:
            if other in finals:
                low, mid, high = paired_difference(finals[arm], finals[other], rng)
                print(
                    f"final best, {arm} - {other}: mean {mid:+.5f} [{low:+.5f}, {high:+.5f}] "
                    "(paired over seeds; negative: continuation better)"
                )
    # Quality at equal compute: every arm's running best once it has spent what plain spends
    # on `trials` trials (median over seeds), paired against plain and the median pruner.
    budget = statistics.median(
        c.told_cpu[min(trials, len(c.told_cpu)) - 1] for c in curves["plain"].values()
    )
    at_budget = {arm: {s: c.at(budget) for s, c in runs.items()} for arm, runs in curves.items()}
    print(f"quality at equal compute: the running best after {budget:.1f} CPU s")
    for arm in curves:
        for other in [o for o in ("plain", "median", "balanced") if o in curves and o != arm]:
            low, mid, high = paired_difference(at_budget[arm], at_budget[other], rng)
            print(
                f"at {budget:.1f} s, {arm} - {other}: mean {mid:+.5f} [{low:+.5f}, {high:+.5f}] "
                f"(median {arm} {statistics.median(at_budget[arm].values()):.5f})"
            )
    pruners = [a for a in PRUNERS if a in curves]
    for arm in [a for a in MODE_ARMS if a in curves]:
        for other in [a for a in ("sha", "median") if a in curves]:
            low, mid, high = paired_difference(finals[arm], finals[other], rng)
            ratio = bootstrap_ratio(to_t[other], to_t[arm], rng)
            print(
                f"{arm} vs {other}: to T, {other}'s median / {arm}'s = {_cell(ratio)}; "
                f"final best {arm} - {other}: mean {mid:+.5f} [{low:+.5f}, {high:+.5f}]"
            )
    for arm in [a for a in CONTINUED if a in curves]:
        for other in pruners:
            ratio = bootstrap_ratio(to_t[other], to_t[arm], rng)
            wins = sum(to_t[arm][s] < to_t[other][s] for s in to_t[arm])
            print(
                f"{arm} vs {other}: {other}'s median / {arm}'s = {_cell(ratio)}; "
                f"{arm} sooner on {wins}/{len(to_t[arm])} seeds"
            )


def paired_difference(
    mine: dict[int, float], other: dict[int, float], rng: np.random.Generator
) -> tuple[float, float, float]:
    """The mean over seeds of mine - other, with a bootstrap 95 % interval (seeds resampled)."""
    diffs = np.array([mine[s] - other[s] for s in mine if s in other])
    draws = [rng.choice(diffs, len(diffs)).mean() for _ in range(2000)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(diffs.mean()), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["boosting", "sgd", "mlp"], default="sgd")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="sampler seeds start here")
    parser.add_argument("--data-seed", type=int, default=0, help="the objective's data seed")
    parser.add_argument("--trials", type=int, default=24, help="T's budget; every arm runs 2x")
    parser.add_argument("--arms", default="plain,median,sha,hyperband,continued")
    parser.add_argument("--rungs", default=",".join(map(str, LADDER)))
    parser.add_argument("--eta", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = make_task(args.task, args.data_seed)
    rungs = tuple(float(r) for r in args.rungs.split(","))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    arms = ["plain", *[a for a in args.arms.split(",") if a != "plain"]]
    print(
        f"{task.resumable.__name__}, kwargs {task.kwargs}; sampler seeds {seeds}; "
        f"{2 * args.trials} trials per arm; rungs {rungs}, eta {args.eta}"
    )
    # Imports and the cached data set are paid once here, by no arm's first trial.
    task.stepwise(TrialContext(task.space(optuna.trial.FixedTrial(WARM_UP[args.task]))))
    task.resumable(TrialContext(task.space(optuna.trial.FixedTrial(WARM_UP[args.task]))))
    curves: dict[str, dict[int, Curve]] = {arm: {} for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # seed-major: a run cut short still has paired seeds
            for arm in arms:
                curves[arm][seed] = run_arm(
                    arm, task, seed, 2 * args.trials, Path(tmp), rungs, args.eta
                )
            print(
                f"seed {seed}: "
                + ", ".join(
                    f"{a} {curves[a][seed].best:.5f}/{curves[a][seed].cpu:.1f}s" for a in arms
                ),
                flush=True,
            )
    report(curves, args.trials, np.random.default_rng(0))


if __name__ == "__main__":
    main()
