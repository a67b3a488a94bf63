"""`hpod doctor` and `hpod workers`, over HTTP and on the command line, on both brokers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Daemon, DaemonFactory, quadratic_spec

STAGES = {
    "sampler",
    "dispatch",
    "queue_wait",
    "pack_wait",
    "evaluation",
    "transport",
    "storage",
    "policies",
}


def hpod(daemon: Daemon, *args: str) -> str:
    """Run an `hpod` command against `daemon`; its standard output."""
    return subprocess.run(
        [sys.executable, "-m", "hpod", *args],
        env={**daemon.env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def run_study(daemon: Daemon, name: str) -> None:
    """A small study with a measurable evaluation time, run to its end."""
    spec = quadratic_spec(name, trials=6, objective_kwargs={"sleep": 0.1})
    assert daemon.request("POST", "/studies", spec)[0] == 201
    daemon.wait_study(name)


def check_doctor(daemon: Daemon, name: str) -> None:
    """The study's breakdown has every stage, non-negative, and names a bottleneck."""
    report = daemon.get(f"/studies/{name}/doctor")
    assert set(report["seconds"]) == STAGES
    assert all(v >= 0 for v in report["seconds"].values())
    assert all(0 <= v <= 1 for v in report["shares"].values())
    assert report["seconds"]["evaluation"] >= 0.6  # 6 trials sleeping 0.1 s each
    assert report["seconds"]["sampler"] > 0 and report["seconds"]["storage"] > 0
    assert report["trials"] == 6
    assert report["bottleneck"] in STAGES
    assert report["verdict"].startswith(f"bottleneck: {report['bottleneck']} (")
    # Each result but the last was followed by a dispatch (fewer: results that came together).
    latency = report["result_to_dispatch"]
    assert 1 <= latency["samples"] <= 5
    assert 0 < latency["p50"] <= latency["p99"]
    out = hpod(daemon, "doctor", name)
    assert report["verdict"] in out
    assert f"({latency['samples']} dispatches)" in out
    assert all(stage in out for stage in STAGES)


def check_workers(daemon: Daemon, broker: str) -> list[dict[str, Any]]:
    """/workers and `hpod workers` list at least one worker with a pool; the list."""
    reply = daemon.get("/workers")
    assert reply["broker"] == broker
    assert len(reply["workers"]) >= 1
    assert all(w["pool"] >= 1 for w in reply["workers"])
    out = hpod(daemon, "workers")
    assert f"{len(reply['workers'])} worker(s)" in out
    assert reply["workers"][0]["name"] in out
    workers: list[dict[str, Any]] = reply["workers"]
    return workers


def test_doctor_and_workers_on_the_embedded_default(start_daemon: DaemonFactory) -> None:
    """After a study: its breakdown and bottleneck; the local worker with its pool and RSS."""
    daemon = start_daemon()
    run_study(daemon, "doctor-embedded")
    check_doctor(daemon, "doctor-embedded")
    (worker,) = check_workers(daemon, "embedded")
    assert worker["pool"] == 2  # HPOD_LOCAL_WORKERS
    assert worker["rss_bytes"] > 0
    assert {p["role"] for p in worker["processes"]} == {"worker", "pool"}
    whole = daemon.get("/doctor")
    assert "doctor-embedded" in whole["studies"]
    assert whole["resources"]["daemon"]["rss_bytes"] > 0
    assert whole["resources"]["backpressure"] is False
    out = hpod(daemon, "doctor")
    assert "doctor-embedded" in out and "back-pressure off" in out


@pytest.mark.broker
def test_doctor_and_workers_on_rabbitmq(
    rabbitmq: str,
    start_daemon: DaemonFactory,
    start_worker: Callable[..., Any],
) -> None:
    """On RabbitMQ the breakdown is the same, and Celery inspect lists the separate worker."""
    daemon = start_daemon("--no-workers", broker_url=rabbitmq)
    start_worker(daemon.env, concurrency=3)
    run_study(daemon, "doctor-amqp")
    check_doctor(daemon, "doctor-amqp")
    (worker,) = check_workers(daemon, "rabbitmq")
    assert worker["name"].startswith("w0@")
    assert worker["pool"] == 3
    assert worker["active"] == 0
    # The batching policy packs cheap trials: six trials take one to six tasks.
    assert 1 <= worker["tasks_done"] <= 6


def test_doctor_of_an_unknown_study_is_not_found(start_daemon: DaemonFactory) -> None:
    """A study hpod does not know gets a 404 over HTTP and exit code 1 from the CLI."""
    daemon = start_daemon("--no-workers")
    status, reply = daemon.request("GET", "/studies/nope/doctor", token=None)
    assert status == 404 and reply["error"]["code"] == "not_found"
    done = subprocess.run(
        [sys.executable, "-m", "hpod", "doctor", "nope"],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no hpod study named 'nope'" in done.stderr
