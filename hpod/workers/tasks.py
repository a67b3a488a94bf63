"""The `hpod.evaluate` task: run one trial of a registered objective, publish its result.

The result goes back as a message on ``hpod.results`` (not a Celery result backend), so the
daemon receives it as an event and never polls. The message is published *before* the task
is acknowledged: a worker that dies in between causes a second evaluation, whose result the
daemon ignores because the trial is already told. The message carries ``started_at`` (the
worker's wall clock when it took the task), from which the daemon measures the queue wait.
"""

from __future__ import annotations

import math
import socket
import time
import traceback
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import optuna
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from hpod.config import Settings
from hpod.engine import load_spec, make_pruner, make_storage
from hpod.errors import HpodError
from hpod.messaging import EVALUATE_TASK, RESULTS, queue
from hpod.workers.context import TrialContext, TrialPruned
from hpod.workers.registry import ObjectiveRegistry

HOSTNAME = socket.gethostname()


class StorageReporter:
    """Reports intermediate values to the study's Optuna storage and asks its pruner."""

    def __init__(self, settings: Settings, study_name: str, trial_id: int) -> None:
        self._settings = settings
        self._study_name = study_name
        self._trial_id = trial_id
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
        """The study's own pruner decides, from all trials' intermediate values."""
        return bool(self._get_trial().should_prune())


@lru_cache(maxsize=64)
def _load_study(storage_url: str, study_name: str) -> optuna.Study:
    storage = _storage(storage_url)
    spec = load_spec(storage, study_name)
    pruner = make_pruner(spec) if spec else optuna.pruners.NopPruner()
    return optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)


@lru_cache(maxsize=4)
def _storage(url: str) -> optuna.storages.BaseStorage:
    return make_storage(url)


@lru_cache(maxsize=1)
def _registry(configured: tuple[tuple[str, str], ...]) -> ObjectiveRegistry:
    return ObjectiveRegistry(dict(configured))


def run_trial(
    settings: Settings,
    *,
    study: str,
    trial_id: int,
    objective: str,
    params: dict[str, Any],
    objective_kwargs: dict[str, Any] | None = None,
    fidelity: float = 1.0,
) -> dict[str, Any]:
    """Evaluate one trial and describe the outcome as a result message body (no I/O)."""
    started = time.perf_counter()
    outcome: dict[str, Any]
    try:
        fn = _registry(tuple(sorted(settings.objectives.items()))).get(objective)
        ctx = TrialContext(params, fidelity, StorageReporter(settings, study, trial_id))
        outcome = {"state": "complete", "values": _as_values(fn(ctx, **(objective_kwargs or {})))}
    except (TrialPruned, optuna.TrialPruned):
        outcome = {"state": "pruned", "values": None}
    except SoftTimeLimitExceeded:
        outcome = {"state": "failed", "error": "trial time limit exceeded"}
    except Exception as exc:  # an objective may raise anything; the trial fails, not the worker
        tail = "".join(traceback.format_exception(exc)[-3:])
        outcome = {"state": "failed", "error": f"{type(exc).__name__}: {exc}\n{tail}"[:4000]}
    outcome["duration"] = time.perf_counter() - started
    return outcome


def _as_values(result: Any) -> list[float]:
    values = [float(v) for v in result] if isinstance(result, Sequence) else [float(result)]
    if not values or not all(math.isfinite(v) for v in values):
        raise HpodError(f"objective returned {values!r}: values must be finite numbers")
    return values


def register(app: Celery) -> None:
    """Register `hpod.evaluate` on `app`."""

    @app.task(name=EVALUATE_TASK, bind=True)  # type: ignore[untyped-decorator]
    def evaluate(self: Task, **message: Any) -> None:
        started_at = time.time()
        settings: Settings = app.conf.hpod_settings
        outcome = run_trial(
            settings,
            study=message["study"],
            trial_id=message["trial_id"],
            objective=message["objective"],
            params=message["params"],
            objective_kwargs=message.get("objective_kwargs"),
            fidelity=message.get("fidelity", 1.0),
        )
        body = {
            "v": 1,
            "study": message["study"],
            "trial_id": message["trial_id"],
            "number": message["number"],
            "attempt": message.get("attempt", 1),
            "worker": f"{HOSTNAME}:{self.request.hostname}",
            "started_at": started_at,
            **outcome,
        }
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
