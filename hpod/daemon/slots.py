"""The global cap on worker tasks in flight, shared by every study, and memory back-pressure.

The study loops (`hpod.daemon.running.RunningStudies`) fill the slots with their worker
tasks and recount them whenever a task starts or ends; the resource monitor
(`hpod.daemon.monitor`) throttles them while memory is above its high-water mark; a drain
(`hpod.daemon.service`) sets the cap to 0 and waits for the count to reach it.
"""

from __future__ import annotations

from collections.abc import Callable


class TaskSlots:
    """The global cap on worker tasks in flight, shared by every study, and memory
    back-pressure. A task carries one trial, or several cheap ones packed together.

    `inflight` is derived from the real state (the tasks of the running loops), recounted by
    `RunningStudies` whenever a task starts or ends or a loop goes away: a loop that crashes
    cannot leak it.
    """

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        #: Set by the resource monitor while memory is above the high-water mark.
        self.backpressure = False
        #: Called when the throttle is lifted (`RunningStudies` wakes every loop).
        self.freed: Callable[[], None] = lambda: None

    def available(self, freed: int = 0) -> bool:
        """Whether one more trial may be dispatched (once `freed` tasks in flight ended).

        Under back-pressure at most one task is in flight, all studies together: memory
        stops growing with concurrency, yet no study stalls.
        """
        cap = min(1, self.max_inflight) if self.backpressure else self.max_inflight
        return self.inflight - freed < cap

    def set_backpressure(self, on: bool) -> None:
        """Throttle dispatch (`on`) or lift the throttle and let every study fill up again."""
        lifted = self.backpressure and not on
        self.backpressure = on
        if lifted:
            self.freed()
