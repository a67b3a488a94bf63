"""`hpod policy train`: the shipped default policy, trained reproducibly on the training suite.

Training data are counterfactual: at every decision point of a simulated study, every
strategy that can apply runs the next window from the same state (a clone of the study), and
each branch's reward, under each mode's weighting, becomes one experience. The bandit thus
sees what every action would have earned, not only the one taken. The study then continues
from one branch (the best one half the time, a random one otherwise, so the states it sees
are varied). Everything is seeded: the same command gives the same buffer and weights.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hpod.policies.strategy import learner, model, recorded
from hpod.policies.strategy.actions import BUILTIN, Strategy, action_features, available
from hpod.policies.strategy.features import MODES
from hpod.policies.strategy.replay import Experience, write_experiences
from hpod.policies.strategy.reward import window_reward
from hpod.policies.strategy.simulate import Simulation, seed_of
from hpod.policies.strategy.suites import Task, training_suite

#: Compute budget of a training study, in full evaluations, and its decision window.
BUDGET = 40.0
WINDOW = 12
#: Windows a counterfactual branch keeps its strategy for; its reward is their mean.
HORIZON = 3


def collect(
    task: Task, seed: int, strategies: Sequence[Strategy] = BUILTIN, budget: float = BUDGET
) -> list[Experience]:
    """The experiences of one counterfactual study of `task`."""
    sim = Simulation(task, seed, "balanced", budget, WINDOW)
    # Not the GP: it costs ~0.1 s of CPU a point in its process, and training simulates
    # hundreds of thousands of points; the shipped weights have never seen it (docs/policies.md).
    candidates = [
        s for s in available(sim.shape, tuple(strategies)) if s.auto and s.sampler != "gp"
    ]
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
            resume = branch.clone()  # the study goes on from here if this branch is taken
            starts = [told, len(branch.trials())]
            for _ in range(HORIZON - 1):
                if branch.done:
                    break
                branch.run_window()
                starts.append(len(branch.trials()))
            balanced = 0.0
            for mode in MODES:
                experience = _experience(task, seed, mode, strategy, states[mode], branch, starts)
                if experience is None:
                    continue
                balanced = experience.reward if mode == "balanced" else balanced
                experiences.append(experience)
            branches.append((balanced, resume))
        if behaviour.random() < 0.5:
            sim = max(branches, key=lambda b: b[0])[1]
        else:
            sim = behaviour.choice(branches)[1]
    return experiences


def _experience(
    task: Task,
    seed: int,
    mode: str,
    strategy: Strategy,
    state: list[float],
    branch: Simulation,
    starts: list[int],
) -> Experience | None:
    """A branch's experience: the mean reward of the windows it kept `strategy` for.

    A strategy is judged over several windows, not its first alone: CMA-ES spends its first
    generation learning the space's scale, a model-based sampler its first trials fitting,
    and their pay-off comes after. The daemon's own experiences are single windows, a
    one-window sample of the same quantity.
    """
    trials = branch.trials()
    outcomes = []
    for first, end in zip(starts, [*starts[1:], len(trials)], strict=False):
        outcome = window_reward(branch.spec, trials[:end], first, mode)
        if outcome is not None:
            outcomes.append(outcome)
    if not outcomes:
        return None
    return Experience(
        study=f"{task.name}/{seed}",
        mode=mode,
        strategy=strategy.name,
        features=state,
        action=action_features(strategy),
        reward=sum(o.reward for o in outcomes) / len(outcomes),
        improvement=sum(o.improvement for o in outcomes) / len(outcomes),
        compute=sum(o.compute for o in outcomes) / len(outcomes),
        trials=sum(o.trials for o in outcomes),
        at=0.0,
    )


def _collect(job: tuple[int, int]) -> list[Experience]:
    # Tasks hold closures, which do not pickle: a worker process builds the suite itself.
    index, seed = job
    return collect(training_suite()[index], seed)


def train_default(
    out: Path, seeds: int = 8, processes: int = 2, seed: int = 0, log: Any = print
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
        # The measured costs the simulated studies charged (`costs.fitted`): weights trained
        # on other recordings are other weights.
        "recorded_sha256": hashlib.sha256(recorded.PATH.read_bytes()).hexdigest(),
        "loss": weights["loss"],
        "weights_sha256": weights["sha256"],
    }
    # No timings in the manifest: the same command must give byte-identical files.
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(
        f"weights {out / 'weights.json'} (sha256 {weights['sha256'][:12]}), loss "
        f"{weights['loss']}, {time.time() - started:.0f} s in all"
    )
    return manifest
