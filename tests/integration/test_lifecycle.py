"""The daemon as a system service: notify protocol, graceful drain, reload, JSON logs."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import Daemon, eventually, hpod_env, quadratic_spec

from hpod.engine import make_storage


class NotifySocket:
    """The datagram socket systemd would listen on; a thread reads it as systemd would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self.closed.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def wait_for(self, state: str, timeout: float = 60) -> None:
        """Block until a datagram containing `state` (e.g. READY=1) has arrived."""
        eventually(
            lambda: any(state in m.split("\n") for m in list(self.messages)),
            timeout,
            0.05,
            lambda: f"{state} not received; got {self.messages}",
        )


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    """A notify socket in a short path (Unix socket paths are limited to 108 bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hpod-") as d:
        ns = NotifySocket(Path(d) / "notify")
        yield ns
        ns.closed.set()
        ns.sock.close()


def start(env: dict[str, str], log: Path) -> Daemon:
    """Start `hpod run` with `env` without waiting for health (the notify socket says)."""
    return Daemon([sys.executable, "-m", "hpod", "run"], env, log)


def counts(env: dict[str, str], name: str) -> dict[str, int]:
    """Trial counts by state, read with plain Optuna from the daemon's storage."""
    storage = make_storage(f"journal://{env['HPOD_DATA_DIR']}/studies.journal")
    study = optuna.load_study(study_name=name, storage=storage)
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def log_events(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's log lines, each parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in daemon.log().splitlines() if line.strip()]


def test_sigterm_drains_running_trials_and_a_restart_finishes_the_budget(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """READY=1 once serving; SIGTERM mid-study sends STOPPING=1, lets running trials finish,
    exits 0 with nothing RUNNING; a new start ends the study at exactly its budget."""
    env = hpod_env(tmp_path / "data", drain_timeout="60")
    env.update(NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="1000000")
    daemon = start(env, tmp_path / "daemon.log").start()
    notify_socket.wait_for("READY=1")
    spec = quadratic_spec("drain", trials=40, objective_kwargs={"sleep": 0.3}, max_concurrent=2)
    assert daemon.request("POST", "/studies", spec)[0] == 201
    daemon.wait_complete("drain", at_least=4)
    notify_socket.wait_for("WATCHDOG=1")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1")
    assert daemon.proc.wait(timeout=90) == 0
    stopped = [e for e in log_events(daemon) if e["event"] == "daemon.stopped"]
    assert stopped and stopped[0]["drained"] is True
    after_drain = counts(env, "drain")
    assert "running" not in after_drain and after_drain["complete"] < 40
    daemon.start()
    final = daemon.wait_study("drain")
    assert final["n_trials"] == 40 and final["counts"] == {"complete": 40}
    daemon.stop()


def test_trials_outliving_the_drain_timeout_are_resumed(tmp_path: Path) -> None:
    """With a drain shorter than a trial, the daemon still exits 0; the trials it left
    running are told after the restart and the budget is exact."""
    env = hpod_env(tmp_path / "data", drain_timeout="0.5")
    daemon = start(env, tmp_path / "daemon.log").start()
    spec = quadratic_spec("slow-drain", trials=6, objective_kwargs={"sleep": 2.0}, max_concurrent=2)
    assert daemon.request("POST", "/studies", spec)[0] == 201
    daemon.wait_complete("slow-drain", at_least=1)
    eventually(lambda: daemon.get("/studies/slow-drain")["in_flight"])  # what is left to resume
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=90) == 0
    stopped = [e for e in log_events(daemon) if e["event"] == "daemon.stopped"]
    assert stopped[0]["drained"] is False and stopped[0]["in_flight_left_to_resume"] >= 1
    daemon.start()
    final = daemon.wait_study("slow-drain")
    assert final["n_trials"] == 6 and final["counts"] == {"complete": 6}
    daemon.stop()


def test_sighup_reloads_settings_and_refuses_a_bad_file(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """SIGHUP applies a changed setting; a bad file is refused, named, and the daemon serves on."""
    config = tmp_path / "hpod.toml"
    config.write_text("max_inflight = 64\n")
    env = hpod_env(tmp_path / "data")
    env.update(HPOD_CONFIG=str(config), NOTIFY_SOCKET=str(notify_socket.path))
    daemon = start(env, tmp_path / "daemon.log").start()
    notify_socket.wait_for("READY=1")
    assert daemon.proc is not None
    config.write_text("max_inflight = 3\nlog_level = 'debug'\n")
    daemon.proc.send_signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING=1")
    _wait_log(daemon, "daemon.reloaded")
    reloaded = next(e for e in log_events(daemon) if e["event"] == "daemon.reloaded")
    assert set(reloaded["changed"]) == {"max_inflight", "log_level"}
    config.write_text("max_inflight = -1\n")
    daemon.proc.send_signal(signal.SIGHUP)
    _wait_log(daemon, "daemon.reload_refused")
    refused = next(e for e in log_events(daemon) if e["event"] == "daemon.reload_refused")
    assert refused["setting"] == "max_inflight"
    config.write_text("max_inflight = [unclosed\n")
    daemon.proc.send_signal(signal.SIGHUP)
    eventually(
        lambda: sum(e["event"] == "daemon.reload_refused" for e in log_events(daemon)) >= 2,
        what=lambda: daemon.log()[-2000:],
    )
    assert daemon.get("/health")["status"] == "ok"
    daemon.stop()


def test_log_lines_are_json_with_ids_bound_and_no_secrets(tmp_path: Path) -> None:
    """Every line the daemon writes is JSON; study lines carry the study, request lines the
    request id; the broker password never appears."""
    from conftest import AMQP_URL, require_service

    require_service("RabbitMQ", "127.0.0.1", 5672)
    env = hpod_env(tmp_path / "data", broker_url=AMQP_URL.replace("guest:guest", "guest:guest"))
    daemon = Daemon([sys.executable, "-m", "hpod", "run"], env, tmp_path / "d.log").start()
    spec = quadratic_spec("logged", trials=3)
    del spec["objective"]
    assert daemon.request("POST", "/studies", spec)[0] == 201
    bad = {
        "v": 1,
        "type": "trial.tell",
        "id": "req-42",
        "study": "logged",
        "trial": 99,
        "values": [1],
    }
    assert daemon.request("POST", "/requests", bad)[0] == 404
    daemon.stop()
    events = log_events(daemon)
    assert any(e["event"] == "daemon.ready" for e in events)
    assert "guest:guest@" not in daemon.log()
    rejected = [e for e in events if e["event"] == "request.rejected"]
    assert rejected and rejected[0]["id"] == "req-42"
    for event in events:
        if event["event"].startswith(("study.", "trial.")):
            assert event.get("study"), event


def _wait_log(daemon: Daemon, event: str, timeout: float = 30) -> None:
    eventually(lambda: event in daemon.log(), timeout, what=lambda: daemon.log()[-2000:])
