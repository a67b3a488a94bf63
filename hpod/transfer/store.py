"""Transfer's reads and writes in an Optuna storage (any: journal file, SQLite, PostgreSQL).

Plain synchronous functions of an Optuna storage or study; the daemon runs them on its one
Optuna thread (`StudyStore.call`). Everything lives in Optuna's own attributes:

- ``hpod:memory`` (study): a finished study's memory record (`hpod.transfer.memory`);
- ``hpod:transfer`` (study): what a new study took from the past, and the verdicts since;
- ``hpod:transferred`` (trial): ``{"from": study, "rank": r}`` on each transferred trial;
- ``hpod:transfer_dropped`` (trial): why a transferred trial was dropped before it ran.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from hpod.transfer.mapping import Transferred
from hpod.transfer.memory import MEMORY_ATTR, Observed, StudyMemory, dump_memory, load_memory

TRANSFER_ATTR = "hpod:transfer"
TRANSFERRED_ATTR = "hpod:transferred"
DROPPED_ATTR = "hpod:transfer_dropped"
#: The version the workers report for the objective (`hpod.workers.tasks`, in ``hpod:cost``).
_COST_ATTR = "hpod:cost"


def load_memories(
    storage: BaseStorage, exclude: str, objective: str | None = None
) -> list[StudyMemory]:
    """Every valid memory record in the storage, but that of study `exclude`; with
    `objective`, only those of that objective (the others are not even validated: a study
    start reads every study's attributes, and similarity needs the same objective)."""
    out = []
    for study in storage.get_all_studies():
        if study.study_name == exclude:
            continue
        raw = study.user_attrs.get(MEMORY_ATTR)
        if objective is not None and isinstance(raw, dict) and raw.get("objective") != objective:
            continue
        memory = load_memory(raw)
        if memory is not None and memory.study == study.study_name:
            out.append(memory)
    return out


def load_memories_of(storage: BaseStorage, names: list[str]) -> dict[str, StudyMemory]:
    """The memory records of the studies `names` (those that have a valid one)."""
    out = {}
    for name in names:
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            continue
        memory = load_memory(storage.get_study_user_attrs(study_id).get(MEMORY_ATTR))
        if memory is not None:
            out[name] = memory
    return out


def write_memory(storage: BaseStorage, name: str, memory: StudyMemory) -> None:
    """Store `memory` on study `name` (replacing an earlier record)."""
    study_id = storage.get_study_id_from_name(name)
    storage.set_study_user_attr(study_id, MEMORY_ATTR, _as_json(memory))


def _as_json(memory: StudyMemory) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(dump_memory(memory))
    return data


def enqueue(study: optuna.Study, configs: list[Transferred]) -> list[Transferred]:
    """Enqueue each configuration as a waiting trial marked transferred; returns those
    enqueued. One the study already has (a trial with the same parameters: a start cut short
    and retried, or the sampler got there first) is not enqueued again."""
    enqueued = []
    for config in configs:
        before = len(study.get_trials(deepcopy=False))
        study.enqueue_trial(
            config.params,
            user_attrs={TRANSFERRED_ATTR: {"from": config.source, "rank": config.rank}},
            skip_if_exists=True,
        )
        if len(study.get_trials(deepcopy=False)) > before:
            enqueued.append(config)
    return enqueued


def drop_waiting(study: optuna.Study, source: str | None, reason: str) -> list[int]:
    """Take the waiting (not yet asked) transferred trials of `source` (of any source when
    None) out of the queue, marked dropped with `reason`; returns their numbers.

    Optuna cannot delete a trial, and a waiting one leaves the queue only by being asked or
    finished. FAIL is the one finished state its samplers skip (TPE, CMA-ES and GP learn
    from COMPLETE and PRUNED trials; a PRUNED one would be learnt as a bad result); hpod
    reads the mark and treats a dropped trial as never run: not in the trial budget, not in
    the compute spent (`hpod.daemon.budget`), not among the failed ones (`state_counts`)."""
    dropped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        mark = trial.user_attrs.get(TRANSFERRED_ATTR)
        if not isinstance(mark, dict) or (source is not None and mark.get("from") != source):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, DROPPED_ATTR, reason)
        if study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            dropped.append(trial.number)
    return dropped


def was_dropped(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a stored trial is a transferred trial dropped before it was asked (never run,
    though Optuna holds it as FAIL: see `drop_waiting`)."""
    return DROPPED_ATTR in trial.user_attrs


def state_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """A study's trials by state as its status shows them (Optuna's state names, lower
    case), the dropped transferred ones apart as ``dropped``, not ``fail``."""
    counts: dict[str, int] = {}
    for trial in trials:
        state = "dropped" if was_dropped(trial) else trial.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
    return counts


def counts_in_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a stored trial counts in its study's trial budget: not while it waits in the
    queue (it counts when it is asked), never once dropped by transfer."""
    return trial.state != TrialState.WAITING and not was_dropped(trial)


def complete_trials(study: optuna.Study) -> list[Observed]:
    """The study's complete trials as the memory and the agreement check see them."""
    return [
        Observed(dict(t.params), list(t.values))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values
    ]


def reported_version(study: optuna.Study) -> str | None:
    """The objective version the study's workers reported most often, if any did."""
    versions = Counter(
        str(t.user_attrs[_COST_ATTR]["objective_version"])
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if isinstance(t.user_attrs.get(_COST_ATTR), dict)
        and "objective_version" in t.user_attrs[_COST_ATTR]
    )
    return versions.most_common(1)[0][0] if versions else None
