"""What `hpod status` and `hpod list` show: a study's counts, best, spend and live state.

A running study's figures come from its loop (in flight, budget, spend, strategy, transfer,
plan); a study whose loop does not run is read from storage, its spend counted from its
stored trials as its loop would (`hpod.daemon.budget`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from hpod.daemon.budget import Spend
from hpod.daemon.running import RunningStudies
from hpod.daemon.store import StudyStore
from hpod.daemon.strategy import strategy_status
from hpod.daemon.transfer import transfer_status
from hpod.schema import StudySpec


class StudyReports:
    """A study's status and the list of studies, from storage and the running loops."""

    def __init__(self, store: StudyStore, running: RunningStudies) -> None:
        self.store = store
        self.running = running

    async def status(self, name: str) -> dict[str, Any]:
        """Counts, best and live state of study `name`."""
        try:
            spec = await self.store.call(self.store.spec, name)
        except ValidationError:  # stored by an older daemon: marked failed, shown as such
            return {**await self.store.call(self.store.raw_summary, name), "running": False}
        summary = await self.store.call(self.store.summary, spec)
        run = self.running.runs.get(name)
        summary["in_flight"] = len(run.inflight) if run else 0
        # Continued trials waiting at a rung for a promotion (docs/policies.md#continuation).
        summary["paused_trials"] = len(run.paused_trials) if run else 0
        summary["running"] = run is not None
        if run is not None:
            summary["budget"] = run.budget.model_dump(mode="json")
            summary["spent"] = run.spent()
        else:
            summary["spent"] = await self._spent(spec)
        summary["efficiency"] = await self.store.call(self.store.efficiency, spec)
        attrs = await self.store.call(self.store.study_attrs, name)
        summary["strategy"] = strategy_status(attrs, spec)
        if run is not None:
            summary["strategy"].update(run.strategy_status())
        summary["transfer"] = transfer_status(attrs, spec)
        if run is not None:
            summary["transfer"].update(run.transfer.status())
        if run is not None:
            summary["mode"] = run.plan.mode
            summary["plan"] = {
                "sampler": run.plan.sampler,
                "pruner": run.plan.pruner,
                "ladder": list(run.plan.ladder),
                "policies": sorted(run.plan.policies),
                "parallelism": run.plan.parallelism,
                "pack": run.next_pack_size(),
                "policies_report": run.policies.describe(),
            }
        return summary

    async def _spent(self, spec: StudySpec) -> dict[str, Any]:
        """What a study whose loop is not running spent, counted from its stored trials
        as its loop would (`hpod.daemon.budget`); no `seconds`: it no longer runs."""
        trials = await self.store.call(self.store.trials, spec, None)
        spend = Spend.of_trials(trials, spec.trial_timeout)
        return {"trials": len(trials), "seconds": None, **spend.report()}

    async def list(self) -> list[dict[str, Any]]:
        """A summary line per study."""
        return await self.store.call(self.store.list_studies)
