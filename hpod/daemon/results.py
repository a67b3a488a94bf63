"""Worker results: validated, matched against the trial in flight, handed to its study's loop.

A worker publishes each outcome on ``hpod.results``; the intake hands every message here
(`WorkerResults.on_message`, the manager's `results`). Nothing on that queue
is trusted (`hpod.workers.messages`): a result is told only if it matches a trial in flight
(or, for a study whose loop is recovering or not running, the stored trial), through the
study's loop (`hpod.daemon.studies.StudyRun.on_results`) or directly when no loop runs;
anything else is dead-lettered with the reason. An external evaluator's tell takes the same
last step (`WorkerResults.tell`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import structlog
from optuna.trial import TrialState
from pydantic import ValidationError

from hpod.daemon.bus import Bus
from hpod.daemon.metrics import Metrics
from hpod.daemon.running import RunningStudies
from hpod.daemon.store import FINISHED, Outcome, StudyStore
from hpod.daemon.studies import StudyRun
from hpod.daemon.told import publish_told
from hpod.engine import DISPATCHED_ATTR, EXTERNAL_ATTR
from hpod.errors import RequestRejected
from hpod.messaging import RESULTS
from hpod.policies.plan import TaskPlanJSON
from hpod.schema import StudySpec
from hpod.workers.messages import (
    Expected,
    TrialResult,
    check_result,
    parse_results,
    trusted_cost,
)

log = structlog.get_logger("hpod.results")


class WorkerResults:
    """Tells the outcomes workers report, each through its study's loop (see the module)."""

    def __init__(
        self, store: StudyStore, bus: Bus, metrics: Metrics, running: RunningStudies
    ) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.running = running

    async def tell(self, spec: StudySpec, outcome: Outcome) -> bool:
        """Tell one outcome of study `spec` (an external evaluator's): through its loop, or
        directly when none runs; False if the trial had been told already."""
        run = self.running.runs.get(spec.name)
        if run is not None:
            told = await run.on_result(outcome)
        else:
            told = await self._tell_directly(spec, outcome)
        self._note_told(spec.name, run, [outcome.number])
        return told

    async def on_message(self, body: bytes | dict[str, Any], redelivered: bool = False) -> None:
        """A worker's result message (one trial, or a pack's ``results``): validate it, check
        each result against the trial in flight, tell each through its study loop (or directly
        if the loop ended).

        Nothing on ``hpod.results`` is trusted (see `hpod.workers.messages`): a malformed
        result, or one that does not match a trial in flight (unknown study or trial, a trial
        not running, an attempt never dispatched, other params, a wrong number of values,
        rungs off the trial's ladder) is dead-lettered with the reason and never told; it is
        never retried either. A result of a trial already told (a second evaluation) is
        ignored. A result the broker delivers again after a daemon crash may have been told
        without its event going out; then the event is published again from the stored
        trial, so events are at-least-once (a consumer may see a trial's event twice, never
        zero times).
        """
        parsed = parse_results(body)
        for rejected in parsed.rejected:
            raw = body if rejected.body is None and isinstance(body, bytes) else rejected.body
            await self._refuse(raw if raw is not None else body, rejected.reason)
        by_study: dict[str, list[TrialResult]] = {}
        for result in parsed.results:
            by_study.setdefault(result.study, []).append(result)
        for study, results in by_study.items():
            await self._tell_results(study, results, redelivered)

    async def _refuse(self, body: Any, reason: str) -> None:
        """Dead-letter a worker result with the reason it was refused (part of
        `on_message`)."""
        origin: dict[str, Any] = {"queue": RESULTS}
        if isinstance(body, dict):
            origin.update(study=body.get("study"), trial=body.get("number"))
        log.warning("result.refused", reason=reason, study=origin.get("study"))
        raw = body if isinstance(body, bytes) else dumps_lenient(body)
        await self.bus.dead_letter(raw, reason, origin)

    async def _tell_results(
        self, study: str, results: list[TrialResult], redelivered: bool
    ) -> None:
        """Tell the results of one study that match a trial in flight (part of
        `on_message`)."""
        run = self.running.runs.get(study)
        try:
            spec = run.spec if run else await self.store.call(self.store.spec, study)
        except RequestRejected:
            for result in results:
                await self._refuse(result.model_dump(mode="json"), "unknown study")
            return
        except ValidationError as exc:  # a failed study whose stored spec no longer validates
            log.warning("result.invalid_study", study=study, error=str(exc)[:500])
            return
        accepted: list[Outcome] = []
        duplicates: list[Outcome] = []
        for message in results:
            verdict = await self._match(spec, run, message)
            if isinstance(verdict, str):
                await self._refuse(message.model_dump(mode="json"), verdict)
            elif verdict is None:
                duplicates.append(_as_outcome(message, None))
            else:
                accepted.append(_as_outcome(message, trusted_cost(message, verdict)))
        if run is not None:
            told = await run.on_results(accepted) if accepted else []
        else:
            told = [await self._tell_directly(spec, result) for result in accepted]
        self._note_told(study, run, [r.number for r in [*accepted, *duplicates]])
        stale = [r for r, was_told in zip(accepted, told, strict=True) if not was_told]
        for again in [*stale, *duplicates] if redelivered else []:
            frozen = await self.store.call(self.store.trial, spec, again.number)
            await publish_told(self.bus, spec.name, again, frozen)

    def _note_told(self, study: str, told_by: StudyRun | None, numbers: list[int]) -> None:
        """Trials `numbers` of `study` are finished in storage, told by the loop `told_by`
        (None: directly). A loop of the study that started while the tell was on its way
        (a restart after a storage outage) may have read them RUNNING and taken them for
        in flight: it learns they are told, instead of waiting for their trial timeout."""
        current = self.running.runs.get(study)
        if current is not None and current is not told_by and numbers:
            current.note_told(numbers)

    async def _match(
        self, spec: StudySpec, run: StudyRun | None, result: TrialResult
    ) -> Expected | str | None:
        """The trial in flight `result` is for (what it is checked against), None if that
        trial was told already (a second evaluation), or why the result is refused (part of
        `on_message`).

        A loop still recovering (restarted after a storage outage, say) does not know its
        trials in flight yet: its results are checked against the stored trial, as those of a
        study without a loop are. Refused, they were dead-lettered, and the loop then waited
        for them until their trial timeout."""
        if run is not None and not run.recovering:
            flight = run.inflight.get(result.number)
            if flight is None:
                if result.number in run.told or result.number in run.paused_trials:
                    return None  # told, or paused at a rung: a second result of a task
                return f"trial {result.number} of study {spec.name!r} is not in flight"
            steps_to = flight.task_plan.get("steps_to")
            if (
                steps_to is not None
                and result.cost is not None
                and result.cost.steps_to != steps_to
            ):
                return None  # a continued trial's result of an earlier rung's task
            expected = _expected(spec, flight.trial.trial_id, flight.trial.params, flight.attempt)
            expected = _with_ladder(expected, result, flight.task_plan)
        else:
            try:
                frozen = await self.store.call(self.store.trial, spec, result.number)
            except RequestRejected as exc:
                return exc.message
            if frozen.state in FINISHED:
                return None
            if frozen.state != TrialState.RUNNING or frozen.user_attrs.get(EXTERNAL_ATTR):
                return f"trial {result.number} is not running on hpod's workers"
            # A task is published before its dispatch mark is written: a mark lost to a
            # storage outage in between leaves the stored attempt one behind the task's.
            attempt = int(frozen.user_attrs.get(DISPATCHED_ATTR, 0) or 0) + 1
            expected = _expected(spec, frozen._trial_id, frozen.params, attempt)
        problem = check_result(result, expected)
        return expected if problem is None else problem

    async def _tell_directly(self, spec: StudySpec, result: Outcome) -> bool:
        """Tell a trial of a study whose loop is not running (stopped, or ended); a continued
        trial that paused then is told pruned (no loop will promote it)."""
        state = "pruned" if result.state == "paused" else result.state
        values = None if state == "pruned" else result.values
        frozen = await self.store.call(
            self.store.tell, spec, result.number, state, values, result.error
        )
        if frozen is not None:
            self.metrics.told(spec.name, frozen)
            await publish_told(self.bus, spec.name, result, frozen)
        return frozen is not None


def _expected(spec: StudySpec, trial_id: int, params: dict[str, Any], attempt: int) -> Expected:
    """What a result of this trial must match (ladder unknown until `_with_ladder`)."""
    return Expected(trial_id, params, attempt, len(spec.directions))


def _with_ladder(expected: Expected, result: TrialResult, task_plan: TaskPlanJSON) -> Expected:
    """`expected` with the ladder the worker ran: the task's for an objective that
    subsamples, full data for the others; unknown (None) for a trial recovered after a
    restart, whose task plan is not kept."""
    if "ladder" not in task_plan:
        return expected
    subsamples = result.cost is not None and result.cost.fidelity == "data"
    ladder = [float(f) for f in task_plan["ladder"]] if subsamples else [1.0]
    cached = {float(k): list(v) for k, v in (task_plan.get("cached") or {}).items()}
    return replace(expected, ladder=ladder, cached=cached)


def _as_outcome(message: TrialResult, cost: dict[str, Any] | None) -> Outcome:
    """A validated worker result as the `Outcome` the study loop tells."""
    return Outcome(
        number=message.number,
        state=message.state,
        values=list(message.values) if message.values is not None else None,
        error=message.error,
        duration=message.duration,
        started_at=message.started_at,
        cost=cost,
        extra={"worker": message.worker, "attempt": message.attempt},
    )


def dumps_lenient(body: Any) -> bytes:
    """A refused body as JSON for the dead letter (non-finite numbers kept as written)."""
    return json.dumps(body, separators=(",", ":"), default=repr).encode()
