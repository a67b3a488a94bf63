"""An Optuna study that finds its waiting trials without scanning every trial on each ask.

`optuna.Study.ask` first looks for a WAITING trial (one enqueued: `trial.enqueue`,
transferred configurations) by listing every trial of the study in that state; on a journal
storage that is a pass over all trials in Python, once per ask, and the daemon's ask grows
with the study (7.5 % of the daemon's CPU per trial in one profile). A trial is WAITING only
from its creation (enqueued trials are created WAITING; a trial never goes back to it), so
it is enough to look at the trials created since the last look: `IndexedStudy` keeps how far
it has looked and the waiting trials it found, in the order of their numbers, which is the
order Optuna serves them in. Trials enqueued by anyone (this process, another, the `optuna`
CLI) are found, since only the storage's trial numbers are read.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage
from optuna.trial import TrialState


class IndexedStudy(optuna.Study):
    """A study whose ask looks only at the trials created since its last ask for waiting ones.

    For a journal storage only: on a database Optuna's own query already selects by state.
    """

    def __init__(
        self, study_name: str, storage: BaseStorage, sampler: optuna.samplers.BaseSampler
    ) -> None:
        super().__init__(study_name=study_name, storage=storage, sampler=sampler)
        #: Trials numbered below this were looked at: not waiting, or in `_waiting`.
        self._looked = 0
        #: Ids of the trials found WAITING, lowest number first.
        self._waiting: list[int] = []

    def ask(self, *args: Any, **kwargs: Any) -> optuna.Trial:
        """Optuna's ask; a trial it just created is known not to be waiting."""
        trial = super().ask(*args, **kwargs)
        if trial.number == self._looked:
            self._looked += 1
        return trial

    def _pop_waiting_trial_id(self) -> int | None:
        """The lowest-numbered waiting trial, now RUNNING for this ask (None: there is none),
        as Optuna's own, reading only the trials created since the last look."""
        storage = self._storage
        while True:
            try:
                trial_id = storage.get_trial_id_from_study_id_trial_number(
                    self._study_id, self._looked
                )
            except KeyError:
                break
            if storage.get_trial(trial_id).state == TrialState.WAITING:
                self._waiting.append(trial_id)
            self._looked += 1
        while self._waiting:
            trial_id = self._waiting.pop(0)
            try:
                # False: another process or thread took it first (as in Optuna's).
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return trial_id
            except UpdateFinishedTrialError:  # dropped (transfer) or finished meanwhile
                continue
        return None


def load_study(
    name: str, storage: BaseStorage, sampler: optuna.samplers.BaseSampler
) -> optuna.Study:
    """Study `name`: an `IndexedStudy` on a journal storage, Optuna's own on any other."""
    if isinstance(storage, JournalStorage):
        return IndexedStudy(name, storage, sampler)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
