"""Optuna glue: conditional suggestion and validation of proposed configurations."""

from __future__ import annotations

import optuna
import pytest

from hpod.engine import check_params, make_sampler, suggest
from hpod.errors import RequestRejected
from hpod.schema import StudySpec

SPACE = StudySpec.model_validate(
    {
        "name": "s",
        "space": {
            "kind": {"type": "categorical", "choices": ["linear", "tree"]},
            "depth": {
                "type": "int",
                "low": 1,
                "high": 8,
                "condition": {"param": "kind", "values": ["tree"]},
            },
            "alpha": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
        },
        "budget": {"trials": 5},
    }
).space


class TestSuggest:
    """suggest() follows conditions and is idempotent on a trial."""

    def test_conditional_parameter_only_when_active(self) -> None:
        """depth exists exactly when kind == tree, over many random trials."""
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(30):
            trial = study.ask()
            params = suggest(trial, SPACE)
            assert ("depth" in params) == (params["kind"] == "tree")
            study.tell(trial, 0.0)

    def test_second_call_returns_the_stored_values(self) -> None:
        """Rebuilding a trial after a restart yields the same params."""
        study = optuna.create_study()
        trial = study.ask()
        assert suggest(trial, SPACE) == suggest(trial, SPACE)


class TestCheckParams:
    """check_params refuses configurations the space could not produce."""

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"nope": 1}, "params.nope"),
            ({"kind": "forest"}, "params.kind"),
            ({"alpha": 5.0}, "params.alpha"),
            ({"depth": 2.5}, "params.depth"),
            ({"alpha": "high"}, "params.alpha"),
        ],
    )
    def test_rejects_with_the_param_named(self, params: dict[str, object], field: str) -> None:
        """Each invalid value is named by its parameter."""
        with pytest.raises(RequestRejected) as info:
            check_params(params, SPACE)
        assert info.value.field == field

    def test_accepts_a_valid_configuration(self) -> None:
        """A configuration inside the space passes."""
        check_params({"kind": "tree", "depth": 3, "alpha": 0.1}, SPACE)


def test_the_random_sampler_draws_what_optunas_draws_for_the_same_seed() -> None:
    """hpod's random sampler keeps each parameter's transform (issue 16) and draws the very
    parameters Optuna's own draws with the same seed, over every kind of parameter."""
    from hpod.engine import RandomSampler

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -5, 5)
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_float("q", 0, 1, step=0.1)
        trial.suggest_int("n", 1, 100)
        trial.suggest_int("m", 2, 1024, log=True)
        trial.suggest_categorical("c", ["a", "b", None, 3])
        return 0.0

    ours = optuna.create_study(sampler=RandomSampler(seed=7))
    ours.optimize(objective, n_trials=40)
    plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    plain.optimize(objective, n_trials=40)
    assert [t.params for t in ours.trials] == [t.params for t in plain.trials]
    assert len(ours.sampler._transforms) == 6  # type: ignore[attr-defined]
    assert isinstance(make_sampler("random", {}, 7), RandomSampler)
