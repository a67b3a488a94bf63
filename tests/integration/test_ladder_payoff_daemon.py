"""The data ladder measured not to pay is turned off, through a real daemon, and stays off
across a restart (`hpod.policies.ladder_payoff`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import DaemonFactory, eventually

from hpod.engine import COST_ATTR, LADDER_ATTR, make_storage

#: Registered by setting: a worker imports it from this directory (on PYTHONPATH).
OBJECTIVES = json.dumps({"flat_cost": "ladder_objectives:flat_cost"})


def test_a_ladder_whose_rungs_cost_a_full_fit_is_turned_off_and_a_restart_keeps_it(
    start_daemon: DaemonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """balanced on an objective whose CPU does not depend on its data fraction: every rung
    costs a full evaluation, so once the verdict may be given (9 ladder trials, 3 of them on
    the full data) the ladder goes off, the verdict is stored on the study, the plan's ladder
    is the full data only, and a daemon started again on the same data keeps it: every trial
    it asks goes straight to the full data."""
    here = Path(__file__).parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]))
    data = tmp_path / "data"
    name = "flat"
    spec = {
        "name": name,
        "objective": "flat_cost",
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "budget": {"trials": 60},
        "mode": "balanced",
        "strategy": "mode",
        "sampler": {"name": "random", "seed": 1},
        "max_concurrent": 2,
    }
    daemon = start_daemon(objectives=OBJECTIVES, data_dir=data)
    assert daemon.request("POST", "/studies", spec)[0] == 201

    def off() -> dict[str, Any] | None:
        """The plan once the ladder is off (the verdict is stored before the plan changes)."""
        plan: dict[str, Any] = daemon.get(f"/studies/{name}").get("plan") or {}
        return plan if plan.get("ladder") == [1.0] else None

    plan = eventually(off, 60, 0.1, lambda: daemon.log()[-3000:])
    assert plan["policies_report"]["subsampling"]["ladder"] == "off"
    assert plan["pruner"] == "successive_halving"  # the mode's pruner stays
    daemon.stop()
    storage = make_storage(f"journal://{data}/studies.journal")
    study = optuna.load_study(study_name=name, storage=storage)
    stored = study.user_attrs[LADDER_ATTR]
    assert stored["verdict"] == "off" and stored["expected"] >= 0.8
    assert "a 1/9 rung costs" in stored["reason"]
    asked_before = len(study.get_trials(deepcopy=False))

    again = start_daemon(objectives=OBJECTIVES, data_dir=data)
    final = again.wait_study(name, timeout=120)
    assert final["efficiency"]["ladder_off"] == stored["reason"]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    after = [t for t in trials if t.number >= asked_before]
    assert after, "the budget was spent before the restart"
    evaluated = [t.user_attrs[COST_ATTR] for t in after]
    evaluated = [cost for cost in evaluated if cost.get("cache") != "hit"]
    assert evaluated
    for cost in evaluated:
        assert [r[0] for r in cost["rungs"]] == [1.0]
