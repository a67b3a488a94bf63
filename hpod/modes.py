"""Modes (fast / balanced / thorough …): named sets of policy knobs, loaded from TOML data.

A mode is data, never code: the packaged file `hpod/data/modes.toml` defines the three
standard modes, and the file named by ``HPOD_MODES_FILE`` may change them or add more. Every
value is validated here, so a bad file is refused as a whole with the mode and key named
(the daemon then keeps the modes it had).
"""

from __future__ import annotations

import os
import re
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpod.errors import ConfigError
from hpod.schema import NAME_PATTERN

PrunerName = Literal[
    "none", "median", "percentile", "patient", "successive_halving", "hyperband", "wilcoxon"
]
SamplerName = Literal["tpe", "random", "qmc", "cmaes", "gp", "nsga2"]
PolicyName = Literal["cache", "subsampling", "pruning", "batching"]
ALL_POLICIES: tuple[PolicyName, ...] = ("cache", "subsampling", "pruning", "batching")


class Mode(BaseModel):
    """The knobs one mode sets; a study's explicit sampler/pruner/max_concurrent win."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    #: The efficiency policies in force (take one out to switch it off, e.g. for an ablation).
    policies: list[PolicyName] = Field(default_factory=lambda: list(ALL_POLICIES))
    sampler: SamplerName = "tpe"
    #: Keyword arguments of the Optuna sampler (e.g. ``multivariate = true``).
    sampler_options: dict[str, bool | int | float | str] = Field(default_factory=dict)
    pruner: PrunerName = "median"
    #: Keyword arguments of the Optuna pruner (e.g. ``n_startup_trials = 5``).
    pruner_options: dict[str, bool | int | float | str] = Field(default_factory=dict)
    #: The pruner in place of `pruner` for objectives that declare step fidelities (epochs,
    #: passes, rounds they report themselves; `hpod.policies.compose.step_pruner_applies`);
    #: None: `pruner` prunes those too. A data ladder's objectives keep `pruner`.
    step_pruner: PrunerName | None = None
    #: Keyword arguments of the step pruner, and hpod's own: ``warmup_share``,
    #: ``min_agreement`` and ``threshold`` (the threshold on those steps in place of the
    #: mode's `threshold`, 0 for none; `hpod.pruners.build_pruners`, checked when loaded).
    step_pruner_options: dict[str, bool | int | float | str] = Field(default_factory=dict)
    #: Aggressive pruning: stop a trial whose intermediate value is worse than the best at
    #: the same step by more than this share of the best's magnitude (0 switches it off).
    threshold: float = Field(default=0.0, ge=0.0, le=10.0)
    #: …but only once this many trials have reported at that step.
    threshold_min_trials: int = Field(default=8, ge=1)
    #: For objectives over folds (``hpod_fidelity = "folds"``): prune a trial whose mean over
    #: the folds seen is worse than the best trial's by more than this many standard errors,
    #: in place of the step pruners (0 switches it off; `hpod.pruners.FoldPruner`).
    fold_margin: float = Field(default=0.0, ge=0.0, le=100.0)
    #: Data fractions a trial climbs, for objectives whose fidelity is the data size.
    ladder: list[float] = Field(default_factory=lambda: [1.0], min_length=1, max_length=10)
    #: Trials in flight per study when the study does not set max_concurrent.
    parallelism: int = Field(default=4, ge=1, le=1024)
    #: Pack evaluations into one worker task until their measured time reaches this (0: off).
    batch_seconds: float = Field(default=0.0, ge=0.0, le=3600.0)
    #: At most this many evaluations in one packed task.
    max_pack: int = Field(default=1, ge=1, le=10_000)
    #: Trials told between two choices of the strategy policy (sampler, pruner, ladder).
    strategy_window: int = Field(default=12, ge=2, le=100_000)
    #: The largest share of a study's trial budget warm-started from past studies (transfer;
    #: at most `hpod.transfer.mapping.MAX_TRANSFER_SHARE`, 0 switches transfer off).
    transfer_share: float = Field(default=0.25, ge=0.0, le=0.5)
    #: Transfer also gives the past studies' surfaces to the TPE sampler as a prior
    #: (`hpod.transfer.prior`). Off by default: on bench/transfer.py it measured no better
    #: for related studies and 1.39x the evaluations for the unrelated control.
    transfer_prior: bool = False
    #: Continuation: rungs as shares of the steps of objectives that declare
    #: ``hpod_resumable`` (epochs, boosting rounds, passes); a trial pauses at each rung and
    #: the best 1/``continuation_eta`` there continue from their checkpoints. [1.0]: off.
    continuation: list[float] = Field(default_factory=lambda: [1.0], min_length=1, max_length=10)
    continuation_eta: int = Field(default=3, ge=2, le=100)

    @field_validator("ladder", "continuation")
    @classmethod
    def _check_ladder(cls, ladder: list[float]) -> list[float]:
        if any(not 0.0 < f <= 1.0 for f in ladder):
            raise ValueError(f"fractions must be in (0, 1], got {ladder}")
        if ladder != sorted(set(ladder)):
            raise ValueError(f"fractions must strictly increase, got {ladder}")
        if ladder[-1] != 1.0:
            raise ValueError(f"the last rung must be the full data (1.0), got {ladder[-1]}")
        return ladder


def load_modes(path: str | None = None) -> dict[str, Mode]:
    """The packaged modes, changed or extended by `path` or the file in ``HPOD_MODES_FILE``.

    A mode in the extra file replaces the packaged mode of the same name key by key (keys it
    does not give keep the packaged value); raises `ConfigError` naming the mode and key.
    """
    raw: dict[str, dict[str, Any]] = tomllib.loads(
        files("hpod").joinpath("data/modes.toml").read_text()
    )
    extra = path or os.environ.get("HPOD_MODES_FILE")
    if extra:
        try:
            overrides = tomllib.loads(Path(extra).read_text())
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, or a TOML syntax error
            raise ConfigError(f"cannot read modes file {extra}: {exc}") from exc
        for name, table in overrides.items():
            if not isinstance(table, dict):
                raise ConfigError(f"modes file {extra}: [{name}] must be a table of knobs")
            raw[name] = {**raw.get(name, {}), **table}
    return {name: _validate(name, table, extra) for name, table in raw.items()}


def _validate(name: str, table: dict[str, Any], source: str | None) -> Mode:
    where = f"modes file {source}" if source else "packaged modes"
    if not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(
            f"{where}: [{name}]: a mode name is letters, digits, '.', '_' and '-' "
            "(it travels in requests and Prometheus labels)"
        )
    try:
        mode = Mode.model_validate(table)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        raise ConfigError(f"{where}: [{name}].{key}: {err['msg']}") from exc
    check_options(
        f"{where}: [{name}]",
        mode.sampler,
        mode.sampler_options,
        mode.pruner,
        mode.pruner_options,
        mode.ladder,
        mode.threshold,
    )
    if mode.step_pruner is not None:
        from hpod.pruners import build_pruners

        try:  # no ladder: a step pruner's steps are the objective's own
            build_pruners(mode.step_pruner, mode.step_pruner_options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: [{name}].step_pruner_options: {exc}") from exc
    elif mode.step_pruner_options:
        raise ConfigError(f"{where}: [{name}].step_pruner_options: given without step_pruner")
    return mode


def check_options(
    where: str,
    sampler: str,
    sampler_options: dict[str, Any],
    pruner: str,
    pruner_options: dict[str, Any],
    ladder: list[float],
    threshold: float = 0.0,
) -> None:
    """Build the sampler and pruners once, so a typo in their options (keyword arguments of
    Optuna classes) is refused with the file instead of failing every trial later;
    `ConfigError` names `where` and the key."""
    from hpod.engine import make_sampler
    from hpod.pruners import build_pruners

    try:
        make_sampler(sampler, sampler_options, None, parallel=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.sampler_options: {exc}") from exc
    try:
        build_pruners(pruner, pruner_options, threshold, 8, ladder)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.pruner_options: {exc}") from exc
