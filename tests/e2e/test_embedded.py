"""End to end on the embedded default: no broker, local worker processes, SQLite storage."""

from __future__ import annotations

import re
import subprocess
import sys

import psutil
from conftest import DaemonFactory, quadratic_spec


def test_study_runs_to_its_exact_budget_on_the_embedded_default(
    start_daemon: DaemonFactory,
) -> None:
    """A study submitted over HTTP runs on local Celery workers and completes at its budget."""
    daemon = start_daemon()
    status, reply = daemon.request("POST", "/studies", quadratic_spec("embedded-1", trials=16))
    assert status == 201, reply
    final = daemon.wait_study("embedded-1")
    assert final["state"] == "completed"
    assert final["n_trials"] == 16
    assert final["counts"] == {"complete": 16}
    assert final["best"]["value"] < 1.0


def test_cli_submit_waits_and_prints_the_best(start_daemon: DaemonFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`hpod submit SPEC --wait` follows the study to the end and prints the best params."""
    import json

    daemon = start_daemon()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(quadratic_spec("cli-1", trials=8)))
    out = subprocess.run(
        [sys.executable, "-m", "hpod", "submit", str(spec_file), "--wait"],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    assert "completed: 8 complete" in out
    assert "best params" in out
    best = subprocess.run(
        [sys.executable, "-m", "hpod", "best", "cli-1"],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert set(json.loads(best)["params"]) == {"x", "y"}


def test_studies_survive_a_sigkill_of_the_embedded_daemon(
    start_daemon: DaemonFactory, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL mid-study: the local worker stops too; restart on the same data: the study
    ends at exactly its budget."""
    spec = quadratic_spec("crash-embedded", trials=30, objective_kwargs={"sleep": 0.2})
    daemon = start_daemon(data_dir=tmp_path / "data")
    assert daemon.request("POST", "/studies", spec)[0] == 201
    daemon.wait_complete("crash-embedded", at_least=6)
    assert daemon.proc is not None
    workers = psutil.Process(daemon.proc.pid).children()
    assert workers, "the daemon started no local worker"
    daemon.kill()
    # The kernel tells the orphaned local worker to stop (PR_SET_PDEATHSIG): no second
    # worker keeps taking trials next to the restarted daemon's.
    _gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, [p.cmdline() for p in alive]
    restarted = start_daemon(data_dir=tmp_path / "data")
    final = restarted.wait_study("crash-embedded")
    assert final["n_trials"] == 30
    assert final["counts"] == {"complete": 30}


def test_an_objective_returning_the_wrong_shape_fails_its_trials(
    start_daemon: DaemonFactory,
) -> None:
    """A single-valued objective on a two-direction study fails each trial with the reason,
    and the study still ends at its budget instead of stalling."""
    daemon = start_daemon()
    spec = quadratic_spec("wrong-shape", trials=4, directions=["minimize", "maximize"])
    assert daemon.request("POST", "/studies", spec)[0] == 201
    final = daemon.wait_study("wrong-shape", timeout=120)
    assert final["counts"] == {"fail": 4}


def test_the_demo_of_make_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`hpod demo` (what `make run` runs) starts a daemon on the embedded default, completes
    its study with a progress bar, prints the best parameters and leaves no daemon behind;
    `hpod status` then reads the study from storage."""
    from conftest import hpod_env

    env = hpod_env(tmp_path / "data")
    out = subprocess.run(
        [sys.executable, "-m", "hpod", "demo", "--trials", "12"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert re.search(r"completed: \d+ complete", out) and "best params" in out
    assert "efficiency over 12 trials" in out and "compute spent" in out
    listing = subprocess.run(
        [sys.executable, "-m", "hpod", "studies"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "demo-" in listing and "completed" in listing
