"""What observes the running studies: the metrics registry, the resource monitor and the
per-study time breakdowns, and the reports built from them (``/doctor``, ``/workers``).

`hpod.daemon.metrics`, `hpod.daemon.monitor` and `hpod.daemon.doctor` each hold one of them;
this builds and wires the three (the monitor throttles the `TaskSlots` and writes the
metrics; the metrics read the in-flight counts of the running loops when scraped).
"""

from __future__ import annotations

from typing import Any

from hpod.config import Settings
from hpod.daemon.doctor import Doctor
from hpod.daemon.metrics import Metrics
from hpod.daemon.monitor import Monitor
from hpod.daemon.running import RunningStudies
from hpod.daemon.slots import TaskSlots
from hpod.daemon.store import StudyStore


class Observers:
    """The metrics, the resource monitor (started and stopped with the daemon) and the
    doctor, over the running studies."""

    def __init__(
        self, settings: Settings, store: StudyStore, slots: TaskSlots, running: RunningStudies
    ) -> None:
        self.store = store
        self.running = running
        self.metrics = Metrics(settings.max_finished_study_series)
        self.metrics.watch_inflight(
            lambda: slots.inflight,
            lambda: {name: len(run.inflight) for name, run in running.runs.items()},
        )
        self.monitor = Monitor(settings, slots, self.metrics)
        self.doctor = Doctor(settings.max_finished_study_series, lambda name: name in running.runs)

    async def doctor_study(self, name: str) -> dict[str, Any]:
        """Where study `name`'s time went, and its bottleneck."""
        await self.store.call(self.store.spec, name)  # raises not_found for unknown names
        return {**self.doctor.report(name), "running": name in self.running.runs}

    def doctor_all(self) -> dict[str, Any]:
        """Every study's breakdown, the process resources and the back-pressure state."""
        return {"studies": self.doctor.reports(), "resources": self.monitor.status()}

    async def workers(self) -> dict[str, Any]:
        """The live workers, as the broker in force can tell."""
        return await self.monitor.workers()
