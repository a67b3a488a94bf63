"""The strategy policy inside a study's loop: which sampler, pruner and data ladder, and when.

A study's *strategy setting* (`StudySpec.strategy`, or a live `study.strategy` switch stored
on the study) is ``auto`` (the daemon's `StrategyAgent` decides), ``mode`` (the mode's own
sampler, pruner and ladder: hpod's behaviour before the policy existed) or the name of a
strategy to force. A spec that names its sampler or pruner keeps them: such a study is driven
as ``mode``, and its one decision says why.

`StrategyDriver` decides at the study's start and again each time the number of told trials
reaches the next multiple of the mode's `strategy_window`, just before more trials are asked.
It decides and the study's loop applies: the loop (`hpod.daemon.studies.StudyRun`) owns its
counters and its plan, asks the driver with a read-only `LoopView` and gets back a `Choice`:
the `StrategyLayer` to lay over the mode's plan (`hpod.policies.compose`, the one composer,
which the loop calls) and the ``strategy.chosen`` event to publish. A mode switch makes the
loop compose its plan again from the new mode's plan and the same layer, so it keeps the
strategy and changes the other knobs.
It knows the objective's fidelity from the start when the objective declares it
(`hpod.daemon.declared`), else from the told trials (`infer_fidelity`).
Before each decision the previous one's window is scored (`window_reward`) and, once, handed
to the agent as an `Experience`, so the policy learns from every study the daemon runs.

Every decision is kept on the study (user attributes, so a restart resumes from them):

- ``hpod:strategy``: the last `MAX_DECISIONS` decisions, compact (told, first trial, strategy,
  source, reason, the plan it gave, the window's reward once known, and for an exploration
  the strategy it stood in for). Compact because the
  whole list is written again at every decision, and a journal keeps every write.
- ``hpod:strategy_current``: the latest decision in full (features, scores, masks), which the
  next window's experience needs after a restart.
- ``hpod:strategy_setting``: a live switch, over the spec's setting.

The data ladder's "off" verdict (``hpod:ladder``) is the loop's too: `hpod.daemon.ladder`.

A window's reward is written on its record *before* the experience is appended to the replay
buffer: a crash in between loses that one experience rather than counting it twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import structlog
from optuna.trial import FrozenTrial, TrialState

from hpod.daemon.declared import DeclaredFidelities
from hpod.daemon.store import StudyStore
from hpod.engine import COST_ATTR
from hpod.errors import RequestRejected
from hpod.policies.compose import StrategyLayer
from hpod.policies.plan import Plan
from hpod.policies.strategy.actions import (
    Fidelity,
    SpaceShape,
    Strategy,
    action_features,
    warm_start,
)
from hpod.policies.strategy.agent import Decision, StrategyAgent
from hpod.policies.strategy.features import FEATURE_NAMES, features, infer_fidelity
from hpod.policies.strategy.replay import Experience
from hpod.policies.strategy.reward import WindowOutcome, window_reward
from hpod.policies.strategy.rules import choose, ladder_has_room
from hpod.schema import Budget, StudySpec, check_gp_grid
from hpod.transfer.store import was_dropped

log = structlog.get_logger("hpod.strategy")

#: The study's decisions, compact, oldest first (at most `MAX_DECISIONS`).
STRATEGY_ATTR = "hpod:strategy"
#: The latest decision in full: features, scores, masks.
STRATEGY_CURRENT_ATTR = "hpod:strategy_current"
#: A strategy setting switched live (`study.strategy`); the spec keeps the one it was created with.
STRATEGY_SETTING_ATTR = "hpod:strategy_setting"
MAX_DECISIONS = 200
#: Settings that are not a strategy's name.
AUTO, MODE = "auto", "mode"
#: Decisions whose window is experience for the learner (a "mode" decision is not an action).
LEARNING_SOURCES = frozenset({"policy", "rules", "explore", "forced"})
FIDELITIES: tuple[Fidelity, ...] = ("data", "epochs", "none")


def stored_fidelity(value: Any) -> Fidelity | None:
    """A fidelity read back from a stored decision (None if absent or not one)."""
    return next((f for f in FIDELITIES if f == value), None)


def best_params(spec: StudySpec, trials: list[FrozenTrial]) -> dict[str, Any] | None:
    """The parameters of the best complete trial on the first objective (None if none)."""
    sign = 1.0 if spec.directions[0] == "minimize" else -1.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    return min(complete, key=lambda t: sign * t.values[0]).params if complete else None


def spec_override(spec: StudySpec) -> str | None:
    """What the spec sets itself that the policy must not override ("sampler 'random'"), or
    None when it leaves sampler and pruner to the mode."""
    named = []
    if spec.sampler.name is not None:
        named.append(f"sampler {spec.sampler.name!r}")
    if spec.pruner is not None:
        named.append(f"pruner {spec.pruner.name!r}")
    return " and ".join(named) or None


def check_setting(setting: str, spec: StudySpec, known: Iterable[str], field: str) -> None:
    """Refuse a strategy setting the daemon cannot honour, naming `field`: an unknown strategy,
    or a forced one in a spec that names its own sampler or pruner (one would silently lose)."""
    if setting in (AUTO, MODE):
        return
    names = sorted(known)
    if setting not in names:
        raise RequestRejected(
            "invalid",
            field,
            f"unknown strategy {setting!r}; known: {AUTO}, {MODE}, {', '.join(names)}",
        )
    if setting == "gp":
        check_gp_grid(spec.space, "study.space")  # what a spec naming gp is held to
    override = spec_override(spec)
    if override is not None:
        raise RequestRejected(
            "invalid",
            field,
            f"the spec names its {override}, which a forced strategy would override: "
            f"drop them from the spec, or use strategy {MODE!r}",
        )


def strategy_status(attrs: dict[str, Any], spec: StudySpec) -> dict[str, Any]:
    """A study's strategy for its status, from its stored user attributes: the setting, the
    current strategy and why, and every kept decision as (told, strategy, source, reward)."""
    records: list[dict[str, Any]] = list(attrs.get(STRATEGY_ATTR) or [])
    current: dict[str, Any] = attrs.get(STRATEGY_CURRENT_ATTR) or {}
    last = records[-1] if records else {}
    return {
        "setting": attrs.get(STRATEGY_SETTING_ATTR) or spec.strategy,
        "current": last.get("strategy"),
        "source": last.get("source"),
        "reason": last.get("reason"),
        "plan": last.get("plan"),
        "scores": current.get("scores") or {},
        "masked": current.get("masked") or {},
        "decisions": [
            {
                "told": r.get("told"),
                "strategy": r.get("strategy"),
                "source": r.get("source"),
                "reward": r.get("reward"),
            }
            for r in records
        ],
    }


@dataclass(frozen=True)
class Snapshot:
    """What a decision reads of the study, taken on the Optuna thread in one go."""

    shape: SpaceShape
    features: list[float]
    #: The pending decision's window, scored (None: no pending decision, or nothing finished).
    outcome: WindowOutcome | None
    #: The best complete trial's parameters (a CMA-ES switched to starts there).
    best_params: dict[str, Any] | None = None
    #: The objective's fidelity: declared, else as the trials show it.
    fidelity: Fidelity = "none"


def full_cpu_measured(trials: list[FrozenTrial]) -> list[float]:
    """The CPU seconds of every full evaluation measured, sorted: the complete trials that
    ran one (``hpod:cost``.full_cpu; cache hits and pruned trials did not)."""
    return sorted(
        float(cost["full_cpu"])
        for t in trials
        if t.state == TrialState.COMPLETE
        and isinstance(cost := t.user_attrs.get(COST_ATTR), dict)
        and isinstance(cost.get("full_cpu"), int | float)
        and cost.get("cache") != "hit"
    )


def median_cpu(measured: list[float]) -> float | None:
    """The median of `full_cpu_measured`'s list (the upper one of an even count), or None:
    what the rule reads as an evaluation's CPU."""
    return measured[len(measured) // 2] if measured else None


@dataclass(frozen=True)
class LoopView:
    """What a decision reads of the study's loop, taken by the loop when it asks for one.

    The driver never sees the loop itself: the loop (`hpod.daemon.studies.StudyRun`) owns its
    counters and its plan, hands the driver this view and applies the `Choice` it gets back.
    """

    #: Trials told so far.
    told: int
    #: Trials asked so far (the next one asked is the decision's first trial).
    created: int
    #: The plan of the study's mode (and spec), before any strategy.
    mode_plan: Plan
    #: The share of the budget spent, by the tightest of its limits (compute included).
    budget_used: float
    #: What the last decision laid over the mode's plan.
    layer: StrategyLayer
    #: Whether the data ladder was measured not to pay (`hpod.daemon.ladder`).
    ladder_off: bool
    #: The subsampling policy's verdict on the ladder (None while it measures).
    ladder_pays: bool | None
    #: The budget in force (a live change included; a budget in CPU or wall seconds is
    #: sized in evaluations by the rule).
    budget: Budget
    #: Wall seconds since the study was created (sizes a budget in `seconds`).
    elapsed: float = 0.0

    @property
    def budget_trials(self) -> int | None:
        """The trial limit of the budget in force (None: none)."""
        return self.budget.trials

    @property
    def window(self) -> int:
        """Trials told between two decisions, from the mode in force."""
        return self.mode_plan.strategy_window


@dataclass(frozen=True)
class Choice:
    """A decision for the loop to apply: the new layer over the mode's plan, and what the
    ``strategy.chosen`` event says (its record is already stored)."""

    layer: StrategyLayer
    event: dict[str, Any]


class StrategyDriver:
    """Chooses one study's strategy at its start and every window, and keeps the record.

    It decides; the study's loop applies: every call takes a `LoopView` and what changes the
    loop comes back as a `Choice`. The driver keeps, and stores on the study, only its own
    state: the setting, the decisions, when the next one is due. The loop serialises the
    calls (one decision at a time).
    """

    def __init__(
        self,
        spec: StudySpec,
        store: StudyStore,
        agent: StrategyAgent,
        declared: DeclaredFidelities | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.agent = agent
        #: Where the fidelity the objective declares is learnt.
        self._declared_source = declared
        self.setting: str = spec.strategy
        self.records: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        #: Told trials at which the next decision is due (None: no more decisions).
        self.next_at: int | None = 0
        #: Features of the pending decision, in `FEATURE_NAMES` order (for its experience).
        self._pending_features: list[float] | None = None
        #: The fidelity the objective declares (None: none declared, or not resolvable here).
        self.declared: Fidelity | None = None
        self._declared_known = False
        #: Whether the latest decision found the budget small (`rules.is_small_budget`) or
        #: not sized yet: then a learning sampler gets no packs (`BatchingPolicy.pack_size`).
        #: True until a decision says otherwise (after a restart, till the next window).
        self.small_budget = True

    @property
    def name(self) -> str:
        """The study's name."""
        return self.spec.name

    @property
    def effective_setting(self) -> str:
        """The setting that drives decisions: ``mode`` when the spec names sampler or pruner."""
        return MODE if spec_override(self.spec) is not None else self.setting

    def layer(
        self, strategy: Strategy | None, fidelity: Fidelity | None, ladder_room: bool = True
    ) -> StrategyLayer:
        """What `strategy` lays over the mode's plan under the current setting: a strategy
        chosen by ``auto`` keeps the mode's pruning where its own prunes nothing, and its
        data ladder only where the budget leaves it room (`ladder_room`, from the rule's
        `ladder_has_room`; other settings keep what they name)."""
        auto = self.effective_setting == AUTO
        return StrategyLayer(
            strategy, fidelity, keep_mode_pruning=auto, ladder_room=ladder_room or not auto
        )

    def due(self, told: int) -> str | None:
        """The trigger of the decision due with `told` trials told (``start``: the study's
        first; ``window``: its window is full), or None when none is due."""
        if self.next_at is None or told < self.next_at:
            return None
        return "start" if not self.records else "window"

    def pack_limit(self, created: int) -> int | None:
        """At most this many trials in the next task, so the trials asked under the current
        strategy stay within its window: up to the next decision, then one at a time until
        the told trials catch up (None: no decision to come, no limit)."""
        if self.next_at is None:
            return None
        return max(1, self.next_at - created)

    def status(self, window: int) -> dict[str, Any]:
        """What only the running loop knows: the window and when the next decision is due."""
        return {"window": window, "next_decision_at": self.next_at}

    # --- lifecycle ---------------------------------------------------------------------

    def resume(self, attrs: dict[str, Any], window: int) -> StrategyLayer | None:
        """Load the study's stored decisions (its user attributes `attrs`) and the layer the
        last one laid over the mode's plan (after a restart). None at a study's first start,
        where there are none and the first decision is due at once."""
        self.setting = str(attrs.get(STRATEGY_SETTING_ATTR) or self.spec.strategy)
        self.records = list(attrs.get(STRATEGY_ATTR) or [])
        self.current = attrs.get(STRATEGY_CURRENT_ATTR)
        if not self.records:
            self.next_at = 0
            return None
        last = self.records[-1]
        fidelity = stored_fidelity(last.get("fidelity"))
        mode = self.effective_setting == MODE
        self.next_at = None if mode else self._boundary(last["told"], window)
        strategy = None
        if last.get("source") != MODE:
            try:
                strategy = self.agent.by_name(str(last["strategy"]))
            except KeyError:
                log.warning(
                    "strategy.unknown_on_resume", study=self.name, strategy=last["strategy"]
                )
                self.next_at = None if mode else 0
        log.info(
            "strategy.resumed",
            study=self.name,
            strategy=last.get("strategy"),
            decisions=len(self.records),
            next_decision_at=self.next_at,
        )
        return self.layer(strategy, fidelity, last.get("ladder_room") is not False)

    async def set_setting(self, setting: str) -> None:
        """Follow a new strategy setting from now on (a live `study.strategy`), stored; the
        loop then asks for a decision (trigger ``switch``)."""
        await self.store.call(self.store.set_attr, self.name, STRATEGY_SETTING_ATTR, setting)
        self.setting = setting

    async def finish(self, view: LoopView) -> None:
        """Score the last decision's window when the study ends, so it is experience too."""
        pending = self._pending()
        if pending is None:
            return
        snapshot = await self.store.call(self._snapshot, view, pending)
        experience = self._settle(pending, snapshot.outcome, view)
        await self._persist()
        await self._learn(experience)

    # --- deciding ----------------------------------------------------------------------

    def _boundary(self, told: int, window: int) -> int:
        """The first multiple of `window` above `told`."""
        return (told // window + 1) * window

    def _next_at(self, told: int, window: int, snapshot: Snapshot) -> int:
        """Told trials at which the next decision is due: the next window's start; the next
        trial told while the budget, in seconds, is not sized yet (until one evaluation is
        measured the rule holds TPE on the full data, and a study of 20 evaluations must
        not run its first window before the rule can size it), within the first window."""
        if snapshot.shape.budget_pending and told < window:
            return told + 1
        return self._boundary(told, window)

    def _pending(self) -> dict[str, Any] | None:
        """The latest decision if its window has not been scored yet."""
        if self.records and not self.records[-1].get("settled"):
            return self.records[-1]
        return None

    def _snapshot(self, view: LoopView, pending: dict[str, Any] | None) -> Snapshot:
        """Read the study's trials once (on the Optuna thread) and derive what a decision needs."""
        spec = self.spec
        # A transferred trial dropped before it was asked never ran: not a told trial, not a
        # zero-cost one in the features and the window's reward.
        trials = [t for t in self.store.trials(spec, None) if not was_dropped(t)]
        fidelity = self.declared or infer_fidelity(trials)
        vector = features(
            spec,
            trials,
            view.mode_plan.mode,
            view.budget_trials,
            view.window,
            budget_used=view.budget_used,
            fidelity=fidelity,
        )
        outcome = None
        if pending is not None:
            mode = str(pending.get("mode") or view.mode_plan.mode)
            outcome = window_reward(spec, trials, int(pending["first_trial"]), mode)
        rate = view.told / view.elapsed if view.told and view.elapsed > 0 else None
        measured = full_cpu_measured(trials)
        return Snapshot(
            SpaceShape.of(
                spec,
                fidelity,
                evaluation_cpu=median_cpu(measured),
                budget=view.budget,
                told_per_second=rate,
                measured=len(measured),
                told=view.told,
            ),
            vector,
            outcome,
            best_params(spec, trials),
            fidelity,
        )

    async def _resolve_declared(self) -> None:
        """Learn, once, the fidelity the study's objective declares (`hpod.daemon.declared`)."""
        if self._declared_known:
            return
        if self._declared_source is not None and self.spec.objective is not None:
            self.declared = await self._declared_source.fidelity(self.spec.objective)
        self._declared_known = True

    async def decide(self, view: LoopView, trigger: str) -> Choice:
        """Decide now, for the loop as `view` shows it: score the pending decision's window,
        ask the agent (or follow ``mode``), store the new decision and learn from the old;
        the `Choice` is for the loop to apply."""
        told, first_trial = view.told, view.created
        pending = self._pending()
        await self._resolve_declared()
        snapshot = await self.store.call(self._snapshot, view, pending)
        experience = self._settle(pending, snapshot.outcome, view) if pending else None
        previous = self.records[-1] if self.records else None
        setting = self.effective_setting
        decision = None
        strategy = view.layer.strategy
        if setting == MODE:
            strategy = None
        else:
            decision = await self._ask_agent(setting, view, snapshot)
            if strategy is None or decision.strategy.name != strategy.name:
                # Only on a switch: a CMA-ES kept on must not be restarted every window.
                strategy = warm_start(decision.strategy, snapshot.best_params, self.spec)
        room = ladder_has_room(snapshot.shape)
        # A ladder has room exactly where the budget is sized and not small.
        self.small_budget = not room
        layer = self.layer(strategy, snapshot.fidelity, room)
        plan = layer.over(view.mode_plan, ladder_off=view.ladder_off)
        record = self._record(decision, plan, trigger, told, first_trial)
        record["fidelity"] = snapshot.fidelity
        record["ladder_room"] = layer.ladder_room
        self.current = (
            {**decision.to_json(), "mode": plan.mode, "trigger": trigger}
            if decision is not None
            else self._mode_current(record, snapshot)
        )
        self._pending_features = snapshot.features if setting != MODE else None
        self.records.append(record)
        del self.records[:-MAX_DECISIONS]
        self.next_at = None if setting == MODE else self._next_at(told, view.window, snapshot)
        await self._persist()
        await self._learn(experience)
        if decision is not None:
            self._note(decision)
        log.info(
            "strategy.chosen",
            study=self.name,
            strategy=record["strategy"],
            source=record["source"],
            told=told,
            reason=record["reason"],
        )
        event = {
            "strategy": record["strategy"],
            "source": record["source"],
            "reason": record["reason"],
            "trigger": trigger,
            "scores": self.current.get("scores") or {},
            "features": self.current.get("features") or {},
            "told": told,
            "first_trial": first_trial,
            "plan": record["plan"],
            "previous_strategy": previous.get("strategy") if previous else None,
            "previous_reward": previous.get("reward") if previous else None,
        }
        return Choice(layer, event)

    async def _ask_agent(self, setting: str, view: LoopView, snapshot: Snapshot) -> Decision:
        """The agent's decision (forced for a named strategy); on an unexpected error, the
        rule-based selector's, so a study never stalls on its policy."""
        agent = self.agent
        told, first_trial, current = view.told, view.created, view.layer.strategy
        try:
            if setting != AUTO:
                return agent.forced(
                    agent.by_name(setting), snapshot.shape, snapshot.features, told, first_trial
                )
            # The plan `auto` would run a strategy under.
            auto = StrategyLayer(
                None,
                snapshot.fidelity,
                keep_mode_pruning=True,
                ladder_room=ladder_has_room(snapshot.shape),
            )
            return await asyncio.to_thread(
                agent.decide,
                snapshot.shape,
                snapshot.features,
                view.mode_plan.mode,
                told,
                first_trial,
                view.ladder_pays,
                current.name if current else None,
                self.records[-1] if self.records else None,  # scored: an exploration's verdict
                plan_of=lambda strategy: replace(auto, strategy=strategy).over(
                    view.mode_plan, ladder_off=view.ladder_off
                ),
            )
        except Exception as exc:
            log.exception("strategy.decide_failed", study=self.name, error=repr(exc))
            strategy = choose(snapshot.shape, told, view.ladder_pays, agent.strategies)
            return Decision(
                strategy=strategy,
                source="rules",
                features=snapshot.features,
                scores={},
                masked={},
                reason=f"the policy failed ({exc!r}): rule-based selector",
                told=told,
                first_trial=first_trial,
            )

    def _record(
        self, decision: Decision | None, plan: Plan, trigger: str, told: int, first_trial: int
    ) -> dict[str, Any]:
        """The compact record of a decision kept in `STRATEGY_ATTR`."""
        if decision is None:
            override = spec_override(self.spec)
            reason = (
                f"the spec names its {override}: the mode's plan applies, the policy does not "
                "override it"
                if override
                else f"strategy {MODE!r}: the mode's own sampler, pruner and data ladder"
            )
            name, source = MODE, MODE
        else:
            name, source, reason = decision.strategy.name, decision.source, decision.reason
            kept = plan.extra.get("kept_from_mode")
            if kept:
                reason += f"; keeps the mode's {' and '.join(kept)} (the strategy has none)"
        return {
            "told": told,
            "first_trial": first_trial,
            "strategy": name,
            "source": source,
            "reason": reason,
            "trigger": trigger,
            "mode": plan.mode,
            "plan": {"sampler": plan.sampler, "pruner": plan.pruner, "ladder": list(plan.ladder)},
            "at": time.time(),
            "reward": None,
            "settled": False,
            # An exploration's stand-in: the next decision goes back to it unless it won.
            **({"instead_of": decision.instead_of} if decision and decision.instead_of else {}),
        }

    @staticmethod
    def _mode_current(record: dict[str, Any], snapshot: Snapshot) -> dict[str, Any]:
        """The full current decision for a ``mode`` decision (no agent involved)."""
        return {
            **{k: record[k] for k in ("strategy", "source", "reason", "told", "first_trial")},
            "features": dict(zip(FEATURE_NAMES, snapshot.features, strict=False)),
            "scores": {},
            "masked": {},
            "mode": record["mode"],
            "trigger": record["trigger"],
        }

    def _settle(
        self, pending: dict[str, Any], outcome: WindowOutcome | None, view: LoopView
    ) -> Experience | None:
        """Write the window's outcome on its record; the experience to learn from, if any."""
        pending["settled"] = True
        if outcome is None:
            return None  # nothing finished in the window (a switch right after a decision)
        pending.update(
            reward=outcome.reward,
            improvement=outcome.improvement,
            compute=outcome.compute,
            window_trials=outcome.trials,
        )
        if pending.get("source") not in LEARNING_SOURCES:
            return None
        vector = self._pending_vector(pending)
        try:
            strategy = self.agent.by_name(str(pending["strategy"]))
        except KeyError:
            return None  # a strategy the operator has removed since: nothing to learn about
        if vector is None:
            return None
        return Experience(
            study=self.name,
            mode=str(pending.get("mode") or view.mode_plan.mode),
            strategy=strategy.name,
            features=vector,
            action=action_features(strategy),
            reward=outcome.reward,
            improvement=outcome.improvement,
            compute=outcome.compute,
            trials=outcome.trials,
            at=time.time(),
        )

    def _pending_vector(self, pending: dict[str, Any]) -> list[float] | None:
        """The pending decision's features: kept in memory, or after a restart read back
        from the full current decision (None if they no longer match `FEATURE_NAMES`)."""
        if self._pending_features is not None:
            return self._pending_features
        current = self.current or {}
        stored = current.get("features")
        if current.get("first_trial") != pending.get("first_trial") or not isinstance(stored, dict):
            return None
        try:
            return [float(stored[name]) for name in FEATURE_NAMES]
        except (KeyError, TypeError, ValueError):
            log.warning("strategy.features_changed", study=self.name)
            return None

    async def _persist(self) -> None:
        """Write the decisions and the current one, in one durable write."""
        await self.store.call(
            self.store.set_attrs,
            self.name,
            {STRATEGY_ATTR: self.records, STRATEGY_CURRENT_ATTR: self.current},
        )

    async def _learn(self, experience: Experience | None) -> None:
        """Append an experience to the agent's replay buffer (after its record was stored)."""
        if experience is None:
            return
        try:
            await asyncio.to_thread(self.agent.record, experience)
        except Exception as exc:  # the replay buffer is a file: a full disk must not stop a study
            log.exception("strategy.record_failed", study=self.name, error=repr(exc))

    def _note(self, decision: Decision) -> None:
        try:
            self.agent.note_decision(self.name, decision)
        except Exception as exc:
            log.exception("strategy.note_failed", study=self.name, error=repr(exc))
