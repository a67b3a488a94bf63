"""`hpod objectives` shows each objective's declared fidelity, version and keyword arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hpod

SOURCE_ROOT = Path(hpod.__file__).resolve().parent.parent

#: An operator's objective module, registered by the `objectives` setting.
OWN_OBJECTIVE = """
from pydantic import BaseModel, ConfigDict


class Kwargs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folds: int = 3
    seed: int = 0


def mine(ctx, *, folds=3, seed=0):
    return 0.0


mine.hpod_fidelity = "data"
mine.hpod_version = "2024-07"
mine.hpod_kwargs = Kwargs
"""


def test_objectives_lists_fidelity_version_and_kwargs_and_survives_a_broken_one(
    tmp_path: Path,
) -> None:
    """A configured objective shows what it declares; the shipped ones their fidelity and the
    default version "1"; one whose module is missing is listed with the reason, not fatal."""
    (tmp_path / "own_objectives.py").write_text(OWN_OBJECTIVE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPOD_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(SOURCE_ROOT)]),
        HPOD_CONFIG=str(tmp_path / "none.toml"),
        HPOD_OBJECTIVES=json.dumps({"mine": "own_objectives:mine", "gone": "no_such_module:f"}),
    )
    result = subprocess.run(
        [sys.executable, "-m", "hpod", "objectives"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split(maxsplit=3)[1:] for line in result.stdout.splitlines()}
    assert rows["name"] == ["fidelity", "version", "kwargs"]
    assert rows["mine"] == ["data", "2024-07", "folds, seed"]
    assert rows["gradient_boosting"][:2] == ["data", "1"]
    assert rows["mlp_digits"][:2] == ["epochs", "1"]
    assert rows["quadratic"][:2] == ["none", "1"]
    assert rows["gone"][:2] == ["?", "?"]
    assert "ModuleNotFoundError" in rows["gone"][2]
