"""Study loops: one asyncio task per running study asks, dispatches and tells.

A study's budget is exact across restarts: every trial Optuna created counts (whoever
evaluates it), a trial is told once (a second result is ignored), and a trial that was asked
but whose task never reached the broker is dispatched again when the daemon comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from optuna.trial import FrozenTrial, TrialState

from hpod.config import Settings
from hpod.daemon.bus import Bus
from hpod.daemon.doctor import TimeBreakdown
from hpod.daemon.metrics import Metrics
from hpod.daemon.store import FINISHED, AskedTrial, StudyStore
from hpod.engine import DISPATCHED_ATTR, ERROR_ATTR, EXTERNAL_ATTR, REQUEST_ATTR, STATE_ATTR
from hpod.errors import RequestRejected
from hpod.policies import PolicyChain, SkipEvaluation, TrialEvent
from hpod.schema import StudySpec

log = structlog.get_logger("hpod.studies")

T = TypeVar("T")


@dataclass
class InFlight:
    """A trial dispatched to the workers and not yet told."""

    trial: AskedTrial
    attempt: int
    deadline: float
    #: `time.time()` of the last dispatch; None for a trial recovered after a restart.
    dispatched_at: float | None = None


@dataclass
class Result:
    """A trial outcome, from a worker or an external evaluator."""

    number: int
    state: str
    values: list[float] | None = None
    error: str | None = None
    duration: float | None = None
    #: `time.time()` on the worker when it started the trial.
    started_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


TRIAL_EVENTS = {
    TrialState.COMPLETE: "trial.completed",
    TrialState.PRUNED: "trial.pruned",
    TrialState.FAIL: "trial.failed",
}


async def publish_told(bus: Bus, study: str, result: Result, frozen: FrozenTrial) -> None:
    """Publish the event of a trial just told (its state as Optuna recorded it)."""
    await bus.event(
        TRIAL_EVENTS[frozen.state],
        study,
        trial=result.number,
        params=frozen.params,
        values=frozen.values,
        error=result.error or frozen.user_attrs.get(ERROR_ATTR),
        duration=result.duration,
        **result.extra,
    )


class Limits:
    """The global cap on trials in flight, shared by every study, and memory back-pressure."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.runs: dict[str, StudyRun] = {}
        #: Set by the resource monitor while memory is above the high-water mark.
        self.backpressure = False

    def available(self) -> bool:
        """Whether one more trial may be dispatched.

        Under back-pressure at most one trial is in flight, all studies together: memory
        stops growing with concurrency, yet no study stalls.
        """
        cap = min(1, self.max_inflight) if self.backpressure else self.max_inflight
        return self.inflight < cap

    def set_backpressure(self, on: bool) -> None:
        """Throttle dispatch (`on`) or lift the throttle and let every study fill up again."""
        lifted = self.backpressure and not on
        self.backpressure = on
        if lifted:
            self.wake_all()

    def wake_all(self) -> None:
        """A slot freed up: let every study loop look again."""
        for run in self.runs.values():
            run.wake.set()


class StudyRun:
    """The loop of one running study."""

    def __init__(
        self,
        spec: StudySpec,
        store: StudyStore,
        bus: Bus,
        settings: Settings,
        limits: Limits,
        policies: PolicyChain,
        metrics: Metrics,
        timings: TimeBreakdown,
    ) -> None:
        self.spec = spec
        self.store = store
        self.bus = bus
        self.settings = settings
        self.limits = limits
        self.policies = policies
        self.metrics = metrics
        self.timings = timings
        self.inflight: dict[int, InFlight] = {}
        self.external: dict[str, AskedTrial] = {}
        self.told: set[int] = set()
        self.n_created = 0
        self.created_at = time.time()
        self.stopping = False
        self.wake = asyncio.Event()
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        """The study's name."""
        return self.spec.name

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the study's state from storage and start its loop."""
        self.metrics.strategy_decisions.labels(self.spec.sampler.name).inc()
        await self._recover()
        self.task = asyncio.create_task(self._loop(), name=f"study:{self.name}")

    async def _recover(self) -> None:
        attrs = await self.store.call(self.store.study_attrs, self.name)
        self.created_at = float(attrs.get("hpod:created_at", time.time()))
        trials = await self.store.call(self.store.trials, self.spec, None)
        self.n_created = len(trials)
        pending = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        for t in trials:
            if t.state in FINISHED:
                self.told.add(t.number)
            if t.user_attrs.get(EXTERNAL_ATTR):
                key = t.user_attrs.get(REQUEST_ATTR) or f"trial-{t.number}"
                self.external[key] = AskedTrial(t._trial_id, t.number, dict(t.params))
        for frozen in pending:
            if frozen.state == TrialState.WAITING or frozen.user_attrs.get(EXTERNAL_ATTR):
                continue
            asked = await self.store.call(self.store.rebuild, self.spec, frozen)
            attempt = int(frozen.user_attrs.get(DISPATCHED_ATTR, 0))
            if attempt:
                # Its task reached the broker before the restart: wait for its result.
                self.inflight[asked.number] = InFlight(asked, attempt, self._deadline())
                self.limits.inflight += 1
            else:
                await self._dispatch(asked, attempt=1)
        if pending:
            log.info("study.recovered", study=self.name, in_flight=len(self.inflight))

    def _deadline(self) -> float:
        return time.monotonic() + self.spec.trial_timeout + self.settings.trial_grace_seconds

    async def _loop(self) -> None:
        try:
            while True:
                await self._fill()
                if self._finished():
                    break
                timeout = self._next_deadline()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except TimeoutError:
                    await self._expire()
                self.wake.clear()
            await self._complete()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("study.loop_failed", study=self.name, error=repr(exc))
            raise
        finally:
            self.done.set()

    def _budget_left(self) -> bool:
        budget = self.spec.budget
        if budget.trials is not None and self.n_created >= budget.trials:
            return False
        return budget.seconds is None or time.time() - self.created_at < budget.seconds

    def _finished(self) -> bool:
        if self.inflight:
            return False
        if self.stopping:
            return True
        return not self._budget_left() and not self._external_pending()

    def _external_pending(self) -> bool:
        return any(a.number not in self.told for a in self.external.values())

    async def _fill(self) -> None:
        """Ask and dispatch trials while the budget and the concurrency limits allow."""
        if self.spec.objective is None:
            return
        while (
            not self.stopping
            and self._budget_left()
            and len(self.inflight) < self.spec.max_concurrent
            and self.limits.available()
        ):
            await self._ask_and_dispatch()

    async def _ask_and_dispatch(self) -> None:
        """Ask one trial, run it through the policies, and dispatch it (or tell a skip)."""
        asked_at = time.perf_counter()
        self.n_created += 1
        asked = await self._timed("sampler", self.store.ask, self.spec)
        try:
            with self.timings.measure("policies"):
                self.policies.before_dispatch(TrialEvent(self.spec, asked.number, asked.params))
        except SkipEvaluation as skip:
            self.metrics.skipped(skip.reason)
            extra = {"skipped": skip.reason}
            await self.on_result(Result(asked.number, "complete", skip.values, extra=extra))
            return
        await self._dispatch(asked, attempt=1, asked_at=asked_at)

    async def _timed(self, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """Call `fn` on the Optuna thread and count its time (there) in `stage`."""
        result, seconds = await self.store.call_timed(fn, *args)
        self.timings.add(stage, seconds)
        return result

    async def _dispatch(
        self, asked: AskedTrial, attempt: int, asked_at: float | None = None
    ) -> None:
        task = {
            "study": self.name,
            "trial_id": asked.trial_id,
            "number": asked.number,
            "params": asked.params,
            "objective": self.spec.objective,
            "objective_kwargs": self.spec.objective_kwargs,
            "fidelity": 1.0,
            "attempt": attempt,
        }
        if asked.number not in self.inflight:
            self.limits.inflight += 1
        self.inflight[asked.number] = InFlight(asked, attempt, self._deadline(), time.time())
        timeout = self.spec.trial_timeout
        with self.timings.measure("dispatch"):
            await self.bus.dispatch(task, soft_limit=timeout, hard_limit=timeout + 30)
        if asked_at is not None:
            self.metrics.dispatch_latency.observe(time.perf_counter() - asked_at)
        await self._timed("storage", self.store.mark_dispatched, asked.trial_id, attempt)

    def _next_deadline(self) -> float | None:
        timeouts = [f.deadline for f in self.inflight.values()]
        if self.spec.budget.seconds is not None and self._budget_left():
            timeouts.append(
                time.monotonic() + self.spec.budget.seconds - (time.time() - self.created_at)
            )
        return max(0.05, min(timeouts) - time.monotonic()) if timeouts else None

    async def _expire(self) -> None:
        """Trials whose worker never answered: dispatch again, or fail after max attempts."""
        now = time.monotonic()
        for flight in [f for f in self.inflight.values() if f.deadline <= now]:
            if flight.attempt < self.settings.max_attempts:
                log.warning("trial.redispatch", study=self.name, trial=flight.trial.number)
                await self._dispatch(flight.trial, flight.attempt + 1)
            else:
                error = f"no result after {flight.attempt} attempts (worker lost or stuck)"
                await self.on_result(Result(flight.trial.number, "failed", error=error))

    # --- results -----------------------------------------------------------------------

    async def on_result(self, result: Result) -> bool:
        """Tell Optuna a trial's outcome and publish it; False if it was already told."""
        frozen = await self._timed(
            "storage",
            self.store.tell,
            self.spec,
            result.number,
            result.state,
            result.values,
            result.error,
        )
        flight = self.inflight.pop(result.number, None)
        if flight is not None:
            self.limits.inflight -= 1
            self.limits.wake_all()
        self.told.add(result.number)
        self.wake.set()
        if frozen is None:
            return False
        self._account(result, flight, frozen)
        with self.timings.measure("policies"):
            self.policies.after_tell(
                TrialEvent(
                    self.spec,
                    result.number,
                    frozen.params,
                    state=result.state,
                    values=frozen.values,
                    duration=result.duration,
                )
            )
        await publish_told(self.bus, self.name, result, frozen)
        return True

    def _account(self, result: Result, flight: InFlight | None, frozen: FrozenTrial) -> None:
        """Count a told trial in the metrics and in the study's time breakdown."""
        self.metrics.told(self.name, frozen)
        self.timings.trials += 1
        if result.duration is not None:
            self.timings.add("evaluation", result.duration)
            self.metrics.evaluation.labels(self.spec.objective or "external").observe(
                result.duration
            )
        dispatched_at = flight.dispatched_at if flight is not None else None
        if dispatched_at is not None and result.started_at is not None:
            wait = max(0.0, result.started_at - dispatched_at)
            self.timings.add("queue_wait", wait)
            self.metrics.queue_wait.observe(wait)

    # --- external evaluators -----------------------------------------------------------

    async def ask_external(self, request_id: str | None) -> AskedTrial:
        """A trial for an external evaluator; the same request id gets the same trial."""
        if request_id and request_id in self.external:
            return self.external[request_id]
        if self.stopping or not self._budget_left():
            raise RequestRejected(
                "budget_exhausted", "study", f"study {self.name!r} asks no more trials"
            )
        self.n_created += 1
        asked = await self._timed("sampler", self.store.ask, self.spec, True, request_id)
        self.external[request_id or f"trial-{asked.number}"] = asked
        return asked

    async def stop(self) -> None:
        """Ask no more trials; trials in flight are still told, then the loop ends."""
        self.stopping = True
        await self.store.call(self.store.set_attr, self.name, STATE_ATTR, "stopped")
        self.wake.set()

    async def _complete(self) -> None:
        state = "stopped" if self.stopping else "completed"
        if state == "completed":
            await self.store.call(self.store.set_attr, self.name, STATE_ATTR, "completed")
        summary = await self.store.call(self.store.summary, self.spec)
        await self.bus.event(
            "study.completed",
            self.name,
            reason=state,
            n_trials=summary["n_trials"],
            counts=summary["counts"],
            best=summary["best"],
            best_trials=summary["best_trials"],
        )
        log.info("study.completed", study=self.name, reason=state, n_trials=summary["n_trials"])
