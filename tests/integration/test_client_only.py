"""`hpod.client` as a client app has it: no daemon settings, none of the daemon's libraries.

Issue 17, item 3: a bad ``/etc/hpod/hpod.toml`` (or ``HPOD_CONFIG`` naming a broken file) used
to break every client app, since the client loaded the daemon's settings when it was made.
Both tests run the client in a fresh interpreter with ``HPOD_CONFIG`` pointing to a broken
TOML file; the second runs it with *only* the standard library, pika and hpod's source on the
path (``python -S``: no site-packages), so any import of pydantic, kombu, Celery, Optuna or
torch would fail there, and drives a real daemon on RabbitMQ over AMQP and over HTTP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DaemonFactory, quadratic_spec

import hpod

#: Libraries of the daemon and the workers that a client app must never load.
DAEMON_LIBRARIES = ("torch", "optuna", "celery", "kombu", "pydantic", "pydantic_settings")
SOURCE_ROOT = Path(hpod.__file__).resolve().parent.parent


def _broken_config(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text("http_port = [not toml\n")
    return path


def _client_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPOD_")}
    env["HPOD_CONFIG"] = str(_broken_config(tmp_path))
    env.update(extra)
    return env


def test_the_client_loads_no_daemon_library_and_reads_no_settings(tmp_path: Path) -> None:
    """Importing `hpod.client` and making clients for both transports with a broken
    HPOD_CONFIG succeeds and loads none of torch, optuna, celery, kombu, pydantic(-settings)."""
    assert (
        subprocess.run(  # the broken file does break the daemon's settings
            [sys.executable, "-m", "hpod", "config", "check"],
            env=_client_env(tmp_path),
            capture_output=True,
            timeout=120,
        ).returncode
        != 0
    )
    code = (
        "import json, sys\n"
        "from hpod.client import Client\n"
        "Client('http://127.0.0.1:9', token='t' * 16)\n"
        "Client('amqp://guest:guest@127.0.0.1:9/%2F')\n"
        f"loaded = [m for m in {DAEMON_LIBRARIES!r} if m in sys.modules]\n"
        "print(json.dumps(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_client_env(tmp_path, PYTHONPATH=str(SOURCE_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


#: Run in an interpreter without site-packages: a study over AMQP (`run_study`, answered by
#: the `study.completed` event), then one over HTTP with a token, and a refused request.
CLIENT_APP = """
import json, sys
from hpod.client import Client, ClientError
amqp_url, http_url, token, spec_amqp, spec_http = sys.argv[1:]
with Client(amqp_url) as hpod:
    event = hpod.run_study(json.loads(spec_amqp), timeout=120)
http = Client(http_url, token=token)
http.create_study(json.loads(spec_http))
status = http.wait(json.loads(spec_http)["name"], timeout=120)
try:
    http.create_study({**json.loads(spec_http), "name": "bad", "budget": {"trials": 0}})
    refused = None
except ClientError as exc:
    refused = exc.error
print(json.dumps({"event": event, "status": status, "refused": refused,
                  "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.broker
def test_a_client_only_environment_runs_studies_over_amqp_and_http(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """With only the standard library, pika and hpod's source importable, and a broken
    HPOD_CONFIG, the client runs a study to completion over AMQP and one over HTTP against a
    real daemon on RabbitMQ, and gets the daemon's refusal as a `ClientError`."""
    daemon = start_daemon(broker_url=rabbitmq)
    start_worker(daemon.env)
    pika_spec = importlib.util.find_spec("pika")
    assert pika_spec is not None and pika_spec.submodule_search_locations
    client_path = tmp_path / "client-path"
    client_path.mkdir()
    (client_path / "pika").symlink_to(next(iter(pika_spec.submodule_search_locations)))
    (client_path / "hpod").symlink_to(SOURCE_ROOT / "hpod")
    spec_amqp = quadratic_spec("client-only-amqp", trials=6)
    spec_http = quadratic_spec("client-only-http", trials=6)
    argv = [rabbitmq, daemon.url, daemon.token, json.dumps(spec_amqp), json.dumps(spec_http)]
    result = subprocess.run(
        [sys.executable, "-S", "-c", CLIENT_APP, *argv],
        env=_client_env(tmp_path, PYTHONPATH=str(client_path)),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr + daemon.log()[-3000:]
    out = json.loads(result.stdout)
    assert out["event"]["event"] == "study.completed"
    assert out["event"]["study"] == "client-only-amqp"
    assert out["event"]["best"]["value"] < 8.0
    assert out["status"]["state"] == "completed"
    assert out["status"]["counts"] == {"complete": 6}
    assert out["refused"]["field"] == "study.budget.trials"
    assert not set(out["modules"]) & {*DAEMON_LIBRARIES, "numpy"}
