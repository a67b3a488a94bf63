"""Worker output is relayed as data, never as the daemon's own log records (issue 12, #12)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import DaemonFactory

FORGED = (
    '{"level": "critical", "event": "daemon.compromised", "logger": "hpod.daemon", '
    '"broker": "amqp://hpod:hunter2@rabbit:5672/%2F"}'
)


def test_a_forged_record_printed_by_an_objective_is_one_field_of_a_worker_output_record(
    start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log-injection line, printed on a local worker's stdout by an objective: before,
    it was copied verbatim into the daemon's JSON log (its own record, level critical, the
    password in clear). Now it is the `line` of a `worker.output` record, redacted."""
    helpers = Path(__file__).parent.parent / "integration"
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(helpers), os.environ.get("PYTHONPATH", "")])
    )
    objectives = json.dumps({"noisy": "worker_messages_objectives:noisy"})
    daemon = start_daemon(objectives=objectives, local_workers="1")
    spec = {
        "name": "noisy",
        "objective": "noisy",
        "objective_kwargs": {"line": FORGED},
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "budget": {"trials": 1},
    }
    status, reply = daemon.request("POST", "/studies", spec)
    assert status == 201, reply
    assert daemon.wait_study("noisy", timeout=120)["counts"] == {"complete": 1}
    records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    assert not [r for r in records if r.get("event") == "daemon.compromised"]
    relayed = [r for r in records if "daemon.compromised" in str(r.get("line"))]
    assert relayed and all(r["event"] == "worker.output" for r in relayed), relayed
    assert "hunter2" not in daemon.log()
