"""A study's plan: the knobs of its mode, overridden by what its spec sets explicitly.

The plan is resolved again whenever the study's mode changes, so trials dispatched after a
switch follow the new mode. Its worker-side part (`Plan.for_worker`) travels in the task
message as plain JSON: the worker builds its pruner and data ladder from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpod.modes import Mode
from hpod.schema import StudySpec


@dataclass(frozen=True)
class Plan:
    """Everything the policies of one study decide by, for the trials dispatched now."""

    mode: str
    sampler: str
    sampler_options: dict[str, Any]
    seed: int | None
    pruner: str
    pruner_options: dict[str, Any]
    threshold: float
    threshold_min_trials: int
    ladder: tuple[float, ...]
    policies: frozenset[str]
    parallelism: int
    batch_seconds: float
    max_pack: int
    single_objective: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    #: Trials told between two decisions of the strategy policy.
    strategy_window: int = 12

    def uses(self, policy: str) -> bool:
        """Whether the efficiency policy named `policy` is in force."""
        return policy in self.policies

    def base_task(self) -> dict[str, Any]:
        """The worker's part of the plan before the policies add theirs: full data, no
        pruning (JSON, sent with the task)."""
        return {"mode": self.mode, "ladder": [1.0], "pruner": "none", "threshold": 0.0}


def resolve_plan(spec: StudySpec, mode_name: str, mode: Mode) -> Plan:
    """The plan of `spec` under `mode`: the spec's explicit sampler, pruner and
    max_concurrent win over the mode's."""
    sampler = spec.sampler.name or mode.sampler
    sampler_options = dict(mode.sampler_options) if spec.sampler.name is None else {}
    if spec.pruner is not None:
        pruner = spec.pruner.name
        pruner_options: dict[str, Any] = (
            {
                "n_startup_trials": spec.pruner.n_startup_trials,
                "n_warmup_steps": spec.pruner.n_warmup_steps,
            }
            if pruner in ("median", "percentile", "patient")
            else {}
        )
    else:
        pruner, pruner_options = mode.pruner, dict(mode.pruner_options)
    return Plan(
        mode=mode_name,
        sampler=sampler,
        sampler_options=sampler_options,
        seed=spec.sampler.seed,
        pruner=pruner,
        pruner_options=pruner_options,
        threshold=mode.threshold,
        threshold_min_trials=mode.threshold_min_trials,
        ladder=tuple(mode.ladder),
        policies=frozenset(mode.policies),
        parallelism=spec.max_concurrent or mode.parallelism,
        batch_seconds=mode.batch_seconds,
        max_pack=mode.max_pack,
        single_objective=len(spec.directions) == 1,
        strategy_window=mode.strategy_window,
    )
