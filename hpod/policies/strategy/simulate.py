"""Studies run in-process on suite tasks: the training ground and the benchmark's harness.

A simulated study is an Optuna study (in-memory storage) driven the way the daemon drives one:
the same strategies, samplers and pruners (built by the same functions), the same data-ladder
and epoch reporting, the same `hpod:cost` record on every trial, the same features and reward.
Only evaluation differs: a suite task computes (or looks up) its value and charges its cost
in CPU seconds (a cost model fitted on measured CPU, or the recorded CPU itself), so
thousands of studies take minutes and every run is reproducible from its seed. The
``hpod:cost`` record holds CPU seconds, as the daemon's workers write it, so the cost
features mean the same in training and in the daemon.

Studies run to a compute budget in full evaluations of the task (its `unit` of CPU seconds:
a pruned trial on a ninth of the data costs a fraction of one, an expensive configuration
more than one), so strategies are compared at equal compute. The rule sees the shape the
daemon would: the declared trial budget and the measured CPU of a full evaluation.

The data ladder's pay-off check runs as in the daemon: the subsampling policy itself
(`hpod.policies.subsampling`, judging with `hpod.policies.ladder_payoff`) measures every
trial told under the plan in force, a ladder measured not to pay is dropped from every later
plan (trials go to the full data, the pruner stays), and the chooser gets its verdict as the
daemon's agent does (`ladder_pays`).

Not modelled: the samplers' own CPU and parallel trials (one trial at a time, so halving
promotes at its nominal rate).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpod.engine import COST_ATTR, make_sampler, suggest
from hpod.modes import load_modes
from hpod.policies._base import HookContext
from hpod.policies.compose import compose, resolve_plan
from hpod.policies.plan import Plan
from hpod.policies.strategy.actions import BUILTIN, Fidelity, SpaceShape, Strategy, warm_start
from hpod.policies.strategy.features import features
from hpod.policies.strategy.reward import WindowOutcome, window_reward
from hpod.policies.strategy.suites import Task
from hpod.policies.subsampling import SubsamplingPolicy
from hpod.pruners import build_pruners, fidelity_step, should_prune
from hpod.schema import StudySpec

optuna.logging.set_verbosity(optuna.logging.ERROR)

#: Decides the strategy of the next window: (shape, features, told, first_trial, the
#: subsampling policy's ladder verdict) -> strategy and the decision's source.
Chooser = Callable[[SpaceShape, list[float], int, int, bool | None], tuple[Strategy, str]]


@dataclass
class Window:
    """One decision and what its window earned."""

    told: int
    strategy: str
    source: str
    features: list[float]
    outcome: WindowOutcome | None = None


@dataclass
class StudyRecord:
    """A simulated study's trace: the best true value against compute spent."""

    task: str
    seed: int
    #: (compute spent, noiseless value of the best configuration found so far) per trial.
    curve: list[tuple[float, float]] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    trials: int = 0

    def best_at(self, compute: float) -> float:
        """The best true value found within `compute` (inf before the first full value)."""
        best = float("inf")
        for spent, value in self.curve:
            if spent > compute + 1e-9:
                break
            best = value
        return best


def seed_of(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (Python's hash of a str is salted per process)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


class Simulation:
    """One study of a task, run window by window."""

    def __init__(self, task: Task, seed: int, mode: str, budget: float, window: int) -> None:
        self.task = task
        self.seed = seed
        self.mode = mode
        self.budget = budget
        self.window = window
        self.spec: StudySpec = task.spec()
        # A fixed name: Optuna's Hyperband assigns brackets by a hash of the study's name,
        # and a generated (random) one would make runs irreproducible.
        self.study = optuna.create_study(
            study_name=f"{task.name}-{seed}", sampler=optuna.samplers.RandomSampler(seed)
        )
        self.spent = 0.0
        self.full_cpu: list[float] = []
        self.best_observed = float("inf")
        self.record = StudyRecord(task.name, seed)
        self.strategy: Strategy | None = None
        #: Noiseless value of the configuration with the best observed value so far.
        self.true_best = float("inf")
        #: The daemon's subsampling policy: it judges the data ladder after every trial told.
        self.subsampling = SubsamplingPolicy()
        #: The plan in force: the strategy laid over balanced mode's plan as forced.
        self.plan: Plan | None = None

    def clone(self) -> Simulation:
        """A copy to try another strategy from the same point (a counterfactual branch)."""
        other = Simulation(self.task, self.seed, self.mode, self.budget, self.window)
        other.study.add_trials(self.study.get_trials(deepcopy=False))
        other.spent = self.spent
        other.full_cpu = list(self.full_cpu)
        other.best_observed = self.best_observed
        other.record.curve = list(self.record.curve)
        other.record.trials = self.record.trials
        other.true_best = self.true_best
        other.subsampling = self.subsampling.copy()
        if self.strategy is not None:
            other.use(self.strategy, ("clone", len(self.study.trials)))
        return other

    @property
    def shape(self) -> SpaceShape:
        """What the masks and the rule see: space, declared budget, measured full CPU."""
        measured = sorted(self.full_cpu)
        cpu = measured[len(measured) // 2] if measured else None
        return SpaceShape.of(
            self.spec, self.task.fidelity, evaluation_cpu=cpu, measured=len(measured)
        )

    @property
    def done(self) -> bool:
        return self.spent >= self.budget

    @property
    def ladder_pays(self) -> bool | None:
        """The subsampling policy's verdict as the daemon hands it to the agent (None while
        it measures)."""
        policy = self.subsampling
        return None if policy.cost_ratio is None else policy.pays

    def features(self) -> list[float]:
        """What the policy sees of the study now."""
        return features(
            self.spec,
            self.study.get_trials(deepcopy=False),
            self.mode,
            None,
            self.window,
            budget_used=min(1.0, self.spent / self.budget),
            fidelity=self.task.fidelity,
        )

    def use(self, strategy: Strategy, salt: Any = 0) -> None:
        """Switch strategy: a new sampler over the same trials (as the daemon does)."""
        self.strategy = strategy
        self.plan = compose(_balanced_plan(), strategy, self.task.fidelity, keep_mode_pruning=False)
        complete = [t for t in self.trials() if t.state == TrialState.COMPLETE]
        best = min(complete, key=lambda t: t.values[0]).params if complete else None
        sampled = warm_start(strategy, best, self.spec)
        self.study.sampler = make_sampler(
            sampled.sampler, sampled.sampler_options, seed_of(self.seed, salt, strategy.name)
        )

    def run_window(self) -> WindowOutcome | None:
        """Run one window of trials with the current strategy (or until the budget)."""
        first = len(self.study.trials)
        for _ in range(self.window):
            if self.done:
                break
            self.run_trial()
        return window_reward(self.spec, self.study.get_trials(deepcopy=False), first, self.mode)

    def run_trial(self) -> None:
        """Ask, evaluate at the strategy's fidelities with its pruners, tell."""
        assert self.strategy is not None
        task, strategy = self.task, self.strategy
        trial = self.study.ask()
        params = suggest(trial, self.spec.space)
        rng = np.random.default_rng(seed_of(self.seed, trial.number, "noise"))
        # The daemon's dispatch: the plan's ladder while the subsampling policy says it pays.
        event = HookContext(self.spec, trial.number, params, plan=self.plan)
        self.subsampling.before_dispatch(event)
        ladder = list(event.task_plan.get("ladder", [1.0])) if task.fidelity == "data" else [1.0]
        pruners = build_pruners(strategy.pruner, strategy.pruner_options, ladder=ladder)
        if task.fidelity == "epochs":
            cumulative = [0.0] + [
                task.cost(params, e / task.epochs) for e in range(1, task.epochs + 1)
            ]
            steps = [
                (e / task.epochs, e, max(0.0, cumulative[e] - cumulative[e - 1]))
                for e in range(1, task.epochs + 1)
            ]
        else:
            steps = [(f, fidelity_step(f), task.cost(params, f)) for f in ladder]
        cpu, rungs, value, pruned = 0.0, [], float("nan"), False
        for fidelity, step, cost in steps:
            value = task.value(params, fidelity, rng)
            cpu += cost
            rungs.append([fidelity, value, False, cost])
            if len(steps) == 1:
                break
            trial.report(value, step)
            if fidelity < 1.0 and pruners:
                frozen = self.study._storage.get_trial(trial._trial_id)
                if should_prune(self.study, frozen, pruners):
                    pruned = True
                    break
        cost_record = {
            "cpu": cpu,
            "full_cpu": None if pruned else task.cost(params, 1.0),
            "rungs": rungs if task.fidelity == "data" else [],
            "fidelity": task.fidelity,
        }
        trial.set_user_attr(COST_ATTR, cost_record)
        self.spent += cpu / task.unit
        if not pruned:
            self.full_cpu.append(task.cost(params, 1.0))
        if pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, value)
            if value < self.best_observed:
                self.best_observed = value
                self.true_best = task.value(params, 1.0, None)
        self.subsampling.after_tell(replace(event, cost=cost_record))
        self.record.trials += 1
        self.record.curve.append((self.spent, self.true_best))

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)


def run_study(
    task: Task,
    chooser: Chooser,
    seed: int,
    mode: str = "balanced",
    budget: float = 40.0,
    window: int = 12,
) -> StudyRecord:
    """A study of `task` to `budget` full evaluations, its strategy decided by `chooser` at
    the start and every `window` trials."""
    sim = Simulation(task, seed, mode, budget, window)
    while not sim.done:
        told = len(sim.trials())
        feats = sim.features()
        strategy, source = chooser(sim.shape, feats, told, told, sim.ladder_pays)
        if sim.strategy is None or strategy.name != sim.strategy.name:
            sim.use(strategy, told)
        window_record = Window(told, strategy.name, source, feats)
        window_record.outcome = sim.run_window()
        sim.record.windows.append(window_record)
    return sim.record


@cache
def _balanced_plan() -> Plan:
    """Balanced mode's plan for a study that names no sampler or pruner."""
    spec = StudySpec.model_validate(
        {
            "name": "auto",
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "budget": {"trials": 1},
        }
    )
    return resolve_plan(spec, "balanced", load_modes()["balanced"])


def as_auto(strategy: Strategy, fidelity: Fidelity) -> Strategy:
    """`strategy` as the daemon runs it when ``auto`` chose it in balanced mode: laid over
    the mode's plan (`hpod.policies.compose`), so one that prunes nothing keeps the mode's
    pruner (the step pruner on epochs) and ladder. Named as the built-in strategy it then
    equals, if any (same parts, same seeds, same study)."""
    plan = compose(_balanced_plan(), strategy, fidelity, keep_mode_pruning=True)
    ladder = tuple(round(f, 4) for f in plan.ladder) if fidelity == "data" else (1.0,)
    parts = (plan.sampler, plan.sampler_options, plan.pruner, plan.pruner_options, ladder)
    for builtin in BUILTIN:
        if parts == (
            builtin.sampler,
            builtin.sampler_options,
            builtin.pruner,
            builtin.pruner_options,
            tuple(round(f, 4) for f in builtin.ladder),
        ):
            return builtin
    if parts == (
        strategy.sampler,
        strategy.sampler_options,
        strategy.pruner,
        strategy.pruner_options,
        strategy.ladder,
    ):
        return strategy
    return replace(
        strategy,
        name=f"{strategy.name}+mode",
        pruner=plan.pruner,
        pruner_options=dict(plan.pruner_options),
        ladder=tuple(plan.ladder),
    )


def fixed(strategy: Strategy) -> Chooser:
    """A chooser that always picks `strategy`."""
    return lambda shape, feats, told, first, ladder_pays: (strategy, "fixed")
