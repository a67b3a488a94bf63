"""The queue intake on a real broker (RabbitMQ and the embedded one): bounded redelivery with
back-off, dead letters with their reason, results never held up by failing requests, JSON only,
lag reported for /health, and one consumer of `hpod.results` per broker.

Issue 12, findings 2, 10, 11 and 13. The poison body is the issue's exact one: a JSON array
nested 1,000 deep, which makes `json.loads` raise RecursionError. The handlers here are real
coroutines that parse the body as the daemon's do; what is under test is the intake around them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually
from kombu import Message, Producer

from hpod.config import Settings
from hpod.daemon.intake import BrokerInUse, QueueIntake
from hpod.messaging import (
    ATTEMPTS_HEADER,
    DEAD_LETTERS,
    REQUESTS,
    RESULTS,
    connect,
    queue,
    retry_queue_name,
)

POISON = b"[" * 1000 + b"]" * 1000  # issue 12, finding 2: 2 KB, RecursionError when parsed

Handler = Callable[[bytes, dict[str, Any]], Coroutine[Any, Any, None]]


@pytest.fixture(params=[pytest.param("rabbitmq", marks=pytest.mark.broker), "embedded"])
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings for one broker, its intake queues empty; retries fast enough for a test."""
    monkeypatch.setenv("HPOD_CONFIG", str(tmp_path / "none.toml"))
    broker = None
    if request.param == "rabbitmq":
        broker = request.getfixturevalue("rabbitmq")
    s = Settings(
        data_dir=tmp_path / "data",
        broker_url=broker,
        redelivery_max_attempts=3,
        redelivery_backoff_seconds=0.5,
        redelivery_backoff_max_seconds=2.0,
        intake_stuck_seconds=1.0,
    )
    with connect(s) as conn:
        channel = conn.channel()
        for name in (retry_queue_name(REQUESTS), retry_queue_name(RESULTS), DEAD_LETTERS):
            q = queue(name)(channel)
            q.declare()
            q.purge()
    return s


class Recorder:
    """Handlers that parse each body as JSON (raising on the poison) and record what passed."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.results: list[Any] = []
        self.redelivered: list[bool] = []
        self.dead: list[tuple[str, str]] = []

    async def on_request(self, body: bytes, props: dict[str, Any]) -> None:
        self.requests.append(json.loads(body))

    async def on_result(self, body: bytes, props: dict[str, Any]) -> None:
        self.results.append(json.loads(body))
        self.redelivered.append(bool(props["redelivered"]))

    async def on_dead(self, queue: str, body: bytes, props: dict[str, Any], reason: str) -> None:
        self.dead.append((queue, reason))


@contextmanager
def running_intake(
    settings: Settings, recorder: Recorder, on_result: Handler | None = None
) -> Iterator[QueueIntake]:
    """A QueueIntake handing messages to an event loop in its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    intake = QueueIntake(
        settings,
        loop,
        recorder.on_request,
        on_result or recorder.on_result,
        on_dead=recorder.on_dead,
    )
    try:
        intake.start()
        intake.open()
        yield intake
    finally:
        intake.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def publish(
    settings: Settings,
    routing_key: str,
    body: bytes,
    content_type: str = "application/json",
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish one message as any client would (default exchange, persistent)."""
    with connect(settings) as conn:
        Producer(conn.channel()).publish(
            body,
            exchange="",
            routing_key=routing_key,
            content_type=content_type,
            content_encoding="binary",
            delivery_mode=2,
            headers=headers or {},
            declare=[queue(routing_key)],
        )


def dead_letters(settings: Settings, expected: int, timeout: float = 60) -> list[Message]:
    """Take `expected` dead letters off hpod.dead (waiting for them)."""
    found: list[Message] = []
    with connect(settings) as conn:
        q = queue(DEAD_LETTERS)(conn.channel())

        def taken() -> bool:
            while len(found) < expected and (message := q.get(no_ack=True)) is not None:
                found.append(message)
            return len(found) == expected

        eventually(taken, timeout, what=lambda: f"{len(found)} dead letters, expected {expected}")
    return found


def test_poison_requests_are_dead_lettered_after_bounded_tries_while_others_flow(
    settings: Settings,
) -> None:
    """Ten poison requests are tried 3 times each with back-off, then dead-lettered with the
    error, the queue and the tries; a valid request behind them and a result are handled
    before the first poison message has used up its tries."""
    recorder = Recorder()
    with running_intake(settings, recorder) as intake:
        for _ in range(10):
            publish(settings, REQUESTS, POISON)
        publish(settings, REQUESTS, b'{"valid": 1}')
        publish(settings, RESULTS, b'{"result": 1}')
        eventually(lambda: recorder.requests == [{"valid": 1}])
        eventually(lambda: recorder.results == [{"result": 1}])
        assert recorder.dead == []  # no poison message has used its 3 tries yet
        health = intake.health()["queues"][REQUESTS]
        assert health["retrying"] + health["waiting"] > 0 and health["retried"] >= 10
        letters = dead_letters(settings, 10)
        eventually(lambda: len(recorder.dead) == 10)
        assert intake.health()["stuck"] is False
    for letter in letters:
        assert letter.body == POISON
        headers = letter.headers
        assert headers["x-hpod-queue"] == REQUESTS
        assert int(headers[ATTEMPTS_HEADER]) == 3
        assert "RecursionError" in headers["x-hpod-error"]
        assert "3 times" in headers["x-hpod-error"]
    assert {q for q, _ in recorder.dead} == {REQUESTS}
    assert recorder.requests == [{"valid": 1}]  # the poison never reached past its parse


def test_a_dead_letter_is_the_whole_message_with_its_original_properties(
    settings: Settings,
) -> None:
    """The dead letter carries the body as it came, not truncated (here 200 KB), and the
    original reply_to, correlation_id and message_id as ``x-original-*`` headers, as
    docs/protocol.md says (the review found the document claiming the opposite of both)."""
    body = POISON + b" " * 200_000
    recorder = Recorder()
    with running_intake(settings, recorder), connect(settings) as conn:
        Producer(conn.channel()).publish(
            body,
            exchange="",
            routing_key=REQUESTS,
            content_type="application/json",
            content_encoding="binary",
            delivery_mode=2,
            reply_to="doc-claims-replies",
            correlation_id="corr-17",
            message_id="msg-17",
            declare=[queue(REQUESTS)],
        )
        [letter] = dead_letters(settings, 1)
    assert letter.body == body
    headers = letter.headers
    assert headers["x-original-reply_to"] == "doc-claims-replies"
    assert headers["x-original-correlation_id"] == "corr-17"
    assert headers["x-original-message_id"] == "msg-17"
    assert headers["x-hpod-queue"] == REQUESTS and int(headers[ATTEMPTS_HEADER]) == 3


def test_the_try_count_travels_with_the_message(settings: Settings) -> None:
    """A message that already failed twice (before a restart) gets one more try, not three."""
    recorder = Recorder()
    with running_intake(settings, recorder):
        publish(settings, REQUESTS, POISON, headers={ATTEMPTS_HEADER: 2})
        [letter] = dead_letters(settings, 1, timeout=10)
    assert int(letter.headers[ATTEMPTS_HEADER]) == 3


def test_a_result_retried_is_marked_redelivered(settings: Settings) -> None:
    """A result whose handling failed once comes back marked redelivered, so the manager
    publishes its event again if the first try told the trial but did not publish."""
    recorder = Recorder()
    failures = [RuntimeError("storage down")]

    async def flaky(body: bytes, props: dict[str, Any]) -> None:
        if failures:
            raise failures.pop()
        await recorder.on_result(body, props)

    with running_intake(settings, recorder, on_result=flaky):
        publish(settings, RESULTS, b'{"result": 2}')
        eventually(lambda: recorder.results == [{"result": 2}])
    assert recorder.redelivered == [True]


def test_only_json_is_accepted(settings: Settings) -> None:
    """A pickle (or any non-JSON content type) is dead-lettered at once, never retried."""
    recorder = Recorder()
    with running_intake(settings, recorder):
        publish(
            settings, REQUESTS, b"\x80\x04K\x01.", content_type="application/x-python-serialize"
        )
        publish(settings, REQUESTS, b'{"charset": 1}', "application/json; charset=utf-8")
        publish(settings, REQUESTS, b'{"plain": 1}', content_type="")
        [letter] = dead_letters(settings, 1, timeout=10)
        eventually(lambda: len(recorder.requests) == 2)
    assert "not accepted" in letter.headers["x-hpod-error"]
    assert int(letter.headers[ATTEMPTS_HEADER]) == 1
    assert recorder.requests == [{"charset": 1}, {"plain": 1}]


def test_health_reports_a_stuck_intake_and_recovers(settings: Settings) -> None:
    """A handler that does not return: /health's intake lag grows past intake_stuck_seconds
    and names the queue; once it returns, intake is healthy again. Idle is healthy."""
    recorder = Recorder()
    release = threading.Event()

    async def blocked(body: bytes, props: dict[str, Any]) -> None:
        await asyncio.to_thread(release.wait, 30)
        await recorder.on_result(body, props)

    with running_intake(settings, recorder, on_result=blocked) as intake:
        time.sleep(1.5)
        assert intake.health()["stuck"] is False  # idle past the threshold: healthy
        publish(settings, RESULTS, b'{"result": 3}')
        eventually(lambda: intake.health()["stuck"])
        health = intake.health()
        assert health["queues"][RESULTS]["lag_s"] > 1.0
        assert RESULTS in health["reasons"][0]
        release.set()
        eventually(lambda: recorder.results == [{"result": 3}])
        eventually(lambda: not intake.health()["stuck"])


def test_reconnect_backoff_resets_after_a_good_connection(settings: Settings) -> None:
    """After earlier failed connects, a connection that consumes resets the back-off, so
    the next broker bounce is retried after the initial wait, not the grown one."""
    recorder = Recorder()
    intake = QueueIntake(
        settings, asyncio.new_event_loop(), recorder.on_request, recorder.on_result
    )
    lane = intake.lanes[REQUESTS]
    for _ in range(5):
        lane._reconnect.next_delay()  # five failed connects: the next wait would be 8 s
    assert lane._reconnect.tries == 5
    try:
        intake.start()
        assert lane._reconnect.tries == 0
        assert lane._reconnect.next_delay() <= 0.5 * 1.2
    finally:
        intake.stop()


@pytest.mark.broker
def test_a_second_consumer_of_results_is_refused(rabbitmq: str, tmp_path: Path) -> None:
    """Two daemons on one broker and vhost: the second is refused at start with a clear
    error instead of taking the first one's results (RabbitMQ exclusive consumer)."""
    s = Settings(data_dir=tmp_path / "data", broker_url=rabbitmq)
    first = QueueIntake(s, asyncio.new_event_loop(), Recorder().on_request, Recorder().on_result)
    second = QueueIntake(s, asyncio.new_event_loop(), Recorder().on_request, Recorder().on_result)
    first.start()
    try:
        with pytest.raises(BrokerInUse, match=r"hpod\.results"):
            second.start()
    finally:
        first.stop()


def test_an_outage_is_not_counted_against_the_message(settings: Settings) -> None:
    """Storage down (here: a full disk, OSError) for more tries than the limit: the result
    waits with back-off and is handled once the fault is gone, never dead-lettered; it
    comes back marked redelivered (a commit may have landed though it raised), so the
    manager publishes its event if the trial was told by a try that seemed to fail."""
    recorder = Recorder()
    outage = [OSError(28, "No space left on device")] * 4  # the limit is 3 tries

    async def storage_down(body: bytes, props: dict[str, Any]) -> None:
        if outage:
            raise outage.pop()
        await recorder.on_result(body, props)

    with running_intake(settings, recorder, on_result=storage_down):
        publish(settings, RESULTS, b'{"result": 4}')
        eventually(lambda: recorder.results == [{"result": 4}])
    assert recorder.dead == []
    assert recorder.redelivered == [True]


@pytest.mark.broker
def test_intake_connections_run_with_heartbeats(rabbitmq: str, tmp_path: Path) -> None:
    """Connections ran with heartbeat 0: a dead peer went unnoticed. The intake's now
    negotiate `broker_heartbeat_seconds` with RabbitMQ."""
    s = Settings(data_dir=tmp_path / "data", broker_url=rabbitmq, broker_heartbeat_seconds=20)
    intake = QueueIntake(s, asyncio.new_event_loop(), Recorder().on_request, Recorder().on_result)
    intake.start()
    try:
        for lane in intake.lanes.values():
            assert lane._conn.connection.heartbeat == 20
    finally:
        intake.stop()


def test_an_unreachable_broker_at_start_is_a_clear_error(tmp_path: Path) -> None:
    """No broker at the configured address: start gives up after its timeout with an error
    naming the broker (the daemon exits with it; systemd starts it again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    settings = Settings(
        data_dir=tmp_path / "data", broker_url=f"amqp://guest:guest@127.0.0.1:{port}//"
    )
    recorder = Recorder()
    intake = QueueIntake(
        settings, asyncio.new_event_loop(), recorder.on_request, recorder.on_result
    )
    with pytest.raises(RuntimeError, match="could not start consuming from the broker"):
        intake.start(timeout=1.0)
    assert not any(lane.alive for lane in intake.lanes.values())


@pytest.mark.broker
def test_dead_letters_left_on_the_unbounded_legacy_queue_are_reported(
    rabbitmq: str, tmp_path: Path
) -> None:
    """Dead letters went to the unbounded hpod.requests.dead before issue 12; the bounded
    queue has a new name (RabbitMQ refuses new arguments on an existing queue), and a start
    tells the operator what is left on the old one."""
    from kombu import Connection
    from structlog.testing import capture_logs

    from hpod.messaging import LEGACY_DEAD_LETTERS

    with Connection(rabbitmq) as conn:
        channel = conn.channel()
        channel.queue_declare(LEGACY_DEAD_LETTERS, durable=True, auto_delete=False)
        channel.queue_purge(LEGACY_DEAD_LETTERS)
        Producer(channel).publish(b"old", routing_key=LEGACY_DEAD_LETTERS, content_type="x/y")
        # The publish is not confirmed: wait until the broker counts it, or the start may see 0.
        eventually(
            lambda: channel.queue_declare(LEGACY_DEAD_LETTERS, passive=True).message_count == 1,
            timeout=10,
            what="the old dead letter to be counted",
        )
    s = Settings(data_dir=tmp_path / "data", broker_url=rabbitmq)
    intake = QueueIntake(s, asyncio.new_event_loop(), Recorder().on_request, Recorder().on_result)
    try:
        with capture_logs() as logs:
            intake.start()
    finally:
        intake.stop()
        with Connection(rabbitmq) as conn:
            conn.channel().queue_delete(LEGACY_DEAD_LETTERS)
    [warning] = [e for e in logs if e["event"] == "intake.legacy_dead_letters"]
    assert warning["messages"] == 1 and DEAD_LETTERS in warning["hint"]


def test_a_forged_retry_time_waits_no_longer_than_the_cap(settings: Settings) -> None:
    """Never trust a queue's contents: a copy on the retry queue claiming a next try in
    30,000 years is tried after at most `redelivery_backoff_max_seconds`."""
    recorder = Recorder()
    with running_intake(settings, recorder):
        publish(
            settings, retry_queue_name(RESULTS), b'{"result": 5}', headers={"x-hpod-retry-at": 1e12}
        )
        eventually(lambda: recorder.results == [{"result": 5}], timeout=20)
