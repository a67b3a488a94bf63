"""The results queue is no longer an unvalidated write path into storage (issue 12, finding 6).

A test plays the worker: it takes the daemon's tasks off ``hpod.trials`` and publishes results
on ``hpod.results`` by hand. Every forged or malformed result is dead-lettered with its reason
and never told; the genuine results then complete the study.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pika
import pytest
from conftest import Daemon, DaemonFactory, eventually, quadratic_spec

from hpod.messaging import DEAD_LETTERS

pytestmark = pytest.mark.broker


class Queues:
    """A pika connection that takes tasks, publishes results and reads dead letters."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()

    def take_tasks(self, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        """`n` trial messages off hpod.trials, as a worker would receive them."""
        tasks: list[dict[str, Any]] = []
        for _props, body in self._take("hpod.trials", n, timeout):
            _args, kwargs, _embed = json.loads(body)
            tasks.extend(kwargs.get("trials", [kwargs]))
        assert len(tasks) == n, tasks
        return sorted(tasks, key=lambda t: t["number"])

    def _take(self, queue: str, n: int, timeout: float) -> list[tuple[Any, bytes]]:
        """`n` messages off `queue` (waiting for them): (properties, body) each."""
        found: list[tuple[Any, bytes]] = []

        def taken() -> bool:
            while len(found) < n:
                method, props, body = self.channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return False
                found.append((props, body))
            return True

        eventually(taken, timeout, what=lambda: f"{len(found)} of {n} messages on {queue}")
        return found

    def publish_result(self, body: dict[str, Any] | bytes) -> None:
        """Publish on hpod.results, as anyone holding broker credentials can."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        self.channel.basic_publish("", "hpod.results", raw, props)

    def dead_letters(self, n: int, timeout: float = 30) -> list[tuple[str, bytes]]:
        """`n` messages of hpod.dead: (reason, body)."""
        return [
            (str((props.headers or {}).get("x-hpod-error")), body)
            for props, body in self._take(DEAD_LETTERS, n, timeout)
        ]

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


def result(task: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A genuine-looking result of `task` (what hpod's worker would publish), with `changes`."""
    x, y = task["params"]["x"], task["params"]["y"]
    value = (x - 0.5) ** 2 + (y - 0.5) ** 2
    body = {
        "v": 1,
        "study": task["study"],
        "trial_id": task["trial_id"],
        "number": task["number"],
        "attempt": task["attempt"],
        "params": task["params"],
        "worker": "forger",
        "started_at": time.time(),
        "state": "complete",
        "values": [value],
        "duration": 0.01,
        "cost": {
            "cpu": 0.01,
            "full_cpu": 0.01,
            "data": 1.0,
            "rungs": [[1.0, value, False, 0.01]],
            "objective_version": "1",
            "deterministic": True,
            "mode": "balanced",
            "fidelity": "none",
        },
    }
    body.update(changes)
    return body


def wait_counts(daemon: Daemon, name: str, counts: dict[str, int]) -> dict[str, Any]:
    """Poll GET /studies/NAME (it must answer 200 every time) until its counts are `counts`."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        last.update(daemon.get(f"/studies/{name}"))
        return dict(last) if last["counts"] == counts else None

    return eventually(reached, 30, 0.2, lambda: f"{last}\n{daemon.log()[-3000:]}")


def test_forged_results_are_dead_lettered_and_never_told(
    rabbitmq: str, start_daemon: DaemonFactory
) -> None:
    """Each forged result by its exact input: a trial not in flight, an unknown study, an
    attempt never dispatched, other params, the `cost` that made GET /studies/NAME answer 500
    for good, rungs off the trial's ladder (cache poisoning), a bool as the trial number, and
    a body that is not JSON. None is told; the genuine results complete the study."""
    daemon = start_daemon("--no-workers", broker_url=rabbitmq)
    queues = Queues(rabbitmq)
    spec = quadratic_spec("forged", trials=2, max_concurrent=2, mode="balanced")
    status, reply = daemon.request("POST", "/studies", spec)
    assert status == 201 and reply["ok"], reply
    first, second = queues.take_tasks(2)
    ladder = first["plan"]["ladder"]
    forged_cost = {"cpu": "lots", "rungs": [[1]]}
    poisoned = result(first)["cost"] | {
        "fidelity": "data",
        "rungs": [[0.5, -1e9, False, 0.0], [1.0, result(first)["values"][0], False, 0.01]],
    }
    forgeries: list[tuple[dict[str, Any] | bytes, str]] = [
        (result(first, number=99, trial_id=99_999), "not in flight"),
        (result(first, study="no-such-study"), "unknown study"),
        (result(first, attempt=2), "attempt 2 was never dispatched"),
        (result(first, params={"x": 0.5, "y": 0.5}), "params differ"),
        (result(first, cost=forged_cost), "cost.cpu"),
        (result(first, cost=poisoned), "cost.rungs"),
        (result(first, number=True), "number"),
        (b"{not json", "not JSON"),
    ]
    for body, _reason in forgeries:
        queues.publish_result(body)
    dead = queues.dead_letters(len(forgeries))
    reasons = [reason for reason, _body in dead]
    assert len(dead) == len(forgeries), reasons
    for _body, expected in forgeries:
        assert any(expected in reason for reason in reasons), (expected, reasons)
    assert ladder != [0.5, 1.0]
    # Nothing was told, and the study answers (before: 500 for good after the forged cost).
    status_body = wait_counts(daemon, "forged", {"running": 2})
    assert status_body["in_flight"] == 2 and status_body["efficiency"]["trials"] == 0

    # The genuine results (one as a pack) are told, and the study completes.
    queues.publish_result(result(first))
    queues.publish_result({"v": 1, "results": [result(second)]})
    final = daemon.wait_study("forged", timeout=60)
    assert final["counts"] == {"complete": 2}
    assert final["efficiency"]["trials"] == 2
    # A second copy of a told result is ignored, not dead-lettered: a marker published after
    # it on the same queue (one consumer, in order) is the first dead letter that follows.
    queues.publish_result(result(first))
    queues.publish_result(b"{not json: the marker")
    assert [body for _reason, body in queues.dead_letters(1)] == [b"{not json: the marker"]
    assert daemon.get("/studies/forged")["counts"] == {"complete": 2}
    queues.close()


def test_gradient_boosting_with_a_billion_samples_is_refused_at_study_create(
    start_daemon: DaemonFactory,
) -> None:
    """`objective_kwargs` by the objective's own declared schema: n_samples = 10**9 (which
    exhausted a worker's memory, and was redelivered forever) is refused at the edge, the
    field named; nothing is stored."""
    daemon = start_daemon("--no-workers")
    spec = {
        "name": "huge",
        "objective": "gradient_boosting",
        "objective_kwargs": {"n_samples": 10**9},
        "space": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True}},
        "budget": {"trials": 4},
    }
    status, reply = daemon.request("POST", "/studies", spec)
    assert status == 400, reply
    assert reply["error"]["code"] == "invalid"
    assert reply["error"]["field"] == "study.objective_kwargs.n_samples"
    assert "250000" in reply["error"]["message"]
    status, _ = daemon.request("GET", "/studies/huge", token=None)
    assert status == 404
    spec["objective_kwargs"] = {"n_samples": 2000, "tree_count": 3}
    status, reply = daemon.request("POST", "/studies", spec)
    assert status == 400 and reply["error"]["field"] == "study.objective_kwargs.tree_count"
