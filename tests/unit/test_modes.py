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
