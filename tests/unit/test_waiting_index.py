"""The daemon's study finds waiting (enqueued) trials without scanning every trial per ask
(`hpod.daemon.waiting`): enqueued trials are still served first, in order, whoever enqueued
them and whenever; a dropped one is skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpod.daemon.waiting import IndexedStudy, load_study
from hpod.engine import make_storage
from hpod.journal import storage_group


def _study(tmp_path: Path) -> tuple[optuna.storages.BaseStorage, optuna.Study]:
    storage = make_storage(f"journal://{tmp_path / 'journal.log'}")
    optuna.create_study(storage=storage, study_name="s")
    study = load_study("s", storage, optuna.samplers.RandomSampler(seed=0))
    assert isinstance(study, IndexedStudy)
    return storage, study


def _ask(study: optuna.Study) -> tuple[int, float]:
    trial = study.ask()
    return trial.number, trial.suggest_float("x", 0, 10)


def test_enqueued_trials_are_served_first_in_order(tmp_path: Path) -> None:
    _, study = _study(tmp_path)
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 2.0})
    assert [_ask(study) for _ in range(2)] == [(0, 1.0), (1, 2.0)]
    number, _ = _ask(study)
    assert number == 2


def test_a_trial_enqueued_later_by_another_study_object_is_found(tmp_path: Path) -> None:
    storage, study = _study(tmp_path)
    for _ in range(3):
        study.tell(study.ask(), 0.0)
    other = optuna.load_study(study_name="s", storage=storage)
    other.enqueue_trial({"x": 7.0})
    asked = study.ask()
    assert asked.number == 3
    assert asked.suggest_float("x", 0, 10) == 7.0
    assert storage.get_trial(asked._trial_id).state == TrialState.RUNNING


def test_a_waiting_trial_finished_or_taken_meanwhile_is_skipped(tmp_path: Path) -> None:
    storage, study = _study(tmp_path)
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 2.0})
    study.enqueue_trial({"x": 3.0})
    storage.set_trial_state_values(
        storage.get_trial_id_from_study_id_trial_number(0, 0), TrialState.FAIL
    )
    other = optuna.load_study(study_name="s", storage=storage)
    assert other.ask().number == 1  # Optuna's own ask takes the second one first
    number, x = _ask(study)
    assert (number, x) == (2, 3.0)
    assert _ask(study)[0] == 3


def test_an_ask_with_no_waiting_trial_lists_no_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, study = _study(tmp_path)
    for _ in range(5):
        study.tell(study.ask(), 0.0)
    listed: list[Any] = []
    original = storage.get_all_trials

    def spy(*args: Any, **kwargs: Any) -> Any:
        listed.append(kwargs.get("states"))
        return original(*args, **kwargs)

    monkeypatch.setattr(storage, "get_all_trials", spy)
    with storage_group(storage):
        numbers = [study.ask().number for _ in range(3)]
    assert numbers == [5, 6, 7]
    assert (TrialState.WAITING,) not in listed


def test_a_database_storage_keeps_optunas_study(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    optuna.create_study(storage=storage, study_name="s")
    study = load_study("s", storage, optuna.samplers.RandomSampler(seed=0))
    assert type(study) is optuna.Study
