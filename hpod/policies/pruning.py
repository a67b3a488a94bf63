"""The pruning policy: which pruners the worker asks after each intermediate report.

Optuna's pruners (median, percentile, patient, successive halving, Hyperband, Wilcoxon) plus
hpod's aggressive threshold, as the study's plan names them, and the fold rule's margin for
objectives over folds; the worker builds them from this JSON
(`hpod.pruners.build_pruners`, `FoldPruner`). Without this policy nothing is pruned.
"""

from __future__ import annotations

from hpod.policies._base import HookContext, Policy
from hpod.policies.plan import Plan


class PruningPolicy(Policy):
    """Sends the plan's pruners with every trial."""

    name = "pruning"

    def before_dispatch(self, trial: HookContext) -> None:
        """Set the task's pruner and threshold from the study's plan."""
        plan = trial.plan
        if plan is None or not plan.single_objective:
            return
        trial.task_plan["pruner"] = plan.pruner
        # A step pruner's threshold option travels once, as the task's threshold.
        options = {k: v for k, v in plan.pruner_options.items() if k != "threshold"}
        trial.task_plan["pruner_options"] = options
        trial.task_plan["threshold"] = threshold_of(plan)
        trial.task_plan["threshold_min_trials"] = plan.threshold_min_trials
        trial.task_plan["fold_margin"] = plan.fold_margin


def threshold_of(plan: Plan) -> float:
    """The plan's threshold where the trial's steps are an objective's own (epochs, passes):
    the step pruner's ``threshold`` option when it gives one, even when a strategy's pruner
    replaced the step pruner (the threshold is the mode's, not the pruner's); elsewhere the
    mode's `threshold`. fast gives 0 there: 5 % of |best| is a hair on a loss near 0.1."""
    if plan.extra.get("pruner_for") == "steps" and "threshold" in plan.step_pruner_options:
        return float(plan.step_pruner_options["threshold"])
    return plan.threshold
