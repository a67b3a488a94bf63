"""Does a data ladder pay at small budgets? Simulated studies on the suites' data-ladder tasks.

`auto`'s rule gives an objective that subsamples ("data" fidelity) multivariate TPE under the
mode's successive halving on the data ladder 1/9, 1/3, 1 — whatever the budget. The ladder's
own pay-off check (`hpod.policies.ladder_payoff`) needs nine ladder trials and three paired
full evaluations per rung before it can turn the ladder off, and halving at a rate of 1/3
judges a trial on a ninth of the data, where configurations are ranked only roughly. At a
budget of a few dozen full evaluations neither may pay back. This compares, at equal compute
(full evaluations of the task, as the simulator charges them from cost models fitted on the
recorded objectives' measured CPU), the best true value found by:

- ``ladder``: multivariate TPE + successive halving on the ladder (what ``auto`` runs today);
- ``tpe``: multivariate TPE on the full data, no pruning;
- ``gp``: Optuna's GP (hpod's sampler process, Sobol opening) on the full data.

Each study runs to the largest budget; its best at each smaller budget is read off its curve
(no strategy here depends on the budget). Paired by seed, mean difference and bootstrap 95 %
interval of the normalised regret (best - optimum) / (median random value - optimum), capped
at 1 (a study with no full evaluation within a budget counts as the median random value).

With ``--gp-cpu`` it measures instead what a GP suggestion costs hpod's sampler process (the
CPU the rule's `GP_MIN_EVALUATION_CPU` weighs against an evaluation's), on a quadratic at
5 and 8 dimensions over 20, 40 and 60 trials.

    python bench/ladder_budget.py --suite validation --seeds 20 --budgets 10,20,40,80
    python bench/ladder_budget.py --gp-cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

import numpy as np

from hpod.policies.strategy.actions import BUILTIN
from hpod.policies.strategy.simulate import fixed, run_study, seed_of
from hpod.policies.strategy.suites import SUITES, Task
from hpod.sampling import process

CONFIGS = {"ladder": "tpe-halving-ladder", "tpe": "tpe-multivariate", "gp": "gp"}


def reference(task: Task) -> tuple[float, float]:
    """(median true value of 256 random configurations, the best known value) of `task`."""
    import optuna

    from hpod.engine import suggest

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed_of(task.name, "ref")))
    values = []
    for _ in range(256):
        trial = study.ask()
        values.append(task.value(suggest(trial, task.spec().space), 1.0, None))
        study.tell(trial, values[-1])
    best = task.optimum if task.optimum is not None else min(values)
    return float(statistics.median(values)), float(best)


def gp_cpu(seeds: int = 2) -> None:
    """Print the sampler process's CPU per GP suggestion (`SAMPLER_CPU_ATTR` of its trials)."""
    import optuna

    from hpod.engine import make_sampler
    from hpod.sampling import SAMPLER_CPU_ATTR

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for dims in (5, 8):
        for n in (20, 40, 60):
            cpu, suggestions = 0.0, 0
            for seed in range(seeds):
                study = optuna.create_study(sampler=make_sampler("gp", {}, seed))

                def quadratic(trial: optuna.Trial, dims: int = dims) -> float:
                    x = np.array([trial.suggest_float(f"x{i}", -2, 2) for i in range(dims)])
                    return float(np.sum(x**2))

                study.optimize(quadratic, n_trials=n)
                spent = [
                    float(t.user_attrs[SAMPLER_CPU_ATTR])
                    for t in study.trials
                    if SAMPLER_CPU_ATTR in t.user_attrs
                ]
                cpu, suggestions = cpu + sum(spent), suggestions + len(spent)
            print(
                f"{dims}-D, {n} trials: {cpu / max(suggestions, 1):.3f} CPU s a GP suggestion, "
                f"{cpu / (n * seeds):.3f} s a trial (seeds 0-{seeds - 1})"
            )
    process.stop_shared()


def bootstrap(diffs: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean and bootstrap 95 % interval of paired differences."""
    rng = np.random.default_rng(seed)
    a = np.asarray(diffs)
    means = rng.choice(a, (10_000, len(a))).mean(axis=1)
    return float(a.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="validation", choices=sorted(SUITES))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budgets", default="10,20,40,80")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", help="write every study's bests as JSON lines here")
    parser.add_argument("--gp-cpu", action="store_true", help="measure a GP suggestion's CPU")
    args = parser.parse_args(argv)
    if args.gp_cpu:
        gp_cpu()
        return 0
    budgets = [float(b) for b in args.budgets.split(",")]
    configs = args.configs.split(",")
    by_name = {s.name: s for s in BUILTIN}
    tasks = [t for t in SUITES[args.suite]() if t.fidelity == "data"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {commit}, suite {args.suite}, seeds 0-{args.seeds - 1}, budgets {budgets}")
    rows: list[dict[str, Any]] = []
    for task in tasks:
        median_random, best = reference(task)
        scale = max(median_random - best, 1e-12)
        for seed in range(args.seeds):
            for config in configs:
                record = run_study(
                    task, fixed(by_name[CONFIGS[config]]), seed, "balanced", max(budgets), 12
                )
                # A study with no full evaluation yet has no answer: the median random one's.
                bests = [min((record.best_at(b) - best) / scale, 1.0) for b in budgets]
                rows.append({"task": task.name, "config": config, "seed": seed, "regret": bests})
                if args.out:
                    with open(args.out, "a") as out:
                        out.write(json.dumps(rows[-1]) + "\n")
    process.stop_shared()
    for task in tasks:
        print(f"\n{task.name}: normalised regret, mean over seeds (lower is better)")
        mine = [r for r in rows if r["task"] == task.name]
        for i, b in enumerate(budgets):
            means = {
                c: statistics.fmean(r["regret"][i] for r in mine if r["config"] == c)
                for c in configs
            }
            line = ", ".join(f"{c} {m:.4f}" for c, m in means.items())
            pairs = []
            for other in configs[1:]:
                diffs = [
                    a["regret"][i] - o["regret"][i]
                    for a in mine
                    if a["config"] == configs[0]
                    for o in mine
                    if o["config"] == other and o["seed"] == a["seed"]
                ]
                m, lo, hi = bootstrap(diffs)
                pairs.append(f"{configs[0]} - {other} {m:+.4f} [{lo:+.4f}, {hi:+.4f}]")
            print(f"  budget {b:g}: {line}; " + "; ".join(pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
