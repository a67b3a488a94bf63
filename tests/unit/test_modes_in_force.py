"""The daemon's modes in force and its default mode (`hpod.daemon.modes_in_force`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpod.daemon.modes_in_force import BUILTIN_DEFAULT, ModesInForce
from hpod.errors import RequestRejected
from hpod.modes import load_modes


def test_a_default_set_is_kept_across_a_restart(tmp_path: Path) -> None:
    """`set_default` writes ``<data_dir>/default-mode``; a new daemon starts with it."""
    assert ModesInForce(tmp_path).default == BUILTIN_DEFAULT
    ModesInForce(tmp_path).set_default("fast")
    assert (tmp_path / "default-mode").read_text() == "fast\n"
    assert ModesInForce(tmp_path).default == "fast"


def test_a_stored_default_the_daemon_no_longer_knows_is_balanced(tmp_path: Path) -> None:
    (tmp_path / "default-mode").write_text("overnight\n")
    assert ModesInForce(tmp_path).default == "balanced"
    modes = {**load_modes(None), "overnight": load_modes(None)["thorough"]}
    assert ModesInForce(tmp_path, modes).default == "overnight"


def test_an_unknown_mode_is_refused_naming_the_field(tmp_path: Path) -> None:
    book = ModesInForce(tmp_path)
    with pytest.raises(RequestRejected) as refused:
        book.check("turbo", "study.mode")
    assert (refused.value.code, refused.value.field) == ("invalid", "study.mode")
    with pytest.raises(RequestRejected):
        book.set_default("turbo")
    assert book.default == BUILTIN_DEFAULT and not (tmp_path / "default-mode").exists()


def test_a_study_runs_under_its_mode_or_the_default_when_it_has_gone(tmp_path: Path) -> None:
    """A study's stored mode applies while the daemon knows it; one removed from the modes
    file since (or none) gives the default mode."""
    book = ModesInForce(tmp_path)
    book.set_default("fast")
    assert book.in_force("s", "thorough") == ("thorough", book.modes["thorough"])
    assert book.in_force("s", None) == ("fast", book.modes["fast"])
    assert book.in_force("s", "removed-since") == ("fast", book.modes["fast"])
