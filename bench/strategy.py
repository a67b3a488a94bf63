"""The strategy policy on held-out tasks: auto against every fixed strategy, the best fixed
strategy in hindsight, the rule-based selector and Optuna's default TPE; and a learning curve.

Every configuration runs the same simulated studies (`hpod.policies.strategy.simulate`): the
same held-out tasks (`suites.held_out_suite()`: function families and an ML task the training
suite never saw), the same seeds, the same compute budget in full evaluations. A pruned or
low-fidelity trial costs its share of a full evaluation, so strategies compete at equal
compute, not at equal trial counts.

Normalised regret of a study at a share of the budget = (true value of the best configuration
found by then - best value known for the task) / (median value of 256 random configurations -
best value known), clipped to [0, 1]; 1 before any full evaluation finished. "Best known" is
the task's optimum where it is known, else the best value any run reached.

Learning curve: on a family in neither suite (`suites.learning_family`), a policy starting from
the shipped weights runs studies one after another, keeps their experience and re-learns
after every few studies (exploration on, as in the daemon); its regret by block of studies is
printed beside the rules' and the frozen shipped policy's on the same tasks.

    .venv/bin/python bench/strategy.py                       # 5 seeds, writes docs/benchmarks.md
    .venv/bin/python bench/strategy.py --seeds 2 --no-write  # smoke run
    .venv/bin/python bench/strategy.py --weights DIR         # judge other weights (e.g. retrained)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from hpod.engine import suggest
from hpod.policies.strategy import learner, rules
from hpod.policies.strategy.actions import SpaceShape, Strategy, action_features, available
from hpod.policies.strategy.agent import StrategyAgent, shipped_dir
from hpod.policies.strategy.replay import Experience
from hpod.policies.strategy.simulate import Chooser, StudyRecord, fixed, run_study, seed_of
from hpod.policies.strategy.suites import Task, held_out_suite, learning_family

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "results"
BUDGET = 40.0
WINDOW = 12
SHARES = (0.25, 0.5, 1.0)
DEFAULT_TPE = Strategy("default-tpe", "tpe")


def choosers(task: Task, weights: Path) -> dict[str, Chooser]:
    """The configurations judged on `task`: auto, rules, default TPE, each fixed strategy
    that can apply to it."""
    agent = StrategyAgent(
        Path(tempfile.mkdtemp(prefix="hpod-bench-policy-")),
        explore=False,
        learn=False,
        shipped=weights,
        learned=True,  # this benchmark judges the learned policy (auto's default is the rule)
    )

    current: list[str] = []  # one study per chooser: the strategy it is on

    def auto(shape: SpaceShape, feats: list[float], told: int, first: int) -> tuple[Strategy, str]:
        decision = agent.decide(
            shape, feats, "balanced", told, first, None, current[-1] if current else None
        )
        current.append(decision.strategy.name)
        return decision.strategy, decision.source

    def ruled(shape: SpaceShape, feats: list[float], told: int, first: int) -> tuple[Strategy, str]:
        return rules.choose(shape, told, None), "rules"

    configs: dict[str, Chooser] = {"auto": auto, "rules": ruled, "default-tpe": fixed(DEFAULT_TPE)}
    shape = SpaceShape.of(task.spec(), task.fidelity)
    for strategy in available(shape):
        if strategy.auto:
            configs[strategy.name] = fixed(strategy)
    return configs


def _run(job: tuple[int, str, int, str]) -> dict[str, Any]:
    index, config, seed, weights = job
    task = held_out_suite()[index]
    started = time.process_time()
    record = run_study(
        task, choosers(task, Path(weights))[config], seed, "balanced", BUDGET, WINDOW
    )
    return {
        "task": task.name,
        "config": config,
        "seed": seed,
        "best": [record.best_at(share * BUDGET) for share in SHARES],
        "trials": record.trials,
        "decisions": [(w.told, w.strategy, w.source) for w in record.windows],
        "cpu": time.process_time() - started,
    }


def reference(task: Task) -> float:
    """Median true value of 256 random configurations of `task`."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed_of(task.name, "ref")))
    values = []
    for _ in range(256):
        trial = study.ask()
        values.append(task.value(suggest(trial, task.spec().space), 1.0, None))
        study.tell(trial, values[-1])
    return float(statistics.median(values))


def regret(best: float, low: float, ref: float) -> float:
    if not math.isfinite(best):
        return 1.0
    return min(1.0, max(0.0, (best - low) / (ref - low))) if ref > low else 0.0


def judge(runs: list[dict[str, Any]], tasks: Sequence[Task]) -> dict[str, Any]:
    """Mean normalised regret by configuration, task and share of the budget."""
    table: dict[str, dict[str, list[float]]] = {}
    for task in tasks:
        mine = [r for r in runs if r["task"] == task.name]
        finals = [r["best"][-1] for r in mine if math.isfinite(r["best"][-1])]
        low = min([*finals, *([task.optimum] if task.optimum is not None else [])])
        ref = reference(task)
        by_config: dict[str, list[list[float]]] = {}
        for r in mine:
            by_config.setdefault(r["config"], []).append([regret(b, low, ref) for b in r["best"]])
        table[task.name] = {
            config: [statistics.fmean(v[i] for v in values) for i in range(len(SHARES))]
            for config, values in by_config.items()
        }
    configs = sorted({c for t in table.values() for c in t})
    mean = {
        c: [statistics.fmean(table[t][c][i] for t in table if c in table[t]) for i in range(3)]
        for c in configs
    }
    coverage = {c: sum(c in table[t] for t in table) for c in configs}
    hindsight_pick = {
        t: min(
            (c for c in table[t] if c not in ("auto", "rules", "default-tpe")),
            key=lambda c: table[t][c][-1],
        )
        for t in table
    }
    mean["best fixed (hindsight)"] = [
        statistics.fmean(table[t][hindsight_pick[t]][i] for t in table) for i in range(3)
    ]
    return {"per_task": table, "mean": mean, "coverage": coverage, "hindsight": hindsight_pick}


def learning_curve(weights: Path, studies: int, every: int, seed: int) -> dict[str, Any]:
    """Regret of a learning policy on a new family, study after study, against the rules and
    the frozen shipped policy on the same tasks and seeds."""
    tasks = learning_family(studies)
    with tempfile.TemporaryDirectory(prefix="hpod-learning-") as tmp:
        policy_dir = Path(tmp)
        learning = StrategyAgent(policy_dir, explore=True, learn=False, seed=seed, shipped=weights)
        frozen = StrategyAgent(policy_dir / "frozen", explore=False, learn=False, shipped=weights)
        curves: dict[str, list[float]] = {"learning": [], "frozen": [], "rules": []}
        for i, task in enumerate(tasks):
            study_seed = seed_of(seed, task.name, i)
            records: dict[str, StudyRecord] = {}
            for name, agent in (("learning", learning), ("frozen", frozen)):
                current: list[str] = []

                def chooser(
                    shape: SpaceShape,
                    feats: list[float],
                    told: int,
                    first: int,
                    a: Any = agent,
                    current: list[str] = current,
                ) -> tuple[Strategy, str]:
                    d = a.decide(
                        shape,
                        feats,
                        "balanced",
                        told,
                        first,
                        None,
                        current[-1] if current else None,
                    )
                    current.append(d.strategy.name)
                    return d.strategy, d.source

                records[name] = run_study(task, chooser, study_seed, "balanced", BUDGET, WINDOW)
            records["rules"] = run_study(
                task,
                lambda shape, feats, told, first: (rules.choose(shape, told, None), "rules"),
                study_seed,
                "balanced",
                BUDGET,
                WINDOW,
            )
            finals = [r.best_at(BUDGET) for r in records.values()]
            low = min([*finals, 0.0])
            ref = reference(task)
            for name, record in records.items():
                curves[name].append(regret(record.best_at(BUDGET), low, ref))
            for window in records["learning"].windows:
                if window.outcome is not None:
                    strategy = learning.by_name(window.strategy)
                    learning.buffer.append(
                        Experience(
                            f"{task.name}/{i}",
                            "balanced",
                            strategy.name,
                            window.features,
                            action_features(strategy),
                            window.outcome.reward,
                            window.outcome.improvement,
                            window.outcome.compute,
                            window.outcome.trials,
                            time.time(),
                        )
                    )
            if (i + 1) % every == 0 and i + 1 < studies:
                learner.learn(policy_dir, weights / "replay.jsonl.gz", seed=seed)
                learning._load()
    return {"studies": studies, "every": every, "curves": curves}


def render(result: dict[str, Any]) -> str:
    """The Markdown section of docs/benchmarks.md."""
    judged = result["judged"]
    mean = judged["mean"]
    lines = [
        f"Run on {result['date']} at commit `{result['commit']}`: "
        f"`.venv/bin/python bench/strategy.py --seeds {result['seeds']}` "
        f"({result['minutes']:.0f} min on 2 cores). Held-out tasks: "
        + ", ".join(f"`{t}`" for t in result["tasks"])
        + f"; budget {BUDGET:.0f} full evaluations per study, decisions every {WINDOW} trials, "
        f"balanced mode; weights `{result['weights']}`.",
        "",
        "Mean normalised regret (0 = best known, 1 = median random configuration) over the "
        "held-out tasks, at a share of the compute budget:",
        "",
        "| configuration | 25 % | 50 % | 100 % | tasks |",
        "|---|---|---|---|---|",
    ]
    order = ["auto", "best fixed (hindsight)", "rules", "default-tpe"]
    order += sorted(c for c in mean if c not in order)
    for c in order:
        r = mean[c]
        cover = judged["coverage"].get(c, len(result["tasks"]))
        name = f"**{c}**" if c == "auto" else c
        lines.append(f"| {name} | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.3f} | {cover} |")
    lines += [
        "",
        "Per task, regret at 100 % (auto / best fixed in hindsight, which / rules / default TPE):",
        "",
    ]
    lines += ["| task | auto | best fixed | rules | default TPE |", "|---|---|---|---|---|"]
    for task, configs in judged["per_task"].items():
        pick = judged["hindsight"][task]
        lines.append(
            f"| {task} | {configs['auto'][-1]:.3f} | {configs[pick][-1]:.3f} ({pick}) | "
            f"{configs['rules'][-1]:.3f} | {configs['default-tpe'][-1]:.3f} |"
        )
    lines += ["", "Targets:", ""]
    lines += [f"- {t}" for t in result["targets"]]
    curve = result.get("learning")
    if curve:
        lines += [
            "",
            f"Learning curve on a new family (`schwefel_sum`, {curve['studies']} studies of "
            f"varied dimension and box, re-learning every {curve['every']} studies): mean regret "
            "at 100 % by block of studies.",
            "",
            "| studies | learning policy | frozen shipped policy | rules |",
            "|---|---|---|---|",
        ]
        k = curve["every"]
        for start in range(0, curve["studies"], k):
            cells = [
                statistics.fmean(curve["curves"][n][start : start + k])
                for n in ("learning", "frozen", "rules")
            ]
            lines.append(
                f"| {start + 1}-{start + k} | " + " | ".join(f"{c:.3f}" for c in cells) + " |"
            )
    return "\n".join(lines)


def targets(judged: dict[str, Any]) -> list[str]:
    mean = judged["mean"]
    auto, best = mean["auto"][-1], mean["best fixed (hindsight)"][-1]
    out = []
    ratio = auto / best if best > 0 else math.inf
    out.append(
        f"auto / best fixed in hindsight = {ratio:.2f}x (target <= 1.05x): "
        + ("met" if ratio <= 1.05 else "**missed**")
    )
    for other in ("default-tpe", "rules"):
        ok = auto < mean[other][-1]
        out.append(
            f"auto {auto:.3f} < {other} {mean[other][-1]:.3f}: " + ("met" if ok else "**missed**")
        )
    return out


def write_doc(section: str) -> None:
    text = DOC.read_text()
    start, end = "<!-- strategy:start -->", "<!-- strategy:end -->"
    block = f"{start}\n{section}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## Strategy policy (issue 6)\n\n{block}\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--weights", type=Path, default=shipped_dir())
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--learning-studies", type=int, default=12)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    tasks = held_out_suite()
    jobs = [
        (i, config, seed_of("bench", task.name, s), str(args.weights))
        for i, task in enumerate(tasks)
        for config in choosers(task, args.weights)
        for s in range(args.seeds)
    ]
    print(f"{len(jobs)} studies on {len(tasks)} held-out tasks", flush=True)
    with get_context("spawn").Pool(args.processes) as pool:
        runs = pool.map(_run, jobs, chunksize=1)
    judged = judge(runs, tasks)
    print(f"judged in {time.time() - started:.0f} s; learning curve", flush=True)
    curve = (
        learning_curve(args.weights, args.learning_studies, 3, 0) if args.learning_studies else None
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    result = {
        "date": dt.date.today().isoformat(),
        "commit": commit,
        "seeds": args.seeds,
        "weights": str(
            args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT) else args.weights
        ),
        "tasks": [t.name for t in tasks],
        "judged": judged,
        "targets": targets(judged),
        "learning": curve,
        "minutes": (time.time() - started) / 60,
        "runs": runs,
    }
    section = render(result)
    print(section)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "strategy.json").write_text(json.dumps(result, indent=1, default=float))
    if not args.no_write:
        write_doc(section)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
