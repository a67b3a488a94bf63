"""Trials/s of random-sampler ask+tell (5 float params) on journal files, with group commit.

One run measures, each on a fresh file: Optuna's own JournalFileBackend, the same with hpod's
flock lock (what make_storage built before group commit), GroupCommitJournalBackend without
groups, and grouped by 1, 10 and 100 trials. Shared machines are noisy: read the ratios.

    python bench/journal_groups.py [--trials 2000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from hpod.engine import KernelJournalLock
from hpod.journal import GroupCommitJournalBackend, storage_group

PARAMS = ("a", "b", "c", "d", "e")


def optuna_backend(path: str) -> JournalFileBackend:
    return JournalFileBackend(path)


def flock_backend(path: str) -> JournalFileBackend:
    return JournalFileBackend(path, lock_obj=KernelJournalLock(path))


def grouping_backend(path: str) -> JournalFileBackend:
    return GroupCommitJournalBackend(path, lock_obj=KernelJournalLock(path))


def trials_per_second(
    path: Path, backend: Callable[[str], JournalFileBackend], trials: int, group: int | None
) -> float:
    """Run `trials` ask+tell on a fresh journal at `path`, `group` trials per group."""
    storage = JournalStorage(backend(str(path)))
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    start = time.perf_counter()
    done = 0
    while done < trials:
        n = min(group or trials, trials - done)
        with storage_group(storage) if group else contextlib.nullcontext():
            for _ in range(n):
                trial = study.ask()
                value = sum(trial.suggest_float(p, -1.0, 1.0) ** 2 for p in PARAMS)
                study.tell(trial, value)
        done += n
    elapsed = time.perf_counter() - start
    assert len(JournalStorage(JournalFileBackend(str(path))).get_all_trials(0)) == trials
    return trials / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--dir", help="where the journal files go (default: a temporary dir)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cases: list[tuple[str, Callable[[str], JournalFileBackend], int | None]] = [
        ("JournalFileBackend (Optuna's own lock)", optuna_backend, None),
        ("JournalFileBackend + KernelJournalLock", flock_backend, None),
        ("GroupCommitJournalBackend, ungrouped", grouping_backend, None),
        ("GroupCommitJournalBackend, groups of 1", grouping_backend, 1),
        ("GroupCommitJournalBackend, groups of 10", grouping_backend, 10),
        ("GroupCommitJournalBackend, groups of 100", grouping_backend, 100),
    ]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"{args.trials} trials each, journals in {tmp}")
        for i, (name, backend, group) in enumerate(cases):
            rate = trials_per_second(Path(tmp) / f"{i}.log", backend, args.trials, group)
            print(f"{name:42s} {rate:8.0f} trials/s")


if __name__ == "__main__":
    main()
