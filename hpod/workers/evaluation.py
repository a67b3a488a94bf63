"""Running a trial on a data ladder: the subsampling policy's worker side.

An objective whose fidelity is the data size (it declares ``hpod_fidelity = "data"`` and
trains on ``ctx.subsample(...)``) is evaluated on each rung of the ladder in turn — say a
ninth, a third, then all of the data. After each partial rung its value is reported at the
rung's step and the pruners are asked; a loser stops on a small fraction. Only the full-data
rung's value is ever told as the trial's value: quality is judged on full fidelity alone.

Objectives that report by themselves (epochs) or have no fidelity run once, at full data.
The CPU time spent in the objective is measured on every rung, so the efficiency report and
the benchmark count every evaluation, pruned and partial ones included. The reporter's CPU
(storing intermediate values, asking the pruners) is measured apart and never counts as the
evaluation's: it is hpod's cost, not the objective's (`Evaluation.report_cpu`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from hpod.checkpoints import Checkpoint, CheckpointStore
from hpod.errors import HpodError
from hpod.pruners import fidelity_step
from hpod.workers.context import NoPruning, Reporter, TrialContext, TrialPruned

#: An objective's attribute naming its fidelity: "data" (subsamples), "epochs" (reports),
#: "folds" (reports one value per cross-validation fold or instance, `ctx.report_fold`).
FIDELITY_ATTR = "hpod_fidelity"
#: An objective's attribute naming its version (part of the cache key); "1" if absent.
VERSION_ATTR = "hpod_version"
#: An objective's attribute; False for one whose result varies between identical calls.
DETERMINISTIC_ATTR = "hpod_deterministic"
#: An objective's attribute; True for one that can be continued: it runs `ctx.steps(total)`,
#: resumes from `ctx.resume()` and hands its state to `ctx.checkpoint(...)`.
RESUMABLE_ATTR = "hpod_resumable"


@dataclass
class Evaluation:
    """What running one trial cost and gave; `values` is None when it was pruned."""

    values: list[float] | None = None
    cpu_seconds: float = 0.0
    #: CPU seconds of the full-data evaluation alone (None if it never ran).
    full_cpu_seconds: float | None = None
    #: Sum of the data fractions evaluated (1.0 for one full evaluation).
    data_evaluated: float = 0.0
    #: (fraction, first value, whether it came from the cache, CPU seconds) per rung reached.
    rungs: list[tuple[float, float, bool, float]] = field(default_factory=list)
    pruned: bool = False
    #: The data fraction of the rung after which a ladder trial was pruned.
    pruned_at: float | None = None
    #: CPU seconds spent reporting and asking the pruners (not in `cpu_seconds`).
    report_cpu: float = 0.0
    #: A continued task: the share of the steps it ran to, the step reached and resumed from.
    steps_to: float | None = None
    step: int | None = None
    resumed_step: int | None = None


def fidelity_of(fn: Callable[..., Any]) -> str | None:
    """The fidelity an objective declares ("data", "epochs") or None."""
    value = getattr(fn, FIDELITY_ATTR, None)
    return str(value) if value is not None else None


def deterministic(fn: Callable[..., Any]) -> bool:
    """Whether the objective gives the same result for the same params, kwargs and data
    fraction (registered objectives take their seeds as keyword arguments; one that does not
    declares ``hpod_deterministic = False`` and is never cached)."""
    return bool(getattr(fn, DETERMINISTIC_ATTR, True))


def resumable(fn: Callable[..., Any]) -> bool:
    """Whether the objective can be continued from a checkpoint (``hpod_resumable``)."""
    return getattr(fn, RESUMABLE_ATTR, False) is True


def version_of(fn: Callable[..., Any]) -> str:
    """The version an objective declares; bump it when its results change."""
    return str(getattr(fn, VERSION_ATTR, "1"))


def evaluate(
    fn: Callable[..., Any],
    params: Mapping[str, Any],
    kwargs: Mapping[str, Any],
    ladder: Sequence[float],
    reporter: Reporter,
    cached: Mapping[float, list[float]] | None = None,
) -> Evaluation:
    """Evaluate `fn` on `params`, climbing `ladder` if the objective subsamples.

    `cached` gives values already known for some fractions (from the result cache): those
    rungs are reported again (the pruners must see them) but not recomputed. A pruned trial
    (by the ladder's pruners, or by the objective raising `TrialPruned` itself) comes back
    with ``pruned`` set; any other exception of the objective propagates.
    """
    result = Evaluation()
    timed = TimedReporter(reporter)
    try:
        _climb(fn, params, kwargs, ladder, timed, cached or {}, result)
    except (TrialPruned, optuna.TrialPruned):
        result.pruned = True
        result.values = None
    result.report_cpu = timed.cpu
    return result


class TimedReporter:
    """A reporter that counts the CPU seconds its calls take (`cpu`)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.cpu = 0.0

    def report(self, value: float, step: int) -> None:
        """Report through the wrapped reporter, timed."""
        started = time.process_time()
        try:
            self.reporter.report(value, step)
        finally:
            self.cpu += time.process_time() - started

    def should_prune(self) -> bool:
        """Ask the wrapped reporter, timed."""
        started = time.process_time()
        try:
            return self.reporter.should_prune()
        finally:
            self.cpu += time.process_time() - started


def _climb(
    fn: Callable[..., Any],
    params: Mapping[str, Any],
    kwargs: Mapping[str, Any],
    ladder: Sequence[float],
    reporter: Reporter,
    cached: Mapping[float, list[float]],
    result: Evaluation,
) -> None:
    rungs = list(ladder) if fidelity_of(fn) == "data" and len(ladder) > 1 else [1.0]
    for fraction in rungs:
        known = cached.get(fraction)
        spent = 0.0
        if known is not None:
            values = list(known)
        else:
            own_reports = fraction == 1.0 and len(rungs) == 1
            ctx = TrialContext(params, fraction, reporter if own_reports else NoPruning())
            started = time.process_time()
            try:
                values = as_values(fn(ctx, **kwargs))
            finally:
                spent = time.process_time() - started - ctx.reporter_cpu
                result.cpu_seconds += spent
                result.data_evaluated += fraction
                if fraction == 1.0:
                    result.full_cpu_seconds = spent
        result.rungs.append((fraction, values[0], known is not None, spent))
        if fraction == 1.0:
            result.values = values
            if len(rungs) > 1:
                reporter.report(values[0], fidelity_step(fraction))
            break
        reporter.report(values[0], fidelity_step(fraction))
        if reporter.should_prune():
            result.pruned_at = fraction
            raise TrialPruned(f"pruned after the rung on {fraction:.0%} of the data")


def as_values(result: Any) -> list[float]:
    """An objective's return value as a list of finite floats."""
    values = [float(v) for v in result] if isinstance(result, Sequence) else [float(result)]
    if not values or not all(math.isfinite(v) for v in values):
        raise HpodError(f"objective returned {values!r}: values must be finite numbers")
    return values


@dataclass(frozen=True)
class Continuation:
    """Where a continued task keeps its trial's state, and how far it runs."""

    store: CheckpointStore
    study: str
    trial_id: int
    #: The share of the objective's steps to run to (1.0: the last rung).
    steps_to: float


def evaluate_continued(
    fn: Callable[..., Any],
    params: Mapping[str, Any],
    kwargs: Mapping[str, Any],
    reporter: Reporter,
    continuation: Continuation,
) -> Evaluation:
    """Run a resumable objective from its trial's checkpoint up to `continuation.steps_to`
    of its steps, on full data, and save its state there (below the last rung).

    Only this task's increment is measured (CPU, share of the steps run): the daemon adds a
    trial's tasks up. Loading and saving the checkpoint count in the CPU, as part of what
    continuing costs. A missing or unreadable checkpoint means training from the start. On
    the last rung the checkpoint is deleted: the trial is done with it.
    """
    result = Evaluation(steps_to=continuation.steps_to)
    store, study, trial_id = continuation.store, continuation.study, continuation.trial_id
    started = time.process_time()
    try:
        resumed = store.load(study, trial_id)
        ctx = TrialContext(params, 1.0, reporter, steps_to=continuation.steps_to, resumed=resumed)
        result.resumed_step = ctx.resumed_step
        try:
            values = as_values(fn(ctx, **kwargs))
        except (TrialPruned, optuna.TrialPruned):
            result.pruned = True
            return result
        result.values = values
        total = ctx.total_steps or 1
        reached = ctx.saved.step if ctx.saved is not None else ctx.resumed_step
        result.step = max(reached, ctx.resumed_step)
        result.data_evaluated = max(0, result.step - ctx.resumed_step) / total
        if continuation.steps_to >= 1.0:
            store.delete(study, trial_id)
        elif ctx.saved is not None:
            saved = ctx.saved
            store.save(study, trial_id, Checkpoint(saved.step, values[0], saved.arrays, saved.meta))
    finally:
        result.cpu_seconds = time.process_time() - started
    if continuation.steps_to >= 1.0:
        result.full_cpu_seconds = None  # the daemon knows the whole: the sum of the tasks
    return result
