"""Optuna's part of a trivial trial, in one process: plain Optuna's storages against the
daemon's own storage calls (`hpod.daemon.store.StudyStore`), CPU milliseconds per trial.

    python bench/storage_cost.py [--trials 2000]

What the daemon's storage costs when nothing else runs: the ask (a new trial, its two
parameters), the cost attribute a worker's result carries and the tell, on the journal file
with group commit, one trial per durable write (the unbatched path) and 50 (a pack); beside
plain Optuna's ask + tell of the same space on its in-memory storage and on its journal file
(no fsync of its own). It separates, in the daemon's CPU per trial (`bench/core.py --only
cpu`), what is Optuna and storage from what is messaging and the study loop
(docs/benchmarks.md, "Fifth pass"). Process CPU time: robust to a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import InMemoryStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from hpod.daemon.store import Outcome, StudyStore
from hpod.journal import storage_group
from hpod.schema import StudySpec

SPACE = {
    "x": {"type": "float", "low": -2.0, "high": 2.0},
    "y": {"type": "float", "low": -2.0, "high": 2.0},
}
#: The shape of the cost a worker's result of a trivial trial stores on its trial.
COST = {
    "cpu": 0.0001,
    "wall": 0.0002,
    "fidelity": "none",
    "tasks": [{"cpu": 0.0001, "worker": "celery@host"}],
    "time": {"evaluation": 0.0002, "daemon": 0.001, "transport": 0.001},
}


def plain(storage: optuna.storages.BaseStorage) -> Callable[[int], None]:
    """Plain Optuna's ask + tell of `n` trials, random sampler."""
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))

    def run(n: int) -> None:
        for _ in range(n):
            trial = study.ask()
            x, y = trial.suggest_float("x", -2, 2), trial.suggest_float("y", -2, 2)
            study.tell(trial, (x - 0.5) ** 2 + (y - 0.5) ** 2)

    return run


def daemon(path: Path, per_write: int) -> Callable[[int], None]:
    """The daemon's ask and tell (with the cost attribute) of `n` trials, `per_write` trials
    per durable write group."""
    store = StudyStore(f"journal://{path}")
    spec = StudySpec.model_validate(
        {
            "name": "storage-cost",
            "objective": "quadratic",
            "space": SPACE,
            "budget": {"trials": 1_000_000},
            "sampler": {"name": "random", "seed": 0},
            "transfer": "off",
        }
    )
    store.create(spec)

    def run(n: int) -> None:
        for _ in range(0, n, per_write):
            with storage_group(store.storage):
                asked = store.ask_many(spec, per_write)
                outcomes = [
                    Outcome(number=a.number, state="complete", values=[1.0], cost=dict(COST))
                    for a in asked
                ]
                store.tell_many(spec, outcomes)

    return run


def cpu_ms_per_trial(run: Callable[[int], None], trials: int) -> float:
    """Process CPU milliseconds per trial of `run`, after a warm-up of 200 trials."""
    run(200)
    start = time.process_time()
    run(trials)
    return (time.process_time() - start) / trials * 1000


def main() -> None:
    """Print each set-up's CPU per trial and its ratio to plain Optuna's journal file."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        setups = {
            "plain Optuna, in-memory storage": plain(InMemoryStorage()),
            "plain Optuna, journal file": plain(JournalStorage(JournalFileBackend(str(tmp / "p")))),
            "hpod's StudyStore, journal, 1 trial per durable write": daemon(tmp / "one", 1),
            "hpod's StudyStore, journal, 50 trials per durable write": daemon(tmp / "fifty", 50),
        }
        figures = {label: cpu_ms_per_trial(run, args.trials) for label, run in setups.items()}
    base = figures["plain Optuna, journal file"]
    print(f"{args.trials} trivial trials, random sampler, process CPU per trial")
    print("| set-up | CPU ms/trial | vs plain Optuna's journal file |")
    print("|---|---:|---:|")
    for label, ms in figures.items():
        print(f"| {label} | {ms:.3f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
