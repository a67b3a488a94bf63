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
                "number": asked.number,
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


def test_an_epoch_objective_ignores_the_data_ladder_and_prunes_on_epochs(tmp_path: Path) -> None:
    """A task carrying a data ladder (the mode's) runs an epoch objective once, on full data,
    and successive halving's rungs are its epochs, not the ladder's percent steps."""
    settings = Settings(data_dir=tmp_path, storage_url=f"journal://{tmp_path / 'j.log'}")
    store = StudyStore(settings.optuna_storage_url())
    store.create(SPEC)
    plan = {
        "ladder": [0.111111, 0.333333, 1.0],
        "pruner": "successive_halving",
        "pruner_options": {"reduction_factor": 2},
    }
    states, rungs = [], []
    for lr in (3e-3, 5e-3, 1e-5):
        asked = store.ask(SPEC)
        message = {
            "study": "pruning",
            "trial_id": asked.trial_id,
            "number": asked.number,
            "objective": "mlp_digits",
            "params": {"lr": lr},
            "objective_kwargs": {"epochs": 6},
            "plan": plan,
        }
        outcome = run_trial(settings, message)
        store.tell(SPEC, asked.number, outcome["state"], outcome.get("values"))
        states.append(outcome["state"])
        rungs.append([r[0] for r in outcome["cost"]["rungs"]])
    assert states[2] == "pruned"
    assert rungs[0] == [1.0]
    assert max(store.trials(SPEC)[2].intermediate_values) < 6
    store.close()
