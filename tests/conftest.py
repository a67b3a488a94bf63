"""Fixtures that start real daemons, workers and servers for hpod's tests.

Tests of broker and storage behaviour talk to a real RabbitMQ and PostgreSQL. When one is
missing they skip with the reason on a developer's machine, and fail when
``HPOD_REQUIRE_SERVICES=1`` (set by .ci/run), so CI can never pass by skipping them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

AMQP_URL = os.environ.get("HPOD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
POSTGRES_DSN = os.environ.get("HPOD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRED = os.environ.get("HPOD_REQUIRE_SERVICES") == "1"

T = TypeVar("T")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (in CI) when a server a test needs is not reachable."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if REQUIRED:
        pytest.fail(f"{message} (HPOD_REQUIRE_SERVICES=1: broker and storage tests must run)")
    pytest.skip(f"{message}; start it to run this test")


@pytest.fixture
def rabbitmq() -> str:
    """The URL of a real RabbitMQ, with hpod's queues purged of earlier tests' messages."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    from kombu import Connection

    from hpod.messaging import DEAD_LETTERS, REQUESTS, RESULTS, TRIALS, queue

    with Connection(AMQP_URL) as conn:
        channel = conn.channel()
        for name in (REQUESTS, RESULTS, TRIALS, DEAD_LETTERS):
            q = queue(name)(channel)
            q.declare()
            q.purge()
    return AMQP_URL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg2

    name = f"hpod_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(POSTGRES_DSN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            POSTGRES_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
            + f"/{name}"
        )
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def give_up_if_late(
    deadline: float, failure: AssertionError | None, what: str | Callable[[], str], after: float
) -> None:
    """End a wait of `eventually`/`eventually_async` past its `deadline`: raise the last
    AssertionError of the check, else one saying `what` was still not so."""
    if time.monotonic() < deadline:
        return
    if failure is not None:
        raise failure
    detail = what() if callable(what) else what
    raise AssertionError(f"still not so after {after} s: {detail}")


def eventually(
    fn: Callable[[], T | None],
    timeout: float = 30,
    interval: float = 0.1,
    what: str | Callable[[], str] = "",
) -> T:
    """Call `fn` every `interval` seconds until it returns a truthy value; return that value.

    The suite's one polling helper (`eventually_async` is the same for a test on its own event
    loop), for state that changes in another process (a daemon, a worker, a file) with nothing
    to wait on. An AssertionError from `fn` counts as "not yet":
    after `timeout` seconds the last one is raised again, so the failure says what was wrong;
    otherwise an AssertionError with `what` (a text, or a function giving one late, such as the
    tail of a daemon's log). Any other exception from `fn` ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        failure: AssertionError | None = None
        try:
            result = fn()
        except AssertionError as exc:
            failure = exc
        else:
            if result:
                return result
        give_up_if_late(deadline, failure, what, timeout)
        time.sleep(interval)


async def eventually_async(
    fn: Callable[[], Any],
    within: float = 30,
    interval: float = 0.05,
    what: str | Callable[[], str] = "",
) -> Any:
    """`eventually` for tests that run the daemon's parts on their own event loop: `fn` may
    return an awaitable (awaited each time), and the wait yields to the loop instead of
    blocking it. Same rules: a truthy value ends the wait, an AssertionError is "not yet"."""
    deadline = time.monotonic() + within
    while True:
        failure: AssertionError | None = None
        try:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
        except AssertionError as exc:
            failure = exc
        else:
            if result:
                return result
        give_up_if_late(deadline, failure, what, within)
        await asyncio.sleep(interval)


class Proc:
    """A started hpod process (daemon or worker) and the environment it runs with."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        """Start (or restart) the process, appending to its log file."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a machine loses power."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM and wait for a graceful exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace")


class Daemon(Proc):
    """A running `hpod run` with its HTTP address and API token."""

    @property
    def url(self) -> str:
        """Base URL of its HTTP API."""
        return f"http://127.0.0.1:{self.env['HPOD_HTTP_PORT']}"

    @property
    def token(self) -> str:
        """Its API token."""
        return self.env["HPOD_API_TOKEN"]

    def start(self) -> Daemon:
        """Start and wait until /health answers; RuntimeError when it never does."""
        super().start()
        try:
            eventually(self._answers, 60, 0.2)
        except AssertionError:
            raise RuntimeError(f"daemon not healthy:\n{self.log()}") from None
        return self

    def _answers(self) -> bool:
        """Whether /health answers; a daemon that exited is an error at once."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited:\n{self.log()}")
        try:
            self.get("/health")
        except OSError:
            return False
        return True

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = "default",
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One HTTP call; returns (status, decoded JSON body)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {self.token if token == 'default' else token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str) -> Any:
        """GET a JSON document."""
        status, body = self.request("GET", path, token=None)
        assert status == 200, body
        return body

    def wait_study(self, name: str, timeout: float = 180) -> dict[str, Any]:
        """Poll until study `name` is completed or stopped; returns its status."""
        last: dict[str, Any] = {}

        def finished() -> dict[str, Any] | None:
            last.update(self.get(f"/studies/{name}"))
            done = last["state"] in {"completed", "stopped"} and not last["running"]
            return dict(last) if done else None

        return eventually(
            finished,
            timeout,
            0.3,
            lambda: f"study {name} did not finish: {last}\n{self.log()[-3000:]}",
        )

    def wait_complete(self, name: str, at_least: int, timeout: float = 120) -> None:
        """Poll until at least `at_least` trials of study `name` are complete."""
        eventually(
            lambda: self.get(f"/studies/{name}")["counts"].get("complete", 0) >= at_least,
            timeout,
            what=lambda: self.log()[-3000:],
        )


class EventStream(threading.Thread):
    """A daemon's Server-Sent Events (``GET /events``, one study's or all), collected in a
    thread until an event of type `until` arrives: the suite's one reader of the stream.

    `connected` is set once the daemon's first line (``retry: …``) has arrived, which it
    writes after subscribing the stream, so no event published afterwards is missed.
    """

    def __init__(
        self, daemon: Daemon, study: str | None = None, until: str = "study.completed"
    ) -> None:
        super().__init__(daemon=True)
        self.url = f"{daemon.url}/events" + (f"?study={study}" if study else "")
        self.until = until
        self.events: list[dict[str, Any]] = []
        self.connected = threading.Event()

    def run(self) -> None:
        """Read the stream into `events` until `until`."""
        with urllib.request.urlopen(self.url, timeout=300) as stream:
            for raw in stream:
                line = raw.decode().strip()
                if line.startswith("retry:"):
                    self.connected.set()
                elif line.startswith("data: "):
                    event = json.loads(line.removeprefix("data: "))
                    self.events.append(event)
                    if event.get("event") == self.until:
                        return

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The events of type `kind` so far, in order."""
        return [e for e in self.events if e.get("event") == kind]

    def first(self, kind: str, timeout: float = 60) -> dict[str, Any]:
        """The first event of type `kind`, waiting for it."""
        found: list[dict[str, Any]] = eventually(lambda: self.of(kind), timeout, what=kind)
        return found[0]


def watch(daemon: Daemon, study: str | None = None, until: str = "study.completed") -> EventStream:
    """Start collecting the daemon's events (before the study is created, so none is missed);
    returns once the stream is subscribed."""
    stream = EventStream(daemon, study, until)
    stream.start()
    assert stream.connected.wait(10), "the event stream did not connect"
    return stream


def hpod_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of an hpod process: isolated data dir, free port, fixed token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPOD_")}
    env.update(
        HPOD_DATA_DIR=str(data_dir),
        HPOD_HTTP_PORT=str(free_port()),
        HPOD_API_TOKEN="test-token-" + "x" * 16,
        HPOD_LOCAL_WORKERS="2",
        HPOD_LOG_FORMAT="json",
        HPOD_CONFIG=str(data_dir / "no-config.toml"),
    )
    env.update({f"HPOD_{k.upper()}": v for k, v in settings.items()})
    return env


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start `hpod run` processes with given settings; all are stopped after the test."""
    started: list[Proc] = []

    def factory(*args: str, data_dir: Path | None = None, **settings: str) -> Daemon:
        env = hpod_env(data_dir or tmp_path / "data", **settings)
        daemon = Daemon(
            [sys.executable, "-m", "hpod", "run", *args],
            env,
            tmp_path / f"daemon-{len(started)}.log",
        )
        started.append(daemon)
        return daemon.start()

    yield factory
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Proc]]:
    """Start `hpod worker` processes with a daemon's environment; stopped after the test."""
    started: list[Proc] = []

    def factory(env: dict[str, str], concurrency: int = 2) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "hpod",
            "worker",
            "-c",
            str(concurrency),
            "-n",
            f"w{len(started)}@%h",
        ]
        proc = Proc(argv, env, tmp_path / f"worker-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield factory
    for proc in reversed(started):
        proc.stop()


def quadratic_spec(name: str, trials: int = 12, **extra: Any) -> dict[str, Any]:
    """A small, fast study of the analytic `quadratic` objective."""
    return {
        "name": name,
        "objective": "quadratic",
        "space": {
            "x": {"type": "float", "low": -2.0, "high": 2.0},
            "y": {"type": "float", "low": -2.0, "high": 2.0},
        },
        "budget": {"trials": trials},
        "sampler": {"name": "random", "seed": 0},
        **extra,
    }
