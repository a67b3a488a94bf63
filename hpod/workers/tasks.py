"""The evaluation tasks: run trials of a registered objective, publish their results.

Results go back as messages on ``hpod.results`` (not a Celery result backend), so the daemon
receives them as events and never polls. A message is published *before* the task is
acknowledged: a worker that dies in between causes a second evaluation, whose result the
daemon ignores because the trial is already told. Each result carries ``started_at`` (the
worker's wall clock when it took the task), from which the daemon measures the queue wait,
and what the evaluation cost (CPU seconds, data evaluated, rungs), for the efficiency report.

``hpod.evaluate`` runs one trial; ``hpod.evaluate_batch`` runs several cheap ones packed by
the batching policy and answers with one message, so dispatch cost is paid once per pack.
"""

from __future__ import annotations

import socket
import time
import traceback
from functools import lru_cache
from typing import Any, Literal

import optuna
import structlog
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from optuna.pruners import BasePruner
from pydantic import ValidationError

from hpod.config import Settings
from hpod.engine import make_storage
from hpod.messaging import EVALUATE_BATCH_TASK, EVALUATE_TASK, RESULTS, queue
from hpod.policies.fidelity import deterministic, evaluate, fidelity_of, version_of
from hpod.policies.pruning import build_pruners, should_prune
from hpod.workers.messages import (
    MAX_PACK,
    Cost,
    EvaluateTask,
    TaskIdentity,
    TrialResult,
    describe,
    validate,
)
from hpod.workers.registry import ObjectiveRegistry, checked_kwargs

HOSTNAME = socket.gethostname()
log = structlog.get_logger("hpod.worker")


class StorageReporter:
    """Reports intermediate values to the study's Optuna storage and asks the plan's pruners."""

    def __init__(
        self, settings: Settings, study_name: str, trial_id: int, pruners: list[BasePruner]
    ) -> None:
        self._settings = settings
        self._study_name = study_name
        self._trial_id = trial_id
        self._pruners = pruners
        self._trial: optuna.Trial | None = None

    def _get_trial(self) -> optuna.Trial:
        if self._trial is None:
            study = _load_study(self._settings.optuna_storage_url(), self._study_name)
            self._trial = optuna.Trial(study, self._trial_id)
        return self._trial

    def report(self, value: float, step: int) -> None:
        """Store the intermediate value where every pruner decision can see it."""
        self._get_trial().report(value, step)

    def should_prune(self) -> bool:
        """The plan's pruners decide, from all trials' intermediate values in storage."""
        if not self._pruners:
            return False
        trial = self._get_trial()
        frozen = trial.study._storage.get_trial(self._trial_id)
        return should_prune(trial.study, frozen, self._pruners)


@lru_cache(maxsize=64)
def _load_study(storage_url: str, study_name: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=_storage(storage_url))


@lru_cache(maxsize=4)
def _storage(url: str) -> optuna.storages.BaseStorage:
    return make_storage(url)


@lru_cache(maxsize=1)
def _registry(configured: tuple[tuple[str, str], ...]) -> ObjectiveRegistry:
    return ObjectiveRegistry(dict(configured))


def run_trial(settings: Settings, task: EvaluateTask) -> dict[str, Any]:
    """Evaluate the trial a validated task describes; the outcome as a result body (no I/O)."""
    started = time.perf_counter()
    plan = task.plan
    outcome: dict[str, Any]
    try:
        fn = _registry(tuple(sorted(settings.objectives.items()))).get(task.objective)
        # The objective's own declared schema, checked again here: the daemon checked the
        # study's kwargs at study.create, but a task on the queue may come from anyone.
        kwargs = checked_kwargs(fn, task.objective, task.objective_kwargs)
        # The ladder applies only to objectives that subsample; for the others the pruners
        # must not expect its rungs as steps (an epoch objective reports epochs 1, 2, ...).
        ladder = list(plan.ladder) if fidelity_of(fn) == "data" else [1.0]
        pruners = build_pruners(
            plan.pruner,
            plan.pruner_options.kwargs(),
            plan.threshold,
            plan.threshold_min_trials,
            ladder,
        )
        reporter = StorageReporter(settings, task.study, task.trial_id, pruners)
        result = evaluate(fn, task.params, kwargs, ladder, reporter, plan.cached_rungs())
        outcome = {
            "state": "pruned" if result.pruned else "complete",
            "values": result.values,
            "cost": Cost(
                cpu=result.cpu_seconds,
                full_cpu=result.full_cpu_seconds,
                data=result.data_evaluated,
                rungs=list(result.rungs),
                pruned_at=result.pruned_at,
                objective_version=version_of(fn),
                deterministic=deterministic(fn),
                mode=plan.mode,
                # Whether the objective subsamples ("data"), reports epochs or neither:
                # the strategy policy masks ladders and pruners by it.
                fidelity=_fidelity_name(fn),
            ).model_dump(mode="json"),
        }
    except SoftTimeLimitExceeded:
        outcome = {"state": "failed", "error": "trial time limit exceeded"}
    except Exception as exc:  # an objective may raise anything; the trial fails, not the worker
        tail = "".join(traceback.format_exception(exc)[-3:])
        outcome = {"state": "failed", "error": f"{type(exc).__name__}: {exc}\n{tail}"[:4000]}
    outcome["duration"] = time.perf_counter() - started
    return outcome


def _fidelity_name(fn: Any) -> Literal["data", "epochs", "none"]:
    fidelity = fidelity_of(fn)
    return "data" if fidelity == "data" else "epochs" if fidelity == "epochs" else "none"


def result_body(
    task: EvaluateTask | TaskIdentity, worker: str, started_at: float, outcome: dict[str, Any]
) -> dict[str, Any]:
    """The result message of one trial, validated against `TrialResult` (a worker never
    publishes what the daemon would refuse: an objective's odd value fails the trial)."""
    body = {
        "v": 1,
        "study": task.study,
        "trial_id": task.trial_id,
        "number": task.number,
        "attempt": task.attempt,
        "params": task.params,
        "worker": worker[:256],
        "started_at": started_at,
        **outcome,
    }
    try:
        return validate(TrialResult, body).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        failed = {k: body[k] for k in ("v", "study", "trial_id", "number", "attempt", "params")}
        error = f"the worker's result was invalid: {describe(exc)}"
        return {**failed, "worker": body["worker"], "state": "failed", "error": error}


def parse_task(message: dict[str, Any]) -> EvaluateTask | tuple[TaskIdentity, str] | None:
    """A task message as a validated `EvaluateTask`; if it is invalid but names a trial, that
    trial's identity and what was wrong (the worker answers with the trial's failure); None
    if it names nothing."""
    try:
        return validate(EvaluateTask, message)
    except ValidationError as exc:
        error = describe(exc)
    try:
        identity = validate(TaskIdentity, message)
    except ValidationError:
        log.error("task.invalid", error=error)
        return None
    log.error("task.invalid", study=identity.study, trial=identity.number, error=error)
    return identity, error


def answer(settings: Settings, message: dict[str, Any], worker: str) -> dict[str, Any] | None:
    """The result body for one task message: evaluated if valid, failed with the reason if
    not (no code of an invalid task runs); None when it names no trial to answer for."""
    started_at = time.time()
    task = parse_task(message)
    if task is None:
        return None
    if isinstance(task, tuple):
        identity, error = task
        return result_body(
            identity, worker, started_at, {"state": "failed", "error": f"invalid task: {error}"}
        )
    return result_body(task, worker, started_at, run_trial(settings, task))


def register(app: Celery) -> None:
    """Register `hpod.evaluate` and `hpod.evaluate_batch` on `app`."""

    def publish(body: dict[str, Any]) -> None:
        with app.producer_pool.acquire(block=True) as producer:
            producer.publish(
                body,
                exchange="",
                routing_key=RESULTS,
                declare=[queue(RESULTS)],
                serializer="json",
                delivery_mode=2,
                retry=True,
                retry_policy={"max_retries": 10, "interval_start": 0.2, "interval_step": 0.5},
            )

    @app.task(name=EVALUATE_TASK, bind=True)  # type: ignore[untyped-decorator]
    def evaluate_one(self: Task, **message: Any) -> None:
        settings: Settings = app.conf.hpod_settings
        body = answer(settings, message, f"{HOSTNAME}:{self.request.hostname}")
        if body is not None:
            publish(body)

    @app.task(name=EVALUATE_BATCH_TASK, bind=True)  # type: ignore[untyped-decorator]
    def evaluate_batch(self: Task, **message: Any) -> None:
        settings: Settings = app.conf.hpod_settings
        worker = f"{HOSTNAME}:{self.request.hostname}"
        trials = message.get("trials") if set(message) == {"trials"} else None
        if not isinstance(trials, list) or not 1 <= len(trials) <= MAX_PACK:
            log.error("task.invalid", error="a pack needs only 'trials', 1 to 1000 of them")
            return
        results = []
        for item in trials:
            body = answer(settings, item if isinstance(item, dict) else {}, worker)
            if body is not None:
                results.append(body)
        if results:
            publish({"v": 1, "results": results})
