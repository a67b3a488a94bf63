"""Operator strategies from HPOD_STRATEGIES_FILE (issue 6, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpod.errors import ConfigError
from hpod.policies.strategy.actions import BUILTIN, SpaceShape
from hpod.policies.strategy.agent import StrategyAgent
from hpod.policies.strategy.catalog import load_strategies
from hpod.policies.strategy.features import FEATURE_NAMES


def test_an_operator_strategy_is_added_and_scored(tmp_path: Path) -> None:
    file = tmp_path / "strategies.toml"
    file.write_text(
        '[tpe-wilcoxon]\nsampler = "tpe"\nsampler_options = { multivariate = true }\n'
        'pruner = "wilcoxon"\n\n[cmaes-ladder]\nsampler = "cmaes"\npruner = "successive_halving"\n'
        "ladder = [0.25, 1.0]\nauto = false\n"
    )
    strategies = load_strategies(str(file))
    assert [s.name for s in strategies[len(BUILTIN) :]] == ["tpe-wilcoxon", "cmaes-ladder"]
    agent = StrategyAgent(tmp_path / "policy", strategies, explore=False, learned=True)
    epochs = SpaceShape(3, 3, 0, 0, 1, "epochs")
    decision = agent.decide(epochs, [0.1] * len(FEATURE_NAMES), "balanced", 24, 24, None)
    if agent.ensemble is not None:  # the shipped weights score it from its parts
        assert "tpe-wilcoxon" in decision.scores
    assert "cmaes-ladder" in agent.masks(epochs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[tpe]\nsampler = "tpe"\n', "[tpe]: a strategy of that name exists already"),
        ('[auto]\nsampler = "tpe"\n', "[auto]: not a usable name"),
        ('[x]\nsampler = "hill"\n', "[x].sampler:"),
        ('[x]\nsampler = "tpe"\nladder = [0.5]\n', "[x].ladder:"),
        ('[x]\nsampler = "tpe"\nsampler_options = { n_startup = 3 }\n', "[x].sampler_options:"),
        (
            '[x]\nsampler = "tpe"\npruner = "median"\npruner_options = { warm = 1 }\n',
            "[x].pruner_options:",
        ),
        ("[x\n", "cannot read strategies file"),
    ],
)
def test_a_bad_strategies_file_is_refused_naming_strategy_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    file = tmp_path / "strategies.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_strategies(str(file))
