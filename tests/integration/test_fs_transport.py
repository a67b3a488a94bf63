"""Integration tests of the embedded broker transport (``hpodfs://``) on a real directory."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from conftest import eventually
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

from hpod import fs_transport
from hpod.fs_transport import CLAIM_SUFFIX, MSG_SUFFIX, TMP_SUFFIX, Transport

# The child side of the multi-process tests, run as `python worker.py <role> ...`.
WORKER_SCRIPT = r"""
import hashlib, os, socket, sys, time

import hpod.fs_transport  # noqa: F401  (registers hpodfs://)
from kombu import Connection, Consumer, Producer, Queue

role, data, control = sys.argv[1:4]
options = {"data_folder_in": data, "data_folder_out": data, "control_folder": control,
           "polling_interval": 0.01, "claim_recovery_interval": 0.2}
queue = Queue("jobs", routing_key="jobs")

def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()

with Connection("hpodfs://", transport_options=options) as conn:
    if role == "produce":
        prefix, count = sys.argv[4], int(sys.argv[5])
        producer = Producer(conn.default_channel, serializer="json")
        for i in range(count):
            pad = f"{prefix}:{i}:" + "x" * (i % 64)
            producer.publish({"id": f"{prefix}-{i}", "pad": pad, "sha": digest(pad)},
                             routing_key="jobs", declare=[queue])
    elif role == "consume":
        results, stop = sys.argv[4], sys.argv[5]
        with open(results, "a", buffering=1) as out:
            def on_message(body, message):
                ok = isinstance(body, dict) and body.get("sha") == digest(body.get("pad", ""))
                out.write((body["id"] if ok else "BAD " + repr(body)) + "\n")
                message.ack()
            with Consumer(conn, [queue], callbacks=[on_message], accept=["json"],
                          prefetch_count=4):
                while not os.path.exists(stop):
                    try:
                        conn.drain_events(timeout=0.1)
                    except socket.timeout:
                        pass
    elif role == "hold":
        ready = sys.argv[4]
        message = conn.SimpleQueue("jobs").get(timeout=10)
        with open(ready + ".part", "w") as out:
            out.write(message.payload["id"])
        os.rename(ready + ".part", ready)
        time.sleep(600)  # never acks: killed by the test
"""


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """The message folder and the control folder of one embedded broker."""
    return tmp_path / "messages", tmp_path / "control"


def _options(folders: tuple[Path, Path], **extra: Any) -> dict[str, Any]:
    data, control = folders
    return {
        "data_folder_in": str(data),
        "data_folder_out": str(data),
        "control_folder": str(control),
        "polling_interval": 0.05,
        **extra,
    }


@pytest.fixture
def connect(folders: tuple[Path, Path]) -> Iterator[Callable[..., Connection]]:
    """Open hpodfs:// connections on the test folders; all are closed at teardown."""
    opened: list[Connection] = []

    def _connect(**extra: Any) -> Connection:
        conn = Connection("hpodfs://", transport_options=_options(folders, **extra))
        conn.connect()
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.release()


@pytest.fixture
def worker_script(tmp_path: Path) -> Path:
    """The child-process script, written to the test directory."""
    path = tmp_path / "fs_worker.py"
    path.write_text(WORKER_SCRIPT)
    return path


def _spawn(script: Path, folders: tuple[Path, Path], *args: str) -> subprocess.Popen[bytes]:
    data, control = folders
    return subprocess.Popen(
        [sys.executable, str(script), args[0], str(data), str(control), *args[1:]],
        cwd=Path(__file__).resolve().parents[2],
    )


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def _by_suffix(folder: Path, suffix: str) -> list[str]:
    return [name for name in _names(folder) if name.endswith(suffix)]


def _publish(conn: Connection, *ids: str, queue: str = "jobs") -> None:
    producer = Producer(conn.default_channel, serializer="json")
    for ident in ids:
        producer.publish({"id": ident}, routing_key=queue, declare=[Queue(queue)])


def _drain_ids(conn: Connection, queue: str = "jobs") -> list[str]:
    """Get and ack every ready message of `queue`."""
    ids: list[str] = []
    simple = conn.SimpleQueue(queue)
    while True:
        try:
            message = simple.get(timeout=0.3)
        except simple.Empty:
            break
        ids.append(message.payload["id"])
        message.ack()
    simple.close()
    return ids


def test_round_trip_json(connect: Callable[..., Connection], folders: tuple[Path, Path]) -> None:
    """A JSON message published through a Producer comes out of a Consumer intact and is gone."""
    conn = connect()
    queue = Queue("jobs", Exchange("hpod.test", type="direct"), routing_key="jobs")
    Producer(conn.default_channel).publish(
        {"trial": 7, "params": {"lr": 0.1}},
        exchange=queue.exchange,
        routing_key="jobs",
        declare=[queue],
        serializer="json",
    )
    received: list[Any] = []

    def on_message(body: Any, message: Message) -> None:
        received.append((body, message.content_type))
        message.ack()

    with Consumer(conn, [queue], callbacks=[on_message], accept=["json"]):
        conn.drain_events(timeout=2)
    assert received == [({"trial": 7, "params": {"lr": 0.1}}, "application/json")]
    assert _names(folders[0]) == []


@pytest.mark.skipif(sys.platform != "linux", reason="the wake-up uses inotify (Linux)")
def test_a_waiting_consumer_wakes_when_a_message_lands(
    connect: Callable[..., Connection],
) -> None:
    """With a polling interval of a minute, a consumer waiting in `drain_events` still gets a
    message published from another connection at once: it waits on the folder's inotify
    watch, not by sleeping out the interval (which cost every trial of the embedded default
    the interval twice). The bound below is a tenth of the interval, not a speed figure."""
    consumer, producer = connect(polling_interval=60.0), connect(polling_interval=60.0)
    queue = Queue("jobs", routing_key="jobs")
    received: list[Any] = []

    def on_message(body: Any, message: Message) -> None:
        received.append(body)
        message.ack()

    with Consumer(consumer, [queue], callbacks=[on_message], accept=["json"]):
        with pytest.raises(TimeoutError):
            consumer.drain_events(timeout=0.2)  # nothing there yet: waits, then times out
        sender = threading.Timer(0.3, _publish, (producer, "late"))
        sender.start()
        started = time.monotonic()
        consumer.drain_events(timeout=30)
        waited = time.monotonic() - started
        sender.join()
    assert received == [{"id": "late"}]
    assert waited < 6.0, f"woke after {waited:.1f} s: slept out the polling interval"


def test_alias_resolves_for_kombu_and_celery(folders: tuple[Path, Path]) -> None:
    """``hpodfs://`` resolves to this transport in kombu and in a Celery app."""
    assert fs_transport.ALIAS == "hpodfs"
    with Connection("hpodfs://", transport_options=_options(folders)) as conn:
        assert isinstance(conn.transport, Transport)
    app = Celery("t", broker="hpodfs://", set_as_current=False)
    app.conf.broker_transport_options = _options(folders)
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)


def test_fanout_reaches_every_bound_queue(
    connect: Callable[..., Connection], folders: tuple[Path, Path]
) -> None:
    """A fanout exchange delivers one copy per bound queue, via the shared control folder."""
    consumer_conn, producer_conn = connect(), connect()
    exchange = Exchange("hpod.broadcast", type="fanout")
    queues = [Queue("a", exchange), Queue("b", exchange)]
    got: list[tuple[str, Any]] = []

    def on_message(body: Any, message: Message) -> None:
        got.append((message.delivery_info["routing_key"], body))
        message.ack()

    with Consumer(consumer_conn, queues, callbacks=[on_message], accept=["json"]):
        Producer(producer_conn.default_channel).publish(
            {"hello": 1}, exchange=exchange, serializer="json", declare=[exchange]
        )
        consumer_conn.drain_events(timeout=2)
        consumer_conn.drain_events(timeout=2)
    assert [body for _, body in got] == [{"hello": 1}, {"hello": 1}]
    assert _names(folders[0]) == []


def test_stress_three_producers_three_consumers(
    folders: tuple[Path, Path], worker_script: Path, tmp_path: Path
) -> None:
    """3000 messages from 3 producer processes reach 3 consumer processes exactly once, intact."""
    per_producer, producers_n, consumers_n = 1000, 3, 3
    total = per_producer * producers_n
    stop = tmp_path / "stop"
    results = [tmp_path / f"consumer-{i}.txt" for i in range(consumers_n)]
    consumers = [_spawn(worker_script, folders, "consume", str(r), str(stop)) for r in results]
    producers = [
        _spawn(worker_script, folders, "produce", f"p{i}", str(per_producer))
        for i in range(producers_n)
    ]

    def lines() -> list[str]:
        return [line for r in results if r.exists() for line in r.read_text().splitlines()]

    try:
        for proc in producers:
            assert proc.wait(timeout=60) == 0
        eventually(lambda: len(lines()) >= total, 60, 0.05, "all messages consumed")
        eventually(lambda: _names(folders[0]) == [], 10, 0.05, "an empty message folder")
    finally:
        stop.touch()
        for proc in consumers + producers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in consumers)

    seen = lines()
    assert [line for line in seen if line.startswith("BAD")] == []
    counts = collections.Counter(seen)
    assert {ident for ident, n in counts.items() if n > 1} == set()
    expected = {f"p{p}-{i}" for p in range(producers_n) for i in range(per_producer)}
    assert set(counts) == expected
    assert sum(1 for r in results if r.exists() and r.read_text()) >= 2  # work was shared
    assert _names(folders[0]) == []


def test_message_of_killed_consumer_is_redelivered(
    connect: Callable[..., Connection],
    folders: tuple[Path, Path],
    worker_script: Path,
    tmp_path: Path,
) -> None:
    """A message claimed by a consumer that is SIGKILLed before acking goes to another consumer."""
    _publish(connect(), "victim")
    ready = tmp_path / "ready"
    holder = _spawn(worker_script, folders, "hold", str(ready))
    try:
        eventually(ready.exists, 30, 0.05, "the holder to claim the message")
        assert ready.read_text() == "victim"
        claimed = _by_suffix(folders[0], CLAIM_SUFFIX)
        assert len(claimed) == 1
        assert f".{MSG_SUFFIX[1:]}.{holder.pid}-" in claimed[0]

        rescuer = connect(claim_recovery_interval=0.1).SimpleQueue("jobs")
        with pytest.raises(rescuer.Empty):  # the holder is alive: its claim is respected
            rescuer.get(timeout=0.5)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert holder.returncode == -signal.SIGKILL

    message = rescuer.get(timeout=5)  # recovered from within _get
    assert message.payload == {"id": "victim"}
    message.ack()
    rescuer.close()
    assert _names(folders[0]) == []


def test_orphan_recovered_at_channel_start(
    connect: Callable[..., Connection],
    folders: tuple[Path, Path],
    worker_script: Path,
    tmp_path: Path,
) -> None:
    """A new channel puts back messages claimed by dead processes before its first get."""
    _publish(connect(), "orphan")
    ready = tmp_path / "ready"
    holder = _spawn(worker_script, folders, "hold", str(ready))
    try:
        eventually(ready.exists, 30, 0.05, "the holder to claim the message")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert len(_by_suffix(folders[0], CLAIM_SUFFIX)) == 1

    conn = connect(claim_recovery_interval=3600)  # only the start-up recovery can find it
    assert conn.default_channel._size("jobs") == 1
    assert _drain_ids(conn) == ["orphan"]
    assert _names(folders[0]) == []


def test_unacked_restored_on_graceful_close(
    connect: Callable[..., Connection], folders: tuple[Path, Path]
) -> None:
    """Closing a channel puts its unacked messages back once, leaving no claimed files."""
    ids = [f"m{i}" for i in range(5)]
    _publish(connect(), *ids)
    consumer_conn = connect()
    simple = consumer_conn.SimpleQueue("jobs")
    taken = [simple.get(timeout=1) for _ in range(3)]
    assert [m.payload["id"] for m in taken] == ids[:3]  # oldest first
    assert len(_by_suffix(folders[0], CLAIM_SUFFIX)) == 3
    assert len(_by_suffix(folders[0], MSG_SUFFIX)) == 2

    consumer_conn.close()  # closes the channel: kombu's QoS restores the 3 unacked messages
    assert _by_suffix(folders[0], CLAIM_SUFFIX) == []
    assert len(_names(folders[0])) == 5

    again = _drain_ids(connect())
    assert sorted(again) == ids
    assert again[:3] == ids[:3]  # restored at their original place in the queue
    assert _names(folders[0]) == []


def test_reject_requeue_and_discard(
    connect: Callable[..., Connection], folders: tuple[Path, Path]
) -> None:
    """Reject with requeue puts the message back once; reject without requeue deletes it."""
    _publish(connect(), "a", "b")
    consumer_conn = connect()
    simple = consumer_conn.SimpleQueue("jobs")
    first = simple.get(timeout=1)
    first.reject(requeue=True)
    assert len(_by_suffix(folders[0], MSG_SUFFIX)) == 2
    assert _by_suffix(folders[0], CLAIM_SUFFIX) == []

    again = simple.get(timeout=1)
    assert again.payload == first.payload
    assert again.delivery_tag != first.delivery_tag  # every claim gets its own tag
    again.reject()
    assert [m.payload["id"] for m in [simple.get(timeout=1)]] == ["b"]
    consumer_conn.close()  # "b" unacked: restored when the channel closes
    assert len(_by_suffix(folders[0], MSG_SUFFIX)) == 1
    assert _drain_ids(connect()) == ["b"]


def test_size_counts_only_ready_messages(
    connect: Callable[..., Connection], folders: tuple[Path, Path]
) -> None:
    """``_size`` (and queue_declare's count) ignores claimed messages and unfinished writes."""
    conn = connect(claim_recovery_interval=3600)
    _publish(conn, "r1", "r2", "r3")
    _publish(conn, "x1", queue="other")
    channel = conn.default_channel
    taken = conn.SimpleQueue("jobs").get(timeout=1)
    data = folders[0]
    ours = fs_transport._owner_token()  # a live writer: recovery must leave it alone
    (data / f"{time.time_ns():020d}_u.jobs.msg.{ours}{TMP_SUFFIX}").write_bytes(b'{"half')
    assert channel._size("jobs") == 2
    assert channel.queue_declare("jobs", passive=True).message_count == 2
    assert channel._size("other") == 1

    assert channel.queue_purge("jobs") == 2  # the claimed message is not purged
    assert channel._size("jobs") == 0
    assert len(_by_suffix(data, CLAIM_SUFFIX)) == 1
    taken.ack()
    assert _by_suffix(data, CLAIM_SUFFIX) == []


def test_unfinished_write_of_dead_process_is_removed(
    connect: Callable[..., Connection], folders: tuple[Path, Path]
) -> None:
    """A temporary file left by a dead writer is deleted by recovery and never delivered."""
    data = folders[0]
    data.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = data / f"{time.time_ns():020d}_u.jobs.msg.{dead.stdout.strip()}-1{TMP_SUFFIX}"
    orphan.write_bytes(b'{"half')
    conn = connect()
    assert not orphan.exists()
    assert conn.default_channel._size("jobs") == 0


def test_no_ack_consumer_leaves_nothing_behind(
    connect: Callable[..., Connection], folders: tuple[Path, Path]
) -> None:
    """A message taken with no_ack is deleted on delivery, as nobody will ever ack it."""
    _publish(connect(), "n1")
    message = connect().SimpleQueue("jobs", no_ack=True).get(timeout=1)
    assert message.payload == {"id": "n1"}
    assert _names(folders[0]) == []
