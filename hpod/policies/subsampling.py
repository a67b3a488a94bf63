"""The subsampling policy: the data fraction as the fidelity, where it pays.

It puts the mode's ladder of data fractions (say 1/9, 1/3, 1) on each task; the worker climbs
it for objectives that subsample (`hpod.workers.evaluation`) and ignores it for the others.

A ladder re-trains a trial at every rung, so it saves compute only where a small fraction
costs much less than the full data: an objective with a large fixed cost per fit (small data
sets, many boosting rounds) pays for every rung almost in full. So the policy measures, after
every trial told and over its latest `MAX_MEASURED` ladder trials, what a rung really costs
against the same trial's full evaluation and how many trials reach each rung, and judges with
`hpod.policies.ladder_payoff` (the arithmetic, the break-even and the minimum of trials are
written down there). Once the verdict is "off"
the study's next trials go straight to full data; the study's loop stores the verdict on
the study and composes its plan without the ladder (`hpod.daemon.ladder`), so a restart keeps it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hpod.policies._base import HookContext, Policy
from hpod.policies.ladder_payoff import LadderPayoff, measure

#: The latest ladder trials measured: a bounded measurement (each verdict reads them all), and
#: the reach of a study's recent trials, not of its first ones.
MAX_MEASURED = 500


class SubsamplingPolicy(Policy):
    """Sends the plan's data ladder with every trial while the ladder pays."""

    name = "subsampling"

    def __init__(self) -> None:
        #: The cost records of the latest trials that climbed the ladder.
        self.costs: deque[dict[str, Any]] = deque(maxlen=MAX_MEASURED)
        self.payoff: LadderPayoff | None = None
        #: A verdict stored on the study and restored after a restart (final).
        self.restored: dict[str, Any] | None = None

    def copy(self) -> SubsamplingPolicy:
        """An independent copy at the same point (a simulated study's counterfactual branch);
        the cost records are shared, as nothing changes them."""
        other = SubsamplingPolicy()
        other.costs = deque(self.costs, maxlen=MAX_MEASURED)
        other.payoff = self.payoff
        other.restored = None if self.restored is None else dict(self.restored)
        return other

    @property
    def cost_ratio(self) -> float | None:
        """A ladder trial's measured cost in full evaluations (None while measuring)."""
        if self.restored is not None:
            return self.restored.get("expected")
        return None if self.payoff is None else self.payoff.expected

    @property
    def pays(self) -> bool:
        """False once the ladder was measured not to pay."""
        if self.restored is not None:
            return self.restored.get("verdict") != "off"
        return self.payoff is None or self.payoff.verdict != "off"

    def restore(self, stored: dict[str, Any]) -> None:
        """Follow a verdict stored on the study (after a restart): it is final."""
        self.restored = dict(stored)

    def seed(self, costs: list[dict[str, Any]], trial: HookContext) -> None:
        """Measure the trials told before a restart, as if told now."""
        for cost in costs:
            self._add(cost)
        self._judge(trial)

    def before_dispatch(self, trial: HookContext) -> None:
        """Set the task's ladder from the study's plan, unless it was measured not to pay."""
        plan = trial.plan
        if plan is not None and plan.single_objective and self.pays:
            trial.task_plan["ladder"] = list(plan.ladder)

    def after_tell(self, trial: HookContext) -> None:
        """Fold the trial's rungs into the measurement and judge again."""
        if self._add(trial.cost or {}):
            self._judge(trial)

    def _add(self, cost: dict[str, Any]) -> bool:
        rungs = cost.get("rungs") or []
        if self.restored is not None or not any(float(r[0]) < 1.0 for r in rungs):
            return False
        self.costs.append(cost)
        return True

    def _judge(self, trial: HookContext) -> None:
        if self.restored is not None or (self.payoff is not None and not self.pays):
            return  # "off" is final: no trial climbs the ladder any more
        plan = trial.plan
        if plan is None or len(plan.ladder) < 2:
            return
        self.payoff = measure(self.costs, plan.ladder, _halving_rate(trial))

    def describe(self) -> dict[str, Any]:
        """The verdict, for the study's status."""
        if self.restored is not None:
            return {
                "ladder": self.restored.get("verdict"),
                "ladder_cost_ratio": self.restored.get("expected"),
                "ladder_reason": self.restored.get("reason"),
            }
        payoff = self.payoff
        return {
            "ladder": "measuring" if payoff is None else payoff.verdict,
            "ladder_cost_ratio": self.cost_ratio,
            "ladder_reason": None if payoff is None else payoff.reason(),
        }


def _halving_rate(trial: HookContext) -> float | None:
    """The reduction factor of a plan pruning with successive halving or Hyperband, else
    None (it sets how many trials a verdict waits for: `ladder_payoff.min_ladder_trials`)."""
    plan = trial.plan
    if plan is None or not plan.uses("pruning"):
        return None  # nothing stops a trial: each one climbs every rung
    if plan.pruner not in ("successive_halving", "hyperband"):
        return None
    default = 4 if plan.pruner == "successive_halving" else 3
    return float(plan.pruner_options.get("reduction_factor", default))
