"""The web page's trial data (`hpod.daemon.web.data`): states as the status counts them."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import quadratic_spec
from optuna.trial import TrialState

from hpod.daemon.store import StudyStore
from hpod.daemon.web import data
from hpod.schema import StudySpec
from hpod.transfer.mapping import Transferred
from hpod.transfer.store import drop_waiting, enqueue, state_counts


@pytest.mark.parametrize("read_max", [data.INCREMENTAL_READ_MAX, 0], ids=["few", "whole"])
def test_a_dropped_transferred_trial_is_dropped_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_max: int
) -> None:
    """A transferred trial dropped while it waited is stored as FAIL; the trials the page
    reads call it `dropped` (as the status counts do), apart from a trial that did fail,
    and the `state` filter tells the two apart."""
    monkeypatch.setattr(data, "INCREMENTAL_READ_MAX", read_max)
    store = StudyStore(f"journal://{tmp_path}/studies.journal")
    spec = StudySpec.model_validate(quadratic_spec("web-dropped"))
    study = optuna.create_study(storage=store.storage, study_name=spec.name)
    try:
        failed = study.ask()
        study.tell(failed, state=TrialState.FAIL)
        enqueue(study, [Transferred({"x": 0.5, "y": 0.5}, "old", 0)])
        assert drop_waiting(study, "old", "disagrees") == [1]

        page = data.read_trials(store, spec, 0, 10, None)
        assert [(t["number"], t["state"]) for t in page["trials"]] == [(0, "fail"), (1, "dropped")]
        assert page["trials"][1]["transferred"] == "old"
        assert page["next_from"] == 2  # a dropped trial is finished: not read again
        counts = state_counts(study.get_trials(deepcopy=False))
        assert counts == {"fail": 1, "dropped": 1}
        for state in ("fail", "dropped"):
            only = data.read_trials(store, spec, 0, 10, state)["trials"]
            assert [t["state"] for t in only] == [state]
    finally:
        store.close()
