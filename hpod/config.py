"""Settings: one validated object, read from a TOML file and the environment.

Precedence: environment (``HPOD_*``) over the TOML file (``HPOD_CONFIG``, default
``/etc/hpod/hpod.toml`` when it exists) over defaults. With no broker configured hpod uses its
embedded, persistent broker in the data directory, so a newcomer needs no server at all.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hpod.errors import ConfigError

EMBEDDED_SCHEME = "hpodfs"
DEFAULT_CONFIG_FILE = Path("/etc/hpod/hpod.toml")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hpod"


class Settings(BaseSettings):
    """Everything an operator can set; see config/hpod.toml for a commented example."""

    model_config = SettingsConfigDict(env_prefix="HPOD_", extra="forbid")

    data_dir: Path = Field(default_factory=_default_data_dir)
    broker_url: str | None = Field(
        default=None, description="amqp://… for RabbitMQ; unset for the embedded broker."
    )
    storage_url: str | None = Field(
        default=None,
        description="Any Optuna RDB URL, or journal:///path; unset for a journal file in data_dir.",
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8642, ge=0, le=65535)
    api_token: str | None = Field(default=None, min_length=16)
    api_token_file: Path | None = Field(
        default=None, description="File holding the token (e.g. a systemd credential)."
    )
    drain_timeout: float = Field(
        default=60.0, ge=0, description="Seconds SIGTERM waits for running trials."
    )
    memory_high_water_mb: int | None = Field(
        default=None, gt=0, description="Above this RSS (daemon + local workers), dispatch less."
    )
    max_inflight: int = Field(default=64, gt=0, description="Worker tasks in flight, all studies.")
    local_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=0)
    max_message_bytes: int = Field(default=1 << 20, gt=0)
    trial_grace_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(
        default=2, ge=1, description="Dispatches of a trial whose worker died."
    )
    objectives: dict[str, str] = Field(default_factory=dict)
    cache_dir: Path | None = Field(
        default=None, description="Result cache folder; unset for <data_dir>/cache."
    )
    cache_ttl_seconds: float | None = Field(
        default=30 * 24 * 3600.0,
        gt=0,
        description="Cached results expire after this; unset: never.",
    )
    cache_size_mb: int = Field(default=1024, gt=0, description="Cache size limit; oldest culled.")
    checkpoint_dir: Path | None = Field(
        default=None,
        description="Checkpoints of paused trials (continuation); unset for "
        "<data_dir>/checkpoints. A path every worker mounts when workers run on several "
        "machines.",
    )
    checkpoint_max_mb: int = Field(
        default=256, gt=0, description="A bigger checkpoint is not saved (the trial retrains)."
    )
    checkpoint_total_mb: int = Field(
        default=4096, gt=0, description="All checkpoints together; the oldest are removed."
    )
    checkpoint_ttl_seconds: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Older checkpoints are ignored and swept."
    )
    policy_learn_every: int = Field(
        default=25,
        gt=0,
        description="The strategy policy retrains (in its own process) after this many new "
        "experiences.",
    )
    policy_check_tasks: int | None = Field(
        default=None,
        ge=1,
        le=11,  # len(check.CHECK_TASKS): a unit test keeps them equal
        description="The learner's check suite runs its first this many tasks (unset: all "
        "eleven, the suite docs/policies.md measures). Smaller only to test the wiring.",
    )
    policy_check_seeds: int | None = Field(
        default=None,
        ge=1,
        le=4,  # len(check.CHECK_SEEDS)
        description="... and this many seeds of each (unset: all four).",
    )
    policy_learn_epochs: int | None = Field(
        default=None,
        ge=1,
        description="Passes of the learner over its experiences (unset: 60, as the shipped "
        "weights were trained). Fewer only to test the wiring.",
    )
    policy_learned: bool = Field(
        default=False,
        description="Strategy auto is the learned policy (and it learns online) instead of "
        "the static rule (docs/policies.md).",
    )
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # --- memory bounds of what the daemon keeps per study ---
    max_finished_study_series: int = Field(
        default=200,
        gt=0,
        description="Finished studies whose per-study Prometheus series and doctor timings "
        "are kept (running studies always are); the least recently active go first.",
    )
    max_event_streams: int = Field(
        default=32,
        gt=0,
        description="Open GET /events streams at once; one more is answered 503.",
    )
    # --- study failure and storage faults ---
    study_max_failures: int = Field(
        default=3,
        ge=1,
        description="A study whose loop fails this many times in a row with the same error "
        "(not a storage outage) is marked failed.",
    )
    max_studies: int = Field(
        default=10_000, gt=0, description="Studies the storage may hold; study.create refuses more."
    )

    @field_validator("broker_url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url and not url.startswith(
            ("amqp://", "amqps://", "pyamqp://", f"{EMBEDDED_SCHEME}://")
        ):
            raise ValueError("broker_url must be amqp://… (RabbitMQ) or unset (embedded)")
        return url

    @field_validator("api_token_file")
    @classmethod
    def _readable_token_file(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from exc
        if len(token) < 16:
            raise ValueError(f"{path} must hold a token of at least 16 characters")
        return path

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment wins over the TOML file, which wins over defaults. A missing file is
        no error; one that exists but cannot be read (a directory, no permission) is."""
        path = config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.exists():
            if not path.is_file():  # pydantic-settings would skip it silently
                raise ValueError("not a regular file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def result_cache_dir(self) -> Path:
        """Where the result cache lives (shared by every study, kept across restarts)."""
        return self.cache_dir or self.data_dir / "cache"

    def checkpoint_root(self) -> Path:
        """Where paused trials' checkpoints live (`hpod.checkpoints`)."""
        return self.checkpoint_dir or self.data_dir / "checkpoints"

    @property
    def embedded(self) -> bool:
        """True when messages go through the embedded broker, not RabbitMQ."""
        return not self.broker_url or self.broker_url.startswith(f"{EMBEDDED_SCHEME}://")

    @property
    def broker(self) -> str:
        """The kombu/Celery broker URL in force."""
        return self.broker_url or f"{EMBEDDED_SCHEME}://localhost/"

    def broker_transport_options(self) -> dict[str, Any]:
        """Transport options for kombu and Celery: the folders of the embedded broker."""
        if not self.embedded:
            return {"confirm_publish": True}
        folder = self.data_dir / "broker"
        for sub in ("messages", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "control_folder": str(folder / "control"),
            "polling_interval": 0.05,
        }

    def optuna_storage_url(self) -> str:
        """The Optuna storage URL: configured, or Optuna's journal file in the data directory.

        Chosen by measurement: the journal file against SQLite in the latest `make bench`
        table (docs/benchmarks.md, "Throughput and overhead", the one place for throughput
        figures). The journal file is multi-process safe (file lock) and read by
        `optuna … --storage PATH --storage-class JournalFileBackend` and `optuna-dashboard PATH`.
        """
        if self.storage_url:
            return self.storage_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"journal://{self.data_dir / 'studies.journal'}"

    def optuna_cli_storage(self) -> str:
        """The `--storage …` arguments with which the `optuna` CLI reads hpod's studies."""
        url = self.optuna_storage_url()
        if url.startswith("journal://"):
            return f"--storage {url.removeprefix('journal://')} --storage-class JournalFileBackend"
        return f"--storage {url}"

    def token(self) -> str:
        """The HTTP API token: configured, or generated once and kept in the data directory."""
        if self.api_token:
            return self.api_token
        if self.api_token_file is not None:
            return self.api_token_file.read_text().strip()
        path = self.data_dir / "api-token"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".api-token.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
            try:  # link, not rename: if another process got there first, its token stays
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip()

    def existing_token(self) -> str | None:
        """The API token if one is configured or was generated by the daemon; never creates one."""
        if self.api_token:
            return self.api_token
        path = self.api_token_file or self.data_dir / "api-token"
        return path.read_text().strip() if path.exists() else None

    def http_url(self) -> str:
        """Where the daemon's HTTP API listens, as a client would call it."""
        return f"http://{self.http_host}:{self.http_port}"

    # --- intake and broker ---
    redelivery_max_attempts: int = Field(
        default=5,
        ge=1,
        description="Tries of a request or result whose handling fails before it is "
        "dead-lettered on hpod.dead with the reason.",
    )
    redelivery_backoff_seconds: float = Field(
        default=1.0, gt=0, description="Wait before the first retry; doubles each try."
    )
    redelivery_backoff_max_seconds: float = Field(
        default=30.0, gt=0, description="Cap of the wait between retries."
    )
    intake_stuck_seconds: float = Field(
        default=120.0,
        gt=0,
        description="/health answers 503 when messages have waited this long without the "
        "intake making progress (or the broker has been unreachable this long).",
    )
    broker_heartbeat_seconds: int = Field(
        default=30, ge=0, description="AMQP heartbeat of the intake's connections (0: off)."
    )
    event_outbox_size: int = Field(
        default=10_000,
        gt=0,
        description="Events kept in memory while the broker is unreachable (oldest dropped).",
    )


#: Settings that SIGHUP applies to a running daemon; the others need a restart.
RELOADABLE = (
    "log_level",
    "log_format",
    "max_inflight",
    "trial_grace_seconds",
    "max_attempts",
    "drain_timeout",
    "memory_high_water_mb",
    "objectives",
)


def redact(url: str) -> str:
    """A URL safe to log or show: any password replaced by ``***``."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def config_file() -> Path:
    """The settings file: ``HPOD_CONFIG``, or /etc/hpod/hpod.toml."""
    return Path(os.environ.get("HPOD_CONFIG", DEFAULT_CONFIG_FILE))


def load_settings(**overrides: Any) -> Settings:
    """Load and validate the settings (file, environment, then explicit overrides).

    Raises pydantic's `ValidationError` for a bad value, `OSError` or `ValueError` when the
    settings file cannot be read or parsed; `checked_settings` turns each into one line."""
    return Settings(**overrides)


def checked_settings(**overrides: Any) -> Settings:
    """`load_settings`, with every failure a `ConfigError` of one line naming the setting
    (``max_inflight: …``) or the file (``settings file /etc/hpod/hpod.toml: …``), so
    `hpod run` can exit 2 with it instead of a traceback."""
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        cause = (err.get("ctx") or {}).get("error")  # a validator's own message, unprefixed
        message = str(cause) if err["type"] == "value_error" and cause else err["msg"]
        raise ConfigError(f"{field}: {message}") from exc
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, or a TOML syntax error
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"settings file {config_file()}: {reason}") from exc
