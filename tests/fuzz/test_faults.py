"""The fault campaign of issue 12, short: kill -9 of the daemon and of workers mid-study, a
torn journal tail, and a corrupt journal at start.

Three studies run on RabbitMQ with two separate workers. The daemon is killed (SIGKILL) three
times and restarted on the same data directory, once with a torn line appended to its journal;
a whole worker (main process and pool) is killed twice and replaced. Afterwards every study
must be at exactly its budget: 0 lost, 0 told twice (counted from the journal's finishing
operations and the `trial.*` events), 0 stuck, and every trial with its event. The long run,
with broker and storage restarts and a full disk, is `bench/faults.py`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import Daemon, DaemonFactory, Proc, eventually, hpod_env, quadratic_spec
from fault_audit import Events, audit, kill_tree, tear_journal

from hpod.engine import make_storage

BUDGETS = {"fault-a": 30, "fault-b": 24, "fault-c": 18}


def _told(events: Events) -> int:
    events.poll()
    return sum(len(events.told(name)) for name in BUDGETS)


def _wait_told(events: Events, at_least: int, timeout: float = 120) -> None:
    """Collect events until at least `at_least` trials were told."""

    def told() -> bool:
        if _told(events) >= at_least:
            return True
        events.poll(0.2)
        return _told(events) >= at_least

    eventually(told, timeout, 0, lambda: f"only {_told(events)} trials told")


def _wait_finished(daemon: Daemon, events: Events, timeout: float = 180) -> None:
    """Until every study is completed with no loop running (or the timeout: the audit then
    says what is missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events.poll(0.3)
        states = [daemon.get(f"/studies/{name}") for name in BUDGETS]
        if all(s["state"] == "completed" and not s["running"] for s in states):
            return


@pytest.mark.broker
def test_kill9_of_daemon_and_workers_loses_nothing_and_tells_nothing_twice(
    rabbitmq: str,
    start_daemon: DaemonFactory,
    start_worker: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """kill -9 of the daemon 3 times (once with a torn journal tail) and of a worker twice,
    mid-study: every study at exactly its budget, 0 lost, 0 told twice, 0 stuck, and every
    trial with its event."""
    data = tmp_path / "data"
    events = Events(rabbitmq)
    daemon = start_daemon("--no-workers", broker_url=rabbitmq, data_dir=data)
    workers = [start_worker(daemon.env, concurrency=2) for _ in range(2)]
    for name, trials in BUDGETS.items():
        spec = quadratic_spec(
            name, trials=trials, objective_kwargs={"sleep": 0.3}, max_concurrent=3
        )
        assert daemon.request("POST", "/studies", spec)[0] == 201
    for round_, threshold in enumerate((8, 25, 45)):
        _wait_told(events, threshold)
        assert daemon.proc is not None
        kill_tree(daemon.proc.pid)
        if round_ == 1:
            tear_journal(data / "studies.journal")
        if round_ != 1:
            victim = workers.pop(0)
            assert victim.proc is not None
            kill_tree(victim.proc.pid)
            workers.append(start_worker(daemon.env, concurrency=2))
        time.sleep(0.5)  # results keep arriving on hpod.results while the daemon is down
        daemon.start()
    _wait_finished(daemon, events)
    events.poll(1.0)
    daemon.stop()
    result = audit(
        f"journal://{data}/studies.journal",
        BUDGETS,
        events.events,
        journal=data / "studies.journal",
    )
    events.close()
    print(result.summary())
    assert (result.lost, result.told_twice, result.stuck) == (0, 0, 0), result.summary()
    assert result.exact == len(BUDGETS), result.summary()
    assert result.no_event == 0, result.summary()


# Issue 12 (docs/operations.md, "A journal that does not parse"): a
# journal that does not parse is refused at start: `hpod run` exits with code 2 and a message
# naming the journal file and the line, instead of starting on a partial history or dying
# with a bare traceback.
REFUSAL_EXIT_CODE = 2
LINE_PATTERN = r"line\W{0,3}%d\b"


def _journal_with_trials(path: Path, trials: int = 3) -> None:
    """A valid journal written by plain Optuna: one study, `trials` finished trials."""
    storage = make_storage(f"journal://{path}")
    study = optuna.create_study(study_name="corrupt-me", storage=storage)
    for _ in range(trials):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", -1, 1) ** 2)


def _serving(env: dict[str, str]) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{env['HPOD_HTTP_PORT']}/health", timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("case", "bad_line"),
    [("garbage line", b"this is not JSON"), ("NUL bytes", b"\x00" * 32)],
)
def test_a_corrupt_journal_is_refused_at_start_naming_the_line(
    tmp_path: Path, case: str, bad_line: bytes
) -> None:
    """A journal with line 3 replaced by garbage (or NUL bytes) mid-file: the daemon refuses
    to start, exit code 2, naming the file and line 3; it never serves on a partial history."""
    data = tmp_path / "data"
    data.mkdir()
    journal = data / "studies.journal"
    _journal_with_trials(journal)
    lines = journal.read_bytes().split(b"\n")
    assert len(lines) > 5
    lines[2] = bad_line
    journal.write_bytes(b"\n".join(lines))
    env = hpod_env(data, local_workers="0")
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpod", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not _serving(env):
            time.sleep(0.2)
        serving = proc.poll() is None
        if serving:
            proc.kill()
        proc.wait()
    output = log.read_text(errors="replace")
    assert not serving, f"{case}: the daemon started on a corrupt journal:\n{output[-2000:]}"
    assert proc.returncode == REFUSAL_EXIT_CODE, f"exit {proc.returncode}:\n{output[-2000:]}"
    assert str(journal) in output, output[-2000:]
    assert re.search(LINE_PATTERN % 3, output, re.IGNORECASE), output[-2000:]
    assert "Traceback" not in output, output[-2000:]


def test_the_audit_sees_a_trial_told_twice_a_stuck_one_and_a_lost_one(tmp_path: Path) -> None:
    """The audit itself: a finishing operation repeated in the journal is a trial told twice,
    a trial left RUNNING is stuck, and a budget not reached is lost trials."""
    journal = tmp_path / "studies.journal"
    _journal_with_trials(journal, trials=3)
    optuna.load_study(study_name="corrupt-me", storage=make_storage(f"journal://{journal}")).ask()
    finish = next(
        line
        for line in reversed(journal.read_bytes().splitlines())
        if b'"op_code":6' in line and b'"state":1' in line
    )
    with journal.open("ab") as f:
        f.write(finish + b"\n")
    result = audit(f"journal://{journal}", {"corrupt-me": 5}, [], journal=journal)
    (study,) = result.studies
    assert (study.n_trials, study.stuck, study.lost, len(study.told_twice)) == (4, 1, 2, 1)
    assert result.exact == 0 and result.no_event == 3
