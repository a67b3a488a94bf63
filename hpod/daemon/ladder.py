"""Whether a study's data ladder pays, as its loop follows it: the stored "off" verdict.

The subsampling policy (`hpod.policies.subsampling`) measures what the ladder's rungs cost
against full evaluations and judges with `hpod.policies.ladder_payoff`. Once its verdict is
"off", the study's loop (`hpod.daemon.studies.StudyRun`) stores it on the study
(``hpod:ladder``, `LADDER_ATTR`) and composes every plan from then on without the ladder,
under any strategy setting, ``mode`` too. It is checked before every ask: a cheap look at the
policy. After a restart the stored verdict is followed; without one, the trials told before
the restart are measured again, so the verdict does not start from nothing.
"""

from __future__ import annotations

import time
from typing import Any

from optuna.trial import TrialState

from hpod.daemon.store import StudyStore
from hpod.engine import COST_ATTR
from hpod.policies import HookContext, PolicyChain
from hpod.policies.plan import Plan
from hpod.policies.subsampling import SubsamplingPolicy
from hpod.schema import StudySpec


class LadderWatch:
    """One study's view of its subsampling policy's verdict on the data ladder."""

    def __init__(self, policies: PolicyChain) -> None:
        self.policy = next((p for p in policies.policies if isinstance(p, SubsamplingPolicy)), None)
        #: The stored verdict that turned the data ladder off (None: the ladder is on).
        self.off: dict[str, Any] | None = None

    def pays(self) -> bool | None:
        """The subsampling policy's verdict on the data ladder (None while it measures)."""
        policy = self.policy
        return None if policy is None or policy.cost_ratio is None else policy.pays

    async def resume(self, store: StudyStore, spec: StudySpec, plan: Plan, stored: Any) -> None:
        """Follow a stored "ladder off" verdict; without one, measure the trials told before
        a restart (when `plan` has a ladder)."""
        policy = self.policy
        if isinstance(stored, dict) and stored.get("verdict") == "off":
            self.off = stored
            if policy is not None:
                policy.restore(stored)
            return
        if policy is None or len(plan.ladder) < 2:
            return
        trials = await store.call(store.trials, spec, None)
        costs = [
            cost
            for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and isinstance(cost := t.user_attrs.get(COST_ATTR), dict)
        ]
        if costs:
            policy.seed(costs, HookContext(spec, -1, {}, plan=plan))

    def settled(self, plan: Plan) -> bool:
        """Whether no verdict can be due at the next check whatever the next tell: one stored
        already, no policy, or none pending and `plan` without a ladder to judge (the
        policy's `after_tell` judges only a plan with one)."""
        policy = self.policy
        if self.off is not None or policy is None:
            return True
        pending = policy.payoff is not None and policy.payoff.verdict == "off"
        return not pending and len(plan.ladder) < 2

    def turned_off(self, told: int) -> dict[str, Any] | None:
        """The verdict to store when the policy has just judged the ladder not to pay (once;
        `told`: the trials told by then), else None."""
        policy = self.policy
        if self.off is not None or policy is None or policy.payoff is None:
            return None
        if policy.payoff.verdict != "off":
            return None
        self.off = {**policy.payoff.to_json(), "told": told, "at": time.time()}
        return self.off
