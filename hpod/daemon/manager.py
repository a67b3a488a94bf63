"""The study manager: every operation a request can ask for, whatever channel it came on."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import ValidationError

from hpod.backoff import Backoff
from hpod.cache import ResultCache
from hpod.config import Settings
from hpod.daemon.budget import Spend
from hpod.daemon.bus import Bus
from hpod.daemon.declared import DeclaredFidelities
from hpod.daemon.doctor import Doctor
from hpod.daemon.metrics import Metrics
from hpod.daemon.modes_in_force import ModesInForce
from hpod.daemon.monitor import Monitor
from hpod.daemon.results import WorkerResults
from hpod.daemon.slots import TaskSlots
from hpod.daemon.store import Outcome, StudyStore, is_storage_fault
from hpod.daemon.strategy import check_setting, strategy_status
from hpod.daemon.studies import RunningStudies, StudyRun
from hpod.daemon.transfer import check_sources, transfer_status
from hpod.engine import MODE_ATTR, STATE_ATTR, check_params
from hpod.errors import RequestRejected
from hpod.modes import Mode
from hpod.policies import PolicyChain
from hpod.policies.batching import BatchingPolicy
from hpod.policies.caching import CachePolicy
from hpod.policies.compose import resolve_plan
from hpod.policies.plan import Plan
from hpod.policies.pruning import PruningPolicy
from hpod.policies.strategy.agent import StrategyAgent
from hpod.policies.strategy.catalog import load_strategies
from hpod.policies.subsampling import SubsamplingPolicy
from hpod.schema import (
    Budget,
    ModeSet,
    StudySpec,
    TrialTell,
    check_compute_budget,
    check_finite,
)
from hpod.workers.registry import ObjectiveRegistry

log = structlog.get_logger("hpod.manager")

#: A loop that ran this long before failing starts its count of failures afresh.
HEALTHY_RUN_SECONDS = 300.0
#: Restarts of a failed loop wait 0.5 s, 1 s, 2 s, … up to 30 s (with jitter).
RESTART_INITIAL_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0


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


class StudyManager:
    """Owns the running study loops and carries out validated requests.

    It also owns what observes them: the metrics registry, the resource monitor (started
    and stopped with the manager) and the per-study time breakdowns; and the one strategy
    agent every study's loop asks (weights and replay buffer in ``<data_dir>/policy``).
    """

    def __init__(self, settings: Settings, store: StudyStore, bus: Bus) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        #: The global cap on worker tasks in flight, and memory back-pressure.
        self.slots = TaskSlots(settings.max_inflight)
        #: The running study loops.
        self.running = RunningStudies(self.slots)
        self.registry = ObjectiveRegistry(settings.objectives)
        #: The fidelity each objective declares, probed outside the daemon's process.
        self.declared = DeclaredFidelities(settings.objectives)
        #: The modes the daemon knows and its default mode (kept in <data_dir>).
        self.modes_in_force = ModesInForce(settings.data_dir)
        self.cache = ResultCache(
            settings.result_cache_dir(), settings.cache_ttl_seconds, settings.cache_size_mb
        )
        self.metrics = Metrics(settings.max_finished_study_series)
        self.metrics.watch_inflight(
            lambda: self.slots.inflight,
            lambda: {name: len(run.inflight) for name, run in self.runs.items()},
        )
        self.monitor = Monitor(settings, self.slots, self.metrics)
        #: Worker results, matched against the trials in flight and told.
        self.results = WorkerResults(store, bus, self.metrics, self.running)
        self.doctor = Doctor(settings.max_finished_study_series, lambda name: name in self.runs)
        self.agent = StrategyAgent(
            settings.data_dir / "policy",
            load_strategies(),
            learn_every=settings.policy_learn_every,
            learn=settings.policy_learned,
            learned=settings.policy_learned,
            check_tasks=settings.policy_check_tasks,
            check_seeds=settings.policy_check_seeds,
            learn_epochs=settings.policy_learn_epochs,
        )
        #: Failures of study loops by study name (see `_on_failure`).
        self._supervision: dict[str, Supervision] = {}
        #: Restarts and failure markings scheduled after a loop failed.
        self._pending: set[asyncio.Task[None]] = set()
        self._closing = False
        self._ticker: asyncio.Task[None] | None = None

    @property
    def runs(self) -> dict[str, StudyRun]:
        """Running study loops by name."""
        return self.running.runs

    @property
    def modes(self) -> dict[str, Mode]:
        """The modes the daemon knows, by name."""
        return self.modes_in_force.modes

    @property
    def default_mode(self) -> str:
        """The mode of a study created without one."""
        return self.modes_in_force.default

    async def start(self) -> None:
        """Start the resource monitor; resume every study that was running at the last stop.

        A stored study that cannot be resumed never stops the start: one whose spec no longer
        validates is marked failed at once, one whose recovery fails is handled as a failed
        loop (retried, then marked failed).
        """
        self.monitor.start()
        self._ticker = asyncio.create_task(self._tick(), name="ticker")
        specs, invalid = await self.store.call(self.store.running_studies)
        for name, reason in invalid.items():
            await self._fail(name, reason)
        for spec in specs:
            await self._start_run(spec)

    async def _tick(self) -> None:
        """Every second: watch for a stall of the daemon (`RunningStudies.check_stall`); every five,
        record how much of the journal is written (`StudyStore.mark`) and, while storage is
        failing, try it (`StudyStore.probe`), so /health turns ok again without a write."""
        n = 0
        self.running.last_tick = time.monotonic()
        self.running.ticking = True
        try:
            while True:
                self.running.check_stall()
                if n % 5 == 0:
                    try:
                        await self.store.call(self.store.mark)
                        await self.store.call(self.store.probe)
                    except Exception as exc:  # safeguards only: never stop the daemon
                        log.warning("storage.tick_failed", error=repr(exc))
                n += 1
                await asyncio.sleep(1.0)
        finally:
            self.running.ticking = False

    def policy_chain(self) -> PolicyChain:
        """A study's efficiency policies, in order: the cache first (a hit needs nothing
        else), then the data ladder and the pruners it carries, then batching."""
        return PolicyChain(
            [CachePolicy(self.cache), SubsamplingPolicy(), PruningPolicy(), BatchingPolicy()]
        )

    async def plan_of(self, spec: StudySpec) -> Plan:
        """The study's plan under its mode in force (a live switch is stored on the study)."""
        attrs = await self.store.call(self.store.study_attrs, spec.name)
        mode, knobs = self.modes_in_force.in_force(spec.name, attrs.get(MODE_ATTR) or spec.mode)
        return resolve_plan(spec, mode, knobs)

    async def replan(self) -> None:
        """Re-resolve every running study's plan (after a mode switch or a modes reload); each
        keeps its strategy."""
        for run in list(self.runs.values()):
            await run.set_mode_plan(await self.plan_of(run.spec))

    async def _start_run(self, spec: StudySpec) -> None:
        """Start the loop of study `spec`; if its set-up or recovery fails, the study pays
        (`_on_failure`: retried, or marked failed), never the caller or the daemon."""
        self._supervision.setdefault(spec.name, Supervision()).started_at = time.monotonic()
        run: StudyRun | None = None
        try:
            if spec.objective is not None:
                self.declared.prefetch(spec.objective)
            run = StudyRun(
                spec,
                self.store,
                self.bus,
                self.settings,
                self.running,
                self.policy_chain(),
                self.metrics,
                self.doctor.breakdown(spec.name),
                await self.plan_of(spec),
                self.agent,
                self.declared,
            )
            self.runs[spec.name] = run
            await run.start()
        except Exception as exc:
            if run is not None:
                self.running.remove(spec.name, run)
            self._on_failure(spec, exc)
            return
        assert run.task is not None
        run.task.add_done_callback(lambda task: self._on_run_done(spec, run, task))

    def _on_run_done(self, spec: StudySpec, run: StudyRun, task: asyncio.Task[None]) -> None:
        """Forget a finished loop (its in-flight tasks stop counting); a loop that failed is
        restarted or its study marked failed (`_on_failure`)."""
        self.running.remove(spec.name, run)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._supervision.pop(spec.name, None)
            self.store_forget(spec.name)
            return
        self._on_failure(spec, exc)

    def store_forget(self, name: str) -> None:
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
        if not transient and count >= self.settings.study_max_failures:
            self._schedule(self._fail(spec.name, error))
            return
        delay = supervision.backoff.next_delay()
        self._schedule(self._restart(spec, delay))

    def _schedule(self, coro: Any) -> None:
        """Run `coro` as a task the manager keeps (cancelled at shutdown)."""
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
        if spec.name not in self.runs and attrs.get(STATE_ATTR) in ("running", "paused"):
            log.info("study.restart", study=spec.name)
            await self._start_run(spec)

    async def _fail(self, name: str, reason: str) -> None:
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
            self._schedule(self._fail(name, reason))
            return
        self._supervision.pop(name, None)
        log.error("study.failed", study=name, reason=reason, trials_failed=failed)
        try:
            await self.bus.event("study.failed", name, reason=reason, trials_failed=failed)
        except Exception as exc:  # the state is stored: `hpod status` shows it regardless
            log.warning("study.failed_event_lost", study=name, error=repr(exc))

    async def shutdown(self) -> None:
        """Cancel the study loops (their state is in storage and resumes on the next start),
        pending restarts, and stop the resource monitor."""
        self._closing = True
        tasks = [r.task for r in self.runs.values() if r.task is not None]
        tasks += [*self._pending]
        if self._ticker is not None:
            tasks.append(self._ticker)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.store.call(self.store.mark)
        except Exception as exc:
            log.warning("storage.mark_failed", error=repr(exc))
        await self.monitor.stop()
        await self.declared.close()
        self.agent.close()

    # --- requests ----------------------------------------------------------------------

    async def create(self, spec: StudySpec) -> dict[str, Any]:
        """Create and start a study; the same request again changes nothing."""
        if spec.objective is not None and spec.objective not in self.registry:
            known = ", ".join(self.registry.names())
            raise RequestRejected(
                "unknown_objective",
                "study.objective",
                f"unknown objective {spec.objective!r} (registered: {known})",
            )
        if spec.objective is not None:
            # By the objective's own declared schema (loading it may import a library: off
            # the event loop); `study.objective_kwargs.<key>` names what is refused.
            await asyncio.to_thread(
                self.registry.check_kwargs, spec.objective, spec.objective_kwargs
            )
        mode = spec.mode or self.default_mode
        self.modes_in_force.check(mode, "study.mode")
        check_setting(spec.strategy, spec, self._strategy_names(), "study.strategy")
        spec = spec.model_copy(update={"mode": mode})
        await self._check_study_limit(spec.name)
        await self.store.call(check_sources, self.store, spec)
        created = await self.store.call(self.store.create, spec)
        if not created:
            created = await self._stored_but_not_started(spec.name)
        if created:
            # Claimed before the next await: a concurrent create of it does not start it too.
            self._supervision.setdefault(spec.name, Supervision())
            await self.bus.event("study.created", spec.name, spec=spec.model_dump(mode="json"))
            await self._start_run(spec)
        return {"created": created, **await self.status(spec.name)}

    async def _stored_but_not_started(self, name: str) -> bool:
        """Whether study `name` is stored as running with no loop here, none failed and
        waiting to restart: its create's last write (the spec) landed though the create
        raised (a database's COMMIT whose answer a broken connection lost), so neither the
        loop nor `study.created` followed. The create's retry finishes it."""
        if name in self.runs or name in self._supervision:
            return False
        attrs = await self.store.call(self.store.study_attrs, name)
        started = name in self.runs or name in self._supervision  # meanwhile
        return not started and attrs.get(STATE_ATTR) == "running"

    async def _check_study_limit(self, name: str) -> None:
        """Refuse a new study beyond `max_studies` (a repeated create of one is answered)."""
        if await self.store.call(self.store.exists, name):
            return
        count = await self.store.call(self.store.count_studies)
        if count >= self.settings.max_studies:
            raise RequestRejected(
                "too_many_studies",
                "study.name",
                f"the storage holds {count} studies, the limit (max_studies) is "
                f"{self.settings.max_studies}: delete old studies or raise the limit",
            )

    async def stop(self, name: str) -> dict[str, Any]:
        """Stop asking new trials for study `name`."""
        run = self.runs.get(name)
        if run is not None:
            await run.stop()
        else:
            await self.store.call(self.store.spec, name)
            attrs = await self.store.call(self.store.study_attrs, name)
            if attrs.get(STATE_ATTR) == "running":
                await self.store.call(self.store.set_attr, name, STATE_ATTR, "stopped")
        return await self.status(name)

    async def pause(self, name: str) -> dict[str, Any]:
        """Pause study `name`: nothing new is dispatched until it is resumed."""
        run = await self._live(name)
        await run.pause()
        await self.bus.event("study.paused", name)
        return await self.status(name)

    async def resume(self, name: str) -> dict[str, Any]:
        """Resume a paused study."""
        run = await self._live(name)
        await run.resume()
        await self.bus.event("study.resumed", name)
        return await self.status(name)

    async def set_budget(self, name: str, budget: Budget) -> dict[str, Any]:
        """Change a running (or paused) study's budget live."""
        run = await self._live(name)
        check_compute_budget(budget, run.spec.objective, "budget")
        await run.set_budget(budget)
        await self.bus.event("study.budget_changed", name, budget=budget.model_dump(mode="json"))
        return await self.status(name)

    async def ask(self, name: str, request_id: str | None) -> dict[str, Any]:
        """A trial for an external evaluator."""
        run = await self._running(name)
        asked = await run.ask_external(request_id)
        return {"study": name, "trial": asked.number, "params": asked.params}

    async def tell(self, request: TrialTell) -> dict[str, Any]:
        """An external evaluator's result; a repeated tell is answered, not applied twice."""
        spec = await self.store.call(self.store.spec, request.study)
        if request.values is not None:
            check_finite(request.values)
            if len(request.values) != len(spec.directions):
                raise RequestRejected(
                    "invalid",
                    "values",
                    f"{len(request.values)} values given, the study has "
                    f"{len(spec.directions)} direction(s)",
                )
        frozen = await self.store.call(self.store.trial, spec, request.trial)
        if frozen.user_attrs.get("hpod:external") is not True:
            raise RequestRejected(
                "invalid",
                "trial",
                f"trial {request.trial} is evaluated by hpod's workers, not told from outside",
            )
        told = await self.results.tell(spec, Outcome(request.trial, request.state, request.values))
        return {"study": request.study, "trial": request.trial, "already_told": not told}

    async def enqueue(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Queue a proposed configuration: it is the next trial the study evaluates."""
        spec = await self.store.call(self.store.spec, name)
        check_params(params, spec.space)
        run = await self._running(name)
        study = await self.store.call(self.store.open, spec)
        await self.store.call(lambda: study.enqueue_trial(params, skip_if_exists=True))
        run.wake.set()
        return {"study": name, "enqueued": params}

    async def set_mode(self, request: ModeSet) -> dict[str, Any]:
        """Switch a study's mode, or the default mode, live."""
        self.modes_in_force.check(request.mode, "mode")
        if request.study is None:
            self.modes_in_force.set_default(request.mode)
        else:
            await self.store.call(self.store.spec, request.study)
            await self.store.call(self.store.set_attr, request.study, MODE_ATTR, request.mode)
            run = self.runs.get(request.study)
            if run is not None:
                await run.set_mode_plan(await self.plan_of(run.spec))
        self.metrics.mode_changes.labels(request.mode).inc()
        await self.bus.event("mode.changed", request.study, mode=request.mode)
        return {"study": request.study, "mode": request.mode}

    async def set_strategy(self, name: str, setting: str) -> dict[str, Any]:
        """Switch a running study's strategy setting live ('auto', 'mode' or a strategy's
        name); the new setting decides at once, recorded as a decision of the study."""
        run = await self._live(name)
        check_setting(setting, run.spec, self._strategy_names(), "strategy")
        await run.switch_strategy(setting)
        return await self.status(name)

    def _strategy_names(self) -> list[str]:
        return [strategy.name for strategy in self.agent.strategies]

    # --- the strategy policy -----------------------------------------------------------

    async def policy_status(self) -> dict[str, Any]:
        """The strategy agent: weights in force, fallback, experiences, learning, recent
        decisions; and the strategies it chooses among."""
        status = await asyncio.to_thread(self.agent.status)
        return {**status, "strategies": self._strategy_names()}

    async def policy_reset(self) -> dict[str, Any]:
        """Forget the locally learnt weights and replay buffer (back to the shipped policy)."""
        status = await asyncio.to_thread(self.agent.reset)
        log.info("policy.reset")
        await self.bus.event("policy.reset", None)
        return status

    async def policy_export(self) -> dict[str, Any]:
        """The agent's weights and replay buffer as one JSON bundle."""
        return await asyncio.to_thread(self.agent.export)

    async def policy_import(self, bundle: Any) -> dict[str, Any]:
        """Load a bundle exported by `policy_export` (here or on another daemon); a bad one is
        refused with the field named, and the policy in force stays."""
        if not isinstance(bundle, dict):
            raise RequestRejected("invalid", "", "a policy bundle must be a JSON object")
        status = await asyncio.to_thread(self.agent.import_bundle, bundle)
        log.info("policy.imported", format=bundle.get("format"))
        await self.bus.event("policy.imported", None)
        return status

    async def _live(self, name: str) -> StudyRun:
        """The loop of a study that is running or paused, not one that is stopping."""
        run = await self._running(name)
        if run.stopping:
            raise RequestRejected(
                "not_running", "study", f"study {name!r} is stopping: it asks no more trials"
            )
        return run

    async def _running(self, name: str) -> StudyRun:
        run = self.runs.get(name)
        if run is None:
            await self.store.call(self.store.spec, name)  # raises not_found for unknown names
            raise RequestRejected("not_running", "study", f"study {name!r} is not running")
        return run

    # --- results and status ------------------------------------------------------------

    async def on_worker_result(
        self, body: bytes | dict[str, Any], redelivered: bool = False
    ) -> None:
        """A worker's result message (one trial, or a pack's): see `hpod.daemon.results`."""
        await self.results.on_message(body, redelivered)

    async def status(self, name: str) -> dict[str, Any]:
        """Counts, best and live state of study `name`."""
        try:
            spec = await self.store.call(self.store.spec, name)
        except ValidationError:  # stored by an older daemon: marked failed, shown as such
            return {**await self.store.call(self.store.raw_summary, name), "running": False}
        summary = await self.store.call(self.store.summary, spec)
        run = self.runs.get(name)
        summary["in_flight"] = len(run.inflight) if run else 0
        # Continued trials waiting at a rung for a promotion (docs/policies.md#continuation).
        summary["paused_trials"] = len(run.paused_trials) if run else 0
        summary["running"] = run is not None
        if run is not None:
            summary["budget"] = run.budget.model_dump(mode="json")
            summary["spent"] = run.spent()
        else:
            summary["spent"] = await self._spent(spec)
        summary["efficiency"] = await self.store.call(self.store.efficiency, spec)
        attrs = await self.store.call(self.store.study_attrs, name)
        summary["strategy"] = strategy_status(attrs, spec)
        if run is not None:
            summary["strategy"].update(run.strategy_status())
        summary["transfer"] = transfer_status(attrs, spec)
        if run is not None:
            summary["transfer"].update(run.transfer.status())
        if run is not None:
            summary["mode"] = run.plan.mode
            summary["plan"] = {
                "sampler": run.plan.sampler,
                "pruner": run.plan.pruner,
                "ladder": list(run.plan.ladder),
                "policies": sorted(run.plan.policies),
                "parallelism": run.plan.parallelism,
                "pack": run.next_pack_size(),
                "policies_report": run.policies.describe(),
            }
        return summary

    async def _spent(self, spec: StudySpec) -> dict[str, Any]:
        """What a study whose loop is not running spent, counted from its stored trials
        as its loop would (`hpod.daemon.budget`); no `seconds`: it no longer runs."""
        trials = await self.store.call(self.store.trials, spec, None)
        spend = Spend.of_trials(trials, spec.trial_timeout)
        return {"trials": len(trials), "seconds": None, **spend.report()}

    async def list(self) -> list[dict[str, Any]]:
        """A summary line per study."""
        return await self.store.call(self.store.list_studies)

    # --- observation -------------------------------------------------------------------

    async def doctor_study(self, name: str) -> dict[str, Any]:
        """Where study `name`'s time went, and its bottleneck."""
        await self.store.call(self.store.spec, name)  # raises not_found for unknown names
        return {**self.doctor.report(name), "running": name in self.runs}

    def doctor_all(self) -> dict[str, Any]:
        """Every study's breakdown, the process resources and the back-pressure state."""
        return {"studies": self.doctor.reports(), "resources": self.monitor.status()}

    async def workers(self) -> dict[str, Any]:
        """The live workers, as the broker in force can tell."""
        return await self.monitor.workers()
