"""Transfer across studies inside a study's loop: warm start, agreement, memory.

The pure parts live in `hpod.transfer`; this module drives them from a running study (see
docs/transfer.md):

- **At the first start** of a new study whose spec allows it (`StudySpec.transfer`), the
  memories of past studies are ranked by similarity, the best configurations of the chosen
  ones mapped into the new space (at most the mode's `transfer_share` of the trial budget),
  and the first (`START_TRANSFERS`: the best of the most similar source) enqueued as a
  waiting trial, asked before anything the sampler proposes; the rest is held. The plan is
  stored first (``hpod:transfer``), so a restart never plans again: it only finishes
  enqueueing what was planned. At every start the surfaces of
  the sources in use are given to the study's TPE sampler as a prior (`hpod.transfer.prior`,
  through `StudyStore.wrap_sampler`): never stored, faded by the study's own trials.
- **Before each ask** (once new trials were told), each source still in use is judged
  against the study's own complete trials (`hpod.transfer.agreement`), never the
  transferred ones (a source's best configurations agree with it by construction). A
  source whose correlation is below 0 is paused (out of the prior, its held configurations
  kept back) until it is back at 0 or above; one that disagrees (below a bound that depends
  on the number of trials) stops being used: its waiting trials are dropped (never run:
  `hpod.transfer.store.drop_waiting`) and its held ones never enqueued. The held configurations of a
  source are enqueued (within the budget left) only once it supports: `MIN_PAIRS` own
  trials or more, correlation above a positive bound. So an unrelated past study costs the
  study one trial, and a fifth of the time (when its correlation passes the bound by
  chance) its share. Verdicts are followed for the first `JUDGE_LIMIT` own complete trials.
- **At the end** (completed; or stopped with at least `MIN_STOPPED_TRIALS` complete trials)
  the study's memory record is written on it (``hpod:memory``) for later studies.

Transferred trials are ordinary trials: they count in the budget once asked, and the sampler
learns from their results like from any other. Every Optuna call runs on the store's thread.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from hpod.daemon.store import is_storage_fault
from hpod.errors import RequestRejected
from hpod.journal import storage_group
from hpod.policies import PolicyChain
from hpod.policies.caching import CachePolicy
from hpod.policies.plan import Plan
from hpod.schema import Budget, StudySpec
from hpod.transfer.agreement import MIN_PAIRS, judge, predict_ranks
from hpod.transfer.mapping import (
    Transferred,
    config_from_json,
    config_json,
    plan_transfer,
    stages,
    transfer_count,
)
from hpod.transfer.memory import StudyMemory, build_memory, default_fingerprint
from hpod.transfer.prior import PriorSampler, own_complete, prior_points, prior_trials, wraps
from hpod.transfer.similarity import Target, rank_sources
from hpod.transfer.store import (
    TRANSFER_ATTR,
    TRANSFERRED_ATTR,
    complete_trials,
    drop_waiting,
    enqueue,
    load_memories,
    load_memories_of,
    reported_version,
    write_memory,
)

if TYPE_CHECKING:
    from hpod.daemon.store import StudyStore

log = structlog.get_logger("hpod.transfer")

#: Complete trials the agreement check follows; the verdicts after them stand.
JUDGE_LIMIT = 100
#: A stopped study leaves a memory only with at least this many complete trials.
MIN_STOPPED_TRIALS = MIN_PAIRS
NOT_COMPARABLE = "not comparable: another objective, other directions or no shared parameter"


def check_sources(store: StudyStore, spec: StudySpec) -> None:
    """Refuse (naming ``study.transfer``) a new study that names a past study the storage
    does not hold. A repeated create of an existing study is not checked again. Runs on the
    Optuna thread."""
    if not isinstance(spec.transfer, list) or store.exists(spec.name):
        return
    missing = [name for name in spec.transfer if not store.exists(name)]
    if missing:
        raise RequestRejected(
            "invalid",
            "study.transfer",
            f"no study named {', '.join(repr(m) for m in missing)} to learn from",
        )


def transfer_status(attrs: dict[str, Any], spec: StudySpec) -> dict[str, Any]:
    """What a study took from past studies, for its status, from its stored attributes."""
    record = attrs.get(TRANSFER_ATTR)
    status: dict[str, Any] = {
        "setting": spec.transfer,
        "share": None,
        "limit": 0,
        "transferred": 0,
        "held": 0,
        "dropped": 0,
        "sources": [],
        "skipped": [],
        "reason": None,
    }
    if not isinstance(record, dict):
        if spec.transfer == "off":
            status["reason"] = "transfer off: the study starts cold"
        return status
    sources = [dict(s) for s in record.get("sources") or [] if isinstance(s, dict)]
    status.update(
        share=record.get("share"),
        limit=record.get("limit", 0),
        transferred=sum(int(s.get("transferred", 0)) for s in sources),
        held=len(record.get("held") or []) + len(record.get("pending") or []),
        dropped=sum(int(s.get("dropped", 0)) for s in sources),
        sources=sources,
        skipped=list(record.get("skipped") or []),
        reason=record.get("reason"),
    )
    return status


class Events(Protocol):
    """Where the driver publishes `study.transfer` (the daemon's `Bus`)."""

    async def event(self, event_type: str, study: str | None, **data: Any) -> None:
        """Publish one event."""


class StudyLoop(Protocol):
    """What the driver reads of a study's loop (`hpod.daemon.studies.StudyRun`; a benchmark
    or a test may drive it with a stand-in). Read only."""

    @property
    def name(self) -> str:
        """The study's name."""

    @property
    def spec(self) -> StudySpec:
        """The study's spec."""

    @property
    def store(self) -> StudyStore:
        """The daemon's store (its Optuna thread)."""

    @property
    def bus(self) -> Events:
        """Where events go."""

    @property
    def mode_plan(self) -> Plan:
        """The plan of the study's mode: its `transfer_share` and `transfer_prior`."""

    @property
    def budget(self) -> Budget:
        """The budget in force."""

    @property
    def told(self) -> set[int]:
        """Numbers of the trials told so far."""

    @property
    def n_created(self) -> int:
        """Trials asked so far (counted in the budget)."""

    @property
    def wake(self) -> asyncio.Event:
        """Set to let the loop look again (after new trials were enqueued)."""

    @property
    def policies(self) -> PolicyChain:
        """The study's efficiency policies (the cache knows the objective's version)."""


class TransferDriver:
    """Transfer for one study's loop (see the module)."""

    def __init__(self, run: StudyLoop) -> None:
        self.run = run
        #: The stored record (``hpod:transfer``); None: this study takes nothing.
        self.record: dict[str, Any] | None = None
        #: Memories of the sources still in use, by study name.
        self.memories: dict[str, StudyMemory] = {}
        #: Past ranks predicted for the new study's complete trials, by source and trial.
        self.predicted: dict[str, dict[int, float]] = {}
        #: Whether verdicts are still followed (sources in use, fewer than JUDGE_LIMIT seen).
        self.judging = False
        self._told_seen = -1

    @property
    def store(self) -> StudyStore:
        """The run's store."""
        return self.run.store

    @property
    def spec(self) -> StudySpec:
        """The run's spec."""
        return self.run.spec

    # --- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Plan and enqueue the transfer of a new study, or resume the stored plan."""
        if self.spec.transfer == "off" or self.spec.objective is None:
            return
        version = self._objective_version()
        planned = await self.store.call(self._start, version)
        if self.record is None:
            return
        if planned and (self.record["sources"] or self.record["skipped"]):
            sources = [s["study"] for s in self.record["sources"]]
            log.info(
                "study.transfer",
                study=self.run.name,
                change="planned",
                sources=sources,
                transferred=sum(s["transferred"] for s in self.record["sources"]),
                held=len(self.record["held"]),
            )
            await self._publish("planned")

    def _objective_version(self) -> str | None:
        """The objective version the workers last reported (the result cache knows it)."""
        assert self.spec.objective is not None
        for policy in self.run.policies.policies:
            if isinstance(policy, CachePolicy):
                try:
                    return policy.cache.objective_version(self.spec.objective)
                except Exception:  # a cache problem only costs the version's precision
                    return None
        return None

    def _start(self, version: str | None) -> bool:
        """On the Optuna thread: plan (first start only) and enqueue the first stage; whether
        the plan was made now."""
        store, spec = self.store, self.spec
        record = store.study_attrs(spec.name).get(TRANSFER_ATTR)
        planned = False
        if not isinstance(record, dict):
            if store.trials(spec, None):
                return False  # the study ran before transfer existed: it stays as it was
            record = self._plan(version)
            store.set_attr(spec.name, TRANSFER_ATTR, record)
            planned = True
        pending = [c for c in map(config_from_json, record.get("pending") or []) if c]
        if pending:
            study = store.open(spec)
            with storage_group(store.storage):
                enqueued = enqueue(study, pending)
                self._count(record, enqueued)
                record["pending"] = []
                store.set_attr(spec.name, TRANSFER_ATTR, record)
        self.record = record
        active = [s["study"] for s in record["sources"] if s.get("state") == "active"]
        self.memories = load_memories_of(store.storage, active)
        self.predicted = {name: {} for name in self.memories}
        self.judging = bool(self.memories) and bool(record.get("judging", True))
        self._give_prior()
        return planned

    def _give_prior(self) -> None:
        """On the Optuna thread: give the sources in use to the study's sampler as a prior
        (`hpod.transfer.prior`; single objective only). It never enters the storage; it
        fades with the study's own trials, and a paused or dropped source leaves it at once."""
        assert self.record is not None
        if not self.run.mode_plan.transfer_prior:
            return
        if not self.memories or len(self.spec.directions) != 1:
            return
        order = [s["study"] for s in self.record["sources"] if s["study"] in self.memories]
        space = dict(self.spec.space)
        points = prior_points([self.memories[n] for n in order], space)
        if not points:
            return
        for source in self.record["sources"]:
            source["prior"] = sum(p[2] == source["study"] for p in points)

        def now(study: Any) -> list[Any]:
            return prior_trials(points, own_complete(study), self.in_use(), study.direction, space)

        def wrap(sampler: BaseSampler) -> BaseSampler:
            return PriorSampler(sampler, now) if wraps(sampler) else sampler

        self.store.wrap_sampler(self.spec.name, wrap)

    def in_use(self) -> set[str]:
        """The sources whose knowledge is used now: not dropped, not paused (doubtful)."""
        if self.record is None:
            return set()
        return {
            s["study"]
            for s in self.record["sources"]
            if s.get("state") == "active" and not s.get("paused") and s["study"] in self.memories
        }

    def supporting(self) -> set[str]:
        """The sources in use whose latest verdict supports them: their held configurations
        may be enqueued."""
        if self.record is None:
            return set()
        use = self.in_use()
        return {
            s["study"] for s in self.record["sources"] if s["study"] in use and s.get("supports")
        }

    def _plan(self, version: str | None) -> dict[str, Any]:
        """The transfer plan of a new study (pure of storage writes)."""
        spec, run = self.spec, self.run
        target = Target(
            spec.objective,
            dict(spec.space),
            list(spec.directions),
            dict(spec.objective_kwargs),
            version,
            default_fingerprint(spec.objective_kwargs),
        )
        share = run.mode_plan.transfer_share
        limit = transfer_count(share, run.budget.trials)
        skipped: list[dict[str, str]] = []
        if isinstance(spec.transfer, list):
            found = load_memories_of(self.store.storage, list(spec.transfer))
            memories = list(found.values())
            sources = rank_sources(target, memories, list(spec.transfer))
            chosen = {m.study for m, _ in sources}
            for name in spec.transfer:
                if name not in found:
                    skipped.append({"study": name, "reason": "no memory: not finished yet"})
                elif name not in chosen:
                    skipped.append({"study": name, "reason": NOT_COMPARABLE})
        else:
            memories = load_memories(self.store.storage, spec.name, spec.objective)
            sources = rank_sources(target, memories)
        configs = plan_transfer(dict(spec.space), sources, limit) if limit else []
        now, held = stages(configs)
        used = {c.source for c in configs}
        reason = _reason(spec, len(memories), limit, bool(used))
        return {
            "setting": spec.transfer,
            "share": share,
            "limit": limit,
            "at": time.time(),
            "considered": len(memories),
            "sources": [
                {
                    "study": memory.study,
                    "similarity": score,
                    "state": "active",
                    "transferred": 0,
                    "held": sum(c.source == memory.study for c in held),
                    "dropped": 0,
                    "correlation": None,
                    "pairs": 0,
                }
                for memory, score in sources
                if memory.study in used
            ],
            "skipped": skipped,
            "pending": [config_json(c) for c in now],
            "held": [config_json(c) for c in held],
            "judging": bool(used),
            "reason": reason,
        }

    @staticmethod
    def _count(record: dict[str, Any], enqueued: list[Transferred]) -> None:
        """Add the configurations just enqueued to their sources' counts."""
        for source in record["sources"]:
            source["transferred"] += sum(c.source == source["study"] for c in enqueued)

    # --- after tells ---------------------------------------------------------------------

    async def observe(self) -> None:
        """Judge the sources in use against the new complete trials; drop a source that
        disagrees; release the held configurations once enough results are in. Cheap when
        nothing was told since the last call. A failure other than a storage outage stops
        the judging (the study goes on without it), never the study."""
        if not self.judging or len(self.run.told) == self._told_seen:
            return
        self._told_seen = len(self.run.told)
        try:
            changes = await self.store.call(self._observe, self.run.n_created)
        except Exception as exc:
            if is_storage_fault(exc):
                raise
            log.exception("transfer.judge_failed", study=self.run.name, error=repr(exc))
            self.judging = False
            return
        for change in changes:
            await self._publish(change)
        if changes:
            self.run.wake.set()

    def _observe(self, created: int) -> list[str]:
        """On the Optuna thread: the verdicts, drops and release (see `observe`); the
        changes made, for the events."""
        assert self.record is not None
        store, spec, record = self.store, self.spec, self.record
        study = store.open(spec)
        trials = store.trials(spec, (TrialState.COMPLETE,))
        own = (t for t in trials if t.values and TRANSFERRED_ATTR not in t.user_attrs)
        complete = sorted(own, key=lambda t: t.number)[:JUDGE_LIMIT]
        sign = 1.0 if spec.directions[0] == "minimize" else -1.0
        values = [sign * t.values[0] for t in complete]
        changes: list[str] = []
        for source in record["sources"]:
            name = source["study"]
            memory = self.memories.get(name)
            if memory is None or source.get("state") != "active":
                continue
            known = self.predicted.setdefault(name, {})
            for t in complete:
                if t.number not in known:
                    known[t.number] = predict_ranks(memory.surface, [dict(t.params)], spec.space)[0]
            verdict = judge([known[t.number] for t in complete], values)
            source["correlation"], source["pairs"] = verdict.correlation, verdict.pairs
            source["supports"] = verdict.supports
            if verdict.doubtful != bool(source.get("paused")):
                source["paused"] = verdict.doubtful
                changes.append("paused" if verdict.doubtful else "resumed")
            if verdict.disagrees:
                reason = f"disagrees (rank correlation {verdict.correlation} over {verdict.pairs})"
                dropped = drop_waiting(study, name, reason)
                held = [h for h in record["held"] if h.get("from") != name]
                source.update(
                    state="disagrees",
                    dropped=int(source.get("dropped", 0)) + len(dropped),
                    held=0,
                    reason=reason,
                )
                record["held"] = held
                del self.memories[name]
                log.warning(
                    "study.transfer",
                    study=spec.name,
                    change="disagreed",
                    source=name,
                    correlation=verdict.correlation,
                    pairs=verdict.pairs,
                    dropped=dropped,
                )
                changes.append("disagreed")
        if record["held"] and len(complete) >= MIN_PAIRS and self.supporting():
            changes += self._release(study, created)
        if not self.memories or len(complete) >= JUDGE_LIMIT:
            self.judging = False
            record["judging"] = False
        if changes or not self.judging:
            store.set_attr(spec.name, TRANSFER_ATTR, record)
        return changes

    def _release(self, study: Any, created: int) -> list[str]:
        """Enqueue the held configurations of the sources that support (`supporting`),
        within the trials left in the budget; those of the other sources in use or paused
        stay held, those of dropped ones are forgotten."""
        assert self.record is not None
        record = self.record
        held = [c for c in map(config_from_json, record["held"]) if c]
        use = self.supporting()
        keep = [c for c in held if c.source in use]
        record["held"] = [
            config_json(c) for c in held if c.source in self.memories and c not in keep
        ]
        budget = self.run.budget.trials
        if budget is not None:
            waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            keep = keep[: max(0, budget - created - waiting)]
        enqueued = enqueue(study, keep)
        self._count(record, enqueued)
        for source in record["sources"]:
            source["held"] = sum(h.get("from") == source["study"] for h in record["held"])
        log.info("study.transfer", study=self.run.name, change="released", enqueued=len(enqueued))
        return ["released"] if enqueued else []

    # --- end -----------------------------------------------------------------------------

    async def finish(self, state: str) -> None:
        """At the study's end: drop transferred trials still waiting, store the verdicts, and
        write the study's memory for later studies. A failure other than a storage outage is
        logged, never stops the study from completing."""
        try:
            await self.store.call(self._finish, state)
        except Exception as exc:
            if is_storage_fault(exc):
                raise
            log.exception("transfer.finish_failed", study=self.run.name, error=repr(exc))

    def _finish(self, state: str) -> None:
        store, spec = self.store, self.spec
        if spec.objective is None:
            return  # nothing a later study could match: similarity needs the objective
        study = store.open(spec)
        if self.record is not None:
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            origin = {t.number: _source_of(t.user_attrs) for t in waiting}
            dropped = drop_waiting(study, None, f"the study was {state} before it was asked")
            for source in self.record["sources"]:
                source["dropped"] = int(source.get("dropped", 0)) + sum(
                    origin.get(n) == source["study"] for n in dropped
                )
            self.record.update(judging=False, held=[])
            self.judging = False
            store.set_attr(spec.name, TRANSFER_ATTR, self.record)
        complete = complete_trials(study)
        if state != "completed" and len(complete) < MIN_STOPPED_TRIALS:
            return
        memory = build_memory(
            spec.name,
            spec.objective,
            dict(spec.space),
            list(spec.directions),
            complete,
            kwargs=dict(spec.objective_kwargs),
            version=reported_version(study),
        )
        if memory is not None:
            write_memory(store.storage, spec.name, memory)
            log.info("study.memory_written", study=spec.name, trials=memory.n_complete)

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What only the running loop knows: whether verdicts are still followed, and the
        latest correlations (stored only when a verdict changes)."""
        if self.record is None:
            return {}
        return {
            "judging": self.judging,
            "sources": [dict(s) for s in self.record["sources"]],
        }

    async def _publish(self, change: str) -> None:
        """Publish `study.transfer` (planned, released, disagreed) with the study's transfer
        as its status shows it."""
        assert self.record is not None
        status = transfer_status({TRANSFER_ATTR: self.record}, self.spec)
        await self.run.bus.event(
            "study.transfer",
            self.run.name,
            change=change,
            transferred=status["transferred"],
            held=status["held"],
            dropped=status["dropped"],
            sources=[
                {k: s.get(k) for k in ("study", "similarity", "state", "transferred", "dropped")}
                for s in status["sources"]
            ],
        )


def _source_of(user_attrs: dict[str, Any]) -> str | None:
    """The past study a trial (by its user attributes) was transferred from, if any."""
    mark = user_attrs.get(TRANSFERRED_ATTR)
    return mark.get("from") if isinstance(mark, dict) else None


def _reason(spec: StudySpec, considered: int, limit: int, used: bool) -> str:
    """The sentence the status shows about the plan."""
    if used:
        return f"warm start from the most similar of {considered} past studies with a memory"
    if limit == 0:
        return "the budget leaves no trial to transfer (the mode's transfer_share of it is 0)"
    if isinstance(spec.transfer, list):
        return "none of the named studies can be used (see skipped)"
    return (
        f"no finished study of objective {spec.objective!r} is similar enough "
        f"({considered} past studies with a memory)"
    )
