"""Which plan and which efficiency policies a study's loop runs under.

A study's plan starts from its mode in force (`hpod.daemon.modes_in_force`: its own mode,
switched live and stored on the study, or the daemon's default) resolved against its spec
(`hpod.policies.compose.resolve_plan`); the loop lays its strategy over it
(`hpod.daemon.studies.StudyRun`). A mode switch or a modes reload resolves every running
study's plan again (`StudyPlans.replan`).
"""

from __future__ import annotations

from collections.abc import Iterable

from hpod.cache import ResultCache
from hpod.daemon.modes_in_force import ModesInForce
from hpod.daemon.store import StudyStore
from hpod.daemon.studies import StudyRun
from hpod.engine import MODE_ATTR
from hpod.policies import PolicyChain
from hpod.policies.batching import BatchingPolicy
from hpod.policies.caching import CachePolicy
from hpod.policies.compose import resolve_plan
from hpod.policies.plan import Plan
from hpod.policies.pruning import PruningPolicy
from hpod.policies.subsampling import SubsamplingPolicy
from hpod.schema import StudySpec


def policy_chain(cache: ResultCache) -> PolicyChain:
    """A study's efficiency policies, in order: the cache first (a hit needs nothing else),
    then the data ladder and the pruners it carries, then batching."""
    return PolicyChain([CachePolicy(cache), SubsamplingPolicy(), PruningPolicy(), BatchingPolicy()])


class StudyPlans:
    """Resolves a study's plan under its mode in force (see the module)."""

    def __init__(self, store: StudyStore, modes_in_force: ModesInForce) -> None:
        self.store = store
        self.modes_in_force = modes_in_force

    async def plan_of(self, spec: StudySpec) -> Plan:
        """The study's plan under its mode in force (a live switch is stored on the study)."""
        attrs = await self.store.call(self.store.study_attrs, spec.name)
        mode, knobs = self.modes_in_force.in_force(spec.name, attrs.get(MODE_ATTR) or spec.mode)
        return resolve_plan(spec, mode, knobs)

    async def replan(self, runs: Iterable[StudyRun]) -> None:
        """Re-resolve the plan of each of `runs` (after a mode switch or a modes reload);
        each keeps its strategy."""
        for run in list(runs):
            await run.set_mode_plan(await self.plan_of(run.spec))
