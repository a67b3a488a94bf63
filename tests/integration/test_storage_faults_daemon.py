"""`hpod run` against bad stored state (issue 12, findings 1 and 13): a second daemon on the
same data directory, a journal that does not parse, a study an older daemon stored that can no
longer run. Each is a real daemon on the embedded broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import Daemon, DaemonFactory, eventually, hpod_env, quadratic_spec

from hpod.engine import CREATED_ATTR, SPEC_ATTR, STATE_ATTR, make_storage

HUGE = {"x": {"type": "float", "low": -1.7976931348623157e308, "high": 1.7976931348623157e308}}


def hpod(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run an `hpod` command with a daemon's environment."""
    return subprocess.run(
        [sys.executable, "-m", "hpod", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_second_daemon_on_the_same_data_dir_is_refused_with_exit_2(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """The second `hpod run` exits 2 at once, naming the first one's pid and the data dir,
    and the first keeps serving."""
    first = start_daemon()
    env = hpod_env(tmp_path / "data")  # same data dir, another HTTP port
    second = hpod(env, "run", "--no-workers")
    assert second.returncode == 2, second.stderr
    assert first.proc is not None and f"pid {first.proc.pid}" in second.stderr
    assert str(tmp_path / "data") in second.stderr
    assert "daemon.ready" not in second.stdout  # refused before storage and queues
    repair = hpod(env, "journal", "repair", "--dry-run")
    assert repair.returncode == 2 and "another hpod daemon" in repair.stderr
    assert first.get("/health")["status"] == "ok"


def test_a_journal_that_does_not_parse_is_refused_then_repaired(tmp_path: Path) -> None:
    """NUL bytes mid-file: `hpod run` exits 2 naming file, line and offset; `hpod config
    check` says the same (exit 1); `hpod journal repair` keeps every valid operation and the
    daemon then starts with the study's trials."""
    data = tmp_path / "data"
    data.mkdir()
    path = data / "studies.journal"
    storage = make_storage(f"journal://{path}")
    study = optuna.create_study(study_name="kept", storage=storage)
    for i in range(4):
        study.enqueue_trial({"x": float(i)})
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", -5, 5))
    lines = path.read_bytes().splitlines(keepends=True)
    offset = sum(len(x) for x in lines[:3])
    path.write_bytes(b"".join(lines[:3]) + b"\x00" * 40 + b"\n" + b"".join(lines[3:]))
    env = hpod_env(data)
    run = hpod(env, "run", "--no-workers")
    assert run.returncode == 2
    assert f"{path}: line 4 (byte offset {offset})" in run.stderr and "NUL" in run.stderr
    check = hpod(env, "config", "check")
    assert check.returncode == 1 and f"line 4 (byte offset {offset})" in check.stderr
    dry = hpod(env, "journal", "repair", "--dry-run")
    assert dry.returncode == 0 and "1 bad lines" in dry.stdout
    assert b"\x00" in path.read_bytes()
    repaired = hpod(env, "journal", "repair")
    assert repaired.returncode == 0, repaired.stderr
    assert hpod(env, "config", "check").returncode == 0
    trials = optuna.load_study(study_name="kept", storage=make_storage(f"journal://{path}"))
    assert [t.value for t in trials.trials] == [0.0, 1.0, 2.0, 3.0]


def test_a_stored_study_that_cannot_run_is_failed_and_the_daemon_serves(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """The issue's float space (low -1.797e308, high 1.797e308) stored by an older daemon
    with its trial stuck RUNNING: `hpod run` used to exit with a traceback on every start.
    Now the daemon starts, GET /studies/NAME shows `failed` with the reason, the stuck trial
    is failed, and another study runs to its budget; a restart keeps it all."""
    data = tmp_path / "data"
    data.mkdir()
    storage = make_storage(f"journal://{data / 'studies.journal'}")
    spec = {**quadratic_spec("huge", trials=4), "space": HUGE, "mode": "balanced"}
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "huge")
    storage.set_study_user_attr(study_id, CREATED_ATTR, time.time())
    storage.set_study_user_attr(study_id, STATE_ATTR, "running")
    storage.set_study_user_attr(study_id, SPEC_ATTR, json.dumps(spec))
    optuna.load_study(study_name="huge", storage=storage).ask()
    daemon = start_daemon()

    def failed() -> dict[str, Any] | None:
        status: dict[str, Any] = daemon.get("/studies/huge")
        return status if status["state"] == "failed" else None

    status = eventually(failed, 30, 0.2)
    assert status["running"] is False and status["failure"]
    assert status["counts"] == {"fail": 1}
    code, reply = daemon.request("POST", "/studies", quadratic_spec("next", trials=4))
    assert code in (200, 201), reply
    assert daemon.wait_study("next", timeout=120)["counts"] == {"complete": 4}
    daemon.stop()
    daemon.start()
    again = daemon.get("/studies/huge")
    assert again["state"] == "failed" and again["failure"] == status["failure"]
    assert daemon.get("/health")["status"] == "ok"
    shown = hpod(daemon.env, "status", "huge")
    assert shown.returncode == 0, shown.stderr
    assert "study 'huge' failed: 1 fail" in shown.stdout and "failed: " in shown.stdout


def test_storage_unreachable_at_start_is_exit_75_for_systemd_to_retry(tmp_path: Path) -> None:
    """No database listening: `hpod run` exits 75 (EX_TEMPFAIL, restarted by systemd's
    Restart=on-failure) with the reason, not 1 with a traceback."""
    env = hpod_env(tmp_path / "data", storage_url="postgresql+psycopg2://postgres@127.0.0.1:1/none")
    run = hpod(env, "run", "--no-workers")
    assert run.returncode == 75, run.stderr[-2000:]
    assert "unreachable" in run.stderr and "Traceback" not in run.stderr


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs to fill up (needs root: mount; skipped otherwise)."""
    where = tmp_path / "tiny"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def healthy_again(daemon: Daemon, within: float = 15) -> dict[str, Any]:
    """/health once it answers 200 again (the daemon probes a failing storage every 5 s)."""
    health = eventually(lambda: _health(daemon, 200), within, 0.2)
    body: dict[str, Any] = health[1]
    return body


def _health(daemon: Daemon, status: int) -> tuple[int, Any] | None:
    """GET /health if it answers `status`, else None (for `eventually`)."""
    health = daemon.request("GET", "/health", token=None)
    return health if health[0] == status else None


def fill(where: Path) -> Path:
    """Fill the file system at `where` to the last byte; returns the filler file."""
    filler = where / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_waited_out_and_nothing_is_lost(
    tiny_fs: Path, start_daemon: DaemonFactory
) -> None:
    """The journal's file system fills up mid-study: /health answers 503 storage_failing
    (not "ok"), the study is not failed; once space is freed the daemon recovers by itself
    and the study completes at exactly its budget, every trial once."""
    daemon = start_daemon(storage_url=f"journal://{tiny_fs / 'studies.journal'}")
    spec = quadratic_spec("full", trials=24, objective_kwargs={"sleep": 0.2})
    code, reply = daemon.request("POST", "/studies", spec)
    assert code in (200, 201), reply
    eventually(lambda: daemon.get("/studies/full")["counts"].get("complete", 0) >= 2, 60)
    filler = fill(tiny_fs)
    health = eventually(lambda: _health(daemon, 503), 60, 0.2)
    assert health[1]["status"] == "storage_failing" and "No space" in health[1]["storage_fault"]
    assert daemon.get("/studies/full")["state"] == "running"
    filler.unlink()
    status = daemon.wait_study("full", timeout=180)
    assert status["counts"] == {"complete": 24} and status["n_trials"] == 24
    assert healthy_again(daemon)["status"] == "ok"


def test_results_waiting_after_a_stall_are_used_not_dispatched_again(
    start_daemon: DaemonFactory,
) -> None:
    """SIGSTOP of the daemon for longer than trial timeout + grace while its local workers
    finish the trials in flight (issue 12, finding 13): with max_attempts 1 the trials used
    to be failed ("no result after 1 attempts") while their results sat in the queue. Now the
    deadlines move by the stall, the waiting results are told, every trial completes once."""
    import signal

    daemon = start_daemon(trial_grace_seconds="1", max_attempts="1")
    spec = quadratic_spec("stall", trials=4, trial_timeout=2, objective_kwargs={"sleep": 1.0})
    code, reply = daemon.request("POST", "/studies", spec)
    assert code in (200, 201), reply
    eventually(lambda: daemon.get("/studies/stall")["in_flight"] >= 1, 60, 0.05)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGSTOP)
    time.sleep(8)  # > trial_timeout 2 s + grace 1 s; the workers finish meanwhile
    daemon.proc.send_signal(signal.SIGCONT)
    status = daemon.wait_study("stall", timeout=120)
    assert status["counts"] == {"complete": 4}, status
    assert "daemon.stalled" in daemon.log()
    assert "trial.redispatch" not in daemon.log()


def _database_outage(url: str, seconds: float) -> None:
    """PostgreSQL gone for `seconds`, as in a restart: every connection to the test database
    is cut and new ones are refused, then allowed again."""
    import psycopg2
    from conftest import POSTGRES_DSN

    name = url.rsplit("/", 1)[1]
    admin = psycopg2.connect(POSTGRES_DSN)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        time.sleep(seconds)
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        admin.close()


@pytest.mark.postgres
def test_postgresql_outages_are_waited_out_and_nothing_is_lost(
    postgres_url: str, start_daemon: DaemonFactory
) -> None:
    """Three PostgreSQL outages mid-study (connections cut, refused for 3 s): loops are
    retried with back-off, never marked failed, never left stopped; the study completes at
    exactly its budget with every trial told once, and the in-flight count is back to 0.

    No worker result is refused: about one run in four used to stall here, a result retried
    after the outage reaching the restarted loop while it recovered and being dead-lettered
    as "not in flight" (tests/unit/test_storage_outage_races.py replays each interleaving)."""
    daemon = start_daemon(storage_url=postgres_url)
    spec = quadratic_spec("pg", trials=30, objective_kwargs={"sleep": 0.1})
    code, reply = daemon.request("POST", "/studies", spec)
    assert code in (200, 201), reply
    for done in (3, 10, 18):
        eventually(
            lambda: daemon.get("/studies/pg")["counts"].get("complete", 0) >= done,  # noqa: B023
            120,
            what=lambda: daemon.log()[-3000:],
        )
        _database_outage(postgres_url, 3.0)
    status = daemon.wait_study("pg", timeout=240)
    assert status["counts"] == {"complete": 30} and status["n_trials"] == 30
    assert healthy_again(daemon)["in_flight"] == 0
    assert "study.failed" not in daemon.log()
    assert "result.refused" not in daemon.log()


def test_a_journal_cut_after_a_run_is_refused_at_the_next_start(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """A study completes, the daemon stops, the journal loses its last lines (cut at a line
    boundary, so it still parses): the next `hpod run` exits 2 instead of reopening the study
    and running its lost trials again."""
    daemon = start_daemon()
    code, reply = daemon.request("POST", "/studies", quadratic_spec("cut", trials=6))
    assert code in (200, 201), reply
    daemon.wait_study("cut", timeout=120)
    daemon.stop()
    path = tmp_path / "data" / "studies.journal"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[: len(lines) // 2]))
    run = hpod(daemon.env, "run", "--no-workers")
    assert run.returncode == 2
    assert f"{path} is {path.stat().st_size} bytes" in run.stderr and "cut" in run.stderr
