"""The one plan composer (issue 13, item 1): mode + spec + strategy + the objective's
fidelity → the plan, and the declared fidelity the daemon reads without importing objectives."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from hpod.daemon import declared as probe
from hpod.daemon.declared import DeclaredFidelities, as_fidelity
from hpod.modes import load_modes
from hpod.policies.compose import compose, compose_plan, drop_ladder, resolve_plan
from hpod.policies.plan import Plan
from hpod.policies.strategy.actions import BUILTIN, Strategy
from hpod.schema import StudySpec
from hpod.workers.evaluation import FIDELITY_ATTR

MODES = load_modes(None)
BY_NAME = {s.name: s for s in BUILTIN}
THIRDS = (1 / 9, 1 / 3, 1.0)


def spec(**extra: Any) -> StudySpec:
    """A two-parameter study of a data-fidelity objective."""
    return StudySpec.model_validate(
        {
            "name": "s",
            "objective": "gradient_boosting",
            "space": {
                "x": {"type": "float", "low": -1, "high": 1},
                "y": {"type": "float", "low": -1, "high": 1},
            },
            "budget": {"trials": 16},
            **extra,
        }
    )


def balanced(study: StudySpec | None = None) -> Plan:
    """The balanced mode's plan: successive halving on the 1/9, 1/3, 1 ladder."""
    plan = resolve_plan(study or spec(), "balanced", MODES["balanced"])
    assert plan.pruner == "successive_halving" and plan.ladder == pytest.approx(THIRDS)
    return plan


def test_auto_keeps_the_modes_pruner_and_ladder_when_its_strategy_prunes_nothing() -> None:
    """qmc (the rules' opening) on a data objective: its sampler, the mode's pruner, options
    and ladder, and the plan says what it kept."""
    plan = compose(balanced(), BY_NAME["qmc"], "data", keep_mode_pruning=True)
    assert plan.sampler == "qmc"
    assert (plan.pruner, plan.ladder) == ("successive_halving", balanced().ladder)
    assert plan.pruner_options == balanced().pruner_options
    assert plan.extra == {"strategy": "qmc", "kept_from_mode": ["pruner", "ladder"]}


@pytest.mark.parametrize("strategy", [None, "qmc", "tpe-halving-ladder"])
def test_a_ladder_measured_not_to_pay_is_dropped_whoever_chose_it_and_the_pruner_stays(
    strategy: str | None,
) -> None:
    """The mode's ladder, one `auto` kept, one a strategy brings: all go to the full data."""
    chosen = BY_NAME[strategy] if strategy else None
    on = compose(balanced(), chosen, "data", keep_mode_pruning=True)
    off = compose(balanced(), chosen, "data", keep_mode_pruning=True, ladder_off=True)
    assert len(on.ladder) == 3 and off.ladder == (1.0,)
    assert (off.sampler, off.pruner, off.pruner_options) == (
        on.sampler,
        on.pruner,
        on.pruner_options,
    )
    assert off.pruner == "successive_halving" and off.extra["ladder_off"] is True


def test_an_epoch_objective_keeps_the_modes_step_pruner_but_gets_no_data_ladder() -> None:
    """Epochs are pruned by the mode's step pruner; a data ladder does not apply to them."""
    plan = compose(balanced(), BY_NAME["cmaes"], "epochs", keep_mode_pruning=True)
    assert (plan.sampler, plan.pruner, plan.ladder) == ("cmaes", "median", (1.0,))
    assert plan.pruner_options == {"min_agreement": 0.5}  # the step pruner's gate
    assert plan.extra["kept_from_mode"] == ["pruner"]


@pytest.mark.parametrize(
    ("fidelity", "pruner", "options"),
    [
        ("epochs", "median", {"min_agreement": 0.5}),
        ("data", "successive_halving", {"reduction_factor": 3}),
        ("none", "successive_halving", {"reduction_factor": 3}),
        (None, "successive_halving", {"reduction_factor": 3}),
    ],
)
def test_the_step_pruner_replaces_the_modes_pruner_only_on_steps(
    fidelity: Any, pruner: str, options: dict[str, Any]
) -> None:
    """Under strategy `mode` too: an objective reporting its own steps gets the step pruner;
    the data ladder's objectives, and those of unknown fidelity, keep the mode's pruner."""
    plan = compose(balanced(), None, fidelity, keep_mode_pruning=False)
    assert (plan.pruner, plan.pruner_options) == (pruner, options)
    assert plan.ladder == balanced().ladder  # the worker climbs it only for "data"
    assert (plan.extra.get("pruner_for") == "steps") == (fidelity == "epochs")


def test_a_mode_without_a_step_pruner_prunes_steps_with_its_pruner() -> None:
    """thorough sets none: its patient pruner prunes epochs as before."""
    plan = compose_plan(spec(), "thorough", MODES["thorough"], None, "epochs")
    assert (plan.pruner, plan.pruner_options) == ("patient", {"patience": 3})


def test_a_spec_naming_its_pruner_gets_it_on_steps_too() -> None:
    """The step pruner replaces only the mode's own pruner, never the spec's."""
    own = spec(pruner={"name": "hyperband"})
    plan = compose_plan(own, "balanced", MODES["balanced"], None, "epochs")
    assert plan.pruner == "hyperband" and plan.step_pruner is None


def test_a_strategy_that_prunes_wins_over_the_step_pruner() -> None:
    """tpe-hyperband names its pruner: it replaces the mode's, the step pruner included."""
    plan = compose(balanced(), BY_NAME["tpe-hyperband"], "epochs", keep_mode_pruning=True)
    assert plan.pruner == "hyperband"


@pytest.mark.parametrize("fidelity", ["none", None])
def test_without_a_fidelity_nothing_is_kept(fidelity: Any) -> None:
    """An objective that reports nothing (or whose fidelity is not known yet) gets exactly
    the strategy: a pruner would never be asked."""
    plan = compose(balanced(), BY_NAME["tpe-multivariate"], fidelity, keep_mode_pruning=True)
    assert (plan.sampler, plan.pruner, plan.ladder) == ("tpe", "none", (1.0,))
    assert "kept_from_mode" not in plan.extra


def test_a_forced_strategy_gets_exactly_what_it_names() -> None:
    """A study that forces a strategy chose it: the composer adds nothing."""
    plan = compose(balanced(), BY_NAME["qmc"], "data", keep_mode_pruning=False)
    assert (plan.sampler, plan.pruner, plan.ladder) == ("qmc", "none", (1.0,))


def test_a_strategy_that_prunes_replaces_the_modes_pruner_and_keeps_a_ladder_to_prune_on() -> None:
    """tpe-median's pruner wins; on a data objective it needs rungs to prune on, so the mode's
    ladder stays. A strategy with its own ladder keeps its own."""
    median = compose(balanced(), BY_NAME["tpe-median"], "data", keep_mode_pruning=True)
    assert (median.pruner, median.ladder) == ("median", balanced().ladder)
    assert median.extra["kept_from_mode"] == ["ladder"]
    own = Strategy("tpe-halves", "tpe", "successive_halving", (0.5, 1.0), {}, {"min_resource": 1})
    laddered = compose(balanced(), own, "data", keep_mode_pruning=True)
    assert (laddered.ladder, laddered.pruner_options) == ((0.5, 1.0), {"min_resource": 1})
    assert "kept_from_mode" not in laddered.extra


def test_a_mode_without_a_pruner_gives_neither_pruner_nor_ladder() -> None:
    """Nothing to keep: a ladder without a pruner would only add rungs to every trial."""
    no_pruner = MODES["balanced"].model_copy(update={"pruner": "none", "pruner_options": {}})
    plan = compose_plan(
        spec(), "balanced", no_pruner, BY_NAME["qmc"], "data", keep_mode_pruning=True
    )
    assert (plan.pruner, plan.ladder) == ("none", (1.0,))


def test_a_multi_objective_study_keeps_no_pruning() -> None:
    """Optuna cannot prune several objectives."""
    multi = spec(directions=["minimize", "minimize"])
    plan = compose(balanced(multi), BY_NAME["nsga2"], "data", keep_mode_pruning=True)
    assert (plan.sampler, plan.pruner, plan.ladder) == ("nsga2", "none", (1.0,))


def test_no_strategy_is_the_modes_plan_and_the_spec_still_wins_over_the_mode() -> None:
    """Under strategy `mode` the plan is the mode's; a spec's pruner wins over the mode's."""
    assert compose(balanced(), None, "data", keep_mode_pruning=True) == balanced()
    own = spec(pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1})
    plan = compose_plan(own, "balanced", MODES["balanced"])
    assert plan.pruner == "median" and plan.pruner_options["n_startup_trials"] == 2


def test_declared_values_map_to_the_policys_fidelities() -> None:
    """ "data" subsamples, any other declared value reports by itself, none is unknown."""
    assert [as_fidelity(v) for v in ("data", "epochs", "folds", None)] == [
        "data",
        "epochs",
        "epochs",
        None,
    ]


def test_the_probe_reads_the_attribute_the_workers_read() -> None:
    """The probe spells the attribute's name out (to stay light): it is the workers' one."""
    assert probe.FIDELITY_ATTR == FIDELITY_ATTR


def test_the_daemon_reads_declared_fidelities_outside_its_process() -> None:
    """gradient_boosting declares data, quadratic nothing, an unknown name
    cannot be resolved; each is probed once (in a child: scikit-learn stays out of here)."""
    had_sklearn = "sklearn" in sys.modules

    async def probe() -> tuple[list[Any], bool]:
        declared = DeclaredFidelities({})
        names = ("gradient_boosting", "quadratic", "no_such_objective")
        answers = await asyncio.gather(*(declared.fidelity(n) for n in names))
        again = await declared.fidelity("gradient_boosting")
        return [*answers, again], len(declared._probes) == len(names)

    answers, once = asyncio.run(probe())
    assert answers == ["data", None, None, "data"]
    assert once
    assert ("sklearn" in sys.modules) == had_sklearn


def objective_module(path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> dict[str, str]:
    """An operator's objective module in `path`, importable by the probe's child process."""
    (path / "my_objectives.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return {"mine": "my_objectives:mine"}


def test_a_configured_objective_that_prints_on_import_declares_its_own_fidelity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that prints while imported still answers; any declared value other than
    "data" is one that reports by itself."""
    configured = objective_module(
        tmp_path,
        monkeypatch,
        "print('loading my data')\ndef mine(ctx):\n    return 0.0\nmine.hpod_fidelity = 'folds'\n",
    )
    assert asyncio.run(DeclaredFidelities(configured).fidelity("mine")) == "epochs"


def test_a_hanging_import_is_abandoned_and_closing_kills_a_running_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe past its time limit answers None (the study infers its fidelity); the daemon's
    stop cancels a probe still running and kills its child."""
    configured = objective_module(tmp_path, monkeypatch, "import time\ntime.sleep(60)\n")
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_SECONDS", 1.0)
    # Bounded here, so a probe that waits for the child instead of killing it fails.
    answer = asyncio.run(asyncio.wait_for(DeclaredFidelities(configured).fidelity("mine"), 15))
    assert answer is None

    async def close_early() -> bool:
        declared = DeclaredFidelities(configured)
        declared.prefetch("mine")
        await asyncio.sleep(0.3)
        await asyncio.wait_for(declared.close(), 15)
        probes = [
            child
            for child in psutil.Process().children()
            if "hpod.daemon.declared" in " ".join(child.cmdline())
        ]
        return declared._probes["mine"].cancelled() and not probes

    assert asyncio.run(close_early())


def test_a_dropped_ladder_is_no_longer_named_among_what_the_plan_kept_from_the_mode() -> None:
    """A study whose ladder measured not to pay runs on the full data: the decision's reason
    (`keeps the mode's ...`) must not still name the ladder it kept from the mode."""
    plan = drop_ladder(compose(balanced(), BY_NAME["qmc"], "data", keep_mode_pruning=True))
    assert plan.ladder == (1.0,)
    assert plan.extra == {"strategy": "qmc", "kept_from_mode": ["pruner"], "ladder_off": True}
    assert drop_ladder(plan) == plan
