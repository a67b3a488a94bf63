"""Study loops: one asyncio task per running study asks, dispatches and tells.

`StudyRun` is the one owner of its loop's state: its counters, its trials in flight and its
plan. The strategy driver decides from a read-only `LoopView` and hands back a `Choice`
(`hpod.daemon.strategy`), the ladder watch the data ladder's verdict (`hpod.daemon.ladder`);
the run applies them and composes its plan in one place (`StudyRun._compose`, through
`hpod.policies.compose`). The transfer driver reads the run through a read-only protocol
(`hpod.daemon.transfer.StudyLoop`) and only wakes it. Worker results reach the run through
`hpod.daemon.results`; `hpod.daemon.running.RunningStudies` holds every running loop.

A study's budget is exact across restarts: every trial Optuna created counts (whoever
evaluates it), a trial is told once (a second result is ignored), and a trial that was asked
but whose task never reached the broker is dispatched again when the daemon comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import structlog
from optuna.trial import FrozenTrial, TrialState

from hpod.checkpoints import CheckpointStore
from hpod.config import Settings
from hpod.daemon.budget import (
    ALLOWANCE_KEY,
    Spend,
    budget_left,
    budget_used,
    cpu_allowance,
    trials_affordable,
)
from hpod.daemon.bus import Bus
from hpod.daemon.declared import DeclaredFidelities
from hpod.daemon.doctor import TimeBreakdown
from hpod.daemon.ladder import LadderWatch
from hpod.daemon.metrics import Metrics
from hpod.daemon.promotion import CONTINUATION_ATTR, Promotions, Record
from hpod.daemon.running import RunningStudies
from hpod.daemon.store import FINISHED, AskedTrial, Outcome, StudyStore
from hpod.daemon.strategy import LoopView, StrategyDriver
from hpod.daemon.timeline import TrialTimes, split_task
from hpod.daemon.told import STATE_NAMES, publish_told, publish_told_many
from hpod.daemon.transfer import TransferDriver
from hpod.engine import (
    BUDGET_ATTR,
    DISPATCHED_ATTR,
    EXTERNAL_ATTR,
    LADDER_ATTR,
    REQUEST_ATTR,
    STATE_ATTR,
)
from hpod.errors import RequestRejected
from hpod.policies import HookContext, PolicyChain, SkipEvaluation
from hpod.policies.batching import BatchingPolicy
from hpod.policies.caching import LOOKUP_NOTE
from hpod.policies.compose import StrategyLayer, continuation_applies
from hpod.policies.plan import Plan, TaskPlanJSON
from hpod.policies.strategy.agent import StrategyAgent
from hpod.schema import Budget, StudySpec
from hpod.transfer.store import counts_in_budget

log = structlog.get_logger("hpod.studies")

T = TypeVar("T")


@dataclass
class InFlight:
    """A trial dispatched to the workers and not yet told."""

    trial: AskedTrial
    attempt: int
    deadline: float
    #: `time.time()` when its task was last published; None for a trial recovered after a
    #: restart.
    dispatched_at: float | None = None
    #: The worker task it travels in (several trials share one when packed).
    task: int = 0
    #: What the policies put on its task (ladder, pruners, cached rungs), for a re-dispatch.
    task_plan: TaskPlanJSON = field(default_factory=lambda: TaskPlanJSON())
    #: The daemon's own seconds on it so far: its share of the ask and of the task's
    #: publish, its policy hooks (the `daemon` part of `hpod.daemon.timeline`).
    daemon: float = 0.0


@dataclass
class Ready:
    """Trials asked in the durable write of a result's tell (`StudyRun.on_results`), to
    dispatch (`StudyRun._dispatch_ready`): their task is counted from the ask on (`task`), so
    no other ask takes its slot meanwhile. `error`: the ask or the tell raised; the loop
    raises it, as it would its own."""

    asked: list[AskedTrial]
    task: int
    asked_at: float
    ask_seconds: float
    error: Exception | None = None


class StudyRun:
    """The loop of one running study."""

    def __init__(
        self,
        spec: StudySpec,
        store: StudyStore,
        bus: Bus,
        settings: Settings,
        running: RunningStudies,
        policies: PolicyChain,
        metrics: Metrics,
        timings: TimeBreakdown,
        plan: Plan,
        agent: StrategyAgent,
        declared: DeclaredFidelities | None = None,
    ) -> None:
        self.spec = spec
        #: Where the loop learns what the objective declares (resumable; the driver: fidelity).
        self.declared = declared
        #: The plan of the study's mode (and spec); `plan` is it with the strategy laid over
        #: (`layer`) and the ladder's verdict, composed in one place (`_compose`).
        self.mode_plan = plan
        self.plan = plan
        #: What the strategy decisions lay over the mode's plan (the last `Choice` applied).
        self.layer = StrategyLayer()
        #: The data ladder's "off" verdict, once measured (`hpod.daemon.ladder`).
        self.ladder = LadderWatch(policies)
        self.batching = next(
            (p for p in policies.policies if isinstance(p, BatchingPolicy)), BatchingPolicy()
        )
        #: Trial numbers in flight by worker task.
        self.tasks: dict[int, set[int]] = {}
        self._task_ids = itertools.count(1)
        self.store = store
        self.bus = bus
        self.settings = settings
        #: Every running loop (this one among them) and the global cap on tasks in flight.
        self.running = running
        self.policies = policies
        self.metrics = metrics
        self.timings = timings
        #: When the first worker result since the last dispatch arrived (perf_counter).
        self._result_at: float | None = None
        self.inflight: dict[int, InFlight] = {}
        #: Continued trials waiting at a rung (not in flight), by number.
        self.paused_trials: dict[int, AskedTrial] = {}
        self.external: dict[str, AskedTrial] = {}
        self.told: set[int] = set()
        #: Trials asked with a tell, not yet dispatched (`Ready`; the loop's `_fill` first).
        self.ready: list[Ready] = []
        #: Tells with an ask (`_tell`) under way: the told count they will add.
        self._telling = 0
        self.n_created = 0
        self.created_at = time.time()
        self.stopping = False
        #: True until `_recover` has rebuilt the trials in flight from storage. The loop is
        #: registered (results reach it) before that: meanwhile a result is checked against
        #: the stored trial, not against `inflight` (`hpod.daemon.results.WorkerResults._match`).
        self.recovering = True
        #: Paused: nothing new is dispatched until resumed (trials in flight are still told).
        self.paused = False
        #: The budget in force: the spec's, or one changed live (`study.budget`).
        self.budget: Budget = spec.budget
        #: The compute the told trials spent (`hpod.daemon.budget`), rebuilt at recovery.
        self.spend = Spend()
        self.wake = asyncio.Event()
        self.done = asyncio.Event()
        #: The asyncio task running `_loop` (its worker tasks are `tasks`).
        self.loop_task: asyncio.Task[None] | None = None
        #: Chooses the sampler, pruner and data ladder at the start and every window; the
        #: loop applies its choices, one at a time (`_deciding`).
        self.strategy = StrategyDriver(spec, store, agent, declared)
        self._deciding = asyncio.Lock()
        #: Warm start from past studies, their agreement, this study's memory at its end.
        self.transfer = TransferDriver(self)
        #: Whether the objective declares ``hpod_resumable`` (None: not asked yet).
        self.resumable: bool | None = None
        #: The continued trials and the rule that promotes them (None: none continued).
        self.promotions: Promotions | None = None
        self.checkpoints = CheckpointStore.from_settings(settings)

    @property
    def name(self) -> str:
        """The study's name."""
        return self.spec.name

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the study's state from storage and start its loop."""
        await self.store.call(self.store.set_plan, self.spec, self.plan)
        attrs = await self.store.call(self.store.study_attrs, self.name)
        await self.ladder.resume(self.store, self.spec, self.plan, attrs.get(LADDER_ATTR))
        layer = self.strategy.resume(attrs, self.mode_plan.strategy_window)
        if layer is not None:
            self.layer = layer
            await self.set_plan(self._compose())
        await self._recover()
        await self.transfer.start()
        self.loop_task = asyncio.create_task(self._loop(), name=f"study:{self.name}")

    async def _recover(self) -> None:
        attrs = await self.store.call(self.store.study_attrs, self.name)
        self.created_at = float(attrs.get("hpod:created_at", time.time()))
        self.paused = attrs.get(STATE_ATTR) == "paused"
        if attrs.get(BUDGET_ATTR):
            self.budget = Budget.model_validate(attrs[BUDGET_ATTR])
        trials = await self.store.call(self.store.trials, self.spec, None)
        # Waiting trials (enqueued, transferred) count once asked; dropped ones never.
        self.n_created = sum(counts_in_budget(t) for t in trials)
        pending = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        for t in trials:
            if t.state in FINISHED:
                self.told.add(t.number)
                self.spend.add_trial(t, self.spec.trial_timeout)
            record = Record.from_json(t.user_attrs.get(CONTINUATION_ATTR))
            if record is not None:
                self._promotions().load(t.number, record, finished=t.state in FINISHED)
            if t.user_attrs.get(EXTERNAL_ATTR):
                key = t.user_attrs.get(REQUEST_ATTR) or f"trial-{t.number}"
                self.external[key] = AskedTrial(t._trial_id, t.number, dict(t.params))
        for frozen in pending:
            if frozen.state == TrialState.WAITING or frozen.user_attrs.get(EXTERNAL_ATTR):
                continue
            asked = await self.store.call(self.store.rebuild, self.spec, frozen)
            if asked.number in self.told:
                # Its result came in while this loop was recovering (the loop is registered
                # first, so results reach it): told already, nothing to wait for.
                continue
            attempt = int(frozen.user_attrs.get(DISPATCHED_ATTR, 0))
            record = self.promotions.records.get(asked.number) if self.promotions else None
            if record is not None:
                self._recover_continued(asked, record, attempt)
            elif attempt:
                # Its task reached the broker before the restart: wait for its result.
                task = self._new_task({asked.number})
                self.inflight[asked.number] = InFlight(asked, attempt, self._deadline(), None, task)
            else:
                await self._dispatch([(asked, self._task_plan(asked))], attempt=1)
        self.recovering = False
        if pending:
            log.info("study.recovered", study=self.name, in_flight=len(self.inflight))
        running = {t._trial_id for t in trials if t.state == TrialState.RUNNING}
        await asyncio.to_thread(self.checkpoints.sweep, self.name, running)
        await self._publish_owed({t.number: t for t in trials})

    def note_told(self, numbers: list[int]) -> None:
        """Trials `numbers` were told outside this loop (directly, or by an earlier loop of
        the study) while it started: a trial it recovered as in flight from a read taken
        before that tell landed is in flight no more."""
        for number in numbers:
            self._forget_task_of(number)
            self.inflight.pop(number, None)
            self.told.add(number)
        self.wake.set()

    def _recover_continued(self, asked: AskedTrial, record: Record, attempt: int) -> None:
        """A continued trial found after a restart: paused (it waits for its promotion), or
        running to a rung (its result is waited for, its task sent again if none comes)."""
        if record.to is None:
            self.paused_trials[asked.number] = asked
            return
        task = self._new_task({asked.number})
        task_plan = self._continued_task_plan(record.to)
        self.inflight[asked.number] = InFlight(
            asked, max(1, attempt), self._deadline(), None, task, task_plan
        )

    async def _publish_owed(self, trials: dict[int, FrozenTrial]) -> None:
        """Publish the events a crash may have kept from going out: those of trials the
        daemon told itself (no broker message would bring them back; see
        `hpod.daemon.store.EVENTS_OWED_ATTR`). A consumer may see such an event twice, with
        the same outcome; never zero times."""
        owed = await self.store.call(self.store.owed_events, self.name)
        if not owed:
            return
        finished = [trials[n] for n in owed if n in trials and trials[n].state in FINISHED]
        for frozen in finished:
            result = Outcome(frozen.number, STATE_NAMES[frozen.state], frozen.values)
            await publish_told(self.bus, self.name, result, frozen)
        # Owed but not finished: the tell never happened; it is told (and noted) again later.
        await self.store.call(self.store.settle_events, self.name, owed)
        log.info("study.events_republished", study=self.name, trials=[t.number for t in finished])

    def _deadline(self, pack: int = 1) -> float:
        timeout = self.spec.trial_timeout * pack
        return time.monotonic() + timeout + self.settings.trial_grace_seconds

    async def _loop(self) -> None:
        try:
            while True:
                await self._fill()
                if self._finished():
                    await self._prune_paused()
                    break
                timeout = self._next_deadline()
                # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` returns the
                # result of a wait already done when the task is cancelled, dropping the
                # cancellation (a `wake` set just before a shutdown left the loop running
                # and the shutdown waiting for it).
                try:
                    async with asyncio.timeout(timeout):
                        await self.wake.wait()
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

    def _budget_left(self, reserve: bool = True) -> bool:
        """Whether the budget allows another trial; with `reserve`, the compute the trials
        in flight may still spend (their allowances) is reserved first (see
        `hpod.daemon.budget.budget_left`)."""
        elapsed = time.time() - self.created_at
        in_flight = len(self.inflight) if reserve else 0
        allocated = self._allocated() if reserve else 0.0
        return budget_left(self.budget, self.n_created, elapsed, self.spend, in_flight, allocated)

    def _allocated(self, leave_out: set[int] | None = None) -> float:
        """The CPU seconds the trials in flight may still spend: their allowances
        (`hpod.daemon.budget.cpu_allowance`); a trial without one (recovered after a
        restart, dispatched with no compute limit) at the expected cost of a full
        evaluation, or the mean spend per trial while none is measured."""
        reserve = self.spend.full_evaluation_cpu
        if reserve is None:
            n = len(self.spend.counted)
            reserve = self.spend.cpu_seconds / n if n else 0.0
        total = 0.0
        for number, flight in self.inflight.items():
            if leave_out and number in leave_out:
                continue
            allowance = flight.task_plan.get(ALLOWANCE_KEY)
            total += float(allowance) if allowance is not None else reserve
        return total

    def _compute_spent(self) -> bool:
        """Whether a compute limit leaves no allowance for another trial."""
        allowance = cpu_allowance(self.budget, self.spend, self._allocated())
        return allowance is not None and allowance <= 0

    def _with_allowances(
        self, trials: list[tuple[AskedTrial, TaskPlanJSON]]
    ) -> list[tuple[AskedTrial, TaskPlanJSON]]:
        """`trials` (one task) with their CPU allowances on their plans, under a compute
        limit: the task's share of the budget not yet allocated, split evenly among its
        trials. A trial sent again keeps the allowance it had."""
        fresh = [asked.number for asked, task_plan in trials if ALLOWANCE_KEY not in task_plan]
        if not fresh:
            return trials
        free = max(1, self.plan.parallelism - len(self.tasks))
        allocated = self._allocated(leave_out={asked.number for asked, _ in trials})
        allowance = cpu_allowance(self.budget, self.spend, allocated, free)
        if allowance is None:
            return trials
        # Dispatched anyway (a recovered trial, the last of a pack): it stops at once.
        each = round(max(allowance / len(fresh), 1e-3), 6)
        return [
            (asked, task_plan if ALLOWANCE_KEY in task_plan else {**task_plan, ALLOWANCE_KEY: each})
            for asked, task_plan in trials
        ]

    def spent(self) -> dict[str, Any]:
        """What the study has spent of each kind of budget (the status's `spent`)."""
        return {
            "trials": self.n_created,
            "seconds": round(time.time() - self.created_at, 3),
            **self.spend.report(),
        }

    def _finished(self) -> bool:
        if self.inflight or self.ready:
            return False
        if self.stopping:
            return True
        if self.paused:
            return False
        if self._promotion(final=not self._budget_left()) is not None:
            return False
        return not self._budget_left() and not self._external_pending()

    def _seconds_left(self) -> bool:
        seconds = self.budget.seconds
        return seconds is None or time.time() - self.created_at < seconds

    def _external_pending(self) -> bool:
        return any(a.number not in self.told for a in self.external.values())

    async def set_plan(self, plan: Plan) -> None:
        """Follow a new plan (a new strategy, or the mode changed): trials dispatched from
        now on use it."""
        self.plan = plan
        if self.promotions is not None:
            self.promotions.set_ladder(plan.steps_ladder, plan.eta)
        await self.store.call(self.store.set_plan, self.spec, plan)
        self.wake.set()

    async def set_mode_plan(self, mode_plan: Plan) -> None:
        """The mode's plan was resolved again (a mode switch or a modes reload): follow it,
        with the current strategy still laid over it."""
        self.mode_plan = mode_plan
        await self.set_plan(self._compose())

    def _compose(self) -> Plan:
        """The plan the study runs under: the mode's plan with the strategy layer laid over
        it and the data ladder dropped once it does not pay (`hpod.policies.compose`). The
        loop's one composition: every change of plan goes through here."""
        return self.layer.over(self.mode_plan, ladder_off=self.ladder.off is not None)

    # --- the strategy ------------------------------------------------------------------

    def _view(self) -> LoopView:
        """What the strategy driver may read of this loop, now."""
        return LoopView(
            told=len(self.told),
            created=self.n_created,
            mode_plan=self.mode_plan,
            budget_used=budget_used(
                self.budget, self.n_created, time.time() - self.created_at, self.spend
            ),
            layer=self.layer,
            ladder_off=self.ladder.off is not None,
            ladder_pays=self.ladder.pays(),
            budget=self.budget,
            elapsed=time.time() - self.created_at,
        )

    async def _maybe_decide(self) -> None:
        """Before an ask: drop the data ladder if it was just measured not to pay, then let
        the driver decide if a decision is due (the study's first, or its window is full)."""
        await self._check_ladder()
        if self.strategy.due(len(self.told)) is not None:
            await self._decide()

    async def switch_strategy(self, setting: str) -> None:
        """Follow a new strategy setting from now on (a live `study.strategy`), decided now."""
        await self._decide(setting)

    def strategy_status(self) -> dict[str, Any]:
        """What only the running loop knows of its strategy: the window, the next decision."""
        return self.strategy.status(self.mode_plan.strategy_window)

    async def _decide(self, new_setting: str | None = None) -> None:
        """Ask the driver for a decision and apply it: the new layer, the plan composed from
        it, the metric and the ``strategy.chosen`` event. Without `new_setting`, only if one
        is still due once the lock is held (another caller may have decided meanwhile); a
        `new_setting` is stored and taken under the lock, so a window decision running
        meanwhile is still made, and recorded, under the old one."""
        async with self._deciding:
            if new_setting is not None:
                await self.strategy.set_setting(new_setting)
            trigger = "switch" if new_setting is not None else self.strategy.due(len(self.told))
            if trigger is None:
                return
            choice = await self.strategy.decide(self._view(), trigger)
            self.layer = choice.layer
            plan = self._compose()
            if plan != self.plan:
                await self.set_plan(plan)
            event = choice.event
            self.metrics.strategy_decisions.labels(
                event["strategy"], event["source"], plan.sampler
            ).inc()
            await self.bus.event("strategy.chosen", self.name, **event)

    async def _check_ladder(self) -> None:
        """Store the subsampling policy's "off" verdict, once, and re-plan without the ladder."""
        verdict = self.ladder.turned_off(len(self.told))
        if verdict is None:
            return
        await self.store.call(self.store.set_attr, self.name, LADDER_ATTR, verdict)
        log.info("ladder.off", study=self.name, reason=verdict["reason"])
        plan = self._compose()
        if plan != self.plan:
            await self.set_plan(plan)

    async def _fill(self) -> None:
        """Ask and dispatch trials while the budget and the concurrency limits allow."""
        if self.spec.objective is None:
            return
        await self._dispatch_ready()
        await self._learn_resumable()
        await self._promote()
        while self._may_ask():
            # A strategy decision due (start, or a full window) and the transfer's verdicts on
            # the trials told since (`hpod.daemon.transfer`) come before the next ask; they
            # await, so whether to ask is checked again after them.
            await self._maybe_decide()
            await self.transfer.observe()
            if not self._may_ask():
                break
            await self._ask_and_dispatch(self.next_pack_size())

    def _may_ask(self) -> bool:
        """Whether the loop may ask and dispatch another task now."""
        return (
            not self.stopping
            and not self.paused
            and self._budget_left()
            and len(self.tasks) < self.plan.parallelism
            and self.running.slots.available()
        )

    def next_pack_size(self) -> int:
        """Trials for the next task: the batching policy's pack, within the budget and within
        the strategy's window (a pack does not run past the next decision)."""
        pack = (
            self.batching.pack_size(
                self.plan.batch_seconds,
                self.plan.max_pack,
                learning_sampler=self.plan.sampler not in ("random", "qmc"),
                told=len(self.told),
                parallelism=self.plan.parallelism,
                small_budget=self.strategy.small_budget,
            )
            if self.plan.uses("batching")
            else 1
        )
        limit = self.strategy.pack_limit(self.n_created)
        if limit is not None:
            pack = min(pack, limit)
        if self.budget.trials is not None:
            pack = min(pack, self.budget.trials - self.n_created)
        affordable = trials_affordable(self.budget, self.spend, len(self.inflight))
        if affordable is not None:
            pack = min(pack, affordable)
        return max(1, pack)

    async def _ask_and_dispatch(self, n: int) -> None:
        """Ask `n` trials, run each through the policies, dispatch them as one task (or tell
        the skipped ones at once)."""
        asked_at = time.perf_counter()
        self.n_created += n
        asked_trials, ask_seconds = await self.store.call_timed(self.store.ask_many, self.spec, n)
        self.timings.add("sampler", ask_seconds)
        await self._dispatch_asked(asked_trials, ask_seconds, asked_at)

    def _hand_over(self, ready: Ready) -> None:
        """Hand trials asked with a tell (`_tell`) to the loop, which publishes them
        (`_dispatch_ready`) while the told trials' events go out: their task is counted at
        once, in the slot the told trial left (no other ask takes it).

        Not published here: the intake handles one result message at a time and waits for
        this call, so a publish and its confirm here would serialise the results (tried:
        docs/benchmarks.md, "Fourth pass (issue 16)").
        An ask or a publish that fails fails the loop, as its own would: its restart
        dispatches a trial asked but never published."""
        ready.task = self._new_task({asked.number for asked in ready.asked})
        self.ready.append(ready)
        self.wake.set()

    async def _dispatch_ready(self) -> None:
        """Dispatch the trials asked with a result's tell (`on_results`), whatever the loop's
        state now: they were asked when it allowed one (stopped or paused since, they go out
        as a trial asked just before would). An ask that failed there fails the loop here."""
        while self.ready:
            ready = self.ready.pop(0)
            if ready.error is not None:
                self._release_task(ready.task)
                raise ready.error
            await self._dispatch_asked(
                ready.asked, ready.ask_seconds, ready.asked_at, task=ready.task
            )

    def _release_task(self, task: int) -> None:
        """Free a task's slot: its last trial is told or re-dispatched, or its trials were
        never dispatched (asked with a tell whose ask failed, or all skipped)."""
        if self.tasks.pop(task, None) is not None:
            self.running.recount()
            self.running.wake_all()

    async def _dispatch_asked(
        self,
        asked_trials: list[AskedTrial],
        ask_seconds: float,
        asked_at: float,
        task: int | None = None,
    ) -> None:
        """Run trials just asked through the policies, dispatch them as one task (`task`,
        when counted already) or tell the skipped ones at once."""
        to_dispatch: list[tuple[AskedTrial, TaskPlanJSON]] = []
        skipped: list[Outcome] = []
        daemon: dict[int, float] = {}
        for asked in asked_trials:
            context = self._hook_context(asked)
            hook_started = time.perf_counter()
            try:
                with self.timings.measure("policies"):
                    self.policies.before_dispatch(context)
            except SkipEvaluation as skip:
                self.metrics.skipped(skip.reason)
                extra = {"skipped": skip.reason}
                skipped.append(
                    Outcome(asked.number, "complete", skip.values, cost=skip.cost, extra=extra)
                )
                continue
            self.metrics.looked_up(context.notes.get(LOOKUP_NOTE))
            if context.notes.get("cache"):
                context.task_plan["cache"] = context.notes["cache"]
            if self._continuing():
                context.task_plan = self._continued_task_plan(self._promotions().first_rung())
            to_dispatch.append((asked, context.task_plan))
            hook = time.perf_counter() - hook_started
            daemon[asked.number] = ask_seconds / max(1, len(asked_trials)) + hook
        if to_dispatch:
            await self._dispatch(
                to_dispatch, attempt=1, asked_at=asked_at, daemon=daemon, task=task
            )
        elif task is not None:
            self._release_task(task)
        if skipped:
            await self.on_results(skipped, owed=True)

    def _hook_context(self, asked: AskedTrial) -> HookContext:
        """A just-asked trial as the policies see it, its task at the plan's base."""
        return HookContext(
            self.spec,
            asked.number,
            asked.params,
            plan=self.plan,
            task_plan=self.plan.base_task_plan(),
        )

    def _task_plan(self, asked: AskedTrial) -> TaskPlanJSON:
        """The policies' task plan for a trial dispatched outside `_ask_and_dispatch`."""
        context = self._hook_context(asked)
        # A recovered trial is evaluated whatever the cache says: it is already in storage.
        with contextlib.suppress(SkipEvaluation):
            self.policies.before_dispatch(context)
        context.task_plan.pop("cached", None)
        if self._continuing():
            return self._continued_task_plan(self._promotions().first_rung())
        return context.task_plan

    def _new_task(self, numbers: set[int]) -> int:
        task = next(self._task_ids)
        self.tasks[task] = numbers
        self.running.recount()
        return task

    async def _timed(self, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """Call `fn` on the Optuna thread and count its time (there) in `stage`."""
        result, seconds = await self.store.call_timed(fn, *args)
        self.timings.add(stage, seconds)
        return result

    async def _dispatch(
        self,
        trials: list[tuple[AskedTrial, TaskPlanJSON]],
        attempt: int,
        asked_at: float | None = None,
        daemon: dict[int, float] | None = None,
        task: int | None = None,
    ) -> None:
        """Send `trials` to the workers as one task (one trial, or a pack of them).

        `daemon`: the daemon's seconds already spent on each trial, by number (its share of
        the ask, its policy hooks); the publish is shared on top. `task`: the task already
        counted for them (`Ready`), else a new one."""
        trials = self._with_allowances(trials)
        messages = []
        for asked, task_plan in trials:
            self._forget_task_of(asked.number)
            messages.append(
                {
                    "study": self.name,
                    "trial_id": asked.trial_id,
                    "number": asked.number,
                    "params": asked.params,
                    "objective": self.spec.objective,
                    "objective_kwargs": self.spec.objective_kwargs,
                    "attempt": attempt,
                    "plan": task_plan,
                }
            )
        numbers = {asked.number for asked, _ in trials}
        if task is None:
            task = self._new_task(numbers)
        else:
            self.tasks[task] = numbers
        now = time.time()
        flights = [
            InFlight(
                asked,
                attempt,
                self._deadline(len(trials)),
                now,
                task,
                task_plan,
                (daemon or {}).get(asked.number, 0.0),
            )
            for asked, task_plan in trials
        ]
        for flight in flights:
            self.inflight[flight.trial.number] = flight
        timeout = self.spec.trial_timeout * len(trials)
        publish_started = time.perf_counter()
        with self.timings.measure("dispatch"):
            if len(messages) == 1:
                await self.bus.dispatch(messages[0], soft_limit=timeout, hard_limit=timeout + 30)
            else:
                await self.bus.dispatch_pack(messages, soft_limit=timeout, hard_limit=timeout + 30)
        # The publish is the daemon's work, not the trial's wait: its interval starts after.
        self._published(flights, time.perf_counter() - publish_started, time.time())
        if asked_at is not None:
            self.metrics.dispatch_latency.observe(time.perf_counter() - asked_at)
        if self._result_at is not None:
            latency = time.perf_counter() - self._result_at
            self._result_at = None
            self.timings.result_to_dispatch.append(latency)
            self.metrics.result_to_dispatch.observe(latency)
        # Durable with the next storage write (`StudyStore.mark_dispatched_soon`).
        self.store.mark_dispatched_soon([asked.trial_id for asked, _ in trials], attempt)

    @staticmethod
    def _published(flights: list[InFlight], seconds: float, at: float) -> None:
        """Count the publish of `flights`' task in their daemon time, shared; their
        dispatch → result interval starts when it returned."""
        for flight in flights:
            flight.daemon += seconds / len(flights)
            if flight.dispatched_at is not None:
                flight.dispatched_at = max(flight.dispatched_at, at)

    def _forget_task_of(self, number: int) -> None:
        """Take trial `number` out of the task it was in (it is told or re-dispatched)."""
        flight = self.inflight.get(number)
        if flight is None or flight.task not in self.tasks:
            return
        members = self.tasks[flight.task]
        members.discard(number)
        if not members:
            self._release_task(flight.task)

    def _next_deadline(self) -> float | None:
        timeouts = [f.deadline for f in self.inflight.values()]
        if self.budget.seconds is not None and self._budget_left():
            timeouts.append(
                time.monotonic() + self.budget.seconds - (time.time() - self.created_at)
            )
        return max(0.05, min(timeouts) - time.monotonic()) if timeouts else None

    async def _expire(self) -> None:
        """Trials whose worker never answered: dispatch again, or fail after max attempts.

        After a stall of the daemon itself the deadlines move first (`RunningStudies.check_stall`):
        results that arrived meanwhile are used, not dispatched again.
        """
        self.running.check_stall()
        now = time.monotonic()
        for flight in [f for f in self.inflight.values() if f.deadline <= now]:
            if flight.attempt < self.settings.max_attempts:
                log.warning("trial.redispatch", study=self.name, trial=flight.trial.number)
                await self._dispatch([(flight.trial, flight.task_plan)], flight.attempt + 1)
            else:
                error = f"no result after {flight.attempt} attempts (worker lost or stuck)"
                result = Outcome(flight.trial.number, "failed", error=error)
                await self.on_results([result], owed=True)

    # --- continuation ------------------------------------------------------------------

    async def _learn_resumable(self) -> None:
        """Learn once whether the objective declares ``hpod_resumable`` (the daemon's probe,
        `hpod.daemon.declared`), when the plan could continue its trials."""
        if self.resumable is not None or len(self.plan.steps_ladder) < 2:
            return
        objective = self.spec.objective
        if self.declared is None or objective is None:
            self.resumable = False
            return
        self.resumable = await self.declared.resumable(objective)

    def _continuing(self) -> bool:
        """Whether new trials are continued (run to the first rung, then promoted)."""
        return continuation_applies(self.plan, bool(self.resumable))

    def _promotions(self) -> Promotions:
        if self.promotions is None:
            ladder = self.plan.steps_ladder if len(self.plan.steps_ladder) > 1 else (1 / 3, 1.0)
            maximize = self.spec.directions[0] == "maximize"
            self.promotions = Promotions(tuple(ladder), self.plan.eta, maximize)
        return self.promotions

    def _continued_task_plan(self, steps_to: float) -> TaskPlanJSON:
        """The task plan of a continued trial: full data, no step pruner (promotions are the
        pruning), run to `steps_to` of the objective's steps from its checkpoint."""
        return {**self.plan.base_task_plan(), "steps_to": steps_to}

    def _promotion(self, final: bool) -> tuple[int, float] | None:
        """The paused trial to continue now, if any (never after the time budget)."""
        if self.promotions is None or not self.paused_trials or not self._seconds_left():
            return None
        return self.promotions.next_promotion(final=final)

    async def _promote(self) -> None:
        """Continue paused trials while slots are free: promotions go before new trials."""
        while (
            not self.stopping
            and not self.paused
            and len(self.tasks) < self.plan.parallelism
            and self.running.slots.available()
        ):
            promotion = self._promotion(final=not self._budget_left())
            if promotion is None:
                return
            task_plan_extra: TaskPlanJSON = {}
            if self._compute_spent():
                # Past a compute limit only the promotion that gives the study its first
                # full-fidelity result goes on, one at a time and without an allowance
                # (docs/protocol.md, "Budgets in compute").
                if self._promotions().finished or self.inflight:
                    return
                task_plan_extra[ALLOWANCE_KEY] = None
            number, to = promotion
            asked = self.paused_trials.pop(number)
            record = self._promotions().record(number)
            record.to = to
            # Durable before the task goes out: a restart finds it running, not paused.
            await self._timed(
                "storage",
                self.store.set_trial_attrs,
                self.spec,
                {number: {CONTINUATION_ATTR: record.as_json()}},
            )
            log.info("trial.promoted", study=self.name, trial=number, at=record.at, to=to)
            await self._dispatch(
                [(asked, {**self._continued_task_plan(to), **task_plan_extra})], attempt=1
            )

    async def _pause(self, results: list[Outcome]) -> None:
        """Continued trials that reached a rung below the last: persist their records (one
        durable write), free their slots, and let the promotion rule see them."""
        promotions = self._promotions()
        records: dict[int, dict[str, Any]] = {}
        for result in results:
            cost = result.cost or {}
            at = float(cost.get("steps_to") or promotions.first_rung())
            value = (result.values or [math.nan])[0]
            task = {"worker": result.extra.get("worker"), "resumed": cost.get("resumed_step")}
            record = promotions.paused(
                result.number,
                at,
                value,
                float(cost.get("cpu") or 0.0),
                float(cost.get("data") or 0.0),
                task,
            )
            records[result.number] = {CONTINUATION_ATTR: record.as_json()}
        await self._timed("storage", self.store.set_trial_attrs, self.spec, records)
        for result in results:
            flight = self.inflight.get(result.number)
            self._forget_task_of(result.number)
            self.inflight.pop(result.number, None)
            if flight is not None:
                self.paused_trials[result.number] = flight.trial
        self.wake.set()

    async def _prune_paused(self, numbers: list[int] | None = None) -> None:
        """Tell paused trials pruned (their last value is their last intermediate value),
        with what their tasks cost: `numbers`, or at the study's end every trial never
        promoted."""
        chosen = sorted(self.paused_trials) if numbers is None else sorted(numbers)
        if not chosen:
            return
        results = []
        for number in chosen:
            record = self._promotions().records.get(number) or Record()
            # No task ran: the cost is the record's (`_merge_continued`).
            results.append(Outcome(number, "pruned", extra={"paused_at": record.at}))
            self.paused_trials.pop(number, None)
        await self.on_results(results, owed=True)

    def _merge_continued(self, result: Outcome) -> dict[str, Any] | None:
        """The cost to store for a trial now told: a continued trial's tasks summed (CPU,
        share of a full evaluation), and its whole CPU as its full-evaluation cost when it
        completed the last rung; any other trial's cost as its worker reported it."""
        promotions = self.promotions
        record = promotions.records.get(result.number) if promotions is not None else None
        if record is None:
            return dict(result.cost) if result.cost else None
        cost = dict(result.cost or {})
        cost["cpu"] = round(record.cpu + float(cost.get("cpu") or 0.0), 6)
        cost["data"] = round(record.data + float(cost.get("data") or 0.0), 6)
        cost["paused_at"] = record.at
        last = {
            "to": cost.get("steps_to"),
            "cpu": round(float((result.cost or {}).get("cpu") or 0.0), 6),
        }
        last.update(worker=result.extra.get("worker"), resumed=cost.get("resumed_step"))
        cost["tasks"] = [*record.history, last] if result.cost else list(record.history)
        if result.state == "complete" and cost.get("steps_to") == 1.0:
            cost["full_cpu"] = cost["cpu"]
        return cost

    # --- results -----------------------------------------------------------------------

    async def on_result(self, result: Outcome) -> bool:
        """Tell Optuna a trial's outcome and publish it; False if it was already told."""
        return (await self.on_results([result]))[0]

    async def on_results(self, results: list[Outcome], owed: bool = False) -> list[bool]:
        """Tell several outcomes in one durable write, then publish them; for each, whether
        it was told now (False: it had been told before).

        `owed`: the daemon decided these outcomes itself (a cache hit, a trial failed after
        its last attempt), so no broker message is redelivered if the daemon dies between the
        tell and the events. Their events are then noted as owed in the same durable write and
        settled once published; recovery publishes those still owed (`_publish_owed`).
        Results from a message need no note: the message is acknowledged after the events,
        and a redelivered one republishes them (`hpod.daemon.results`).
        """
        if not owed and self._result_at is None:
            self._result_at = time.perf_counter()  # until the next dispatch (`_dispatch`)
        given = [r.number for r in results]
        paused = [r for r in results if r.state == "paused"]
        if paused:
            await self._pause(paused)
            results = [r for r in results if r.state != "paused"]
        parts = self._split(results, time.time())
        outcomes = [self._with_cost(result, parts) for result in results]
        told, ready = await self._tell(results, outcomes, owed)
        answers: dict[int, bool] = {}
        finished_ids = []
        to_publish: list[tuple[Outcome, FrozenTrial]] = []
        for result, outcome, frozen in zip(results, outcomes, told, strict=True):
            self._forget_task_of(result.number)
            self.inflight.pop(result.number, None)
            self.told.add(result.number)
            answers[result.number] = frozen is not None
            if frozen is None:
                continue
            self.spend.add_trial(frozen, self.spec.trial_timeout, outcome.cost)
            finished_ids.append(frozen._trial_id)
            if self.promotions is not None:
                complete = frozen.state == TrialState.COMPLETE and frozen.values
                self.promotions.told(result.number, frozen.values[0] if complete else None)
                self.paused_trials.pop(result.number, None)
            self._account(result, frozen, parts.get(result.number))
            with self.timings.measure("policies"):
                self.policies.after_tell(
                    HookContext(
                        self.spec,
                        result.number,
                        frozen.params,
                        plan=self.plan,
                        state=STATE_NAMES[frozen.state],
                        values=frozen.values,
                        duration=result.duration,
                        cost=outcome.cost,
                    )
                )
            to_publish.append((result, frozen))
        if ready is not None:
            self._hand_over(ready)
        await publish_told_many(self.bus, self.name, to_publish)
        if owed and results:
            numbers = [result.number for result in results]
            await self._timed("storage", self.store.settle_events, self.name, numbers)
        if finished_ids and (self.resumable or self.promotions is not None):
            await asyncio.to_thread(self._delete_checkpoints, finished_ids)
        self.wake.set()
        return [answers.get(number, True) for number in given]

    async def _tell(
        self, results: list[Outcome], outcomes: list[Outcome], owed: bool
    ) -> tuple[list[FrozenTrial | None], Ready | None]:
        """Tell `outcomes` in one durable write, with the loop's next ask when it can go in
        the same write (`_ask_with_tell`: one group commit and one call on the Optuna thread
        fewer); the trials so asked, if any, as a `Ready` whose task is yet to be counted."""
        ask = self._ask_with_tell(results, owed)
        if not ask:
            told = await self._timed("storage", self.store.tell_many, self.spec, outcomes, owed)
            return told, None
        # Counted before the call, as the loop's own ask does: an ask of the loop meanwhile
        # sees the budget as it will be.
        self.n_created += ask
        asked_at = time.perf_counter()
        self._telling += len(outcomes)
        try:
            done = await self.store.call(self.store.tell_and_ask, self.spec, outcomes, ask)
        except Exception as exc:
            # The tell failed (its result is retried, as any failed tell's) and whether the
            # ask is durable is not known for sure (a journal's cut-back may fail too): the
            # loop fails as on a failed ask of its own, and its restart counts the trials
            # from storage (dispatching one asked but never published). Until then the
            # count stays as reserved, so no ask of this loop goes past the budget.
            self.ready.append(Ready([], 0, asked_at, 0.0, exc))
            self.wake.set()
            raise
        finally:
            self._telling -= len(outcomes)
        self.timings.add("storage", done.tell_seconds)
        self.timings.add("sampler", done.ask_seconds)
        return done.told, Ready(done.asked, 0, asked_at, done.ask_seconds, done.ask_error)

    def _ask_with_tell(self, results: list[Outcome], owed: bool) -> int:
        """How many trials to ask in the durable write of these results' tell
        (`StudyStore.tell_and_ask`): one, when the results are one worker's result of an
        unbatched task and the loop, once it is told, would ask exactly one trial under the
        plan in force; else none (told alone, the loop asks as before).

        Between a tell and the next ask the loop may decide (`_fill`): a strategy decision
        due, the data ladder's verdict, the transfer's judging, the budget, a promotion, a
        pack's size. The next ask is taken with the tell only when none of them can change
        with this tell: no decision due at the next count of told trials nor running, no
        ladder verdict to come, no transfer judging, no compute budget (the trial and time
        limits do not move with a tell), no continued trials, no batching; and a slot this
        trial's task frees that no other study waits for (the global cap not reached, or
        this the only loop). The policies' `after_tell` (the batching average, the cache,
        the ladder's measurement) runs before the new trial's `before_dispatch`, as before;
        the sampler reads the storage, where the tell is applied before the ask.
        """
        if owed or len(results) != 1 or self.spec.objective is None:
            return 0
        if self.stopping or self.paused or self.recovering or self.ready:
            return 0
        if self.loop_task is None or self.loop_task.done() or self._deciding.locked():
            return 0
        number = results[0].number
        flight = self.inflight.get(number)
        if flight is None or self.tasks.get(flight.task) != {number} or number in self.told:
            return 0
        plan = self.plan
        if len(self.tasks) > plan.parallelism or plan.uses("batching"):
            return 0
        slots = self.running.slots
        if not slots.available(freed=1) or not (slots.available() or len(self.running.runs) == 1):
            return 0
        if self.promotions is not None or self.paused_trials or self._continuing():
            return 0
        if self.resumable is None and len(plan.steps_ladder) >= 2:
            return 0  # `_learn_resumable` has yet to ask the objective
        if self.strategy.due(
            len(self.told) + self._telling + 1
        ) is not None or not self.ladder.settled(plan):
            return 0
        if self.transfer.judging:
            return 0
        budget = self.budget
        if budget.cpu_seconds is not None or budget.full_evaluations is not None:
            return 0
        return 1 if self._budget_left(reserve=False) else 0

    def _with_cost(self, result: Outcome, parts: dict[int, dict[str, float]]) -> Outcome:
        """`result` with the cost to store on its trial: the worker's (a continued trial's
        tasks summed), the daemon's split of its time (`parts`), its task's cache use."""
        cost = self._merge_continued(result)
        flight = self.inflight.get(result.number)
        if cost is not None:
            cost.pop("time", None)  # the daemon's measure, never a worker's claim
        if cost is not None and result.number in parts:
            cost["time"] = {p: round(v, 6) for p, v in parts[result.number].items()}
        if cost is not None and flight is not None and flight.task_plan.get("cache"):
            cost.setdefault("cache", flight.task_plan["cache"])
        return replace(result, cost=cost)

    def _delete_checkpoints(self, trial_ids: list[int]) -> None:
        """Told trials need their checkpoints no more (a continued one's last task deleted
        its own; a pruned or failed one's is deleted here)."""
        for trial_id in trial_ids:
            self.checkpoints.delete(self.name, trial_id)

    def _split(self, results: list[Outcome], received_at: float) -> dict[int, dict[str, float]]:
        """The parts of each dispatched trial's time (`hpod.daemon.timeline`), by number.

        Results of one task (a pack's, answered in one message) are split together: a
        trial's pack wait is measured against the other trials of its task. Trials not in
        flight (told before, external, recovered after a restart) have no split."""
        by_task: dict[int, list[TrialTimes]] = {}
        for result in results:
            flight = self.inflight.get(result.number)
            if flight is None or flight.dispatched_at is None or result.started_at is None:
                continue  # a time-out's failure, say: no worker reported when it started
            by_task.setdefault(flight.task, []).append(
                TrialTimes(
                    result.number,
                    flight.dispatched_at,
                    result.started_at,
                    result.duration,
                    flight.daemon,
                )
            )
        parts: dict[int, dict[str, float]] = {}
        for members in by_task.values():
            parts.update(split_task(members, received_at))
        return parts

    def _account(
        self, result: Outcome, frozen: FrozenTrial, parts: dict[str, float] | None
    ) -> None:
        """Count a told trial in the metrics and in the study's time breakdown."""
        self.metrics.told(self.name, frozen)
        self.timings.trials += 1
        if result.duration is not None:
            self.timings.add("evaluation", result.duration)
            self.metrics.evaluation.labels(self.spec.objective or "external").observe(
                result.duration
            )
        if parts is None:
            return
        for part in ("queue_wait", "pack_wait", "transport"):
            self.timings.add(part, parts[part])
        if result.started_at is not None:
            self.metrics.queue_wait.observe(parts["queue_wait"])
        for part, seconds in parts.items():
            self.metrics.trial_time.labels(part).observe(seconds)

    # --- external evaluators -----------------------------------------------------------

    async def ask_external(self, request_id: str | None) -> AskedTrial:
        """A trial for an external evaluator; the same request id gets the same trial."""
        if request_id and request_id in self.external:
            return self.external[request_id]
        if not self.paused and not self.stopping and self._budget_left():
            await self._maybe_decide()  # it awaits: the checks below come after it
        if self.paused and not self.stopping:
            raise RequestRejected(
                "paused", "study", f"study {self.name!r} is paused: resume it to ask trials"
            )
        if self.stopping or not self._budget_left(reserve=False):
            raise RequestRejected(
                "budget_exhausted", "study", f"study {self.name!r} asks no more trials"
            )
        self.n_created += 1
        asked = await self._timed("sampler", self.store.ask, self.spec, True, request_id)
        self.external[request_id or f"trial-{asked.number}"] = asked
        return asked

    async def pause(self) -> None:
        """Dispatch nothing new until `resume`; trials in flight are still told."""
        self.paused = True
        await self.store.call(self.store.set_attr, self.name, STATE_ATTR, "paused")
        self.wake.set()

    async def resume(self) -> None:
        """Dispatch again, up to the budget."""
        self.paused = False
        await self.store.call(self.store.set_attr, self.name, STATE_ATTR, "running")
        self.wake.set()

    async def set_budget(self, budget: Budget) -> None:
        """Use `budget` from now on (stored, so a restart keeps it)."""
        self.budget = budget
        await self.store.call(
            self.store.set_attr, self.name, BUDGET_ATTR, budget.model_dump(mode="json")
        )
        self.wake.set()

    async def stop(self) -> None:
        """Ask no more trials; trials in flight are still told, then the loop ends."""
        self.stopping = True
        await self.store.call(self.store.set_attr, self.name, STATE_ATTR, "stopped")
        self.wake.set()

    async def _complete(self) -> None:
        state = "stopped" if self.stopping else "completed"
        async with self._deciding:
            await self.strategy.finish(self._view())
        await self.transfer.finish(state)
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
