"""Settings: defaults, environment and file, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hpod.config import Settings
from hpod.workers.registry import ObjectiveRegistry


def test_no_broker_means_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without HPOD_BROKER_URL hpod uses its embedded broker in the data directory."""
    monkeypatch.delenv("HPOD_BROKER_URL", raising=False)
    monkeypatch.setenv("HPOD_CONFIG", str(tmp_path / "absent.toml"))
    settings = Settings(data_dir=tmp_path)
    assert settings.embedded
    options = settings.broker_transport_options()
    assert Path(options["data_folder_in"]).is_dir()
    assert settings.optuna_storage_url() == f"journal://{tmp_path / 'studies.journal'}"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HPOD_* variables win over the TOML file, which wins over defaults."""
    config = tmp_path / "hpod.toml"
    config.write_text("http_port = 9000\nmax_inflight = 7\n")
    monkeypatch.setenv("HPOD_CONFIG", str(config))
    monkeypatch.setenv("HPOD_HTTP_PORT", "9100")
    settings = Settings()
    assert (settings.http_port, settings.max_inflight) == (9100, 7)


def test_unknown_broker_scheme_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A broker URL that is neither AMQP nor embedded is a configuration error."""
    monkeypatch.setenv("HPOD_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ValidationError, match="broker_url"):
        Settings(broker_url="redis://localhost")


def test_the_token_is_generated_once_and_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a configured token, one is generated into the data dir, mode 0600."""
    monkeypatch.delenv("HPOD_API_TOKEN", raising=False)
    monkeypatch.setenv("HPOD_CONFIG", str(tmp_path / "absent.toml"))
    settings = Settings(data_dir=tmp_path)
    assert settings.token() == settings.token()
    assert (tmp_path / "api-token").stat().st_mode & 0o777 == 0o600


def test_registry_never_imports_a_path_it_was_not_configured_with() -> None:
    """A module path is not a registered name: the registry refuses it."""
    from hpod.errors import UnknownObjective

    with pytest.raises(UnknownObjective):
        ObjectiveRegistry().get("os:system")
    assert ObjectiveRegistry({"mine": "hpod.workers.objectives.analytic:branin"}).get("mine")
