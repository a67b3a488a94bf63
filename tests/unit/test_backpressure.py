"""Memory back-pressure: the resource monitor samples the real RSS and throttles `TaskSlots`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hpod.config import Settings
from hpod.daemon.metrics import Metrics
from hpod.daemon.monitor import Monitor
from hpod.daemon.slots import TaskSlots


async def sampled(settings: Settings, slots: TaskSlots) -> tuple[Monitor, Metrics]:
    """A monitor that has taken one resource sample of this process."""
    metrics = Metrics()
    monitor = Monitor(settings, slots, metrics)
    await monitor.sample_resources()
    return monitor, metrics


class TestBackpressure:
    """TaskSlots under a memory high-water mark."""

    async def test_a_high_water_mark_below_the_rss_throttles_dispatch(self, tmp_path: Path) -> None:
        """With 1 MB as the mark, one trial in flight is the most `TaskSlots` allow."""
        slots = TaskSlots(max_inflight=8)
        settings = Settings(data_dir=tmp_path, memory_high_water_mb=1)
        monitor, metrics = await sampled(settings, slots)
        assert slots.backpressure
        assert slots.available()  # nothing in flight: one trial may still go
        slots.inflight = 1
        assert not slots.available()
        assert metrics.registry.get_sample_value("hpod_backpressure") == 1
        assert monitor.status()["backpressure"] is True
        await monitor.stop()

    async def test_lifting_the_mark_lets_every_study_fill_up_again(self, tmp_path: Path) -> None:
        """Unsetting the mark (a SIGHUP reload) lifts the throttle at the next sample."""
        slots = TaskSlots(max_inflight=8)
        settings = Settings(data_dir=tmp_path, memory_high_water_mb=1)
        monitor, metrics = await sampled(settings, slots)
        slots.inflight = 3
        assert not slots.available()
        settings.memory_high_water_mb = None
        await monitor.sample_resources()
        assert not slots.backpressure
        assert slots.available()
        assert metrics.registry.get_sample_value("hpod_backpressure") == 0
        await monitor.stop()

    async def test_a_mark_above_the_rss_changes_nothing(self, tmp_path: Path) -> None:
        """A generous mark leaves the global cap alone."""
        slots = TaskSlots(max_inflight=2)
        settings = Settings(data_dir=tmp_path, memory_high_water_mb=1 << 20)
        monitor, _ = await sampled(settings, slots)
        slots.inflight = 1
        assert slots.available()
        slots.inflight = 2
        assert not slots.available()
        await monitor.stop()

    async def test_the_sample_measures_this_process(self, tmp_path: Path) -> None:
        """The daemon's own RSS is in the sample and in the gauges."""
        slots = TaskSlots(max_inflight=2)
        monitor, metrics = await sampled(Settings(data_dir=tmp_path), slots)
        status = monitor.status()
        assert status["daemon"]["rss_bytes"] > 0
        assert status["memory_high_water_bytes"] is None
        rss = metrics.registry.get_sample_value("hpod_process_rss_bytes", {"process": "daemon"})
        assert rss == status["daemon"]["rss_bytes"]
        await asyncio.wait_for(monitor.stop(), 10)
