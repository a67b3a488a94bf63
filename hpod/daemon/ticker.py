"""The daemon's 1 s ticker: the stall watch of the study loops and the storage's housekeeping.

Every second it ticks `RunningStudies.check_stall` (a gap between two ticks is a stall of the
whole daemon, whose length every deadline in flight is pushed back by); every five it records
how much of the journal is written (`StudyStore.mark`) and, while storage is failing, tries it
(`StudyStore.probe`), so /health turns ok again without a write.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from hpod.daemon.running import RunningStudies
from hpod.daemon.store import StudyStore

log = structlog.get_logger("hpod.manager")


class Ticker:
    """Runs the 1 s tick (see the module) from `start` to `stop`."""

    def __init__(self, store: StudyStore, running: RunningStudies) -> None:
        self.store = store
        self.running = running
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking (on the running event loop)."""
        self._task = asyncio.create_task(self._tick(), name="ticker")

    async def stop(self) -> None:
        """Stop ticking; then record how much of the journal is written, a last time."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.store.call(self.store.mark)
        except Exception as exc:
            log.warning("storage.mark_failed", error=repr(exc))

    async def _tick(self) -> None:
        n = 0
        self.running.last_tick = time.monotonic()
        self.running.ticking = True
        try:
            while True:
                self.running.check_stall()
                if n % 5 == 0:
                    try:
                        await self.store.call(self.store.mark)
                        await self.store.call(self.store.probe)
                    except Exception as exc:  # safeguards only: never stop the daemon
                        log.warning("storage.tick_failed", error=repr(exc))
                n += 1
                await asyncio.sleep(1.0)
        finally:
            self.running.ticking = False
