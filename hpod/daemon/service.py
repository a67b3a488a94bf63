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
import errno
import fcntl
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from hpod.config import RELOADABLE, Settings, load_settings, redact
from hpod.daemon import notify
from hpod.daemon.bus import Bus
from hpod.daemon.handler import RequestHandler
from hpod.daemon.http import INTAKE_HEALTH, make_app, make_runner
from hpod.daemon.intake import BrokerInUse, QueueIntake, message_ids
from hpod.daemon.local_workers import LocalWorkers
from hpod.daemon.manager import StudyManager
from hpod.daemon.store import StudyStore, is_storage_fault
from hpod.errors import ConfigError, HpodError
from hpod.journal import JournalCorrupt, JournalTruncated, check_journal, check_mark
from hpod.logs import configure_logging
from hpod.messaging import REQUESTS
from hpod.modes import load_modes
from hpod.workers.celery_config import make_celery

log = structlog.get_logger("hpod.daemon")

#: Exit codes of `hpod run` that systemd's unit tells apart (RestartPreventExitStatus=2).
EXIT_REFUSED = 2  # restarting cannot help: a person must act (config, journal, a 2nd daemon)
EXIT_STORAGE = 75  # EX_TEMPFAIL: storage unreachable at start; Restart=on-failure retries


class StartRefused(HpodError):
    """The daemon must not start; `exit_code` is what `hpod run` exits with."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def lock_data_dir(data_dir: Path) -> int:
    """Take `data_dir/daemon.lock` (flock, exclusive) for the life of this process.

    Two daemons on one data directory would resume the same studies and share the embedded
    broker's queues. The kernel releases the lock when the process dies, however it dies;
    the descriptor is close-on-exec so that local workers do not hold it after the daemon.
    Raises `StartRefused` naming the holder's pid when another process has it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "daemon.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartRefused(
            f"another hpod daemon (pid {holder}) is using the data directory {data_dir} "
            f"(it holds {path}): stop it first, or give this one its own HPOD_DATA_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def check_storage(url: str) -> None:
    """Refuse a journal file that does not parse (`StartRefused` naming file, line, offset),
    or that is shorter than the daemon saw it written (cut, or replaced by an older copy)."""
    if not url.startswith("journal://"):
        return
    path = url.removeprefix("journal://")
    try:
        check_mark(path)
        check_journal(path)
    except (JournalCorrupt, JournalTruncated) as exc:
        raise StartRefused(str(exc)) from exc


class Daemon:
    """hpod's long-running service."""

    def __init__(self, settings: Settings, start_workers: bool | None = None) -> None:
        self.settings = settings
        self.start_workers = settings.embedded if start_workers is None else start_workers
        self.stop_requested = asyncio.Event()
        self._signals = 0
        self._manager: StudyManager | None = None
        self._bus: Bus | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock_fd: int | None = None

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
        except (OSError, ValueError) as exc:  # the settings file: unreadable, or not TOML
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
            await self._manager.reload(modes)
        configure_logging(self.settings.log_format, self.settings.log_level)
        log.info("daemon.reloaded", changed=changed, needs_restart=ignored, modes=sorted(modes))
        notify.notify("READY=1", "STATUS=serving")
        return True

    # --- life --------------------------------------------------------------------------

    async def _open_storage(self) -> StudyStore:
        """Lock the data directory, check the journal and open the storage, before anything
        touches the broker; `StartRefused` says why not (exit 2, or 75 to be retried)."""
        s = self.settings
        if self._lock_fd is None:
            self._lock_fd = lock_data_dir(s.data_dir)
        url = s.optuna_storage_url()
        await asyncio.to_thread(check_storage, url)
        try:
            return await asyncio.to_thread(StudyStore, url)
        except Exception as exc:
            if is_storage_fault(exc):
                raise StartRefused(
                    f"storage {redact(url)} is unreachable: {exc!r}", EXIT_STORAGE
                ) from exc
            raise

    async def _start_manager(self, manager: StudyManager) -> None:
        """Resume the stored studies; storage unreachable is an exit to be retried."""
        try:
            await manager.start()
        except Exception as exc:
            if is_storage_fault(exc):
                await manager.shutdown()
                raise StartRefused(f"storage unreachable at start: {exc!r}", EXIT_STORAGE) from exc
            raise

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain and shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        started = time.monotonic()
        s = self.settings
        store = await self._open_storage()
        bus = self._bus = Bus(s, make_celery(s))
        manager = self._manager = StudyManager(s, store, bus)
        handler = RequestHandler(manager.requests, bus, s.max_message_bytes)
        workers = (
            LocalWorkers(s, s.local_workers) if self.start_workers and s.local_workers else None
        )
        intake = QueueIntake(
            s, loop, handler.on_queue_message, self._on_result, on_dead=self._on_dead_letter
        )
        try:  # before any study resumes: a second daemon on this broker must not start at all
            await asyncio.to_thread(intake.start)
        except BrokerInUse as exc:
            log.error("daemon.broker_in_use", error=str(exc))
            bus.close()
            store.close()
            raise SystemExit(f"hpod: refusing to start: {exc}") from None
        except RuntimeError as exc:  # the broker cannot be reached: systemd tries again
            log.error("daemon.broker_unreachable", broker=redact(s.broker), error=str(exc))
            bus.close()
            store.close()
            raise SystemExit(f"hpod: cannot start: {exc} ({redact(s.broker)})") from None
        try:
            await self._start_manager(manager)
        except BaseException:
            intake.stop()
            bus.close()
            raise
        intake.open()
        app = make_app(handler, manager, s.token(), s.max_message_bytes)
        app[INTAKE_HEALTH] = intake.health
        access_log = logging.getLogger("aiohttp.access") if s.log_level == "debug" else None
        runner = make_runner(app, access_log=access_log)
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
        manager.slots.max_inflight = 0  # no new dispatches; results still arrive
        drained = await self._drain(manager)
        running = len(manager.runs)
        await runner.cleanup()
        await asyncio.to_thread(intake.stop)
        left = manager.slots.inflight
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
            in_flight=manager.slots.inflight,
            timeout_s=self.settings.drain_timeout,
        )
        # Polled at 10 Hz for at most drain_timeout: simpler than a condition shared with
        # every place that changes the in-flight count.
        while manager.slots.inflight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        return manager.slots.inflight == 0

    async def _on_dead_letter(
        self, queue: str, body: bytes, props: dict[str, Any], reason: str
    ) -> None:
        """A request given up on (dead-lettered): tell its sender, as for any rejection."""
        if queue != REQUESTS or self._bus is None:
            return
        found = message_ids(REQUESTS, body).get("request")
        request_id = found if isinstance(found, str) else None  # never trust a queue's contents
        error = {"code": "unprocessable", "field": "", "message": reason}
        await self._bus.event("request.rejected", None, id=request_id, channel="amqp", error=error)
        if props.get("reply_to"):
            reply = {"v": 1, "ok": False, "id": request_id, "error": error}
            await self._bus.reply(props["reply_to"], props.get("correlation_id"), reply)

    async def _on_result(self, body: bytes, props: dict[str, Any]) -> None:
        # `WorkerResults` validates the raw message itself and dead-letters what it refuses.
        assert self._manager is not None
        await self._manager.results.on_message(body, bool(props.get("redelivered")))
