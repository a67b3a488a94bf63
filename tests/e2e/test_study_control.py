"""Pause, resume and a live budget change, over HTTP and the queue envelope, across a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import Daemon, DaemonFactory, eventually, quadratic_spec


def created(daemon: Daemon, name: str) -> int:
    """Trials created so far."""
    n: int = daemon.get(f"/studies/{name}")["n_trials"]
    return n


def settle(daemon: Daemon, name: str, timeout: float = 30) -> dict[str, object]:
    """Wait until nothing of the study is in flight; its status."""

    def settled() -> dict[str, object] | None:
        status: dict[str, object] = daemon.get(f"/studies/{name}")
        return None if status["in_flight"] else status

    return eventually(settled, timeout)


def turn_the_daemon(daemon: Daemon, name: str) -> None:
    """Run another study to its end on the same daemon while a study is paused.

    Its trials are asked, dispatched and told by the same event loop as the paused study's
    loop (woken by the pause, its last result and the budget change): once it completes, that
    loop has had every chance to dispatch. An observed sign of progress, where a sleep would
    only guess how long is long enough on a busy machine.
    """
    assert daemon.request("POST", "/studies", quadratic_spec(name, trials=4))[0] == 201
    assert daemon.wait_study(name)["counts"] == {"complete": 4}


def test_pause_resume_and_budget_change_survive_a_restart(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """A paused study dispatches nothing (also after a restart) until resumed; a budget
    change applies at once and is kept; the study ends at exactly the new budget."""
    data = tmp_path / "data"
    daemon = start_daemon(data_dir=data)
    spec = quadratic_spec("control", trials=40, objective_kwargs={"sleep": 0.1}, max_concurrent=1)
    spec["mode"] = "thorough"
    assert daemon.request("POST", "/studies", spec)[0] == 201
    eventually(lambda: created(daemon, "control") >= 3, interval=0.05)
    status, reply = daemon.request("POST", "/studies/control/pause")
    assert status == 200 and reply["result"]["state"] == "paused", reply
    paused_at = settle(daemon, "control")["n_trials"]
    turn_the_daemon(daemon, "clock-1")
    assert created(daemon, "control") == paused_at
    status, reply = daemon.request(
        "POST",
        "/requests",
        {"v": 1, "type": "study.budget", "name": "control", "budget": {"trials": paused_at + 4}},
    )
    assert status == 200 and reply["result"]["budget"]["trials"] == paused_at + 4, reply
    daemon.stop()
    daemon = start_daemon(data_dir=data)  # the paused study's loop starts before /health
    turn_the_daemon(daemon, "clock-2")
    status_after = daemon.get("/studies/control")
    assert status_after["state"] == "paused" and status_after["running"]
    assert status_after["n_trials"] == paused_at
    assert status_after["budget"]["trials"] == paused_at + 4
    assert daemon.request("POST", "/studies/control/resume")[0] == 200
    final = daemon.wait_study("control")
    assert final["n_trials"] == paused_at + 4 and final["state"] == "completed"
    assert final["counts"] == {"complete": paused_at + 4}


def test_control_of_a_finished_or_unknown_study_is_refused(start_daemon: DaemonFactory) -> None:
    """Pausing a study that is not running, or changing a budget to nonsense, is refused
    with the field named; nothing changes."""
    daemon = start_daemon()
    spec = quadratic_spec("finished", trials=2)
    assert daemon.request("POST", "/studies", spec)[0] == 201
    daemon.wait_study("finished")
    status, reply = daemon.request("POST", "/studies/finished/pause")
    assert status == 409 and reply["error"]["code"] == "not_running", reply
    status, reply = daemon.request("POST", "/studies/nobody/resume")
    assert status == 404 and reply["error"]["field"] == "study", reply
    status, reply = daemon.request("POST", "/studies/finished/budget", {"budget": {"trials": 0}})
    assert status == 400 and reply["error"]["field"] == "budget.trials", reply
    assert daemon.get("/studies/finished")["state"] == "completed"


def test_the_command_line_pauses_resumes_rebudgets_and_stops(start_daemon: DaemonFactory) -> None:
    """`hpod pause|resume|budget|stop NAME` do what the routes do and print the new state."""
    daemon = start_daemon()
    spec = quadratic_spec("cli-control", trials=500, objective_kwargs={"sleep": 0.05})
    assert daemon.request("POST", "/studies", spec)[0] == 201

    def hpod(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "hpod", *args, "--url", daemon.url],
            env=daemon.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "paused" in hpod("pause", "cli-control")
    assert "budget 20 trials" in hpod("budget", "cli-control", "--trials", "20")
    assert "running" in hpod("resume", "cli-control")
    final = daemon.wait_study("cli-control")
    assert final["n_trials"] == 20 and final["state"] == "completed"
    second = quadratic_spec("cli-stop", trials=500, objective_kwargs={"sleep": 0.05})
    assert daemon.request("POST", "/studies", second)[0] == 201
    assert "stopped" in hpod("stop", "cli-stop")
    assert daemon.wait_study("cli-stop")["state"] == "stopped"
    refused = subprocess.run(
        [sys.executable, "-m", "hpod", "budget", "cli-control", "--url", daemon.url],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--trials" in refused.stderr
