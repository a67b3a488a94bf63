"""The memory of a finished study: what a later study of the same objective can learn from.

A record is plain JSON, bounded in size, stored as the study user attribute ``hpod:memory``
of the finished study itself, so it lives in whatever Optuna storage holds the studies
(journal file, SQLite, PostgreSQL), survives restarts and travels with the storage. It holds
the objective (name, version), its keyword arguments and data fingerprint, the space, the
directions, the best configurations with their values, and a compact response surface: up to
`MAX_SURFACE` (params, rank) pairs, the rank normalised to [0, 1] with 0 the best.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from hpod.ranks import rankdata
from hpod.schema import Direction, ParamSpec

#: The study user attribute holding a finished study's memory record.
MEMORY_ATTR = "hpod:memory"
#: Format of the record; a record of another format is ignored (never misread).
MEMORY_FORMAT = 1
#: Best configurations kept.
TOP_K = 10
#: (params, rank) pairs kept of the response surface.
MAX_SURFACE = 200
#: The most a record may weigh as compact JSON; the surface shrinks to fit, and a record
#: that still does not fit (a huge space) is not written.
MAX_MEMORY_BYTES = 256 * 1024
#: Characters kept of an objective's data fingerprint.
MAX_FINGERPRINT_CHARS = 200

SPACE_ADAPTER: TypeAdapter[dict[str, ParamSpec]] = TypeAdapter(dict[str, ParamSpec])


class TopTrial(BaseModel):
    """One of the best configurations of a past study, with its values."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    params: dict[str, Any]
    values: list[float]


class StudyMemory(BaseModel):
    """A finished study's memory record (read back from storage: validated, never trusted)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: int = MEMORY_FORMAT
    study: str
    objective: str | None
    version: str | None = None
    objective_kwargs: dict[str, Any] = Field(default_factory=dict)
    fingerprint: str | None = None
    space: dict[str, ParamSpec]
    directions: list[Direction]
    n_complete: int = Field(ge=0)
    top: list[TopTrial] = Field(default_factory=list, max_length=TOP_K)
    #: (params, rank in [0, 1], 0 the best) of up to MAX_SURFACE complete trials.
    surface: list[tuple[dict[str, Any], float]] = Field(
        default_factory=list, max_length=MAX_SURFACE
    )
    finished_at: float | None = None


@dataclass(frozen=True)
class Observed:
    """A complete trial as the memory sees it: its parameters and values."""

    params: dict[str, Any]
    values: list[float]


def default_fingerprint(kwargs: dict[str, Any]) -> str:
    """The data fingerprint of an objective that declares none: a hash of its kwargs
    (identical kwargs, identical data; any difference, another data set)."""
    text = json.dumps(kwargs, sort_keys=True, separators=(",", ":"))
    return "kwargs:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def ranks(observed: Sequence[Observed], directions: Sequence[str]) -> list[float]:
    """Each trial's rank normalised to [0, 1], 0 the best.

    With one objective the rank of its value; with several, of the sum of the per-objective
    ranks (a compact order that puts the balanced trade-offs first). Ties share the lowest.
    """
    n = len(observed)
    if n == 0:
        return []
    totals = np.zeros(n)
    for k, direction in enumerate(directions):
        sign = 1.0 if direction == "minimize" else -1.0
        totals += rankdata([sign * o.values[k] for o in observed], method="min")
    positions = rankdata(totals, method="min") - 1
    return [float(p) / max(1, n - 1) for p in positions]


def build_memory(
    study: str,
    objective: str | None,
    space: dict[str, ParamSpec],
    directions: Sequence[Direction],
    observed: Sequence[Observed],
    kwargs: dict[str, Any] | None = None,
    version: str | None = None,
    fingerprint: str | None = None,
) -> StudyMemory | None:
    """The memory record of a finished study, or None when it has nothing to teach (no
    complete trial, or a record that cannot fit in `MAX_MEMORY_BYTES`)."""
    usable = [o for o in observed if len(o.values) == len(directions)]
    if not usable:
        return None
    rank_of = ranks(usable, directions)
    order = sorted(range(len(usable)), key=lambda i: rank_of[i])
    top = [TopTrial(params=usable[i].params, values=usable[i].values) for i in order[:TOP_K]]
    surface = [(usable[i].params, round(rank_of[i], 6)) for i in _spread(order, MAX_SURFACE)]
    memory = StudyMemory(
        study=study,
        objective=objective,
        version=version,
        objective_kwargs=dict(kwargs or {}),
        fingerprint=(fingerprint or default_fingerprint(kwargs or {}))[:MAX_FINGERPRINT_CHARS],
        space=space,
        directions=list(directions),
        n_complete=len(usable),
        top=top,
        surface=surface,
        finished_at=time.time(),
    )
    while len(dump_memory(memory)) > MAX_MEMORY_BYTES:
        if len(memory.surface) <= 1:
            return None
        keep = _spread(list(range(len(memory.surface))), len(memory.surface) // 2)
        memory = memory.model_copy(update={"surface": [memory.surface[i] for i in keep]})
    return memory


def _spread(order: list[int], limit: int) -> list[int]:
    """At most `limit` items of `order`, evenly spread from the first (the best) to the last."""
    n = len(order)
    if n <= limit:
        return list(order)
    if limit <= 1:
        return order[:1]
    picks = sorted({round(j * (n - 1) / (limit - 1)) for j in range(limit)})
    return [order[p] for p in picks]


def dump_memory(memory: StudyMemory) -> str:
    """A record as the compact JSON text stored in the study attribute."""
    return memory.model_dump_json()


def load_memory(raw: Any) -> StudyMemory | None:
    """A record read from storage, or None if it is missing, of another format or invalid."""
    if raw is None:
        return None
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(data, dict) or data.get("format") != MEMORY_FORMAT:
            return None
        return StudyMemory.model_validate(data)
    except (ValidationError, ValueError, TypeError):
        return None
