"""Mode presets (fast / balanced / thorough …), loaded from TOML data, never from code."""

from __future__ import annotations

import os
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any

from hpod.errors import ConfigError


def load_modes(path: str | None = None) -> dict[str, dict[str, Any]]:
    """The modes defined by the packaged file, overridden by `path` or `HPOD_MODES_FILE`."""
    modes: dict[str, dict[str, Any]] = tomllib.loads(
        files("hpod").joinpath("data/modes.toml").read_text()
    )
    extra = path or os.environ.get("HPOD_MODES_FILE")
    if extra:
        try:
            modes.update(tomllib.loads(Path(extra).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read modes file {extra}: {exc}") from exc
    return modes
