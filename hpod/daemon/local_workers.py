"""Local Celery worker processes that `hpod run` starts itself on the embedded broker.

They are ordinary `celery worker` processes (prefork pool), so a trial runs exactly as it would
on a separate machine; a worker that dies is started again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import structlog

from hpod.config import Settings
from hpod.messaging import TRIALS

log = structlog.get_logger("hpod.local_workers")


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
        import json

        env["HPOD_OBJECTIVES"] = json.dumps(settings.objectives)
    return env


def _relay(proc: subprocess.Popen[bytes]) -> None:
    """Pass the worker's output on as the daemon's own log lines, so all of it is JSON.

    The worker already logs JSON through hpod's setup; Celery also prints a few plain lines
    (e.g. "Warm shutdown"), which become ``worker.output`` events here.
    """
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line.startswith("{"):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        elif line:
            log.info("worker.output", pid=proc.pid, text=line)


class LocalWorkers:
    """One supervised Celery worker process with `concurrency` pool processes."""

    def __init__(self, settings: Settings, concurrency: int) -> None:
        self._settings = settings
        self._concurrency = concurrency
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

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
        threading.Thread(
            target=_relay, args=(self._proc,), name="local-worker-output", daemon=True
        ).start()
        log.info("workers.started", pid=self._proc.pid, concurrency=self._concurrency)

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            if self._proc is not None and self._proc.poll() is not None and not self._stopping:
                log.warning("workers.died", code=self._proc.returncode)
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
