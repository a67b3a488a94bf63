"""The caching policy: a configuration already evaluated is told at once, never dispatched.

Full-data results are served whole (the trial is told from the cache and costs nothing).
Results at lower fidelities — the rungs of a data ladder — travel with the task, so a
configuration that was pruned on a small fraction before is not re-trained on it: the worker
reports the cached value again (the pruners must see it) and only computes what is new.
"""

from __future__ import annotations

from typing import Any

from hpod.cache import CACHE, ResultCache, cache_key
from hpod.policies._base import HookContext, Policy, SkipEvaluation

#: The note a trial gets when the cache was looked up for it: "hit", "partial" or "miss".
LOOKUP_NOTE = "cache_lookup"


class CachePolicy(Policy):
    """Serves and fills the shared result cache."""

    name = CACHE

    def __init__(self, cache: ResultCache) -> None:
        self.cache = cache

    def _key(self, trial: HookContext, version: str, fidelity: float) -> str:
        assert trial.spec.objective is not None
        return cache_key(
            trial.spec.objective, version, trial.spec.objective_kwargs, trial.params, fidelity
        )

    def before_dispatch(self, trial: HookContext) -> None:
        """Tell a full-data hit now; attach cached lower rungs to the task.

        A trial whose full-data result was looked up and not found is noted a miss (the
        metrics count it), also when some lower rungs were found: its full evaluation runs.
        Before any result of the objective is known there is nothing to look up, no note.
        """
        if trial.spec.objective is None:
            return
        version = self.cache.objective_version(trial.spec.objective)
        if version is None:  # no result of this objective seen yet: nothing can be cached
            return
        full = self.cache.get(self._key(trial, version, 1.0))
        trial.notes[LOOKUP_NOTE] = "hit" if full is not None else "miss"
        if full is not None:
            cost = {"cpu": 0.0, "data": 0.0, CACHE: "hit", "cached_cpu": full.get("cpu")}
            raise SkipEvaluation(list(full["values"]), CACHE, cost)
        cached: dict[str, Any] = {}
        for fraction in trial.task_plan.get("ladder", [1.0])[:-1]:
            entry = self.cache.get(self._key(trial, version, fraction))
            if entry is not None:
                cached[str(fraction)] = list(entry["values"])
        if cached:
            trial.task_plan["cached"] = cached
            trial.notes[CACHE] = "partial"

    def after_tell(self, trial: HookContext) -> None:
        """Store what the worker computed: every rung, and the full result when complete."""
        cost = trial.cost
        if trial.spec.objective is None or not cost or "objective_version" not in cost:
            return
        if cost.get("deterministic") is False:  # another call could give another result
            return
        version = str(cost["objective_version"])
        self.cache.set_objective_version(trial.spec.objective, version)
        for fraction, value, from_cache, cpu in cost.get("rungs", []):
            if from_cache or float(fraction) == 1.0:
                continue
            entry = {"values": [value], "cpu": cpu}
            self.cache.put(self._key(trial, version, float(fraction)), entry)
        if trial.state == "complete" and trial.values is not None:
            entry = {"values": list(trial.values), "cpu": cost.get("full_cpu")}
            self.cache.put(self._key(trial, version, 1.0), entry)
