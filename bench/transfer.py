"""Transfer across studies: does a study of an objective seen before need less compute?

Related sequence (issue 15: "the same objective on shifted data"): gradient-boosted trees
(scikit-learn's ``HistGradientBoostingClassifier``, the model of the `gradient_boosting`
objective, validation log-loss) on five data sets drawn from **one** generated
classification problem (`PROBLEM_SEED`), each with its own sample of rows (generator seed),
class balance and size (`DATASETS`): next week's data, another customer's. Each later study
(2 to 5) is warm-started from the memories of the earlier ones of its sequence by the
daemon's own transfer code (`hpod.daemon.transfer.TransferDriver` on a journal-file
`StudyStore`, the study loop stood in for by `Loop`): configurations enqueued first, the
past surfaces given to TPE as a prior (`hpod.transfer.prior`), the agreement judge before
every ask, the memory written at the end. (The `gradient_boosting` objective's own ``seed``
kwarg makes a *different* problem per seed, not shifted data of one; docs/transfer.md shows
what that sequence gives.)

Three runs per data set and seed, all in-process, one trial at a time:

- **plain**: plain Optuna, its default sampler (TPE, the seed), nothing else: the reference.
  The target of data set d is the median over seeds of plain's final best on d;
- **hpod cold**: the study as the daemon runs it in the `balanced` mode (its sampler:
  multivariate TPE), transfer off;
- **hpod warm**: the same with transfer (`auto`; the mode's `transfer_share`, 0.25).

Compute is the CPU time of the objective calls (`time.process_time`, one OpenMP thread), so
the figures do not depend on the machine's other load. A run's compute to target is its
cumulative CPU when its running best first reaches the target; a run that never does is
censored at its total (shown as "reached"; censoring flatters the censored side).

Ratios are paired by seed (the same seed's cold and warm runs, on the same data), summarised
by their geometric mean over seeds (and data sets, for studies 2-5) with a bootstrap 95 %
interval resampling seeds.

Negative control: an unrelated objective that shares the parameter names (an analytic bowl
whose optimum sits where gradient boosting does badly: a low learning rate, few rounds) is
warm-started from the boosting memories by name (as naming the past studies would; the
same objective name so that similarity lets it), compared with itself cold. Its evaluations
cost microseconds, so its compute is counted in evaluations.

    python bench/transfer.py --seeds 10 --trials 30 --write   # `make bench`; the tables go
                                                              # into docs/benchmarks.md
    python bench/transfer.py --seeds 2 --trials 20            # a quick look

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpod.daemon.store import StudyStore  # noqa: E402
from hpod.daemon.transfer import TransferDriver, transfer_status  # noqa: E402
from hpod.engine import suggest  # noqa: E402
from hpod.modes import load_modes  # noqa: E402
from hpod.policies import PolicyChain  # noqa: E402
from hpod.policies.compose import resolve_plan  # noqa: E402
from hpod.policies.plan import Plan  # noqa: E402
from hpod.schema import Budget, StudySpec  # noqa: E402
from hpod.transfer.memory import MEMORY_ATTR  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

MODE = "balanced"
SPACE = {
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
    "max_iter": {"type": "int", "low": 20, "high": 300},
    "max_leaf_nodes": {"type": "int", "low": 4, "high": 128, "log": True},
    "min_samples_leaf": {"type": "int", "low": 2, "high": 100, "log": True},
    "l2_regularization": {"type": "float", "low": 0.0, "high": 10.0},
}
#: The generated problem every data set of the sequence is drawn from, and its pool of rows.
PROBLEM_SEED = 7
POOL_ROWS = 20_000
#: Five shifted data sets: another sample of rows, class balance and size each.
DATASETS: list[dict[str, Any]] = [
    {"sample": 1, "n_samples": 1000, "positive_share": 0.5},
    {"sample": 2, "n_samples": 1200, "positive_share": 0.4},
    {"sample": 3, "n_samples": 800, "positive_share": 0.6},
    {"sample": 4, "n_samples": 1400, "positive_share": 0.35},
    {"sample": 5, "n_samples": 1000, "positive_share": 0.55},
]
#: Rows each data set is validated on (other rows of the pool than its training rows). A
#: quarter of the data set (200 to 350 rows, the design measured before) made each data set's
#: measured optimum mostly the noise of its split (docs/benchmarks.md).
VALIDATION_ROWS = 5000
OBJECTIVE = "gradient_boosting_shifted"
CONTROL = 9  # the control's key in the run tables
SECTION = "transfer"

Objective = Callable[[dict[str, Any], dict[str, Any]], float]


def study_seed(seed: int, d: int) -> int:
    """The samplers' seed of data set `d`'s studies (plain, hpod cold, hpod warm: the same,
    so they pair) in sequence `seed`: another one per data set, so that a warm study's own
    random trials are not the very configurations its sources tried."""
    return 10 * seed + d


@lru_cache(maxsize=1)
def _pool() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=POOL_ROWS, n_features=20, n_informative=8, flip_y=0.01, random_state=PROBLEM_SEED
    )
    return x, y


@lru_cache(maxsize=8)
def _dataset(sample: int, n_samples: int, positive_share: float) -> tuple[np.ndarray, ...]:
    """A data set of the sequence, drawn with seed `sample` from the pool, `positive_share`
    of its rows of class 1: `n_samples` training rows and `VALIDATION_ROWS` other rows to
    validate on (the same class balance), as (x_train, x_val, y_train, y_val)."""
    x, y = _pool()
    rng = np.random.default_rng(sample)
    ones = rng.permutation(np.flatnonzero(y == 1))
    zeros = rng.permutation(np.flatnonzero(y == 0))
    train_ones = round(n_samples * positive_share)
    val_ones = round(VALIDATION_ROWS * positive_share)
    train_zeros, val_zeros = n_samples - train_ones, VALIDATION_ROWS - val_ones
    train = np.concatenate([ones[:train_ones], zeros[:train_zeros]])
    val = np.concatenate(
        [
            ones[train_ones : train_ones + val_ones],
            zeros[train_zeros : train_zeros + val_zeros],
        ]
    )
    return x[train], x[val], y[train], y[val]


def boosting(params: dict[str, Any], kwargs: dict[str, Any]) -> float:
    """Validation log-loss of the `gradient_boosting` objective's model on a shifted data set."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import log_loss
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    x_train, x_val, y_train, y_val = _dataset(
        int(kwargs["sample"]), int(kwargs["n_samples"]), float(kwargs["positive_share"])
    )
    model = HistGradientBoostingClassifier(
        learning_rate=float(params["learning_rate"]),
        max_iter=int(params["max_iter"]),
        max_leaf_nodes=int(params["max_leaf_nodes"]),
        min_samples_leaf=int(params["min_samples_leaf"]),
        l2_regularization=float(params["l2_regularization"]),
        early_stopping=False,
        random_state=int(kwargs["sample"]),
    )
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x_train, y_train)
        proba = model.predict_proba(x_val)
    return float(log_loss(y_val, proba, labels=[0, 1]))


def bowl(params: dict[str, Any], kwargs: dict[str, Any]) -> float:
    """The control: a bowl in unit coordinates, lowest at a slow, short, wide model."""
    unit = {
        "learning_rate": math.log(params["learning_rate"] / 0.01) / math.log(50),
        "max_iter": (params["max_iter"] - 20) / 280,
        "max_leaf_nodes": math.log(params["max_leaf_nodes"] / 4) / math.log(32),
        "min_samples_leaf": math.log(params["min_samples_leaf"] / 2) / math.log(50),
        "l2_regularization": params["l2_regularization"] / 10,
    }
    best = {
        "learning_rate": 0.05,
        "max_iter": 0.05,
        "max_leaf_nodes": 0.9,
        "min_samples_leaf": 0.9,
        "l2_regularization": 0.9,
    }
    return sum((unit[k] - best[k]) ** 2 for k in unit)


@dataclass
class Run:
    """One study: its running best and cumulative compute after each trial."""

    kind: str
    dataset: int
    seed: int
    best: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    transferred: int = 0
    dropped: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Loop:
    """The part of a daemon's study loop that `TransferDriver` reads (`StudyLoop`)."""

    name: str
    spec: StudySpec
    store: StudyStore
    mode_plan: Plan
    budget: Budget
    bus: NoEvents
    policies: PolicyChain
    told: set[int] = field(default_factory=set)
    n_created: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class NoEvents:
    """No broker here: the driver's events are dropped."""

    async def event(self, event_type: str, study: str | None, **data: Any) -> None:
        """Drop it."""


def run_plain(
    objective: Objective, kwargs: dict[str, Any], seed: int, trials: int, count: bool, d: int
) -> Run:
    """Plain Optuna: its default sampler (TPE) with the seed, in memory."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=study_seed(seed, d)))
    spec = StudySpec.model_validate(
        {"name": "plain", "space": SPACE, "budget": {"trials": trials}}, strict=False
    )
    run = Run("plain", d, seed)
    cpu, best = 0.0, math.inf
    for _ in range(trials):
        trial = study.ask()
        params = suggest(trial, spec.space)
        started = time.process_time()
        value = objective(params, kwargs)
        cpu += 1.0 if count else time.process_time() - started
        study.tell(trial, value)
        best = min(best, value)
        run.best.append(best)
        run.compute.append(cpu)
    return run


def spec_of(
    name: str,
    objective_name: str,
    kwargs: dict[str, Any],
    seed: int,
    trials: int,
    transfer: str | list[str],
    d: int,
) -> StudySpec:
    """The spec of one hpod study of the benchmark."""
    return StudySpec.model_validate(
        {
            "name": name,
            "objective": objective_name,
            "objective_kwargs": kwargs,
            "space": SPACE,
            "budget": {"trials": trials},
            "sampler": {"seed": study_seed(seed, d)},
            "transfer": transfer,
        },
        strict=False,
    )


async def run_hpod(
    store: StudyStore,
    name: str,
    objective: Objective,
    objective_name: str,
    kwargs: dict[str, Any],
    seed: int,
    trials: int,
    transfer: str | list[str],
    count: bool,
    kind: str,
    d: int,
    prior: bool = False,
) -> Run:
    """One study as the daemon runs it (one trial at a time), in the `MODE` mode's plan (its
    sampler, its `transfer_share`; `prior`: its `transfer_prior` knob on): the daemon's
    `TransferDriver` plans and enqueues the transfer at the start and gives the prior to the
    sampler, judges before each ask, writes the memory at the end."""
    spec = spec_of(name, objective_name, kwargs, seed, trials, transfer, d)
    assert store.create(spec)
    plan = replace(
        resolve_plan(spec, MODE, load_modes(None)[MODE]), parallelism=1, transfer_prior=prior
    )
    store.set_plan(spec, plan)
    loop = Loop(name, spec, store, plan, spec.budget, NoEvents(), PolicyChain([]))
    driver = TransferDriver(loop)
    await driver.start()
    run = Run(kind, d, seed)
    cpu, best = 0.0, math.inf
    while loop.n_created < trials:
        await driver.observe()
        study = store.open(spec)  # re-opened when the driver changes its sampler
        trial = study.ask()  # a waiting transferred trial first
        loop.n_created += 1
        params = suggest(trial, spec.space)
        started = time.process_time()
        value = objective(params, kwargs)
        cpu += 1.0 if count else time.process_time() - started
        study.tell(trial, value)
        loop.told.add(trial.number)
        best = min(best, value)
        run.best.append(best)
        run.compute.append(cpu)
    await driver.finish("completed")
    shown = transfer_status(store.study_attrs(name), spec)
    run.transferred, run.dropped = shown["transferred"], shown["dropped"]
    run.sources = [
        {k: s.get(k) for k in ("study", "state", "paused", "correlation", "pairs", "prior")}
        for s in driver.status().get("sources", [])
    ]
    store.forget(name)
    return run


Runs = dict[tuple[str, int, int], Run]  # (kind, data set, seed)


async def run_seed(
    tmp: Path,
    seed: int,
    trials: int,
    runs: Runs,
    started: float,
    variants: list[str],
    cold: bool = False,
) -> None:
    """One seed's sequence: for each variant of warm studies ("warm": transfer as the
    packaged modes have it; "prior": with the `transfer_prior` knob on) a storage where each
    later study learns, `auto`, from the memories of the earlier ones; hpod cold studies with
    transfer off in another (so no warm study learns from a cold run on its own data set);
    plain Optuna in memory; then the control. The first study of the sequence is the same
    for every variant: it is run once, and its memory copied into the other storages.

    Without `cold`, hpod cold runs are not made again: with the same seed they are plain
    Optuna's runs, trial for trial (Optuna's default TPE is multivariate, as the `balanced`
    mode's; checked on every pair of 50 and of 12 in two earlier runs), so plain's runs stand
    for them."""
    cold_store = StudyStore(f"journal://{tmp}/cold-{seed}.journal")
    stores = {v: StudyStore(f"journal://{tmp}/{v}-{seed}.journal") for v in variants}
    try:
        for d, kwargs in enumerate(DATASETS):
            runs["plain", d, seed] = run_plain(boosting, kwargs, seed, trials, False, d)
            if d == 0:  # nothing to learn from yet: the first warm study is a cold one
                first, *others = variants
                run = await run_hpod(
                    stores[first], "warm-0", boosting, OBJECTIVE, kwargs, seed, trials,
                    "auto", False, "cold", d,
                )  # fmt: skip
                runs["cold", d, seed] = run
                memory = stores[first].study_attrs("warm-0")[MEMORY_ATTR]
                for v in variants:
                    runs[v, d, seed] = run
                for v in others:
                    stores[v].create(spec_of("warm-0", OBJECTIVE, kwargs, seed, trials, "auto", d))
                    stores[v].set_attr("warm-0", MEMORY_ATTR, memory)
            else:
                runs["cold", d, seed] = runs["plain", d, seed]
                if cold:
                    runs["cold", d, seed] = await run_hpod(
                        cold_store, f"cold-{d}", boosting, OBJECTIVE, kwargs, seed, trials,
                        "off", False, "cold", d,
                    )  # fmt: skip
                for v in variants:
                    runs[v, d, seed] = await run_hpod(
                        stores[v], f"warm-{d}", boosting, OBJECTIVE, kwargs, seed, trials,
                        "auto", False, v, d, prior=v == "prior",
                    )  # fmt: skip
            print(f"seed {seed} data set {d}: done ({time.time() - started:.0f} s)", flush=True)
        runs["plain", CONTROL, seed] = run_plain(bowl, {}, seed, trials, True, CONTROL)
        runs["cold", CONTROL, seed] = runs["plain", CONTROL, seed]
        if cold:
            runs["cold", CONTROL, seed] = await run_hpod(
                cold_store, "control", bowl, OBJECTIVE, {}, seed, trials, "off", True, "cold",
                CONTROL,
            )  # fmt: skip
        names = [f"warm-{d}" for d in range(len(DATASETS))]
        for v in variants:
            runs[v, CONTROL, seed] = await run_hpod(
                stores[v], "control", bowl, OBJECTIVE, DATASETS[0], seed, trials, names, True,
                v, CONTROL, prior=v == "prior",
            )  # fmt: skip
    finally:
        cold_store.close()
        for store in stores.values():
            store.close()


# --- figures ---------------------------------------------------------------------------------


def to_target(run: Run, target: float) -> tuple[float, bool]:
    """Compute until the running best reaches `target`; (total, False) if it never does."""
    for best, compute in zip(run.best, run.compute, strict=True):
        if best <= target + 1e-12:
            return compute, True
    return run.compute[-1], False


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def bootstrap(per_seed: list[list[float]], resamples: int = 10_000) -> tuple[float, float, float]:
    """Geometric mean of the ratios and its bootstrap 95 % interval, resampling seeds (each
    seed's list of ratios, one per data set, stays together: paired)."""
    logs = [np.log(np.asarray(r, dtype=float)) for r in per_seed]
    point = math.exp(float(np.mean(np.concatenate(logs))))
    rng = np.random.default_rng(0)
    means = []
    for _ in range(resamples):
        pick = rng.integers(0, len(logs), len(logs))
        means.append(float(np.mean(np.concatenate([logs[i] for i in pick]))))
    low, high = np.percentile(means, [2.5, 97.5])
    return point, math.exp(float(low)), math.exp(float(high))


def target_of(runs: Runs, d: int, seeds: list[int]) -> float:
    return statistics.median(runs["plain", d, s].best[-1] for s in seeds)


def command_line(seeds: list[int], trials: int, seconds: float, cpu: float, flags: str) -> str:
    """The line that says how the tables were made."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    return (
        f"Command `python bench/transfer.py --seeds {len(seeds)} --trials {trials}{flags}`, "
        f"commit {commit}{' (with uncommitted changes)' if dirty else ''}, sequences "
        f"{seeds[0]}..{seeds[-1]} (study seeds 10 * sequence + data set), {trials} trials a "
        f"study, mode `{MODE}`; {seconds / 60:.0f} min wall, {cpu / 60:.0f} CPU min on "
        f"{os.cpu_count()} shared cores ({time.strftime('%Y-%m-%d')})."
    )


def report(runs: Runs, seeds: list[int], variant: str) -> str:
    """The Markdown tables of one variant of warm studies (its runs are `runs["warm", ...]`)."""
    lines = [
        f"**{VARIANTS[variant]}**",
        "",
        "| study | data set | target (plain median final log-loss) | plain CPU to target "
        "| hpod cold | hpod warm | reached: plain / cold / warm | warm vs plain (paired, 95 % CI) "
        "| warm vs hpod cold | transferred (dropped) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    n = len(seeds)
    vs_plain: dict[int, list[float]] = {s: [] for s in seeds}
    vs_cold: dict[int, list[float]] = {s: [] for s in seeds}
    first: tuple[list[list[float]], list[list[float]]] = ([], [])
    for d, kwargs in enumerate(DATASETS):
        target = target_of(runs, d, seeds)
        hits = {
            k: [to_target(runs[k, d, s], target) for s in seeds] for k in ("plain", "cold", "warm")
        }
        med = {k: statistics.median(c for c, _ in hits[k]) for k in hits}
        reached = " / ".join(f"{sum(ok for _, ok in hits[k])}" for k in hits) + f" of {n}"
        moved = sum(runs["warm", d, s].transferred for s in seeds)
        dropped = sum(runs["warm", d, s].dropped for s in seeds)
        shown = json.dumps(kwargs).replace('"', "")
        if d == 0:
            lines.append(
                f"| 1 | {shown} | {target:.4f} | {med['plain']:.2f} s | {med['cold']:.2f} s "
                f"| (is cold) | {reached} | - | - | - |"
            )
            continue
        rp = [hits["plain"][i][0] / hits["warm"][i][0] for i in range(n)]
        rc = [hits["cold"][i][0] / hits["warm"][i][0] for i in range(n)]
        for i, s in enumerate(seeds):
            vs_plain[s].append(rp[i])
            vs_cold[s].append(rc[i])
        p, lo, hi = bootstrap([[r] for r in rp])
        c, clo, chi = bootstrap([[r] for r in rc])
        if d == 1:
            first = ([[r] for r in rp], [[r] for r in rc])
        lines.append(
            f"| {d + 1} | {shown} | {target:.4f} | {med['plain']:.2f} s | {med['cold']:.2f} s "
            f"| {med['warm']:.2f} s | {reached} | {p:.2f}x ({lo:.2f}-{hi:.2f}) "
            f"| {c:.2f}x ({clo:.2f}-{chi:.2f}) | {moved} ({dropped}) |"
        )
    later_p = bootstrap(list(vs_plain.values()))
    later_c = bootstrap(list(vs_cold.values()))
    first_p, first_c = bootstrap(first[0]), bootstrap(first[1])
    target = target_of(runs, CONTROL, seeds)
    ctl = {
        k: [to_target(runs[k, CONTROL, s], target) for s in seeds]
        for k in ("plain", "cold", "warm")
    }
    # Evaluations to the target, warm over cold (> 1: warm needs more), paired by seed.
    ctl_p = bootstrap([[ctl["warm"][i][0] / ctl["plain"][i][0]] for i in range(n)])
    ctl_c = bootstrap([[ctl["warm"][i][0] / ctl["cold"][i][0]] for i in range(n)])
    ctl_med = {k: statistics.median(c for c, _ in ctl[k]) for k in ctl}
    ctl_reached = " / ".join(f"{sum(ok for _, ok in ctl[k])}" for k in ctl)
    # Half the runs never reach a median target (censored at the budget on both sides), so
    # also the final best, warm over cold, paired (> 1: warm ends worse).
    ctl_final = bootstrap(
        [[runs["warm", CONTROL, s].best[-1] / runs["cold", CONTROL, s].best[-1]] for s in seeds]
    )
    released = sum(runs["warm", CONTROL, s].transferred > 1 for s in seeds)
    moved = sum(runs["warm", CONTROL, s].transferred for s in seeds)
    dropped = sum(runs["warm", CONTROL, s].dropped for s in seeds)

    def fmt(t: tuple[float, float, float]) -> str:
        return f"{t[0]:.2f}x ({t[1]:.2f}-{t[2]:.2f})"

    def pct(t: tuple[float, float, float]) -> str:
        return f"{t[0] - 1:+.0%} ({t[1] - 1:+.0%} to {t[2] - 1:+.0%})"

    lines += [
        "",
        "| target of issue 15 | against plain Optuna | against hpod cold | met |",
        "|---|---|---|---|",
        f"| studies 2-5: ≥ 10x less CPU to plain's median final quality (geometric mean, paired "
        f"by seed, 95 % CI) | {fmt(later_p)} | {fmt(later_c)} "
        f"| {'yes' if later_p[0] >= 10 else 'no'} |",
        f"| first warm study (2): ≥ 3x | {fmt(first_p)} | {fmt(first_c)} "
        f"| {'yes' if first_p[0] >= 3 else 'no'} |",
        f"| unrelated control: evaluations to plain's median final best, warm over cold, at most "
        f"+5 % | {pct(ctl_p)} | {pct(ctl_c)} | {'yes' if ctl_p[0] <= 1.05 else 'no'} |",
        "",
        f"Control (bowl, forced transfer from the five boosting studies): target {target:.4f}; "
        f"median evaluations to it {ctl_med['plain']:.0f} plain, {ctl_med['cold']:.0f} hpod "
        f"cold, {ctl_med['warm']:.0f} warm; reached (plain / cold / warm) {ctl_reached} of "
        f"{n}; {moved} configurations transferred, {dropped} dropped before they ran; held "
        f"configurations released (a source supported by chance) in {released} of {n} runs; "
        f"final best, warm over cold: {pct(ctl_final)}.",
    ]
    return "\n".join(lines)


def paired(runs: Runs, seeds: list[int]) -> str:
    """Without the prior over with it, paired by seed: CPU to target on studies 2-5, and
    evaluations on the control (> 1: the prior needs less)."""
    later: list[list[float]] = []
    control: list[list[float]] = []
    for s in seeds:
        per = []
        for d in range(1, len(DATASETS)):
            target = target_of(runs, d, seeds)
            per.append(
                to_target(runs["warm", d, s], target)[0] / to_target(runs["prior", d, s], target)[0]
            )
        later.append(per)
        target = target_of(runs, CONTROL, seeds)
        control.append(
            [
                to_target(runs["warm", CONTROL, s], target)[0]
                / to_target(runs["prior", CONTROL, s], target)[0]
            ]
        )
    p, lo, hi = bootstrap(later)
    c, clo, chi = bootstrap(control)
    return (
        f"The prior, paired by seed (compute to target without it over with it; above 1: the "
        f"prior saves): studies 2-5 {p:.2f}x ({lo:.2f}-{hi:.2f}), control {c:.2f}x "
        f"({clo:.2f}-{chi:.2f})."
    )


def write_section(path: Path, body: str) -> None:
    """Replace the text between the transfer markers in `path`."""
    start, end = f"<!-- {SECTION}:start -->", f"<!-- {SECTION}:end -->"
    text = path.read_text()
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")


#: The variants of warm studies: the mode knob `transfer_prior` off (the packaged modes)
#: and on.
VARIANTS = {
    "warm": "Warm studies as the packaged modes run them (transfer_prior off)",
    "prior": "Warm studies with the prior (transfer_prior on)",
}


def one_seed(seed: int, trials: int, variants: list[str], cold: bool) -> list[dict[str, Any]]:
    """Every run of one seed, as JSON-ready rows (a worker process's job)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    runs: Runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run_seed(Path(tmp), seed, trials, runs, time.time(), variants, cold))
    return [{"key": list(k), **vars(r)} for k, r in runs.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="sequences first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2, help="seeds run in parallel processes")
    parser.add_argument("--json", type=Path, default=None, help="write every run here")
    parser.add_argument("--write", action="store_true", help="tables into docs/benchmarks.md")
    parser.add_argument(
        "--prior",
        action="store_true",
        help="warm studies also give TPE the past surfaces as a prior",
    )
    parser.add_argument(
        "--both",
        action="store_true",
        help="warm studies without and with the prior, paired (the same plain and cold runs)",
    )
    parser.add_argument(
        "--cold", action="store_true", help="run hpod cold studies too (else plain's runs)"
    )
    parser.add_argument(
        "--report", type=Path, default=None, help="only the tables, from a --json file"
    )
    args = parser.parse_args(argv)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    variants = ["warm", "prior"] if args.both else ["prior"] if args.prior else ["warm"]
    started = time.time()
    rows: list[dict[str, Any]] = []
    if args.report:  # seeds that finished, from an earlier run's --json
        rows = json.loads(args.report.read_text())
        seeds = sorted({row["key"][2] for row in rows})
    else:
        with ProcessPoolExecutor(max(1, args.jobs)) as pool:
            jobs = [pool.submit(one_seed, s, args.trials, variants, args.cold) for s in seeds]
            for seed, job in zip(seeds, jobs, strict=True):
                rows += job.result()
                print(f"seed {seed} done ({time.time() - started:.0f} s)", flush=True)
                if args.json:  # after every seed: a cut-short run still leaves its seeds
                    args.json.write_text(json.dumps(rows))
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    runs: Runs = {}
    for row in rows:
        kind, d, seed = row["key"]
        runs[kind, d, seed] = Run(**{k: v for k, v in row.items() if k != "key"})
    flags = " --both" * args.both + " --prior" * (args.prior and not args.both)
    flags += " --cold" * args.cold
    flags += f" --jobs {args.jobs}" + " --write" * args.write
    parts = [
        command_line(seeds, args.trials, time.time() - started, cpu.ru_utime + cpu.ru_stime, flags)
    ]
    for v in variants:
        view = {k: r for k, r in runs.items() if k[0] in ("plain", "cold")}
        view.update({("warm", d, s): r for (kind, d, s), r in runs.items() if kind == v})
        parts.append(report(view, seeds, v))
    if len(variants) == 2:
        parts.append(paired(runs, seeds))
    text = "\n\n".join(parts)
    print(text)
    if args.write:
        write_section(ROOT / "docs" / "benchmarks.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
