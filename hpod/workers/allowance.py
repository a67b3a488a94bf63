"""A trial's CPU allowance under a budget in compute: the worker stops the trial there.

The daemon gives each trial it dispatches under a CPU limit an allowance (`TaskPlan`'s
``cpu_allowance``, `hpod.daemon.budget.cpu_allowance`); the allowances of the trials in
flight never add up to more than the budget left. The worker counts the process's CPU
from the start of the evaluation with a profiling timer (``ITIMER_PROF``: user and system
CPU of every thread, so BLAS threads count too). When it expires:

- an objective that asks `should_prune` (it reports steps, folds, or the data ladder asks
  between rungs) is told to prune at its next question: it stops at its next report;
- an objective that never asked is interrupted where it is, by `BudgetSpent` raised from
  the timer's signal handler (a `TrialPruned`: the evaluation ends pruned). Python runs the
  handler between bytecodes, so a long call into C (one model fit) finishes first; the
  handler never raises inside the reporter (its storage writes complete).

Either way the trial is told pruned once, by the ordinary result, with the CPU it measured
(``cost.stopped = "budget"``). The timer needs the main thread (Celery's prefork and solo
pools run tasks there); elsewhere only the `should_prune` check applies.

A call into C that runs on past the allowance by more than its grace (`grace_seconds`) can
only be stopped with its process: given an `on_overrun` callback, a watchdog thread calls it
with the CPU spent then, still inside the objective (the worker's task publishes the trial
pruned, marks it stopped in storage so a retry of the task does not run it again, and ends
the process: `hpod.workers.tasks`).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from hpod.workers.context import Reporter, TrialPruned


class BudgetSpent(TrialPruned):
    """Raised in an objective that does not ask `should_prune` when its allowance is spent."""


#: How often the watchdog reads the process's CPU, wall seconds.
WATCH_INTERVAL = 0.05


def grace_seconds(allowance: float) -> float:
    """CPU seconds a trial may run past its allowance inside one call into C before its
    process is ended: 1 s, or a tenth of the allowance if that is more."""
    return max(1.0, 0.1 * allowance)


class CpuAllowance:
    """The CPU seconds one trial may spend (None: no limit), and whether it spent them."""

    def __init__(
        self, seconds: float | None, on_overrun: Callable[[float], None] | None = None
    ) -> None:
        self.seconds = seconds
        self._on_overrun = on_overrun
        #: The allowance is spent: the trial is being stopped.
        self.spent = False
        #: The objective itself asked `should_prune` (it stops at its next report).
        self.asks = False
        self._inside = False
        self._reporting = False

    def reporter(self, inner: Reporter) -> Reporter:
        """`inner`, whose `should_prune` also says yes once the allowance is spent."""
        return _AllowanceReporter(inner, self)

    def objective(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` (its declared attributes kept), run so that the timer may interrupt it."""

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.spent and not self.asks:
                raise BudgetSpent(self._reason())
            self._inside = True
            try:
                return fn(*args, **kwargs)
            finally:
                self._inside = False

        return guarded

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Count the CPU from here: the timer armed for the allowance, disarmed on exit."""
        if self.seconds is None or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGPROF, self._expired)
        done = threading.Event()
        if self._on_overrun is not None:
            limit = self.seconds + grace_seconds(self.seconds)
            watchdog = threading.Thread(
                target=self._watch, args=(time.process_time(), limit, done), daemon=True
            )
            watchdog.start()
        signal.setitimer(signal.ITIMER_PROF, self.seconds)
        try:
            yield
        finally:
            done.set()
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.signal(signal.SIGPROF, previous)

    def _watch(self, started: float, limit: float, done: threading.Event) -> None:
        """Call `on_overrun` once the process spent `limit` CPU seconds since `started`
        while the objective still runs (not in the reporter)."""
        while not done.wait(WATCH_INTERVAL):
            used = time.process_time() - started
            if used >= limit and self._inside and not self._reporting and self._on_overrun:
                self.spent = True
                self._on_overrun(used)
                return

    def _expired(self, signum: int, frame: FrameType | None) -> None:
        self.spent = True
        if self._inside and not self._reporting and not self.asks:
            raise BudgetSpent(self._reason())

    def _reason(self) -> str:
        return f"stopped at its CPU allowance of {self.seconds:.3f} s (the study's budget)"


class _AllowanceReporter:
    """A reporter that says prune once the trial's allowance is spent."""

    def __init__(self, inner: Reporter, allowance: CpuAllowance) -> None:
        self._inner = inner
        self._allowance = allowance

    def report(self, value: float, step: int) -> None:
        """Report through the wrapped reporter (never interrupted by the timer)."""
        self._allowance._reporting = True
        try:
            self._inner.report(value, step)
        finally:
            self._allowance._reporting = False

    def should_prune(self) -> bool:
        """Yes once the allowance is spent, else the wrapped reporter's pruners decide."""
        allowance = self._allowance
        if allowance._inside:
            allowance.asks = True
        if allowance.spent:
            return True
        allowance._reporting = True
        try:
            return self._inner.should_prune()
        finally:
            allowance._reporting = False
