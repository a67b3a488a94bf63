"""The daemon's side of the strategy policy: settings, what the status shows, plans and modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hpod.daemon.strategy import (
    STRATEGY_ATTR,
    STRATEGY_CURRENT_ATTR,
    STRATEGY_SETTING_ATTR,
    check_setting,
    spec_override,
    strategy_status,
)
from hpod.errors import RequestRejected
from hpod.modes import load_modes
from hpod.policies.compose import compose, resolve_plan
from hpod.policies.strategy.actions import BUILTIN
from hpod.schema import Budget, StudySpec

NAMES = [s.name for s in BUILTIN]


def spec(**extra: Any) -> StudySpec:
    """A two-parameter study spec."""
    return StudySpec.model_validate(
        {
            "name": "s",
            "objective": "quadratic",
            "space": {
                "x": {"type": "float", "low": -1, "high": 1},
                "y": {"type": "float", "low": -1, "high": 1},
            },
            "budget": {"trials": 20},
            **extra,
        }
    )


def test_the_default_setting_is_auto_and_a_spec_may_name_a_strategy() -> None:
    """`strategy` defaults to auto; it is part of the spec (a different one is another spec)."""
    assert spec().strategy == "auto"
    assert spec(strategy="qmc").canonical() != spec().canonical()
    with pytest.raises(ValidationError):
        spec(strategy="not a name!")


def test_unknown_strategies_are_refused_naming_the_field_and_the_known_ones() -> None:
    """An unknown name lists auto, mode and every strategy; known names pass."""
    for ok in ("auto", "mode", "qmc", "tpe-halving-ladder"):
        check_setting(ok, spec(), NAMES, "study.strategy")
    with pytest.raises(RequestRejected) as refused:
        check_setting("oracle", spec(), NAMES, "study.strategy")
    assert refused.value.field == "study.strategy"
    assert "unknown strategy 'oracle'" in refused.value.message
    assert "auto, mode" in refused.value.message and "cmaes" in refused.value.message


def test_a_spec_that_names_its_sampler_or_pruner_keeps_them() -> None:
    """The policy never overrides what the spec sets: forcing a strategy on it is refused,
    auto and mode are accepted (and drive it as mode)."""
    own = spec(sampler={"name": "random"}, pruner={"name": "median"})
    assert spec_override(own) == "sampler 'random' and pruner 'median'"
    assert spec_override(spec(sampler={"seed": 3})) is None
    check_setting("auto", own, NAMES, "study.strategy")
    with pytest.raises(RequestRejected) as refused:
        check_setting("qmc", own, NAMES, "strategy")
    assert refused.value.field == "strategy" and "sampler 'random'" in refused.value.message


def test_the_status_shows_the_setting_the_current_strategy_and_compact_decisions() -> None:
    """From the stored attributes: the live setting wins over the spec's; each decision as
    told, strategy, source and reward."""
    attrs = {
        STRATEGY_SETTING_ATTR: "tpe",
        STRATEGY_ATTR: [
            {"told": 0, "strategy": "qmc", "source": "rules", "reason": "r0", "reward": 0.5},
            {"told": 9, "strategy": "tpe", "source": "forced", "reason": "r1", "reward": None},
        ],
        STRATEGY_CURRENT_ATTR: {"scores": {"tpe": 0.2}, "masked": {"nsga2": "single"}},
    }
    shown = strategy_status(attrs, spec())
    assert shown["setting"] == "tpe" and shown["current"] == "tpe"
    assert shown["source"] == "forced" and shown["reason"] == "r1"
    assert shown["scores"] == {"tpe": 0.2} and shown["masked"] == {"nsga2": "single"}
    assert shown["decisions"] == [
        {"told": 0, "strategy": "qmc", "source": "rules", "reward": 0.5},
        {"told": 9, "strategy": "tpe", "source": "forced", "reward": None},
    ]
    empty = strategy_status({}, spec(strategy="mode"))
    assert empty["setting"] == "mode" and empty["current"] is None and empty["decisions"] == []


def test_each_mode_has_a_strategy_window_and_a_strategy_keeps_the_modes_other_knobs() -> None:
    """fast decides every 8 trials, balanced 12, thorough 20; a strategy laid over a mode's
    plan changes sampler, pruner and ladder only."""
    modes = load_modes(None)
    windows = {name: modes[name].strategy_window for name in ("fast", "balanced", "thorough")}
    assert windows == {"fast": 8, "balanced": 12, "thorough": 20}
    plan = resolve_plan(spec(sampler={"seed": 4}), "fast", modes["fast"])
    assert plan.strategy_window == 8
    cmaes = next(s for s in BUILTIN if s.name == "cmaes")
    laid = compose(plan, cmaes, None, keep_mode_pruning=False)
    assert (laid.sampler, laid.pruner, laid.ladder) == ("cmaes", "none", (1.0,))
    kept = ("threshold", "policies", "parallelism", "batch_seconds", "seed", "strategy_window")
    assert all(getattr(laid, k) == getattr(plan, k) for k in kept)


def test_forcing_gp_on_a_grid_it_would_enumerate_is_refused() -> None:
    """The limit a spec naming the gp sampler is held to holds for the forced strategy too."""
    huge = spec(space={"n": {"type": "int", "low": 0, "high": 10**7}})
    with pytest.raises(RequestRejected) as refused:
        check_setting("gp", huge, NAMES, "study.strategy")
    assert refused.value.field == "study.space.n"
    check_setting("gp", spec(), NAMES, "study.strategy")
    check_setting("tpe", huge, NAMES, "study.strategy")


def test_the_rule_reads_the_median_cpu_of_full_evaluations() -> None:
    """`full_cpu_measured`: the full-evaluation CPU of the complete trials that ran one;
    cache hits and pruned trials are left out; `median_cpu` of nothing measured is None."""
    import optuna

    from hpod.daemon.strategy import full_cpu_measured, median_cpu
    from hpod.engine import COST_ATTR

    study = optuna.create_study()
    assert full_cpu_measured(study.trials) == [] and median_cpu([]) is None
    costs = [
        ({"cpu": 1.0, "full_cpu": 1.0}, 1.0),
        ({"cpu": 3.0, "full_cpu": 3.0}, 2.0),
        ({"cpu": 0.0, "cache": "hit", "full_cpu": 9.0}, 3.0),
        ({"cpu": 2.5, "full_cpu": 2.5}, 4.0),
    ]
    for cost, value in costs:
        trial = study.ask()
        trial.set_user_attr(COST_ATTR, cost)
        study.tell(trial, value)
    pruned = study.ask()
    pruned.set_user_attr(COST_ATTR, {"cpu": 40.0, "full_cpu": 40.0})
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert full_cpu_measured(study.trials) == [1.0, 2.5, 3.0]
    assert median_cpu(full_cpu_measured(study.trials)) == 2.5


def test_the_strategy_module_never_imports_the_study_loop() -> None:
    """The loop has one owner: `hpod.daemon.strategy` does not import `hpod.daemon.studies`,
    not even for type checking (the driver sees a `LoopView`, never the run)."""
    import ast
    from pathlib import Path

    import hpod.daemon.strategy as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert "hpod.daemon.studies" not in imported


async def test_the_driver_decides_from_a_view_and_leaves_applying_to_the_loop(
    tmp_path: Path,
) -> None:
    """A forced strategy: from a `LoopView` the driver returns a `Choice` (the layer to lay
    over the mode's plan and the event), stores its own record and nothing else; the view is
    left as it was. A second driver resumes the same layer from the stored record, and the
    next decision is due at the window's end."""
    from dataclasses import replace

    from hpod.daemon.store import StudyStore
    from hpod.daemon.strategy import LoopView, StrategyDriver
    from hpod.policies.compose import StrategyLayer
    from hpod.policies.strategy.agent import StrategyAgent

    s = spec(strategy="qmc")
    store = StudyStore(f"journal://{tmp_path / 'j.log'}")
    agent = StrategyAgent(tmp_path / "policy", explore=False)
    try:
        await store.call(store.create, s)
        mode_plan = resolve_plan(s, "balanced", load_modes(None)["balanced"])
        view = LoopView(
            told=0,
            created=0,
            mode_plan=mode_plan,
            budget=Budget(trials=20),
            budget_used=0.0,
            layer=StrategyLayer(),
            ladder_off=False,
            ladder_pays=None,
        )
        driver = StrategyDriver(s, store, agent)
        assert driver.due(0) == "start"
        choice = await driver.decide(view, "start")
        assert view.layer == StrategyLayer()  # a frozen view: the loop applies, not the driver
        assert choice.layer.strategy is not None and choice.layer.strategy.name == "qmc"
        assert not choice.layer.keep_mode_pruning  # forced: exactly what it names
        plan = choice.layer.over(mode_plan)
        assert plan.sampler == "qmc" and plan.policies == mode_plan.policies
        assert choice.event["strategy"] == "qmc" and choice.event["source"] == "forced"
        assert choice.event["plan"]["sampler"] == "qmc" and choice.event["trigger"] == "start"
        assert driver.due(0) is None and driver.next_at == mode_plan.strategy_window
        attrs = await store.call(store.study_attrs, s.name)
        assert [r["strategy"] for r in attrs[STRATEGY_ATTR]] == ["qmc"]

        again = StrategyDriver(s, store, agent)
        layer = again.resume(attrs, mode_plan.strategy_window)
        assert layer is not None and layer.strategy is not None
        assert replace(layer, strategy=None) == replace(choice.layer, strategy=None)
        assert layer.strategy.name == "qmc" and again.next_at == mode_plan.strategy_window
        assert again.due(mode_plan.strategy_window) == "window"
    finally:
        agent.close()
        store.close()


async def test_auto_runs_a_small_budget_on_the_full_data_and_sizes_a_budget_in_seconds_at_once(
    tmp_path: Path,
) -> None:
    """A subsampling objective (declared "data") with a budget of 40 CPU seconds under
    balanced: before any evaluation is measured the budget is not sized, so the rule holds
    TPE on the full data (no ladder) and decides again at the next trial told, not at the
    window's end; once one full evaluation of 2 CPU s is told, the budget is 20 evaluations,
    small: the GP, still on the full data, next decision at the window's end. A restarted
    driver keeps the ladder off (the stored record)."""
    import optuna

    from hpod.daemon.store import StudyStore
    from hpod.daemon.strategy import LoopView, StrategyDriver
    from hpod.engine import COST_ATTR
    from hpod.policies.compose import StrategyLayer
    from hpod.policies.strategy.agent import StrategyAgent

    s = spec(budget={"cpu_seconds": 40})
    store = StudyStore(f"journal://{tmp_path / 'j.log'}")
    agent = StrategyAgent(tmp_path / "policy", explore=False)
    try:
        await store.call(store.create, s)
        mode_plan = resolve_plan(s, "balanced", load_modes(None)["balanced"])
        assert len(mode_plan.ladder) == 3
        view = LoopView(
            told=0,
            created=0,
            mode_plan=mode_plan,
            budget=Budget(cpu_seconds=40),
            budget_used=0.0,
            layer=StrategyLayer(),
            ladder_off=False,
            ladder_pays=None,
        )
        driver = StrategyDriver(s, store, agent)
        driver.declared, driver._declared_known = "data", True
        first = await driver.decide(view, "start")
        assert first.layer.strategy is not None
        assert first.layer.strategy.name == "tpe-multivariate"
        assert not first.layer.ladder_room and first.layer.over(mode_plan).ladder == (1.0,)
        assert "no room for a data ladder" in first.event["reason"]
        assert driver.small_budget  # not sized yet: no packs for the sampler
        assert "keeps the mode's pruner (the strategy has none)" in first.event["reason"]
        assert driver.next_at == 1 and driver.due(1) == "window"

        study = optuna.load_study(study_name=s.name, storage=store.storage)
        unit = optuna.distributions.FloatDistribution(-1, 1)

        def full_evaluation_of_2_cpu_seconds(x: float) -> None:
            study.add_trial(
                optuna.trial.create_trial(
                    params={"x": x, "y": 0.2},
                    distributions={"x": unit, "y": unit},
                    value=1.0,
                    user_attrs={COST_ATTR: {"cpu": 2.0, "full_cpu": 2.0, "fidelity": "data"}},
                )
            )

        full_evaluation_of_2_cpu_seconds(0.1)
        told = LoopView(**{**view.__dict__, "told": 1, "created": 1, "layer": first.layer})
        second = await driver.decide(told, "window")
        assert second.layer.strategy is not None and second.layer.strategy.name == "gp"
        assert second.layer.over(mode_plan).ladder == (1.0,)
        assert "20 evaluations" in second.event["reason"]
        assert "sized on 1 of the 5 measurements" in second.event["reason"]
        assert driver.next_at == 2  # sized on one evaluation: decided again at the next

        for n in range(4):
            full_evaluation_of_2_cpu_seconds(0.2 * n)
        sized = LoopView(**{**view.__dict__, "told": 5, "created": 5, "layer": second.layer})
        third = await driver.decide(sized, "window")
        assert third.layer.strategy is not None and third.layer.strategy.name == "gp"
        assert (
            "~20 evaluations" in third.event["reason"] and "sized on" not in third.event["reason"]
        )
        assert driver.next_at == mode_plan.strategy_window

        attrs = await store.call(store.study_attrs, s.name)
        again = StrategyDriver(s, store, agent).resume(attrs, mode_plan.strategy_window)
        assert again is not None and not again.ladder_room
        assert again.over(mode_plan).ladder == (1.0,)
    finally:
        agent.close()
        store.close()
