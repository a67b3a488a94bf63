"""The strategies a daemon chooses among: the built-ins and an operator's own.

An operator adds strategies in the TOML file named by ``HPOD_STRATEGIES_FILE``, one table
each, composed of the samplers, pruners and data ladders hpod knows::

    [tpe-wilcoxon]
    sampler = "tpe"
    sampler_options = { multivariate = true }
    pruner = "wilcoxon"
    auto = true          # the policy may choose it (false: only a study naming it gets it)

The learned policy scores a strategy by its parts (`actions.action_features`), so a new
combination is scored from the first decision, without retraining. Every value is validated
here, options by building the Optuna sampler and pruner once; a bad file is refused as a whole
with the strategy and key named.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpod.errors import ConfigError
from hpod.modes import Mode, PrunerName, SamplerName, check_options
from hpod.policies.strategy.actions import BUILTIN, Strategy
from hpod.schema import NAME_PATTERN

#: Strategy settings that are not strategies' names.
RESERVED = ("auto", "mode")


class StrategyConfig(BaseModel):
    """One operator strategy as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sampler: SamplerName
    sampler_options: dict[str, bool | int | float | str] = Field(default_factory=dict)
    pruner: PrunerName = "none"
    pruner_options: dict[str, bool | int | float | str] = Field(default_factory=dict)
    ladder: list[float] = Field(default_factory=lambda: [1.0], min_length=1, max_length=10)
    auto: bool = True

    @field_validator("ladder")
    @classmethod
    def _check_ladder(cls, ladder: list[float]) -> list[float]:
        return Mode._check_ladder(ladder)


def load_strategies(path: str | None = None) -> tuple[Strategy, ...]:
    """The built-in strategies and those of `path` (or ``HPOD_STRATEGIES_FILE``)."""
    source = path or os.environ.get("HPOD_STRATEGIES_FILE")
    if not source:
        return BUILTIN
    try:
        raw: dict[str, Any] = tomllib.loads(Path(source).read_text())
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, or a TOML syntax error
        raise ConfigError(f"cannot read strategies file {source}: {exc}") from exc
    known = {s.name for s in BUILTIN}
    added = []
    for name, table in raw.items():
        where = f"strategies file {source}: [{name}]"
        if not re.fullmatch(NAME_PATTERN, name) or name in RESERVED:
            raise ConfigError(
                f"{where}: not a usable name (letters, digits, '.', '_', '-'; "
                f"not {' or '.join(RESERVED)})"
            )
        if name in known:
            raise ConfigError(f"{where}: a strategy of that name exists already")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        added.append(_validate(name, table, where))
        known.add(name)
    return (*BUILTIN, *added)


def _validate(name: str, table: dict[str, Any], where: str) -> Strategy:
    try:
        config = StrategyConfig.model_validate(table)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        raise ConfigError(f"{where}.{key}: {err['msg']}") from exc
    check_options(
        where,
        config.sampler,
        config.sampler_options,
        config.pruner,
        config.pruner_options,
        config.ladder,
    )
    return Strategy(
        name,
        config.sampler,
        config.pruner,
        tuple(config.ladder),
        dict(config.sampler_options),
        dict(config.pruner_options),
        config.auto,
    )
