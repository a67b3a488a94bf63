"""`hpod policy train`: the shipped default policy, trained reproducibly on the training suite.

Training data are counterfactual: at every decision point of a simulated study, every
strategy that can apply runs the next window from the same state (a clone of the study), and
each branch's reward, under each mode's weighting, becomes one experience. The bandit thus
sees what every action would have earned, not only the one taken. The study then continues
from one branch (the best one half the time, a random one otherwise, so the states it sees
are varied). Everything is seeded: the same command gives the same buffer and weights.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hpod.policies.strategy import learner, model
from hpod.policies.strategy.actions import BUILTIN, Strategy, action_features, available
from hpod.policies.strategy.features import MODES
from hpod.policies.strategy.replay import Experience, write_experiences
from hpod.policies.strategy.reward import window_reward
from hpod.policies.strategy.simulate import Simulation, seed_of
from hpod.policies.strategy.suites import Task, training_suite

#: Compute budget of a training study, in full evaluations, and its decision window.
BUDGET = 40.0
WINDOW = 12


def collect(
    task: Task, seed: int, strategies: Sequence[Strategy] = BUILTIN, budget: float = BUDGET
) -> list[Experience]:
    """The experiences of one counterfactual study of `task`."""
    sim = Simulation(task, seed, "balanced", budget, WINDOW)
    candidates = [s for s in available(sim.shape, tuple(strategies)) if s.auto]
    behaviour = random.Random(seed_of(task.name, seed, "behaviour"))
    experiences: list[Experience] = []
    while not sim.done:
        told = len(sim.trials())
        states = {}
        for mode in MODES:
            sim.mode = mode
            states[mode] = sim.features()
        sim.mode = "balanced"
        branches = []
        for strategy in candidates:
            branch = sim.clone()
            branch.use(strategy, told)
            branch.run_window()
            balanced = 0.0
            for mode in MODES:
                outcome = window_reward(branch.spec, branch.trials(), told, mode)
                if outcome is None:
                    continue
                balanced = outcome.reward if mode == "balanced" else balanced
                experiences.append(
                    Experience(
                        study=f"{task.name}/{seed}",
                        mode=mode,
                        strategy=strategy.name,
                        features=states[mode],
                        action=action_features(strategy),
                        reward=outcome.reward,
                        improvement=outcome.improvement,
                        compute=outcome.compute,
                        trials=outcome.trials,
                        at=0.0,
                    )
                )
            branches.append((balanced, branch))
        if behaviour.random() < 0.5:
            sim = max(branches, key=lambda b: b[0])[1]
        else:
            sim = behaviour.choice(branches)[1]
    return experiences


def _collect(job: tuple[int, int]) -> list[Experience]:
    # Tasks hold closures, which do not pickle: a worker process builds the suite itself.
    index, seed = job
    return collect(training_suite()[index], seed)


def train_default(
    out: Path, seeds: int = 4, processes: int = 2, seed: int = 0, log: Any = print
) -> dict[str, Any]:
    """Collect the training suite's experience and fit the shipped ensemble into `out`
    (weights.json, replay.jsonl.gz, manifest.json); returns the manifest."""
    started = time.time()
    tasks = training_suite()
    jobs = [(i, seed_of(seed, task.name, s)) for i, task in enumerate(tasks) for s in range(seeds)]
    log(f"collecting: {len(tasks)} tasks x {seeds} seeds, {processes} processes")
    with get_context("spawn").Pool(processes) as pool:
        batches = pool.map(_collect, jobs, chunksize=1)
    experiences = [e for batch in batches for e in batch]
    collected = time.time() - started
    log(f"collected {len(experiences)} experiences in {collected:.0f} s; training")
    weights = learner.train(experiences, seed=seed, version=1, origin="shipped", created_at=0.0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "weights.json", weights)
    write_experiences(out / "replay.jsonl.gz", experiences)
    manifest = {
        "command": "hpod policy train",
        "seed": seed,
        "seeds_per_task": seeds,
        "budget_full_evaluations": BUDGET,
        "window": WINDOW,
        "tasks": [t.name for t in tasks],
        "experiences": len(experiences),
        "loss": weights["loss"],
        "collect_seconds": round(collected),
        "total_seconds": round(time.time() - started),
        "weights_sha256": weights["sha256"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"weights {out / 'weights.json'} (sha256 {weights['sha256'][:12]}), loss {weights['loss']}")
    return manifest
