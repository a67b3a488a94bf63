"""Learning that cannot make the policy worse (issue 14, item 3): the first window's reward,
local experiences over the shipped horizon, a capped local share bootstrapped per network,
the check suite that refuses regressing weights, and exploration between strategies that
actually differ, reverted after one window unless it won."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from hpod.engine import COST_ATTR
from hpod.modes import load_modes
from hpod.policies.compose import compose, resolve_plan
from hpod.policies.plan import Plan
from hpod.policies.strategy import agent as agent_module
from hpod.policies.strategy import check, learner, model, train
from hpod.policies.strategy.actions import (
    BUILTIN,
    Fidelity,
    SpaceShape,
    Strategy,
    action_features,
)
from hpod.policies.strategy.agent import StrategyAgent, behaviour, shipped_dir
from hpod.policies.strategy.features import FEATURE_NAMES
from hpod.policies.strategy.replay import Experience, ReplayBuffer
from hpod.policies.strategy.reward import target, window_reward
from hpod.schema import StudySpec

BY_NAME = {s.name: s for s in BUILTIN}
CONTINUOUS = SpaceShape(4, 4, 0, 0, 1, "none")
CONDITIONAL = SpaceShape(4, 3, 1, 2, 1, "none")


def window(
    study: str, strategy: str, reward: float, state: list[float] | None = None
) -> Experience:
    return Experience(
        study,
        "balanced",
        strategy,
        state or [0.1] * len(FEATURE_NAMES),
        action_features(BY_NAME[strategy]),
        reward,
        reward,
        1.0,
        12,
        0.0,
    )


# --- the reward ------------------------------------------------------------------------------


def first_window(values: list[float]) -> float:
    spec = StudySpec.model_validate(
        {
            "name": "r",
            "space": {"x": {"type": "float", "low": 0, "high": 1}},
            "budget": {"trials": 9},
        }
    )
    study = optuna.create_study()
    for value in values:
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr(COST_ATTR, {"cpu": 1.0, "full_cpu": 1.0})
        study.tell(trial, value)
    outcome = window_reward(spec, study.get_trials(), 0, "thorough")
    assert outcome is not None
    return outcome.improvement


def test_the_first_window_is_judged_against_the_study_start_not_always_one() -> None:
    """It used to be 1 whenever the window had two values (its own worst was the start)."""
    assert first_window([5.0, 10.0, 8.0, 0.0]) == pytest.approx(0.5)  # 5 -> 0 on a range of 10
    assert first_window([0.0, 10.0, 8.0, 6.0]) == 0.0  # the first value stayed the best
    assert first_window([10.0, 8.0, 6.0, 0.0]) == pytest.approx(1.0)


# --- local experiences ------------------------------------------------------------------------


def test_local_windows_become_experiences_over_the_shipped_horizon() -> None:
    assert learner.HORIZON == train.HORIZON
    windows = [
        window("a", "tpe", 1.0),
        window("b", "qmc", 9.0),
        window("a", "tpe", 2.0),
        window("a", "tpe", 3.0),
        window("a", "tpe", 5.0),
        window("a", "cmaes", 4.0),
    ]
    out = learner.over_horizon(windows)
    a = [(e.strategy, e.reward, e.trials) for e in out if e.study == "a"]
    # tpe's first window with its next two; the fourth tpe window stops at the switch
    assert a == [
        ("tpe", 2.0, 36),
        ("tpe", pytest.approx(10 / 3), 36),
        ("tpe", 4.0, 24),
        ("tpe", 5.0, 12),
        ("cmaes", 4.0, 12),
    ]
    assert [(e.strategy, e.reward) for e in out if e.study == "b"] == [("qmc", 9.0)]


def test_the_local_share_is_capped_and_each_network_draws_its_own_local_sample() -> None:
    assert learner.local_share(0) == 0.0
    assert learner.local_share(48) < learner.local_share(1000) < learner.LOCAL_CAP
    rng = random.Random(0)
    shipped = [
        window("s", name, reward, [rng.random() for _ in FEATURE_NAMES])
        for _ in range(60)
        for name, reward in (("cmaes", 1.0), ("tpe", 0.5), ("random", 0.1))
    ]
    local = [window(f"l{i}", "random", 3.0 * (i % 2)) for i in range(6)]
    weights = learner.train(shipped, seed=2, epochs=8, local=local)
    assert weights["local_share"] == pytest.approx(round(learner.local_share(6), 4))
    assert weights["trained_on"] == len(shipped) + len(local)
    ensemble = model.parse(weights)
    # Five bootstraps of six local windows: the networks disagree on them.
    spread = ensemble.predict([0.1] * len(FEATURE_NAMES), [action_features(BY_NAME["random"])])
    assert float(spread.std()) > 0.01
    assert "local_share" not in learner.train(shipped, seed=2, epochs=2)  # shipped: as before


# --- the check suite ------------------------------------------------------------------------


def random_first_weights() -> dict[str, Any]:
    """Weights that believe random search earns most in any study (a regressing policy)."""
    rng = random.Random(1)
    data = []
    for _ in range(120):
        state = [rng.random() for _ in FEATURE_NAMES]
        data += [window("bad", s.name, 3.0 if s.name == "random" else 0.0, state) for s in BUILTIN]
    return learner.train(data, seed=1, epochs=20)


#: The check suite cut to two tasks and one seed (the daemon runs all of it).
SMALL = check.CheckSize(tasks=2, seeds=1)


def run_learner(
    policy: Path, monkeypatch: pytest.MonkeyPatch, candidate: dict[str, Any]
) -> dict[str, Any]:
    """`learner.learn` with the training replaced by `candidate` (the check is real)."""
    ReplayBuffer(policy / "replay.jsonl").append(window("l", "random", 3.0))
    monkeypatch.setattr(learner, "train", lambda *args, **kwargs: dict(candidate))
    return learner.learn(policy, shipped_dir() / "replay.jsonl.gz", size=SMALL)


def test_weights_that_would_regress_the_check_suite_are_refused_logged_and_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy"
    report = run_learner(policy, monkeypatch, random_first_weights())
    assert report["installed"] is False and report["in_force"] is not None
    figures = report["check"]
    assert figures["passed"] is False and figures["studies"] == 2
    assert figures["regret_candidate"] > figures["regret_in_force"]
    assert figures["difference"] > 0 and figures["worse_on"] >= 1
    assert not (policy / "weights.json").exists()  # the shipped weights stay in force
    assert json.loads((policy / "learner.json").read_text()) == report

    agent = StrategyAgent(policy, learn=False, learned=True)
    agent._learner = subprocess.Popen([sys.executable, "-c", "pass"])  # a learner that ended
    agent._learner.wait()
    capsys.readouterr()
    status = agent.status()
    assert status["weights"] == "shipped"
    assert status["learning"]["last"]["check"] == figures
    logged = [line for line in capsys.readouterr().out.splitlines() if "weights_refused" in line]
    assert len(logged) == 1 and f"'difference': {figures['difference']}" in logged[0]


def test_weights_that_decide_as_the_ones_in_force_are_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    same = json.loads((shipped_dir() / "weights.json").read_text())
    same["version"] = 7
    report = run_learner(tmp_path / "policy", monkeypatch, same)
    assert report["installed"] is True
    assert report["check"]["difference"] == 0.0 and report["check"]["worse_on"] == 0
    assert model.load(tmp_path / "policy" / "weights.json").version == 7


def test_the_gate_is_a_paired_decision_on_the_mean_and_the_upper_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A candidate passes when it is no worse on average, or when the 95 % interval of its
    paired difference shows it regresses by less than the margin; otherwise it is refused."""

    def result(difference: float, upper: float) -> check.CheckResult:
        return check.CheckResult(44, 0.1, 0.1 + difference, difference, (-0.01, upper), 3, 3, 1)

    monkeypatch.setattr(check, "MARGIN", 0.02)
    assert result(-0.001, 0.03).passed  # better on average: in, however wide the interval
    assert result(0.0, 0.03).passed  # equal decisions
    assert result(0.005, 0.015).passed  # worse, but shown to be less than the margin worse
    assert not result(0.005, 0.02).passed  # the bound must be below the margin
    assert not result(0.012, 0.025).passed
    assert result(0.012, 0.025).to_json()["margin"] == 0.02
    assert not result(0.005, 0.015).passes(0.0) and result(0.005, 0.015).passes(0.02)


def test_the_learner_options_are_bounded_and_reach_the_learner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings allow exactly the suite's tasks and seeds; a smaller size runs the first
    tasks and seeds of it; the agent hands the size and the epochs to the learner process on
    its command line, and nothing when unset (the learner's defaults: the whole suite)."""
    from pydantic import ValidationError

    from hpod.config import Settings

    whole = check.CheckSize()
    assert (whole.tasks, whole.seeds) == (len(check.CHECK_TASKS), len(check.CHECK_SEEDS))
    Settings(policy_check_tasks=whole.tasks, policy_check_seeds=whole.seeds)
    for field, over in (("policy_check_tasks", whole.tasks), ("policy_check_seeds", whole.seeds)):
        for bad in (0, over + 1):
            with pytest.raises(ValidationError, match=field):
                Settings(**{field: bad})
    with pytest.raises(ValueError, match="check seeds: 5"):
        check.CheckSize(seeds=5)
    assert [t.name for t in check.check_tasks(SMALL)] == list(check.CHECK_TASKS[:2])
    assert SMALL.seed_list == check.CHECK_SEEDS[:1]

    started: list[list[str]] = []

    def popen(args: list[str], **_: Any) -> Any:
        started.append(args)
        return SimpleNamespace(pid=0, poll=lambda: 0)

    monkeypatch.setattr(subprocess, "Popen", popen)
    small = StrategyAgent(tmp_path / "p", learn=False, check_tasks=2, check_seeds=1, learn_epochs=3)
    small.start_learning()
    StrategyAgent(tmp_path / "q", learn=False).start_learning()
    assert started[0][-6:] == ["--check-tasks", "2", "--check-seeds", "1", "--epochs", "3"]
    assert not {"--check-tasks", "--check-seeds", "--epochs"} & set(started[1])


# --- exploration ------------------------------------------------------------------------------


def tpe_first_weights(tmp_path: Path) -> Path:
    """Shipped weights where both TPEs earn most, CMA-ES next, everything else little."""
    rewards = {"tpe": 1.0, "tpe-multivariate": 1.0, "cmaes": 0.8}
    data = [window("t", s.name, rewards.get(s.name, 0.05)) for _ in range(40) for s in BUILTIN]
    out = tmp_path / "shipped"
    out.mkdir()
    model.save(out / "weights.json", learner.train(data, seed=1, epochs=40))
    return out


def test_tpe_and_multivariate_tpe_are_one_algorithm_but_not_with_conditions() -> None:
    tpe, multivariate = BY_NAME["tpe"], BY_NAME["tpe-multivariate"]
    assert behaviour(tpe, CONTINUOUS) == behaviour(multivariate, CONTINUOUS)
    assert behaviour(tpe, CONDITIONAL) != behaviour(multivariate, CONDITIONAL)  # group acts
    assert behaviour(tpe, CONTINUOUS) != behaviour(BY_NAME["cmaes"], CONTINUOUS)
    epochs = SpaceShape(4, 4, 0, 0, 1, "epochs")
    assert behaviour(multivariate, epochs) != behaviour(BY_NAME["tpe-median"], epochs)


def test_exploration_never_picks_an_equivalent_strategy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "EXPLORE", 1.0)
    monkeypatch.setattr(agent_module, "MAX_EXPECTED_LOSS", 10.0)
    shipped = tpe_first_weights(tmp_path)
    agent = StrategyAgent(tmp_path / "p", shipped=shipped, learn=False, learned=True, seed=3)
    state = [0.1] * len(FEATURE_NAMES)
    explored = set()
    for current in (None, "tpe", "tpe-multivariate"):
        decision = agent.decide(CONTINUOUS, state, "balanced", 12, 12, None, current)
        assert decision.source == "explore", decision.reason
        assert decision.instead_of is not None
        stood_in = BY_NAME[decision.instead_of["strategy"]]
        assert behaviour(decision.strategy, CONTINUOUS) != behaviour(stood_in, CONTINUOUS)
        explored.add(decision.strategy.name)
    assert explored == {"cmaes"}  # the best different algorithm, never the other TPE


EPOCHS = SpaceShape(4, 4, 0, 0, 1, "epochs")
DATA = SpaceShape(4, 4, 0, 0, 1, "data")


def balanced_plan_of(fidelity: Fidelity) -> Callable[[Strategy], Plan]:
    """The plan a study under ``balanced`` runs with a strategy ``auto`` chose, as the daemon
    composes it (`hpod.daemon.strategy`)."""
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "space": {"x": {"type": "float", "low": 0, "high": 1}},
            "budget": {"trials": 9},
        }
    )
    mode_plan = resolve_plan(spec, "balanced", load_modes()["balanced"])
    return lambda s: compose(mode_plan, s, fidelity, keep_mode_pruning=True)


def test_strategies_are_one_where_the_mode_gives_them_the_same_plan() -> None:
    """Under balanced, a strategy without a pruner gets the mode's: on epochs the median (so
    tpe, tpe-multivariate and tpe-median are one plan), on a data ladder successive halving
    on thirds (so both TPEs are tpe-halving-ladder)."""
    names = (
        "tpe",
        "tpe-multivariate",
        "tpe-median",
        "tpe-hyperband",
        "tpe-halving-ladder",
        "cmaes",
        "cmaes-median",
    )
    on_epochs = {
        n: behaviour(BY_NAME[n], EPOCHS, balanced_plan_of("epochs")(BY_NAME[n])) for n in names
    }
    assert on_epochs["tpe"] == on_epochs["tpe-multivariate"] == on_epochs["tpe-median"]
    assert on_epochs["tpe-median"] != on_epochs["tpe-hyperband"]
    assert on_epochs["cmaes"] == on_epochs["cmaes-median"] != on_epochs["tpe-median"]
    on_data = {n: behaviour(BY_NAME[n], DATA, balanced_plan_of("data")(BY_NAME[n])) for n in names}
    assert on_data["tpe"] == on_data["tpe-multivariate"] == on_data["tpe-halving-ladder"]
    assert on_data["tpe-multivariate"] != on_data["tpe-median"]  # median on thirds, not halving
    # By their own fields they differ: the names alone would call them different algorithms.
    assert behaviour(BY_NAME["tpe-multivariate"], EPOCHS) != behaviour(
        BY_NAME["tpe-median"], EPOCHS
    )


def median_first_weights(tmp_path: Path) -> Path:
    """Shipped weights where tpe-median earns most, tpe-multivariate next, the rest little."""
    rewards = {"tpe-median": 1.0, "tpe-multivariate": 0.5, "cmaes": 0.4}
    data = [window("m", s.name, rewards.get(s.name, 0.05)) for _ in range(40) for s in BUILTIN]
    out = tmp_path / "shipped"
    out.mkdir()
    model.save(out / "weights.json", learner.train(data, seed=1, epochs=40))
    return out


def test_a_best_pick_with_the_current_composed_plan_never_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """balanced, an objective that reports epochs, tpe-multivariate in force and the policy
    preferring tpe-median: by name it would switch, but both run TPE with the mode's median
    pruner, so it keeps tpe-multivariate; exploring, it never tries tpe or tpe-median."""
    shipped = median_first_weights(tmp_path)
    state = [0.1] * len(FEATURE_NAMES)
    plan_of = balanced_plan_of("epochs")
    agent = StrategyAgent(tmp_path / "p", shipped=shipped, explore=False, learn=False, learned=True)
    by_name = agent.decide(EPOCHS, state, "balanced", 12, 12, None, "tpe-multivariate")
    assert by_name.strategy.name == "tpe-median", by_name.reason  # the contrast
    kept = agent.decide(
        EPOCHS, state, "balanced", 12, 12, None, "tpe-multivariate", plan_of=plan_of
    )
    assert (kept.strategy.name, kept.source) == ("tpe-multivariate", "policy"), kept.reason

    monkeypatch.setattr(agent_module, "EXPLORE", 1.0)
    monkeypatch.setattr(agent_module, "MAX_EXPECTED_LOSS", 10.0)
    monkeypatch.setattr(agent_module, "MAX_EXPLORE_GAP", 10.0)
    agent = StrategyAgent(tmp_path / "q", shipped=shipped, learn=False, learned=True, seed=3)
    one_plan = {"tpe", "tpe-multivariate", "tpe-median"}
    for current in (None, "tpe", "tpe-multivariate", "tpe-median"):
        decision = agent.decide(EPOCHS, state, "balanced", 12, 12, None, current, plan_of=plan_of)
        assert decision.source == "explore", decision.reason
        assert decision.instead_of is not None
        assert decision.instead_of["strategy"] in one_plan | {current}
        assert decision.strategy.name not in one_plan, decision.reason
        stood_in = BY_NAME[decision.instead_of["strategy"]]
        assert behaviour(decision.strategy, EPOCHS, plan_of(decision.strategy)) != behaviour(
            stood_in, EPOCHS, plan_of(stood_in)
        )


def test_exploration_keeps_its_expected_loss_bounded(tmp_path: Path) -> None:
    shipped = tpe_first_weights(tmp_path)
    agent = StrategyAgent(tmp_path / "p", shipped=shipped, learn=False, learned=True, seed=0)
    state = [0.1] * len(FEATURE_NAMES)
    decisions = [
        agent.decide(CONTINUOUS, state, "balanced", 12, 12, None, "tpe") for _ in range(400)
    ]
    scores = decisions[0].scores
    explored = [d for d in decisions if d.source == "explore"]
    assert explored and {d.strategy.name for d in explored} == {"cmaes"}
    # The incumbent tpe stays the one compared with (multivariate TPE is the same algorithm).
    assert {(d.instead_of or {}).get("strategy") for d in explored} == {"tpe"}
    gap = scores["tpe"] - scores["cmaes"]
    chance = min(agent._explore_rate(), agent_module.MAX_EXPECTED_LOSS / gap)
    assert chance * gap <= agent_module.MAX_EXPECTED_LOSS + 1e-12
    assert all(f"chance {chance:.3f}" in d.reason for d in explored)
    assert len(explored) < 400 * chance + 4 * (400 * chance) ** 0.5 + 1
    # A strategy predicted far below the best is never explored, whatever the chance.
    far = {**scores, "cmaes": scores["tpe"] - 2 * agent_module.MAX_EXPLORE_GAP}
    only_far = [BY_NAME["tpe"], BY_NAME["cmaes"]]
    agent._random = random.Random(0)
    assert (
        agent._exploration(BY_NAME["tpe"], only_far, lambda s: behaviour(s, CONTINUOUS), far, "v")
        is None
    )


def test_an_exploration_is_reverted_after_one_window_unless_it_won(tmp_path: Path) -> None:
    shipped = tpe_first_weights(tmp_path)
    agent = StrategyAgent(tmp_path / "p", shipped=shipped, learn=False, learned=True, seed=0)
    agent.explore = False
    state = [0.1] * len(FEATURE_NAMES)
    previous = {"source": "explore", "instead_of": {"strategy": "tpe", "predicted": 1.0}}
    lost = agent.decide(
        CONTINUOUS, state, "balanced", 24, 24, None, "cmaes", {**previous, "reward": 0.05}
    )
    assert (lost.strategy.name, lost.source) == ("tpe", "policy")
    assert "back to tpe" in lost.reason
    assert target(5.0) > 1.0
    won = agent.decide(
        CONTINUOUS, state, "balanced", 24, 24, None, "cmaes", {**previous, "reward": 5.0}
    )
    assert won.strategy.name == "cmaes" and "won" in won.reason
    nothing = agent.decide(
        CONTINUOUS, state, "balanced", 24, 24, None, "cmaes", {**previous, "reward": None}
    )
    assert nothing.strategy.name == "tpe"
