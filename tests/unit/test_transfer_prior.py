"""Transfer's prior for the sampler (`hpod.transfer.prior`): which past points it holds, how
they are valued and fade, that TPE is steered by them from its first ask, and that they never
enter the study's records."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpod.schema import StudySpec
from hpod.transfer import prior
from hpod.transfer.memory import Observed, StudyMemory, build_memory
from hpod.transfer.prior import (
    MAX_PRIOR,
    PER_SOURCE,
    PRIOR_ATTR,
    PriorSampler,
    own_complete,
    prior_points,
    prior_trials,
    wraps,
)

SPACE = dict(
    StudySpec.model_validate(
        {
            "name": "s",
            "space": {"x": {"type": "float", "low": -2.0, "high": 2.0}},
            "budget": {"trials": 1},
        }
    ).space
)


def memory(name: str, best: float, n: int = 40) -> StudyMemory:
    """A finished study of (x - best)^2 over a grid on [-2, 2]."""
    xs = [-2 + 4 * i / (n - 1) for i in range(n)]
    built = build_memory(
        name, "quadratic", SPACE, ["minimize"], [Observed({"x": x}, [(x - best) ** 2]) for x in xs]
    )
    assert built is not None
    return built


def own(values: list[float]) -> list[optuna.trial.FrozenTrial]:
    dist = optuna.distributions.FloatDistribution(-2, 2)
    return [
        optuna.trial.create_trial(params={"x": 0.0}, distributions={"x": dist}, value=v)
        for v in values
    ]


def test_prior_points_are_spread_over_each_surface_round_robin_best_first() -> None:
    points = prior_points([memory("a", 1.5), memory("b", -1.0)], SPACE)
    assert len(points) == min(MAX_PRIOR, 2 * PER_SOURCE)
    assert [p[2] for p in points[:4]] == ["a", "b", "a", "b"]
    assert points[0][1] == 0.0 and points[0][0]["x"] == pytest.approx(1.5, abs=0.06)
    ranks = [rank for _, rank, source in points if source == "a"]
    assert ranks == sorted(ranks) and ranks[-1] == 1.0  # from the best to the worst
    # A parameter the new space lacks is dropped; a point left empty is not used.
    other = dict(
        StudySpec.model_validate(
            {
                "name": "t",
                "space": {"z": {"type": "int", "low": 0, "high": 3}},
                "budget": {"trials": 1},
            }
        ).space
    )
    assert prior_points([memory("a", 1.5)], other) == []


def test_prior_values_are_the_studys_quantiles_and_fade_with_its_own_trials() -> None:
    points = prior_points([memory("a", 1.5), memory("b", -1.0)], SPACE)
    direction = StudyDirection.MINIMIZE
    # No own trial yet: the past rank is the value.
    first = prior_trials(points, [], {"a", "b"}, direction, SPACE)
    assert len(first) == len(points)
    assert sorted(t.value for t in first) == sorted(p[1] for p in points)
    assert all(t.number < 0 and t.user_attrs[PRIOR_ATTR] in {"a", "b"} for t in first)
    # With own trials: their quantiles (the best prior point gets the best own value) ...
    mine = own([10.0, 20.0, 30.0, 40.0])
    valued = prior_trials(points, mine, {"a", "b"}, direction, SPACE)
    assert min(t.value for t in valued) == 10.0 and max(t.value for t in valued) == 40.0
    # ... and one point fewer per own trial, the best ranks kept.
    assert len(valued) == len(points) - 4
    assert sum(t.value == 10.0 for t in valued) == 2
    assert prior_trials(points, own([1.0] * len(points)), {"a", "b"}, direction, SPACE) == []
    # Only the sources in use count; none in use, no prior.
    assert {
        t.user_attrs[PRIOR_ATTR] for t in prior_trials(points, [], {"b"}, direction, SPACE)
    } == {"b"}
    assert prior_trials(points, [], set(), direction, SPACE) == []
    # Maximising: the best past rank gets the highest own value.
    up = prior_trials(points, mine, {"a"}, StudyDirection.MAXIMIZE, SPACE)
    best = min(points, key=lambda p: p[1])
    assert next(t for t in up if t.params == best[0]).value == 40.0


def steered(with_prior: bool, seed: int) -> tuple[list[float], optuna.Study]:
    """Five asks of TPE (10 random startup trials) on a fresh study; with the prior of a past
    study whose best is at x = 1.5."""
    points = prior_points([memory("a", 1.5)], SPACE)
    inner = optuna.samplers.TPESampler(seed=seed)
    sampler: optuna.samplers.BaseSampler = inner
    if with_prior:
        sampler = PriorSampler(
            inner,
            lambda study: prior_trials(points, own_complete(study), {"a"}, study.direction, SPACE),
        )
    study = optuna.create_study(sampler=sampler)
    xs = []
    for _ in range(5):
        trial = study.ask()
        x = trial.suggest_float("x", -2, 2)
        study.tell(trial, (x - 1.4) ** 2)
        xs.append(x)
    return xs, study


def test_tpe_models_from_the_first_ask_with_the_prior_and_the_study_stays_its_own() -> None:
    near = [sum(abs(x - 1.5) < 0.6 for x in steered(True, seed)[0]) for seed in range(4)]
    far = [sum(abs(x - 1.5) < 0.6 for x in steered(False, seed)[0]) for seed in range(4)]
    # Random startup puts about 15 % of the draws there; the prior most of them.
    assert sum(near) >= 12 and sum(near) > sum(far) + 5, (near, far)
    _, study = steered(True, 0)
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(5))
    assert all(PRIOR_ATTR not in t.user_attrs for t in trials)
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_only_tpe_is_given_a_prior(monkeypatch: Any) -> None:
    assert wraps(optuna.samplers.TPESampler())
    assert not wraps(optuna.samplers.RandomSampler())
    monkeypatch.setattr(prior, "MAX_PRIOR", 0)
    assert prior_points([memory("a", 1.5)], SPACE) == []
