"""The policy chain: small units with no-op hooks around dispatch and tell.

Modelled on dramatiq's middleware: `before_*` hooks run in chain order, `after_*` hooks in
reverse, so policies nest like layers. A policy that wants a trial not to be evaluated (a cache
hit) raises `SkipEvaluation` with the outcome to tell instead. Any other exception from a hook
is logged and the policy is skipped for that call: one faulty policy never stops a study.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog

from hpod.errors import HpodError
from hpod.policies.plan import Plan, TaskPlanJSON
from hpod.schema import StudySpec

log = structlog.get_logger("hpod.policies")


class SkipEvaluation(HpodError):
    """Raised by a `before_dispatch` hook: tell these values now, do not dispatch the trial."""

    def __init__(
        self, values: list[float], reason: str, cost: dict[str, Any] | None = None
    ) -> None:
        super().__init__(reason)
        self.values = values
        self.reason = reason
        self.cost = cost or {}


@dataclass
class HookContext:
    """What a policy's hook is handed about one trial: its study, number, params, the plan
    in force and, after tell, its outcome.

    Before dispatch, `task_plan` is the worker's part of the plan (the task plan,
    `TaskPlanJSON`) that the policies fill in: the data ladder, the pruners, cached rungs.
    After tell, `cost` is what the worker reported the evaluation cost (CPU seconds, data
    evaluated, rungs reached).
    """

    spec: StudySpec
    number: int
    params: dict[str, Any]
    plan: Plan | None = None
    task_plan: TaskPlanJSON = field(default_factory=lambda: TaskPlanJSON())
    state: str | None = None
    values: list[float] | None = None
    duration: float | None = None
    cost: dict[str, Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class Policy:
    """Base class of policies: every hook is a no-op; override what the policy needs."""

    #: The name a mode's `policies` list switches it on by.
    name: ClassVar[str] = ""

    def before_dispatch(self, trial: HookContext) -> None:
        """Called before a trial goes to a worker; may adjust it or raise `SkipEvaluation`."""

    def after_tell(self, trial: HookContext) -> None:
        """Called after a trial's outcome is persisted in Optuna."""

    def describe(self) -> dict[str, Any]:
        """What the policy has measured or decided, for the study's status (JSON)."""
        return {}


class PolicyChain:
    """An ordered list of policies with failure isolation."""

    def __init__(self, policies: list[Policy] | None = None) -> None:
        self.policies: list[Policy] = list(policies or [])

    def add(self, policy: Policy, *, before: type[Policy] | None = None) -> None:
        """Append `policy`, or insert it before the first policy of type `before`."""
        if any(type(p) is type(policy) for p in self.policies):
            raise ValueError(f"{type(policy).__name__} is already in the chain")
        index = next(
            (i for i, p in enumerate(self.policies) if before and isinstance(p, before)),
            len(self.policies),
        )
        self.policies.insert(index, policy)

    def before_dispatch(self, trial: HookContext) -> None:
        """Run `before_dispatch` hooks in order; `SkipEvaluation` propagates on purpose."""
        for policy in self.policies:
            if not _in_force(policy, trial):
                continue
            try:
                policy.before_dispatch(trial)
            except SkipEvaluation:
                raise
            except Exception:
                log.exception("policy.failed", policy=type(policy).__name__, hook="before_dispatch")

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each named policy's own report, by name."""
        return {p.name: p.describe() for p in self.policies if p.name and p.describe()}

    def after_tell(self, trial: HookContext) -> None:
        """Run `after_tell` hooks in reverse order."""
        for policy in reversed(self.policies):
            if not _in_force(policy, trial):
                continue
            try:
                policy.after_tell(trial)
            except Exception:
                log.exception("policy.failed", policy=type(policy).__name__, hook="after_tell")


def _in_force(policy: Policy, trial: HookContext) -> bool:
    """A named policy runs only when the trial's plan lists it (no plan: all run)."""
    return trial.plan is None or not policy.name or trial.plan.uses(policy.name)
