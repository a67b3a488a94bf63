"""A study's plan: the knobs of its mode, overridden by what its spec sets explicitly.

The plan is composed in one place, `hpod.policies.compose` (mode + spec + strategy + the
objective's fidelity), and composed again whenever the study's mode or strategy changes, so
trials dispatched after a switch follow the new plan. Its worker-side part, the *task plan*
(`TaskPlanJSON`, started by `Plan.base_task_plan`), travels in the task message as plain JSON:
the worker validates it (`hpod.workers.messages.TaskPlan`) and builds its pruner and data
ladder from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict


class TaskPlanJSON(TypedDict, total=False):
    """The task plan (the worker's part of the plan for one task's trial) as the daemon
    builds it: plain JSON in the task message, which the worker validates as
    `hpod.workers.messages.TaskPlan`, one class per side of the wire (the field meanings
    are written there). `Plan.base_task_plan` starts it; the policies fill it in before dispatch
    (`hpod.policies._base.HookContext`); the loop adds a continued trial's rung and a
    trial's CPU allowance."""

    mode: str
    ladder: list[float]
    pruner: str
    pruner_options: dict[str, Any]
    threshold: float
    threshold_min_trials: int
    fold_margin: float
    cached: dict[str, list[float]]
    cache: str
    steps_to: float
    cpu_allowance: float | None


@dataclass(frozen=True)
class Plan:
    """Everything the policies of one study decide by, for the trials dispatched now."""

    mode: str
    sampler: str
    sampler_options: dict[str, Any]
    seed: int | None
    pruner: str
    pruner_options: dict[str, Any]
    threshold: float
    threshold_min_trials: int
    ladder: tuple[float, ...]
    policies: frozenset[str]
    parallelism: int
    batch_seconds: float
    max_pack: int
    single_objective: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    #: Trials told between two decisions of the strategy policy.
    strategy_window: int = 12
    #: The fold rule's margin in standard errors for objectives over folds (0: off).
    fold_margin: float = 0.0
    #: The largest share of the trial budget transferred from past studies (`hpod.transfer`).
    transfer_share: float = 0.25
    #: Whether transfer gives the past surfaces to the sampler as a prior (`hpod.transfer.prior`).
    transfer_prior: bool = False
    #: Continuation rungs, as shares of a resumable objective's steps ((): off); see
    #: `hpod.policies.compose.continuation_applies` and `hpod.daemon.promotion`.
    steps_ladder: tuple[float, ...] = ()
    #: Continuation keeps the best 1/eta of the trials at each rung.
    eta: int = 3
    #: The mode's pruner for objectives of step fidelity (None: `pruner` prunes them too);
    #: `hpod.policies.compose` puts it in `pruner` once the fidelity is known.
    step_pruner: str | None = None
    step_pruner_options: dict[str, Any] = field(default_factory=dict)

    def uses(self, policy: str) -> bool:
        """Whether the efficiency policy named `policy` is in force."""
        return policy in self.policies

    def base_task_plan(self) -> TaskPlanJSON:
        """The worker's part of the plan before the policies add theirs: full data, no
        pruning (JSON, sent with the task)."""
        return {"mode": self.mode, "ladder": [1.0], "pruner": "none", "threshold": 0.0}
