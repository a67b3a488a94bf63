"""The objectives added for the compute-savings benchmark (bench/savings.py): `bbob`,
`random_forest` and `model_choice`, called as a worker calls them."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hpod.workers.context import NoPruning, TrialContext
from hpod.workers.objectives.bbob import FUNCTIONS, BbobKwargs, _optimum, bbob
from hpod.workers.objectives.forest import random_forest
from hpod.workers.objectives.pipeline import model_choice

ROOT = Path(__file__).resolve().parents[2]


def run(objective: Any, params: dict[str, Any], fidelity: float = 1.0, **kw: Any) -> float:
    """Evaluate `objective` once, with a fresh context and a non-pruning reporter."""
    return float(objective(TrialContext(params, fidelity, reporter=NoPruning()), **kw))


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_bbob_is_zero_at_the_instance_optimum_and_positive_elsewhere(function: str) -> None:
    x_opt = _optimum(5, 7)
    at_optimum = {f"x{i}": float(v) for i, v in enumerate(x_opt)}
    assert run(bbob, at_optimum, function=function, instance=7) == pytest.approx(0.0, abs=1e-9)
    moved = {**at_optimum, "x0": at_optimum["x0"] + 0.5}
    assert run(bbob, moved, function=function, instance=7) > 0.0


def test_bbob_instances_move_the_optimum_and_repeat_keeps_the_value() -> None:
    assert list(_optimum(5, 1)) != list(_optimum(5, 2))
    params = {f"x{i}": 1.0 for i in range(5)}
    once = run(bbob, params, function="rastrigin")
    assert run(bbob, params, function="rastrigin", repeat=50) == once


def test_bbob_refuses_an_unknown_function_in_its_kwargs() -> None:
    with pytest.raises(ValidationError):
        BbobKwargs.model_validate({"function": "levy"})


def test_random_forest_is_deterministic_and_good_params_beat_bad() -> None:
    good = {"n_estimators": 40, "max_depth": 12, "min_samples_leaf": 2, "max_features": 0.4}
    bad = {"n_estimators": 10, "max_depth": 2, "min_samples_leaf": 64, "max_features": 0.05}
    first = run(random_forest, good, n_samples=1200)
    assert first == run(random_forest, good, n_samples=1200)
    assert first < run(random_forest, bad, n_samples=1200)
    assert run(random_forest, good, 1 / 9, n_samples=1200) > 0


@pytest.mark.parametrize(
    "params",
    [
        {"model": "logreg", "logreg_C": 1.0, "scale": True},
        {"model": "knn", "knn_k": 7, "knn_weights": "distance", "scale": True},
        {"model": "svc", "svc_C": 10.0, "svc_gamma": 0.05, "scale": True},
        {"model": "tree", "tree_depth": 6, "tree_min_leaf": 4, "scale": False},
    ],
)
def test_model_choice_fits_each_model_on_every_fidelity(params: dict[str, Any]) -> None:
    for fidelity in (1 / 9, 1.0):
        assert 0.0 <= run(model_choice, params, fidelity, n_samples=900) < 0.5


def test_model_choice_refuses_an_unknown_model() -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        run(model_choice, {"model": "boost"}, n_samples=300)


@pytest.mark.parametrize("name", ["bbob", "random_forest", "model_choice"])
def test_each_is_registered_as_an_entry_point(name: str) -> None:
    """pyproject.toml names it (the registry reads the installed entry points)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["hpod.objectives"][name]
    module, function = target.split(":")
    assert getattr(importlib.import_module(module), function).__name__ == name
