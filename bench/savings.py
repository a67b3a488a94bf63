"""Compute savings at equal compute: hpod against the simple Optuna set-ups (issue 13, item 7).

Every configuration runs as a study of one `hpod run` daemon (embedded broker, journal
storage, `--workers` local worker processes, as many trials in flight), on the same tasks,
seeds and parallelism, transfer off (each study starts cold: no warm start from an earlier
seed's study of the task), and every study gets the same budget in compute: ``budget.cpu_seconds``
= the task's full evaluations N * the CPU seconds of one full evaluation (measured by an
unmeasured warm-up study per task). So a configuration that prunes or caches runs more
trials, one that does not runs about N, and none is favoured by a trial count.

Configurations are data (`CONFIGS`): a name, the mode it runs in (a packaged mode, or one
this benchmark writes into ``HPOD_MODES_FILE``: `BENCH_MODES`) and the study's strategy
setting (``auto``, ``mode`` or a strategy's name). A new mechanism is one line: a policy
added to `hpod.modes.ALL_POLICIES` gets its ``balanced-no-<policy>`` ablation by itself; a
new strategy is ``Config("balanced-<name>", "balanced", "<name>", ABLATION, ...)``.

- ``tpe`` is plain Optuna: default TPE, full data, no pruning, no cache, no batching. It is
  the yardstick: T = median over seeds of its best within the budget (the worse middle value
  for an even number of seeds); a ratio = its median
  CPU seconds to reach T ÷ the configuration's (a seed never reaching T counts as infinite).
- ``cmaes``, ``gp``, ``tpe-median``, ``tpe-hyperband`` are the other simple set-ups (the
  pruners on the task's own steps: the data ladder's rungs, or the epochs it reports).
- ``balanced``, ``fast``, ``thorough``: hpod's modes with strategy ``auto`` (the default).
- ``balanced-no-<policy>``, ``balanced-mode``: one mechanism off.

Each ratio has a bootstrap 95 % interval over seeds (resampling seeds, paired: the same
seeds for both configurations). Beside CPU in the objective, the wall-clock time to T and
the total CPU of the daemon's process tree (daemon + workers, sampled while the study runs)
to T are compared the same way. The issue's targets are printed with PASS / MISS.

    .venv/bin/python bench/savings.py                  # full: 10 seeds, --workers 1 and 4
    .venv/bin/python bench/savings.py --quick          # smoke: 1 seed, small budgets, 4 workers
    .venv/bin/python bench/savings.py --tasks forest --configs tpe,balanced --seeds 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import math
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import psutil
from quality import (
    Daemon,
    _code_fingerprint,
    _git_commit,
    _machine,
    _plain_json,
    _raise_on_sigterm,
    modes_toml,
    packaged_modes,
    table,
)

from hpod.client import Client
from hpod.engine import COST_ATTR, make_storage
from hpod.modes import ALL_POLICIES
from hpod.transfer.store import was_dropped

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
START_MARK = "<!-- savings:start -->"
END_MARK = "<!-- savings:end -->"

STUDY_TIMEOUT = 1800.0  # seconds: a study taking longer is stuck, not slow
POLL_SECONDS = 0.25  # how often a running study's status and its process tree's CPU are read
BOOTSTRAP_REPS = 2000
#: A study may not run more than this many times its full evaluations in trials: a sampler
#: that repeats cached configurations spends no compute, and must still end.
TRIAL_CAP = 12
#: Full evaluations (random configurations: TPE's start-up) whose mean CPU is a task's unit.
UNIT_EVALUATIONS = 8

# --- targets (issue 13) ---------------------------------------------------------------------
LONG_FIDELITY_RATIO = 4.0
FAST_OVER_BALANCED = 2.0
FAST_QUALITY = 1.005
THOROUGH_QUALITY = 1.0


# --- tasks ---------------------------------------------------------------------------------


def _log_float(low: float, high: float) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high, "log": True}


def _int(low: int, high: int, log: bool = False) -> dict[str, Any]:
    return {"type": "int", "low": low, "high": high, "log": log}


def _when(param: str, *values: Any) -> dict[str, Any]:
    return {"param": param, "values": list(values)}


@dataclass(frozen=True)
class Task:
    """One tuning problem: objective, data (fixed across studies), space and budget."""

    name: str
    objective: str
    kwargs: dict[str, Any]
    #: The smaller data of a --quick run.
    quick_kwargs: dict[str, Any]
    space: dict[str, Any]
    #: The budget, in full evaluations N (converted to CPU seconds per task).
    full_evaluations: int
    quick_full_evaluations: int
    #: A long fidelity (>= 30 epochs or boosting rounds, or a superlinear fit): the target
    #: there is >= 4x plain TPE.
    long_fidelity: bool
    #: Part of a --quick run.
    quick: bool
    about: str


def _bbob(function: str, quick: bool) -> Task:
    space = {f"x{i}": {"type": "float", "low": -5.0, "high": 5.0} for i in range(5)}
    return Task(
        name=f"bbob_{function}",
        objective="bbob",
        kwargs={"function": function, "dim": 5, "instance": 1, "repeat": 2000},
        quick_kwargs={"function": function, "dim": 5, "instance": 1, "repeat": 500},
        space=space,
        full_evaluations=40,
        quick_full_evaluations=12,
        long_fidelity=False,
        quick=quick,
        about=(
            f"BBOB-style {function} in 5-D, f - f_opt (0 at the optimum); each evaluation "
            "repeated so that it costs a few ms of CPU; no fidelity."
        ),
    )


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="gbm_large",
            objective="gradient_boosting",
            kwargs={"n_samples": 200_000, "n_features": 20, "n_informative": 8, "seed": 0},
            quick_kwargs={"n_samples": 8_000, "n_features": 10, "n_informative": 6, "seed": 0},
            space={
                "learning_rate": _log_float(0.01, 0.5),
                "max_iter": _int(30, 200),
                "max_leaf_nodes": _int(4, 64, log=True),
                "min_samples_leaf": _int(2, 100, log=True),
                "l2_regularization": _log_float(1e-6, 10.0),
            },
            full_evaluations=20,
            quick_full_evaluations=5,
            long_fidelity=True,
            quick=True,
            about=(
                "HistGradientBoosting on 200,000 generated rows (quick: 8,000), 30-200 "
                "boosting rounds, validation log-loss; data fidelity."
            ),
        ),
        Task(
            name="mlp_epochs",
            objective="mlp_digits",
            kwargs={"epochs": 30, "seed": 0},
            quick_kwargs={"epochs": 4, "seed": 0},
            space={
                "lr": _log_float(1e-4, 1e-1),
                "hidden": _int(16, 256, log=True),
                "layers": _int(1, 3),
                "dropout": {"type": "float", "low": 0.0, "high": 0.5},
                "weight_decay": _log_float(1e-6, 1e-2),
                "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
            },
            full_evaluations=20,
            quick_full_evaluations=5,
            long_fidelity=True,
            quick=True,
            about=(
                "PyTorch MLP on the digits, 30 epochs (quick: 4), validation cross-entropy; "
                "epoch fidelity (it reports every epoch)."
            ),
        ),
        Task(
            name="svc_cv",
            # `svc_cv` reports each fold, so the fold rule can stop a loser between folds;
            # `svc_breast_cancer` averages its folds inside one call and never could.
            objective="svc_cv",
            kwargs={"folds": 5, "seed": 0},
            quick_kwargs={"n_samples": 1500, "folds": 5, "seed": 0},
            space={
                "C": _log_float(1e-3, 1e3),
                "gamma": _log_float(1e-4, 10.0),
                "kernel": {"type": "categorical", "choices": ["rbf", "linear", "poly"]},
                "degree": {**_int(2, 5), "condition": _when("kernel", "poly")},
            },
            full_evaluations=30,
            quick_full_evaluations=6,
            long_fidelity=False,
            quick=True,
            about=(
                "SVC on 3,000 generated rows (quick: 1,500) scored by 5-fold CV (error rate); "
                "fold fidelity (it reports every fold)."
            ),
        ),
        Task(
            name="pipeline",
            objective="model_choice",
            kwargs={"n_samples": 6000, "seed": 0},
            quick_kwargs={"n_samples": 2000, "seed": 0},
            space={
                "model": {"type": "categorical", "choices": ["logreg", "knn", "svc", "tree"]},
                "scale": {"type": "categorical", "choices": [True, False]},
                "logreg_C": {**_log_float(1e-3, 1e3), "condition": _when("model", "logreg")},
                "knn_k": {**_int(1, 100, log=True), "condition": _when("model", "knn")},
                "knn_weights": {
                    "type": "categorical",
                    "choices": ["uniform", "distance"],
                    "condition": _when("model", "knn"),
                },
                "svc_C": {**_log_float(1e-2, 1e3), "condition": _when("model", "svc")},
                "svc_gamma": {**_log_float(1e-4, 1.0), "condition": _when("model", "svc")},
                "tree_depth": {**_int(1, 30), "condition": _when("model", "tree")},
                "tree_min_leaf": {**_int(1, 100, log=True), "condition": _when("model", "tree")},
            },
            full_evaluations=30,
            quick_full_evaluations=6,
            long_fidelity=False,
            quick=True,
            about=(
                "A pipeline choosing its model (logistic regression, k-NN, RBF SVC, tree) "
                "and scaling, each model's parameters conditional; validation error; data "
                "fidelity."
            ),
        ),
        Task(
            name="forest",
            objective="random_forest",
            kwargs={"n_samples": 6_000, "seed": 0},
            quick_kwargs={"n_samples": 1_000, "seed": 0},
            space={
                "n_estimators": _int(10, 200),
                "max_depth": _int(2, 32, log=True),
                "min_samples_leaf": _int(1, 64, log=True),
                "max_features": {"type": "float", "low": 0.05, "high": 1.0},
            },
            full_evaluations=20,
            quick_full_evaluations=5,
            long_fidelity=False,
            quick=True,
            about=(
                "Random forest on 6,000 generated rows (quick: 1,000), validation "
                "log-loss; data fidelity."
            ),
        ),
        _bbob("rosenbrock", quick=True),
        _bbob("ellipsoid", quick=False),
        _bbob("rastrigin", quick=False),
    )
}


# --- configurations ------------------------------------------------------------------------

SIMPLE, HPOD, ABLATION = "simple", "hpod", "ablation"


@dataclass(frozen=True)
class Config:
    """One set-up: the mode a study runs in and its strategy setting."""

    name: str
    mode: str
    strategy: str
    kind: str
    about: str


def _bench_mode(sampler: str, pruner: str = "none", **knobs: Any) -> dict[str, Any]:
    """A simple set-up as a mode: every knob written out, no policy unless given."""
    return {
        "description": f"bench/savings.py: {sampler}, pruner {pruner}",
        "policies": knobs.pop("policies", []),
        "sampler": sampler,
        "sampler_options": {},
        "pruner": pruner,
        "pruner_options": knobs.pop("pruner_options", {}),
        "threshold": 0.0,
        "ladder": knobs.pop("ladder", [1.0]),
        "batch_seconds": 0.0,
        "max_pack": 1,
    }


#: The task's own steps: the data ladder's rungs (for an objective that subsamples) or the
#: epochs it reports; pruning needs the pruning policy, the ladder the subsampling one.
_STEPS = {"policies": ["subsampling", "pruning"], "ladder": [0.111111, 0.333333, 1.0]}

BENCH_MODES: dict[str, dict[str, Any]] = {
    "bench-tpe": _bench_mode("tpe"),
    "bench-cmaes": _bench_mode("cmaes"),
    "bench-gp": _bench_mode("gp"),
    "bench-tpe-median": _bench_mode(
        "tpe", "median", pruner_options={"n_startup_trials": 5}, **_STEPS
    ),
    "bench-tpe-hyperband": _bench_mode("tpe", "hyperband", **_STEPS),
}


def ablation_modes() -> dict[str, dict[str, Any]]:
    """balanced with one efficiency policy off, generated from the packaged balanced mode
    (so that they follow it, and a new policy gets its ablation)."""
    balanced = packaged_modes()["balanced"]
    return {
        f"balanced-no-{policy}": {
            **balanced,
            "description": f"balanced without the {policy} policy (ablation)",
            "policies": [p for p in balanced["policies"] if p != policy],
        }
        for policy in ALL_POLICIES
    }


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("tpe", "bench-tpe", "mode", SIMPLE, "plain Optuna: default TPE, full data"),
        Config("cmaes", "bench-cmaes", "mode", SIMPLE, "plain CMA-ES"),
        Config("gp", "bench-gp", "mode", SIMPLE, "Optuna's GPSampler"),
        Config("tpe-median", "bench-tpe-median", "mode", SIMPLE, "TPE + median on the steps"),
        Config("tpe-hyperband", "bench-tpe-hyperband", "mode", SIMPLE, "TPE + Hyperband"),
        Config("balanced", "balanced", "auto", HPOD, "hpod's default"),
        Config("fast", "fast", "auto", HPOD, "hpod fast"),
        Config("thorough", "thorough", "auto", HPOD, "hpod thorough"),
        *(
            Config(f"balanced-no-{p}", f"balanced-no-{p}", "auto", ABLATION, f"{p} off")
            for p in ALL_POLICIES
        ),
        Config("balanced-mode", "balanced", "mode", ABLATION, "strategy policy off"),
    )
}
BASELINE = "tpe"
#: A --quick run: the simple set-ups but Hyperband, the modes, one ablation.
QUICK_CONFIGS = ["tpe", "cmaes", "gp", "tpe-median", "balanced", "fast", "thorough"]
QUICK_CONFIGS += ["balanced-no-pruning"]


def all_modes() -> dict[str, dict[str, Any]]:
    """The modes this benchmark writes into the daemon's ``HPOD_MODES_FILE``."""
    return {**BENCH_MODES, **ablation_modes()}


# --- the daemon ----------------------------------------------------------------------------

#: Objectives this benchmark needs, by their module path, for a venv installed before they
#: were added to the entry points (the daemon's `objectives` setting registers them).
BENCH_OBJECTIVES = {
    "random_forest": "hpod.workers.objectives.forest:random_forest",
    "model_choice": "hpod.workers.objectives.pipeline:model_choice",
    "bbob": "hpod.workers.objectives.bbob:bbob",
    "svc_cv": "hpod.workers.objectives.cv:svc_cv",
}


class BenchDaemon(Daemon):
    """quality.py's daemon with `workers` local worker processes and the bench objectives."""

    def __init__(self, modes_file_text: str, log_copy: Path, workers: int) -> None:
        super().__init__(modes_file_text, log_copy)
        self.workers = workers
        #: The largest tree CPU seen so far (`tree_cpu` never goes back).
        self._cpu_seen = 0.0

    def env(self) -> dict[str, str]:
        """The daemon's environment, as quality.py's, with the pool size and objectives."""
        env = super().env()
        installed = {ep.name for ep in entry_points(group="hpod.objectives")}
        missing = {k: v for k, v in BENCH_OBJECTIVES.items() if k not in installed}
        env["HPOD_LOCAL_WORKERS"] = str(self.workers)
        if missing:
            env["HPOD_OBJECTIVES"] = json.dumps(missing)
        return env

    def tree_cpu(self) -> float:
        """CPU seconds of the daemon and every descendant it ever had (the local workers).

        Each live process counts its own CPU plus that of the children it has reaped
        (``children_user``/``children_system``, which the kernel adds up transitively), so a
        worker process that exited (one ended at its CPU allowance, a recycled child) stays in
        the sum. Only a child not yet reaped is missing for a moment: the result is kept
        monotone so that moment cannot show as negative CPU.
        """
        if self.proc is None:
            return 0.0
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return self._cpu_seen
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        self._cpu_seen = max(self._cpu_seen, total)
        return self._cpu_seen


@contextlib.contextmanager
def running_daemon(workers: int, log_copy: Path) -> Iterator[BenchDaemon]:
    """A started daemon, stopped and removed whatever happens."""
    daemon = BenchDaemon(modes_toml(all_modes()), log_copy, workers)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        daemon.cleanup()


# --- one study -----------------------------------------------------------------------------


@dataclass
class Run:
    """One study: per finished trial (completion order) its CPU, the cumulative CPU, the
    seconds since the study was created, and the running best; the process tree's CPU
    sampled while it ran."""

    task: str
    config: str
    seed: int
    workers: int
    study: str
    budget_cpu: float
    wall_seconds: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    #: (seconds since creation, CPU seconds of daemon + workers since creation).
    tree_cpu: list[tuple[float, float]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    spent: dict[str, Any] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)

    @property
    def total_cpu(self) -> float:
        """CPU of every evaluation of the study."""
        return float(self.trials[-1]["cum_cpu"]) if self.trials else 0.0

    @property
    def final_best(self) -> float:
        """The best full-fidelity value found (inf if no trial completed)."""
        bests = [t["best"] for t in self.trials if t["best"] is not None]
        return float(bests[-1]) if bests else math.inf

    @property
    def best_at_budget(self) -> float:
        """The running best of the trials finished within the compute budget: the quality
        at exactly equal compute (trials in flight when the budget was spent finish past
        it and do not count; inf if none completed within it)."""
        best = math.inf
        for t in self.trials:
            if t["cum_cpu"] > self.budget_cpu:
                break
            if t["best"] is not None:
                best = float(t["best"])
        return best

    def first_reaching(self, target: float) -> dict[str, Any] | None:
        """The trial whose completion first brought the running best to `target`."""
        for t in self.trials:
            if t["best"] is not None and t["best"] <= target:
                return t
        return None

    def cpu_to(self, target: float) -> float:
        """CPU seconds in the objective until `target` was reached (inf: never)."""
        t = self.first_reaching(target)
        return math.inf if t is None else float(t["cum_cpu"])

    def wall_to(self, target: float) -> float:
        """Seconds from the study's creation until `target` was reached (inf: never)."""
        t = self.first_reaching(target)
        return math.inf if t is None else float(t["at"])

    def tree_cpu_to(self, target: float) -> float:
        """CPU of daemon + workers until `target` was reached (the first sample after)."""
        at = self.wall_to(target)
        if math.isinf(at):
            return math.inf
        later = [cpu for when, cpu in self.tree_cpu if when >= at]
        return later[0] if later else (self.tree_cpu[-1][1] if self.tree_cpu else math.inf)


def study_spec(
    task: Task,
    config: Config,
    seed: int,
    name: str,
    budget: dict[str, Any],
    workers: int,
    quick: bool,
) -> dict[str, Any]:
    """The study: only its name, mode, strategy and sampler seed differ within a task.

    Transfer is off: every study is of the same task, so with the default (``auto``) each
    seed's study would warm-start from the earlier seeds' and the warm-up's (every
    configuration, plain TPE included), and this benchmark measures cold compute against
    plain Optuna; transfer is measured by bench/transfer.py."""
    return {
        "name": name,
        "objective": task.objective,
        "objective_kwargs": task_kwargs(task, quick),
        "space": task.space,
        "directions": ["minimize"],
        "budget": budget,
        "mode": config.mode,
        "strategy": config.strategy,
        "max_concurrent": workers,
        "sampler": {"seed": seed},
        "transfer": "off",
    }


def task_kwargs(task: Task, quick: bool) -> dict[str, Any]:
    """The objective's kwargs of a run."""
    return task.quick_kwargs if quick else task.kwargs


def curve(trials: Sequence[optuna.trial.FrozenTrial], created: float) -> list[dict[str, Any]]:
    """Finished trials in completion order with cumulative CPU, time and running best (a
    transferred trial dropped before it was asked never ran: not one of them)."""
    finished = [
        t
        for t in trials
        if t.state.is_finished() and t.datetime_complete is not None and not was_dropped(t)
    ]
    finished.sort(key=lambda t: (t.datetime_complete, t.number))
    rows, cum, best = [], 0.0, math.inf
    for t in finished:
        cost = t.user_attrs.get(COST_ATTR) or {}
        cpu = float(cost.get("cpu") or 0.0)
        cum += cpu
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            best = min(best, float(t.value))
        assert t.datetime_complete is not None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "cpu": round(cpu, 6),
                "cum_cpu": round(cum, 6),
                "at": round(t.datetime_complete.timestamp() - created, 3),
                "best": None if math.isinf(best) else best,
                "cache": cost.get("cache"),
            }
        )
    return rows


def run_study(
    daemon: BenchDaemon, client: Client, storage: Any, spec: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[tuple[float, float]], dict[str, Any], float]:
    """Run one study to its end on an empty cache; its curve, the process tree's CPU over
    time, its final status and its wall time."""
    daemon.clear_cache()
    created, cpu0 = time.time(), daemon.tree_cpu()
    client.create_study(spec)
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + STUDY_TIMEOUT
    while True:
        status = client.status(spec["name"])
        samples.append((round(time.time() - created, 3), round(daemon.tree_cpu() - cpu0, 4)))
        if status["state"] in ("completed", "stopped", "failed") and not status["running"]:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {spec['name']} still running after {STUDY_TIMEOUT} s")
        time.sleep(POLL_SECONDS)
    wall = time.time() - created
    study = optuna.load_study(study_name=spec["name"], storage=storage)
    return curve(study.get_trials(deepcopy=False), created), samples, status, wall


def full_evaluation_cpu(
    daemon: BenchDaemon, client: Client, storage: Any, task: Task, quick: bool, workers: int
) -> float:
    """An unmeasured warm-up study of the task in plain TPE: every worker process pays its
    first-use costs (data, imports) there, and the mean CPU seconds of its complete full
    evaluations, leaving out the first `workers` to finish (those paid the first use), is
    the task's unit of compute.

    The mean over `UNIT_EVALUATIONS` configurations of TPE's random start-up, not the median
    of a couple: a full evaluation's CPU varies 2.7-26x across configurations (an SVC with a
    large C), so N units must be what N such evaluations cost. (A unit from two cheap
    configurations gave svc_cv a budget of 6 trials instead of 30.)"""
    name = f"warmup-{task.name}-w{workers}-{time.time_ns()}"
    budget = {"trials": workers + UNIT_EVALUATIONS}
    spec = study_spec(task, CONFIGS[BASELINE], 10_000, name, budget, workers, quick)
    run_study(daemon, client, storage, spec)
    trials = optuna.load_study(study_name=spec["name"], storage=storage).get_trials()
    trials = sorted(
        (t for t in trials if t.datetime_complete is not None), key=lambda t: t.datetime_complete
    )[workers:]
    full = [
        float(t.user_attrs[COST_ATTR]["full_cpu"])
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and (t.user_attrs.get(COST_ATTR) or {}).get("full_cpu") is not None
    ]
    if not full:
        raise RuntimeError(f"the warm-up of {task.name} completed no full evaluation")
    return statistics.fmean(full)


# --- analysis ------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    """The median, inf allowed."""
    ordered = sorted(values)
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    low, high = ordered[n // 2 - 1], ordered[n // 2]
    return math.inf if math.isinf(high) else (low + high) / 2


def _ratio(numerator: float, denominator: float) -> float:
    """Baseline ÷ configuration: inf when only the configuration reached, 0 when only the
    baseline did, nan when neither did."""
    if math.isinf(denominator):
        return math.nan if math.isinf(numerator) else 0.0
    if denominator <= 0:
        return math.inf
    return numerator / denominator


@dataclass
class Ratio:
    """A ratio of medians over seeds (baseline ÷ configuration) and its bootstrap 95 %
    interval."""

    value: float
    low: float
    high: float

    def text(self) -> str:
        """As a table shows it: 1.23x [0.90, 1.80]."""
        if math.isnan(self.value):
            return "neither reached"
        if self.value == 0:
            return "T not reached"
        return f"{_x(self.value)} [{_x(self.low)}, {_x(self.high)}]"


def _x(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    return f"{value:.2f}x"


def bootstrap_ratio(
    base: dict[int, float], mine: dict[int, float], rng: np.random.Generator
) -> Ratio:
    """median(base) / median(mine) over seeds, with a bootstrap 95 % interval: seeds are
    resampled with replacement, paired (the same draw for both) over the seeds both have."""
    seeds = sorted(set(base) & set(mine))
    if not seeds:
        return Ratio(math.nan, math.nan, math.nan)
    a = [base[s] for s in seeds]
    b = [mine[s] for s in seeds]
    value = _ratio(_median(a), _median(b))
    draws = []
    for _ in range(BOOTSTRAP_REPS):
        idx = rng.integers(0, len(seeds), len(seeds))
        draws.append(_ratio(_median([a[i] for i in idx]), _median([b[i] for i in idx])))
    finite = [d for d in draws if not math.isnan(d)]
    if not finite:
        return Ratio(value, math.nan, math.nan)
    low, high = np.percentile(finite, [2.5, 97.5])
    return Ratio(value, float(low), float(high))


@dataclass
class Cell:
    """One configuration on one task (one worker count), against plain TPE."""

    cpu: Ratio
    wall: Ratio
    tree: Ratio
    quality: float  # median best at the budget / T
    reached: int
    seeds: int
    trials: float  # median trials
    pruned: float
    cache_hits: float
    total_cpu: float  # median CPU in the objective
    budget_cpu: float
    #: Quality at the budget, configuration - plain TPE, paired by seed (lower: better).
    vs_plain: Diff = field(default_factory=lambda: Diff(math.nan, math.nan, math.nan, 0))
    #: The same against the simple set-up with the best median quality at the budget.
    vs_best_simple: Diff = field(default_factory=lambda: Diff(math.nan, math.nan, math.nan, 0))


@dataclass
class Diff:
    """The mean over seeds of a paired difference, its bootstrap 95 % interval and the
    number of seeds (those where both sides completed a trial within the budget)."""

    mean: float
    low: float
    high: float
    seeds: int

    def text(self) -> str:
        """As a table shows it: +0.0012 [-0.0003, +0.0030]."""
        if not self.seeds:
            return "n/a"
        return f"{self.mean:+.4g} [{self.low:+.4g}, {self.high:+.4g}]"


def paired_diff(mine: dict[int, float], base: dict[int, float], rng: np.random.Generator) -> Diff:
    """mean(mine - base) over the seeds where both are finite, with a bootstrap interval."""
    seeds = [s for s in mine if s in base and math.isfinite(mine[s]) and math.isfinite(base[s])]
    if not seeds:
        return Diff(math.nan, math.nan, math.nan, 0)
    diffs = np.array([mine[s] - base[s] for s in seeds])
    draws = [rng.choice(diffs, len(diffs)).mean() for _ in range(BOOTSTRAP_REPS)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return Diff(float(diffs.mean()), float(low), float(high), len(seeds))


def best_simple(runs: list[Run]) -> str:
    """The simple set-up with the best (lowest) median quality at the budget in `runs`."""
    simple = {r.config for r in runs if CONFIGS[r.config].kind == SIMPLE}
    return min(
        sorted(simple),
        key=lambda c: statistics.median(r.best_at_budget for r in runs if r.config == c),
    )


def analyse(runs: list[Run], rng: np.random.Generator) -> dict[str, Any]:
    """Target, and each configuration's ratios, for the runs of one task and worker count."""
    base = [r for r in runs if r.config == BASELINE]
    # The higher (worse) middle value for an even number of seeds: with the mean of the two,
    # exactly half of plain TPE's seeds reach T and its median CPU to T is infinite.
    target = statistics.median_high(r.best_at_budget for r in base)

    def by_seed(rs: list[Run], fn: Callable[[Run], float]) -> dict[int, float]:
        return {r.seed: fn(r) for r in rs}

    cells: dict[str, Cell] = {}
    for config in dict.fromkeys(r.config for r in runs):
        mine = [r for r in runs if r.config == config]
        cells[config] = Cell(
            cpu=bootstrap_ratio(
                by_seed(base, lambda r: r.cpu_to(target)),
                by_seed(mine, lambda r: r.cpu_to(target)),
                rng,
            ),
            wall=bootstrap_ratio(
                by_seed(base, lambda r: r.wall_to(target)),
                by_seed(mine, lambda r: r.wall_to(target)),
                rng,
            ),
            tree=bootstrap_ratio(
                by_seed(base, lambda r: r.tree_cpu_to(target)),
                by_seed(mine, lambda r: r.tree_cpu_to(target)),
                rng,
            ),
            quality=_quality(statistics.median(r.best_at_budget for r in mine), target),
            reached=sum(not math.isinf(r.cpu_to(target)) for r in mine),
            seeds=len(mine),
            trials=statistics.median(len(r.trials) for r in mine),
            pruned=statistics.median(r.counts.get("pruned", 0) for r in mine),
            cache_hits=statistics.median(sum(t["cache"] == "hit" for t in r.trials) for r in mine),
            total_cpu=statistics.median(r.total_cpu for r in mine),
            budget_cpu=statistics.median(r.budget_cpu for r in mine),
        )
    quality = {
        config: by_seed([r for r in runs if r.config == config], lambda r: r.best_at_budget)
        for config in cells
    }
    simple = best_simple(runs)
    for config, cell in cells.items():
        cell.vs_plain = paired_diff(quality[config], quality[BASELINE], rng)
        cell.vs_best_simple = paired_diff(quality[config], quality[simple], rng)
    return {"target": target, "cells": cells, "best_simple": simple}


def _quality(best: float, target: float) -> float:
    """Final best over T (<= 1: at least as good as plain TPE's median); for a target of 0
    (an exact optimum), 1 if reached, inf otherwise."""
    if target == 0:
        return 1.0 if best <= 0 else math.inf
    return best / target if target > 0 else target / best if best < 0 else math.inf


def verdicts(analysis: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """The issue's targets, per task and worker count: (what, measured, passed or None)."""
    out: list[tuple[str, str, bool | None]] = []
    for key, a in analysis.items():
        cells: dict[str, Cell] = a["cells"]
        task = TASKS[key.split("@")[0]]
        balanced = cells.get("balanced")
        if balanced is None:
            continue
        simple = {c: cells[c].cpu.value for c in cells if CONFIGS[c].kind == SIMPLE}
        best_simple = max(simple, key=lambda c: _finite_or(simple[c], -1.0))
        out.append(
            (
                f"{key}: balanced >= the best simple set-up ({best_simple})",
                f"{_x(balanced.cpu.value)} vs {_x(simple[best_simple])}",
                _ge(balanced.cpu.value, simple[best_simple]),
            )
        )
        out.append(
            (
                f"{key}: balanced's quality at equal compute not shown worse than the best "
                f"simple set-up's ({a['best_simple']})",
                balanced.vs_best_simple.text(),
                None if not balanced.vs_best_simple.seeds else balanced.vs_best_simple.low <= 0,
            )
        )
        if task.long_fidelity:
            out.append(
                (
                    f"{key}: balanced >= {LONG_FIDELITY_RATIO:g}x plain TPE (long fidelity)",
                    balanced.cpu.text(),
                    _ge(balanced.cpu.value, LONG_FIDELITY_RATIO),
                )
            )
        fast = cells.get("fast")
        if fast is not None:
            out.append(
                (
                    f"{key}: fast >= {FAST_OVER_BALANCED:g}x balanced's ratio, quality <= "
                    f"{FAST_QUALITY}",
                    f"{_x(fast.cpu.value)} vs {_x(balanced.cpu.value)}; quality {_q(fast.quality)}",
                    # A fast that never reaches T doubles nothing, even a balanced that
                    # never does either (0 >= 2 x 0 passed mlp_epochs at 6cfe47c).
                    _ge(fast.cpu.value, FAST_OVER_BALANCED * balanced.cpu.value)
                    and fast.cpu.value > 0
                    and fast.quality <= FAST_QUALITY,
                )
            )
        thorough = cells.get("thorough")
        if thorough is not None:
            out.append(
                (
                    f"{key}: thorough's quality at plain's compute <= {THOROUGH_QUALITY}",
                    _q(thorough.quality),
                    thorough.quality <= THOROUGH_QUALITY,
                )
            )
        out.append(
            (
                f"{key}: balanced's wall-clock to quality >= plain TPE's (ratio >= 1)",
                balanced.wall.text(),
                _ge(balanced.wall.value, 1.0),
            )
        )
        out.append(
            (
                f"{key}: balanced's total CPU (daemon + workers) to quality below plain's",
                balanced.tree.text(),
                _ge(balanced.tree.value, 1.0, strict=True),
            )
        )
    return out


def _q(quality: float) -> str:
    """A quality ratio; none completed within the budget shows as such."""
    return "none within the budget" if math.isinf(quality) else f"{quality:.3f}"


def _finite_or(value: float, default: float) -> float:
    return default if math.isnan(value) else value


def _ge(value: float, bound: float, strict: bool = False) -> bool | None:
    if math.isnan(value) or math.isnan(bound):
        return None
    return value > bound if strict else value >= bound


# --- report --------------------------------------------------------------------------------


def _config_rows(
    analysis: dict[str, dict[str, Any]],
    keys: list[str],
    configs: list[str],
    show: Callable[[Cell], str],
) -> list[list[str]]:
    """One row per configuration, one `show`n cell per task of `keys` ("-": not run)."""
    return [
        [config]
        + ["-" if (cell := analysis[k]["cells"].get(config)) is None else show(cell) for k in keys]
        for config in configs
    ]


def render(analysis: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown section: set-up, ratio tables per worker count, ablations, targets."""
    lines = [
        f"Measured {meta['date']} on {meta['machine']} with `{meta['command']}` "
        f"({meta['seeds']} seed{'s' if meta['seeds'] != 1 else ''}, workers "
        f"{', '.join(map(str, meta['workers']))}; wall time {meta['wall_minutes']:.1f} min). "
        f"Code: hpod {meta['hpod_commit']}; Optuna {meta['optuna']}.",
        "",
        "Every study's budget is `budget.cpu_seconds` = N full evaluations x the task's "
        "measured CPU of one (warm-up study), so every configuration spends the same "
        "compute. Quality at the budget = the running best of the trials finished within "
        "it (trials still in flight when it was spent finish past it and are not counted). "
        "T = median over seeds of plain TPE's quality at the budget (the worse middle value "
        "for an even number of seeds, so that at least half of them reach it). Each cell: "
        "plain TPE's "
        "median CPU in the objective to reach T ÷ the configuration's (a seed that never "
        "reaches T counts as infinite), with a paired bootstrap 95 % interval over seeds; "
        "in brackets the quality ratio (median quality at the budget / T, <= 1 is at least "
        "plain's).",
        "",
    ]
    for workers in meta["workers"]:
        keys = [k for k in analysis if k.endswith(f"@{workers}")]
        if not keys:
            continue
        configs = list(dict.fromkeys(c for k in keys for c in analysis[k]["cells"]))
        lines += [f"### {workers} worker{'s' if workers != 1 else ''}: CPU to quality", ""]
        rows = _config_rows(
            analysis, keys, configs, lambda cell: f"{cell.cpu.text()} ({_q(cell.quality)})"
        )
        lines += table(["configuration", *[k.split("@")[0] for k in keys]], rows)
        lines += [
            "",
            f"### {workers} worker{'s' if workers != 1 else ''}: quality at equal compute",
            "",
            "The running best at the budget, configuration - plain TPE, paired by seed: mean "
            "[bootstrap 95 %] (lower is better; an interval above 0: shown worse than plain "
            "TPE). Last row: balanced - the simple set-up with the best median quality on that "
            "task (named; chosen on these same runs, so it flatters the simple side).",
            "",
        ]
        rows = _config_rows(analysis, keys, configs, lambda cell: cell.vs_plain.text())
        row = ["balanced - best simple"]
        for k in keys:
            cell = analysis[k]["cells"].get("balanced")
            name = analysis[k]["best_simple"]
            row.append("-" if cell is None else f"{cell.vs_best_simple.text()} ({name})")
        rows.append(row)
        lines += table(["configuration", *[k.split("@")[0] for k in keys]], rows)
        lines += [
            "",
            f"### {workers} worker{'s' if workers != 1 else ''}: wall-clock and "
            "total CPU (daemon + workers) to quality",
            "",
        ]
        rows = _config_rows(
            analysis, keys, configs, lambda cell: f"{cell.wall.text()} / {cell.tree.text()}"
        )
        lines += table(["configuration (wall / total CPU)", *[k.split("@")[0] for k in keys]], rows)
        lines += [
            "",
            f"### {workers} worker{'s' if workers != 1 else ''}: what the runs did (medians)",
            "",
        ]
        rows = []
        for k in keys:
            a = analysis[k]
            for config, cell in a["cells"].items():
                rows.append(
                    [
                        k.split("@")[0],
                        config,
                        f"{a['target']:.5g}",
                        f"{cell.trials:g}",
                        f"{cell.pruned:g}",
                        f"{cell.cache_hits:g}",
                        f"{cell.total_cpu:.2f} / {cell.budget_cpu:.2f} s",
                        f"{cell.reached} of {cell.seeds}",
                    ]
                )
        lines += table(
            [
                "task",
                "configuration",
                "T",
                "trials",
                "pruned",
                "cache hits",
                "CPU spent / budget",
                "seeds reaching T",
            ],
            rows,
        )
        lines.append("")
    lines += ["### Targets (issue 13)", ""]
    verdict_rows = [
        [what, got, "n/a" if ok is None else "PASS" if ok else "MISS"]
        for what, got, ok in verdicts(analysis)
    ]
    lines += table(["target", "measured", "verdict"], verdict_rows)
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, help="sampler seeds per configuration (10; quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, small budgets")
    parser.add_argument("--tasks", help="comma-separated task names (default: all)")
    parser.add_argument("--configs", help="comma-separated configurations (default: all)")
    parser.add_argument("--workers", help="comma-separated worker counts (default 1,4; quick 4)")
    parser.add_argument("--out", type=Path, help="Markdown file (default docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, help="raw results (default bench/results/...)")
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: analyse the raw results of earlier runs again (their JSON or "
        "the progress files of runs split by task or stopped early, merged; a study in a "
        "later file replaces the same task, configuration, seed and workers of an earlier "
        "one), rewrite --out",
    )
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 10)
    args.task_list = (
        args.tasks.split(",")
        if args.tasks
        else [t.name for t in TASKS.values() if t.quick or not args.quick]
    )
    args.config_list = (
        args.configs.split(",") if args.configs else QUICK_CONFIGS if args.quick else list(CONFIGS)
    )
    args.worker_list = [int(w) for w in (args.workers or ("4" if args.quick else "1,4")).split(",")]
    unknown = set(args.task_list) - set(TASKS) | set(args.config_list) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown tasks or configurations: {sorted(unknown)}")
    if BASELINE not in args.config_list:
        parser.error(f"{BASELINE} is the baseline: it must be among --configs")
    # The smoke run's output is kept (committed) as a check, never as the headline table.
    suffix = "-smoke" if args.quick else ""
    args.out = args.out or (
        RESULTS / "savings-smoke.md" if args.quick else ROOT / "docs" / "benchmarks.md"
    )
    args.json = args.json or RESULTS / f"savings{suffix}.json"
    return args


def progress_path(json_path: Path) -> Path:
    """Where a run appends each finished study (one JSON line), so that a run stopped early
    or split across processes by ``--tasks`` still leaves its studies to ``--render``."""
    return json_path.with_suffix(".progress.jsonl")


def same_budget(kept: list[Run], loaded: list[Run]) -> list[Run]:
    """`kept` without the studies measured at another budget than their task's last run.

    Each run measures its task's unit (one full evaluation) again, so two runs of a task
    give it different CPU budgets; configurations from both would not be compared at equal
    compute. The budget of the task's last study loaded (of each worker count) wins; the
    others are dropped, and said so, to be measured again at that budget.
    """
    budget = {(r.task, r.workers): r.budget_cpu for r in loaded}
    dropped: dict[tuple[str, int], set[str]] = {}
    out = []
    for run in kept:
        if math.isclose(run.budget_cpu, budget[(run.task, run.workers)], rel_tol=1e-9):
            out.append(run)
        else:
            dropped.setdefault((run.task, run.workers), set()).add(run.config)
    for (task, workers), configs in sorted(dropped.items()):
        print(
            f"{task}@{workers}: dropped {', '.join(sorted(configs))}: measured at another "
            f"budget than the task's last run ({budget[(task, workers)]} CPU s)",
            flush=True,
        )
    return out


def load_runs(paths: Sequence[Path]) -> tuple[list[Run], dict[str, Any]]:
    """The studies of earlier runs, from their JSON payloads or progress files, and one
    meta describing them all (commands joined, wall times added)."""
    runs: list[Run] = []
    metas: list[dict[str, Any]] = []
    for path in paths:
        text = (
            gzip.decompress(path.read_bytes()).decode()
            if path.suffix == ".gz"
            else path.read_text()
        )
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            lines = [json.loads(line) for line in text.splitlines() if line.strip()]
            done = [line["done"] for line in lines if "done" in line]
            mine = [Run(**line["run"]) for line in lines if "run" in line]
            started = [
                {
                    **line["meta"],
                    "command": line["meta"]["command"] + " (stopped early)",
                    # The warm-up studies are not in the file: the studies' own wall time.
                    "wall_minutes": sum(r.wall_seconds for r in mine) / 60,
                }
                for line in lines
                if "meta" in line
            ]
            metas += done or started
            runs += mine
        else:
            payload = json.loads(text)
            metas.append(payload["meta"])
            runs += [Run(**r) for r in payload["runs"]]
    if not metas:
        raise SystemExit(f"no run's meta in {[str(p) for p in paths]}")
    # A study measured again in a later file (a configuration re-run after a change) replaces
    # the earlier one: the last of each task, configuration, seed and worker count is kept.
    latest = {(r.task, r.config, r.seed, r.workers): r for r in runs}
    runs = same_budget(list(latest.values()), runs)
    seeds_of: dict[tuple[str, str, int], set[int]] = {}
    for run in runs:
        seeds_of.setdefault((run.task, run.config, run.workers), set()).add(run.seed)
    meta = {
        **metas[0],
        "command": "; ".join(dict.fromkeys(m["command"] for m in metas)),
        "seeds": max((len(s) for s in seeds_of.values()), default=0),
        "workers": sorted({r.workers for r in runs}),
        "wall_minutes": sum(float(m.get("wall_minutes") or 0.0) for m in metas),
        "hpod_commit": ", ".join(dict.fromkeys(m["hpod_commit"] for m in metas)),
    }
    return runs, meta


def measure(
    args: argparse.Namespace, workers: int, tag: str, progress: Callable[[Run], None]
) -> list[Run]:
    """Every study of one worker count: task by task, seed by seed, each configuration."""
    runs: list[Run] = []
    log_copy = RESULTS / f"savings-daemon{'-smoke' if args.quick else ''}-w{workers}.log"
    with running_daemon(workers, log_copy) as daemon:
        client = Client(daemon.url, token=daemon.token, timeout=60)
        storage = make_storage(f"journal://{daemon.data_dir / 'studies.journal'}")
        for name in args.task_list:
            task = TASKS[name]
            unit = full_evaluation_cpu(daemon, client, storage, task, args.quick, workers)
            n = task.quick_full_evaluations if args.quick else task.full_evaluations
            budget_cpu = round(n * unit, 4)
            print(
                f"{name}: one full evaluation {unit:.4f} CPU s; budget {budget_cpu} s", flush=True
            )
            for seed in range(args.seeds):
                for config_name in args.config_list:
                    config = CONFIGS[config_name]
                    study = f"s-{name}-{config_name}-s{seed}-w{workers}-{tag}"
                    budget = {"cpu_seconds": budget_cpu, "trials": TRIAL_CAP * n}
                    spec = study_spec(task, config, seed, study, budget, workers, args.quick)
                    rows, samples, status, wall = run_study(daemon, client, storage, spec)
                    run = Run(
                        name,
                        config_name,
                        seed,
                        workers,
                        study,
                        budget_cpu,
                        wall,
                        rows,
                        samples,
                        dict(status.get("counts") or {}),
                        dict(status.get("spent") or {}),
                    )
                    if status.get("state") != "completed":
                        run.anomalies.append(f"ended in state {status.get('state')!r}")
                    runs.append(run)
                    progress(run)
                    print(
                        f"{name:<16} {config_name:<22} s{seed} w{workers}: best "
                        f"{run.final_best:.5g}, {len(rows)} trials, CPU {run.total_cpu:.2f} / "
                        f"{budget_cpu:.2f} s, wall {wall:.1f} s",
                        flush=True,
                    )
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, then report it."""
    args = parse_args(argv)
    if args.render is not None:
        runs, meta = load_runs(args.render)
        report(runs, meta, args.out, args.json)
        return 0
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.perf_counter()
    tag = dt.datetime.now().strftime("%H%M%S")
    commit, fingerprint = _git_commit(), _code_fingerprint()
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    progress_file = progress_path(args.json)
    command = " ".join([".venv/bin/python", "bench/savings.py", *(argv or sys.argv[1:])])

    def progress(run: Run) -> None:
        line = {"run": asdict(run)}
        with progress_file.open("a") as out:
            out.write(json.dumps(_plain_json(line), allow_nan=False) + "\n")

    def meta(wall_minutes: float, commit: str) -> dict[str, Any]:
        return {
            "date": dt.datetime.now().astimezone().isoformat(timespec="minutes"),
            "machine": _machine(),
            "command": command,
            "seeds": args.seeds,
            "workers": args.worker_list,
            "quick": args.quick,
            "wall_minutes": wall_minutes,
            "hpod_commit": commit,
            "optuna": optuna.__version__,
        }

    with progress_file.open("a") as out:
        out.write(json.dumps({"meta": meta(0.0, commit)}) + "\n")
    for workers in args.worker_list:
        runs += measure(args, workers, tag, progress)
    changed = "" if _code_fingerprint() == fingerprint else "; hpod/ changed during the run"
    done = meta((time.perf_counter() - started) / 60, commit + changed)
    with progress_file.open("a") as out:
        out.write(json.dumps({"done": done}) + "\n")
    report(runs, done, args.out, args.json)
    return 0


def report(runs: list[Run], meta: dict[str, Any], out: Path, json_path: Path) -> None:
    """Analyse, print, write the Markdown section and the raw JSON."""
    rng = np.random.default_rng(0)
    keys = list(dict.fromkeys(f"{r.task}@{r.workers}" for r in runs))
    analysis = {k: analyse([r for r in runs if f"{r.task}@{r.workers}" == k], rng) for k in keys}
    section = render(analysis, meta)
    print("\n" + section)
    for run in runs:
        for anomaly in run.anomalies:
            print("ANOMALY", run.study, anomaly)
    write_section(out, section)
    payload = {
        "meta": meta,
        "configs": {name: asdict(c) for name, c in CONFIGS.items()},
        "modes": all_modes(),
        "analysis": {
            k: {"target": a["target"], "cells": {c: asdict(v) for c, v in a["cells"].items()}}
            for k, a in analysis.items()
        },
        "targets": [{"target": w, "measured": m, "pass": ok} for w, m, ok in verdicts(analysis)],
        "runs": [asdict(r) for r in runs],
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_plain_json(payload), allow_nan=False) + "\n")
    print(f"wrote {out} and {json_path}")


def write_section(path: Path, body: str) -> None:
    """Put `body` between this benchmark's markers in `path` (appended if absent)."""
    block = f"{START_MARK}\n{body}{END_MARK}"
    text = path.read_text() if path.exists() else "# Compute savings (bench/savings.py)\n"
    if START_MARK in text and END_MARK in text:
        head, rest = text.split(START_MARK, 1)
        tail = rest.split(END_MARK, 1)[1]
        path.write_text(head + block + tail)
    else:
        path.write_text(text.rstrip("\n") + f"\n\n{block}\n")


if __name__ == "__main__":
    sys.exit(main())
