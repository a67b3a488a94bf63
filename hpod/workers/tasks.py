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

import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal

import optuna
import structlog
from celery import Celery, Task, signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from optuna.pruners import BasePruner
from pydantic import ValidationError

from hpod.checkpoints import CheckpointStore
from hpod.config import Settings
from hpod.engine import make_storage
from hpod.messaging import EVALUATE_BATCH_TASK, EVALUATE_TASK, RESULTS, queue
from hpod.pruners import FoldPruner, build_pruners, should_prune
from hpod.workers.allowance import CpuAllowance
from hpod.workers.evaluation import (
    Continuation,
    Evaluation,
    deterministic,
    evaluate,
    evaluate_continued,
    fidelity_of,
    resumable,
    version_of,
)
from hpod.workers.messages import (
    MAX_PACK,
    Cost,
    EvaluateTask,
    TaskIdentity,
    TrialResult,
    canonical,
    describe,
    validate,
)
from hpod.workers.registry import ObjectiveRegistry, checked_kwargs

HOSTNAME = socket.gethostname()
#: A trial's attribute set by a worker that ended its process to stop the trial at its CPU
#: allowance (`answer`): a retry of its task does not run it again.
STOPPED_ATTR = "hpod:stopped"
#: The objectives (name, kwargs) this process has evaluated: the first evaluation of each
#: pays the process's warm-up (imports, building the data), which the efficiency report
#: leaves out of its comparison (plain Optuna pays it too, once per process). Bounded.
_WARM: set[str] = set()
_MAX_WARM = 1024


def _first_here(objective: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether this is this process's first evaluation of `objective` with `kwargs`."""
    key = canonical([objective, dict(kwargs)])
    if key in _WARM:
        return False
    if len(_WARM) >= _MAX_WARM:
        _WARM.clear()
    _WARM.add(key)
    return True


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
        #: The steps reported, in order.
        self.steps: list[int] = []

    def _get_trial(self) -> optuna.Trial:
        if self._trial is None:
            study = _load_study(self._settings.optuna_storage_url(), self._study_name)
            self._trial = optuna.Trial(study, self._trial_id)
        return self._trial

    def report(self, value: float, step: int) -> None:
        """Store the intermediate value where every pruner decision can see it."""
        self._get_trial().report(value, step)
        self.steps.append(step)

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


def run_trial(
    settings: Settings,
    task: EvaluateTask | Mapping[str, Any],
    on_overrun: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate the trial a task describes; the outcome as a result body (no I/O). A task
    given as a mapping is validated first (`ValidationError` if it is not a valid task).

    `on_overrun`: called from a watchdog thread with the trial's pruned outcome if a call
    into C keeps it running past its CPU allowance and grace (`hpod.workers.allowance`)."""
    if not isinstance(task, EvaluateTask):
        task = validate(EvaluateTask, task)
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
        over_folds = fidelity_of(fn) == "folds"
        # An objective over folds reports fold indices as steps: the plan's step pruners
        # would compare unrelated folds, so the fold rule replaces them where it is on.
        pruners: list[BasePruner] = (
            [FoldPruner(plan.fold_margin)]
            if over_folds and plan.fold_margin > 0
            else build_pruners(
                plan.pruner,
                plan.pruner_options.kwargs(),
                plan.threshold,
                plan.threshold_min_trials,
                ladder,
            )
        )
        folds: int | None = None
        warm_up = _first_here(task.objective, task.objective_kwargs)

        def overrun(used: float) -> None:
            if on_overrun is None:
                return
            cost = Cost(
                cpu=used,
                data=1.0,
                objective_version=version_of(fn),
                deterministic=deterministic(fn),
                mode=plan.mode,
                fidelity=_fidelity_name(fn),
                warm_up=warm_up,
                stopped="budget",
            )
            duration = time.perf_counter() - started
            on_overrun(
                {"state": "pruned", "cost": cost.model_dump(mode="json"), "duration": duration}
            )

        allowance = CpuAllowance(plan.cpu_allowance, overrun if on_overrun else None)
        guarded = allowance.objective(fn)
        if plan.steps_to is not None and resumable(fn):
            # Continued: the daemon's promotions are the pruning (no step pruner here).
            reporter = StorageReporter(settings, task.study, task.trial_id, [])
            with allowance.running():
                result = evaluate_continued(
                    guarded,
                    task.params,
                    kwargs,
                    allowance.reporter(reporter),
                    _continuation(settings, task.study, task.trial_id, plan.steps_to),
                )
        else:
            reporter = StorageReporter(settings, task.study, task.trial_id, pruners)
            with allowance.running():
                result = evaluate(
                    guarded,
                    task.params,
                    kwargs,
                    ladder,
                    allowance.reporter(reporter),
                    plan.cached_rungs(),
                )
            folds = len(reporter.steps) if over_folds else None
        outcome = {
            "state": _state(result),
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
                report_cpu=result.report_cpu,
                folds=folds,
                steps_to=result.steps_to,
                step=result.step,
                resumed_step=result.resumed_step,
                warm_up=warm_up,
                stopped="budget" if result.pruned and allowance.spent else None,
            ).model_dump(mode="json"),
        }
    except SoftTimeLimitExceeded:
        outcome = {"state": "failed", "error": "trial time limit exceeded"}
    except Exception as exc:  # an objective may raise anything; the trial fails, not the worker
        tail = "".join(traceback.format_exception(exc)[-3:])
        outcome = {"state": "failed", "error": f"{type(exc).__name__}: {exc}\n{tail}"[:4000]}
    outcome["duration"] = time.perf_counter() - started
    return outcome


def _state(result: Evaluation) -> Literal["complete", "pruned", "paused"]:
    """A result's state: a continued task that stopped below its last rung is paused."""
    if result.pruned:
        return "pruned"
    steps_to = result.steps_to
    return "paused" if steps_to is not None and steps_to < 1.0 else "complete"


def _continuation(settings: Settings, study: str, trial_id: int, steps_to: float) -> Continuation:
    return Continuation(CheckpointStore.from_settings(settings), study, trial_id, steps_to)


def _fidelity_name(fn: Any) -> Literal["data", "epochs", "none"]:
    """The fidelity as the strategy policy knows it: an objective over folds reports by
    itself, like one over epochs."""
    fidelity = fidelity_of(fn)
    return "data" if fidelity == "data" else "epochs" if fidelity in ("epochs", "folds") else "none"


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


def answer(
    settings: Settings,
    message: dict[str, Any],
    worker: str,
    retried: bool = False,
    publish: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """The result body for one task message: evaluated if valid, failed with the reason if
    not (no code of an invalid task runs); None when it names no trial to answer for.

    With `publish` (a task of one trial), a trial that a call into C keeps running past its
    CPU allowance is answered from the watchdog and its process ended (`_end_overrun`);
    `retried` (the task is sent again after its worker process was lost): a trial that was
    ended so, or is told already, is not run again (None)."""
    started_at = time.time()
    task = parse_task(message)
    if task is None:
        return None
    if isinstance(task, tuple):
        identity, error = task
        return result_body(
            identity, worker, started_at, {"state": "failed", "error": f"invalid task: {error}"}
        )
    if retried and task.plan.cpu_allowance is not None and _stopped_before(settings, task):
        log.info("trial.stopped_before", study=task.study, trial=task.number)
        return None
    on_overrun = None
    if publish is not None:
        evaluated = task

        def on_overrun(outcome: dict[str, Any]) -> None:
            _end_overrun(settings, evaluated)
            publish(result_body(evaluated, worker, started_at, outcome))
            log.warning("trial.overrun_ended", study=evaluated.study, trial=evaluated.number)
            os._exit(0)  # the call into C cannot be stopped otherwise; the pool replaces us

    return result_body(task, worker, started_at, run_trial(settings, task, on_overrun))


def _end_overrun(settings: Settings, task: EvaluateTask) -> None:
    """Mark the trial stopped in storage before its result goes out, so that the task Celery
    sends again once this process is gone does not run it again (`_stopped_before`)."""
    try:
        _storage(settings.optuna_storage_url()).set_trial_user_attr(
            task.trial_id, STOPPED_ATTR, "budget"
        )
    except Exception as exc:  # the result still goes out; a retry then runs it to its allowance
        log.error("trial.stop_mark_failed", study=task.study, trial=task.number, error=repr(exc))


def _stopped_before(settings: Settings, task: EvaluateTask) -> bool:
    """Whether the trial was ended at its allowance by an earlier run, or is told already."""
    try:
        frozen = _storage(settings.optuna_storage_url()).get_trial(task.trial_id)
    except Exception:  # unknown: run it (the daemon ignores a second result)
        return False
    return frozen.state.is_finished() or frozen.user_attrs.get(STOPPED_ATTR) == "budget"


def lost_answers(
    task_name: str, kwargs: Mapping[str, Any], exception: BaseException, runs: int, worker: str
) -> list[dict[str, Any]]:
    """The failed results for the trials of a task Celery gave up on: its worker process died
    running it on every try (OOM kill, segfault, ``os._exit``), or it hit the hard time limit.
    Each trial that the task names validly fails with the reason; nothing runs again."""
    if isinstance(exception, TimeLimitExceeded):
        error = f"the trial hit its hard time limit and its worker process was killed: {exception}"
    else:
        error = (
            f"the worker process died running this trial {runs} time(s), so it is not "
            f"retried again: {type(exception).__name__}: {exception}"
        )
    messages = kwargs.get("trials") if task_name == EVALUATE_BATCH_TASK else [kwargs]
    bodies = []
    for message in messages if isinstance(messages, list) else []:
        try:
            identity = validate(TaskIdentity, message)
        except ValidationError:
            continue
        outcome = {"state": "failed", "error": error}
        bodies.append(result_body(identity, worker, time.time(), outcome))
    return bodies


def register(app: Celery) -> None:
    """Register `hpod.evaluate` and `hpod.evaluate_batch` on `app`.

    Poison tasks are bounded: a task whose worker process dies (``WorkerLostError``) is
    retried by Celery (`task_retry_on_worker_lost`, see `hpod.workers.celery_config`) at most
    ``max_attempts - 1`` times; then, and when it hits the hard time limit, the worker's main
    process publishes its trials as failed with the reason (`lost_answers`), and the message
    is acknowledged, never redelivered.
    """

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

    settings: Settings = app.conf.hpod_settings
    retries = max(0, settings.max_attempts - 1)

    @app.task(name=EVALUATE_TASK, bind=True, max_retries=retries, default_retry_delay=1)  # type: ignore[untyped-decorator]
    def evaluate_one(self: Task, **message: Any) -> None:
        worker = f"{HOSTNAME}:{self.request.hostname}"
        retried = bool(self.request.retries)
        body = answer(settings, message, worker, retried, publish)
        if body is not None:
            publish(body)

    @app.task(name=EVALUATE_BATCH_TASK, bind=True, max_retries=retries, default_retry_delay=1)  # type: ignore[untyped-decorator]
    def evaluate_batch(self: Task, **message: Any) -> None:
        body = answer_pack(settings, message, f"{HOSTNAME}:{self.request.hostname}")
        if body is not None:
            publish(body)

    signals.task_failure.connect(_give_up_handler(app, publish), weak=False)


def answer_pack(
    settings: Settings, message: Mapping[str, Any], worker: str
) -> dict[str, Any] | None:
    """The result message for a packed task: one result per trial it validly names."""
    trials = message.get("trials") if set(message) == {"trials"} else None
    if not isinstance(trials, list) or not 1 <= len(trials) <= MAX_PACK:
        log.error("task.invalid", error=f"a pack needs only 'trials', 1 to {MAX_PACK} of them")
        return None
    results = []
    # What the pack's earlier trials left of their CPU allowances goes to the next one: the
    # daemon splits a pack's share of the budget evenly, and a trial costing more than the
    # mean would otherwise be stopped (its CPU wasted) while the pack's total still covers
    # it. The pack never spends more than the sum of its allowances.
    carry = 0.0
    for item in trials:
        message_item = item if isinstance(item, dict) else {}
        given = _allowance_of(message_item)
        if given is not None and carry > 0:
            message_item = {
                **message_item,
                "plan": {**message_item["plan"], "cpu_allowance": min(given + carry, 1e9)},
            }
        body = answer(settings, message_item, worker)
        if body is not None:
            results.append(body)
        if given is not None and body is not None:
            used = _cpu_of(body)
            carry = 0.0 if used is None else max(0.0, given + carry - used)
    return {"v": 1, "results": results} if results else None


def _allowance_of(item: Mapping[str, Any]) -> float | None:
    """The CPU allowance a pack's trial message gives, if it gives a valid one (the task is
    validated again when it runs)."""
    plan = item.get("plan")
    value = plan.get("cpu_allowance") if isinstance(plan, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0.0 < value < 1e9 and math.isfinite(value) else None


def _cpu_of(body: Mapping[str, Any]) -> float | None:
    """The CPU seconds a trial's result says it spent (None: unknown, e.g. a failed trial)."""
    cost = body.get("cost")
    cpu = cost.get("cpu") if isinstance(cost, dict) else None
    return float(cpu) if isinstance(cpu, int | float) and not isinstance(cpu, bool) else None


def _give_up_handler(app: Celery, publish: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
    """The `task_failure` receiver that answers for the trials of a task Celery gave up on."""

    def on_failure(
        sender: Task | None = None,
        exception: BaseException | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        """Celery gave up on a task of ours (in the worker's main process): answer for its
        trials, so the daemon fails them now instead of waiting or redelivering."""
        if sender is None or sender.app is not app or exception is None:
            return
        if not isinstance(exception, WorkerLostError | TimeLimitExceeded):
            return  # the task body answers every other failure itself
        runs = int(sender.request.retries or 0) + 1
        worker = f"{HOSTNAME}:{sender.request.hostname}"
        bodies = lost_answers(sender.name, kwargs or {}, exception, runs, worker)
        log.error("task.given_up", task=sender.name, runs=runs, error=repr(exception))
        if len(bodies) == 1:
            publish(bodies[0])
        elif bodies:
            publish({"v": 1, "results": bodies})

    return on_failure
