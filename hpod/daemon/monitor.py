"""The resource monitor: samples processes, queues and workers, and applies memory back-pressure.

Three background loops, each sampling off the event loop (the probes block):

* **resources**, every `RESOURCES_INTERVAL` s: CPU and RSS of the daemon and of its child
  processes (the local workers). When the RSS of all of them exceeds the
  ``memory_high_water_mb`` setting, `TaskSlots` throttles dispatch (back-pressure) until it
  falls below again. On the embedded broker this also counts the live local pool processes.
* **queues**, every `QUEUES_INTERVAL` s: messages ready in ``hpod.trials`` and ``hpod.requests``.
* **workers** (RabbitMQ only): how many Celery workers answer a ping, every
  `WORKERS_INTERVAL` s, or every `WORKERS_SEARCH_INTERVAL` s while none does.

A failing probe (broker down, say) is logged once, and the loop keeps trying.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from celery import Celery

from hpod.config import Settings
from hpod.daemon.metrics import Metrics
from hpod.daemon.probes import (
    ProcessSample,
    ProcessSampler,
    QueueProbe,
    celery_ping,
    celery_workers,
    local_workers,
)
from hpod.daemon.slots import TaskSlots
from hpod.messaging import REQUESTS, TRIALS

log = structlog.get_logger("hpod.monitor")

T = TypeVar("T")

RESOURCES_INTERVAL = 3.0
QUEUES_INTERVAL = 5.0
WORKERS_INTERVAL = 10.0
WORKERS_SEARCH_INTERVAL = 2.0
#: How long a Celery broadcast waits for workers' replies.
INSPECT_TIMEOUT = 1.0
#: Seconds before a probe that failed is tried again.
RETRY_INTERVAL = 5.0
SAMPLED_QUEUES = (TRIALS, REQUESTS)
MB = 1 << 20


class Monitor:
    """Keeps the latest samples of resources, queues and workers, and the back-pressure flag."""

    def __init__(self, settings: Settings, slots: TaskSlots, metrics: Metrics) -> None:
        self.settings = settings
        self.slots = slots
        self.metrics = metrics
        self.processes: list[ProcessSample] = []
        self.queue_depths: dict[str, int] = {}
        self.n_workers: int | None = None
        self.sampled_at: float | None = None
        self._sampler = ProcessSampler()
        self._queues = QueueProbe(settings)
        self._celery: Celery | None = None
        # Broker probes (a kombu connection, Celery broadcasts) stay on one thread.
        self._probe_thread = ThreadPoolExecutor(1, thread_name_prefix="hpod-probe")
        self._tasks: list[asyncio.Task[None]] = []
        self._failing: set[str] = set()

    # --- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sampling loops."""
        loops: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("resources", self._resources_step),
            ("queues", self._queues_step),
        ]
        if not self.settings.embedded:
            loops.append(("workers", self._workers_step))
        self._tasks = [
            asyncio.create_task(self._loop(name, step), name=f"monitor:{name}")
            for name, step in loops
        ]

    async def stop(self) -> None:
        """Stop the loops and release the broker connection."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._probe(self._close_probes)
        self._probe_thread.shutdown(wait=False)

    def _close_probes(self) -> None:
        self._queues.close()
        if self._celery is not None:
            self._celery.close()

    async def _loop(self, name: str, step: Callable[[], Awaitable[float]]) -> None:
        """Run `step` forever; it returns the seconds to wait before the next run."""
        while True:
            try:
                interval = await step()
            except Exception as exc:
                if name not in self._failing:
                    log.warning("monitor.sample_failed", sample=name, error=repr(exc))
                self._failing.add(name)
                interval = RETRY_INTERVAL
            else:
                self._failing.discard(name)
            await asyncio.sleep(interval)

    async def _probe(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._probe_thread, fn, *args)

    # --- samples -----------------------------------------------------------------------

    async def _resources_step(self) -> float:
        await self.sample_resources()
        return RESOURCES_INTERVAL

    async def sample_resources(self) -> None:
        """Sample CPU and RSS of the process tree, update the gauges and the back-pressure."""
        self.processes = await asyncio.to_thread(self._sampler.sample)
        self.sampled_at = time.time()
        for group, cpu, rss in self._groups():
            self.metrics.process_cpu.labels(group).set(cpu)
            self.metrics.process_rss.labels(group).set(rss)
        if self.settings.embedded:
            self.n_workers = sum(1 for s in self.processes if s.role == "pool")
            self.metrics.workers.set(self.n_workers)
        self._apply_backpressure(sum(s.rss_bytes for s in self.processes))

    def _groups(self) -> list[tuple[str, float, int]]:
        """(process label, CPU %, RSS) of the daemon, of the GP's sampler process, and of all
        its other children together."""
        daemon = [s for s in self.processes if s.role == "daemon"]
        sampler = [s for s in self.processes if s.role == "sampler"]
        children = [s for s in self.processes if s.role not in ("daemon", "sampler")]
        return [
            (label, sum(s.cpu_percent for s in group), sum(s.rss_bytes for s in group))
            for label, group in (
                ("daemon", daemon),
                ("sampler_process", sampler),
                ("local_workers", children),
            )
        ]

    def high_water_bytes(self) -> int | None:
        """The memory high-water mark in force (the setting is re-read: SIGHUP changes it)."""
        mb = self.settings.memory_high_water_mb
        return mb * MB if mb else None

    def _apply_backpressure(self, rss: int) -> None:
        high = self.high_water_bytes()
        on = high is not None and rss > high
        if on != self.slots.backpressure:
            fields = {
                "rss_mb": round(rss / MB),
                "high_water_mb": self.settings.memory_high_water_mb,
            }
            if on:
                log.warning("backpressure.on", **fields, max_inflight_now=1)
            else:
                log.info("backpressure.off", **fields)
            self.slots.set_backpressure(on)
        self.metrics.backpressure.set(1 if on else 0)

    async def _queues_step(self) -> float:
        await self.sample_queues()
        return QUEUES_INTERVAL

    async def sample_queues(self) -> None:
        """Sample the depth of the trials and requests queues."""
        self.queue_depths = await self._probe(self._queues.depths, SAMPLED_QUEUES)
        for name, depth in self.queue_depths.items():
            self.metrics.queue_depth.labels(name).set(depth)

    async def _workers_step(self) -> float:
        self.n_workers = await self._probe(celery_ping, self._celery_app(), INSPECT_TIMEOUT)
        self.metrics.workers.set(self.n_workers)
        return WORKERS_INTERVAL if self.n_workers else WORKERS_SEARCH_INTERVAL

    def _celery_app(self) -> Celery:
        if self._celery is None:
            from hpod.workers.celery_config import make_celery

            self._celery = make_celery(self.settings)
        return self._celery

    # --- reports -----------------------------------------------------------------------

    async def workers(self) -> dict[str, Any]:
        """The live workers: Celery's answers on RabbitMQ, the local processes when embedded."""
        if self.settings.embedded:
            samples = await asyncio.to_thread(self._sampler.sample)
            return {"broker": "embedded", "workers": local_workers(samples)}
        rows = await self._probe(celery_workers, self._celery_app(), INSPECT_TIMEOUT)
        return {"broker": "rabbitmq", "workers": rows}

    def status(self) -> dict[str, Any]:
        """The latest samples, the back-pressure state and the load, as JSON-ready data."""
        groups = {label: {"cpu_percent": c, "rss_bytes": r} for label, c, r in self._groups()}
        return {
            "sampled_at": self.sampled_at,
            **groups,
            "rss_bytes_total": sum(s.rss_bytes for s in self.processes),
            "processes": [s.as_dict() for s in self.processes],
            "memory_high_water_bytes": self.high_water_bytes(),
            "backpressure": self.slots.backpressure,
            "workers": self.n_workers,
            "queue_depth": dict(self.queue_depths),
            "in_flight": self.slots.inflight,
            "max_inflight": self.slots.max_inflight,
        }
