"""The strategy agent's decisions, its weights, replay buffer and reward (issue 6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpod.engine import COST_ATTR
from hpod.errors import RequestRejected
from hpod.policies.strategy import learner, model
from hpod.policies.strategy.actions import BUILTIN, SpaceShape, action_features
from hpod.policies.strategy.agent import BUNDLE_FORMAT, StrategyAgent, shipped_dir
from hpod.policies.strategy.features import FEATURE_NAMES
from hpod.policies.strategy.replay import Experience, ReplayBuffer
from hpod.policies.strategy.reward import window_reward
from hpod.policies.strategy.simulate import fixed, run_study
from hpod.policies.strategy.suites import training_suite
from hpod.schema import StudySpec

CONTINUOUS = SpaceShape(4, 4, 0, 0, 1, "none")


def experience(strategy: str, reward: float, state: list[float] | None = None) -> Experience:
    chosen = next(s for s in BUILTIN if s.name == strategy)
    return Experience(
        "s",
        "balanced",
        strategy,
        state or [0.1] * len(FEATURE_NAMES),
        action_features(chosen),
        reward,
        reward,
        1.0,
        12,
        0.0,
    )


@pytest.fixture(scope="module")
def cmaes_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights trained on a buffer where CMA-ES always earns most on continuous spaces."""
    data = []
    for _ in range(40):
        data += [experience("cmaes", 1.0), experience("tpe", 0.1), experience("random", 0.0)]
        data += [
            experience(s.name, 0.05) for s in BUILTIN if s.name not in ("cmaes", "tpe", "random")
        ]
    out = tmp_path_factory.mktemp("weights")
    model.save(out / "weights.json", learner.train(data, seed=1, epochs=40))
    return out


def test_by_default_auto_is_the_rule_even_with_weights(tmp_path: Path, cmaes_weights: Path) -> None:
    """The learned policy is opt-in (`policy_learned`): by default the rule decides, says
    so, and the weights are only loaded for the status."""
    agent = StrategyAgent(tmp_path / "p", shipped=cmaes_weights, explore=True)
    assert agent.ensemble is not None
    small = SpaceShape(4, 4, 0, 0, 1, "none", budget_trials=30, evaluation_cpu=5.0)
    for told in (0, 12, 24):
        decision = agent.decide(small, [0.1] * len(FEATURE_NAMES), "balanced", told, told, None)
        assert (decision.strategy.name, decision.source) == ("gp", "rules")
        assert decision.reason.startswith("rule: numeric space, small budget")
        assert decision.scores == {}
    assert agent.status()["auto"] == "rule"


def test_without_weights_the_rules_decide_and_say_why(tmp_path: Path) -> None:
    agent = StrategyAgent(tmp_path / "policy", shipped=tmp_path / "nothing", learned=True)
    decision = agent.decide(CONTINUOUS, [0.0] * len(FEATURE_NAMES), "balanced", 0, 0, None)
    assert decision.source == "rules"
    assert decision.strategy.name == "cmaes"  # numeric, no trial budget: the rule's CMA-ES
    assert "unreadable" in decision.reason and "cannot read" in decision.reason
    assert agent.status()["fallback"] == decision.reason


def test_a_corrupt_weights_file_falls_back_to_the_shipped_weights_then_the_rules(
    tmp_path: Path, cmaes_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    good = json.loads((cmaes_weights / "weights.json").read_text())
    good["networks"][0][0]["bias"][0] += 1.0  # one number changed: the checksum catches it
    (policy / "weights.json").write_text(json.dumps(good))
    agent = StrategyAgent(policy, shipped=cmaes_weights)
    assert agent.weights_source == "shipped"  # the bad local file is skipped, with the reason
    assert "checksum mismatch" in (agent.fallback or "")
    assert "strategy.weights_unreadable" in capsys.readouterr().out
    (policy / "weights.json").write_text("{not json")
    assert "not JSON" in (StrategyAgent(policy, shipped=cmaes_weights).fallback or "")
    agent = StrategyAgent(policy, shipped=tmp_path / "nothing", learned=True)  # no weights
    decision = agent.decide(CONTINUOUS, [0.1] * len(FEATURE_NAMES), "balanced", 30, 30, None)
    assert decision.source == "rules"
    assert "not JSON" in decision.reason


def test_trained_weights_pick_what_earned_most_and_mask_what_cannot_apply(
    tmp_path: Path, cmaes_weights: Path
) -> None:
    agent = StrategyAgent(tmp_path / "p", shipped=cmaes_weights, explore=False, learned=True)
    assert agent.status()["auto"] == "learned policy"
    state = [0.1] * len(FEATURE_NAMES)
    decision = agent.decide(CONTINUOUS, state, "balanced", 30, 30, None)
    assert decision.strategy.name == "cmaes" and decision.source == "policy"
    assert max(decision.scores, key=decision.scores.__getitem__) == "cmaes"
    assert "tpe-halving-ladder" in decision.masked and "gp" not in decision.masked
    conditional = SpaceShape(4, 3, 1, 2, 1, "none")
    decision = agent.decide(conditional, state, "balanced", 30, 30, None)
    assert decision.strategy.name != "cmaes"
    assert "conditional" in decision.masked["cmaes"]


def test_training_is_reproducible() -> None:
    data = [experience("cmaes", 1.0), experience("tpe", 0.2)] * 30
    first = learner.train(data, seed=3, epochs=5)
    assert first["sha256"] == learner.train(data, seed=3, epochs=5)["sha256"]


def test_the_replay_buffer_survives_a_torn_line_and_reopening(tmp_path: Path) -> None:
    buffer = ReplayBuffer(tmp_path / "replay.jsonl")
    buffer.append(experience("tpe", 0.5))
    buffer.append(experience("qmc", 0.25))
    with open(buffer.path, "a") as out:
        out.write('{"study": "torn')  # a crash mid-append
    again = list(ReplayBuffer(tmp_path / "replay.jsonl"))
    assert [(e.strategy, e.reward) for e in again] == [("tpe", 0.5), ("qmc", 0.25)]


def test_a_bad_import_bundle_is_refused_naming_the_field(
    tmp_path: Path, cmaes_weights: Path
) -> None:
    agent = StrategyAgent(tmp_path / "p", shipped=cmaes_weights)
    good: dict[str, Any] = {"format": BUNDLE_FORMAT, "weights": None, "replay": []}
    with pytest.raises(RequestRejected) as bad_format:
        agent.import_bundle({**good, "format": "x"})
    assert bad_format.value.field == "bundle.format"
    entry = experience("tpe", 0.5).to_json()
    with pytest.raises(RequestRejected) as bad_reward:
        agent.import_bundle({**good, "replay": [entry, {**entry, "reward": "high"}]})
    assert bad_reward.value.field == "bundle.replay[1].reward"
    weights = json.loads((cmaes_weights / "weights.json").read_text())
    with pytest.raises(RequestRejected) as bad_weights:
        agent.import_bundle({**good, "weights": {**weights, "feature_names": ["x"]}})
    assert bad_weights.value.field == "bundle.weights.feature_names"
    status = agent.import_bundle({**good, "weights": weights, "replay": [entry]})
    assert status["weights"] == "local" and status["experiences"]["local"] == 1
    assert agent.export()["replay"] == [entry]
    assert agent.reset()["experiences"]["local"] == 0


def test_the_reward_is_improvement_per_compute_weighted_by_mode() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "r",
            "space": {"x": {"type": "float", "low": 0, "high": 1}},
            "budget": {"trials": 9},
        }
    )
    study = optuna.create_study()
    for value, cpu in [(10.0, 1.0), (8.0, 1.0), (6.0, 1.0), (0.0, 1.0)]:
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr(COST_ATTR, {"cpu": cpu, "full_cpu": cpu})
        study.tell(trial, value)
    trials = study.get_trials()
    window = window_reward(spec, trials, 2, "fast")
    assert window is not None
    assert window.improvement == pytest.approx(8 / 10)  # best 8 -> 0 on a range of 10
    assert window.compute == pytest.approx(2.0)  # two full evaluations
    assert window.reward == pytest.approx(0.4)
    thorough = window_reward(spec, trials, 2, "thorough")
    assert thorough is not None and thorough.reward == pytest.approx(0.8)
    assert window_reward(spec, trials, 4, "fast") is None


def test_a_simulated_study_switching_strategies_keeps_every_trial() -> None:
    task = next(t for t in training_suite() if t.name == "data_rf")
    names = iter(["qmc", "tpe-halving-ladder", "cmaes", "tpe"] * 20)
    by_name = {s.name: s for s in BUILTIN}
    record = run_study(
        task, lambda *_: (by_name[next(names)], "forced"), seed=5, budget=20.0, window=3
    )
    assert [w.strategy for w in record.windows[:4]] == ["qmc", "tpe-halving-ladder", "cmaes", "tpe"]
    assert record.trials == sum(w.outcome.trials for w in record.windows if w.outcome)
    assert record.curve[-1][0] >= 20.0 > record.curve[-2][0]
    assert (
        run_study(task, fixed(by_name["cmaes"]), seed=5, budget=10.0).curve
        == run_study(task, fixed(by_name["cmaes"]), seed=5, budget=10.0).curve
    )


def test_the_package_ships_usable_weights() -> None:
    ensemble = model.load(shipped_dir() / "weights.json")
    assert ensemble.trained_on > 1000


def test_training_experience_is_reproducible() -> None:
    from hpod.policies.strategy.train import collect

    task = next(t for t in training_suite() if t.name == "epochs_honest")  # Hyperband inside
    first = collect(task, seed=3, budget=8.0)
    assert len(first) > 20
    assert [e.to_json() for e in first] == [e.to_json() for e in collect(task, seed=3, budget=8.0)]
