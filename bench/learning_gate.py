"""The learner's check suite at work (issue 14, item 3): does local learning pass the gate?

Runs `--studies` simulated studies of the learning family (`suites.learning_family`, in no
suite the shipped weights were trained on), decided by the rule as the daemon's ``auto`` is
by default, appends their windows to a fresh policy directory's replay buffer as the daemon
does, then runs the learner (`learner.learn`) once per `--seeds`: it trains on the shipped
buffer plus those windows and judges the candidate against the shipped weights on the check
suite (`check.py`). ``--no-local`` trains without local windows: the check's noise floor.
Prints, per learner seed, the check's figures (paired difference in normalised regret with
its 95 % bootstrap interval), whether the weights were installed, and the learner's CPU.

    .venv/bin/python bench/learning_gate.py                # 12 studies, learner seeds 0 1 2
    .venv/bin/python bench/learning_gate.py --no-local --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from hpod.policies.strategy import learner, rules
from hpod.policies.strategy.actions import BUILTIN, SpaceShape, Strategy, action_features
from hpod.policies.strategy.agent import shipped_dir
from hpod.policies.strategy.replay import Experience, ReplayBuffer
from hpod.policies.strategy.simulate import run_study
from hpod.policies.strategy.suites import learning_family

BY_NAME = {s.name: s for s in BUILTIN}


def ruled(shape: SpaceShape, feats: list[float], told: int, first: int) -> tuple[Strategy, str]:
    return rules.choose(shape, told, None), "rules"


def local_windows(buffer: ReplayBuffer, studies: int) -> int:
    """Append the windows of `studies` rule-decided studies of the learning family."""
    n = 0
    for i, task in enumerate(learning_family(studies)):
        record = run_study(task, ruled, 1000 + i)
        for w in record.windows:
            if w.outcome is None:
                continue
            s = BY_NAME[w.strategy]
            o = w.outcome
            buffer.append(
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
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-local", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpod-gate-") as tmp:
        source = Path(tmp) / "windows"
        source.mkdir()
        windows = (
            0
            if args.no_local
            else local_windows(ReplayBuffer(source / "replay.jsonl"), args.studies)
        )
        print(f"{windows} local windows from {0 if args.no_local else args.studies} studies")
        for seed in args.seeds:
            policy = Path(tmp) / f"seed{seed}"
            policy.mkdir()
            if windows:
                shutil.copy(source / "replay.jsonl", policy / "replay.jsonl")
            started = time.process_time()
            report = learner.learn(policy, shipped_dir() / "replay.jsonl.gz", seed=seed)
            cpu = time.process_time() - started
            print(
                f"learner seed {seed}: installed={report['installed']} "
                f"check={json.dumps(report['check'])} learner_cpu_s={cpu:.1f}"
            )


if __name__ == "__main__":
    main()
