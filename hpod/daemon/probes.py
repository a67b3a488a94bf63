"""Blocking probes of what surrounds the daemon: its processes, its queues, its workers.

Every function here blocks (``/proc`` reads, a broker round trip, a Celery broadcast that
waits for replies), so the resource monitor runs them off the event loop. They return plain
data and never raise for a process that vanished meanwhile.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]  # types-psutil is not installed
from celery import Celery
from kombu import Connection

from hpod.config import Settings
from hpod.messaging import connect

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


@dataclass(frozen=True)
class ProcessSample:
    """CPU and memory of one process of the daemon's tree at one moment."""

    pid: int
    ppid: int
    #: ``daemon``, ``worker`` (a local Celery worker), ``pool`` (one of its pool processes)
    #: or ``child`` (anything else the daemon started).
    role: str
    cpu_percent: float
    rss_bytes: int
    #: The Celery node name of a ``worker``, else None.
    node: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The sample as JSON-ready data."""
        return asdict(self)


class ProcessSampler:
    """Samples the daemon and its descendants (the local workers and their pools).

    CPU percentages are measured between two calls of `sample`, so the sampler keeps the
    `psutil.Process` objects it saw; the first sample of a process reports 0 %.
    """

    def __init__(self, pid: int | None = None) -> None:
        self._root = psutil.Process(pid)
        self._known: dict[int, Any] = {}
        self._lock = threading.Lock()

    def sample(self) -> list[ProcessSample]:
        """One sample per live process of the tree, the daemon first."""
        with self._lock:
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except _GONE:
                procs = [self._root]
            self._known = {p.pid: self._reuse(p) for p in procs}
            raw = [r for r in map(_read, self._known.values()) if r is not None]
        workers = {r["pid"] for r in raw if r["ppid"] == self._root.pid and _is_worker(r)}
        return [_classify(r, self._root.pid, workers) for r in raw]

    def _reuse(self, proc: Any) -> Any:
        """The object seen before for this process: it holds the CPU times of the last sample."""
        known = self._known.get(proc.pid)
        return known if known is not None and known == proc else proc  # same pid, same start


def _read(proc: Any) -> dict[str, Any] | None:
    try:
        with proc.oneshot():
            return {
                "pid": proc.pid,
                "ppid": proc.ppid(),
                "cmdline": proc.cmdline(),
                "cpu_percent": float(proc.cpu_percent(interval=None)),
                "rss_bytes": int(proc.memory_info().rss),
            }
    except _GONE:
        return None


#: How the GP's sampler process is started (`python -m hpod.sampling.child`).
SAMPLER_MODULE = "hpod.sampling.child"


def _is_worker(raw: dict[str, Any]) -> bool:
    cmdline = raw["cmdline"]
    return any("celery" in part for part in cmdline) and "worker" in cmdline


def _classify(raw: dict[str, Any], root: int, workers: set[int]) -> ProcessSample:
    if raw["pid"] == root:
        role = "daemon"
    elif raw["pid"] in workers:
        role = "worker"
    elif raw["ppid"] in workers:
        role = "pool"
    elif SAMPLER_MODULE in raw["cmdline"]:
        role = "sampler"  # the GP's sampler process (hpod.sampling.process)
    else:
        role = "child"
    return ProcessSample(
        pid=raw["pid"],
        ppid=raw["ppid"],
        role=role,
        cpu_percent=raw["cpu_percent"],
        rss_bytes=raw["rss_bytes"],
        node=_node_name(raw["cmdline"]) if role == "worker" else None,
    )


def _node_name(cmdline: list[str]) -> str | None:
    """The ``-n`` node name of a Celery worker command line, with ``%h`` expanded."""
    for flag, value in itertools.pairwise(cmdline):
        if flag in ("-n", "--hostname"):
            return value.replace("%h", socket.gethostname())
    return None


def local_workers(samples: Iterable[ProcessSample]) -> list[dict[str, Any]]:
    """The local Celery workers in a process sample, each with its pool processes."""
    samples = list(samples)
    workers = []
    for worker in (s for s in samples if s.role == "worker"):
        pool = [s for s in samples if s.role == "pool" and s.ppid == worker.pid]
        workers.append(
            {
                "name": worker.node or f"pid {worker.pid}",
                "pid": worker.pid,
                "pool": len(pool),
                "active": None,  # no remote control on the embedded broker
                "tasks_done": None,
                "cpu_percent": worker.cpu_percent + sum(s.cpu_percent for s in pool),
                "rss_bytes": worker.rss_bytes + sum(s.rss_bytes for s in pool),
                "processes": [s.as_dict() for s in [worker, *pool]],
            }
        )
    return workers


class QueueProbe:
    """Ready-message counts of queues, through one kombu connection of its own.

    A passive ``queue_declare`` answers the count on RabbitMQ and, through kombu's virtual
    transport, the number of ready message files on the embedded broker: one code path.
    Not thread-safe: use it from one thread.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._conn: Connection | None = None
        self._channel: Any = None

    def depths(self, names: Iterable[str]) -> dict[str, int]:
        """Messages ready in each queue; 0 for a queue nobody declared yet."""
        if self._conn is None:
            self._conn = connect(self._settings)
        conn = self._conn
        try:
            return {name: self._depth(conn, name) for name in names}
        except conn.connection_errors:
            self.close()  # reconnect on the next call
            raise

    def _depth(self, conn: Connection, name: str) -> int:
        if self._channel is None:
            self._channel = conn.channel()
        try:
            return int(self._channel.queue_declare(queue=name, passive=True).message_count)
        except conn.channel_errors:
            # RabbitMQ answers NOT_FOUND for an undeclared queue and closes the channel.
            self._close_channel()
            return 0

    def _close_channel(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                self._channel.close()
        self._channel = None

    def close(self) -> None:
        """Release the connection."""
        self._close_channel()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.release()
        self._conn = None


def celery_ping(app: Celery, timeout: float) -> int:
    """How many Celery workers answer a ping within `timeout` seconds (RabbitMQ only)."""
    return len(app.control.inspect(timeout=timeout).ping() or {})


def celery_workers(app: Celery, timeout: float) -> list[dict[str, Any]]:
    """Name, pool size and active tasks of every Celery worker that answers (RabbitMQ only).

    A ping finds the workers (waiting the whole `timeout`, since their number is unknown);
    `active` and `stats` then address exactly those and return once all have answered.
    """
    pings = app.control.inspect(timeout=timeout).ping() or {}
    if not pings:
        return []
    inspect = app.control.inspect(timeout=timeout, destination=list(pings), limit=len(pings))
    active = inspect.active() or {}
    stats = inspect.stats() or {}
    rows = []
    for name in sorted(pings):
        info = stats.get(name) or {}
        pool = info.get("pool") or {}
        rows.append(
            {
                "name": name,
                "pid": info.get("pid"),
                "pool": pool.get("max-concurrency"),
                "active": len(active.get(name) or []),
                "tasks_done": sum((info.get("total") or {}).values()),
                "cpu_percent": None,  # another machine's processes: Celery does not say
                "rss_bytes": None,
                "processes": [{"pid": pid, "role": "pool"} for pid in pool.get("processes", [])],
            }
        )
    return rows
