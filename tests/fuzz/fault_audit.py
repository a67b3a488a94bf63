"""Faults and the audit after them: kill -9, torn journal tails, and what the storage says.

Used by `tests/fuzz/test_faults.py` (short) and `bench/faults.py` (long). The audit reads the
daemon's storage once everything has stopped and says, per study:

- **budget exact**: the study has exactly its budget of trials, all finished;
- **lost**: budget minus trials finished (a trial that never got an outcome, or never made);
- **stuck**: trials still RUNNING or WAITING;
- **told twice**: trials finished more than once in the journal (Optuna's replay ignores a
  second finish, so only the file shows it), or whose `trial.*` events disagree on the
  outcome (events may repeat after a crash, at least once, but always with the same values);
- **no event**: finished trials of which no `trial.*` event was seen (events are at least once).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import psutil

SET_TRIAL_STATE_VALUES = 6  # optuna.storages.journal._storage.JournalOperation
FINISHED_STATES = {1, 2, 3}  # COMPLETE, PRUNED, FAIL


class Events:
    """A pika subscriber to hpod.events, bound before anything is published.

    By default its queue is exclusive to this connection, so events published while the
    daemon is down or restarting are kept for it. With `queue_name` the queue is durable and
    named instead, so it also outlives a broker restart; the subscriber reconnects after one
    (and deletes the queue in `close`)."""

    def __init__(
        self, url: str, keys: Iterable[str] = ("trial.*", "study.*"), queue_name: str = ""
    ) -> None:
        self.url = url
        self.keys = tuple(keys)
        self.queue_name = queue_name
        self.events: list[dict[str, Any]] = []
        self._connect()

    def _connect(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = self.connection.channel()
        self.channel.exchange_declare("hpod.events", exchange_type="topic", durable=True)
        durable = bool(self.queue_name)
        self.queue = self.channel.queue_declare(
            self.queue_name, exclusive=not durable, durable=durable
        ).method.queue
        for key in self.keys:
            self.channel.queue_bind(self.queue, "hpod.events", routing_key=key)

    def _reconnect(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._connect()
                return
            except pika.exceptions.AMQPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def poll(self, seconds: float = 0.0) -> None:
        """Take every event waiting (and wait up to `seconds` for more)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                method, _props, body = self.channel.basic_get(self.queue, auto_ack=True)
                if method is not None:
                    self.events.append(json.loads(body))
                    continue
                if time.monotonic() >= deadline:
                    return
                self.connection.process_data_events(time_limit=0.05)
            except pika.exceptions.AMQPError:
                if not self.queue_name:
                    raise  # an exclusive queue died with its connection: events are lost
                self._reconnect()

    def until(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float) -> bool:
        """Poll until `predicate(events)` holds; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            if time.monotonic() > deadline:
                return False
            self.poll(0.2)
        return True

    def told(self, study: str) -> set[int]:
        """Trial numbers of `study` with a trial.* event."""
        return {
            e["trial"]
            for e in self.events
            if e["event"].startswith("trial.") and e.get("study") == study
        }

    def completed(self, study: str) -> bool:
        """Whether study.completed was seen for `study`."""
        return any(e["event"] == "study.completed" and e["study"] == study for e in self.events)

    def close(self) -> None:
        """Close the connection (deleting a named queue first)."""
        if self.queue_name and self.channel.is_open:
            self.channel.queue_delete(self.queue)
        if self.connection.is_open:
            self.connection.close()


def kill_tree(pid: int) -> int:
    """SIGKILL a process and all its children (a Celery worker and its pool), at once, as
    a machine losing power would; returns how many processes were killed."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


def tear_journal(path: Path) -> int:
    """Append half of the journal's last line, without its newline: a write cut by a crash.
    Returns the bytes appended."""
    lines = path.read_bytes().splitlines()
    torn = lines[-1][: max(1, len(lines[-1]) // 2)] if lines else b'{"op_code": 4, "wor'
    with path.open("ab") as f:
        f.write(torn)
        f.flush()
        os.fsync(f.fileno())
    return len(torn)


def journal_finishes(path: Path) -> Counter[int]:
    """How many times each trial id was finished in the journal file (lines that do not parse,
    such as a torn tail, are skipped)."""
    finishes: Counter[int] = Counter()
    with path.open("rb") as f:
        for line in f:
            try:
                op = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(op, dict)
                and op.get("op_code") == SET_TRIAL_STATE_VALUES
                and op.get("state") in FINISHED_STATES
            ):
                finishes[op["trial_id"]] += 1
    return finishes


@dataclass
class StudyAudit:
    """What the storage and the events say about one study after the faults."""

    name: str
    budget: int
    n_trials: int
    counts: dict[str, int]
    lost: int
    stuck: int
    told_twice: list[int]
    no_event: list[int]

    @property
    def exact(self) -> bool:
        """Exactly the budget, every trial finished, none lost, stuck or told twice."""
        return (
            self.n_trials == self.budget
            and self.lost == 0
            and self.stuck == 0
            and not self.told_twice
        )


@dataclass
class Audit:
    """The audit of every study of a fault run."""

    studies: list[StudyAudit] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Trials lost, all studies together."""
        return sum(s.lost for s in self.studies)

    @property
    def stuck(self) -> int:
        """Trials stuck RUNNING/WAITING, all studies together."""
        return sum(s.stuck for s in self.studies)

    @property
    def told_twice(self) -> int:
        """Trials told more than once, all studies together."""
        return sum(len(s.told_twice) for s in self.studies)

    @property
    def no_event(self) -> int:
        """Finished trials without any trial.* event, all studies together."""
        return sum(len(s.no_event) for s in self.studies)

    @property
    def exact(self) -> int:
        """Studies at exactly their budget."""
        return sum(s.exact for s in self.studies)

    def summary(self) -> str:
        """Counts, and each study that is not exact."""
        trials = sum(s.n_trials for s in self.studies)
        lines = [
            f"{len(self.studies)} studies, {trials} trials: lost {self.lost}, told twice "
            f"{self.told_twice}, stuck {self.stuck}, without event {self.no_event}, "
            f"at exactly their budget {self.exact}/{len(self.studies)}"
        ]
        lines += [
            f"  {s.name}: budget {s.budget}, n_trials {s.n_trials}, counts {s.counts}, lost "
            f"{s.lost}, stuck {s.stuck}, told twice {s.told_twice}, no event {s.no_event[:20]}"
            for s in self.studies
            if not s.exact or s.no_event
        ]
        return "\n".join(lines)


def audit(
    storage_url: str,
    budgets: dict[str, int],
    events: list[dict[str, Any]],
    journal: Path | None = None,
) -> Audit:
    """Audit `budgets` (study → trials) in the storage at `storage_url`, against the events
    seen and, for a journal, the finishing operations in the file."""
    import optuna

    from hpod.engine import make_storage

    storage = make_storage(storage_url)
    finishes = journal_finishes(journal) if journal is not None else Counter()
    outcomes: dict[tuple[str, int], set[str]] = defaultdict(set)
    for e in events:
        if e["event"].startswith("trial."):
            outcomes[(e["study"], e["trial"])].add(json.dumps([e["event"], e.get("values")]))
    result = Audit()
    for name, budget in budgets.items():
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        counts = Counter(t.state.name.lower() for t in trials)
        finished = [t for t in trials if t.state.is_finished()]
        twice = sorted(
            t.number
            for t in trials
            if finishes[t._trial_id] > 1 or len(outcomes.get((name, t.number), ())) > 1
        )
        result.studies.append(
            StudyAudit(
                name=name,
                budget=budget,
                n_trials=len(trials),
                counts=dict(counts),
                lost=max(0, budget - len(finished)),
                stuck=counts.get("running", 0) + counts.get("waiting", 0),
                told_twice=twice,
                no_event=sorted(t.number for t in finished if (name, t.number) not in outcomes),
            )
        )
    return result
