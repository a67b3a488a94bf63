"""The learner's check suite at work (issue 14, item 3): does local learning pass the gate,
and what margin should the gate's paired decision allow?

Two arms of candidate weights, each trained once per learner seed (`--seeds`) exactly as the
learner trains them (`learner.train` on the shipped buffer, plus local windows):

- ``local``: the windows of `--studies` simulated studies of the learning family
  (`suites.learning_family`, in no suite the shipped weights were trained on), decided by the
  rule as the daemon's ``auto`` is by default, turned into experiences over the horizon as
  the learner does (`learner.over_horizon`);
- ``none``: no local window at all: plain retraining, the gate's noise floor.

Each candidate is judged against the shipped weights (in force on a fresh daemon) on the
check suite's eleven tasks with two disjoint sets of study seeds: ``validation`` (201-204,
where the margin is chosen) and ``check`` (the suite's own, 101-104: held out, reported).
Prints, per candidate and seed set, the paired difference in normalised regret (candidate -
in force) with its 95 % bootstrap interval, then for each `--margins` value how many
candidates of each arm pass the paired decision (mean difference <= 0, or the interval's
upper bound below the margin) on each seed set.

    .venv/bin/python bench/learning_gate.py                 # 12 studies, learner seeds 0-3
    .venv/bin/python bench/learning_gate.py --seeds 0 1 --processes 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from hpod.policies.strategy import check, learner, model, rules
from hpod.policies.strategy.actions import BUILTIN, SpaceShape, Strategy, action_features
from hpod.policies.strategy.agent import shipped_dir
from hpod.policies.strategy.replay import Experience, ReplayBuffer, read_experiences
from hpod.policies.strategy.simulate import run_study
from hpod.policies.strategy.suites import learning_family

BY_NAME = {s.name: s for s in BUILTIN}
POOLS = {"validation": (201, 202, 203, 204), "check": check.CHECK_SEEDS}


def ruled(
    shape: SpaceShape, feats: list[float], told: int, first: int, ladder_pays: bool | None
) -> tuple[Strategy, str]:
    return rules.choose(shape, told, ladder_pays), "rules"


def local_windows(studies: int) -> list[Experience]:
    """The windows of `studies` rule-decided studies of the learning family (study seeds
    1000 on), one experience each, written to a replay buffer and read back as the learner
    reads the daemon's (the buffer rounds its numbers)."""
    out = []
    for i, task in enumerate(learning_family(studies)):
        record = run_study(task, ruled, 1000 + i)
        for w in record.windows:
            if w.outcome is None:
                continue
            s, o = BY_NAME[w.strategy], w.outcome
            out.append(
                Experience(
                    f"{task.name}/{i}",
                    "balanced",
                    s.name,
                    w.features,
                    action_features(s),
                    o.reward,
                    o.improvement,
                    o.compute,
                    o.trials,
                    time.time(),
                )
            )
    with tempfile.TemporaryDirectory(prefix="hpod-gate-") as tmp:
        buffer = ReplayBuffer(Path(tmp) / "replay.jsonl")
        for e in out:
            buffer.append(e)
        return read_experiences(buffer.path)


def candidate_finals(job: tuple[str, int, list[Experience]]) -> dict[str, Any]:
    """Train one candidate (arm, learner seed) and run it on every seed set."""
    arm, seed, windows = job
    started = time.process_time()
    shipped = read_experiences(shipped_dir() / "replay.jsonl.gz")
    weights = learner.train(shipped, seed=seed, local=learner.over_horizon(windows))
    ensemble = model.parse(weights)
    tasks = check.check_tasks()
    finals = {pool: check.finals(ensemble, tasks, seeds) for pool, seeds in POOLS.items()}
    return {"arm": arm, "seed": seed, "finals": finals, "cpu": time.process_time() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--arms", nargs="+", choices=("local", "none"), default=["none", "local"])
    parser.add_argument(
        "--margins", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.015, 0.02, 0.03]
    )
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    windows = local_windows(args.studies) if "local" in args.arms else []
    print(f"{len(windows)} local windows from {args.studies} studies (seeds 1000-)", flush=True)
    tasks = check.check_tasks()
    in_force = model.load(shipped_dir() / "weights.json")
    jobs = [(arm, s, windows if arm == "local" else []) for arm in args.arms for s in args.seeds]
    with ProcessPoolExecutor(args.processes) as pool:
        futures = [pool.submit(candidate_finals, job) for job in jobs]
        current = {name: check.finals(in_force, tasks, seeds) for name, seeds in POOLS.items()}
        done = [f.result() for f in futures]
    results: dict[tuple[str, int, str], check.CheckResult] = {}
    for d in done:
        for name in POOLS:
            r = check.judge(tasks, current[name], d["finals"][name])
            results[(d["arm"], d["seed"], name)] = r
            figures = {k: v for k, v in r.to_json().items() if k not in ("margin", "passed")}
            print(
                f"arm={d['arm']} learner_seed={d['seed']} seeds={name} {json.dumps(figures)} "
                f"cpu_s={d['cpu']:.1f}",
                flush=True,
            )
    print("\npasses of the paired decision (mean <= 0, or 95 % upper bound < margin):")
    for margin in args.margins:
        cells = []
        for name in POOLS:
            for arm in args.arms:
                n = sum(results[(arm, s, name)].passes(margin) for s in args.seeds)
                cells.append(f"{name}/{arm} {n}/{len(args.seeds)}")
        print(f"  margin {margin:.3f}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
