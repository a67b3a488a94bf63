"""Every request about a study, whatever channel it came on: create, stop, pause, resume,
budget, strategy, mode, and an external evaluator's ask, tell and enqueue.

`hpod.daemon.handler.RequestHandler` validates a request and calls one method here; a refusal
is a `RequestRejected` naming the field. Each answer is the study's status
(`hpod.daemon.reports`), or what the request asked for. The loops themselves are started
by the `hpod.daemon.supervisor.LoopSupervisor` and changed only through their own methods.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hpod.config import Settings
from hpod.daemon.bus import Bus
from hpod.daemon.metrics import Metrics
from hpod.daemon.modes_in_force import ModesInForce
from hpod.daemon.plans import StudyPlans
from hpod.daemon.policy_requests import PolicyRequests
from hpod.daemon.reports import StudyReports
from hpod.daemon.results import WorkerResults
from hpod.daemon.running import RunningStudies
from hpod.daemon.store import Outcome, StudyStore
from hpod.daemon.strategy import check_setting
from hpod.daemon.studies import StudyRun
from hpod.daemon.supervisor import LoopSupervisor
from hpod.daemon.transfer import check_sources
from hpod.engine import MODE_ATTR, STATE_ATTR, check_params
from hpod.errors import RequestRejected
from hpod.schema import (
    Budget,
    ModeSet,
    StudySpec,
    TrialTell,
    check_compute_budget,
    check_finite,
)
from hpod.workers.registry import ObjectiveRegistry


class StudyRequests:
    """Carries out validated requests about studies (see the module)."""

    def __init__(
        self,
        settings: Settings,
        store: StudyStore,
        bus: Bus,
        *,
        registry: ObjectiveRegistry,
        modes_in_force: ModesInForce,
        plans: StudyPlans,
        running: RunningStudies,
        supervisor: LoopSupervisor,
        results: WorkerResults,
        reports: StudyReports,
        policy: PolicyRequests,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        #: The objectives a study may name (replaced when SIGHUP reloads `objectives`).
        self.registry = registry
        self.modes_in_force = modes_in_force
        self.plans = plans
        self.running = running
        self.supervisor = supervisor
        self.results = results
        self.reports = reports
        self.policy = policy
        self.metrics = metrics

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
        mode = spec.mode or self.modes_in_force.default
        self.modes_in_force.check(mode, "study.mode")
        check_setting(spec.strategy, spec, self.policy.strategy_names(), "study.strategy")
        spec = spec.model_copy(update={"mode": mode})
        await self._check_study_limit(spec.name)
        await self.store.call(check_sources, self.store, spec)
        created = await self.store.call(self.store.create, spec)
        if not created:
            created = await self._stored_but_not_started(spec.name)
        if created:
            # Claimed before the next await: a concurrent create of it does not start it too.
            self.supervisor.claim(spec.name)
            await self.bus.event("study.created", spec.name, spec=spec.model_dump(mode="json"))
            await self.supervisor.start_run(spec)
        return {"created": created, **await self.reports.status(spec.name)}

    async def _stored_but_not_started(self, name: str) -> bool:
        """Whether study `name` is stored as running with no loop here, none failed and
        waiting to restart: its create's last write (the spec) landed though the create
        raised (a database's COMMIT whose answer a broken connection lost), so neither the
        loop nor `study.created` followed. The create's retry finishes it."""
        if self.supervisor.supervises(name):
            return False
        attrs = await self.store.call(self.store.study_attrs, name)
        started = self.supervisor.supervises(name)  # meanwhile
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
        run = self.running.runs.get(name)
        if run is not None:
            await run.stop()
        else:
            await self.store.call(self.store.spec, name)
            attrs = await self.store.call(self.store.study_attrs, name)
            if attrs.get(STATE_ATTR) == "running":
                await self.store.call(self.store.set_attr, name, STATE_ATTR, "stopped")
        return await self.reports.status(name)

    async def pause(self, name: str) -> dict[str, Any]:
        """Pause study `name`: nothing new is dispatched until it is resumed."""
        run = await self._live(name)
        await run.pause()
        await self.bus.event("study.paused", name)
        return await self.reports.status(name)

    async def resume(self, name: str) -> dict[str, Any]:
        """Resume a paused study."""
        run = await self._live(name)
        await run.resume()
        await self.bus.event("study.resumed", name)
        return await self.reports.status(name)

    async def set_budget(self, name: str, budget: Budget) -> dict[str, Any]:
        """Change a running (or paused) study's budget live."""
        run = await self._live(name)
        check_compute_budget(budget, run.spec.objective, "budget")
        await run.set_budget(budget)
        await self.bus.event("study.budget_changed", name, budget=budget.model_dump(mode="json"))
        return await self.reports.status(name)

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
            run = self.running.runs.get(request.study)
            if run is not None:
                await run.set_mode_plan(await self.plans.plan_of(run.spec))
        self.metrics.mode_changes.labels(request.mode).inc()
        await self.bus.event("mode.changed", request.study, mode=request.mode)
        return {"study": request.study, "mode": request.mode}

    async def set_strategy(self, name: str, setting: str) -> dict[str, Any]:
        """Switch a running study's strategy setting live ('auto', 'mode' or a strategy's
        name); the new setting decides at once, recorded as a decision of the study."""
        run = await self._live(name)
        check_setting(setting, run.spec, self.policy.strategy_names(), "strategy")
        await run.switch_strategy(setting)
        return await self.reports.status(name)

    async def _live(self, name: str) -> StudyRun:
        """The loop of a study that is running or paused, not one that is stopping."""
        run = await self._running(name)
        if run.stopping:
            raise RequestRejected(
                "not_running", "study", f"study {name!r} is stopping: it asks no more trials"
            )
        return run

    async def _running(self, name: str) -> StudyRun:
        run = self.running.runs.get(name)
        if run is None:
            await self.store.call(self.store.spec, name)  # raises not_found for unknown names
            raise RequestRejected("not_running", "study", f"study {name!r} is not running")
        return run
