"""Strategies — the actions of the strategy policy — and when each cannot apply.

A strategy is a sampler, a pruner and a fidelity schedule. Some make no sense for a given
study, and are masked rather than left for a learner to discover the hard way: CMA-ES needs a
mostly continuous space without conditions, pruning needs intermediate reports, a data ladder
needs an objective that subsamples, and single- and multi-objective samplers are not
interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from hpod.schema import (
    MAX_GP_GRID_POINTS,
    Budget,
    CategoricalParam,
    FloatParam,
    IntParam,
    ParamSpec,
    StudySpec,
)

Fidelity = Literal["data", "epochs", "none"]


#: A budget in seconds is sized once this many measurements stand behind it (full evaluations
#: for CPU seconds, trials told for wall seconds); until then it is pending. Sized on its
#: first trial, a forest study of ~20 evaluations (`bench/savings.py --tasks forest
#: --workers 4`, f66fedc) read 73 (a 0.5 s fit of a configuration drawn small, against a
#: median of 1.95 s) and planned the data ladder: 45 of 55 trials pruned at its low rungs.
#: Evaluation costs vary tenfold over such spaces (trees, boosting rounds, models), so one
#: or two draws say little. Five cost nothing in sampling: TPE and the GP's and CMA-ES's
#: openings all draw their first trials without a model (`hpod.sampling.opening`).
SIZING_MEASUREMENTS = 5


@dataclass(frozen=True)
class SpaceShape:
    """What the masks need to know about a study: its space, directions and fidelity."""

    n_params: int
    n_continuous: int
    n_categorical: int
    n_conditional: int
    n_directions: int
    fidelity: Fidelity
    #: The study's budget in trials (None: none given, e.g. a budget in seconds only).
    budget_trials: int | None = None
    #: Points of the largest discrete grid (int, or float with a step; 0 if none).
    max_grid_points: int = 0
    #: The objective's measured CPU seconds per full evaluation (median of the complete
    #: trials'; None before one is told): the GP pays only where evaluations cost much more
    #: than its own suggestions.
    evaluation_cpu: float | None = None
    #: The budget in full evaluations: the tightest of its trial limit, its
    #: `full_evaluations`, its `cpu_seconds` over `evaluation_cpu` and its `seconds` at the
    #: study's measured rate of trials told (None: no such limit, or only a limit in seconds
    #: not yet measured against the objective). A budget of 1.6 CPU seconds on a 0.04 s
    #: objective is 40 evaluations: as small as a budget of 40 trials.
    budget_evaluations: float | None = None
    #: Whether the budget has a limit in (CPU or wall) seconds whose size in evaluations is
    #: not known yet (measured on fewer than `SIZING_MEASUREMENTS` evaluations, where
    #: counted): small or long is decided once it is, and
    #: `budget_evaluations` (from its other limits, if any) is only an upper bound till then.
    budget_pending: bool = False
    #: How many measurements size a budget with a limit in seconds: full evaluations measured
    #: for `cpu_seconds`, trials told for `seconds` (the fewer of the two); None: no such
    #: limit, or not counted. Below `SIZING_MEASUREMENTS` the budget is still pending.
    budget_sized_on: int | None = None

    def __post_init__(self) -> None:
        # A shape built with a trial budget alone is sized by it.
        if self.budget_evaluations is None and self.budget_trials is not None:
            object.__setattr__(self, "budget_evaluations", float(self.budget_trials))

    @classmethod
    def of(
        cls,
        spec: StudySpec,
        fidelity: Fidelity,
        evaluation_cpu: float | None = None,
        budget: Budget | None = None,
        told_per_second: float | None = None,
        measured: int | None = None,
        told: int | None = None,
    ) -> SpaceShape:
        """The shape of `spec`'s study for an objective of the given fidelity; the budget is
        the spec's unless the live one is given (`budget`).
        `told_per_second`: the study's trials told per wall second since it was created
        (None: none told yet), which sizes a budget in `seconds`; `measured`: the full
        evaluations `evaluation_cpu` is the median of, `told`: the trials told (None: not
        counted), which say how firmly a limit in seconds is sized (`budget_sized_on`)."""
        params = list(spec.space.values())
        live = budget if budget is not None else spec.budget
        sizes = [float(n) for n in (live.trials, live.full_evaluations) if n is not None]
        if live.cpu_seconds is not None and evaluation_cpu:
            sizes.append(live.cpu_seconds / evaluation_cpu)
        if live.seconds is not None and told_per_second:
            sizes.append(live.seconds * told_per_second)
        evaluations = min(sizes) if sizes else None
        counts = []
        if live.cpu_seconds is not None and measured is not None:
            counts.append(measured)
        if live.seconds is not None and told is not None:
            counts.append(told)
        # A limit in seconds not sized yet may be the tightest, whatever the trial limit (the
        # savings benchmark caps its CPU budgets at 12 times their evaluations in trials);
        # sized on fewer than `SIZING_MEASUREMENTS`, it is not sized yet either.
        unsized = (
            (live.cpu_seconds is not None and not evaluation_cpu)
            or (live.seconds is not None and not told_per_second)
            or (bool(counts) and min(counts) < SIZING_MEASUREMENTS)
        )
        return cls(
            n_params=len(params),
            n_continuous=sum(not isinstance(p, CategoricalParam) for p in params),
            n_categorical=sum(isinstance(p, CategoricalParam) for p in params),
            n_conditional=sum(p.condition is not None for p in params),
            n_directions=len(spec.directions),
            fidelity=fidelity,
            budget_trials=live.trials,
            max_grid_points=max((grid_points(p) for p in params), default=0),
            evaluation_cpu=evaluation_cpu,
            budget_evaluations=evaluations,
            budget_pending=unsized,
            budget_sized_on=min(counts) if counts else None,
        )


@dataclass(frozen=True)
class Strategy:
    """One action: a sampler, a pruner and a fidelity schedule, by name."""

    name: str
    sampler: str
    pruner: str = "none"
    ladder: tuple[float, ...] = (1.0,)
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner_options: dict[str, Any] = field(default_factory=dict)
    #: Whether the policy may choose it by itself (False: only a study that names it gets it).
    auto: bool = True

    def mask_reason(self, shape: SpaceShape) -> str | None:
        """Why this strategy cannot apply to a study of `shape`, or None if it can."""
        multi = shape.n_directions > 1
        if multi and self.sampler not in ("nsga2", "tpe", "random", "qmc"):
            return f"{self.sampler} optimises a single objective"
        if not multi and self.sampler == "nsga2":
            return "NSGA-II is for several objectives"
        if multi and (self.pruner != "none" or len(self.ladder) > 1):
            return "Optuna cannot prune multi-objective trials"
        if self.sampler == "cmaes":
            if shape.n_conditional:
                return "CMA-ES cannot follow conditional parameters"
            if shape.n_continuous < max(2, 0.8 * shape.n_params):
                return "CMA-ES needs a mostly continuous space of two or more dimensions"
        if self.sampler == "gp" and shape.n_conditional:
            return "the GP models one fixed space: it cannot follow conditional parameters"
        if self.sampler == "gp" and shape.max_grid_points > MAX_GP_GRID_POINTS:
            return f"the GP enumerates discrete grids: at most {MAX_GP_GRID_POINTS} points"
        if self.pruner != "none" and shape.fidelity == "none":
            return "pruning needs an objective that reports intermediate values"
        if len(self.ladder) > 1 and shape.fidelity != "data":
            return "a data ladder needs an objective that subsamples"
        return None


def grid_points(param: ParamSpec) -> int:
    """Points of a discrete parameter's grid (0 for a continuous float or a categorical)."""
    if isinstance(param, IntParam):
        return param.grid_points()
    if isinstance(param, FloatParam) and param.step is not None:
        return int((param.high - param.low) // param.step) + 1
    return 0


THIRDS = (1 / 9, 1 / 3, 1.0)

#: The built-in strategies; an operator adds more in the modes file (issue 6, item 1).
#: The median pruner's options in the built-in strategies: the modes' step-pruner gate.
GATED_MEDIAN: dict[str, Any] = {"min_agreement": 0.5}

BUILTIN: tuple[Strategy, ...] = (
    Strategy("random", "random"),
    Strategy("qmc", "qmc"),
    Strategy("tpe", "tpe"),
    Strategy("tpe-multivariate", "tpe", sampler_options={"multivariate": True}),
    # Both open with a short Sobol design (hpod.sampling.opening); CMA-ES then starts at its
    # best point and restarts (IPOP) when it converges (hpod.sampling.cmaes).
    Strategy("cmaes", "cmaes"),
    # Optuna's GP sampler, run in the sampler process (hpod.sampling.process): its ~0.1-1 s
    # of CPU a trial and torch stay out of the daemon. The rule's pick for small numeric
    # budgets.
    Strategy("gp", "gp"),
    Strategy("nsga2", "nsga2"),
    # hpod's median on steps is gated by rank agreement, as the modes' step pruner is
    # (hpod.pruners.AgreementGate; docs/policies.md, "Pruning only where early values ...").
    Strategy(
        "tpe-median",
        "tpe",
        "median",
        sampler_options={"multivariate": True},
        pruner_options=dict(GATED_MEDIAN),
    ),
    Strategy("tpe-hyperband", "tpe", "hyperband", sampler_options={"multivariate": True}),
    Strategy(
        "tpe-halving-ladder",
        "tpe",
        "successive_halving",
        THIRDS,
        {"multivariate": True},
        {"reduction_factor": 3},
    ),
    Strategy("cmaes-median", "cmaes", "median", pruner_options=dict(GATED_MEDIAN)),
)


def available(shape: SpaceShape, strategies: tuple[Strategy, ...] = BUILTIN) -> list[Strategy]:
    """The strategies that can apply to a study of `shape`, in their given order."""
    return [s for s in strategies if s.mask_reason(shape) is None]


SAMPLERS = ("random", "qmc", "tpe", "cmaes", "gp", "nsga2")
PRUNERS = ("none", "median", "percentile", "patient", "successive_halving", "hyperband", "wilcoxon")

#: What the network reads of an action, so it can score a strategy an operator added from
#: the samplers and pruners it has seen in others (order fixed: stored weights depend on it).
ACTION_FEATURE_NAMES: tuple[str, ...] = (
    *(f"sampler_{s}" for s in SAMPLERS),
    "multivariate",
    *(f"pruner_{p}" for p in PRUNERS),
    "ladder_rungs",
    "ladder_first",
)


def action_features(strategy: Strategy) -> list[float]:
    """The strategy as a fixed-length vector in `ACTION_FEATURE_NAMES` order."""
    return [
        *(float(strategy.sampler == s) for s in SAMPLERS),
        float(bool(strategy.sampler_options.get("multivariate"))),
        *(float(strategy.pruner == p) for p in PRUNERS),
        (len(strategy.ladder) - 1) / 3,
        strategy.ladder[0],
    ]


#: CMA-ES started mid-study searches around the best point so far with this step size (in
#: units of each parameter's range): a local finish, not a restart from the space's centre.
WARM_SIGMA = 0.1


def warm_start(strategy: Strategy, best_params: dict[str, Any] | None, spec: StudySpec) -> Strategy:
    """`strategy`, started from the study's best point when it is CMA-ES and trials exist.

    Optuna's CMA-ES ignores trials it did not sample, so switching to it mid-study would
    throw the study's progress away; centred on the best configuration with a small step it
    refines it instead (how a study "finishes with a local CMA-ES").
    """
    if strategy.sampler != "cmaes" or not best_params or "x0" in strategy.sampler_options:
        return strategy
    numeric = {
        name: best_params[name]
        for name, param in spec.space.items()
        if not isinstance(param, CategoricalParam) and name in best_params
    }
    if len(numeric) < 2:
        return strategy
    options = {**strategy.sampler_options, "x0": numeric, "sigma0": WARM_SIGMA}
    return replace(strategy, sampler_options=options)
