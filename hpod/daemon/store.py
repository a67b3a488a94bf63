"""The daemon's view of the Optuna storage: studies, asks and tells, on one thread.

Every Optuna call of the daemon runs on a single dedicated thread: the event loop never
blocks on a sampler or a storage write, and Optuna objects are never shared between threads.
The methods here are plain synchronous functions; `StudyStore.call` runs one on that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from hpod.engine import (
    CREATED_ATTR,
    DISPATCHED_ATTR,
    ERROR_ATTR,
    EXTERNAL_ATTR,
    MODE_ATTR,
    REQUEST_ATTR,
    SPEC_ATTR,
    STATE_ATTR,
    check_sampler_available,
    make_sampler,
    make_storage,
    suggest,
)
from hpod.errors import RequestRejected
from hpod.schema import StudySpec

T = TypeVar("T")
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class AskedTrial:
    """A trial just asked of Optuna: what a worker or an external evaluator needs."""

    trial_id: int
    number: int
    params: dict[str, Any]


class StudyStore:
    """Optuna storage access for the daemon, serialised on one thread."""

    def __init__(self, storage_url: str) -> None:
        self.storage: BaseStorage = make_storage(storage_url)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="hpod-optuna")
        self._studies: dict[str, optuna.Study] = {}

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the Optuna thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def call_timed(self, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        """Like `call`, with the seconds `fn` itself took (not the wait for the thread)."""

        def timed() -> tuple[T, float]:
            started = time.perf_counter()
            result = fn(*args)
            return result, time.perf_counter() - started

        return await self.call(timed)

    def close(self) -> None:
        """Finish pending calls and release the thread."""
        self._thread.shutdown(wait=True)

    # --- studies -----------------------------------------------------------------------

    def create(self, spec: StudySpec) -> bool:
        """Create the study of `spec`; False if it already exists with the very same spec."""
        check_sampler_available(spec)
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

    def running_studies(self) -> list[StudySpec]:
        """Specs of the studies hpod was running when it last stopped."""
        specs = []
        for study in self.storage.get_all_studies():
            attrs = study.user_attrs
            if attrs.get(STATE_ATTR) == "running" and SPEC_ATTR in attrs:
                specs.append(StudySpec.model_validate_json(attrs[SPEC_ATTR]))
        return specs

    def spec(self, name: str) -> StudySpec:
        """The spec of study `name`; `RequestRejected` if hpod does not know it."""
        raw = self._attrs(name).get(SPEC_ATTR)
        if raw is None:
            raise RequestRejected("not_found", "study", f"no hpod study named {name!r}")
        return StudySpec.model_validate_json(raw)

    def set_attr(self, name: str, key: str, value: Any) -> None:
        """Set a study user attribute (hpod's bookkeeping lives there)."""
        self.storage.set_study_user_attr(self._study_id(name), key, value)

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
        """The Optuna study object for `spec`, with its sampler (cached)."""
        if spec.name not in self._studies:
            self._studies[spec.name] = optuna.load_study(
                study_name=spec.name, storage=self.storage, sampler=make_sampler(spec)
            )
        return self._studies[spec.name]

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
        return study.tell(number, tell_values, state=STATES[state], skip_if_finished=True)

    def summary(self, spec: StudySpec) -> dict[str, Any]:
        """Counts by state and the best trial(s): what `hpod status` shows."""
        study = self.open(spec)
        trials = study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        attrs = study.user_attrs
        out: dict[str, Any] = {
            "name": spec.name,
            "state": attrs.get(STATE_ATTR),
            "mode": attrs.get(MODE_ATTR, spec.mode),
            "directions": spec.directions,
            "objective": spec.objective,
            "budget": spec.budget.model_dump(),
            "n_trials": len(trials),
            "counts": counts,
            "created_at": attrs.get(CREATED_ATTR),
            "best": None,
            "best_trials": [],
        }
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
