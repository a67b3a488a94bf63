"""The same study on SQLite and on PostgreSQL, and both stay plain Optuna storages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import DaemonFactory


def mixed_spec(name: str) -> dict[str, object]:
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
    }


def run_study(start_daemon: DaemonFactory, tmp_path: Path, storage_url: str | None) -> str:
    """Run the mixed study to completion on the given storage; returns the storage URL used."""
    settings = {"storage_url": storage_url} if storage_url else {}
    daemon = start_daemon(data_dir=tmp_path / "data", **settings)
    status, reply = daemon.request("POST", "/studies", mixed_spec("storage-study"))
    assert status == 201, reply
    final = daemon.wait_study("storage-study")
    assert final["n_trials"] == 12 and final["counts"] == {"complete": 12}
    return storage_url or f"sqlite:///{tmp_path / 'data' / 'studies.db'}"


def check_plain_optuna(url: str) -> None:
    """Optuna's own API and CLI read hpod's study unchanged, conditions included."""
    study = optuna.load_study(study_name="storage-study", storage=url)
    assert len(study.trials) == 12
    for trial in study.trials:
        assert ("degree" in trial.params) == (trial.params["kernel"] == "poly")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "optuna"), "studies", "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "storage-study" in out


def test_a_study_runs_on_sqlite(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    """The default storage, SQLite in the data directory, in WAL mode."""
    url = run_study(start_daemon, tmp_path, None)
    check_plain_optuna(url)
    import sqlite3

    mode = (
        sqlite3.connect(tmp_path / "data" / "studies.db")
        .execute("PRAGMA journal_mode")
        .fetchone()[0]
    )
    assert mode == "wal"


@pytest.mark.postgres
def test_a_study_runs_on_postgresql(
    start_daemon: DaemonFactory, tmp_path: Path, postgres_url: str
) -> None:
    """The same study on a real PostgreSQL."""
    check_plain_optuna(run_study(start_daemon, tmp_path, postgres_url))
