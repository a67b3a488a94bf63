"""Transfer across studies: does a study of an objective seen before need less compute?

Related sequence: the `gradient_boosting` objective on five shifted data sets (the generator's
seed and the number of rows change: `DATASETS`), tuned one after the other. Each later study (2
to 5) is warm-started from the memories of the earlier ones of its sequence, with the parts in
`hpod/transfer/` (which the daemon drives the same way, `hpod/daemon/transfer.py`):
`build_memory` when a study ends, `rank_sources` and `plan_transfer` at the start (at most
0.25 of the trials), the configurations enqueued with Optuna's `enqueue_trial`, and before
every ask the agreement check (`predict_ranks`, `judge`) that drops a disagreeing source's
waiting trials (`drop_waiting`); half of the configurations are enqueued at the start, the
rest once 8 results are in (`stages`). Cold is the same study without transfer: plain
Optuna (its default TPE sampler, the same seed), which is also the reference: the target of
data set d is the median over seeds of cold's final best on d.

It runs in-process, one trial at a time, through the daemon's own transfer code
(`hpod.daemon.transfer.TransferDriver` on a journal-file `StudyStore`, the loop stood in for by
`Loop`): no broker, no workers, so transfer is the only difference between warm and cold and
the benchmark is fast. Compute is the CPU time of the objective
calls (`time.process_time`, one OpenMP thread), so the figures do not depend on the machine's
other load. A run's compute to target is its cumulative CPU when its running best first
reaches the target; a run that never does is censored at its total (shown as ">").

Negative control: an unrelated objective that shares the parameter names (an analytic bowl
whose optimum sits where gradient boosting does badly: a low learning rate, few rounds) is
warm-started from the gradient-boosting memories by name (as naming the past studies
would), and compared with itself cold. Its evaluations cost microseconds, so its compute is
counted in evaluations.

    .venv/bin/python bench/transfer.py                    # 3 seeds, 30 trials a study
    .venv/bin/python bench/transfer.py --seeds 5 --trials 40 --json out.json

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

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
from hpod.workers.context import TrialContext  # noqa: E402
from hpod.workers.objectives.gradient_boosting import gradient_boosting  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHARE = 0.25  # at most this share of a study's trials is transferred
SPACE = {
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
    "max_iter": {"type": "int", "low": 20, "high": 300},
    "max_leaf_nodes": {"type": "int", "low": 4, "high": 128, "log": True},
    "min_samples_leaf": {"type": "int", "low": 2, "high": 100, "log": True},
    "l2_regularization": {"type": "float", "low": 0.0, "high": 10.0},
}
#: Five shifted data sets: other generator seeds and sizes.
DATASETS: list[dict[str, Any]] = [
    {"seed": 11, "n_samples": 1000},
    {"seed": 12, "n_samples": 1200},
    {"seed": 13, "n_samples": 800},
    {"seed": 14, "n_samples": 1400},
    {"seed": 15, "n_samples": 1000},
]

Objective = Callable[[dict[str, Any], dict[str, Any]], float]


def boosting(params: dict[str, Any], kwargs: dict[str, Any]) -> float:
    return gradient_boosting(TrialContext(params), **kwargs)


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


async def run_study(
    store: StudyStore,
    name: str,
    objective: Objective,
    objective_name: str,
    kwargs: dict[str, Any],
    seed: int,
    trials: int,
    transfer: str | list[str],
    count_evaluations: bool,
    kind: str,
    dataset: int,
) -> Run:
    """One study, as the daemon runs it (one trial at a time): the daemon's `TransferDriver`
    plans and enqueues the transfer at the start, judges before each ask, writes the memory
    at the end; TPE with the study's seed asks (the daemon's sampler for a spec naming it)."""
    spec = StudySpec.model_validate(
        {
            "name": name,
            "objective": objective_name,
            "objective_kwargs": kwargs,
            "space": SPACE,
            "budget": {"trials": trials},
            "sampler": {"name": "tpe", "seed": seed},
            "transfer": transfer,
        },
        strict=False,
    )
    assert store.create(spec)
    modes = load_modes(None)
    plan = replace(resolve_plan(spec, "balanced", modes["balanced"]), transfer_share=SHARE)
    loop = Loop(name, spec, store, plan, spec.budget, NoEvents(), PolicyChain([]))
    driver = TransferDriver(loop)
    await driver.start()
    study = store.open(spec)
    run = Run(kind, dataset, seed)
    cpu = 0.0
    best = math.inf
    while loop.n_created < trials:
        await driver.observe()
        trial = study.ask()  # a waiting transferred trial first
        loop.n_created += 1
        params = suggest(trial, spec.space)
        started = time.process_time()
        value = objective(params, kwargs)
        cpu += 1.0 if count_evaluations else time.process_time() - started
        study.tell(trial, value)
        loop.told.add(trial.number)
        best = min(best, value)
        run.best.append(best)
        run.compute.append(cpu)
    await driver.finish("completed")
    shown = transfer_status(store.study_attrs(name), spec)
    run.transferred, run.dropped = shown["transferred"], shown["dropped"]
    return run


def to_target(run: Run, target: float) -> tuple[float, bool]:
    """Compute until the running best reaches `target`; (total, False) if it never does."""
    for best, compute in zip(run.best, run.compute, strict=True):
        if best <= target + 1e-12:
            return compute, True
    return run.compute[-1], False


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


async def run_seed(
    tmp: Path,
    seed: int,
    datasets: list[dict[str, Any]],
    trials: int,
    cold: dict[tuple[int, int], Run],
    warm: dict[tuple[int, int], Run],
    started: float,
) -> None:
    """One seed's sequence: warm studies in one storage (each later study learns, `auto`,
    from the memories of the earlier ones there), cold ones with transfer off in another (so
    no warm study can learn from a cold run on its own data set); then the control."""
    warm_store = StudyStore(f"journal://{tmp}/warm-{seed}.journal")
    cold_store = StudyStore(f"journal://{tmp}/cold-{seed}.journal")
    try:
        for d, kwargs in enumerate(datasets):
            if d == 0:  # the first study has nothing to learn from: it is its own cold run
                warm[d, seed] = cold[d, seed] = await run_study(
                    warm_store, f"warm-{d}", boosting, "gradient_boosting", kwargs, seed,
                    trials, "off", False, "cold", d,
                )  # fmt: skip
            else:
                cold[d, seed] = await run_study(
                    cold_store, f"cold-{d}", boosting, "gradient_boosting", kwargs, seed,
                    trials, "off", False, "cold", d,
                )  # fmt: skip
                warm[d, seed] = await run_study(
                    warm_store, f"warm-{d}", boosting, "gradient_boosting", kwargs, seed,
                    trials, "auto", False, "warm", d,
                )  # fmt: skip
            print(f"seed {seed} data set {d}: done ({time.time() - started:.0f} s)", flush=True)
        cold[9, seed] = await run_study(
            cold_store, "control", bowl, "bowl", {}, seed, trials, "off", True, "ctl", 9
        )
        # The control forces the boosting memories onto another objective, as `transfer:
        # [names]` would; similarity needs the same objective, so it is told the same name.
        names = [f"warm-{d}" for d in range(len(datasets))]
        warm[9, seed] = await run_study(
            warm_store, "control", bowl, "gradient_boosting", datasets[0], seed, trials, names,
            True, "ctl-warm", 9,
        )  # fmt: skip
    finally:
        warm_store.close()
        cold_store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--studies", type=int, default=len(DATASETS))
    parser.add_argument("--json", type=Path, default=None, help="write every run here")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    datasets = DATASETS[: args.studies]
    started = time.time()
    cold: dict[tuple[int, int], Run] = {}
    warm: dict[tuple[int, int], Run] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            asyncio.run(run_seed(Path(tmp), seed, datasets, args.trials, cold, warm, started))
    report(cold, warm, datasets, seeds, args, time.time() - started)
    if args.json:
        rows = [vars(r) for r in [*cold.values(), *warm.values()]]
        args.json.write_text(json.dumps(rows))
    return 0


def report(
    cold: dict[tuple[int, int], Run],
    warm: dict[tuple[int, int], Run],
    datasets: list[dict[str, Any]],
    seeds: list[int],
    args: argparse.Namespace,
    seconds: float,
) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print(f"\ncommand: python bench/transfer.py --seeds {args.seeds} --trials {args.trials}")
    print(f"commit {commit}, seeds {seeds}, {seconds:.0f} s\n")
    print("| study | data set | target (cold median) | cold CPU to target | warm CPU to target "
          "| ratio | warm reached | transferred (dropped) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for d in range(len(datasets)):
        target = statistics.median(cold[d, s].best[-1] for s in seeds)
        cold_cpu = statistics.median(to_target(cold[d, s], target)[0] for s in seeds)
        warm_hits = [to_target(warm[d, s], target) for s in seeds]
        warm_cpu = statistics.median(c for c, _ in warm_hits)
        reached = sum(ok for _, ok in warm_hits)
        ratio = cold_cpu / warm_cpu if warm_cpu > 0 else math.inf
        if d > 0:
            ratios.append(ratio)
        moved = sum(warm[d, s].transferred for s in seeds)
        dropped = sum(warm[d, s].dropped for s in seeds)
        print(
            f"| {d + 1} | {json.dumps(datasets[d])} | {target:.4f} | {cold_cpu:.2f} s "
            f"| {warm_cpu:.2f} s | {ratio:.2f}x | {reached}/{len(seeds)} | {moved} ({dropped}) |"
        )
    if ratios:
        print(f"\nstudies 2-{len(datasets)}: geometric mean {geomean(ratios):.2f}x less CPU "
              f"(first warm study {ratios[0]:.2f}x)")  # fmt: skip
    target = statistics.median(cold[9, s].best[-1] for s in seeds)
    cold_n = statistics.median(to_target(cold[9, s], target)[0] for s in seeds)
    warm_n = statistics.median(to_target(warm[9, s], target)[0] for s in seeds)
    final_cold = statistics.median(cold[9, s].best[-1] for s in seeds)
    final_warm = statistics.median(warm[9, s].best[-1] for s in seeds)
    dropped = sum(warm[9, s].dropped for s in seeds)
    moved = sum(warm[9, s].transferred for s in seeds)
    print(
        f"\ncontrol (bowl, forced transfer from the boosting studies): evaluations to the cold "
        f"median {cold_n:.0f} cold, {warm_n:.0f} warm ({warm_n / cold_n - 1:+.0%}); final best "
        f"{final_cold:.4f} cold, {final_warm:.4f} warm; transferred {moved}, dropped {dropped}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
