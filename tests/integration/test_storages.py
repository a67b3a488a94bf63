"""The same study on the default journal file, on SQLite and on PostgreSQL; each stays a
plain Optuna storage that Optuna's own API and CLI read unchanged."""

from __future__ import annotations

import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import DaemonFactory

from hpod.config import Settings
from hpod.engine import make_storage


def mixed_spec(name: str) -> dict[str, Any]:
    """A study with int, log-float and conditional categorical parameters."""
    return {
        "name": name,
        "objective": "svc_breast_cancer",
        "space": {
            "C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True},
            "gamma": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
            "kernel": {"type": "categorical", "choices": ["rbf", "poly"]},
            "degree": {
                "type": "int",
                "low": 2,
                "high": 4,
                "condition": {"param": "kernel", "values": ["poly"]},
            },
        },
        "budget": {"trials": 12},
        "sampler": {"name": "tpe", "seed": 3},
        # Reports on every rung of the data ladder, none pruned: all twelve complete.
        "pruner": {"name": "none"},
    }


def run_study(start_daemon: DaemonFactory, tmp_path: Path, storage_url: str | None) -> Settings:
    """Run the mixed study to completion; returns the settings the daemon ran with."""
    settings = {"storage_url": storage_url} if storage_url else {}
    daemon = start_daemon(data_dir=tmp_path / "data", **settings)
    status, reply = daemon.request("POST", "/studies", mixed_spec("storage-study"))
    assert status == 201, reply
    final = daemon.wait_study("storage-study")
    assert final["n_trials"] == 12 and final["counts"] == {"complete": 12}
    return Settings(data_dir=tmp_path / "data", storage_url=storage_url)


def check_plain_optuna(settings: Settings) -> None:
    """Optuna's own API and CLI read hpod's study unchanged, conditions included."""
    study = optuna.load_study(
        study_name="storage-study", storage=make_storage(settings.optuna_storage_url())
    )
    assert len(study.trials) == 12
    for trial in study.trials:
        assert ("degree" in trial.params) == (trial.params["kernel"] == "poly")
    cli = str(Path(sys.executable).parent / "optuna")
    argv = [cli, "studies", *shlex.split(settings.optuna_cli_storage()), "-f", "json"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    assert "storage-study" in out


def test_a_study_runs_on_the_default_journal_file(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """The default storage is Optuna's journal file in the data directory."""
    settings = run_study(start_daemon, tmp_path, None)
    assert (tmp_path / "data" / "studies.journal").stat().st_size > 0
    check_plain_optuna(settings)


def test_a_study_runs_on_sqlite(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    """SQLite, switched to WAL mode so readers do not block the daemon's writes."""
    path = tmp_path / "studies.db"
    check_plain_optuna(run_study(start_daemon, tmp_path, f"sqlite:///{path}"))
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.postgres
def test_a_study_runs_on_postgresql(
    start_daemon: DaemonFactory, tmp_path: Path, postgres_url: str
) -> None:
    """The same study on a real PostgreSQL."""
    check_plain_optuna(run_study(start_daemon, tmp_path, postgres_url))
