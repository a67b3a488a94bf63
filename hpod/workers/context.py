"""The trial context an objective is called with: its parameters and its way to talk back.

An objective never sees Optuna or the broker: it reads `params` and `fidelity`, trains on
`subsample(...)` of its data, calls `report(value, step)` as it learns and asks
`should_prune()`. Reports go to the study's Optuna storage, so the study's pruner decides
with the intermediate values of every trial, whichever worker ran them. An objective that
averages over cross-validation folds visits them in `folds(n)`'s order and reports each with
`report_fold(i, value)`. The CPU time spent reporting is kept apart (`reporter_cpu`), so it
never counts as the evaluation's.
with the intermediate values of every trial, whichever worker ran them.

An objective with an iterative fidelity (epochs, boosting rounds, SGD passes) that declares
``hpod_resumable = True`` can be *continued* instead of re-trained: it runs the steps
`steps(total)` gives (all of them outside a continued study), starts from `resume()` when
that returns a checkpoint, and hands its state to `checkpoint(step, arrays, meta)` at the
end. The study pauses it at a rung of its steps and, if it is among the best there, a later
task (on any worker) resumes it from that state (`hpod.workers.evaluation.evaluate_continued`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from hpod.checkpoints import Checkpoint
from hpod.errors import HpodError

T = TypeVar("T")


class TrialPruned(HpodError):
    """Raised by an objective to stop a trial that `should_prune()` condemned."""


class Reporter(Protocol):
    """Where intermediate values go and where the pruning verdict comes from."""

    def report(self, value: float, step: int) -> None:
        """Record the intermediate `value` at `step`."""

    def should_prune(self) -> bool:
        """Whether the study's pruner would stop this trial now."""


class NoPruning:
    """A reporter for a trial run outside a study (e.g. an objective tried by hand)."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> None:
        """Keep the value so a caller can inspect the learning curve."""
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        """Never prune: there is no study to compare with."""
        return False


class TrialContext:
    """What an objective is called with: params, fidelity, subsampling and reporting."""

    def __init__(
        self,
        params: Mapping[str, Any],
        fidelity: float = 1.0,
        reporter: Reporter | None = None,
        seed: int = 0,
        steps_to: float | None = None,
        resumed: Checkpoint | None = None,
    ) -> None:
        if not 0.0 < fidelity <= 1.0:
            raise ValueError(f"fidelity must be in (0, 1], got {fidelity}")
        if steps_to is not None and not 0.0 < steps_to <= 1.0:
            raise ValueError(f"steps_to must be in (0, 1], got {steps_to}")
        self.params = dict(params)
        self.fidelity = fidelity
        self.reporter = reporter if reporter is not None else NoPruning()
        self.seed = seed
        self.last_report: tuple[int, float] | None = None
        #: CPU seconds spent in the reporter (storage, pruners), not the objective's own.
        self.reporter_cpu = 0.0
        #: The values reported by `report_fold`, by fold index.
        self.fold_values: dict[int, float] = {}
        #: The share of its steps this call runs the objective to (None: all of them).
        self.steps_to = steps_to
        self._resumed = resumed
        #: What the objective handed to `checkpoint` (the runner saves it with the value).
        self.saved: Checkpoint | None = None
        #: The objective's total steps, once it called `steps`.
        self.total_steps: int | None = None

    def steps(self, total: int) -> range:
        """The steps to run now, of an objective's `total` (epochs, rounds, passes).

        Outside a continued study: all of them, ``range(1, total + 1)``. In a continued
        study: from the step after the resumed checkpoint's (1 without one) up to this
        task's rung, ``round(steps_to * total)`` (at least 1). Empty when the checkpoint is
        already there (a task run twice): the objective then scores its restored state.
        """
        if isinstance(total, bool) or int(total) < 1:
            raise ValueError(f"total steps must be at least 1, got {total!r}")
        self.total_steps = int(total)
        return range(self.resumed_step + 1, target_step(self.steps_to, self.total_steps) + 1)

    @property
    def resumed_step(self) -> int:
        """The step the resumed checkpoint reached (0 when starting from scratch)."""
        return self._resumed.step if self._resumed is not None else 0

    def resume(self) -> Checkpoint | None:
        """The trial's last checkpoint (arrays and meta as the objective saved them), or None:
        start from scratch."""
        return self._resumed

    def checkpoint(
        self,
        step: int,
        arrays: Mapping[str, np.ndarray] | None = None,
        meta: Any = None,
    ) -> None:
        """Hand over the state after `step`: named plain arrays (model weights, optimizer
        moments, RNG states) and JSON `meta`. Saved without pickle, with the value the
        objective returns, when the task ends on a rung below the last; ignored otherwise."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
        self.saved = Checkpoint(step, math.nan, dict(arrays or {}), meta)

    def subsample(self, *arrays: T, stratify: Any = None) -> tuple[T, ...]:
        """The `fidelity` share of rows of each array, the same rows for all of them.

        Deterministic: rows are drawn with a fixed seed, so two trials at the same fidelity
        see the same data and their scores compare fairly, and the rows of a smaller fraction
        are a subset of a larger one's. With `stratify` (labels, one per row) every class keeps
        its share, and at least one row.
        """
        if not arrays:
            return ()
        n = len(arrays[0])  # type: ignore[arg-type]
        if any(len(a) != n for a in arrays):  # type: ignore[arg-type]
            raise ValueError("subsample needs arrays of the same length")
        if self.fidelity >= 1.0:
            return arrays
        if stratify is None:
            keep = max(1, round(n * self.fidelity))
            rows = np.random.default_rng(self.seed).permutation(n)[:keep]
        else:
            labels = np.asarray(stratify)
            if len(labels) != n:
                raise ValueError("stratify needs one label per row")
            parts = []
            for index, label in enumerate(np.unique(labels)):
                members = np.flatnonzero(labels == label)
                keep = max(1, round(len(members) * self.fidelity))
                order = np.random.default_rng([self.seed, index]).permutation(len(members))
                parts.append(members[order[:keep]])
            rows = np.concatenate(parts)
        rows.sort()
        return tuple(_take(a, rows) for a in arrays)

    def report(self, value: float, step: int) -> None:
        """Report an intermediate objective value (e.g. validation loss after epoch `step`)."""
        self.last_report = (step, float(value))
        started = time.process_time()
        try:
            self.reporter.report(float(value), step)
        finally:
            self.reporter_cpu += time.process_time() - started

    def should_prune(self) -> bool:
        """Whether the study's pruner says this trial should stop now."""
        started = time.process_time()
        try:
            return self.reporter.should_prune()
        finally:
            self.reporter_cpu += time.process_time() - started

    def folds(self, n: int) -> Iterator[int]:
        """The fold indices ``0 .. n-1`` in this trial's own shuffled order.

        The order is seeded by the trial's parameters (and `seed`): reproducible, the same
        for a re-run of the trial, and different between trials, so that pruning after a
        few folds never always judges on the same, possibly easy, folds.
        """
        if n < 1:
            raise ValueError(f"folds needs at least one fold, got {n}")
        key = json.dumps([self.params, self.seed], sort_keys=True, default=repr).encode()
        entropy = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
        yield from (int(i) for i in np.random.default_rng(entropy).permutation(n))

    def report_fold(self, fold: int, value: float) -> None:
        """Report the value on fold (or instance) `fold`, at `fold` as step; raise
        `TrialPruned` when the study's pruners stop the trial after it."""
        if fold < 0:
            raise ValueError(f"fold must be a non-negative index, got {fold}")
        self.fold_values[fold] = float(value)
        self.report(value, fold)
        if self.should_prune():
            raise TrialPruned(f"pruned after {len(self.fold_values)} fold(s)")

    def fold_mean(self) -> float:
        """The mean of the values reported by `report_fold` (the trial's value over folds)."""
        if not self.fold_values:
            raise ValueError("no fold was reported")
        return sum(self.fold_values.values()) / len(self.fold_values)


def target_step(steps_to: float | None, total: int) -> int:
    """The last step of a rung at `steps_to` of `total` steps (all of them for None)."""
    if steps_to is None or steps_to >= 1.0:
        return total
    return min(total, max(1, round(steps_to * total)))


def _take(array: Any, rows: np.ndarray) -> Any:
    """The given rows of a NumPy array, a pandas object or a plain sequence."""
    if isinstance(array, np.ndarray):
        return array[rows]
    if hasattr(array, "iloc"):
        return array.iloc[rows]
    if isinstance(array, Sequence):
        return type(array)(array[i] for i in rows)  # type: ignore[call-arg]
    return np.asarray(array)[rows]
