"""fast on objectives that report steps (epochs, passes): the 33rd-percentile pruner behind
the agreement gate, and no threshold of |best| there (a step pruner's ``threshold`` option).

The case that motivated it, as measured: on mlp_epochs (cross-entropy near 0.1) fast's 5 %
threshold of |best| pruned 141 of 150 trials once the agreement gate opened and ended worse
than plain TPE at equal compute; 5 % of a small loss is a hair.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpod.errors import ConfigError
from hpod.modes import load_modes
from hpod.policies._base import HookContext
from hpod.policies.compose import compose_plan
from hpod.policies.pruning import PruningPolicy, threshold_of
from hpod.policies.strategy.actions import BUILTIN
from hpod.pruners import AgreementGate, ThresholdPruner, build_pruners, should_prune
from hpod.schema import StudySpec
from hpod.workers.messages import TaskPlan

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = StudySpec.model_validate(
    {
        "name": "s",
        "objective": "sgd_classifier",
        "space": {"x": {"type": "float", "low": 0, "high": 1}},
        "budget": {"trials": 10},
    }
)


def _study(finals: list[float]) -> optuna.Study:
    """Complete trials that reported their final value at steps 1 and 2 (the early order is
    the final order: the agreement gate is open)."""
    study = optuna.create_study(direction="minimize")
    for final in finals:
        trial = study.ask()
        trial.report(final, 1)
        trial.report(final, 2)
        study.tell(trial, final)
    return study


def _reported(study: optuna.Study, value: float) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    trial.report(value, 1)
    return study._storage.get_trial(trial._trial_id)


def _fast_step_pruners() -> list[optuna.pruners.BasePruner]:
    plan = compose_plan(SPEC, "fast", load_modes(None)["fast"], None, "epochs")
    return build_pruners(
        plan.pruner, plan.pruner_options, threshold_of(plan), plan.threshold_min_trials
    )


def test_fast_keeps_the_best_third_at_a_step_where_balanced_keeps_half() -> None:
    study = _study([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # median 3.5, 33rd percentile 2.65
    fast = _fast_step_pruners()
    assert len(fast) == 1 and isinstance(fast[0], AgreementGate)
    plan = compose_plan(SPEC, "balanced", load_modes(None)["balanced"], None, "epochs")
    balanced = build_pruners(plan.pruner, plan.pruner_options, plan.threshold)
    assert not should_prune(study, _reported(study, 2.6), fast)
    assert should_prune(study, _reported(study, 2.7), fast)
    assert not should_prune(study, _reported(study, 2.7), balanced)
    assert should_prune(study, _reported(study, 3.6), balanced)


def test_fast_has_no_threshold_of_the_best_on_steps_but_keeps_it_on_its_data_ladder() -> None:
    """A loss of 0.106 against a best of 0.100, the middle of the trials there: the 5 %
    threshold stopped it; fast on steps keeps it."""
    study = _study([0.100, 0.104, 0.105, 0.106, 0.107, 0.108, 0.109, 0.110])
    assert ThresholdPruner(0.05, 6).prune(study, _reported(study, 0.106))
    assert not should_prune(study, _reported(study, 0.104), _fast_step_pruners())
    fast = load_modes(None)["fast"]
    data = compose_plan(SPEC, "fast", fast, None, "data")
    assert threshold_of(data) == fast.threshold == 0.05
    pruners = build_pruners(data.pruner, data.pruner_options, threshold_of(data), 6, [0.1, 1.0])
    assert any(isinstance(p, ThresholdPruner) for p in pruners)


def test_the_task_carries_the_step_threshold_once_in_a_message_the_worker_accepts() -> None:
    """The worker's message schema knows Optuna's options, not hpod's threshold: the policy
    sends it as the task's threshold (a fast study's trials were refused as invalid when it
    travelled in the pruner's options)."""
    plan = compose_plan(SPEC, "fast", load_modes(None)["fast"], None, "epochs")
    assert plan.pruner_options["threshold"] == 0.0
    event = HookContext(SPEC, 0, {"x": 0.5}, plan=plan)
    PruningPolicy().before_dispatch(event)
    assert event.task_plan["pruner_options"] == {"percentile": 33.0, "min_agreement": 0.5}
    assert event.task_plan["threshold"] == 0.0
    TaskPlan.model_validate(event.task_plan)


def test_the_step_threshold_holds_when_a_strategy_replaces_the_step_pruner() -> None:
    """Under strategy auto, `tpe-median` brings its own pruner options; the threshold on the
    steps is the mode's, so it stays 0 and the task is sent no threshold."""
    median = next(s for s in BUILTIN if s.name == "tpe-median")
    fast = load_modes(None)["fast"]
    plan = compose_plan(SPEC, "fast", fast, median, "epochs", keep_mode_pruning=True)
    assert plan.pruner == "median" and "threshold" not in plan.pruner_options
    assert plan.threshold == 0.05 and threshold_of(plan) == 0.0
    event = HookContext(SPEC, 0, {"x": 0.5}, plan=plan)
    PruningPolicy().before_dispatch(event)
    assert event.task_plan["threshold"] == 0.0


def test_a_step_pruners_threshold_option_replaces_the_modes() -> None:
    none = build_pruners("median", {"threshold": 0.0}, threshold=0.05)
    assert len(none) == 1 and not isinstance(none[0], ThresholdPruner)
    other = build_pruners("median", {"threshold": 0.2}, threshold=0.05, threshold_min_trials=3)
    assert isinstance(other[1], ThresholdPruner)
    assert (other[1].threshold, other[1].min_trials) == (0.2, 3)
    assert isinstance(build_pruners("median", {}, threshold=0.05)[1], ThresholdPruner)


@pytest.mark.parametrize(
    ("value", "message"),
    [(-0.1, "threshold must be in \\[0, 10\\]"), ("a", "threshold must be a number")],
)
def test_a_bad_step_threshold_is_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_pruners("percentile", {"threshold": value})


def test_a_modes_file_with_a_bad_step_threshold_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "modes.toml"
    path.write_text("[fast]\nstep_pruner_options = { threshold = -1 }\n")
    with pytest.raises(ConfigError) as err:
        load_modes(str(path))
    assert "[fast].step_pruner_options" in str(err.value)
    assert "threshold must be in [0, 10]" in str(err.value)
