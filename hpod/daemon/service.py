"""The daemon's life: start every part in order, serve, reload on SIGHUP, drain on SIGTERM.

Signals only set flags or schedule work (a second SIGTERM/SIGINT forces the exit); the main
coroutine acts on them. Parts start in dependency order (storage, publisher, recovered study
loops, queue intake, HTTP) and stop in reverse. Under systemd the daemon reports READY=1 once
intake is consuming, STOPPING=1 when it drains, and pings the watchdog from the event loop.

A drain stops taking requests and asking trials, keeps receiving results so running trials
finish, and waits up to `drain_timeout`. Trials still running then are not lost: they stay
RUNNING in storage and their results wait in ``hpod.results`` for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from hpod.config import RELOADABLE, Settings, load_settings, redact
from hpod.daemon import notify
from hpod.daemon.bus import Bus
from hpod.daemon.http import make_app
from hpod.daemon.intake import QueueIntake
from hpod.daemon.local_workers import LocalWorkers
from hpod.daemon.manager import StudyManager
from hpod.daemon.requests import RequestHandler
from hpod.daemon.store import StudyStore
from hpod.errors import ConfigError
from hpod.logs import configure_logging
from hpod.modes import load_modes
from hpod.workers.app import make_celery

log = structlog.get_logger("hpod.daemon")


class Daemon:
    """hpod's long-running service."""

    def __init__(self, settings: Settings, start_workers: bool | None = None) -> None:
        self.settings = settings
        self.start_workers = settings.embedded if start_workers is None else start_workers
        self.stop_requested = asyncio.Event()
        self._signals = 0
        self._manager: StudyManager | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- signals -----------------------------------------------------------------------

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        log.info("daemon.signal", signal=signal.Signals(signum).name, count=self._signals)
        if self._signals > 1:
            log.warning("daemon.forced_exit")
            os._exit(1)
        self.stop_requested.set()

    def _on_reload_signal(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Re-read settings and modes; a bad file is refused and the old values stay."""
        notify.reloading()
        try:
            new = load_settings()
            modes = load_modes()
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            log.error("daemon.reload_refused", setting=field, error=err["msg"])
            notify.notify("READY=1", f"STATUS=reload refused: {field}: {err['msg']}")
            return False
        except ValueError as exc:  # a TOML syntax error in the settings file
            log.error("daemon.reload_refused", setting="config file", error=str(exc))
            notify.notify("READY=1", f"STATUS=reload refused: {exc}")
            return False
        except ConfigError as exc:
            log.error("daemon.reload_refused", setting="modes", error=str(exc))
            notify.notify("READY=1", f"STATUS=reload refused: {exc}")
            return False
        changed = [f for f in RELOADABLE if getattr(new, f) != getattr(self.settings, f)]
        for field in changed:
            setattr(self.settings, field, getattr(new, field))
        ignored = [
            f
            for f in type(new).model_fields
            if f not in RELOADABLE and getattr(new, f) != getattr(self.settings, f)
        ]
        if self._manager is not None:
            self._manager.modes = modes
            self._manager.limits.max_inflight = self.settings.max_inflight
            await self._manager.replan()
        configure_logging(self.settings.log_format, self.settings.log_level)
        log.info("daemon.reloaded", changed=changed, needs_restart=ignored, modes=sorted(modes))
        notify.notify("READY=1", "STATUS=serving")
        return True

    # --- life --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain and shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        started = time.monotonic()
        s = self.settings
        store = StudyStore(s.optuna_storage_url())
        bus = Bus(s, make_celery(s))
        manager = self._manager = StudyManager(s, store, bus)
        handler = RequestHandler(manager, bus, s.max_message_bytes)
        workers = (
            LocalWorkers(s, s.local_workers) if self.start_workers and s.local_workers else None
        )
        await manager.start()
        intake = QueueIntake(s, loop, handler.on_queue_message, self._on_result)
        await asyncio.to_thread(intake.start)
        app = make_app(handler, manager, s.token(), s.max_message_bytes)
        access_log = logging.getLogger("aiohttp.access") if s.log_level == "debug" else None
        runner = web.AppRunner(app, access_log=access_log)
        await runner.setup()
        await web.TCPSite(runner, s.http_host, s.http_port).start()
        if workers:  # started last: if anything above fails, no orphaned worker is left
            workers.start()
        watchdog = loop.create_task(notify.watchdog(), name="watchdog")
        notify.notify("READY=1", "STATUS=serving")
        log.info(
            "daemon.ready",
            http=s.http_url(),
            broker="embedded" if s.embedded else redact(s.broker),
            storage=redact(s.optuna_storage_url()),
            studies=len(manager.runs),
            local_workers=s.local_workers if workers else 0,
        )
        await self.stop_requested.wait()

        notify.notify("STOPPING=1", "STATUS=draining")
        handler.draining = True
        intake.pause_requests()
        manager.limits.max_inflight = 0  # no new dispatches; results still arrive
        drained = await self._drain(manager)
        running = len(manager.runs)
        await runner.cleanup()
        await asyncio.to_thread(intake.stop)
        left = manager.limits.inflight
        await manager.shutdown()
        if workers:
            await workers.stop()
        watchdog.cancel()
        bus.close()
        store.close()
        log.info(
            "daemon.stopped",
            uptime_s=round(time.monotonic() - started, 1),
            drained=drained,
            running_studies=running,
            in_flight_left_to_resume=left,
        )

    async def _drain(self, manager: StudyManager) -> bool:
        """Wait until no trial is in flight, or `drain_timeout` passes; True if drained."""
        deadline = time.monotonic() + self.settings.drain_timeout
        log.info(
            "daemon.draining",
            in_flight=manager.limits.inflight,
            timeout_s=self.settings.drain_timeout,
        )
        # Polled at 10 Hz for at most drain_timeout: simpler than a condition shared with
        # every place that changes the in-flight count.
        while manager.limits.inflight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        return manager.limits.inflight == 0

    async def _on_result(self, body: bytes, props: dict[str, Any]) -> None:
        # The manager validates the raw message itself and dead-letters what it refuses.
        assert self._manager is not None
        await self._manager.on_worker_result(body, bool(props.get("redelivered")))
