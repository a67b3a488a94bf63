"""A client waiting for a study that fails gets an error, not a wait forever (issue 12,
finding 1: "a waiting Client.run_study blocks forever")."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import Daemon, hpod_env, quadratic_spec

from hpod.client import Client, StudyFailed

#: Imported at start by the daemon (a `sitecustomize` on its path): hpod's random sampler
#: (`hpod.engine.RandomSampler`, the spec's `random`) sampling the parameter `boom` raises
#: what an unsampleable range raised before the edge refused such ranges, so a study with a
#: valid spec fails in its loop for real.
HOOK = """
import hpod.engine

_real = hpod.engine.RandomSampler.sample_independent


def _sample(self, study, trial, name, distribution):
    if name == "boom":
        raise OverflowError("Range exceeds valid bounds")
    return _real(self, study, trial, name, distribution)


hpod.engine.RandomSampler.sample_independent = _sample
"""

pytestmark = pytest.mark.broker


def test_run_study_raises_study_failed_over_amqp_and_http(rabbitmq: str, tmp_path: Path) -> None:
    """A study whose loop fails every time: `run_study` (AMQP, waiting on events) raises
    `StudyFailed` with the reason when `study.failed` comes; `wait` (HTTP) raises it too from
    the status, and the daemon goes on serving."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    path = ":".join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    env = hpod_env(tmp_path / "data", broker_url=rabbitmq)
    env["PYTHONPATH"] = path
    argv = [sys.executable, "-m", "hpod", "run", "--no-workers"]
    daemon = Daemon(argv, env, tmp_path / "daemon.log").start()
    try:
        _fails_on_both_channels(rabbitmq, daemon)
    finally:
        daemon.stop()


def _fails_on_both_channels(rabbitmq: str, daemon: Daemon) -> None:
    spec = quadratic_spec("boom-client", trials=3)
    spec["space"] = {"boom": {"type": "float", "low": 0.0, "high": 1.0}}
    with Client(rabbitmq, timeout=30) as client, pytest.raises(StudyFailed) as failed:
        client.run_study(spec, timeout=60)
    assert failed.value.study == "boom-client"
    assert failed.value.reason and "overflow" in failed.value.reason.lower()
    http = Client(daemon.url, token=daemon.token)
    with pytest.raises(StudyFailed) as again:
        http.wait("boom-client", timeout=10)
    assert again.value.reason == failed.value.reason
    assert daemon.get("/health")["status"] == "ok"
