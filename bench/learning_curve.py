"""Does online learning leave held-out regret no worse? (issue 14: "after 50 local studies of
any one family, the held-out regret no worse than before (interval)").

1. `--studies` simulated studies of the learning family (`suites.learning_family`: in none
   of the training, validation and held-out suites), study seeds 2000 on, decided as a
   daemon with ``policy_learned = true`` decides them: one `StrategyAgent` with the shipped
   weights, exploration on (seeded), the composed plan as the daemon gives it (`plan_of`),
   the previous window's record handed back (an exploration's verdict), every scored window
   recorded into the agent's replay buffer (sources the daemon learns from). As in the
   daemon, once `LEARN_EVERY` (25, ``policy_learn_every``) new windows are in the buffer the
   learner runs (`learner.learn`: the shipped buffer plus the local one, then the check
   suite's gate, all of it, as the daemon's default); here it runs between studies and to
   the end (the daemon's runs in the background), and the agent picks installed weights up
   at its next decision, as in the daemon.
2. The held-out suite (`bench/strategy.py`'s tasks, seeds `seed_of('bench', task, 0..n-1)`,
   budget, window and normalised regret, the learned policy laid over the mode's plan as
   its ``learned`` row) run with the weights before (shipped) and after (the local weights
   in force at the end; the shipped ones if the gate refused every run). Paired difference
   after - before of the mean regret over tasks, per seed, with its 95 % bootstrap interval.
   PASS when no worse by the learner's own paired decision (mean difference <= 0, or the
   interval's upper bound below `check.MARGIN`).

The GP is left out of the local studies and of the check (as in training); held-out studies
are run as `bench/strategy.py` runs them.

    nice -n 5 .venv/bin/python bench/learning_curve.py            # 50 studies, 30 seeds
    nice -n 5 .venv/bin/python bench/learning_curve.py --studies 12 --seeds 6  # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import strategy as bench  # bench/strategy.py (the directory of this script is on the path)

from hpod.policies.compose import compose
from hpod.policies.strategy import check, learner
from hpod.policies.strategy.actions import Strategy
from hpod.policies.strategy.agent import LEARN_EVERY, StrategyAgent, shipped_dir
from hpod.policies.strategy.simulate import Simulation, Window, _balanced_plan, as_auto
from hpod.policies.strategy.suites import Task, held_out_suite, learning_family

ROOT = Path(__file__).resolve().parent.parent
#: The sources of decisions the daemon learns from (`hpod.daemon.strategy.LEARNING_SOURCES`).
LEARNING_SOURCES = frozenset({"policy", "rules", "explore", "forced"})


def local_study(agent: StrategyAgent, task: Task, seed: int) -> tuple[int, list[str]]:
    """One study decided by `agent` as the daemon decides (learned policy, exploration,
    composed plans, the last record handed back); every scored window recorded. Returns the
    windows recorded and the decisions' sources."""
    sim = Simulation(task, seed, "balanced", bench.BUDGET, bench.WINDOW)
    records: list[dict[str, Any]] = []
    current: str | None = None
    recorded, sources = 0, []

    def plan_of(strategy: Strategy) -> Any:
        return compose(_balanced_plan(), strategy, task.fidelity, keep_mode_pruning=True)

    while not sim.done:
        told = len(sim.trials())
        feats = sim.features()
        decision = agent.decide(
            sim.shape,
            feats,
            "balanced",
            told,
            told,
            sim.ladder_pays,
            current,
            records[-1] if records else None,
            plan_of=plan_of,
        )
        current = decision.strategy.name
        sources.append(decision.source)
        strategy = as_auto(decision.strategy, task.fidelity)
        if sim.strategy is None or strategy.name != sim.strategy.name:
            sim.use(strategy, told)
        window = Window(told, strategy.name, decision.source, feats)
        window.outcome = outcome = sim.run_window()
        sim.record.windows.append(window)
        record: dict[str, Any] = {"strategy": current, "source": decision.source, "reward": None}
        if decision.instead_of:
            record["instead_of"] = decision.instead_of
        if outcome is not None:
            record["reward"] = outcome.reward
            if decision.source in LEARNING_SOURCES:
                agent.record(
                    StrategyAgent.experience_of(
                        f"{task.name}-{seed}", "balanced", decision, outcome
                    )
                )
                recorded += 1
        records.append(record)
    return recorded, sources


def learn_locally(studies: int, policy_dir: Path, explore_seed: int) -> dict[str, Any]:
    """Phase 1: the local studies and the learner runs; returns what happened."""
    shipped = shipped_dir()
    agent = StrategyAgent(policy_dir, explore=True, learn=False, learned=True, seed=explore_seed)
    agent.strategies = check.strategies()  # no GP, as in training and the check
    runs: list[dict[str, Any]] = []
    new, windows, sources = 0, 0, {}
    started = time.process_time()
    for i, task in enumerate(learning_family(studies)):
        n, used = local_study(agent, task, 2000 + i)
        new, windows = new + n, windows + n
        for s in used:
            sources[s] = sources.get(s, 0) + 1
        if new >= LEARN_EVERY or (i == studies - 1 and new):
            new = 0
            report = learner.learn(policy_dir, shipped / "replay.jsonl.gz", seed=0)
            runs.append({"after_study": i + 1, "windows": windows, **report})
            c = report["check"]
            print(
                f"learner run after study {i + 1} ({windows} windows): v{report['version']} "
                + ("INSTALLED" if report["installed"] else "refused")
                + f", check {c['difference']:+.4f} [{c['interval'][0]:+.4f}, "
                f"{c['interval'][1]:+.4f}]",
                flush=True,
            )
    return {
        "windows": windows,
        "sources": sources,
        "runs": runs,
        "installed": sum(r["installed"] for r in runs),
        "refused": sum(not r["installed"] for r in runs),
        "cpu_s": time.process_time() - started,
    }


def judge(before: Path, after: Path, seeds: int, processes: int) -> dict[str, Any]:
    """Phase 2: the held-out suite with the weights before and after, paired by seed."""
    tasks = held_out_suite()
    arms = {"before": str(before), "after": str(after)}
    jobs = [
        ("held-out", i, "learned", bench.seed_of("bench", task.name, s), weights)
        for s in range(seeds)
        for i, task in enumerate(tasks)
        for weights in arms.values()
    ]
    with get_context("spawn").Pool(processes) as pool:
        runs = pool.map(bench._run, jobs, chunksize=2)
    finals: dict[tuple[str, str, int], float] = {}
    cpu = 0.0
    for job, run in zip(jobs, runs, strict=True):
        arm = "before" if job[4] == arms["before"] else "after"
        finals[(arm, run["task"], job[3])] = run["best"][-1]
        cpu += run["cpu"]
    per_seed: dict[str, list[float]] = {"before": [], "after": []}
    for s in range(seeds):
        row: dict[str, list[float]] = {"before": [], "after": []}
        for task in tasks:
            seed = bench.seed_of("bench", task.name, s)
            ref, optimum = bench.reference(task)
            both = [finals[(a, task.name, seed)] for a in row]
            everything = [
                finals[(a, task.name, bench.seed_of("bench", task.name, k))]
                for a in row
                for k in range(seeds)
            ]
            low = min([v for v in everything if np.isfinite(v)] + [optimum or np.inf])
            for arm, value in zip(row, both, strict=True):
                row[arm].append(bench.regret(value, low, ref))
        for arm in row:
            per_seed[arm].append(statistics.fmean(row[arm]))
    d = np.array(per_seed["after"]) - np.array(per_seed["before"])
    low, high = bench.interval(d)
    return {
        "before": statistics.fmean(per_seed["before"]),
        "after": statistics.fmean(per_seed["after"]),
        "difference": float(d.mean()),
        "interval": [low, high],
        "worse_seeds": int((d > 1e-12).sum()),
        "better_seeds": int((d < -1e-12).sum()),
        "tasks": [t.name for t in tasks],
        "cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=30, help="held-out seeds (positions)")
    parser.add_argument("--explore-seed", type=int, default=0, help="the agent's exploration")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/learning-curve.json")
    args = parser.parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="hpod-curve-") as tmp:
        policy_dir = Path(tmp) / "policy"
        learned = learn_locally(args.studies, policy_dir, args.explore_seed)
        after = Path(tmp) / "after"
        after.mkdir()
        local = policy_dir / "weights.json"
        shutil.copy(local if local.exists() else shipped_dir() / "weights.json", after)
        (after / "replay.jsonl.gz").symlink_to(shipped_dir() / "replay.jsonl.gz")
        judged = judge(shipped_dir(), after, args.seeds, args.processes)
    passed = check.gate_passes(judged["difference"], judged["interval"][1])
    commit = bench.code_commit()
    result = {
        "commit": commit,
        "studies": args.studies,
        "study_seeds": [2000, 2000 + args.studies - 1],
        "held_out_seeds": args.seeds,
        "learning": learned,
        "held_out": judged,
        "passed": passed,
        "minutes": (time.time() - started) / 60,
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    lo, hi = judged["interval"]
    print(
        f"commit {commit}: {args.studies} local studies (seeds 2000-{2000 + args.studies - 1}),"
        f" {learned['windows']} windows, sources {learned['sources']}; learner runs: "
        f"{learned['installed']} installed, {learned['refused']} refused\n"
        f"held-out ({len(judged['tasks'])} tasks x {args.seeds} seeds), learned policy: "
        f"before {judged['before']:.4f}, after {judged['after']:.4f}, paired after - before "
        f"{judged['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] (worse on {judged['worse_seeds']},"
        f" better on {judged['better_seeds']} seeds)\n"
        f"held-out regret no worse after {args.studies} local studies: "
        + ("PASS" if passed else "MISS")
        + f"\nCPU: local studies and learner {learned['cpu_s']:.0f} s, held-out "
        f"{judged['cpu_s']:.0f} s; {result['minutes']:.1f} min wall",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
