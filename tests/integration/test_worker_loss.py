"""A worker killed mid-trial loses nothing: the trial is evaluated again and told once."""

from __future__ import annotations

import time
from collections import Counter

import psutil
import pytest
from conftest import DaemonFactory, eventually, quadratic_spec
from test_rabbitmq import Subscriber, publish

pytestmark = pytest.mark.broker


def _busy_pool_child(worker_pid: int, timeout: float = 60) -> psutil.Process:
    """A prefork pool process of the worker that is running a task (using CPU or sleeping
    inside an objective), found by waiting for the first trial to be underway."""
    children = eventually(
        lambda: psutil.Process(worker_pid).children(recursive=True),
        timeout,
        what="the worker has no pool process",
    )
    return children[0]


def test_a_killed_pool_process_has_its_trial_retried(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of the pool process running a trial: Celery redelivers it
    (reject_on_worker_lost), the study completes at its budget, every trial told once."""
    events = Subscriber(rabbitmq, ("trial.*", "study.completed"))
    daemon = start_daemon("--no-workers", broker_url=rabbitmq)
    worker = start_worker(daemon.env, concurrency=1)
    spec = quadratic_spec(
        "worker-loss", trials=6, objective_kwargs={"sleep": 1.5}, max_concurrent=1
    )
    assert publish(rabbitmq, {"v": 1, "type": "study.create", "study": spec})["ok"]  # type: ignore[index]
    events.until(lambda e: e["event"] == "trial.completed" and e["trial"] == 0)
    time.sleep(0.5)  # trial 1 is now running in the pool process
    assert worker.proc is not None
    _busy_pool_child(worker.proc.pid).kill()
    events.until(lambda e: e["event"] == "study.completed" and e["study"] == "worker-loss")
    told = Counter(e["trial"] for e in events.events if e["event"].startswith("trial."))
    assert sorted(told) == list(range(6)) and set(told.values()) == {1}
    assert all(
        e["event"] == "trial.completed" for e in events.events if e["event"].startswith("trial.")
    )
    # Celery saw its pool process die with the trial, and the trial ran again.
    assert "WorkerLostError" in worker.log()


def test_a_killed_worker_machine_has_its_trials_taken_over(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of a whole worker (main process and pool) mid-trial: RabbitMQ redelivers its
    unacknowledged trials to the other worker; nothing is lost or told twice."""
    events = Subscriber(rabbitmq, ("trial.*", "study.completed"))
    daemon = start_daemon("--no-workers", broker_url=rabbitmq)
    doomed = start_worker(daemon.env, concurrency=1)
    spec = quadratic_spec(
        "machine-loss", trials=8, objective_kwargs={"sleep": 1.0}, max_concurrent=2
    )
    assert publish(rabbitmq, {"v": 1, "type": "study.create", "study": spec})["ok"]  # type: ignore[index]
    events.until(lambda e: e["event"] == "trial.completed")
    assert doomed.proc is not None
    for proc in [
        *psutil.Process(doomed.proc.pid).children(recursive=True),
        psutil.Process(doomed.proc.pid),
    ]:
        proc.kill()
    start_worker(daemon.env, concurrency=2)
    events.until(lambda e: e["event"] == "study.completed" and e["study"] == "machine-loss")
    told = Counter(e["trial"] for e in events.events if e["event"].startswith("trial."))
    assert sorted(told) == list(range(8)) and set(told.values()) == {1}
