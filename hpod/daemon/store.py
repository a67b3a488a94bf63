"""The daemon's view of the Optuna storage: studies, asks and tells, on one thread.

Every Optuna call of the daemon runs on a single dedicated thread: the event loop never
blocks on a sampler or a storage write, and Optuna objects are never shared between threads.
The methods here are plain synchronous functions; `StudyStore.call` runs one on that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import optuna
import structlog
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, JournalStorage
from optuna.study._tell import _tell_with_warning  # Study.tell minus its deep copy
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from hpod.daemon.timeline import OVERHEAD_PARTS, mean_parts, valid_parts
from hpod.daemon.waiting import load_study
from hpod.engine import (
    BUDGET_ATTR,
    COST_ATTR,
    CREATED_ATTR,
    DISPATCHED_ATTR,
    ERROR_ATTR,
    EXTERNAL_ATTR,
    LADDER_ATTR,
    MODE_ATTR,
    REQUEST_ATTR,
    SPEC_ATTR,
    STATE_ATTR,
    check_sampler_available,
    make_sampler,
    make_storage,
    sampler_seed,
    suggest,
)
from hpod.errors import RequestRejected
from hpod.journal import GroupCommitJournalBackend, JournalGroupError, storage_group, write_mark
from hpod.policies.plan import Plan
from hpod.sampling import SAMPLER_CPU_ATTR
from hpod.schema import StudySpec
from hpod.transfer.store import state_counts

log = structlog.get_logger("hpod.store")

T = TypeVar("T")
#: Study attribute: why hpod marked the study `failed` (kept across restarts).
FAILURE_ATTR = "hpod:failure"
#: Study attribute: numbers of trials told by the daemon itself (cache hits, skips, a last
#: attempt expired) whose `trial.*` event may not have gone out yet. No broker message backs
#: such a tell, so nothing would redeliver it after a crash: the note is written in the same
#: durable group as the tell and cleared once the event is published; recovery publishes the
#: events still noted (events are at least once).
EVENTS_OWED_ATTR = "hpod:events_owed"
#: Optuna study objects kept open for studies without a running loop (status, direct tells);
#: those of running loops are always kept (their samplers carry state).
OPEN_STUDIES = 64
#: Seconds after its dispatch by which a trial's dispatch mark is written (due at half of it,
#: then written with the durable write of the daemon's next storage call, an ask or a tell, or
#: on its own); a trial told before it is due needs none (`StudyStore.mark_dispatched_soon`).
MARK_DELAY = 0.1
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class Outcome:
    """A trial's outcome: from a worker's result message, an external evaluator's tell, or
    the daemon itself (a cache hit, a trial out of attempts). The study's loop tells it
    (`StudyStore.tell_many`) and publishes its event; `cost` is what its evaluation cost,
    for the budget and the efficiency report."""

    number: int
    state: str
    values: list[float] | None = None
    error: str | None = None
    duration: float | None = None
    #: `time.time()` on the worker when it started the trial.
    started_at: float | None = None
    #: What the evaluation cost, as the worker measured it (see `hpod.workers.tasks`); as
    #: told, with the daemon's own measure of its time.
    cost: dict[str, Any] | None = None
    #: More fields for the trial's event (the worker, the attempt, why it was skipped).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AskedTrial:
    """A trial just asked of Optuna: what a worker or an external evaluator needs."""

    trial_id: int
    number: int
    params: dict[str, Any]


@dataclass(frozen=True)
class TellAndAsk:
    """What `StudyStore.tell_and_ask` did: the tells (as `tell_many`'s), the trials asked,
    the seconds each part took on the Optuna thread, and the ask's error, if it raised."""

    told: list[FrozenTrial | None]
    asked: list[AskedTrial]
    tell_seconds: float
    ask_seconds: float
    ask_error: Exception | None = None


#: What a storage outage raises: the journal's failed write (ENOSPC, EIO) and the broken
#: backend it leaves, a database connection lost (PostgreSQL restarting), a broker gone.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    JournalGroupError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


def is_storage_fault(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is an outage that passes: storage or broker
    unreachable, a durable write refused. Anything else is taken as deterministic."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT) or type(current).__module__.startswith(
            ("kombu.", "amqp.")
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


class StudyStore:
    """Optuna storage access for the daemon, serialised on one thread.

    A failed durable write of the journal leaves its backend closed (`JournalGroupError`):
    the next call builds a new storage from the file, so the daemon's view is the file's
    again. `fault` says, until a write succeeds again, that storage is failing.
    """

    def __init__(self, storage_url: str) -> None:
        self.url = storage_url
        self.storage: BaseStorage = make_storage(storage_url)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="hpod-optuna")
        self._studies: OrderedDict[str, optuna.Study] = OrderedDict()
        self._plans: dict[str, Plan] = {}
        #: Per study, what wraps the sampler its plan builds (transfer's prior,
        #: `hpod.daemon.transfer`); applied in `open`.
        self._wraps: dict[str, Callable[[BaseSampler], BaseSampler]] = {}
        #: The last storage fault (`repr`), None once storage works again.
        self.fault: str | None = None
        self._marked = 0
        #: Dispatch marks not yet written, (trial id, attempt, when due: `time.monotonic`),
        #: oldest first: added on the event loop, written on the Optuna thread by the first
        #: call once due (`_guarded`), dropped when their trial is told first.
        self._marks: list[tuple[int, int, float]] = []
        self._marks_lock = threading.Lock()
        self._mark_timer: asyncio.TimerHandle | None = None
        #: The due time of the newest mark the timer has had written (`_flush_marks`).
        self._mark_tried = 0.0
        #: Trial ids the current call told (`tell`): their marks are dropped once it returns.
        self._told: list[int] = []

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the Optuna thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._guarded, fn, args
        )

    def _guarded(self, fn: Callable[..., T], args: tuple[Any, ...], every_mark: bool = False) -> T:
        """Call `fn` on the Optuna thread: heal a broken journal first, record faults; the
        dispatch marks due (all of them with `every_mark`) are written in the same durable
        write group as `fn`'s, and those of trials `fn` told are dropped once it returned
        (its write is durable then)."""
        self._heal()
        commits = self._commits()
        self._told = []
        with self._marks_lock:
            if every_mark:
                due = len(self._marks)
            else:
                now = time.monotonic()
                due = 0
                while due < len(self._marks) and self._marks[due][2] <= now:
                    due += 1
            marks, self._marks = self._marks[:due], self._marks[due:]
        try:
            result = self._with_marks(marks, fn, args) if marks else fn(*args)
        except Exception as exc:
            if is_storage_fault(exc):
                self.fault = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            told, self._told = self._told, []
        if told:
            done = set(told)
            with self._marks_lock:
                self._marks = [m for m in self._marks if m[0] not in done]
        if self.fault is not None and commits is not None and self._commits() != commits:
            log.info("storage.recovered", after=self.fault)
            self.fault = None
        return result

    def _with_marks(
        self, marks: list[tuple[int, int, float]], fn: Callable[..., T], args: tuple[Any, ...]
    ) -> T:
        """Call `fn`, then write `marks`, in one durable write group. Marks that did not
        become durable (their write, or the group's commit, failed) wait for the next call.

        A trial that `fn` told (its result came back before its mark was written: a fast
        trial's tell) needs no mark: it is finished in the same durable write, and the mark
        is left out of the journal (one storage operation fewer per such trial). On a
        database the marks go first, each in its own transaction, as before."""
        written = False
        try:
            with storage_group(self.storage):
                if self._journal() is None:  # a database: each mark its own transaction
                    self._write_marks(marks)
                    written = True
                    return fn(*args)
                try:
                    return fn(*args)
                finally:
                    self._write_marks(marks)
                    written = True
        except BaseException:
            journal = self._journal()
            if not written or (journal is not None and journal.broken):
                with self._marks_lock:
                    self._marks[:0] = marks
            raise

    def _write_marks(self, marks: list[tuple[int, int, float]]) -> None:
        """Write dispatch marks; on a journal, not those of trials already finished (its
        in-memory view says so without a read)."""
        journal = self._journal() is not None
        for trial_id, attempt, _due in marks:
            with contextlib.suppress(KeyError):  # a trial a failed write lost
                if journal and self.storage.get_trial(trial_id).state in FINISHED:
                    continue
                self.mark_dispatched(trial_id, attempt)

    def mark_dispatched_soon(self, trial_ids: list[int], attempt: int) -> None:
        """On the event loop: record that these trials' task reached the broker (so a restart
        waits for their results rather than dispatching them again).

        The mark is due half `MARK_DELAY` after the dispatch: it then rides on the durable
        write of the daemon's next storage call (an ask, a tell), or is written on its own
        by a timer that looks every half `MARK_DELAY` while marks wait: one write and one
        thread hop fewer per dispatch, and at most one timer call per half `MARK_DELAY`
        however many trials are dispatched. A trial told before its mark is due needs none
        and gets none (the tell finishes it durably: one journal operation fewer per fast
        trial). A crash before the mark is written costs at most a second evaluation of
        those trials after the restart (told once, as any redelivered result): the mark's
        purpose, not evaluating a dispatched trial again, is kept for every trial older than
        `MARK_DELAY`.
        """
        due = time.monotonic() + MARK_DELAY / 2
        with self._marks_lock:
            self._marks.extend((trial_id, attempt, due) for trial_id in trial_ids)
        if self._mark_timer is None:
            self._mark_timer = asyncio.get_running_loop().call_later(
                MARK_DELAY / 2, self._flush_marks
            )

    def _flush_marks(self) -> None:
        """On the event loop, every half `MARK_DELAY` while marks wait: write those due (on
        the Optuna thread; none of them when every trial was told first)."""
        self._mark_timer = None
        now = time.monotonic()
        with self._marks_lock:
            if not self._marks:
                return
            newest_due = max((due for _, _, due in self._marks if due <= now), default=None)
        # During a storage fault, marks that already failed to be written wait for the next
        # call (no retry every half `MARK_DELAY`: each failed write re-reads the journal);
        # marks newly due are tried once, as any write.
        if newest_due is not None and (self.fault is None or newest_due > self._mark_tried):
            self._mark_tried = newest_due
            try:
                future = self._thread.submit(self._guarded, _nothing, ())
            except RuntimeError:  # shutting down: `close` writes them
                return
            future.add_done_callback(_log_failed_marks)
        self._mark_timer = asyncio.get_running_loop().call_later(MARK_DELAY / 2, self._flush_marks)

    def mark(self) -> None:
        """Record how much of the journal file is known written (see `hpod.journal.write_mark`),
        so that a start on a file cut since is refused."""
        journal = self._journal()
        if journal is None or journal.durable_offset <= self._marked:
            return
        try:
            write_mark(self.url.removeprefix("journal://"), journal.durable_offset)
        except OSError as exc:  # a safeguard only: a later tick writes it
            log.warning("storage.mark_failed", error=repr(exc))
            return
        self._marked = journal.durable_offset

    def probe(self) -> None:
        """While a fault is recorded, try the storage without changing it; clear the fault if
        it works again (the daemon may have nothing to write for a while).

        A journal: write, fsync and remove a small file beside it (what a commit needs: the
        space and a working device). A database: read the list of studies.
        """
        if self.fault is None:
            return
        if self._journal() is not None:
            probe = f"{self.url.removeprefix('journal://')}.probe"
            try:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, b"\0" * 65536)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                    os.unlink(probe)
            except OSError:
                return
        else:
            try:
                self.storage.get_all_studies()
            except Exception:
                return
        log.info("storage.recovered", after=self.fault)
        self.fault = None

    def _journal(self) -> GroupCommitJournalBackend | None:
        backend = getattr(self.storage, "_backend", None)
        if isinstance(self.storage, JournalStorage) and isinstance(
            backend, GroupCommitJournalBackend
        ):
            return backend
        return None

    def _commits(self) -> int | None:
        """Durable journal writes so far (None for a database: `probe` tells when it is
        back)."""
        journal = self._journal()
        return journal.commits if journal is not None else None

    def _heal(self) -> None:
        """After a failed journal write, read the file again into a new storage.

        The old storage applied in memory operations the file never got; every study object
        built on it goes too (running loops re-open theirs from the file).
        """
        journal = self._journal()
        if journal is None or not journal.broken:
            return
        log.warning("storage.reopen", url=self.url, reason=self.fault)
        self.storage = make_storage(self.url)
        self._studies.clear()

    async def call_timed(self, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        """Like `call`, with the seconds `fn` itself took (not the wait for the thread)."""

        def timed() -> tuple[T, float]:
            started = time.perf_counter()
            result = fn(*args)
            return result, time.perf_counter() - started

        return await self.call(timed)

    def close(self) -> None:
        """Write the dispatch marks still waiting (due or not: their trials are still
        running), finish pending calls, release the thread."""
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        if self._marks:
            self._thread.submit(self._guarded, _nothing, (), True).add_done_callback(
                _log_failed_marks
            )
        self._thread.shutdown(wait=True)

    # --- studies -----------------------------------------------------------------------

    def create(self, spec: StudySpec) -> bool:
        """Create the study of `spec`; False if it already exists with the very same spec."""
        check_sampler_available(spec.sampler.name or "tpe")
        try:
            study_id = self.storage.get_study_id_from_name(spec.name)
        except KeyError:
            study_id = None
        if study_id is not None:
            stored = self.storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
            if (
                stored is not None
                and StudySpec.model_validate_json(stored).canonical() != spec.canonical()
            ):
                raise RequestRejected(
                    "conflict",
                    "study.name",
                    f"a study named {spec.name!r} exists with a different spec",
                )
            if stored is not None:
                return False
        else:
            directions = [optuna.study.StudyDirection[d.upper()] for d in spec.directions]
            study_id = self.storage.create_new_study(directions, spec.name)
        self.storage.set_study_user_attr(study_id, CREATED_ATTR, time.time())
        self.storage.set_study_user_attr(study_id, STATE_ATTR, "running")
        # The spec is written last: a study without it is not yet hpod's, and a retried
        # create adopts it.
        self.storage.set_study_user_attr(study_id, SPEC_ATTR, spec.model_dump_json())
        return True

    def running_studies(self) -> tuple[list[StudySpec], dict[str, str]]:
        """Specs of the studies hpod was running (or had paused) when it last stopped, and
        the reason for each such study whose stored spec no longer validates (an older
        daemon accepted it): those are to be marked failed, not resumed."""
        specs = []
        invalid: dict[str, str] = {}
        for study in self.storage.get_all_studies():
            attrs = study.user_attrs
            if attrs.get(STATE_ATTR) in ("running", "paused") and SPEC_ATTR in attrs:
                try:
                    specs.append(StudySpec.model_validate_json(attrs[SPEC_ATTR]))
                except (ValidationError, ValueError) as exc:
                    invalid[study.study_name] = f"stored spec is invalid: {exc}"[:2000]
        return specs, invalid

    def count_studies(self) -> int:
        """How many studies the storage holds."""
        return len(self.storage.get_all_studies())

    def exists(self, name: str) -> bool:
        """Whether a study named `name` exists."""
        try:
            self.storage.get_study_id_from_name(name)
        except KeyError:
            return False
        return True

    def mark_failed(self, name: str, reason: str) -> list[int]:
        """Mark study `name` failed with `reason`; fail its trials that no worker has.

        A RUNNING trial whose task never reached the broker (asked, then the loop failed)
        will never get a result: it is failed now with the reason. One that was dispatched is
        left RUNNING: its result, when it comes, is told once (the study's loop is gone, so
        it is told directly). Returns the numbers of the trials failed.
        """
        study_id = self._study_id(name)
        failed = []
        with storage_group(self.storage):
            for t in self.storage.get_all_trials(study_id, deepcopy=False):
                if t.state != TrialState.RUNNING or t.user_attrs.get(EXTERNAL_ATTR):
                    continue
                if t.user_attrs.get(DISPATCHED_ATTR):
                    continue
                error = f"study failed: {reason}"[:2000]
                self.storage.set_trial_user_attr(t._trial_id, ERROR_ATTR, error)
                with contextlib.suppress(UpdateFinishedTrialError):
                    self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                    failed.append(t.number)
            self.storage.set_study_user_attr(study_id, FAILURE_ATTR, reason[:2000])
            self.storage.set_study_user_attr(study_id, STATE_ATTR, "failed")
        self.forget(name)
        return failed

    def forget(self, name: str) -> None:
        """Drop what is kept in memory for study `name` (its loop ended); re-opened on demand."""
        self._studies.pop(name, None)
        self._plans.pop(name, None)
        self._wraps.pop(name, None)

    def wrap_sampler(self, name: str, wrap: Callable[[BaseSampler], BaseSampler] | None) -> None:
        """Wrap the sampler of study `name` with `wrap` from its next `open` on (None: no
        longer); the study is re-opened so the next ask uses it."""
        if wrap is None:
            self._wraps.pop(name, None)
        else:
            self._wraps[name] = wrap
        self._studies.pop(name, None)

    def raw_summary(self, name: str) -> dict[str, Any]:
        """What `hpod status` shows of a study whose stored spec no longer validates: its
        state, the failure and the trial counts, read without the spec."""
        study_id = self._study_id(name)
        attrs = self.storage.get_study_user_attrs(study_id)
        trials = self.storage.get_all_trials(study_id, deepcopy=False)
        counts = state_counts(trials)
        return {
            "name": name,
            "state": attrs.get(STATE_ATTR),
            "failure": attrs.get(FAILURE_ATTR),
            "mode": attrs.get(MODE_ATTR),
            "budget": attrs.get(BUDGET_ATTR),
            "n_trials": len(trials),
            "counts": counts,
            "created_at": attrs.get(CREATED_ATTR),
            "best": None,
            "best_trials": [],
            "in_flight": 0,
        }

    def spec(self, name: str) -> StudySpec:
        """The spec of study `name`; `RequestRejected` if hpod does not know it."""
        raw = self._attrs(name).get(SPEC_ATTR)
        if raw is None:
            raise RequestRejected("not_found", "study", f"no hpod study named {name!r}")
        return StudySpec.model_validate_json(raw)

    def set_attr(self, name: str, key: str, value: Any) -> None:
        """Set a study user attribute (hpod's bookkeeping lives there)."""
        self.storage.set_study_user_attr(self._study_id(name), key, value)

    def set_attrs(self, name: str, values: dict[str, Any]) -> None:
        """Set several study user attributes in one durable write."""
        study_id = self._study_id(name)
        with storage_group(self.storage):
            for key, value in values.items():
                self.storage.set_study_user_attr(study_id, key, value)

    def study_attrs(self, name: str) -> dict[str, Any]:
        """The user attributes of study `name`."""
        return self._attrs(name)

    def list_studies(self) -> list[dict[str, Any]]:
        """A line of summary per hpod study."""
        rows = []
        for s in self.storage.get_all_studies():
            if SPEC_ATTR not in s.user_attrs:
                continue
            best = self._best_value(s._study_id) if len(s.directions) == 1 else None
            rows.append(
                {
                    "name": s.study_name,
                    "state": s.user_attrs.get(STATE_ATTR),
                    "mode": s.user_attrs.get(MODE_ATTR)
                    or json.loads(s.user_attrs[SPEC_ATTR])["mode"],
                    "best_value": best,
                }
            )
        return rows

    def _best_value(self, study_id: int) -> float | None:
        try:
            value: float | None = self.storage.get_best_trial(study_id).value
        except ValueError:  # no complete trial yet
            return None
        return value

    def _study_id(self, name: str) -> int:
        try:
            return self.storage.get_study_id_from_name(name)
        except KeyError:
            raise RequestRejected("not_found", "study", f"no hpod study named {name!r}") from None

    def _attrs(self, name: str) -> dict[str, Any]:
        return self.storage.get_study_user_attrs(self._study_id(name))

    # --- trials ------------------------------------------------------------------------

    def open(self, spec: StudySpec) -> optuna.Study:
        """The Optuna study object for `spec`, with the sampler of its plan (cached).

        Bounded: beyond `OPEN_STUDIES`, the least recently used study without a running loop
        (no plan) is dropped and re-opened when next needed.
        """
        study = self._studies.get(spec.name)
        if study is not None:
            self._studies.move_to_end(spec.name)
            return study
        plan = self._plans.get(spec.name)
        if plan is not None:
            # A rebuilt sampler (plan change, restart) must not replay the study's start.
            n_trials = self.storage.get_n_trials(self._study_id(spec.name))
            seed = sampler_seed(plan.seed, n_trials)
            sampler = make_sampler(plan.sampler, plan.sampler_options, seed, plan.parallelism > 1)
        else:
            sampler = self._reading_sampler(spec)
        wrap = self._wraps.get(spec.name)
        if wrap is not None:
            sampler = wrap(sampler)
        study = load_study(spec.name, self.storage, sampler)
        self._studies[spec.name] = study
        idle = [name for name in self._studies if name not in self._plans]
        for name in idle[: max(0, len(idle) - OPEN_STUDIES)]:
            del self._studies[name]
        return study

    @staticmethod
    def _reading_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
        """The sampler of a study without a running loop (read, or told directly): the spec's,
        or, when a stored spec names one that cannot be built (a seed out of range, stored by
        an older daemon), any sampler: such a study only reads and tells, never asks."""
        try:
            return make_sampler(spec.sampler.name or "tpe", {}, spec.sampler.seed)
        except (ValueError, TypeError, OverflowError, RequestRejected):
            return optuna.samplers.RandomSampler()

    def set_plan(self, spec: StudySpec, plan: Plan) -> None:
        """Use `plan` for the study's next asks; a new sampler starts from the stored trials.

        Samplers keep no state Optuna needs besides the storage (CMA-ES keeps its own in
        system attributes), so swapping one never loses or confuses trials.
        """
        old = self._plans.get(spec.name)
        self._plans[spec.name] = plan
        if old is None or (old.sampler, old.sampler_options, old.parallelism > 1) != (
            plan.sampler,
            plan.sampler_options,
            plan.parallelism > 1,
        ):
            self._studies.pop(spec.name, None)

    def ask(
        self, spec: StudySpec, external: bool = False, request_id: str | None = None
    ) -> AskedTrial:
        """Ask Optuna for a trial and suggest its whole (conditional) parameter set."""
        study = self.open(spec)
        trial = study.ask()
        if external:
            trial.set_user_attr(EXTERNAL_ATTR, True)
        if request_id:
            trial.set_user_attr(REQUEST_ATTR, request_id)
        params = suggest(trial, spec.space)
        return AskedTrial(trial._trial_id, trial.number, params)

    def ask_many(self, spec: StudySpec, n: int) -> list[AskedTrial]:
        """Ask `n` trials in one durable write group (the sampler lies about earlier ones)."""
        with storage_group(self.storage):
            return [self.ask(spec) for _ in range(n)]

    def rebuild(self, spec: StudySpec, frozen: FrozenTrial) -> AskedTrial:
        """Finish suggesting a RUNNING trial found after a restart (params may be partial)."""
        trial = optuna.Trial(self.open(spec), frozen._trial_id)
        return AskedTrial(frozen._trial_id, frozen.number, suggest(trial, spec.space))

    def mark_dispatched(self, trial_id: int, attempt: int) -> None:
        """Record that a trial's task reached the broker (so a restart waits for it).

        A fast trial may already be told by now; then there is nothing left to record.
        """
        with contextlib.suppress(UpdateFinishedTrialError):
            self.storage.set_trial_user_attr(trial_id, DISPATCHED_ATTR, attempt)

    def set_trial_attrs(self, spec: StudySpec, values: dict[int, dict[str, Any]]) -> None:
        """Set user attributes of running trials, by number, in one durable write group (a
        trial told meanwhile is left as it is)."""
        with storage_group(self.storage):
            for number, attrs in values.items():
                trial_id = self._trial_id(spec, number)
                for key, value in attrs.items():
                    with contextlib.suppress(UpdateFinishedTrialError):
                        self.storage.set_trial_user_attr(trial_id, key, value)

    def mark_dispatched_many(self, trial_ids: list[int], attempt: int) -> None:
        """`mark_dispatched` for a pack of trials, in one durable write group."""
        with storage_group(self.storage):
            for trial_id in trial_ids:
                self.mark_dispatched(trial_id, attempt)

    def trials(
        self, spec: StudySpec, states: tuple[TrialState, ...] | None = None
    ) -> list[FrozenTrial]:
        """The study's trials, optionally only those in `states`."""
        return self.open(spec).get_trials(deepcopy=False, states=states)

    def trial(self, spec: StudySpec, number: int) -> FrozenTrial:
        """Trial `number` of the study; `RequestRejected` naming `trial` if there is none."""
        study = self.open(spec)
        try:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        except KeyError:
            raise RequestRejected(
                "not_found", "trial", f"study {spec.name!r} has no trial {number}"
            ) from None
        return self.storage.get_trial(trial_id)

    def tell(
        self,
        spec: StudySpec,
        number: int,
        state: str,
        values: list[float] | None,
        error: str | None = None,
    ) -> FrozenTrial | None:
        """Tell Optuna a trial's outcome once; None if the trial was already finished."""
        frozen = self.trial(spec, number)
        if frozen.state in FINISHED:
            return None
        if error:
            self.storage.set_trial_user_attr(frozen._trial_id, ERROR_ATTR, error[:2000])
        study = self.open(spec)
        if state == "complete" and (values is None or len(values) != len(spec.directions)):
            # A worker's objective returned the wrong shape: the trial fails, visibly.
            got = "no values" if values is None else f"{len(values)} values"
            error = f"objective returned {got} for {len(spec.directions)} direction(s)"
            self.storage.set_trial_user_attr(frozen._trial_id, ERROR_ATTR, error)
            state, values = "failed", None
        tell_values = values if state == "complete" else None
        # Optuna's own tell, without `Study.tell`'s deep copy of the trial it returns (a
        # third of a trivial trial's tell, its `hpod:cost` attribute copied key by key): the
        # storage's trial is returned as it is. The journal replaces a trial's object on
        # every change rather than editing it, and a database storage builds a new one per
        # read, so it stays as told; the daemon only reads it.
        _tell_with_warning(study, number, tell_values, state=STATES[state], skip_if_finished=True)
        self._told.append(frozen._trial_id)  # its dispatch mark, if still waiting, is moot
        return self.storage.get_trial(frozen._trial_id)

    def tell_many(
        self, spec: StudySpec, outcomes: list[Outcome], owe_events: bool = False
    ) -> list[FrozenTrial | None]:
        """Tell several outcomes in one durable write group; None for those already told.

        The cost of each evaluation is stored on its trial (`hpod:cost`) before the tell, in
        the same group: the efficiency report reads it from storage. With `owe_events` (no
        broker message backs these outcomes) their events are noted as owed in the same group
        (`EVENTS_OWED_ATTR`), until `settle_events`.
        """
        told: list[FrozenTrial | None] = []
        with storage_group(self.storage):
            if owe_events:
                owed = set(self.owed_events(spec.name)) | {o.number for o in outcomes}
                self.set_attr(spec.name, EVENTS_OWED_ATTR, sorted(owed))
            for o in outcomes:
                if o.cost:
                    trial_id = self._trial_id(spec, o.number)
                    with contextlib.suppress(UpdateFinishedTrialError):
                        self.storage.set_trial_user_attr(trial_id, COST_ATTR, o.cost)
                told.append(self.tell(spec, o.number, o.state, o.values, o.error))
        return told

    def tell_and_ask(self, spec: StudySpec, outcomes: list[Outcome], n: int) -> TellAndAsk:
        """`tell_many`, then ask `n` trials, in one durable write group (one commit, one call
        on the Optuna thread, where a tell and the next ask took two of each).

        The sampler sees the told trials (the storage applied them in memory first). The
        group is written when this returns, so both are durable together or, if the commit
        fails, neither is: the error propagates as a failed tell's does. An ask that raises
        (a sampler's bug, a database write of the ask refused) does not undo the tell, which
        is kept and made durable: the error is returned (`ask_error`) for the study's loop to
        raise, as a failed ask of its own would; a trial it may have created half is
        RUNNING, never dispatched, and found so by the loop's recovery.
        """
        with storage_group(self.storage):
            started = time.perf_counter()
            told = self.tell_many(spec, outcomes)
            asked_at = time.perf_counter()
            asked: list[AskedTrial] = []
            ask_error: Exception | None = None
            try:
                asked = self.ask_many(spec, n)  # its group joins this one (same thread)
            except Exception as exc:
                ask_error = exc
            ended = time.perf_counter()
        return TellAndAsk(told, asked, asked_at - started, ended - asked_at, ask_error)

    def owed_events(self, name: str) -> list[int]:
        """Trial numbers of study `name` whose events may not have been published (see
        `EVENTS_OWED_ATTR`); a value that is not a list of numbers counts as none."""
        value = self._attrs(name).get(EVENTS_OWED_ATTR)
        if not isinstance(value, list):
            return []
        return [n for n in value if isinstance(n, int) and not isinstance(n, bool)]

    def settle_events(self, name: str, numbers: list[int]) -> None:
        """The events of trials `numbers` of study `name` are published: no longer owed."""
        owed = self.owed_events(name)
        left = [n for n in owed if n not in set(numbers)]
        if left != owed:
            self.set_attr(name, EVENTS_OWED_ATTR, left)

    def _trial_id(self, spec: StudySpec, number: int) -> int:
        study = self.open(spec)
        return self.storage.get_trial_id_from_study_id_trial_number(study._study_id, number)

    def summary(self, spec: StudySpec) -> dict[str, Any]:
        """Counts by state and the best trial(s): what `hpod status` shows."""
        study = self.open(spec)
        trials = study.get_trials(deepcopy=False)
        counts = state_counts(trials)
        attrs = study.user_attrs
        out: dict[str, Any] = {
            "name": spec.name,
            "state": attrs.get(STATE_ATTR),
            "mode": attrs.get(MODE_ATTR, spec.mode),
            "directions": spec.directions,
            "objective": spec.objective,
            "budget": attrs.get(BUDGET_ATTR) or spec.budget.model_dump(),
            "n_trials": len(trials),
            "counts": counts,
            "created_at": attrs.get(CREATED_ATTR),
            "best": None,
            "best_trials": [],
        }
        if attrs.get(FAILURE_ATTR) is not None:
            out["failure"] = attrs[FAILURE_ATTR]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete and len(spec.directions) == 1:
            best = study.best_trial
            out["best"] = {"number": best.number, "value": best.value, "params": best.params}
        elif complete:
            out["best_trials"] = [
                {"number": t.number, "values": t.values, "params": t.params}
                for t in study.best_trials
            ]
        return out

    def efficiency(self, spec: StudySpec) -> dict[str, Any]:
        """What the efficiency policies saved, from the costs stored on the trials.

        The full-evaluation estimate is what plain Optuna would have spent: one full-data
        evaluation per trial. A trial that ran to the end on full data costs what it measured;
        a trial pruned on a fraction is scaled up by the study's measured cost ratio of that
        fraction to the full data (complete trials that ran both); a trial pruned after some
        of its epochs or folds is scaled up from its own CPU per step to the steps of a full
        evaluation (the median of the complete trials'); a cache hit costs what the cached
        evaluation did. External trials (no cost recorded) are left out.
        The CPU the sampler process spent on the study's points (GP) is given apart: it is
        neither the objective's nor the daemon's.

        Warm-up: each worker process's first evaluation of the objective (``warm_up`` in its
        cost record) also paid the process's warm-up (imports, building the data, ~1.3 s in
        the demo), which plain Optuna would pay too, once per process. Priced at its full-fit
        CPU on the plain side only, it biased the ratio against hpod; so those trials are left
        out of both sides (CPU spent, estimate, and the measured costs the estimate scales
        by) and shown apart under ``warm_up``. The counts (trials, pruned, data) keep them.
        """
        study = self.open(spec)
        every = study.get_trials(deepcopy=False)
        finished = [
            (t, t.user_attrs[COST_ATTR])
            for t in every
            if t.state in FINISHED and t.user_attrs.get(COST_ATTR)
        ]
        costs = [(t, cost) for t, cost in finished if not cost.get("warm_up")]
        warm = [cost for _, cost in finished if cost.get("warm_up")]
        sampler_cpu = [
            float(t.user_attrs[SAMPLER_CPU_ATTR]) for t in every if SAMPLER_CPU_ATTR in t.user_attrs
        ]
        ratios: dict[float, list[float]] = {}
        full_cpus: list[float] = []
        # Only complete trials measure a full evaluation: a trial pruned after some of its
        # epochs or folds ran on the full data too, yet stopped early.
        complete = [(t, cost) for t, cost in costs if t.state == TrialState.COMPLETE]
        for _, cost in complete:
            rungs = {float(r[0]): float(r[3]) for r in cost.get("rungs", []) if not r[2]}
            if rungs.get(1.0):
                full_cpus.append(rungs[1.0])
                for fraction, cpu in rungs.items():
                    ratios.setdefault(fraction, []).append(cpu / rungs[1.0])
            elif cost.get("full_cpu") is not None:
                full_cpus.append(float(cost["full_cpu"]))
        mean_full = sum(full_cpus) / len(full_cpus) if full_cpus else None
        full_steps = _median([len(t.intermediate_values) for t, _ in complete])
        cpu = data = estimate = report_cpu = 0.0
        hits = partial = 0
        times: list[dict[str, float]] = []
        pruned_at: dict[str, int] = {}
        for t, cost in finished:
            data += float(cost.get("data") or 0.0)
            hits += cost.get("cache") == "hit"
            partial += cost.get("cache") == "partial"
            report_cpu += float(cost.get("report_cpu") or 0.0)
            if not cost.get("warm_up"):  # a warm-up is counted, not compared (docstring)
                cpu += float(cost.get("cpu") or 0.0)
                if t.state == TrialState.PRUNED and cost.get("pruned_at") is None:
                    estimate += _step_pruned_cost(cost, len(t.intermediate_values), full_steps)
                else:
                    estimate += _full_cost(cost, ratios, mean_full)
            if valid_parts(cost.get("time")):
                times.append(cost["time"])
            if t.state == TrialState.PRUNED:
                if cost.get("pruned_at") is not None:
                    where = f"{round(float(cost['pruned_at']) * 100)}% of the data"
                elif cost.get("folds") is not None:
                    where = f"{cost['folds']} fold(s)"
                else:
                    where = f"step {t.last_step}"
                pruned_at[where] = pruned_at.get(where, 0) + 1
        counted = len(finished)
        known = mean_full is not None
        return {
            "trials": counted,
            "cache_hits": hits,
            "cache_partial_hits": partial,
            "pruned": sum(pruned_at.values()),
            "pruned_at": pruned_at,
            "data_evaluated": round(data, 4),
            "data_fraction": round(data / counted, 4) if counted else None,
            "cpu_seconds": round(cpu, 4),
            "full_evaluation_cpu_seconds": round(estimate, 4) if known else None,
            "saved_cpu_seconds": round(estimate - cpu, 4) if known else None,
            "compute_ratio": round(estimate / cpu, 3) if known and cpu > 0 else None,
            "report_cpu_seconds": round(report_cpu, 4),
            # Worker processes' first evaluations: left out of the comparison above.
            "warm_up": {
                "trials": len(warm),
                "cpu_seconds": round(sum(float(c.get("cpu") or 0.0) for c in warm), 4),
            },
            # Why the data ladder was turned off, if it was (`hpod.policies.ladder_payoff`).
            "ladder_off": (study.user_attrs.get(LADDER_ATTR) or {}).get("reason"),
            "time_per_trial": _time_per_trial(times),
            # The GP's CPU, spent in the sampler process (not in the daemon's own time).
            "sampler_process": (
                {"suggestions": len(sampler_cpu), "cpu_seconds": round(sum(sampler_cpu), 4)}
                if sampler_cpu
                else None
            ),
        }


def _nothing() -> None:
    """A call that only carries the dispatch marks waiting (`StudyStore._guarded`)."""


def _log_failed_marks(future: Any) -> None:
    """Log a failed write of dispatch marks (they wait for the next call)."""
    exc = future.exception()
    if exc is not None:
        log.warning("storage.marks_deferred", error=repr(exc))


def _time_per_trial(times: list[dict[str, float]]) -> dict[str, Any] | None:
    """The mean parts of the dispatched trials' time (`hpod.daemon.timeline`), in seconds,
    with hpod's own share (daemon + transport) and how many trials were timed."""
    means = mean_parts(times)
    if means is None:
        return None
    return {
        "trials": len(times),
        **{part: round(seconds, 6) for part, seconds in means.items()},
        "overhead": round(sum(means[p] for p in OVERHEAD_PARTS), 6),
    }


def _median(values: list[int]) -> float | None:
    """The median of the positive counts, None without any."""
    counted = [v for v in values if v > 0]
    return float(statistics.median(counted)) if counted else None


def _step_pruned_cost(cost: dict[str, Any], steps: int, full_steps: float | None) -> float:
    """A trial pruned after `steps` of its epochs or folds, priced had it run all of them:
    its own CPU per step times a full evaluation's steps (never less than it spent)."""
    spent = float(cost.get("cpu") or 0.0)
    if steps <= 0 or full_steps is None:
        return spent
    return max(spent, spent / steps * full_steps)


def _full_cost(
    cost: dict[str, Any], ratios: dict[float, list[float]], mean_full: float | None
) -> float:
    """One trial's estimated cost had it been evaluated once on the full data."""
    if cost.get("full_cpu") is not None:
        return float(cost["full_cpu"])
    if cost.get("cache") == "hit" and cost.get("cached_cpu") is not None:
        return float(cost["cached_cpu"])
    evaluated = [(float(r[0]), float(r[3])) for r in cost.get("rungs", []) if not r[2]]
    if evaluated:
        fraction, cpu = evaluated[-1]
        known = ratios.get(fraction)
        if known:
            return cpu / max(sorted(known)[len(known) // 2], 1e-9)
    return mean_full or 0.0
