"""The study loops' supervision: start each loop, restart one that failed, mark a study failed.

A loop that fails (an error while asking, dispatching or telling, or while recovering at
start) is restarted from storage with back-off (`hpod.backoff.Backoff`: 0.5 s doubling up to
30 s, with jitter). An outage of the storage or the broker is waited out for as long as it
lasts; the same other error `study_max_failures` times in a row marks the study failed
(stored, event ``study.failed``) instead of restarting it for ever. The study pays for its
failure, never the caller or the daemon.

The supervisor builds no loop itself: it is handed a factory (`NewRun`, the manager's), so
it needs nothing of the plan, the policies or the agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from hpod.backoff import Backoff
from hpod.daemon.bus import Bus
from hpod.daemon.running import RunningStudies
from hpod.daemon.store import StudyStore, is_storage_fault
from hpod.daemon.studies import StudyRun
from hpod.engine import STATE_ATTR
from hpod.schema import StudySpec

log = structlog.get_logger("hpod.manager")

#: A loop that ran this long before failing starts its count of failures afresh.
HEALTHY_RUN_SECONDS = 300.0
#: Restarts of a failed loop wait 0.5 s, 1 s, 2 s, … up to 30 s (with jitter).
RESTART_INITIAL_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0

#: Builds the (not yet started) loop of a study.
NewRun = Callable[[StudySpec], Awaitable[StudyRun]]


@dataclass
class Supervision:
    """The failures of one study's loop: what failed last, how often in a row, and the
    back-off before the next restart."""

    backoff: Backoff = field(
        default_factory=lambda: Backoff(
            initial=RESTART_INITIAL_SECONDS, maximum=RESTART_MAX_SECONDS
        )
    )
    error: str | None = None
    count: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def record(self, error: str) -> int:
        """Count a failure; returns how many times in a row this same error happened."""
        if time.monotonic() - self.started_at > HEALTHY_RUN_SECONDS:
            self.backoff.reset()
            self.count = 0
        self.count = self.count + 1 if error == self.error else 1
        self.error = error
        return self.count


class LoopSupervisor:
    """Starts study loops, restarts those that fail and marks failed the studies that keep
    failing (see the module)."""

    def __init__(
        self,
        store: StudyStore,
        bus: Bus,
        running: RunningStudies,
        new_run: NewRun,
        max_failures: Callable[[], int],
    ) -> None:
        self.store = store
        self.bus = bus
        self.running = running
        self._new_run = new_run
        #: `study_max_failures`, read when a failure is counted (a reload may change it).
        self._max_failures = max_failures
        #: Failures of study loops by study name (see `_on_failure`).
        self._supervision: dict[str, Supervision] = {}
        #: Restarts and failure markings scheduled after a loop failed.
        self._pending: set[asyncio.Task[None]] = set()
        self._closing = False

    def claim(self, name: str) -> None:
        """Mark study `name` as supervised before its loop starts: a concurrent create of
        it, or a restart, sees it taken."""
        self._supervision.setdefault(name, Supervision())

    def supervises(self, name: str) -> bool:
        """Whether study `name` has a loop here or one waiting to restart."""
        return name in self.running.runs or name in self._supervision

    async def resume_all(self) -> None:
        """Resume every study stored as running; one whose spec no longer validates is
        marked failed at once, one whose recovery fails is handled as a failed loop."""
        specs, invalid = await self.store.call(self.store.running_studies)
        for name, reason in invalid.items():
            await self.fail(name, reason)
        for spec in specs:
            await self.start_run(spec)

    async def start_run(self, spec: StudySpec) -> None:
        """Start the loop of study `spec`; if its set-up or recovery fails, the study pays
        (`_on_failure`: retried, or marked failed), never the caller or the daemon."""
        self._supervision.setdefault(spec.name, Supervision()).started_at = time.monotonic()
        run: StudyRun | None = None
        try:
            run = await self._new_run(spec)
            self.running.runs[spec.name] = run
            await run.start()
        except Exception as exc:
            if run is not None:
                self.running.remove(spec.name, run)
            self._on_failure(spec, exc)
            return
        assert run.loop_task is not None
        run.loop_task.add_done_callback(lambda task: self._on_run_done(spec, run, task))

    def _on_run_done(self, spec: StudySpec, run: StudyRun, task: asyncio.Task[None]) -> None:
        """Forget a finished loop (its in-flight tasks stop counting); a loop that failed is
        restarted or its study marked failed (`_on_failure`)."""
        self.running.remove(spec.name, run)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._supervision.pop(spec.name, None)
            self._forget(spec.name)
            return
        self._on_failure(spec, exc)

    def _forget(self, name: str) -> None:
        """Let the store drop what it keeps in memory for a study whose loop ended."""
        self._schedule(self.store.call(self.store.forget, name))

    def _on_failure(self, spec: StudySpec, exc: BaseException) -> None:
        """A study's loop (or its recovery) failed.

        A storage or broker outage is retried with back-off for as long as it lasts: the
        study is not at fault. Any other error is retried too (it may have been a passing
        one), but the same error `study_max_failures` times in a row marks the study failed:
        an unsampleable space fails the same way every time.
        """
        error = f"{type(exc).__name__}: {exc}"[:2000]
        supervision = self._supervision.setdefault(spec.name, Supervision())
        transient = is_storage_fault(exc)
        count = supervision.record(error)
        log.error(
            "study.loop_crashed",
            study=spec.name,
            error=error,
            transient=transient,
            failures=count,
            exc_info=exc,
        )
        if not transient and count >= self._max_failures():
            self._schedule(self.fail(spec.name, error))
            return
        delay = supervision.backoff.next_delay()
        self._schedule(self._restart(spec, delay))

    def _schedule(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` as a task the supervisor keeps (cancelled at shutdown)."""
        if self._closing:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _restart(self, spec: StudySpec, delay: float) -> None:
        """After `delay`, start the study's loop again if it is still meant to run."""
        await asyncio.sleep(delay)
        try:
            attrs = await self.store.call(self.store.study_attrs, spec.name)
        except Exception as exc:  # storage still down: try again later
            self._on_failure(spec, exc)
            return
        if spec.name not in self.running.runs and attrs.get(STATE_ATTR) in ("running", "paused"):
            log.info("study.restart", study=spec.name)
            await self.start_run(spec)

    async def fail(self, name: str, reason: str) -> None:
        """Mark study `name` failed with `reason` (stored, so a restart keeps it), fail its
        trials that no worker has, and publish `study.failed`."""
        try:
            failed = await self.store.call(self.store.mark_failed, name, reason)
        except Exception as exc:
            if not is_storage_fault(exc):
                log.exception("study.fail_error", study=name, reason=reason)
                return
            # Storage is down: the marking waits for it, like a restart would.
            log.warning("study.fail_deferred", study=name, error=repr(exc))
            delay = self._supervision.setdefault(name, Supervision()).backoff.next_delay()
            await asyncio.sleep(delay)
            self._schedule(self.fail(name, reason))
            return
        self._supervision.pop(name, None)
        log.error("study.failed", study=name, reason=reason, trials_failed=failed)
        try:
            await self.bus.event("study.failed", name, reason=reason, trials_failed=failed)
        except Exception as exc:  # the state is stored: `hpod status` shows it regardless
            log.warning("study.failed_event_lost", study=name, error=repr(exc))

    async def shutdown(self) -> None:
        """Cancel the study loops (their state is in storage and resumes on the next start)
        and the pending restarts and markings; schedule nothing more."""
        self._closing = True
        tasks = [r.loop_task for r in self.running.runs.values() if r.loop_task is not None]
        tasks += [*self._pending]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
