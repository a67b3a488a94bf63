"""What a study looks like to the strategy selector: a fixed-length vector of numbers.

Issue 6 names the features: the space (dimensions; shares of float, int, categorical,
conditional and log parameters), directions, budget used and left, evaluation cost and its
spread, a noise estimate, the recent improvement rate of the normalised best, the prune rate,
the rank agreement between fidelities, and the mode. All are scaled to about [0, 1] (or
[-1, 1]) so that one network can read studies of any size; `FEATURE_NAMES` fixes their order,
which a stored set of weights depends on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean, pstdev
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpod.engine import COST_ATTR
from hpod.policies.strategy.actions import Fidelity
from hpod.schema import CategoricalParam, FloatParam, IntParam, StudySpec

MODES = ("fast", "balanced", "thorough")

FEATURE_NAMES: tuple[str, ...] = (
    "log_dimensions",
    "share_float",
    "share_int",
    "share_categorical",
    "share_conditional",
    "share_log",
    "several_objectives",
    "fidelity_data",
    "fidelity_epochs",
    "log_told",
    "budget_used",
    "budget_left",
    "log_cost",
    "cost_spread",
    "noise",
    "improvement_rate",
    "prune_rate",
    "rank_agreement",
    *(f"mode_{m}" for m in MODES),
)


def infer_fidelity(trials: Sequence[FrozenTrial]) -> Fidelity:
    """The objective's fidelity as its trials show it: "data" when the worker reported that
    the objective subsamples, "epochs" when trials report intermediate values by themselves,
    "none" otherwise (also before any trial finished)."""
    for t in trials:
        if t.user_attrs.get(COST_ATTR, {}).get("fidelity") == "data":
            return "data"
    if any(t.intermediate_values for t in trials if t.state.is_finished()):
        return "epochs"
    return "none"


def features(
    spec: StudySpec,
    trials: Sequence[FrozenTrial],
    mode: str,
    budget_trials: int | None,
    window: int = 10,
    *,
    budget_used: float | None = None,
    fidelity: Fidelity | None = None,
) -> list[float]:
    """The feature vector of `spec`'s study given its `trials` so far, in `FEATURE_NAMES`
    order. `budget_used` (share of the budget spent, by whatever measure) overrides the
    share of `budget_trials` created; `fidelity` overrides what the trials show."""
    fidelity = fidelity or infer_fidelity(trials)
    params = list(spec.space.values())
    n = max(1, len(params))
    finished = [t for t in trials if t.state.is_finished()]
    complete = [t for t in finished if t.state == TrialState.COMPLETE and t.values]
    costs = [float(t.user_attrs.get(COST_ATTR, {}).get("cpu") or 0.0) for t in finished]
    if budget_used is not None:
        used, known = budget_used, True
    else:
        used, known = (len(trials) / budget_trials if budget_trials else 0.0), bool(budget_trials)
    values = {
        "log_dimensions": math.log1p(len(params)) / math.log1p(64),
        "share_float": sum(isinstance(p, FloatParam) for p in params) / n,
        "share_int": sum(isinstance(p, IntParam) for p in params) / n,
        "share_categorical": sum(isinstance(p, CategoricalParam) for p in params) / n,
        "share_conditional": sum(p.condition is not None for p in params) / n,
        "share_log": sum(bool(getattr(p, "log", False)) for p in params) / n,
        "several_objectives": float(len(spec.directions) > 1),
        "fidelity_data": float(fidelity == "data"),
        "fidelity_epochs": float(fidelity == "epochs"),
        "log_told": math.log1p(len(finished)) / math.log1p(1000),
        "budget_used": min(1.0, used),
        "budget_left": max(0.0, 1.0 - used) if known else 1.0,
        "log_cost": math.log10(1e-4 + mean(costs)) / 4 if costs else 0.0,
        "cost_spread": pstdev(costs) / (mean(costs) + 1e-9) if len(costs) > 1 else 0.0,
        "noise": _noise(complete, spec),
        "improvement_rate": _improvement(complete, spec, window),
        "prune_rate": (
            sum(t.state == TrialState.PRUNED for t in finished) / len(finished) if finished else 0.0
        ),
        "rank_agreement": _rank_agreement(finished),
        **{f"mode_{m}": float(mode == m) for m in MODES},
    }
    return [float(max(-1.0, min(1.0, values[name]))) for name in FEATURE_NAMES]


def _sign(spec: StudySpec) -> float:
    return 1.0 if spec.directions[0] == "minimize" else -1.0


def _normalised(complete: Sequence[FrozenTrial], spec: StudySpec) -> list[float]:
    """The first objective of the complete trials, in order, scaled to [0, 1] (0 = best)."""
    ys = [_sign(spec) * t.values[0] for t in sorted(complete, key=lambda t: t.number)]
    if not ys:
        return []
    low, high = min(ys), max(ys)
    return [(y - low) / (high - low) if high > low else 0.0 for y in ys]


def _improvement(complete: Sequence[FrozenTrial], spec: StudySpec, window: int) -> float:
    """How much the normalised best fell over the last `window` complete trials."""
    ys = _normalised(complete, spec)
    if len(ys) <= window:
        return 1.0 if len(ys) > 1 else 0.0
    return min(ys[:-window]) - min(ys)


def _noise(complete: Sequence[FrozenTrial], spec: StudySpec) -> float:
    """Spread of the values of configurations evaluated more than once (0 if none were)."""
    by_params: dict[str, list[float]] = {}
    for t in complete:
        by_params.setdefault(repr(sorted(t.params.items())), []).append(t.values[0])
    spreads = [pstdev(v) for v in by_params.values() if len(v) > 1]
    if not spreads:
        return 0.0
    scale = pstdev([t.values[0] for t in complete]) or 1.0
    return mean(spreads) / scale


def _rank_agreement(finished: Sequence[FrozenTrial]) -> float:
    """Spearman correlation between the first reported rung and the full-data value, over
    trials that have both (0 when fewer than four have)."""
    pairs: list[tuple[float, float]] = []
    for t in finished:
        rungs: list[Any] = t.user_attrs.get(COST_ATTR, {}).get("rungs") or []
        if len(rungs) > 1 and float(rungs[-1][0]) == 1.0:
            pairs.append((float(rungs[0][1]), float(rungs[-1][1])))
    if len(pairs) < 4:
        return 0.0
    low = _ranks([p[0] for p in pairs])
    full = _ranks([p[1] for p in pairs])
    m = (len(pairs) - 1) / 2
    cov = sum((a - m) * (b - m) for a, b in zip(low, full, strict=True))
    var = sum((a - m) ** 2 for a in low)
    return cov / var if var else 0.0


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = float(rank)
    return ranks
