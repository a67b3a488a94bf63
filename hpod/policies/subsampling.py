"""The subsampling policy: the data fraction as the fidelity, where it pays.

It puts the mode's ladder of data fractions (say 1/9, 1/3, 1) on each task; the worker climbs
it for objectives that subsample (`hpod.workers.evaluation`) and ignores it for the others.

A ladder only saves compute when a small fraction costs much less than the full data: an
objective with a large fixed cost per fit (small data sets, many boosting rounds) pays for
every rung almost in full, and the ladder then costs more than evaluating on all the data
at once. So the policy measures: from the rungs' CPU times and the share of trials that
reach each rung, it estimates the ladder's cost per trial against a full evaluation's, and
once the ladder is seen not to save at least a fifth, the study's next trials go straight to
full data. Under successive halving or Hyperband the share reaching rung k is taken as the
pruner's own 1/eta^k: early in a study almost every trial is promoted (there is nobody to
lose against yet), and judging by that would switch off ladders that pay in the long run.
"""

from __future__ import annotations

from statistics import median
from typing import Any

from hpod.policies._base import Policy, TrialEvent

#: The ladder must cost at most this share of full evaluations, or it is switched off: the
#: saving must be worth the ranking errors a low fidelity brings.
PAYS_BELOW = 0.8
#: Measurements (trials that climbed the ladder, full-data evaluations) before judging.
MIN_LADDER_TRIALS = 8
MIN_FULL_EVALUATIONS = 3


class SubsamplingPolicy(Policy):
    """Sends the plan's data ladder with every trial while the ladder pays."""

    name = "subsampling"

    def __init__(self) -> None:
        self.cpu: dict[float, list[float]] = {}
        self.reached: dict[float, int] = {}
        self.ladder_trials = 0
        self.cost_ratio: float | None = None

    @property
    def pays(self) -> bool:
        """False once the measured ladder costs more than `PAYS_BELOW` of full evaluation."""
        return self.cost_ratio is None or self.cost_ratio <= PAYS_BELOW

    def before_dispatch(self, trial: TrialEvent) -> None:
        """Set the task's ladder from the study's plan, unless it was measured not to pay."""
        plan = trial.plan
        if plan is not None and plan.single_objective and self.pays:
            trial.task["ladder"] = list(plan.ladder)

    def after_tell(self, trial: TrialEvent) -> None:
        """Fold the rungs' measured CPU times into the verdict."""
        rungs = (trial.cost or {}).get("rungs") or []
        if not any(float(r[0]) < 1.0 for r in rungs):
            return
        self.ladder_trials += 1
        for fraction, _value, from_cache, cpu in rungs:
            self.reached[float(fraction)] = self.reached.get(float(fraction), 0) + 1
            if not from_cache:
                self.cpu.setdefault(float(fraction), []).append(float(cpu))
        self._judge(_halving_rate(trial))

    def _judge(self, eta: float | None) -> None:
        full = self.cpu.get(1.0, [])
        if self.ladder_trials < MIN_LADDER_TRIALS or len(full) < MIN_FULL_EVALUATIONS:
            return
        expected = 0.0
        for rung, fraction in enumerate(sorted(self.cpu)):
            reach = self.reached[fraction] / self.ladder_trials if eta is None else eta**-rung
            expected += median(self.cpu[fraction]) * reach
        self.cost_ratio = expected / max(median(full), 1e-9)

    def describe(self) -> dict[str, Any]:
        """The verdict, for the study's status."""
        verdict = "measuring" if self.cost_ratio is None else ("on" if self.pays else "off")
        return {"ladder": verdict, "ladder_cost_ratio": self.cost_ratio}


def _halving_rate(trial: TrialEvent) -> float | None:
    """The reduction factor of a plan pruning with successive halving or Hyperband, else
    None (then the measured share of trials reaching each rung is used)."""
    plan = trial.plan
    if plan is None or not plan.uses("pruning"):
        return None  # nothing stops a trial: each one climbs every rung
    if plan.pruner not in ("successive_halving", "hyperband"):
        return None
    default = 4 if plan.pruner == "successive_halving" else 3
    return float(plan.pruner_options.get("reduction_factor", default))
