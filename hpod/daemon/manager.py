"""The study manager: the one owner of the daemon's study-side parts, wired together.

It builds each part once and hands each only what it needs; the work is theirs:

- `slots`, `running`: the cap on worker tasks in flight (`daemon/slots.py`); the running
  loops (`daemon/running.py`).
- `declared`: the fidelity each objective declares (`daemon/declared.py`); the objective
  registry is the requests' (`workers/registry.py`).
- `modes_in_force`, `plans`: the modes and the default mode (`daemon/modes_in_force.py`); a
  study's plan under its mode, and its efficiency policies (`daemon/plans.py`).
- `cache`: the result cache the caching policy reads (`cache/results.py`).
- `observers`: the metrics, the resource monitor, the doctor (`daemon/observers.py`).
- `agent`, `policy`: the one strategy agent every loop asks
  (`policies/strategy/agent.py`); the requests about it (`daemon/policy_requests.py`).
- `supervisor`, `ticker`: start, restart or fail the loops (`daemon/supervisor.py`); the 1 s
  tick (`daemon/ticker.py`).
- `results`: worker results, told through the loops (`daemon/results.py`).
- `reports`: a study's status and the list of studies (`daemon/reports.py`).
- `requests`: every request about a study (`daemon/study_requests.py`).

The manager itself only builds a study's loop (`_new_run`, handed to the supervisor), starts
and stops the parts that run, and applies a reload of the settings.
"""

from __future__ import annotations

from hpod.cache import ResultCache
from hpod.config import Settings
from hpod.daemon.bus import Bus
from hpod.daemon.declared import DeclaredFidelities
from hpod.daemon.modes_in_force import ModesInForce
from hpod.daemon.observers import Observers
from hpod.daemon.plans import StudyPlans, policy_chain
from hpod.daemon.policy_requests import PolicyRequests
from hpod.daemon.reports import StudyReports
from hpod.daemon.results import WorkerResults
from hpod.daemon.running import RunningStudies
from hpod.daemon.slots import TaskSlots
from hpod.daemon.store import StudyStore
from hpod.daemon.studies import StudyRun
from hpod.daemon.study_requests import StudyRequests
from hpod.daemon.supervisor import LoopSupervisor
from hpod.daemon.ticker import Ticker
from hpod.modes import Mode
from hpod.policies.strategy.agent import StrategyAgent
from hpod.policies.strategy.catalog import load_strategies
from hpod.schema import StudySpec
from hpod.workers.registry import ObjectiveRegistry


class StudyManager:
    """Owns the parts of the daemon that run studies and answer requests (see the module)."""

    def __init__(self, settings: Settings, store: StudyStore, bus: Bus) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        #: The global cap on worker tasks in flight, and memory back-pressure.
        self.slots = TaskSlots(settings.max_inflight)
        #: The running study loops.
        self.running = RunningStudies(self.slots)
        #: The fidelity each objective declares, probed outside the daemon's process.
        self.declared = DeclaredFidelities(settings.objectives)
        #: The modes the daemon knows and its default mode (kept in <data_dir>).
        self.modes_in_force = ModesInForce(settings.data_dir)
        self.plans = StudyPlans(store, self.modes_in_force)
        self.cache = ResultCache(
            settings.result_cache_dir(), settings.cache_ttl_seconds, settings.cache_size_mb
        )
        self.observers = Observers(settings, store, self.slots, self.running)
        #: The one strategy agent every study's loop asks.
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
        self.policy = PolicyRequests(self.agent, bus)
        #: Worker results, matched against the trials in flight and told.
        self.results = WorkerResults(store, bus, self.observers.metrics, self.running)
        self.supervisor = LoopSupervisor(
            store, bus, self.running, self._new_run, lambda: settings.study_max_failures
        )
        self.ticker = Ticker(store, self.running)
        self.reports = StudyReports(store, self.running)
        self.requests = StudyRequests(
            settings,
            store,
            bus,
            registry=ObjectiveRegistry(settings.objectives),
            modes_in_force=self.modes_in_force,
            plans=self.plans,
            running=self.running,
            supervisor=self.supervisor,
            results=self.results,
            reports=self.reports,
            policy=self.policy,
            metrics=self.observers.metrics,
        )

    @property
    def runs(self) -> dict[str, StudyRun]:
        """Running study loops by name."""
        return self.running.runs

    async def _new_run(self, spec: StudySpec) -> StudyRun:
        """The loop of study `spec`, not yet started, under its plan in force."""
        if spec.objective is not None:
            self.declared.prefetch(spec.objective)
        return StudyRun(
            spec,
            self.store,
            self.bus,
            self.settings,
            self.running,
            policy_chain(self.cache),
            self.observers.metrics,
            self.observers.doctor.breakdown(spec.name),
            await self.plans.plan_of(spec),
            self.agent,
            self.declared,
        )

    async def start(self) -> None:
        """Start the resource monitor and the ticker; resume every study that was running at
        the last stop (one that cannot be resumed never stops the start: see
        `LoopSupervisor.resume_all`)."""
        self.observers.monitor.start()
        self.ticker.start()
        await self.supervisor.resume_all()

    async def reload(self, modes: dict[str, Mode]) -> None:
        """Apply a reload (SIGHUP) of the settings already changed in place: the new modes
        (every running study's plan is resolved again, each keeping its strategy), a fresh
        objective registry over `objectives`, and the new `max_inflight`."""
        self.modes_in_force.modes = modes
        self.requests.registry = ObjectiveRegistry(self.settings.objectives)
        self.slots.max_inflight = self.settings.max_inflight
        await self.plans.replan(self.runs.values())

    async def shutdown(self) -> None:
        """Cancel the study loops (their state is in storage and resumes on the next start)
        and pending restarts, stop the ticker and the resource monitor."""
        await self.supervisor.shutdown()
        await self.ticker.stop()
        await self.observers.monitor.stop()
        await self.declared.close()
        self.agent.close()
