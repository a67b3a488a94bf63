"""How much a past study resembles a new one: objective, version, kwargs or data, space.

All pure functions of the new study's description and a past study's memory record. The
score is in [0, 1]:

    similarity = version factor * (0.5 + 0.5 * data closeness) * space overlap

- the objective must be the same (else 0), and so must the directions (ranks would mean
  something else); a different version halves the score, an unknown one takes a fifth off;
- data closeness is 1 for the same data fingerprint, else the mean closeness of the keyword
  arguments (equal: 1; two numbers a and b: 1 - |a - b| / (|a| + |b|); a key only one side
  gives: 0.5, the other side probably uses the default; anything else: 0). Shifted data
  still scores at least half: the same model on other data is what transfer is for;
- space overlap is the mean over the union of parameter names of each parameter's overlap:
  two numeric ranges, the length of their intersection over that of their union (on a log
  scale when either is logarithmic); two categoricals, the Jaccard index of their choices;
  a parameter only one side has, or of another kind: 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from hpod.schema import CategoricalParam, ParamSpec
from hpod.transfer.memory import StudyMemory

#: Past studies scoring below this are not used.
MIN_SIMILARITY = 0.1
#: At most this many past studies give configurations to one new study.
MAX_SOURCES = 3


@dataclass(frozen=True)
class Target:
    """The new study, as similarity sees it."""

    objective: str | None
    space: dict[str, ParamSpec]
    directions: list[str]
    kwargs: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    fingerprint: str | None = None


def similarity(target: Target, past: StudyMemory) -> float:
    """How much `past` resembles `target`, in [0, 1] (0: never use it)."""
    if target.objective is None or past.objective != target.objective:
        return 0.0
    if list(past.directions) != list(target.directions):
        return 0.0
    overlap = space_overlap(target.space, past.space)
    data = data_closeness(target, past)
    return round(version_factor(target.version, past.version) * (0.5 + 0.5 * data) * overlap, 6)


def version_factor(new: str | None, old: str | None) -> float:
    """1 for the same objective version, 0.5 for another, 0.8 when either is unknown."""
    if new is None or old is None:
        return 0.8
    return 1.0 if new == old else 0.5


def data_closeness(target: Target, past: StudyMemory) -> float:
    """1 for the same data fingerprint; else how close the keyword arguments are, in [0, 1]."""
    if target.fingerprint is not None and target.fingerprint == past.fingerprint:
        return 1.0
    return kwargs_closeness(target.kwargs, past.objective_kwargs)


def kwargs_closeness(new: dict[str, Any], old: dict[str, Any]) -> float:
    """The mean closeness of two studies' keyword arguments, key by key (1 when both empty)."""
    keys = set(new) | set(old)
    if not keys:
        return 1.0
    return sum(_value_closeness(new.get(k, _MISSING), old.get(k, _MISSING)) for k in keys) / len(
        keys
    )


_MISSING = object()


def _value_closeness(a: Any, b: Any) -> float:
    if a is _MISSING or b is _MISSING:
        return 0.5
    if _number(a) and _number(b):
        if a == b:
            return 1.0
        return 1.0 - abs(float(a) - float(b)) / (abs(float(a)) + abs(float(b)))
    return 1.0 if json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) else 0.0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def space_overlap(new: dict[str, ParamSpec], old: dict[str, ParamSpec]) -> float:
    """The mean overlap of two spaces' parameters over the union of their names, in [0, 1]."""
    names = set(new) | set(old)
    if not names:
        return 0.0
    shared = [param_overlap(new[n], old[n]) for n in names if n in new and n in old]
    return sum(shared) / len(names)


def param_overlap(new: ParamSpec, old: ParamSpec) -> float:
    """How much two definitions of one parameter overlap, in [0, 1]."""
    if isinstance(new, CategoricalParam) or isinstance(old, CategoricalParam):
        if not (isinstance(new, CategoricalParam) and isinstance(old, CategoricalParam)):
            return 0.0
        a = {json.dumps(c) for c in new.choices}
        b = {json.dumps(c) for c in old.choices}
        return len(a & b) / len(a | b)
    log = new.log or old.log
    lo_a, hi_a = _scaled(new.low, log), _scaled(new.high, log)
    lo_b, hi_b = _scaled(old.low, log), _scaled(old.high, log)
    union = max(hi_a, hi_b) - min(lo_a, lo_b)
    if union <= 0:  # both a single point
        return 1.0 if lo_a == lo_b else 0.0
    return max(0.0, min(hi_a, hi_b) - max(lo_a, lo_b)) / union


def _scaled(value: float, log: bool) -> float:
    # A log scale on a range reaching 0 or below (only possible on the non-log side) is
    # measured from a tiny positive floor.
    return math.log(max(value, 1e-300)) if log else float(value)


def rank_sources(
    target: Target,
    memories: list[StudyMemory],
    names: list[str] | None = None,
    min_similarity: float = MIN_SIMILARITY,
    max_sources: int = MAX_SOURCES,
) -> list[tuple[StudyMemory, float]]:
    """The past studies to learn from, most similar first, with their scores.

    `names` (a spec's explicit ``transfer`` list) restricts the candidates to those studies
    and takes them all, whatever their count, as long as they are comparable (score > 0).
    """
    if names is not None:
        wanted = set(names)
        scored = [(m, similarity(target, m)) for m in memories if m.study in wanted]
        return sorted(
            [(m, s) for m, s in scored if s > 0], key=lambda pair: (-pair[1], pair[0].study)
        )
    scored = [(m, similarity(target, m)) for m in memories]
    kept = [(m, s) for m, s in scored if s >= min_similarity and s > 0]
    kept.sort(key=lambda pair: (-pair[1], -(pair[0].finished_at or 0.0), pair[0].study))
    return kept[:max_sources]
