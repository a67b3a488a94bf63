"""Weights files and policy bundles that must never stop the daemon (issue 12, finding 9;
issue 14, item 4).

The exact inputs of the reports: ``"trained_on": "lots"`` with a valid checksum, an infinite
``trained_on`` (``1e999`` in the JSON text), an array nested 200,000 deep, a 21.7 MB file,
weights of 1e300, a single network (and weights whose predictions blow up). Each is refused
naming the field, the daemon's agent goes on with the shipped weights (or the rules when the
shipped file is the bad one), and an import answers a specific ``invalid``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hpod.errors import RequestRejected
from hpod.policies.strategy import model
from hpod.policies.strategy.actions import ACTION_FEATURE_NAMES, SpaceShape
from hpod.policies.strategy.agent import BUNDLE_FORMAT, StrategyAgent, shipped_dir
from hpod.policies.strategy.features import FEATURE_NAMES
from hpod.policies.strategy.replay import ReplayBuffer

SHIPPED = shipped_dir() / "weights.json"
DEEP = "[" * 200_000 + "]" * 200_000


def shipped_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SHIPPED.read_text())
    return data


def lots_text() -> str:
    """The shipped file with ``"trained_on": "lots"``: the checksum (of the networks) holds."""
    data = shipped_json()
    data["trained_on"] = "lots"
    assert data["sha256"] == model.checksum(data["networks"])
    return json.dumps(data)


def infinite_text() -> str:
    """The shipped file with ``"trained_on": 1e999`` in its text (Python reads inf)."""
    data = shipped_json()
    data["trained_on"] = 424242
    text = json.dumps(data).replace("424242", "1e999")
    assert json.loads(text)["trained_on"] == float("inf")
    return text


def resigned(data: dict[str, Any]) -> str:
    """`data` with its checksum made valid again: only the check under test can refuse it."""
    data["sha256"] = model.checksum(data["networks"])
    return json.dumps(data)


def huge_text() -> str:
    """The shipped file padded to 21.7 MB (valid otherwise)."""
    data = shipped_json()
    data["padding"] = "x" * 21_700_000
    return json.dumps(data)


def weights_1e300_text() -> str:
    data = shipped_json()
    data["networks"][0][0]["weight"][0][0] = 1e300
    return resigned(data)


def single_network_text() -> str:
    data = shipped_json()
    data["networks"] = data["networks"][:1]
    return resigned(data)


def blowing_up_text() -> str:
    """Every weight within bounds, but large enough that the predictions are not usable."""
    data = shipped_json()
    for network in data["networks"]:
        for layer in network:
            layer["weight"] = [[1000.0] * len(row) for row in layer["weight"]]
    return resigned(data)


BAD_FILES = {
    "trained_on lots": (lots_text, "trained_on"),
    "trained_on 1e999": (infinite_text, "trained_on"),
    "200,000-deep array": (lambda: DEEP, ""),
    "21.7 MB": (huge_text, ""),
    "weights of 1e300": (weights_1e300_text, "networks.0.0.weight.0.0"),
    "a single network": (single_network_text, "networks"),
    "predictions beyond bounds": (blowing_up_text, "networks"),
}
#: What the reason says where no field is named.
WHOLE_FILE_REASONS = {"200,000-deep array": "recursion limit", "21.7 MB": "larger than"}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_weights_file_is_refused_naming_the_field(tmp_path: Path, case: str) -> None:
    text, field = BAD_FILES[case]
    path = tmp_path / "weights.json"
    path.write_text(text())
    with pytest.raises(model.WeightsError) as refused:
        model.load(path)
    assert refused.value.field == field
    if not field:
        assert WHOLE_FILE_REASONS[case] in refused.value.reason


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_local_weights_leave_the_shipped_ones_in_force(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "weights.json").write_text(BAD_FILES[case][0]())
    agent = StrategyAgent(policy, learn=False, explore=False, learned=True)
    assert agent.weights_source == "shipped"
    assert agent.ensemble is not None and agent.ensemble.trained_on > 1000
    assert agent.fallback is not None and str(policy / "weights.json") in agent.fallback
    logged = capsys.readouterr().out
    assert "strategy.weights_unreadable" in logged and str(policy / "weights.json") in logged
    shape = SpaceShape(4, 4, 0, 0, 1, "none")
    decision = agent.decide(shape, [0.1] * len(FEATURE_NAMES), "balanced", 30, 30, None)
    assert decision.source in {"policy", "rules"}  # decided, by the shipped weights in force
    assert agent.status()["weights"] == "shipped"


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_local_and_shipped_weights_leave_the_rules_deciding(tmp_path: Path, case: str) -> None:
    """Every corrupt file, local and shipped: the agent starts, the rules decide (even with
    the learned policy on), and the status names the file and the field."""
    text = BAD_FILES[case][0]()
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "weights.json").write_text(text)
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "weights.json").write_text(text)
    agent = StrategyAgent(policy, shipped=shipped, learn=False, learned=True)
    assert agent.ensemble is None and agent.weights_source is None
    status = agent.status()
    assert status["fallback"] and str(policy / "weights.json") in status["fallback"]
    assert "rule-based selector" in status["fallback"]
    shape = SpaceShape(4, 4, 0, 0, 1, "none", budget_trials=40, evaluation_cpu=5.0)
    decision = agent.decide(shape, [0.1] * len(FEATURE_NAMES), "balanced", 0, 0, None)
    assert (decision.strategy.name, decision.source) == ("gp", "rules")


def test_any_exception_while_loading_is_a_fallback_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One guard around the whole load: even an exception no check foresaw (a bug, a
    surprise of the parser) leaves the next weights down, or the rules, in force."""

    def broken(path: Path) -> model.Ensemble:
        raise RuntimeError(f"surprise reading {path}")

    monkeypatch.setattr(model, "load", broken)
    agent = StrategyAgent(tmp_path / "policy", learn=False, learned=True)
    assert agent.ensemble is None
    assert agent.fallback is not None and "surprise reading" in agent.fallback
    assert "strategy.weights_unreadable" in capsys.readouterr().out


def test_a_bad_file_written_while_running_is_refused_shown_and_replaced(tmp_path: Path) -> None:
    """Good local weights, then a bad file over them: the shipped weights decide and the
    fallback is shown, at every decision, without reading the bad file again; a good file
    written after it is loaded."""
    policy = tmp_path / "policy"
    policy.mkdir()
    local = policy / "weights.json"
    good = shipped_json()
    good["version"] = 99
    local.write_text(json.dumps(good))
    agent = StrategyAgent(policy, learn=False, explore=False, learned=True)
    assert (agent.weights_source, agent.ensemble and agent.ensemble.version) == ("local", 99)
    local.write_text(single_network_text())
    os.utime(local, (1e9, 1e9))  # a different time even on a coarse clock
    shape = SpaceShape(4, 4, 0, 0, 1, "none")
    for _ in range(2):
        agent.decide(shape, [0.1] * len(FEATURE_NAMES), "balanced", 30, 30, None)
        status = agent.status()
        assert status["weights"] == "shipped"
        assert status["fallback"] and "networks" in status["fallback"]
    local.write_text(json.dumps(good))
    os.utime(local, (2e9, 2e9))
    agent.decide(shape, [0.1] * len(FEATURE_NAMES), "balanced", 30, 30, None)
    assert agent.status()["weights"] == "local" and agent.fallback is None


def test_bad_shipped_weights_leave_the_rules_deciding(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "weights.json").write_text(lots_text())
    agent = StrategyAgent(tmp_path / "policy", shipped=shipped, learn=False)
    assert agent.ensemble is None
    assert agent.fallback is not None and "trained_on" in agent.fallback
    assert "rule-based selector" in agent.fallback


def test_a_weights_file_with_wrong_types_or_shapes_names_the_field() -> None:
    data = shipped_json()
    cases: list[tuple[dict[str, Any], str]] = [
        ({**data, "version": True}, "version"),
        ({**data, "version": -1}, "version"),
        ({**data, "networks": "x"}, "networks"),
        ({**data, "feature_names": ["x"]}, "feature_names"),
        ({**data, "sha256": 7}, "sha256"),
    ]
    bad_row = json.loads(json.dumps(data))
    bad_row["networks"][1][0]["weight"][3] = bad_row["networks"][1][0]["weight"][3][:-1]
    bad_row["sha256"] = model.checksum(bad_row["networks"])
    cases.append((bad_row, "networks.1.0.weight"))
    text_bool = json.loads(json.dumps(data))
    text_bool["networks"][0][2]["bias"][0] = True
    text_bool["sha256"] = model.checksum(text_bool["networks"])
    cases.append((text_bool, "networks.0.2.bias.0"))
    for bad, field in cases:
        with pytest.raises(model.WeightsError) as refused:
            model.parse(bad)
        assert refused.value.field == field, (field, refused.value)


@pytest.mark.parametrize("case", BAD_FILES)
def test_importing_a_bad_bundle_answers_invalid_naming_the_field(tmp_path: Path, case: str) -> None:
    agent = StrategyAgent(tmp_path / "policy", learn=False)
    text, field = BAD_FILES[case]
    try:
        weights = json.loads(text())
    except RecursionError:  # the deep array: what a depth-limited edge would refuse
        with pytest.raises(model.WeightsError):
            model.loads('{"format": "' + BUNDLE_FORMAT + '", "weights": ' + DEEP + "}")
        return
    with pytest.raises(RequestRejected) as refused:
        agent.import_bundle({"format": BUNDLE_FORMAT, "weights": weights, "replay": []})
    assert refused.value.code == "invalid"
    assert refused.value.field == (f"bundle.weights.{field}" if field else "bundle.weights")
    assert not (tmp_path / "policy" / "weights.json").exists()  # nothing installed


def test_a_bad_replay_entry_in_a_bundle_is_invalid_not_a_crash(tmp_path: Path) -> None:
    agent = StrategyAgent(tmp_path / "policy", learn=False)
    entry = {
        "study": "s",
        "mode": "balanced",
        "strategy": "tpe",
        "features": [0.1] * len(FEATURE_NAMES),
        "action": [0.0] * len(ACTION_FEATURE_NAMES),
        "reward": 0.5,
        "improvement": 0.5,
        "compute": 1.0,
        "trials": 3,
        "at": 0.0,
    }
    agent.import_bundle({"format": BUNDLE_FORMAT, "weights": None, "replay": [entry]})
    for key, value in (("trials", "lots"), ("trials", float("inf")), ("at", float("inf"))):
        with pytest.raises(RequestRejected) as refused:
            agent.import_bundle(
                {"format": BUNDLE_FORMAT, "weights": None, "replay": [{**entry, key: value}]}
            )
        assert refused.value.field == f"bundle.replay[0].{key}"


def test_a_deep_or_undecodable_replay_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "replay.jsonl"
    path.write_bytes(DEEP.encode() + b"\n" + b'{"study": "\xff\xfe"}\n')
    assert list(ReplayBuffer(path)) == []


def test_a_damaged_replay_file_does_not_stop_the_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The buffers are counted at start: a damaged shipped gzip or an unreadable local buffer
    counts 0 and is logged, the agent starts."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "weights.json").write_text(SHIPPED.read_text())
    (shipped / "replay.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00not gzip at all")
    policy = tmp_path / "policy"
    (policy / "replay.jsonl").mkdir(parents=True)  # a directory where the buffer should be
    agent = StrategyAgent(policy, shipped=shipped, learn=False)
    assert agent.status()["experiences"] == {"shipped": 0, "local": 0}
    assert agent.weights_source == "shipped"
    assert capsys.readouterr().out.count("strategy.replay_unreadable") == 2
