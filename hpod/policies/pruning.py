"""Pruners built from a plan: Optuna's own, plus an aggressive relative threshold.

Steps follow Optuna's semantics: an objective reports ``(value, step)`` and the pruners
compare trials at the same step. On a data ladder the step is the percentage of the data a
rung used (11, 33, 100 for thirds of thirds), so trials on different ladders — a study whose
mode changed — still compare at the steps they share, and successive halving's rungs line up
with the ladder's.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def fidelity_step(fraction: float) -> int:
    """The step at which a rung on `fraction` of the data reports: its percentage."""
    return max(1, round(fraction * 100))


class ThresholdPruner(BasePruner):
    """Prune a trial clearly worse than the best trial at the same step.

    Optuna's pruners compare with the median or a percentile; this one is the aggressive
    complement: once `min_trials` other trials have reported at a step, a trial worse than
    their best by more than `threshold` times |best| stops there.
    """

    def __init__(self, threshold: float, min_trials: int = 8) -> None:
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.min_trials = min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether `trial`'s latest intermediate value is clearly worse than the best."""
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
            if step in t.intermediate_values and t.number != trial.number
        ]
        others = [v for v in others if not math.isnan(v)]
        if len(others) < self.min_trials:
            return False
        minimize = study.direction == StudyDirection.MINIMIZE
        best = min(others) if minimize else max(others)
        margin = self.threshold * max(abs(best), 1e-12)
        return value > best + margin if minimize else value < best - margin


def build_pruners(
    name: str,
    options: dict[str, Any],
    threshold: float = 0.0,
    threshold_min_trials: int = 8,
    ladder: list[float] | None = None,
) -> list[BasePruner]:
    """The pruners a plan names; a trial stops when any of them says so.

    On a data ladder, successive halving and Hyperband start at the first rung's step, so each
    rung of the ladder is one of their rungs.
    """
    options = dict(options)
    pruners: list[BasePruner] = []
    first_step = fidelity_step(ladder[0]) if ladder and len(ladder) > 1 else None
    if name == "median":
        pruners.append(optuna.pruners.MedianPruner(**options))
    elif name == "percentile":
        options.setdefault("percentile", 25.0)
        pruners.append(optuna.pruners.PercentilePruner(**options))
    elif name == "patient":
        patience = int(options.pop("patience", 3))
        min_delta = float(options.pop("min_delta", 0.0))
        wrapped = optuna.pruners.MedianPruner(**options)
        pruners.append(optuna.pruners.PatientPruner(wrapped, patience, min_delta))
    elif name == "successive_halving":
        if first_step is not None:
            options.setdefault("min_resource", first_step)
        pruners.append(optuna.pruners.SuccessiveHalvingPruner(**options))
    elif name == "hyperband":
        if first_step is not None:
            options.setdefault("min_resource", first_step)
            options.setdefault("max_resource", 100)
        pruners.append(optuna.pruners.HyperbandPruner(**options))
    elif name == "wilcoxon":
        pruners.append(optuna.pruners.WilcoxonPruner(**options))
    elif name != "none":
        raise ValueError(f"unknown pruner {name!r}")
    if threshold > 0:
        pruners.append(ThresholdPruner(threshold, threshold_min_trials))
    return pruners


def should_prune(study: optuna.Study, trial: FrozenTrial, pruners: list[BasePruner]) -> bool:
    """Ask each pruner in turn, as `study.pruner` (Hyperband reads its brackets from there)."""
    for pruner in pruners:
        study.pruner = pruner
        if pruner.prune(study, trial):
            return True
    return False
