"""The long fault run of issue 12: kill -9, broker and storage restarts, a full disk.

    python bench/faults.py --daemon-kills 60 --worker-kills 20 --seed 1      # or: make faults

Run it as root on a machine of its own: it restarts RabbitMQ (`rabbitmqctl stop_app;
rabbitmqctl start_app`, which cuts every vhost) and PostgreSQL (`pg_ctlcluster
--skip-systemctl-redirect 15 main restart`, every client), and mounts a small tmpfs for the
full disk. Three phases, each audited (tests/fuzz/fault_audit.py) once everything has stopped:

1. journal: studies on RabbitMQ with separate workers, the journal in the data directory; a
   seeded schedule of daemon kills, worker kills, torn journal tails and RabbitMQ restarts;
2. postgres: the same on a PostgreSQL database made for the run, with PostgreSQL restarts;
3. disk full: the data directory on a 64 MiB tmpfs, filled mid-study, then freed.

`--skip broker,postgres` leaves out the RabbitMQ restarts (of phase 1) and the PostgreSQL
phase, for a machine whose servers others are using at the time (`--skip disk-full` the
third phase); a skipped phase gets a row saying so. It prints lost, told twice, stuck, without
event and budget exactness per phase, and writes them into docs/hardening.md (`--no-doc` to
skip; `--note` adds a text to every row's notes, such as why phases were skipped). Exit status
0 only when every study of every phase is at exactly its budget with nothing lost, told twice
or stuck.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hardening_common import (
    Process,
    commit,
    create_vhost,
    delete_vhost,
    fault_audit,
    hpod_env,
    rabbitmqctl,
    update_table,
)

HEADER = [
    "date (UTC)",
    "commit",
    "seed",
    "phase",
    "faults",
    "studies",
    "trials",
    "lost",
    "told twice",
    "stuck",
    "without event",
    "at exactly their budget",
    "duration (s)",
    "notes",
]
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_RESTART = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"]


class Fleet:
    """A daemon and its workers on one environment, with the studies they run."""

    def __init__(self, env: dict[str, str], logs: Path, workers: int, trials: int) -> None:
        self.env = env
        self.logs = logs
        self.daemon = Process(["run", "--no-workers"], env, logs / "daemon.log")
        self.workers: list[Process] = []
        self.trials = trials
        self.budgets: dict[str, int] = {}
        self.notes: list[str] = []
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> None:
        """Start one more `hpod worker -c 2`."""
        n = len(self.workers)
        worker = Process(["worker", "-c", "2", "-n", f"f{n}@%h"], self.env, self.logs / f"w{n}.log")
        worker.start()
        self.workers.append(worker)

    def start(self) -> None:
        """Start the daemon and wait for it (a daemon that will not start is a finding)."""
        if not self.daemon.start(wait_healthy=True, timeout=120):
            self.notes.append("daemon did not start: " + self.daemon.log_tail(300))
            raise RuntimeError(f"the daemon did not start:\n{self.daemon.log_tail()}")

    def create_study(self, rng: random.Random) -> None:
        """A new quadratic study with a random budget around `trials`."""
        name = f"faults-{len(self.budgets)}-{uuid.uuid4().hex[:6]}"
        budget = rng.randint(self.trials // 2, self.trials)
        spec = {
            "name": name,
            "objective": "quadratic",
            "space": {
                "x": {"type": "float", "low": -2.0, "high": 2.0},
                "y": {"type": "float", "low": -2.0, "high": 2.0},
            },
            "budget": {"trials": budget},
            "sampler": {"name": "random", "seed": len(self.budgets)},
            "objective_kwargs": {"sleep": 0.05},
            "max_concurrent": 3,
        }
        req = urllib.request.Request(
            self.daemon.url + "/studies",
            data=json.dumps(spec).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.daemon.token}",
                "Content-Type": "application/json",
            },
        )
        for _ in range(30):  # the daemon may be restarting
            try:
                with urllib.request.urlopen(req, timeout=60):
                    self.budgets[name] = budget
                    return
            except OSError:
                time.sleep(2)
        self.notes.append(f"could not create {name}")

    def unfinished(self) -> list[str]:
        """Studies not completed yet (as the daemon says; unknown when it does not answer)."""
        out = []
        for name in self.budgets:
            try:
                with urllib.request.urlopen(f"{self.daemon.url}/studies/{name}", timeout=10) as r:
                    status = json.loads(r.read())
            except OSError:
                out.append(name)
                continue
            if status["state"] != "completed" or status["running"]:
                out.append(name)
        return out

    def kill_daemon(self) -> None:
        """kill -9 of the daemon."""
        if self.daemon.proc is not None:
            fault_audit.kill_tree(self.daemon.proc.pid)

    def kill_worker(self, rng: random.Random) -> None:
        """kill -9 of a whole worker (main process and pool), replaced by a new one."""
        victim = self.workers.pop(rng.randrange(len(self.workers)))
        if victim.proc is not None:
            fault_audit.kill_tree(victim.proc.pid)
        self.add_worker()

    def stop(self) -> None:
        """SIGTERM everything."""
        code, seconds = self.daemon.stop()
        if code not in (0, None):
            self.notes.append(f"daemon SIGTERM exit {code} after {seconds:.0f} s")
        for worker in self.workers:
            worker.stop()


def progress(events: fault_audit.Events, at_least: int, timeout: float = 60) -> bool:
    """Wait for `at_least` more trial events."""
    events.poll()
    target = len(events.events) + at_least
    return events.until(lambda ev: len(ev) >= target, timeout)


def finish(fleet: Fleet, events: fault_audit.Events, timeout: float = 900) -> None:
    """Wait until every study is completed (or the timeout: the audit says what is left)."""
    deadline = time.monotonic() + timeout
    while fleet.unfinished():
        if time.monotonic() > deadline:
            fleet.notes.append(f"not completed after {timeout:.0f} s: {fleet.unfinished()}")
            return
        if not fleet.daemon.alive():
            fleet.notes.append("daemon exited by itself; restarted")
            fleet.start()
        events.poll(2.0)


def apply(fault: str, fleet: Fleet, rng: random.Random, journal: Path | None) -> None:
    """One fault of the schedule."""
    if fault == "worker":
        fleet.kill_worker(rng)
        return
    if fault in {"daemon", "torn"}:
        fleet.kill_daemon()
        if fault == "torn" and journal is not None:
            fault_audit.tear_journal(journal)
        time.sleep(rng.uniform(0, 1.0))
    elif fault == "rabbitmq":
        rabbitmqctl("stop_app")
        time.sleep(5)
        rabbitmqctl("start_app")
    elif fault == "postgres":
        subprocess.run(PG_RESTART, check=True, timeout=120)
    if not fleet.daemon.alive():
        fleet.start()


def run_phase(
    name: str,
    fleet: Fleet,
    events: fault_audit.Events,
    schedule: list[str],
    rng: random.Random,
    journal: Path | None,
) -> dict[str, Any]:
    """Create studies in waves while applying `schedule`, then finish and audit."""
    fleet.start()
    for _ in range(3):
        fleet.create_study(rng)
    for i, fault in enumerate(schedule):
        if len(fleet.unfinished()) < 3:
            fleet.create_study(rng)
        if not progress(events, rng.randint(2, 6)):
            fleet.notes.append(f"no progress before fault {i} ({fault})")
        apply(fault, fleet, rng, journal)
        print(f"{name}: fault {i + 1}/{len(schedule)} {fault}", flush=True)
    finish(fleet, events)
    events.poll(2.0)
    fleet.stop()
    storage = fleet.env.get("HPOD_STORAGE_URL") or f"journal://{journal}"
    result = fault_audit.audit(storage, fleet.budgets, events.events, journal=journal)
    counts = {f: schedule.count(f) for f in sorted(set(schedule))}
    print(f"{name}: {counts}\n{result.summary()}", flush=True)
    return {"phase": name, "faults": counts, "audit": result, "notes": fleet.notes}


def journal_phase(args: argparse.Namespace, url: str, root: Path) -> dict[str, Any]:
    """kill -9 of daemon and workers, torn tails and RabbitMQ restarts on a journal."""
    rng = random.Random(args.seed)
    schedule = (
        ["daemon"] * args.daemon_kills
        + ["worker"] * args.worker_kills
        + ["torn"] * args.torn
        + ["rabbitmq"] * args.rabbitmq_restarts
    )
    rng.shuffle(schedule)
    data = root / "journal"
    env = hpod_env(data, broker_url=url)
    events = fault_audit.Events(url, queue_name=f"hpod-faults-{os.getpid()}")
    fleet = Fleet(env, root, args.workers, args.trials)
    try:
        return run_phase("journal", fleet, events, schedule, rng, data / "studies.journal")
    finally:
        fleet.stop()
        events.close()


def postgres_phase(args: argparse.Namespace, url: str, root: Path) -> dict[str, Any]:
    """PostgreSQL restarts and daemon kills on an RDB storage."""
    import psycopg2

    rng = random.Random(args.seed + 1)
    schedule = ["postgres"] * args.postgres_restarts + ["daemon"] * max(1, args.postgres_restarts)
    rng.shuffle(schedule)
    db = f"hpod_faults_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(POSTGRES_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    admin.close()
    storage = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
    env = hpod_env(root / "postgres", broker_url=url, storage_url=storage)
    events = fault_audit.Events(url, queue_name=f"hpod-faults-pg-{os.getpid()}")
    (root / "pg").mkdir(exist_ok=True)
    fleet = Fleet(env, root / "pg", args.workers, args.trials)
    try:
        return run_phase("postgres", fleet, events, schedule, rng, None)
    finally:
        fleet.stop()
        events.close()
        if not args.keep:
            admin = psycopg2.connect(POSTGRES_ADMIN)
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            admin.close()


def fill(path: Path) -> int:
    """Write zeros into `path` until the disk is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with path.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
                written += len(chunk)
        except OSError:
            pass
    return written


def disk_full_phase(args: argparse.Namespace, url: str, root: Path) -> dict[str, Any]:
    """The data directory on a small tmpfs: fill it mid-study, watch, free it, go on."""
    mount = root / "small-disk"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = f"skipped: cannot mount a tmpfs ({exc}); run as root"
        print(f"disk full: {reason}")
        return {"phase": "disk full", "faults": {}, "audit": None, "notes": [reason]}
    rng = random.Random(args.seed + 2)
    data = mount / "data"
    env = hpod_env(data, broker_url=url)
    events = fault_audit.Events(url, queue_name=f"hpod-faults-disk-{os.getpid()}")
    fleet = Fleet(env, root, args.workers, args.trials * 2)
    try:
        fleet.start()
        fleet.create_study(rng)
        progress(events, 10)
        filler = mount / "filler"
        fill(filler)
        told_at_full = len(events.events)
        time.sleep(20)
        events.poll()
        fleet.notes.append(
            f"full: /health {fleet.daemon.health()}, daemon "
            f"{'running' if fleet.daemon.alive() else 'exited'}, "
            f"{len(events.events) - told_at_full} events in 20 s"
        )
        filler.unlink()
        if not fleet.daemon.alive():
            code = fleet.daemon.proc.returncode if fleet.daemon.proc else None
            fleet.notes.append(f"exited with code {code}; restarted as systemd would")
            fleet.start()
        elif not progress(events, 3, timeout=90):
            fleet.notes.append("WEDGED: no progress 90 s after the space was freed; restarted")
            fleet.kill_daemon()
            fleet.start()
        else:
            fleet.notes.append("recovered by itself once the space was freed")
        finish(fleet, events)
        events.poll(2.0)
        fleet.stop()
        result = fault_audit.audit(
            f"journal://{data}/studies.journal",
            fleet.budgets,
            events.events,
            journal=data / "studies.journal",
        )
        print(f"disk full: {fleet.notes}\n{result.summary()}", flush=True)
        return {"phase": "disk full", "faults": {"full": 1}, "audit": result, "notes": fleet.notes}
    finally:
        fleet.stop()
        events.close()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def record(seed: int, phase: dict[str, Any]) -> None:
    """One row of the faults table in docs/hardening.md."""
    result: fault_audit.Audit | None = phase["audit"]
    row: dict[str, Any] = {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": commit(),
        "seed": seed,
        "phase": phase["phase"],
        "faults": ", ".join(f"{k} x{v}" for k, v in phase["faults"].items()) or "-",
        "duration (s)": phase.get("seconds", "-"),
        "notes": "; ".join(phase["notes"]).replace("|", "/")[:300] or "-",
    }
    if result is not None:
        row.update(
            {
                "studies": len(result.studies),
                "trials": sum(s.n_trials for s in result.studies),
                "lost": result.lost,
                "told twice": result.told_twice,
                "stuck": result.stuck,
                "without event": result.no_event,
                "at exactly their budget": f"{result.exact}/{len(result.studies)}",
            }
        )
    update_table("faults", HEADER, ["commit", "seed", "phase"], row)


SKIPPABLE = ("broker", "postgres", "disk-full")


def skip_list(text: str) -> frozenset[str]:
    """`--skip broker,postgres`: the phases (or RabbitMQ restarts) to leave out."""
    items = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = items - set(SKIPPABLE)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; choose from {SKIPPABLE}")
    return items


def skipped(name: str, why: str) -> dict[str, Any]:
    """The row of a phase left out, so the table says it was not run."""
    print(f"{name}: not run ({why})", flush=True)
    return {"phase": name, "faults": {}, "audit": None, "notes": [f"not run ({why})"]}


def parse_args() -> argparse.Namespace:
    """The command line (`--skip broker` also sets `--rabbitmq-restarts 0`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemon-kills", type=int, default=60)
    parser.add_argument("--worker-kills", type=int, default=20)
    parser.add_argument("--torn", type=int, default=5, help="torn journal tails")
    parser.add_argument("--rabbitmq-restarts", type=int, default=2)
    parser.add_argument("--postgres-restarts", type=int, default=3)
    parser.add_argument("--no-disk-full", action="store_true", help="same as --skip disk-full")
    parser.add_argument(
        "--skip",
        type=skip_list,
        default=frozenset(),
        help="comma-separated: broker (no RabbitMQ restarts), postgres (no PostgreSQL phase), "
        "disk-full (no disk-full phase)",
    )
    parser.add_argument("--note", default="", help="added to the notes of every row written")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (-c 2 each)")
    parser.add_argument("--trials", type=int, default=60, help="largest budget of a study")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--amqp-url", help="use this vhost instead of making one")
    parser.add_argument("--keep", action="store_true", help="keep data dirs, vhost, database")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/hardening.md")
    args = parser.parse_args()
    if args.no_disk_full:
        args.skip = args.skip | {"disk-full"}
    if "broker" in args.skip:
        args.rabbitmq_restarts = 0
    return args


def run_phases(args: argparse.Namespace, url: str, root: Path) -> list[dict[str, Any]]:
    """The phases not skipped, in order; a skipped one gets a row saying so."""
    phases = [timed(journal_phase, args, url, root)]
    if "broker" in args.skip:
        phases[-1]["notes"].append("RabbitMQ restarts not run (--skip broker)")
    if "postgres" in args.skip:
        phases.append(skipped("postgres", "--skip postgres"))
    elif args.postgres_restarts:
        phases.append(timed(postgres_phase, args, url, root))
    if "disk-full" in args.skip:
        phases.append(skipped("disk full", "--skip disk-full"))
    else:
        phases.append(timed(disk_full_phase, args, url, root))
    return phases


def timed(
    phase: Callable[[argparse.Namespace, str, Path], dict[str, Any]],
    args: argparse.Namespace,
    url: str,
    root: Path,
) -> dict[str, Any]:
    """Run one phase and note how long it took (wall clock, start to audit)."""
    started = time.monotonic()
    result = phase(args, url, root)
    result["seconds"] = round(time.monotonic() - started)
    return result


def main() -> int:
    args = parse_args()

    vhost = None if args.amqp_url else f"hpod-faults-{args.seed}-{os.getpid()}"
    url = args.amqp_url or create_vhost(vhost or "")
    root = Path(tempfile.mkdtemp(prefix="hpod-faults-"))
    print(f"logs and data in {root}", flush=True)
    try:
        phases = run_phases(args, url, root)
    finally:
        if vhost and not args.keep:
            delete_vhost(vhost)
    ok = True
    print("\n== faults ==")
    failing = ("WEDGED", "not completed", "could not create", "daemon did not start")
    for phase in phases:
        result = phase["audit"]
        print(f"{phase['phase']}: {phase['faults']} {phase.get('seconds', '-')} s {phase['notes']}")
        ok = ok and not any(note.startswith(failing) for note in phase["notes"])
        if result is not None:
            print(result.summary())
            ok = ok and result.exact == len(result.studies) and result.lost == 0
            ok = ok and result.told_twice == 0 and result.stuck == 0
        if args.note:  # first, so the 300 characters of the notes cell keep it
            phase["notes"].insert(0, args.note)
        if not args.no_doc:
            record(args.seed, phase)
    if not args.keep:
        shutil.rmtree(root / "journal", ignore_errors=True)
        shutil.rmtree(root / "postgres", ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
