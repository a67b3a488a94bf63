"""The reward of one decision: how much the study's best improved per unit of compute.

Issue 6 defines it as the normalised improvement of the best value per compute-second over
the window the decision governed, weighted by the mode. Both parts are made scale-free so one
network can learn from studies of any objective:

- improvement is measured on the study's own value range so far (0 = no progress, 1 = the
  window went from the worst value seen to the best), from the best before the window; the
  study's first window has no best before it and is judged against the study's start, its
  first value (what one configuration gives before any search). Judged against its own
  worst value instead, every first window scored 1 whatever the strategy did (issue 14);
- compute is counted in full evaluations: CPU seconds of the window's trials (every rung,
  pruned trials included) over the median CPU seconds of one full evaluation.

The mode sets how much compute matters: `fast` divides by it, `thorough` ignores it and
`balanced` is in between (by its square root).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from optuna.trial import FrozenTrial, TrialState

from hpod.engine import COST_ATTR
from hpod.schema import StudySpec

#: Exponent of the compute in the reward, by mode (unknown modes count as balanced).
COMPUTE_WEIGHT = {"fast": 1.0, "balanced": 0.5, "thorough": 0.0}


def target(reward: float) -> float:
    """What the policy's networks predict of a reward: the reward compressed (a few lucky
    windows with huge rewards must not dominate the fit); monotone, so the best action stays
    the best. The agent compares an exploration's reward with predictions in these units."""
    return math.copysign(math.log1p(10 * abs(reward)), reward)


@dataclass(frozen=True)
class WindowOutcome:
    """What one decision's window of trials achieved."""

    reward: float
    #: Fall of the normalised best over the window, in [0, 1].
    improvement: float
    #: Compute spent in the window, in full evaluations.
    compute: float
    #: Trials of the window that finished.
    trials: int


def trial_cost(trial: FrozenTrial) -> float:
    """CPU seconds a trial cost (every rung it ran), 0 when unknown."""
    return float(trial.user_attrs.get(COST_ATTR, {}).get("cpu") or 0.0)


def full_evaluation_cost(trials: Sequence[FrozenTrial]) -> float | None:
    """Median CPU seconds of one full-fidelity evaluation, from the trials that ran one."""
    costs = []
    for t in trials:
        cost = t.user_attrs.get(COST_ATTR) or {}
        full = cost.get("full_cpu")
        if full is None and t.state == TrialState.COMPLETE and not cost.get("cache"):
            full = cost.get("cpu")
        if full:
            costs.append(float(full))
    return median(costs) if costs else None


def window_reward(
    spec: StudySpec, trials: Sequence[FrozenTrial], first_trial: int, mode: str
) -> WindowOutcome | None:
    """The outcome of the window that starts at trial number `first_trial` (every trial
    numbered from it that finished), or None if none finished."""
    sign = 1.0 if spec.directions[0] == "minimize" else -1.0
    window = [t for t in trials if t.number >= first_trial and t.state.is_finished()]
    if not window:
        return None
    values = {
        t.number: sign * t.values[0] for t in trials if t.state == TrialState.COMPLETE and t.values
    }
    before = [v for n, v in values.items() if n < first_trial]
    inside = [v for n, v in values.items() if n >= first_trial]
    improvement = 0.0
    if inside and values:
        low, high = min(values.values()), max(values.values())
        # The best before the window; for the study's first window, its first value.
        start = min(before) if before else values[min(n for n in values if n >= first_trial)]
        if high > low:
            improvement = max(0.0, (start - min(inside)) / (high - low))
    unit = full_evaluation_cost(trials) or 0.0
    spent = sum(trial_cost(t) for t in window)
    compute = spent / unit if unit > 0 else float(len(window))
    weight = COMPUTE_WEIGHT.get(mode, 0.5)
    reward = improvement / max(compute, 0.05) ** weight
    return WindowOutcome(reward, improvement, compute, len(window))
