"""Does the strategy policy earn its place? auto and the learned policy against the mode plan,
the static one-line rule, the single best fixed strategy and a per-task best, on a frozen
held-out suite (issue 14, items 1 and 5).

Suites (`hpod.policies.strategy.suites`, disjoint): training (what `hpod policy train`
learns from), validation (what design choices are judged on: `--suite validation`) and
held-out (frozen; the default): four function families no other suite has and four shipped
objectives recorded for real (`recorded.py`: real values, measured CPU per configuration and
fidelity). Every configuration runs the same simulated studies (`simulate.py`): the same
tasks, the same seeds, a budget of `BUDGET` full evaluations of compute (a task's unit is the
median measured CPU of its full evaluation; a pruned or low-fidelity trial costs what it
measured), decisions every `WINDOW` trials, balanced mode.

Configurations:

- each fixed strategy, without duplicates: one TPE (multivariate; Optuna 5's TPE), pruners
  only where they act (epochs; on data only with a ladder), no GP (its ~0.1-0.5 s of CPU a
  suggestion makes thousands of studies unaffordable, and the rule picks it only for
  evaluations of 2 CPU s or more, which no task here has);
- ``auto`` as shipped (the static rule of `rules.py`, laid over the mode's plan as the
  daemon lays it: `simulate.as_auto`);
- ``learned``: the learned policy (opt-in ``policy_learned``), laid over the mode's plan;
- ``mode plan``: balanced without a strategy: multivariate TPE; TPE + the median step
  pruner on epochs; TPE + successive halving on the data ladder. This is also the issue's
  one-line static rule (TPE; TPE + median on epochs; TPE + halving ladder on data): in this
  release they are the same strategies, so one row stands for both;
- ``single best fixed``: the one fixed strategy (the mode plan where it cannot apply) with
  the lowest mean regret on the *other* half of the seeds (cross-fitted, never picked and
  scored on the same seeds); ``per-task best``: per task, likewise;
- ``random per window``: a strategy drawn at random from the task's pool every window.

Normalised regret of a study at a share of the budget = (true value of the best configuration
found by then - best known) / (median of 256 random configurations - best known), clipped to
[0, 1]. Best known: the optimum (functions: known; recorded: the best recorded full value),
else the best any run reached. Paired differences are per seed (the mean over tasks), with
95 % percentile bootstrap intervals over seeds.

    .venv/bin/python bench/strategy.py                    # 30 seeds, held-out (11 min on 2
                                                          # shared cores), docs/benchmarks.md
    .venv/bin/python bench/strategy.py --suite validation --no-write
    .venv/bin/python bench/strategy.py --seeds 4 --no-write  # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from hpod.engine import suggest
from hpod.policies.strategy import recorded
from hpod.policies.strategy.actions import BUILTIN, SpaceShape, Strategy
from hpod.policies.strategy.agent import StrategyAgent, shipped_dir
from hpod.policies.strategy.simulate import Chooser, as_auto, fixed, run_study, seed_of
from hpod.policies.strategy.suites import SUITES, Task

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "results"
BUDGET = 40.0
WINDOW = 12
SHARES = (0.25, 0.5, 1.0)
BOOTSTRAP = 10_000
#: The fixed strategies judged (one TPE: Optuna 5's TPE is multivariate by default).
POOL = (
    "random",
    "qmc",
    "tpe-multivariate",
    "cmaes",
    "tpe-median",
    "tpe-hyperband",
    "cmaes-median",
    "tpe-halving-ladder",
)
MODE_PLAN = {"none": "tpe-multivariate", "epochs": "tpe-median", "data": "tpe-halving-ladder"}
RUN = ("auto", "learned", "random per window")
MODE_ROW = "mode plan = one-line rule"
SINGLE, PER_TASK = "single best fixed (other seeds)", "per-task best (other seeds)"


def pool(task: Task) -> list[Strategy]:
    """The fixed strategies that apply to `task` and differ on it: masked ones out, and a
    pruner only where it acts (epochs reported, or a data ladder to prune on)."""
    shape = SpaceShape.of(task.spec(), task.fidelity)
    by_name = {s.name: s for s in BUILTIN}
    out = []
    for name in POOL:
        s = by_name[name]
        if s.mask_reason(shape) is not None:
            continue
        if s.pruner != "none" and task.fidelity == "data" and len(s.ladder) == 1:
            continue  # no rungs: the pruner never acts, the same study as its sampler's
        out.append(s)
    return out


@cache
def _agent(weights: str, learned: bool) -> StrategyAgent:
    return StrategyAgent(
        Path(tempfile.mkdtemp(prefix="hpod-bench-policy-")),
        explore=False,
        learn=False,
        shipped=Path(weights),
        learned=learned,
    )


def chooser(task: Task, config: str, seed: int, weights: str) -> Chooser:
    """The chooser of a configuration that is run (not derived from the fixed runs)."""
    if config in {s.name for s in pool(task)}:
        return fixed(next(s for s in pool(task) if s.name == config))
    if config == "random per window":
        draw = random.Random(seed_of(seed, task.name, "random-window"))
        strategies = pool(task)
        return lambda shape, feats, told, first, ladder_pays: (draw.choice(strategies), "random")
    agent = _agent(weights, config == "learned")
    current: list[str] = []

    def decide(
        shape: SpaceShape, feats: list[float], told: int, first: int, ladder_pays: bool | None
    ) -> tuple[Strategy, str]:
        d = agent.decide(
            shape, feats, "balanced", told, first, ladder_pays, current[-1] if current else None
        )
        current.append(d.strategy.name)
        return as_auto(d.strategy, task.fidelity), d.source

    return decide


def _run(job: tuple[str, int, str, int, str]) -> dict[str, Any]:
    suite, index, config, seed, weights = job
    task = SUITES[suite]()[index]
    started = time.process_time()
    record = run_study(task, chooser(task, config, seed, weights), seed, "balanced", BUDGET, WINDOW)
    return {
        "task": task.name,
        "config": config,
        "seed": seed,
        "best": [record.best_at(share * BUDGET) for share in SHARES],
        "trials": record.trials,
        "decisions": [w.strategy for w in record.windows],
        "cpu": time.process_time() - started,
    }


def reference(task: Task) -> tuple[float, float | None]:
    """(median true value of 256 random configurations, the best known value or None)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed_of(task.name, "ref")))
    values = []
    for _ in range(256):
        trial = study.ask()
        values.append(task.value(suggest(trial, task.spec().space), 1.0, None))
        study.tell(trial, values[-1])
    best = task.optimum
    if task.recorded:
        top = str(recorded.by_name(task.name).epochs) if task.fidelity == "epochs" else "1.0000"
        best = min(float(r["values"][top]) for r in recorded.table(task.name).values())
    return float(statistics.median(values)), best


def regret(best: float, low: float, ref: float) -> float:
    if not math.isfinite(best):
        return 1.0
    return min(1.0, max(0.0, (best - low) / (ref - low))) if ref > low else 0.0


def regrets(
    runs: list[dict[str, Any]], tasks: Sequence[Task]
) -> dict[str, dict[str, dict[int, list[float]]]]:
    """Regret by task, configuration and seed (at each share of the budget), with the mode
    plan's row mapped from the fixed runs."""
    out: dict[str, dict[str, dict[int, list[float]]]] = {}
    for task in tasks:
        mine = [r for r in runs if r["task"] == task.name]
        ref, optimum = reference(task)
        finals = [r["best"][-1] for r in mine if math.isfinite(r["best"][-1])]
        low = min([*finals, *([optimum] if optimum is not None else [])])
        table: dict[str, dict[int, list[float]]] = {}
        for r in mine:
            table.setdefault(r["config"], {})[r["seed"]] = [regret(b, low, ref) for b in r["best"]]
        table[MODE_ROW] = table[MODE_PLAN[task.fidelity]]
        out[task.name] = table
    return out


def cross_fitted(
    table: dict[str, dict[str, dict[int, list[float]]]], seeds: list[int]
) -> dict[str, list[list[str]]]:
    """Add the single best fixed strategy and the per-task best, each picked on the other
    half of the seeds (even / odd positions) and scored on this half; returns the picks by
    task, [single, per-task] for each half."""
    halves = [seeds[0::2], seeds[1::2]]
    tasks = list(table)

    def fixed_names(task: str) -> list[str]:
        return [c for c in POOL if c in table[task]]

    def score(task: str, name: str, on: list[int]) -> float:
        row = table[task].get(name, table[task][MODE_ROW])
        return statistics.fmean(row[s][-1] for s in on)

    picks: dict[str, list[list[str]]] = {task: [] for task in tasks}
    for task in tasks:
        table[task][SINGLE], table[task][PER_TASK] = {}, {}
    for i, half in enumerate(halves):
        other = halves[1 - i]
        single = min(POOL, key=lambda n: statistics.fmean(score(t, n, other) for t in tasks))
        for task in tasks:
            per_task = min(fixed_names(task), key=lambda n: score(task, n, other))
            for s in half:
                table[task][SINGLE][s] = table[task].get(single, table[task][MODE_ROW])[s]
                table[task][PER_TASK][s] = table[task][per_task][s]
            picks[task].append([single, per_task])
    return picks


def per_seed(table: dict[str, Any], config: str, seeds: list[int], share: int = -1) -> np.ndarray:
    """Mean regret over tasks, one value per seed."""
    return np.array([statistics.fmean(table[t][config][s][share] for t in table) for s in seeds])


def interval(
    values: np.ndarray, stat: Callable[[np.ndarray], float] = np.mean
) -> tuple[float, float]:
    """95 % percentile bootstrap interval of `stat` over the rows of `values`."""
    rng = np.random.default_rng(0)
    n = len(values)
    draws = [stat(values[rng.integers(0, n, n)]) for _ in range(BOOTSTRAP)]
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def compare(table: dict[str, Any], a: str, b: str, seeds: list[int]) -> dict[str, float]:
    """Paired difference of mean regret a - b (negative: a is better), with its interval."""
    d = per_seed(table, a, seeds) - per_seed(table, b, seeds)
    low, high = interval(d)
    return {"diff": float(d.mean()), "low": low, "high": high}


def gap_closed(table: dict[str, Any], config: str, seeds: list[int]) -> dict[str, float]:
    """Share of the single-best-to-per-task-best gap `config` closes, with its interval."""
    rows = np.stack(
        [
            per_seed(table, SINGLE, seeds),
            per_seed(table, PER_TASK, seeds),
            per_seed(table, config, seeds),
        ],
        axis=1,
    )

    def share(r: np.ndarray) -> float:
        single, best, mine = r.mean(axis=0)
        return float((single - mine) / (single - best)) if single > best else math.nan

    rng = np.random.default_rng(0)
    draws = [share(rows[rng.integers(0, len(rows), len(rows))]) for _ in range(BOOTSTRAP)]
    finite = [d for d in draws if math.isfinite(d)]
    low, high = np.percentile(finite, [2.5, 97.5]) if finite else (math.nan, math.nan)
    return {"share": share(rows), "low": float(low), "high": float(high)}


def code_commit() -> str:
    """The commit measured (`git describe`, marked ``-dirty`` when the tree has changes)."""
    return subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=7"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()


def judge(runs: list[dict[str, Any]], tasks: Sequence[Task], seeds: list[int]) -> dict[str, Any]:
    table = regrets(runs, tasks)
    picks = cross_fitted(table, seeds)
    configs = [MODE_ROW, "auto", "learned", SINGLE, PER_TASK, "random per window"]
    configs += [c for c in POOL if any(c in table[t] for t in table)]
    mean = {}
    for c in configs:
        cover = [t for t in table if c in table[t]]
        mean[c] = [
            statistics.fmean(statistics.fmean(table[t][c][s][i] for s in seeds) for t in cover)
            for i in range(len(SHARES))
        ] + [len(cover)]
    pairs = {
        f"{a} - {b}": compare(table, a, b, seeds)
        for a in ("learned", "auto")
        for b in (MODE_ROW, SINGLE, PER_TASK, "random per window")
    }
    pairs["learned - auto"] = compare(table, "learned", "auto", seeds)
    return {
        "mean": mean,
        "pairs": pairs,
        "gap": {c: gap_closed(table, c, seeds) for c in ("learned", "auto")},
        "per_task": {
            t: {c: statistics.fmean(table[t][c][s][-1] for s in seeds) for c in table[t]}
            for t in table
        },
        "picks": picks,
    }


def _gap_words(gap: dict[str, float]) -> str:
    if not math.isfinite(gap["share"]):
        return (
            "no gap (the per-task best, picked on other seeds, is no better than the single best)"
        )
    return f"{100 * gap['share']:.0f} % [{100 * gap['low']:.0f} %, {100 * gap['high']:.0f} %]"


def targets(judged: dict[str, Any]) -> tuple[list[str], str]:
    """The issue's targets for the learned policy, PASS or MISS, and the decision."""
    p, gap = judged["pairs"], judged["gap"]["learned"]
    out = []
    for name, key in (
        ("the mode plan = the one-line static rule", f"learned - {MODE_ROW}"),
        ("the single best fixed strategy", f"learned - {SINGLE}"),
    ):
        d = p[key]
        ok = d["high"] < 0
        out.append(
            f"learned below {name}, interval excluding zero: {d['diff']:+.4f} "
            f"[{d['low']:+.4f}, {d['high']:+.4f}]: " + ("PASS" if ok else "MISS")
        )
    d = p["learned - auto"]
    out.append(
        f"learned below auto as shipped (the rule), interval excluding zero: {d['diff']:+.4f} "
        f"[{d['low']:+.4f}, {d['high']:+.4f}]: " + ("PASS" if d["high"] < 0 else "MISS")
    )
    out.append(
        f">= 40 % of the single-best-to-per-task-best gap closed: {_gap_words(gap)}: "
        + ("PASS" if gap["share"] >= 0.4 else "MISS")
    )
    out.append(
        "after 50 local studies of one family, held-out regret no worse: measured by "
        "bench/learning_curve.py (also in `make policy`), not here"
    )
    beats = all(p[k]["high"] < 0 for k in (f"learned - {MODE_ROW}", "learned - auto"))
    decision = (
        "Decision: the learned policy beats the static rule with an interval above zero: "
        "it may become auto."
        if beats
        else "Decision: the learned policy does not beat the static rule with an interval "
        "above zero, so `auto` is the static rule (`rules.py`) and the learned policy stays opt-in "
        "(`policy_learned = true`)."
    )
    return out, decision


def render(result: dict[str, Any]) -> str:
    """The Markdown section of docs/benchmarks.md."""
    j = result["judged"]
    lines = [
        f"Run on {result['date']} at commit `{result['commit']}`: "
        f"`.venv/bin/python bench/strategy.py --seeds {len(result['seeds'])}"
        + (f" --suite {result['suite']}" if result["suite"] != "held-out" else "")
        + f"` ({result['minutes']:.0f} min on 2 shared cores, {result['processes']} processes). "
        f"Suite `{result['suite']}`: "
        + ", ".join(f"`{t}`" for t in result["tasks"])
        + f"; seeds `seed_of('bench', task, 0..{len(result['seeds']) - 1})`; budget "
        f"{BUDGET:.0f} full evaluations (of measured CPU) per study, decisions every {WINDOW} "
        f"trials, balanced mode; weights `{result['weights']}` "
        f"(sha256 {result['weights_sha'][:12]}).",
        "",
        "Mean normalised regret (0 = best known, 1 = median random configuration) at a share "
        "of the compute budget:",
        "",
        "| configuration | 25 % | 50 % | 100 % | tasks |",
        "|---|---|---|---|---|",
    ]
    for c, r in j["mean"].items():
        name = f"**{c}**" if c in ("auto", "learned") else c
        lines.append(f"| {name} | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.3f} | {r[3]} |")
    lines += [
        "",
        "Paired differences of mean final regret over seeds (negative: the first is better), "
        "95 % bootstrap intervals:",
        "",
        "| difference | mean | 95 % interval |",
        "|---|---|---|",
    ]
    for k, d in j["pairs"].items():
        lines.append(f"| {k} | {d['diff']:+.4f} | [{d['low']:+.4f}, {d['high']:+.4f}] |")
    lines += ["", "Share of the single-best-to-per-task-best gap closed:", ""]
    for c, g in j["gap"].items():
        lines.append(f"- {c}: {_gap_words(g)}")
    lines += [
        "",
        "Per task, mean final regret (auto / learned / mode plan / per-task best, picked on the "
        "other seeds on each half):",
        "",
        "| task | auto | learned | mode plan | per-task best | picks (two halves) |",
        "|---|---|---|---|---|---|",
    ]
    for t, row in j["per_task"].items():
        picks = j["picks"][t]
        lines.append(
            f"| {t} | {row['auto']:.3f} | {row['learned']:.3f} | {row[MODE_ROW]:.3f} | "
            f"{row[PER_TASK]:.3f} | {picks[0][1]}, {picks[1][1]} |"
        )
    singles = sorted({p[0] for t in j["picks"].values() for p in t})
    lines += ["", f"Single best fixed strategy picked on each half: {', '.join(singles)}.", ""]
    lines += ["Targets (issue 14), for the learned policy:", ""]
    lines += [f"- {t}" for t in result["targets"]]
    lines += ["", result["decision"]]
    return "\n".join(lines)


def write_doc(section: str) -> None:
    text = DOC.read_text()
    start, end = "<!-- strategy:start -->", "<!-- strategy:end -->"
    block = f"{start}\n{section}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## Strategy policy\n\n{block}\n"
    DOC.write_text(text)


def _saved(path: Path) -> dict[tuple[int, str, int], dict[str, Any]]:
    """Studies already run (a previous, interrupted run of the same command)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["index"], r["config"], r["seed"]): r for r in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--suite", choices=sorted(SUITES), default="held-out")
    parser.add_argument("--weights", type=Path, default=shipped_dir())
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--runs",
        type=Path,
        default=RESULTS / "strategy-runs.jsonl",
        help="each study's result, appended as it finishes",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the studies already in --runs, run the rest"
    )
    args = parser.parse_args(argv)
    started = time.time()
    tasks = SUITES[args.suite]()
    RESULTS.mkdir(exist_ok=True)
    if not args.resume:
        args.runs.unlink(missing_ok=True)
    seeds = list(range(args.seeds))
    jobs = [
        (args.suite, i, config, seed_of("bench", task.name, s), str(args.weights))
        for s in seeds  # seed-major: an interrupted run leaves whole seeds in --runs
        for i, task in enumerate(tasks)
        for config in [*(s.name for s in pool(task)), *RUN]
    ]
    # Seeds by position: the study seed differs per task, the pairing is by position.
    position = {seed_of("bench", t.name, s): s for t in tasks for s in seeds}
    done = _saved(args.runs) if args.resume else {}
    todo = [j for j in jobs if (j[1], j[2], j[3]) not in done]
    print(f"{len(jobs)} studies on {len(tasks)} {args.suite} tasks, {len(todo)} to run", flush=True)
    with get_context("spawn").Pool(args.processes) as pool_, args.runs.open("a") as out:
        for job, run in zip(todo, pool_.imap(_run, todo, chunksize=2), strict=True):
            run["index"] = job[1]
            out.write(json.dumps(run) + "\n")
            out.flush()
            done[(job[1], job[2], job[3])] = run
    runs = [dict(done[(j[1], j[2], j[3])]) for j in jobs]
    for r in runs:
        r["seed"] = position[r["seed"]]
    judged = judge(runs, tasks, seeds)
    commit = code_commit()
    weights_sha = json.loads((args.weights / "weights.json").read_text()).get("sha256", "?")
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "commit": commit,
        "suite": args.suite,
        "seeds": seeds,
        "processes": args.processes,
        "weights": str(
            args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT) else args.weights
        ),
        "weights_sha": weights_sha,
        "tasks": [t.name for t in tasks],
        "judged": judged,
        "minutes": (time.time() - started) / 60,
        "runs": runs,
    }
    result["targets"], result["decision"] = targets(judged)
    section = render(result)
    print(section)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"strategy-{args.suite}.json").write_text(
        json.dumps(result, indent=1, default=float)
    )
    if not args.no_write and args.suite == "held-out":
        write_doc(section)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
