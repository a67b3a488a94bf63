"""The running study loops, by name, and what they share: the task slots and the stall watch.

The loops' worker tasks fill the daemon's `TaskSlots` (`hpod.daemon.slots`); a freed slot
wakes every loop; a stall of the whole daemon (measured by the 1 s ticker,
`hpod.daemon.ticker`) pushes back every deadline in flight. The supervisor
(`hpod.daemon.supervisor`) adds and removes the loops; results and requests find a study's
loop here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from hpod.daemon.slots import TaskSlots

if TYPE_CHECKING:
    from hpod.daemon.studies import StudyRun

log = structlog.get_logger("hpod.studies")


class RunningStudies:
    """The running study loops by name: their worker tasks are what fills the `TaskSlots`,
    a freed slot wakes them all, and a stall of the daemon moves their deadlines."""

    #: A gap this long between two ticks of the event loop is a stall (SIGSTOP, a blocked loop).
    STALL_SECONDS = 5.0

    def __init__(self, slots: TaskSlots) -> None:
        self.slots = slots
        slots.freed = self.wake_all
        self.runs: dict[str, StudyRun] = {}
        #: `time.monotonic()` of the last tick of the event loop (see `check_stall`).
        self.last_tick = time.monotonic()
        #: True while the 1 s ticker (`hpod.daemon.ticker`) runs: without it a gap proves no stall.
        self.ticking = False

    def recount(self) -> None:
        """Count the worker tasks in flight from the running loops' own task sets."""
        self.slots.inflight = sum(len(run.tasks) for run in self.runs.values())

    def remove(self, name: str, run: StudyRun) -> None:
        """Forget the loop `run` of study `name` (ended or crashed): its tasks stop counting."""
        if self.runs.get(name) is run:
            del self.runs[name]
        self.recount()
        self.wake_all()

    def check_stall(self) -> float:
        """Tick; after a stall of the whole loop, push every deadline in flight back by it.

        While the daemon was stopped (SIGSTOP, a frozen VM, a loop blocked) workers went on,
        and their results wait in the broker for the intake. The trial timeouts must not run
        on the daemon's own downtime: otherwise results already received would be ignored
        and the trials dispatched again. Called by a 1 s ticker and before any expiry, so
        whichever runs first after the stall shifts the deadlines; returns the gap shifted.
        """
        now = time.monotonic()
        gap = now - self.last_tick
        self.last_tick = now
        if not self.ticking or gap < self.STALL_SECONDS:
            return 0.0
        log.warning("daemon.stalled", seconds=round(gap, 1))
        for run in self.runs.values():
            for flight in run.inflight.values():
                flight.deadline += gap
        return gap

    def wake_all(self) -> None:
        """A slot freed up: let every study loop look again."""
        for run in self.runs.values():
            run.wake.set()
