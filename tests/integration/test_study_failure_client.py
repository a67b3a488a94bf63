"""A client waiting for a study that fails gets an error, not a wait forever (issue 12,
finding 1: "a waiting Client.run_study blocks forever")."""

from __future__ import annotations

import pytest
from conftest import DaemonFactory, quadratic_spec

from hpod.client import Client, ClientError, StudyFailed

HUGE = {"x": {"type": "float", "low": -1.7976931348623157e308, "high": 1.7976931348623157e308}}

pytestmark = pytest.mark.broker


def test_run_study_raises_study_failed_over_amqp_and_http(
    rabbitmq: str, start_daemon: DaemonFactory
) -> None:
    """The issue's spec, where the edge still lets it through: `run_study` (AMQP, waiting on
    events) raises `StudyFailed` with the reason when `study.failed` comes; `wait` (HTTP)
    raises it too from the status, and the daemon goes on serving."""
    daemon = start_daemon("--no-workers", broker_url=rabbitmq)
    spec = {**quadratic_spec("huge-client", trials=3), "space": HUGE}
    with Client(rabbitmq, timeout=30) as client:
        try:
            with pytest.raises(StudyFailed) as failed:
                client.run_study(spec, timeout=60)
        except ClientError as refused:  # refused at the edge: nothing can fail later
            pytest.skip(f"the edge refuses the spec now: {refused}")
    assert failed.value.study == "huge-client"
    assert failed.value.reason and "overflow" in failed.value.reason.lower()
    http = Client(daemon.url, token=daemon.token)
    with pytest.raises(StudyFailed) as again:
        http.wait("huge-client", timeout=10)
    assert again.value.reason == failed.value.reason
    assert daemon.get("/health")["status"] == "ok"
