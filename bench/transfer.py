"""Transfer across studies: does a study of an objective seen before need less compute?

Related sequence: the `gradient_boosting` objective on five shifted data sets (the generator's
seed and the number of rows change: `DATASETS`), tuned one after the other. Each later study (2
to 5) is warm-started from the memories of the earlier ones of its sequence, with the parts in
`hpod/transfer/` (which the daemon drives the same way, `hpod/daemon/transfer.py`):
`build_memory` when a study ends, `rank_sources` and `plan_transfer` at the start (at most
0.25 of the trials), the configurations enqueued with Optuna's `enqueue_trial`, and after
every tell the agreement check (`predict_ranks`, `judge`) that drops a disagreeing source's
waiting trials (`drop_waiting`); half of the configurations are enqueued at the start, the
rest once 8 results are in (`stages`). Cold is the same study without transfer: plain
Optuna (its default TPE sampler, the same seed), which is also the reference: the target of
data set d is the median over seeds of cold's final best on d.

It runs in-process with Optuna (no daemon, no workers): transfer is the only difference
between warm and cold, and the benchmark is fast. Compute is the CPU time of the objective
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
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpod.schema import StudySpec  # noqa: E402
from hpod.transfer.agreement import MIN_PAIRS, judge, predict_ranks  # noqa: E402
from hpod.transfer.mapping import Transferred, plan_transfer, stages, transfer_count  # noqa: E402
from hpod.transfer.memory import Observed, StudyMemory, build_memory  # noqa: E402
from hpod.transfer.similarity import Target, rank_sources  # noqa: E402
from hpod.transfer.store import drop_waiting, enqueue  # noqa: E402
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
    memory: StudyMemory | None = None


def spec_space() -> dict[str, Any]:
    spec = StudySpec.model_validate(
        {"name": "b", "space": SPACE, "budget": {"trials": 1}}, strict=False
    )
    return dict(spec.space)


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.5, log=True),
        "max_iter": trial.suggest_int("max_iter", 20, 300),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 4, 128, log=True),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 2, 100, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 0.0, 10.0),
    }


def run_study(
    objective: Objective,
    objective_name: str,
    kwargs: dict[str, Any],
    seed: int,
    trials: int,
    memories: list[StudyMemory],
    names: list[str] | None,
    count_evaluations: bool,
    kind: str,
    dataset: int,
) -> Run:
    """One study, warm-started from `memories` when there are any (the daemon's logic)."""
    space = spec_space()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    run = Run(kind, dataset, seed)
    sources: list[tuple[StudyMemory, float]] = []
    if memories:
        target = Target(objective_name, space, ["minimize"], kwargs, "1", None)
        sources = rank_sources(target, memories, names)
        configs = plan_transfer(space, sources, transfer_count(SHARE, trials))
        now, held = stages(configs)
        enqueue(study, now)
        run.transferred = len(now)
    else:
        held = []
    active = {memory.study: memory for memory, _ in sources}
    predicted: dict[str, list[float]] = {name: [] for name in active}
    observed: list[tuple[dict[str, Any], float]] = []
    cpu = 0.0
    best = math.inf
    done = 0
    while done < trials:
        trial = study.ask()  # a waiting transferred trial first (dropped ones are failed)
        params = suggest(trial)
        started = time.process_time()
        value = objective(params, kwargs)
        cpu += 1.0 if count_evaluations else time.process_time() - started
        study.tell(trial, value)
        done += 1
        best = min(best, value)
        run.best.append(best)
        run.compute.append(cpu)
        observed.append((params, value))
        for name, memory in list(active.items()):
            missing = [p for p, _ in observed[len(predicted[name]) :]]
            predicted[name].extend(predict_ranks(memory.surface, missing, space))
            if judge(predicted[name], [v for _, v in observed]).disagrees:
                run.dropped += len(drop_waiting(study, name, "disagrees"))
                del active[name]
        if held and len(observed) >= MIN_PAIRS:  # the driver's _release
            released: list[Transferred] = [c for c in held if c.source in active]
            enqueue(study, released)
            run.transferred += len(released)
            held = []
    complete = [
        Observed(dict(t.params), list(t.values))
        for t in study.get_trials(states=(TrialState.COMPLETE,))
    ]
    name = f"{kind}-{dataset}-{seed}"
    run.memory = build_memory(
        name, objective_name, space, ["minimize"], complete, kwargs=kwargs, version="1"
    )
    return run


def to_target(run: Run, target: float) -> tuple[float, bool]:
    """Compute until the running best reaches `target`; (total, False) if it never does."""
    for best, compute in zip(run.best, run.compute, strict=True):
        if best <= target + 1e-12:
            return compute, True
    return run.compute[-1], False


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


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
    for seed in seeds:
        memories: list[StudyMemory] = []
        for d, kwargs in enumerate(datasets):
            cold[d, seed] = run_study(
                boosting, "gradient_boosting", kwargs, seed, args.trials, [], None, False,
                "cold", d,
            )  # fmt: skip
            if d == 0:
                warm[d, seed] = cold[d, seed]
            else:
                warm[d, seed] = run_study(
                    boosting, "gradient_boosting", kwargs, seed, args.trials, memories, None,
                    False, "warm", d,
                )  # fmt: skip
            memory = warm[d, seed].memory
            if memory is not None:
                memories.append(memory.model_copy(update={"study": f"warm-{d}-{seed}"}))
            print(f"seed {seed} data set {d}: done ({time.time() - started:.0f} s)", flush=True)
        control_cold = run_study(bowl, "bowl", {}, seed, args.trials, [], None, True, "ctl", 9)
        names = [m.study for m in memories]
        # The control forces the boosting memories onto another objective, as `transfer:
        # [names]` would; similarity needs the same objective, so it is told the same name.
        control_warm = run_study(
            bowl, "gradient_boosting", DATASETS[0], seed, args.trials, memories, names, True,
            "ctl-warm", 9,
        )  # fmt: skip
        cold[9, seed] = control_cold
        warm[9, seed] = control_warm
    report(cold, warm, datasets, seeds, args, time.time() - started)
    if args.json:
        rows = [
            {k: v for k, v in vars(r).items() if k != "memory"}
            for r in [*cold.values(), *warm.values()]
        ]
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
