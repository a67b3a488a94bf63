"""Strategies: masks that keep impossible actions out, and the static rule of `auto`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from hpod.policies.strategy.actions import BUILTIN, SIZING_MEASUREMENTS, SpaceShape, available
from hpod.policies.strategy.rules import (
    GP_MIN_EVALUATION_CPU,
    SMALL_BUDGET,
    choose,
    ladder_has_room,
    rule,
)
from hpod.schema import Budget, StudySpec

FLOAT = {"type": "float", "low": 0.0, "high": 1.0}
INT = {"type": "int", "low": 1, "high": 9}
CAT = {"type": "categorical", "choices": ["a", "b", "c"]}


def shape(
    space: dict[str, Any],
    fidelity: Any = "none",
    directions: int = 1,
    trials: int | None = 40,
    cpu: float | None = 5.0,
) -> SpaceShape:
    """The shape of a study with `space` and a budget of `trials` (None: seconds only),
    whose full evaluations were measured at `cpu` CPU seconds (None: none measured yet)."""
    budget = {"trials": trials} if trials is not None else {"seconds": 600}
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "space": space,
            "budget": budget,
            "directions": ["minimize"] * directions,
        }
    )
    return SpaceShape.of(spec, fidelity, evaluation_cpu=cpu)


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
    """CMA-ES needs continuous, unconditional spaces, and so does the GP; pruning needs
    reports; a ladder needs subsampling; NSGA-II is for several objectives."""
    assert {"cmaes", "gp"} <= names(CONTINUOUS) and not {"cmaes", "gp"} & names(MIXED)
    assert not {"tpe-median", "tpe-halving-ladder", "nsga2"} & names(CONTINUOUS)
    epochs = shape({"x": FLOAT, "y": FLOAT}, "epochs")
    assert "tpe-median" in names(epochs) and "tpe-halving-ladder" not in names(epochs)
    assert "tpe-halving-ladder" in names(shape({"x": FLOAT}, "data"))
    multi = shape({"x": FLOAT, "y": FLOAT}, "epochs", directions=2)
    assert names(multi) == {"random", "qmc", "tpe", "tpe-multivariate", "nsga2"}


def test_every_builtin_strategy_may_be_chosen_by_auto() -> None:
    """gp is no longer forced-only: the rule picks it for small numeric budgets."""
    assert all(s.auto for s in BUILTIN)


@pytest.mark.parametrize(
    ("s", "ladder_pays", "expected"),
    [
        # numeric, small budget: GP (after its Sobol opening)
        (CONTINUOUS, None, "gp"),
        (shape({"x": FLOAT, "n": INT}, trials=16), None, "gp"),
        (shape({"x": FLOAT}, trials=SMALL_BUDGET), None, "gp"),
        (shape({"x": FLOAT}, cpu=GP_MIN_EVALUATION_CPU), None, "gp"),
        # ... but only for evaluations that cost more than its suggestions: TPE until one is
        # measured, and for cheap ones (the gradient-boosting demo's GP cost more than its trials)
        (shape({"x": FLOAT, "y": FLOAT}, cpu=None), None, "tpe-multivariate"),
        (shape({"x": FLOAT, "y": FLOAT}, cpu=0.23), None, "tpe-multivariate"),
        # a few categoricals (at most a fifth) still count as numeric
        (shape({**{f"x{i}": FLOAT for i in range(4)}, "c": CAT}), None, "gp"),
        # numeric, longer run: CMA-ES (after its opening, with restarts)
        (shape({f"x{i}": FLOAT for i in range(5)}, trials=SMALL_BUDGET + 1), None, "cmaes"),
        # a budget in seconds only, not yet sized in evaluations: TPE until it is
        (shape({"x": FLOAT, "y": INT}, trials=None), None, "tpe-multivariate"),
        # one numeric parameter, long run: CMA-ES cannot apply, TPE
        (shape({"x": FLOAT}, trials=500), None, "tpe-multivariate"),
        # mixed or conditional: multivariate TPE (grouped), whatever the budget
        (MIXED, None, "tpe-multivariate"),
        (shape({"x": FLOAT, "c": CAT, "d": CAT}, trials=20), None, "tpe-multivariate"),
        (shape({"x": FLOAT, "c": CAT, "d": CAT}, trials=500), None, "tpe-multivariate"),
        # a fidelity: TPE, under the mode's pruner and ladder (compose keeps them)
        (shape({"x": FLOAT, "y": FLOAT}, "epochs", trials=16), None, "tpe-multivariate"),
        (
            shape({"x": FLOAT, "y": FLOAT}, "data", trials=SMALL_BUDGET + 1),
            None,
            "tpe-multivariate",
        ),
        (shape({"x": FLOAT, "y": FLOAT}, "data", trials=500), True, "tpe-multivariate"),
        # ... but a data ladder has no room in a small budget: as without a fidelity, on the
        # full data (gbm_large: 20 evaluations of 1.7 CPU s; the GP from 1 s an evaluation)
        (shape({"x": FLOAT, "y": FLOAT}, "data", trials=16), None, "gp"),
        (shape({"x": FLOAT, "y": FLOAT}, "data", trials=20, cpu=1.7), None, "gp"),
        (shape({"x": FLOAT, "y": FLOAT}, "data", trials=20, cpu=0.5), None, "tpe-multivariate"),
        (shape({"x": FLOAT, "y": FLOAT}, "data", trials=16, cpu=None), None, "tpe-multivariate"),
        (shape({"x": FLOAT, "y": FLOAT}, "data", trials=None, cpu=None), None, "tpe-multivariate"),
        # a data ladder measured not to pay: as without a fidelity
        (shape({"x": FLOAT, "y": FLOAT}, "data", trials=16), False, "gp"),
        (shape({"x": FLOAT, "y": FLOAT}, "data", trials=500), False, "cmaes"),
        # several objectives: NSGA-II
        (shape({"x": FLOAT, "y": FLOAT}, "none", directions=2), None, "nsga2"),
    ],
)
def test_the_rule_chooses_by_space_budget_and_fidelity(
    s: SpaceShape, ladder_pays: bool | None, expected: str
) -> None:
    """The static rule of `auto`, one case per space and budget class; it never depends on
    how far the study is, so every window gives the same answer."""
    chosen, reason = rule(s, ladder_pays)
    assert chosen.name == expected, reason
    assert chosen.mask_reason(s) is None
    assert reason
    assert all(choose(s, told, ladder_pays).name == expected for told in (0, 7, 100))


def test_a_limit_in_seconds_not_sized_yet_holds_the_rule_whatever_the_trial_limit() -> None:
    """The savings benchmark's budget, exactly: 1.5821 CPU seconds and a cap of 480 trials
    (12 x 40). Before an evaluation is measured the 480 trials are only an upper bound: not
    a long run for CMA-ES (which then opened balanced's BBOB studies with its Sobol design),
    nor room for a data ladder; TPE until the CPU limit is sized (~45 evaluations)."""
    pending = compute_shape({"cpu_seconds": 1.5821, "trials": 480}, None)
    assert pending.budget_pending and pending.budget_evaluations == 480
    chosen, reason = rule(pending)
    assert chosen.name == "tpe-multivariate", reason
    assert "at most 480 evaluations and a budget in seconds, no evaluation measured yet" in reason
    data = replace(pending, fidelity="data")
    assert not ladder_has_room(data) and rule(data)[0].name == "tpe-multivariate"
    sized = compute_shape({"cpu_seconds": 1.5821, "trials": 480}, 0.035)
    assert not sized.budget_pending and sized.budget_evaluations == pytest.approx(45.2, abs=0.1)
    # a wall-clock limit likewise, until the study's rate of trials told is measured
    spec = StudySpec.model_validate(
        {"name": "s", "space": {"x": FLOAT, "y": FLOAT}, "budget": {"seconds": 60, "trials": 500}}
    )
    assert SpaceShape.of(spec, "none").budget_pending
    assert not SpaceShape.of(spec, "none", told_per_second=1.0).budget_pending
    assert choose(SpaceShape.of(spec, "none", told_per_second=1.0)).name == "tpe-multivariate"


def test_a_data_ladder_has_room_only_in_a_budget_larger_than_small() -> None:
    """`ladder_has_room`: no budget or more than `SMALL_BUDGET` evaluations; not a small one,
    nor one in seconds before an evaluation sizes it; the rule says so in its reason (and
    not for an objective without a data fidelity, or once the ladder was measured off)."""
    two = {"x": FLOAT, "y": FLOAT}
    assert ladder_has_room(shape(two, "data", trials=SMALL_BUDGET + 1))
    assert not ladder_has_room(shape(two, "data", trials=SMALL_BUDGET))
    assert not ladder_has_room(shape(two, "data", trials=None, cpu=None))
    small = shape(two, "data", trials=20)
    assert rule(small)[1].startswith("no room for a data ladder in 20 trials, full data; ")
    assert "no room" not in rule(shape(two, "none", trials=20))[1]
    assert "no room" not in rule(small, ladder_pays=False)[1]


def test_a_budget_in_seconds_sized_on_one_cheap_trial_makes_no_room_for_a_ladder() -> None:
    """forest at four workers (`bench/savings.py --tasks forest --workers 4`, f66fedc, seed
    6), exactly: 39.042 CPU seconds, a cap of 240 trials, its first full evaluation 0.535 s
    (a small forest) against a median of 1.95 s: 73 evaluations, and the ladder pruned 45
    of 55 trials of a ~20-evaluation study. Sized on one evaluation the budget is pending;
    on the five the rule waits for (median 0.726 s) it is small; five cheap ones make room."""
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "objective": "random_forest",
            "space": {"x": FLOAT, "y": FLOAT},
            "budget": {"cpu_seconds": 39.042, "trials": 240},
        }
    )
    one = SpaceShape.of(spec, "data", evaluation_cpu=0.535, measured=1)
    assert one.budget_evaluations == pytest.approx(73.0, abs=0.1)
    assert one.budget_pending and one.budget_sized_on == 1
    assert not ladder_has_room(one)
    assert "sized on 1 of the 5 measurements it waits for" in rule(one)[1]
    five = SpaceShape.of(spec, "data", evaluation_cpu=0.726, measured=SIZING_MEASUREMENTS)
    assert not five.budget_pending and five.budget_evaluations == pytest.approx(53.8, abs=0.1)
    assert not ladder_has_room(five)
    cheap = SpaceShape.of(spec, "data", evaluation_cpu=0.5, measured=SIZING_MEASUREMENTS)
    assert ladder_has_room(cheap)
    # not counted (a caller that does not track it): sized on its median alone, as before
    assert not SpaceShape.of(spec, "data", evaluation_cpu=0.535).budget_pending
    # a wall-clock limit counts the trials told
    wall = StudySpec.model_validate(
        {"name": "w", "space": {"x": FLOAT, "y": FLOAT}, "budget": {"seconds": 600}}
    )
    assert SpaceShape.of(wall, "data", told_per_second=0.1, told=4).budget_pending
    assert not SpaceShape.of(wall, "data", told_per_second=0.1, told=5).budget_pending


def test_the_rule_reads_the_live_budget_over_the_spec() -> None:
    spec = StudySpec.model_validate(
        {"name": "s", "space": {"x": FLOAT, "y": FLOAT}, "budget": {"trials": 20}}
    )
    assert choose(SpaceShape.of(spec, "none", evaluation_cpu=3.0)).name == "gp"
    assert choose(SpaceShape.of(spec, "none", budget=Budget(trials=400))).name == "cmaes"


def compute_shape(budget: dict[str, float], cpu: float | None) -> SpaceShape:
    """A 5-D numeric study with a budget in compute, whose full evaluations were measured
    at `cpu` CPU seconds (None: none yet)."""
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "objective": "branin",
            "space": {f"x{i}": FLOAT for i in range(5)},
            "budget": budget,
        }
    )
    return SpaceShape.of(spec, "none", evaluation_cpu=cpu)


@pytest.mark.parametrize(
    ("budget", "cpu", "expected", "evaluations"),
    [
        # The savings benchmark's 5-D Rosenbrock: 1.5821 CPU s of ~0.035 s evaluations is a
        # small budget (~45 evaluations), not "no trial budget" (which sent it to CMA-ES,
        # worse than plain TPE there): TPE, the evaluations being too cheap for the GP.
        ({"cpu_seconds": 1.5821}, 0.035, "tpe-multivariate", 1.5821 / 0.035),
        # ... and before any evaluation is measured, TPE until the size is known
        ({"cpu_seconds": 1.5821}, None, "tpe-multivariate", None),
        # a CPU budget of many evaluations is a long run
        ({"cpu_seconds": 100.0}, 0.04, "cmaes", 2500.0),
        # costly evaluations, few of them: the GP
        ({"cpu_seconds": 100.0}, 5.0, "gp", 20.0),
        ({"full_evaluations": 40}, None, "tpe-multivariate", 40.0),
        ({"full_evaluations": 40}, 3.0, "gp", 40.0),
        # the tightest limit decides
        ({"trials": 500, "cpu_seconds": 30.0}, 1.0, "gp", 30.0),
        ({"trials": 500, "cpu_seconds": 15.0}, 0.5, "tpe-multivariate", 30.0),
        ({"trials": 30, "cpu_seconds": 3000.0}, 0.5, "tpe-multivariate", 30.0),
    ],
)
def test_a_budget_in_compute_is_sized_in_measured_evaluations(
    budget: dict[str, float], cpu: float | None, expected: str, evaluations: float | None
) -> None:
    s = compute_shape(budget, cpu)
    assert s.budget_evaluations == pytest.approx(evaluations)
    assert s.budget_pending == (evaluations is None)
    chosen, reason = rule(s)
    assert chosen.name == expected, reason


def test_a_budget_in_wall_seconds_is_sized_at_the_studys_measured_rate() -> None:
    """60 s at 2 trials told a second is 120 evaluations: a long run (CMA-ES); 60 s of
    1 s evaluations, one at a time, is 60: small (TPE for cheap evaluations, the GP for
    costly ones); before any trial is told, TPE until the size is known."""
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "space": {f"x{i}": FLOAT for i in range(5)},
            "budget": {"seconds": 60},
        }
    )
    long_run = SpaceShape.of(spec, "none", evaluation_cpu=0.4, told_per_second=2.0)
    assert long_run.budget_evaluations == pytest.approx(120.0)
    assert choose(long_run).name == "cmaes"
    small = SpaceShape.of(spec, "none", evaluation_cpu=0.9, told_per_second=1.0)
    assert choose(small).name == "tpe-multivariate"
    costly = SpaceShape.of(spec, "none", evaluation_cpu=3.0, told_per_second=0.3)
    assert costly.budget_evaluations == pytest.approx(18.0) and choose(costly).name == "gp"
    pending = SpaceShape.of(spec, "none")
    assert pending.budget_pending and choose(pending).name == "tpe-multivariate"


def test_the_rule_reads_a_live_compute_budget_over_the_spec() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "objective": "branin",
            "space": {"x": FLOAT, "y": FLOAT},
            "budget": {"cpu_seconds": 2.0},
        }
    )
    assert choose(SpaceShape.of(spec, "none", evaluation_cpu=0.05)).name == "tpe-multivariate"
    raised = Budget(cpu_seconds=500.0)
    assert choose(SpaceShape.of(spec, "none", evaluation_cpu=0.05, budget=raised)).name == "cmaes"


def test_every_builtin_strategy_builds_its_optuna_objects() -> None:
    """Each strategy's sampler and pruner exist with the options it names."""
    from hpod.engine import make_sampler
    from hpod.pruners import build_pruners

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


def test_a_discrete_grid_too_large_for_the_gp_keeps_it_out() -> None:
    """The GP enumerates discrete grids: beyond MAX_GP_GRID_POINTS the rule takes TPE."""
    huge = {"x": FLOAT, "n": {"type": "int", "low": 0, "high": 10**7}}
    s = shape(huge, trials=30)
    assert s.max_grid_points == 10**7 + 1
    assert "gp" not in names(s)
    assert choose(s).name == "tpe-multivariate"
    assert choose(shape({"x": FLOAT, "n": {"type": "int", "low": 0, "high": 10**5}})).name == "gp"
