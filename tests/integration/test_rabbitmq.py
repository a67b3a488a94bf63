"""hpod on RabbitMQ with Celery workers in separate processes, driven by plain pika clients."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest
from conftest import DaemonFactory, eventually, hpod_env, quadratic_spec

from hpod.config import load_settings
from hpod.daemon.bus import Bus
from hpod.workers.celery_config import make_celery

pytestmark = pytest.mark.broker


class Subscriber:
    """A plain pika subscriber to hpod.events, bound before anything is published."""

    def __init__(self, url: str, keys: tuple[str, ...] = ("#",)) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.exchange_declare("hpod.events", exchange_type="topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        for key in keys:
            self.channel.queue_bind(self.queue, "hpod.events", routing_key=key)
        self.events: list[dict[str, Any]] = []

    def until(self, predicate: Any, timeout: float = 180) -> dict[str, Any]:
        """Collect events until one satisfies `predicate`; returns it."""

        def matching() -> dict[str, Any] | None:
            method, _props, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                self.connection.process_data_events(time_limit=0.1)
                return None
            event: dict[str, Any] = json.loads(body)
            self.events.append(event)
            return event if predicate(event) else None

        got = lambda: f"no matching event; got {[e['event'] for e in self.events]}"  # noqa: E731
        return eventually(matching, timeout, 0, got)

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


def publish(url: str, message: dict[str, Any], reply: bool = True) -> dict[str, Any] | None:
    """Publish a request with plain pika, as any app would; returns the reply if asked for."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    replies: list[bytes] = []
    if reply:
        channel.basic_consume(
            "amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append(b), auto_ack=True
        )
    props = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        correlation_id=uuid.uuid4().hex,
        reply_to="amq.rabbitmq.reply-to" if reply else None,
    )
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    channel.basic_publish("", "hpod.requests", body, props)
    if reply:
        eventually(lambda: replies or connection.process_data_events(time_limit=0.1), 30, 0)
    connection.close()
    return json.loads(replies[0]) if replies else None


def test_a_study_published_with_pika_runs_on_celery_workers(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """A plain pika publish starts a study; separate worker processes evaluate it; a
    subscriber receives its study.completed event with the best parameters."""
    daemon = start_daemon("--no-workers", broker_url=rabbitmq)
    start_worker(daemon.env)
    events = Subscriber(rabbitmq)
    spec = quadratic_spec("amqp-pika-1", trials=20)
    reply = publish(rabbitmq, {"v": 1, "type": "study.create", "id": "create-1", "study": spec})
    assert reply is not None and reply["ok"], reply
    done = events.until(lambda e: e["event"] == "study.completed" and e["study"] == "amqp-pika-1")
    assert done["n_trials"] == 20
    assert set(done["best"]["params"]) == {"x", "y"}
    completed = [e for e in events.events if e["event"] == "trial.completed"]
    assert len(completed) == 20
    assert {e["worker"].split(":")[1].split("@")[0] for e in completed} == {"w0"}
    events.close()


#: A mode without batching: each result's tell and the next ask share one durable write
#: (`StudyRun._ask_with_tell`).
UNBATCHED_MODES = """
[unbatched]
policies = []
"""


@pytest.mark.parametrize("mode", ["balanced", "unbatched"])
def test_sigkill_of_the_daemon_loses_nothing_and_tells_nothing_twice(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker, tmp_path, mode: str
) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL mid-study, restart: exactly the budget, every trial told exactly once; in the
    packaged default mode (packs) and in one without batching (a tell and the next ask in
    one write, killed at any point of it)."""
    events = Subscriber(rabbitmq, ("trial.*", "study.*"))
    modes = tmp_path / "modes.toml"
    modes.write_text(UNBATCHED_MODES)
    settings = {"broker_url": rabbitmq, "modes_file": str(modes)}
    daemon = start_daemon("--no-workers", data_dir=tmp_path / "d", **settings)
    start_worker(daemon.env)
    spec = quadratic_spec(
        "amqp-crash", trials=40, objective_kwargs={"sleep": 0.1}, max_concurrent=6, mode=mode
    )
    assert publish(rabbitmq, {"v": 1, "type": "study.create", "study": spec})["ok"]  # type: ignore[index]
    events.until(lambda e: e["event"] == "trial.completed" and e["trial"] >= 8)
    daemon.kill()
    time.sleep(1.0)  # results keep arriving in hpod.results while the daemon is down
    restarted = start_daemon("--no-workers", data_dir=tmp_path / "d", **settings)
    events.until(lambda e: e["event"] == "study.completed" and e["study"] == "amqp-crash")
    # Every trial's event went out (a result redelivered after the crash may repeat one:
    # events are at-least-once), and the storage holds each trial told exactly once.
    told = Counter(e["trial"] for e in events.events if e["event"] == "trial.completed")
    assert sorted(told) == list(range(40))
    final = restarted.get("/studies/amqp-crash")
    assert final["n_trials"] == 40 and final["counts"] == {"complete": 40}


def test_external_evaluator_asks_and_tells_over_the_queue(
    rabbitmq: str, start_daemon: DaemonFactory
) -> None:
    """ask → evaluate outside → tell over AMQP; a repeated tell is answered idempotently."""
    start_daemon("--no-workers", broker_url=rabbitmq)
    spec = quadratic_spec("amqp-external", trials=3)
    del spec["objective"]
    assert publish(rabbitmq, {"v": 1, "type": "study.create", "study": spec})["ok"]  # type: ignore[index]
    for i in range(3):
        asked = publish(
            rabbitmq, {"v": 1, "type": "trial.ask", "id": f"ask-{i}", "study": "amqp-external"}
        )
        again = publish(
            rabbitmq, {"v": 1, "type": "trial.ask", "id": f"ask-{i}", "study": "amqp-external"}
        )
        assert asked["ok"] and again["result"] == asked["result"]  # type: ignore[index]
        params = asked["result"]["params"]  # type: ignore[index]
        tell = {
            "v": 1,
            "type": "trial.tell",
            "study": "amqp-external",
            "trial": asked["result"]["trial"],
            "values": [params["x"] ** 2 + params["y"] ** 2],
        }  # type: ignore[index]
        first = publish(rabbitmq, tell)
        second = publish(rabbitmq, tell)
        assert first["result"]["already_told"] is False  # type: ignore[index]
        assert second["ok"] and second["result"]["already_told"] is True  # type: ignore[index]
    late = publish(rabbitmq, {"v": 1, "type": "trial.ask", "study": "amqp-external"})
    assert late["error"]["code"] in {"budget_exhausted", "not_running"}  # type: ignore[index]


def test_the_python_client_runs_a_study_and_gets_the_best_as_an_event(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """The five-line client example: run_study returns the study.completed event."""
    from hpod.client import Client

    start_worker(start_daemon(broker_url=rabbitmq).env)
    with Client(rabbitmq) as hpod:
        best = hpod.run_study(quadratic_spec("client-amqp", trials=10), timeout=120)
    assert best["event"] == "study.completed"
    assert best["best"]["value"] < 2.0


def test_a_strategy_switch_over_the_queue_is_decided_and_published(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """`study.strategy` through the Python client on AMQP: the switch is a forced decision of
    the study, published as `strategy.chosen` on hpod.events; an unknown name is refused
    naming the field."""
    from hpod.client import Client, ClientError

    start_worker(start_daemon("--no-workers", broker_url=rabbitmq).env)
    events = Subscriber(rabbitmq, ("strategy.chosen", "study.completed"))
    spec = quadratic_spec(
        "amqp-strategy", trials=40, objective_kwargs={"sleep": 0.2}, max_concurrent=1
    )
    del spec["sampler"]  # the policy decides
    with Client(rabbitmq) as hpod:
        hpod.create_study(spec)
        events.until(lambda e: e["event"] == "strategy.chosen" and e["trigger"] == "start")
        status = hpod.set_strategy("amqp-strategy", "qmc")
        assert status["strategy"]["current"] == "qmc" and status["strategy"]["source"] == "forced"
        with pytest.raises(ClientError) as refused:
            hpod.set_strategy("amqp-strategy", "oracle")
        assert refused.value.error["field"] == "strategy"
    switched = events.until(lambda e: e["event"] == "strategy.chosen" and e["trigger"] == "switch")
    assert switched["study"] == "amqp-strategy" and switched["strategy"] == "qmc"
    events.until(lambda e: e["event"] == "study.completed")
    events.close()


def test_tasks_the_bus_publishes_are_celery_messages_a_stock_worker_runs(
    rabbitmq: str, tmp_path: Path, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon publishes task messages with Celery's own message builder on a kept kombu
    producer (`Bus._send_task`, not `Celery.send_task`): a real worker runs a single task
    and a pack from them and answers each trial on hpod.results; the message carries
    Celery's headers (task name, id, time limits)."""
    env = hpod_env(tmp_path / "data", broker_url=rabbitmq)
    for key, value in env.items():
        if key.startswith("HPOD_"):
            monkeypatch.setenv(key, value)
    settings = load_settings()
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq))
    channel = connection.channel()
    for name in ("hpod.trials", "hpod.results"):
        channel.queue_declare(name, durable=True)
        channel.queue_purge(name)
    study = f"bus-{uuid.uuid4().hex[:6]}"

    def task(number: int) -> dict[str, Any]:
        return {
            "study": study,
            "trial_id": 100 + number,
            "number": number,
            "params": {"x": 0.5, "y": float(number)},
            "objective": "quadratic",
            "objective_kwargs": {},
            "attempt": 1,
            "plan": {},
        }

    async def send() -> None:
        bus = Bus(settings, make_celery(settings))
        try:
            await bus.dispatch(task(0), soft_limit=30, hard_limit=60)
            await bus.dispatch_pack([task(1), task(2)], soft_limit=60, hard_limit=90)
        finally:
            bus.close()

    asyncio.run(send())
    method, props, body = channel.basic_get("hpod.trials", auto_ack=False)
    assert method is not None
    assert props.headers["task"] == "hpod.evaluate"
    assert props.headers["timelimit"] == [60, 30]
    assert props.correlation_id == props.headers["id"]
    assert json.loads(body)[1]["number"] == 0
    channel.basic_nack(method.delivery_tag, requeue=True)
    start_worker(env)
    answered: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while len(answered) < 3 and time.monotonic() < deadline:
        method, _props, body = channel.basic_get("hpod.results", auto_ack=True)
        if method is None:
            connection.process_data_events(time_limit=0.2)
            continue
        message = json.loads(body)
        for result in message.get("results", [message]):
            answered[result["number"]] = result
    connection.close()
    assert sorted(answered) == [0, 1, 2]
    assert all(r["state"] == "complete" and r["study"] == study for r in answered.values())
    assert answered[2]["values"] == [pytest.approx(2.25)]
