"""Modes are data: the packaged file, an operator's file, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpod.errors import ConfigError
from hpod.modes import load_modes


def test_the_standard_modes_trade_compute_for_quality() -> None:
    """fast climbs a ladder with aggressive pruning; thorough evaluates full data."""
    modes = load_modes(None)
    assert {"fast", "balanced", "thorough"} <= set(modes)
    assert modes["fast"].threshold > 0 and len(modes["fast"].ladder) > 1
    assert modes["thorough"].ladder == [1.0] and modes["thorough"].threshold == 0


def test_fast_and_balanced_prune_steps_with_their_step_pruners(tmp_path: Path) -> None:
    """The validation set's choices on steps (docs/benchmarks.md): balanced the median
    pruner, fast the 33rd percentile without a threshold; the data ladder keeps successive
    halving, and an operator's file may name another step pruner."""
    modes = load_modes(None)
    for name, step in (("fast", "percentile"), ("balanced", "median")):
        assert (modes[name].step_pruner, modes[name].pruner) == (step, "successive_halving")
    assert modes["fast"].step_pruner_options == {
        "percentile": 33.0,
        "min_agreement": 0.5,
        "threshold": 0.0,
    }
    assert modes["thorough"].step_pruner is None
    path = tmp_path / "modes.toml"
    path.write_text(
        "[fast]\nstep_pruner = 'percentile'\nstep_pruner_options = { percentile = 40.0 }\n"
    )
    fast = load_modes(str(path))["fast"]
    assert (fast.step_pruner, fast.step_pruner_options) == ("percentile", {"percentile": 40.0})


def test_an_operator_adds_a_mode_and_changes_one(tmp_path: Path) -> None:
    """A new table is a new mode; a packaged mode's table changes only the keys it gives."""
    path = tmp_path / "modes.toml"
    path.write_text("[overnight]\nladder = [0.5, 1.0]\n[fast]\nthreshold = 0.2\n")
    modes = load_modes(str(path))
    assert modes["overnight"].ladder == [0.5, 1.0]
    assert modes["fast"].threshold == 0.2
    assert modes["fast"].ladder == load_modes(None)["fast"].ladder


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[fast]\nladder = [0.5, 0.25, 1.0]\n", "[fast].ladder"),
        ("[fast]\nladder = [0.5]\n", "[fast].ladder"),
        ("[fast]\nthreshold = -1\n", "[fast].threshold"),
        ("[fast]\npruner = 'oracle'\n", "[fast].pruner"),
        ("[fast]\npruner_options = { bogus = 1 }\n", "[fast].pruner_options"),
        ("[fast]\nsampler_options = { bogus = 1 }\n", "[fast].sampler_options"),
        ("[fast]\nstep_pruner = 'oracle'\n", "[fast].step_pruner"),
        ("[fast]\nstep_pruner_options = { bogus = 1 }\n", "[fast].step_pruner_options"),
        ("[fast]\nstep_pruner_options = { warmup_share = 1.5 }\n", "warmup_share must be"),
        ("[fast]\nstep_pruner_options = { warmup_share = 'a' }\n", "warmup_share must be"),
        (
            "[fast]\nstep_pruner = 'successive_halving'\n"
            "step_pruner_options = { warmup_share = 0.2 }\n",
            "warmup_share applies to median",
        ),
        ("[thorough]\nstep_pruner_options = { patience = 2 }\n", "without step_pruner"),
        ("[fast]\npolicies = ['cache', 'magic']\n", "[fast].policies"),
        ("[fast]\nunknown_knob = 1\n", "[fast].unknown_knob"),
        ("fast = 3\n", "[fast] must be a table"),
        ('["night shift"]\nthreshold = 0.1\n', "[night shift]: a mode name is"),
        ("[fast\n", "cannot read modes file"),
    ],
)
def test_a_bad_modes_file_is_refused_naming_the_mode_and_key(
    tmp_path: Path, text: str, where: str
) -> None:
    """The error names the file, the mode and the key; nothing is half-applied."""
    path = tmp_path / "modes.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_modes(str(path))
    assert where in str(err.value) and str(path) in str(err.value)
