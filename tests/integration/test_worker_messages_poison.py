"""Poison tasks are bounded: a task that kills its worker process every time is retried at most
HPOD_MAX_ATTEMPTS times, then its trial fails with the reason, and the study completes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import DaemonFactory
from test_rabbitmq import Subscriber, publish

OBJECTIVES = json.dumps(
    {
        "exit_always": "worker_messages_objectives:exit_always",
        "killed_always": "worker_messages_objectives:killed_always",
    }
)


def spec(name: str, objective: str, trials: int) -> dict[str, object]:
    return {
        "name": name,
        "objective": objective,
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "budget": {"trials": trials},
        "sampler": {"name": "random", "seed": 0},
        "max_concurrent": 1,
        "mode": "fast",
        "trial_timeout": 600,  # the daemon's own deadline plays no part here
    }


@pytest.mark.broker
def test_a_task_that_kills_its_worker_every_time_fails_its_trial_after_max_attempts(
    rabbitmq: str,
    start_daemon: DaemonFactory,
    start_worker,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An objective that os._exit(1)s, and one SIGKILLed as by the OOM killer: Celery sees
    WorkerLostError; the task is retried (max_attempts - 1 times), then given up; each trial
    fails naming the deaths, and each study completes at its budget (before: the task was
    redelivered forever and the study never ended)."""
    here = Path(__file__).parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]))
    events = Subscriber(rabbitmq, ("trial.*", "study.completed"))
    daemon = start_daemon(
        "--no-workers", broker_url=rabbitmq, objectives=OBJECTIVES, max_attempts="2"
    )
    worker = start_worker(daemon.env, concurrency=1)
    for name, objective, trials in (("exits", "exit_always", 2), ("oom", "killed_always", 1)):
        reply = publish(
            rabbitmq, {"v": 1, "type": "study.create", "study": spec(name, objective, trials)}
        )
        assert reply is not None and reply["ok"], reply
    completed = {}
    while len(completed) < 2:
        done = events.until(lambda e: e["event"] == "study.completed", timeout=60)
        completed[done["study"]] = done["counts"]
    assert completed == {"exits": {"fail": 2}, "oom": {"fail": 1}}
    failed = [e for e in events.events if e["event"] == "trial.failed"]
    assert sorted((e["study"], e["trial"]) for e in failed) == [
        ("exits", 0),
        ("exits", 1),
        ("oom", 0),
    ]
    for event in failed:
        assert "worker process died running this trial 2 time(s)" in event["error"], event
    assert "WorkerLostError" in worker.log()
    events.close()


def test_a_poison_task_is_bounded_on_the_embedded_broker_too(
    start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bound with `hpod run`'s own local worker on the embedded broker: the retry
    travels as a new message there too, and the study completes with its trial failed."""
    here = Path(__file__).parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]))
    daemon = start_daemon(objectives=OBJECTIVES, max_attempts="2", local_workers="1")
    status, reply = daemon.request("POST", "/studies", spec("exits-embedded", "exit_always", 1))
    assert status == 201, reply
    final = daemon.wait_study("exits-embedded", timeout=90)
    assert final["counts"] == {"fail": 1}, final
    records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    lines = [r["line"] for r in records if r["event"] == "worker.output"]
    relayed = [json.loads(line) for line in lines if line.startswith("{")]
    given_up = [r for r in relayed if r.get("event") == "task.given_up"]
    assert [r["runs"] for r in given_up] == [2], relayed
