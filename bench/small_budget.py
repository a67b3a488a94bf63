"""Small-budget numeric studies: what `auto`'s rule picks against plain Optuna (issue 13, item 4).

On 5-D numeric functions at 40 evaluations, the same seeds for every sampler:

- ``auto``: the strategy the rule picks for a 5-D numeric space with a 40-trial budget (the
  GP in hpod's sampler process, after its Sobol opening), built as the daemon builds it;
- ``tpe``: plain Optuna, default `TPESampler`;
- ``cmaes``: plain Optuna, default `CmaEsSampler`;
- ``gp-plain`` (with ``--plain-gp``): plain Optuna, default `GPSampler` in-process (ten
  random trials first; four times the CPU of the rest together).

Prints each configuration's mean final regret (best value found minus the known minimum)
and the paired difference of auto against each other configuration with a 95 % t-interval
over seeds (negative: auto better), per function and over all of them (on log10 regret, so
one function's scale does not decide), and the sampler process's CPU per suggestion.

    python bench/small_budget.py [--seeds 8] [--trials 40] [--plain-gp] [--out runs.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from scipy import stats

from hpod.engine import SAMPLER_CPU_ATTR, make_sampler
from hpod.policies.strategy.actions import SpaceShape
from hpod.policies.strategy.rules import choose
from hpod.policies.strategy.suites import levy, rosenbrock, styblinski_tang
from hpod.sampling import process

DIMS = 5
#: name: (function, bounds, known minimum)
FUNCTIONS: dict[str, tuple[Callable[[np.ndarray], float], tuple[float, float], float]] = {
    "levy_5": (levy, (-10.0, 10.0), 0.0),
    # The suite's Styblinski-Tang is shifted by 39.16617 a dimension: its minimum is ~0.
    "styblinski_tang_5": (styblinski_tang, (-5.0, 5.0), DIMS * (39.16617 - 39.16616570377142)),
    "rosenbrock_5": (rosenbrock, (-2.0, 2.0), 0.0),
}


def sampler_for(config: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    if config == "auto":
        shape = SpaceShape(DIMS, DIMS, 0, 0, 1, "none", budget_trials=trials)
        strategy = choose(shape)
        return make_sampler(strategy.sampler, strategy.sampler_options, seed)
    if config == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if config == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if config == "gp-plain":
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(config)


def run(function: str, config: str, seed: int, trials: int) -> dict[str, Any]:
    f, (low, high), minimum = FUNCTIONS[function]

    def objective(trial: optuna.Trial) -> float:
        x = np.array([trial.suggest_float(f"x{i}", low, high) for i in range(DIMS)])
        return float(f(x))

    study = optuna.create_study(sampler=sampler_for(config, seed, trials))
    started = time.process_time()
    study.optimize(objective, n_trials=trials)
    gp_cpu = sum(float(t.user_attrs.get(SAMPLER_CPU_ATTR, 0.0)) for t in study.trials)
    return {
        "regret": max(study.best_value - minimum, 0.0),
        "cpu": time.process_time() - started,
        "gp_cpu": gp_cpu,
        "gp_suggestions": sum(SAMPLER_CPU_ATTR in t.user_attrs for t in study.trials),
    }


def interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of paired differences."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--plain-gp", action="store_true", help="also plain in-process GPSampler")
    parser.add_argument("--out", help="append every run as a JSON line to this file")
    args = parser.parse_args()
    configs = ["auto", "tpe", "cmaes"] + (["gp-plain"] if args.plain_gp else [])
    seeds = list(range(args.seeds))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for function in FUNCTIONS:
        for config in configs:
            runs = results[function, config] = []
            for seed in seeds:
                runs.append(run(function, config, seed, args.trials))
                if args.out:
                    with open(args.out, "a") as out:
                        line = {"function": function, "config": config, "seed": seed, **runs[-1]}
                        out.write(json.dumps(line) + "\n")
    process.stop_shared()

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {commit}, {DIMS}-D, {args.trials} evaluations, seeds {seeds}")
    print(
        f"auto = {choose(SpaceShape(DIMS, DIMS, 0, 0, 1, 'none', budget_trials=args.trials)).name}"
    )
    print("\nmean final regret (median in brackets)")
    print(f"{'function':<20}" + "".join(f"{c:>22}" for c in configs))
    for function in FUNCTIONS:
        cells = []
        for config in configs:
            regrets = [r["regret"] for r in results[function, config]]
            cells.append(f"{statistics.fmean(regrets):>12.4g} ({statistics.median(regrets):.3g})")
        print(f"{function:<20}" + "".join(f"{c:>22}" for c in cells))

    print("\npaired difference auto - other, regret: mean [95 % interval] (negative: auto better)")
    for function in FUNCTIONS:
        row = []
        for other in configs[1:]:
            diffs = [
                a["regret"] - b["regret"]
                for a, b in zip(results[function, "auto"], results[function, other], strict=True)
            ]
            m, lo, hi = interval(diffs)
            row.append(f"{other}: {m:+.3g} [{lo:+.3g}, {hi:+.3g}]")
        print(f"{function:<20}" + "   ".join(row))
    print("\nover all functions, log10(regret + 1e-9): paired difference auto - other")
    for other in configs[1:]:
        diffs = [
            math.log10(a["regret"] + 1e-9) - math.log10(b["regret"] + 1e-9)
            for function in FUNCTIONS
            for a, b in zip(results[function, "auto"], results[function, other], strict=True)
        ]
        m, lo, hi = interval(diffs)
        wins = sum(d < 0 for d in diffs)
        print(
            f"  vs {other:<9} {m:+.3f} [{lo:+.3f}, {hi:+.3f}]  auto better in {wins}/{len(diffs)}"
        )
    auto = [r for function in FUNCTIONS for r in results[function, "auto"]]
    suggestions = sum(r["gp_suggestions"] for r in auto)
    if suggestions:
        cpu = sum(r["gp_cpu"] for r in auto)
        print(
            f"\nsampler process: {suggestions} GP suggestions, {cpu:.1f} CPU s "
            f"({cpu / suggestions * 1000:.0f} ms each)"
        )
    for config in configs:
        per_study = [r["cpu"] for function in FUNCTIONS for r in results[function, config]]
        print(f"  {config}: {statistics.fmean(per_study):.2f} CPU s per study in this process")


if __name__ == "__main__":
    main()
