"""Reports from a worker reach the study's storage, and the study's pruner stops a bad trial."""

from __future__ import annotations

from pathlib import Path

import optuna

from hpod.config import Settings
from hpod.daemon.store import StudyStore
from hpod.schema import StudySpec
from hpod.workers.tasks import run_trial

SPEC = StudySpec.model_validate(
    {
        "name": "pruning",
        "objective": "mlp_digits",
        "objective_kwargs": {"epochs": 6},
        "space": {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}},
        "budget": {"trials": 10},
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
    }
)


def test_a_hopeless_trial_is_pruned_by_the_study_pruner(tmp_path: Path) -> None:
    """After two good trials, a trial with a uselessly small learning rate is pruned in the
    worker by the pruner its task names, and its reports are in the storage for the daemon."""
    settings = Settings(data_dir=tmp_path, storage_url=f"journal://{tmp_path / 'j.log'}")
    store = StudyStore(settings.optuna_storage_url())
    store.create(SPEC)
    outcomes = []
    for lr in (3e-3, 5e-3, 1e-5):
        asked = store.ask(SPEC)
        outcome = run_trial(
            settings,
            {
                "study": "pruning",
                "trial_id": asked.trial_id,
                "objective": "mlp_digits",
                "params": {"lr": lr},
                "objective_kwargs": {"epochs": 6},
                "plan": {
                    "pruner": "median",
                    "pruner_options": {"n_startup_trials": 2, "n_warmup_steps": 1},
                },
            },
        )
        store.tell(SPEC, asked.number, outcome["state"], outcome.get("values"))
        outcomes.append(outcome["state"])
    assert outcomes == ["complete", "complete", "pruned"]
    pruned = store.trials(SPEC)[2]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert 1 <= len(pruned.intermediate_values) < 6
    store.close()
