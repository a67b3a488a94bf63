"""Local Celery worker processes that `hpod run` starts itself on the embedded broker.

They are ordinary `celery worker` processes (prefork pool), so a trial runs exactly as it would
on a separate machine; a worker that dies is started again, after a back-off that grows while
it keeps dying (`hpod.backoff.Backoff`) and resets once it has run for a while.

What a worker prints is *data*, never a log record of the daemon: each line becomes the
``line`` field of one ``worker.output`` record of the daemon's own, through the same secret
redaction as every other field. A worker (or an objective it runs) can therefore not forge a
record of the daemon, nor leak a credential around the redaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time

import structlog

from hpod.backoff import Backoff
from hpod.config import Settings
from hpod.messaging import TRIALS

log = structlog.get_logger("hpod.local_workers")
#: Longest worker output line relayed (longer ones are cut, and say so).
MAX_LINE = 8000
#: Levels of a worker's JSON records, as the daemon's record of them; none above ERROR.
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.ERROR,
    "exception": logging.ERROR,
}
#: A worker that ran this long before dying is started again without waiting.
HEALTHY_AFTER_SECONDS = 60.0


def worker_argv(
    concurrency: int, name: str, loglevel: str = "WARNING", quiet: bool = False
) -> list[str]:
    """The command line of one hpod Celery worker (`quiet` drops Celery's start-up banner)."""
    app = ["-m", "celery", "-A", "hpod.workers.celery_app", *(["--quiet"] if quiet else [])]
    options = [f"--concurrency={concurrency}", "-Q", TRIALS, "-n", name, f"--loglevel={loglevel}"]
    # No gossip, mingle or heartbeat: the embedded broker has no broadcast, and hpod does not
    # use them on RabbitMQ either.
    chatter = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return [sys.executable, *app, "worker", "--pool=prefork", *options, *chatter]


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a worker see the daemon's broker, storage and objectives."""
    env = dict(os.environ)
    # One trial per pool process: BLAS/OpenMP threads beyond one only fight over the cores
    # (two HistGradientBoosting fits went from 0.25 s to 15 s each when both used all cores).
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HPOD_DATA_DIR"] = str(settings.data_dir)
    if settings.broker_url:
        env["HPOD_BROKER_URL"] = settings.broker_url
    env["HPOD_STORAGE_URL"] = settings.optuna_storage_url()
    if settings.objectives:
        env["HPOD_OBJECTIVES"] = json.dumps(settings.objectives)
    return env


def _relay(proc: subprocess.Popen[bytes]) -> None:
    """Pass the worker's output on as fields of the daemon's own log records.

    The worker logs JSON through hpod's setup, Celery prints a few plain lines (e.g. "Warm
    shutdown") and an objective may print anything: every line, JSON or not, is the ``line``
    of one ``worker.output`` record (redacted like any field), never written out as is.
    """
    assert proc.stdout is not None
    for raw in proc.stdout:
        relay_line(proc.pid, raw)


def relay_line(pid: int, raw: bytes) -> None:
    """Log one line of a worker's output as data of a ``worker.output`` record."""
    line = raw.decode(errors="replace").rstrip()
    if not line:
        return
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE] + f"... ({len(line) - MAX_LINE} more characters)"
    log.log(_level_of(line), "worker.output", pid=pid, line=line)


def _level_of(line: str) -> int:
    """The level of the daemon's record for a worker line: the worker's own level when the
    line is one of its JSON records (so its warnings pass the daemon's level filter), at
    most ERROR; INFO for anything else."""
    if not line.startswith("{"):
        return logging.INFO
    try:
        record = json.loads(line)
    except ValueError:
        return logging.INFO
    level = record.get("level") if isinstance(record, dict) else None
    return LEVELS.get(level, logging.INFO) if isinstance(level, str) else logging.INFO


class LocalWorkers:
    """One supervised Celery worker process with `concurrency` pool processes."""

    def __init__(self, settings: Settings, concurrency: int) -> None:
        self._settings = settings
        self._concurrency = concurrency
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        #: Restarts of a worker that keeps dying wait longer each time, up to 5 minutes.
        self._backoff = Backoff(initial=1.0, maximum=300.0)

    def start(self) -> None:
        """Start the worker and its supervisor."""
        self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="local-workers")

    def _spawn(self) -> None:
        argv = worker_argv(self._concurrency, f"local-{os.getpid()}@%h", quiet=True)
        env = {
            **worker_env(self._settings),
            "HPOD_LOCAL_WORKER": "1",
            "HPOD_DAEMON_PID": str(os.getpid()),
        }
        self._proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._started_at = time.monotonic()
        threading.Thread(
            target=_relay, args=(self._proc,), name="local-worker-output", daemon=True
        ).start()
        log.info("workers.started", pid=self._proc.pid, concurrency=self._concurrency)

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            if self._proc is not None and self._proc.poll() is not None and not self._stopping:
                await self._restart(self._proc.returncode)

    async def _restart(self, code: int) -> None:
        """Start a dead worker again, after a back-off unless it had run long enough to
        count as healthy (a worker dying at start-up is not restarted every second)."""
        ran = time.monotonic() - self._started_at
        if ran >= HEALTHY_AFTER_SECONDS:
            self._backoff.reset()
        delay = self._backoff.next_delay()
        log.warning(
            "workers.died",
            code=code,
            ran_s=round(ran, 1),
            restarts=self._backoff.tries,
            restart_in_s=round(delay, 1),
        )
        await asyncio.sleep(delay)
        if not self._stopping:
            self._spawn()

    async def stop(self, grace: float = 30.0) -> None:
        """Warm shutdown (finish running trials), then kill after `grace` seconds."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
