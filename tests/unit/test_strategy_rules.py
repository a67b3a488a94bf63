"""Strategies: masks that keep impossible actions out, and the rule-based selector."""

from __future__ import annotations

from typing import Any

import pytest

from hpod.policies.strategy.actions import BUILTIN, SpaceShape, available
from hpod.policies.strategy.rules import OPENING_TRIALS, choose
from hpod.schema import StudySpec

FLOAT = {"type": "float", "low": 0.0, "high": 1.0}


def shape(space: dict[str, Any], fidelity: Any = "none", directions: int = 1) -> SpaceShape:
    """The shape of a study with `space`."""
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "space": space,
            "budget": {"trials": 10},
            "directions": ["minimize"] * directions,
        }
    )
    return SpaceShape.of(spec, fidelity)


CONTINUOUS = shape({f"x{i}": FLOAT for i in range(5)})
MIXED = shape(
    {
        "kind": {"type": "categorical", "choices": ["a", "b"]},
        "x": {**FLOAT, "condition": {"param": "kind", "values": ["a"]}},
        "y": FLOAT,
    }
)


def names(s: SpaceShape) -> set[str]:
    """Names of the strategies available for `s`."""
    return {strategy.name for strategy in available(s)}


def test_masks_keep_out_what_cannot_apply() -> None:
    """CMA-ES needs continuous, unconditional spaces; pruning needs reports; a ladder needs
    subsampling; NSGA-II is for several objectives."""
    assert "cmaes" in names(CONTINUOUS) and "cmaes" not in names(MIXED)
    assert not {"tpe-median", "tpe-halving-ladder", "nsga2"} & names(CONTINUOUS)
    epochs = shape({"x": FLOAT, "y": FLOAT}, "epochs")
    assert "tpe-median" in names(epochs) and "tpe-halving-ladder" not in names(epochs)
    assert "tpe-halving-ladder" in names(shape({"x": FLOAT}, "data"))
    multi = shape({"x": FLOAT, "y": FLOAT}, "epochs", directions=2)
    assert names(multi) == {"random", "qmc", "tpe", "tpe-multivariate", "nsga2"}


@pytest.mark.parametrize(
    ("s", "told", "ladder_pays", "expected"),
    [
        (CONTINUOUS, 0, None, "qmc"),
        (CONTINUOUS, OPENING_TRIALS, None, "cmaes"),
        (MIXED, 0, None, "tpe-multivariate"),
        (
            shape({"x": FLOAT, "c": {"type": "categorical", "choices": [1, 2]}}, "epochs"),
            20,
            None,
            "tpe-median",
        ),
        (shape({"x": FLOAT, "y": FLOAT}, "epochs"), 20, None, "cmaes-median"),
        (shape({"x": FLOAT, "y": FLOAT}, "data"), 20, None, "tpe-halving-ladder"),
        (shape({"x": FLOAT, "y": FLOAT}, "data"), 20, False, "cmaes"),
        (shape({"x": FLOAT, "y": FLOAT}, "none", directions=2), 20, None, "nsga2"),
    ],
)
def test_the_rules_choose_by_space_fidelity_and_progress(
    s: SpaceShape, told: int, ladder_pays: bool | None, expected: str
) -> None:
    """Opening design first, CMA-ES on continuous spaces, TPE on mixed ones, pruning with
    epochs, a ladder where it pays, NSGA-II for several objectives."""
    chosen = choose(s, told, ladder_pays)
    assert chosen.name == expected
    assert chosen.mask_reason(s) is None


def test_every_builtin_strategy_builds_its_optuna_objects() -> None:
    """Each strategy's sampler and pruner exist with the options it names."""
    from hpod.engine import make_sampler
    from hpod.policies.pruning import build_pruners

    for strategy in BUILTIN:
        make_sampler(strategy.sampler, strategy.sampler_options, seed=0, parallel=True)
        build_pruners(strategy.pruner, strategy.pruner_options, ladder=list(strategy.ladder))


def test_features_describe_space_progress_and_fidelity_agreement() -> None:
    """A fixed-length vector in FEATURE_NAMES order, scaled to [-1, 1]."""
    import optuna

    from hpod.engine import COST_ATTR
    from hpod.policies.strategy.features import FEATURE_NAMES, features

    spec = StudySpec.model_validate(
        {
            "name": "f",
            "space": {
                "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                "n": {"type": "int", "low": 1, "high": 9},
            },
            "budget": {"trials": 20},
        }
    )
    study = optuna.create_study()
    for i in range(10):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        trial.suggest_int("n", 1, 9)
        rungs = [[1 / 9, 1.0 - i / 20, False, 0.1], [1.0, 1.0 - i / 10, False, 1.0]]
        trial.set_user_attr(COST_ATTR, {"cpu": 1.1, "rungs": rungs})
        study.tell(trial, 1.0 - i / 10)
    vector = dict(zip(FEATURE_NAMES, features(spec, study.trials, "fast", 20), strict=True))
    assert len(vector) == len(FEATURE_NAMES)
    assert vector["share_float"] == 0.5 and vector["share_log"] == 0.5
    assert vector["budget_used"] == 0.5 and vector["budget_left"] == 0.5
    assert vector["rank_agreement"] == 1.0  # the ninth of the data ranks like the full data
    assert vector["improvement_rate"] == 1.0 and vector["mode_fast"] == 1.0
    assert all(-1.0 <= v <= 1.0 for v in vector.values())
