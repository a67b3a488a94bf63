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
from typing import Any

import optuna
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from optuna.pruners import BasePruner

from hpod.config import Settings
from hpod.engine import make_storage
from hpod.messaging import EVALUATE_BATCH_TASK, EVALUATE_TASK, RESULTS, queue
from hpod.policies.fidelity import deterministic, evaluate, fidelity_of, version_of
from hpod.policies.pruning import build_pruners, should_prune
from hpod.workers.registry import ObjectiveRegistry

HOSTNAME = socket.gethostname()


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


def run_trial(settings: Settings, message: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the trial a task message describes; the outcome as a result body (no I/O)."""
    started = time.perf_counter()
    plan: dict[str, Any] = message.get("plan") or {}
    outcome: dict[str, Any]
    try:
        fn = _registry(tuple(sorted(settings.objectives.items()))).get(message["objective"])
        # The ladder applies only to objectives that subsample; for the others the pruners
        # must not expect its rungs as steps (an epoch objective reports epochs 1, 2, ...).
        ladder = [float(f) for f in plan.get("ladder", [1.0])]
        if fidelity_of(fn) != "data":
            ladder = [1.0]
        pruners = build_pruners(
            plan.get("pruner", "none"),
            plan.get("pruner_options", {}),
            float(plan.get("threshold", 0.0)),
            int(plan.get("threshold_min_trials", 8)),
            ladder,
        )
        reporter = StorageReporter(settings, message["study"], message["trial_id"], pruners)
        cached = {float(k): v for k, v in (message.get("cached") or {}).items()}
        result = evaluate(
            fn,
            message["params"],
            message.get("objective_kwargs") or {},
            ladder,
            reporter,
            cached,
        )
        outcome = {
            "state": "pruned" if result.pruned else "complete",
            "values": result.values,
            "cost": {
                "cpu": result.cpu_seconds,
                "full_cpu": result.full_cpu_seconds,
                "data": result.data_evaluated,
                "rungs": [list(rung) for rung in result.rungs],
                "pruned_at": result.pruned_at,
                "objective_version": version_of(fn),
                "deterministic": deterministic(fn),
                "mode": plan.get("mode"),
                # Whether the objective subsamples ("data"), reports epochs or neither:
                # the strategy policy masks ladders and pruners by it.
                "fidelity": fidelity_of(fn) or "none",
            },
        }
    except SoftTimeLimitExceeded:
        outcome = {"state": "failed", "error": "trial time limit exceeded"}
    except Exception as exc:  # an objective may raise anything; the trial fails, not the worker
        tail = "".join(traceback.format_exception(exc)[-3:])
        outcome = {"state": "failed", "error": f"{type(exc).__name__}: {exc}\n{tail}"[:4000]}
    outcome["duration"] = time.perf_counter() - started
    return outcome


def _result_body(message: dict[str, Any], worker: str, started_at: float) -> dict[str, Any]:
    return {
        "v": 1,
        "study": message["study"],
        "trial_id": message["trial_id"],
        "number": message["number"],
        "attempt": message.get("attempt", 1),
        "worker": worker,
        "started_at": started_at,
    }


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
        started_at = time.time()
        settings: Settings = app.conf.hpod_settings
        outcome = run_trial(settings, message)
        worker = f"{HOSTNAME}:{self.request.hostname}"
        publish({**_result_body(message, worker, started_at), **outcome})

    @app.task(name=EVALUATE_BATCH_TASK, bind=True)  # type: ignore[untyped-decorator]
    def evaluate_batch(self: Task, trials: list[dict[str, Any]]) -> None:
        settings: Settings = app.conf.hpod_settings
        worker = f"{HOSTNAME}:{self.request.hostname}"
        results = []
        for message in trials:
            started_at = time.time()
            outcome = run_trial(settings, message)
            results.append({**_result_body(message, worker, started_at), **outcome})
        publish({"v": 1, "results": results})
