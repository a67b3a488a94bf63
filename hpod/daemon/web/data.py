"""The web page's data: a study's trials and its parameter importances.

Both are read on the Optuna thread (`StudyStore.call`), like every other Optuna call of the
daemon, and turned into plain JSON-ready dicts there, so no Optuna object crosses threads.
Importances are cached per study, objective and number of complete trials: a page that asks
again after every event recomputes only when a trial has completed since.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpod.daemon.store import StudyStore
from hpod.engine import COST_ATTR, ERROR_ATTR
from hpod.schema import StudySpec
from hpod.transfer.store import TRANSFERRED_ATTR, state_name

#: Most trials one GET /studies/{name}/trials answers with; a client pages on with `from`.
MAX_TRIALS_PER_PAGE = 5000
#: Up to this many trials are read one by one; more are read with the whole study.
INCREMENTAL_READ_MAX = 200
#: Importances are computed only from this many complete trials on: below it the forest
#: that estimates them says little.
MIN_TRIALS_FOR_IMPORTANCE = 5
#: Trees of the mean-decrease-impurity forest: 0.05 s for 300 trials, 0.2 s for 2,000 on
#: one core, where fANOVA takes 1 s and 20 s (it would hold up the Optuna thread).
IMPORTANCE_TREES = 64
#: Importance results kept in memory (study, objective, complete trials) -> result.
IMPORTANCE_CACHE_SIZE = 128

_importance_cache: OrderedDict[tuple[str, int, int], dict[str, Any]] = OrderedDict()


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: report them as null rather than break the page."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _when(moment: datetime | None) -> str | None:
    """An Optuna timestamp (naive local time) as ISO 8601 with its UTC offset."""
    return None if moment is None else moment.astimezone().isoformat()


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One trial as the page shows it; a transferred trial dropped before it was asked (stored
    as FAIL) shows as ``dropped``, as in the status counts (`state_name`)."""
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "number": trial.number,
        "state": state_name(trial),
        "values": None if trial.values is None else [_finite(v) for v in trial.values],
        "params": trial.params,
        "intermediate": [
            [step, _finite(value)] for step, value in sorted(trial.intermediate_values.items())
        ],
        "duration": duration,
        "datetime_start": _when(trial.datetime_start),
        "datetime_complete": _when(trial.datetime_complete),
        "error": trial.user_attrs.get(ERROR_ATTR),
        "cpu": _finite((trial.user_attrs.get(COST_ATTR) or {}).get("cpu")),
        "cache": (trial.user_attrs.get(COST_ATTR) or {}).get("cache"),
        "transferred": _transferred_from(trial),
    }


def _transferred_from(trial: FrozenTrial) -> str | None:
    """The past study a transferred trial came from (`hpod.transfer.store`), else None."""
    mark = trial.user_attrs.get(TRANSFERRED_ATTR)
    source = mark.get("from") if isinstance(mark, dict) else None
    return source if isinstance(source, str) else None


def read_trials(
    store: StudyStore, spec: StudySpec, first: int, limit: int, state: str | None
) -> dict[str, Any]:
    """Trials numbered `first` and up (at most `limit`), optionally only those in `state`.

    Runs on the Optuna thread. `next_from` is where a client that follows the study asks
    next: the lowest trial number returned that is not finished yet (its state and
    intermediate values may still change), or the one after the last returned.
    """
    storage = store.storage
    study_id = storage.get_study_id_from_name(spec.name)
    total = storage.get_n_trials(study_id)
    if total - first <= INCREMENTAL_READ_MAX:
        # A page following the study asks for the few trials since its last read: fetch
        # just those (an RDB storage would otherwise load every trial of the study).
        trials = []
        for number in range(first, total):
            try:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            except KeyError:
                continue
            trials.append(storage.get_trial(trial_id))
    else:
        trials = [t for t in store.trials(spec) if t.number >= first]
    selected = [t for t in trials if state is None or state_name(t) == state]
    page = selected[:limit]
    unfinished = [t.number for t in page if not t.state.is_finished()]
    if unfinished:
        next_from = min(unfinished)
    elif page:
        next_from = page[-1].number + 1
    else:
        next_from = first
    return {
        "study": spec.name,
        "directions": spec.directions,
        "space": spec.model_dump(mode="json")["space"],
        "n_trials": total,
        "from": first,
        "next_from": next_from,
        "more": len(selected) > len(page),
        "trials": [trial_row(t) for t in page],
    }


def compute_importance(store: StudyStore, spec: StudySpec, objective: int) -> dict[str, Any]:
    """The parameter importances of one objective (index into `spec.directions`).

    Runs on the Optuna thread. Optuna's mean-decrease-impurity evaluator (a random forest)
    is used rather than its default fANOVA, which is 20 to 100 times slower. Only
    parameters present in every complete trial count (Optuna's rule for conditional
    spaces). With fewer than `MIN_TRIALS_FOR_IMPORTANCE` complete trials the answer says
    so instead of guessing.
    """
    study = store.open(spec)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    answer: dict[str, Any] = {
        "study": spec.name,
        "objective": objective,
        "direction": spec.directions[objective],
        "complete_trials": len(complete),
        "min_trials": MIN_TRIALS_FOR_IMPORTANCE,
        "importances": {},
        "ready": False,
        "reason": None,
    }
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        answer["reason"] = (
            f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials, has {len(complete)}"
        )
        return answer
    key = (spec.name, objective, len(complete))
    cached = _importance_cache.get(key)
    if cached is not None:
        _importance_cache.move_to_end(key)
        return cached
    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(
        n_trees=IMPORTANCE_TREES, seed=0
    )
    try:
        importances = optuna.importance.get_param_importances(
            study,
            evaluator=evaluator,
            target=lambda t: t.values[objective],
        )
    except (RuntimeError, ValueError) as exc:
        # e.g. no parameter is shared by every trial, or every parameter has one value.
        answer["reason"] = f"cannot estimate importances: {exc}"
        return answer
    answer["importances"] = {name: float(v) for name, v in importances.items()}
    answer["ready"] = True
    _importance_cache[key] = answer
    while len(_importance_cache) > IMPORTANCE_CACHE_SIZE:
        _importance_cache.popitem(last=False)
    return answer
