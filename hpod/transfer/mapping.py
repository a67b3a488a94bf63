"""Mapping past configurations into a new study's space, and choosing which to transfer.

A past configuration is carried over parameter by parameter: a number is clipped to the new
bounds (and put on the new grid: integers rounded, a `step` respected); a parameter the new
space no longer has is dropped; a categorical value that is not one of the new choices is
dropped; a parameter the past study did not have is left out, for the sampler to choose; a
conditional parameter whose condition the mapped parent no longer meets is dropped. What is
left is enqueued as a fixed partial configuration (Optuna's `enqueue_trial`): the sampler
fills in the rest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hpod.schema import CategoricalParam, FloatParam, IntParam, ParamSpec
from hpod.transfer.memory import StudyMemory

#: The largest share of a budget any mode may transfer: most of a study stays its own.
MAX_TRANSFER_SHARE = 0.5
#: Transferred trials of a study with a time budget only (no trial count to take a share of).
TIME_BUDGET_TRANSFERS = 8
#: Configurations enqueued before the study has a result of its own: the best of the most
#: similar source. Each costs an unrelated study a trial (bench/transfer.py's control: 4 of
#: them cost it +23 % evaluations); the rest waits for the study's own results to support it.
START_TRANSFERS = 1


@dataclass(frozen=True)
class Transferred:
    """A configuration to enqueue: where it comes from and its rank there (0: the best)."""

    params: dict[str, Any]
    source: str
    rank: int


def map_params(params: dict[str, Any], space: dict[str, ParamSpec]) -> dict[str, Any]:
    """`params` of a past study mapped into `space` (see the module's rules); may be empty."""
    mapped: dict[str, Any] = {}
    for name, spec in space.items():
        if name not in params:
            continue
        if spec.condition is not None:
            parent = mapped.get(spec.condition.param, _ABSENT)
            if parent is _ABSENT or not _in(parent, spec.condition.values):
                continue
        value = map_value(params[name], spec)
        if value is not _ABSENT:
            mapped[name] = value
    return mapped


_ABSENT: Any = object()


def _in(value: Any, choices: list[Any]) -> bool:
    """Membership compared as JSON: 1 is not true, 1.0 is not 1."""
    key = json.dumps(value)
    return any(json.dumps(c) == key for c in choices)


def map_value(value: Any, spec: ParamSpec) -> Any:
    """One value mapped into one parameter's definition, or `_ABSENT` to drop it."""
    if isinstance(spec, CategoricalParam):
        return value if _in(value, spec.choices) else _ABSENT
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return _ABSENT
    clipped = min(max(float(value), spec.low), spec.high)
    if isinstance(spec, IntParam):
        steps = math.floor((clipped - spec.low) / spec.step + 0.5)  # half up
        top = spec.high - (spec.high - spec.low) % spec.step  # the grid's last point
        return int(min(spec.low + steps * spec.step, top))
    return _on_grid(clipped, spec)


def _on_grid(value: float, spec: FloatParam) -> float:
    if spec.step is None:
        return value
    steps = round((value - spec.low) / spec.step)
    top = math.floor((spec.high - spec.low) / spec.step + 1e-9)
    return spec.low + min(steps, top) * spec.step


def transfer_count(share: float, budget_trials: int | None) -> int:
    """How many trials a study may take from the past: `share` of its trial budget (rounded
    down; bounded by `MAX_TRANSFER_SHARE`), or `TIME_BUDGET_TRANSFERS` * share / 0.25 for a
    study with a time budget only. 0 when the share is 0."""
    share = min(max(share, 0.0), MAX_TRANSFER_SHARE)
    if share == 0.0:
        return 0
    if budget_trials is None:
        return max(1, round(TIME_BUDGET_TRANSFERS * share / 0.25))
    return math.floor(share * budget_trials)


def plan_transfer(
    space: dict[str, ParamSpec],
    sources: list[tuple[StudyMemory, float]],
    limit: int,
) -> list[Transferred]:
    """Up to `limit` distinct mapped configurations, taken round-robin from `sources` (most
    similar first), each source's best first; empty mappings and duplicates are skipped."""
    out: list[Transferred] = []
    seen: set[str] = set()
    queues = [(memory.study, list(enumerate(memory.top))) for memory, _ in sources]
    while len(out) < limit and any(queue for _, queue in queues):
        for study, queue in queues:
            if len(out) >= limit or not queue:
                continue
            rank, top = queue.pop(0)
            mapped = map_params(top.params, space)
            key = json.dumps(mapped, sort_keys=True)
            if not mapped or key in seen:
                continue
            seen.add(key)
            out.append(Transferred(mapped, study, rank))
    return out


def stages(
    configs: list[Transferred], start: int = START_TRANSFERS
) -> tuple[list[Transferred], list[Transferred]]:
    """Split the configurations to transfer in two: the first `start` are enqueued at the
    start; the rest is held until the study's own results support their sources (see
    `hpod.transfer.agreement`), so that a past study that misleads costs `start` trials."""
    return configs[:start], configs[start:]


def config_json(config: Transferred) -> dict[str, Any]:
    """A held configuration as stored in the study's ``hpod:transfer`` attribute."""
    return {"params": config.params, "from": config.source, "rank": config.rank}


def config_from_json(data: Any) -> Transferred | None:
    """A held configuration read back from storage (None if it is not one)."""
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("params"), dict)
        or not isinstance(data.get("from"), str)
        or not isinstance(data.get("rank"), int)
    ):
        return None
    return Transferred(data["params"], data["from"], data["rank"])
