"""The daemon's life: start every part in order, serve, drain on a signal, stop cleanly.

Signals only set a flag (a second one forces the exit); the main coroutine acts on it. Parts
start in dependency order (storage, publisher, recovered study loops, queue intake, HTTP) and
stop in reverse, and the shutdown ends with one summary line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from typing import Any

import structlog
from aiohttp import web

from hpod.config import Settings
from hpod.daemon.bus import Bus
from hpod.daemon.http import make_app
from hpod.daemon.intake import QueueIntake
from hpod.daemon.local_workers import LocalWorkers
from hpod.daemon.manager import StudyManager
from hpod.daemon.requests import RequestHandler
from hpod.daemon.store import StudyStore
from hpod.workers.app import make_celery

log = structlog.get_logger("hpod.daemon")


class Daemon:
    """hpod's long-running service."""

    def __init__(self, settings: Settings, start_workers: bool | None = None) -> None:
        self.settings = settings
        self.start_workers = settings.embedded if start_workers is None else start_workers
        self.stop_requested = asyncio.Event()
        self._signals = 0

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        log.info("daemon.signal", signal=signal.Signals(signum).name, count=self._signals)
        if self._signals > 1:
            log.warning("daemon.forced_exit")
            os._exit(1)
        self.stop_requested.set()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        started = time.monotonic()
        s = self.settings
        store = StudyStore(s.optuna_storage_url())
        bus = Bus(s, make_celery(s))
        manager = StudyManager(s, store, bus)
        handler = RequestHandler(manager, bus, s.max_message_bytes)
        workers = (
            LocalWorkers(s, s.local_workers) if self.start_workers and s.local_workers else None
        )
        if workers:
            workers.start()
        await manager.start()

        async def on_result(body: bytes, _props: dict[str, Any]) -> None:
            try:
                message = json.loads(body)
                message["study"], message["number"]
            except (ValueError, KeyError, TypeError) as exc:
                log.error("result.malformed", error=repr(exc), body=body[:200])
                return
            await manager.on_worker_result(message)

        intake = QueueIntake(s, loop, handler.on_queue_message, on_result)
        await asyncio.to_thread(intake.start)
        app = make_app(handler, manager, s.token(), s.max_message_bytes)
        access_log = logging.getLogger("aiohttp.access") if s.log_level == "debug" else None
        runner = web.AppRunner(app, access_log=access_log)
        await runner.setup()
        site = web.TCPSite(runner, s.http_host, s.http_port)
        await site.start()
        log.info(
            "daemon.ready",
            http=s.http_url(),
            broker="embedded" if s.embedded else "amqp",
            storage=s.optuna_storage_url().split("@")[-1],
            studies=len(manager.runs),
            local_workers=s.local_workers if workers else 0,
        )
        await self.stop_requested.wait()
        running = len(manager.runs)
        await runner.cleanup()
        await asyncio.to_thread(intake.stop)
        in_flight = manager.limits.inflight
        await manager.shutdown()
        if workers:
            await workers.stop()
        bus.close()
        store.close()
        log.info(
            "daemon.stopped",
            uptime_s=round(time.monotonic() - started, 1),
            running_studies=running,
            in_flight_left_to_resume=in_flight,
        )
