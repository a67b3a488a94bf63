"""Issue 12's intake and broker findings through a real `hpod run` on RabbitMQ.

- Finding 2: poison requests (the issue's exact 1,000-deep array) get an error reply and stop
  being retried, while a valid request behind them is answered; the daemon stays healthy and
  SIGTERM stops it at once with poison messages waiting.
- Finding 13: RabbitMQ down while a study is created: the request succeeds at once, the study
  runs, `/health` says why intake is stuck, and `study.created` is published once the broker is
  back; a second daemon on the same broker and vhost is refused at start.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from conftest import Daemon, DaemonFactory, eventually, free_port, hpod_env, quadratic_spec

from hpod.messaging import ATTEMPTS_HEADER, DEAD_LETTERS, REQUESTS, RESULTS, retry_queue_name

pytestmark = pytest.mark.broker


def _purge_retries(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for name in (REQUESTS, RESULTS, retry_queue_name(REQUESTS), retry_queue_name(RESULTS)):
        channel.queue_declare(name, durable=True)
        channel.queue_purge(name)
    connection.close()


@pytest.fixture
def rabbitmq(rabbitmq: str) -> Iterator[str]:
    """conftest's broker, with the retry queues empty too, and the intake queues emptied
    after the test as well (a test here leaves poison messages behind on purpose)."""
    _purge_retries(rabbitmq)
    yield rabbitmq
    _purge_retries(rabbitmq)


POISON = b"[" * 1000 + b"]" * 1000  # issue 12, finding 2


class Replies:
    """A pika connection that publishes requests with direct reply-to and collects replies
    in arrival order."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.channel.basic_consume(
            "amq.rabbitmq.reply-to",
            lambda c, m, p, b: self.received.append((p.correlation_id, json.loads(b))),
            auto_ack=True,
        )

    def send(self, body: bytes) -> str:
        """Publish `body` on hpod.requests; returns its correlation id."""
        correlation = uuid.uuid4().hex
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            correlation_id=correlation,
            reply_to="amq.rabbitmq.reply-to",
        )
        self.channel.basic_publish("", "hpod.requests", body, props)
        return correlation

    def wait(self, count: int, timeout: float = 90) -> None:
        """Until `count` replies have arrived."""

        def arrived() -> bool:
            self.connection.process_data_events(time_limit=0.1)
            return len(self.received) >= count

        eventually(arrived, timeout, 0, lambda: f"{len(self.received)} replies of {count}")

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


def test_poison_requests_are_answered_and_dead_lettered_while_valid_ones_flow(
    rabbitmq: str, start_daemon: DaemonFactory
) -> None:
    """Ten copies of the 1,000-deep array, then a valid study.create: every poison message
    gets an error reply (after its bounded tries, with the dead letter saying why), the valid
    request is answered, and /health stays 200 with the intake's figures."""
    daemon = start_daemon(
        "--no-workers",
        broker_url=rabbitmq,
        redelivery_max_attempts="3",
        redelivery_backoff_seconds="0.5",
    )
    client = Replies(rabbitmq)
    poison = {client.send(POISON) for _ in range(10)}
    spec = quadratic_spec("after-poison", trials=3)
    del spec["objective"]  # an external study: nothing to dispatch
    valid = client.send(json.dumps({"v": 1, "type": "study.create", "study": spec}).encode())
    client.wait(11)
    client.close()
    order = [correlation for correlation, _ in client.received]
    replies = dict(client.received)
    assert replies[valid]["ok"] is True
    assert set(order) == poison | {valid}
    codes = {replies[c]["error"]["code"] for c in poison}
    assert all(replies[c]["ok"] is False for c in poison)
    if codes == {"unprocessable"}:  # the handler raised: retried, then given up on
        assert order[0] == valid  # answered while the poison messages were still retrying
        assert all("3 times" in replies[c]["error"]["message"] for c in poison)
        letters = _dead_letters(rabbitmq, 10)
        assert all(int(props.headers[ATTEMPTS_HEADER]) == 3 for props, _ in letters)
        assert all(body == POISON for _, body in letters)
    status, health = daemon.request("GET", "/health", token=None)
    assert status == 200 and health["status"] == "ok", health
    assert set(health["intake"]) == {"hpod.requests", "hpod.results"}
    assert health["intake"]["hpod.requests"]["waiting"] == 0


def test_results_keep_flowing_while_poison_requests_retry(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker: Any
) -> None:
    """The intake thread also carried the workers' results, so poison requests slowed every
    study. With 20 of them retrying (each for at least 1 + 2 + 4 + 8 s), a 12-trial study on
    a Celery worker runs to its budget, and /health stays 200."""
    daemon = start_daemon("--no-workers", broker_url=rabbitmq, redelivery_backoff_seconds="1")
    start_worker(daemon.env)
    client = Replies(rabbitmq)
    for _ in range(20):
        client.send(POISON)
    client.connection.process_data_events(time_limit=0.5)
    status, _ = daemon.request("POST", "/studies", quadratic_spec("beside-poison", trials=12))
    assert status == 201
    done = daemon.wait_study("beside-poison", timeout=120)
    assert done["counts"] == {"complete": 12}
    status, health = daemon.request("GET", "/health", token=None)
    assert status == 200, health
    client.close()


def test_sigterm_stops_promptly_with_poison_messages_waiting(
    rabbitmq: str, start_daemon: DaemonFactory
) -> None:
    """70 poison messages stopped intake for good before, and SIGTERM took 32 s; now the
    daemon drains and exits 0 with them waiting (they stay queued for the next start)."""
    daemon = start_daemon("--no-workers", broker_url=rabbitmq, drain_timeout="5")
    client = Replies(rabbitmq)
    for _ in range(70):
        client.send(POISON)
    client.connection.process_data_events(time_limit=1.0)
    client.close()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=25) == 0, daemon.log()[-3000:]


def test_a_second_daemon_on_the_same_broker_is_refused(
    rabbitmq: str, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """Two daemons on one broker and vhost took each other's results; the second is now
    refused at start, before it resumes any study, with a clear error."""
    first = start_daemon("--no-workers", broker_url=rabbitmq)
    env = hpod_env(tmp_path / "second", broker_url=rabbitmq)
    second = subprocess.run(
        [sys.executable, "-m", "hpod", "run", "--no-workers"],
        env=env,
        capture_output=True,
        timeout=90,
    )
    output = (second.stdout + second.stderr).decode(errors="replace")
    assert second.returncode != 0, output
    assert "refusing to start" in output and "hpod.results" in output, output
    assert "daemon.ready" not in output
    status, _ = first.request("GET", "/health", token=None)
    assert status == 200


class Proxy:
    """A TCP forwarder to RabbitMQ that the test cuts ("broker down") and restores."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def up(self) -> None:
        """Accept and forward connections."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def test_a_study_created_while_the_broker_is_down_starts_and_is_announced_later(
    rabbitmq: str, start_daemon: DaemonFactory
) -> None:
    """RabbitMQ down during POST /studies: before, HTTP 500 after 51 s and the study never
    started. Now 201 at once, the study runs, /health answers 503 naming the broker, and the
    `study.created` event is published when the broker is back."""
    proxy = Proxy()
    proxy.up()
    url = rabbitmq.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    daemon = start_daemon("--no-workers", broker_url=url, intake_stuck_seconds="2")
    subscriber = pika.BlockingConnection(pika.URLParameters(rabbitmq))  # not via the proxy
    channel = subscriber.channel()
    channel.exchange_declare("hpod.events", exchange_type="topic", durable=True)
    events = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(events, "hpod.events", routing_key="study.created")
    try:
        proxy.down()
        spec = quadratic_spec("made-while-down", trials=3)
        del spec["objective"]
        status, reply = daemon.request("POST", "/studies", spec)
        assert status == 201 and reply["result"]["created"] is True, reply
        assert daemon.get("/studies/made-while-down")["running"] is True
        _wait_health(daemon, 503, "broker unreachable")
        proxy.up()
        _wait_health(daemon, 200, "")
        body = _next_event(subscriber, channel, events)
        assert body["event"] == "study.created" and body["study"] == "made-while-down"
    finally:
        proxy.down()
        subscriber.close()


def _wait_health(daemon: Daemon, status: int, reason: str, timeout: float = 60) -> None:
    last: list[Any] = []

    def answered() -> bool:
        last[:] = daemon.request("GET", "/health", token=None)
        return last[0] == status and reason in json.dumps(last[1])

    eventually(answered, timeout, 0.3, lambda: f"/health never answered {status}: {last}")


def _next_event(
    connection: pika.BlockingConnection, channel: Any, queue: str, timeout: float = 60
) -> dict[str, Any]:

    def arrived() -> dict[str, Any] | None:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            connection.process_data_events(time_limit=0.2)
            return None
        event: dict[str, Any] = json.loads(body)
        return event

    return eventually(arrived, timeout, 0, "no event")


def _dead_letters(url: str, count: int) -> list[tuple[Any, bytes]]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    found: list[tuple[Any, bytes]] = []

    def taken() -> bool:
        method, props, body = channel.basic_get(DEAD_LETTERS, auto_ack=True)
        if method is None:
            connection.process_data_events(time_limit=0.1)
        else:
            found.append((props, body))
        return len(found) == count

    try:
        eventually(taken, 30, 0, lambda: f"{len(found)} dead letters of {count}")
    finally:
        connection.close()
    return found
