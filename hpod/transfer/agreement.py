"""Does a past study's response surface agree with what the new study is finding?

Each complete trial of the new study is looked up in the past study's surface: the rank of
the nearest past configuration (nearest-neighbour prediction) is what the past study
predicts for it (the mean rank of the `NEIGHBOURS` nearest: one neighbour alone is a noisy
guess). The Spearman correlation (`hpod.ranks`) between those predicted ranks and the new
trials' values (oriented so that lower is better, first objective) measures agreement: near
1 the two studies order configurations alike; at or below 0 the past is no guide.

Once at least `MIN_PAIRS` trials are compared there are two verdicts, because a correlation
measured over a dozen trials is noisy (its spread under no relation is about 1/sqrt(n - 1)):

- **doubtful**: the correlation is below `MIN_AGREEMENT` (0). The source is paused, not
  dropped: its held configurations wait and its prior leaves the sampler, until the
  correlation is back at or above 0;
- **disagrees**: the correlation is below -`critical(n)`, a one-sided bound at the 5 % level
  that shrinks as n grows (-0.62 at 8 trials, -0.41 at 17, -0.24 at 48). The source stops
  being used for good: its waiting trials are dropped.

A third verdict, **supports**:, the correlation at or above `support(n)` (`SUPPORT_Z` /
sqrt(n - 1): +0.32 at 8 trials), a one-sided bound of positive relation. Only a supporting
source's held configurations are enqueued (`hpod.daemon.transfer`): under no relation a
source passes it in about one study of five, where "rho >= 0" let one in every other one.

The trials judged must be the study's own (not transferred): a source's transferred best
configurations sit where its surface ranks best and, on related data, do well, so counting
them makes a source agree by construction; the bound assumes trials the source did not pick.

A related source whose correlation dips to -0.05 after 11 trials is paused, not lost; an
unrelated one loses its influence at the first verdict and is dropped once that is clear.

Distances are measured in the new space: each numeric parameter scaled to [0, 1] over its
new range (on a log scale for a log parameter) and clipped there; a categorical parameter
adds 1 when the values differ; a parameter only one side has adds 0.25 (unknown, not far).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpod.ranks import spearman
from hpod.schema import CategoricalParam, ParamSpec

#: Trials compared before a past study may be judged.
MIN_PAIRS = 8
#: A past study whose correlation falls below this (once MIN_PAIRS are compared) disagrees.
MIN_AGREEMENT = 0.0
#: The one-sided normal quantile of `critical` (5 %).
DISAGREEMENT_Z = 1.645
#: The one-sided normal quantile of `support` (20 %; chosen on validation sequences, see
#: docs/benchmarks.md "Transfer").
SUPPORT_Z = 0.84
#: Nearest surface configurations whose mean past rank is the prediction.
NEIGHBOURS = 3
#: What a parameter only one side has adds to the squared distance.
MISSING_DISTANCE = 0.25


@dataclass(frozen=True)
class Agreement:
    """The verdict on one past study: its correlation (None while it cannot be computed),
    the pairs compared, whether it disagrees (for good), whether it is doubtful (for now: a
    disagreeing source is doubtful too) and whether it supports (its held configurations
    may be enqueued)."""

    correlation: float | None
    pairs: int
    disagrees: bool
    doubtful: bool = False
    supports: bool = False


def critical(n: int) -> float:
    """How far below 0 Spearman's rho over `n` pairs must fall to be a disagreement, not
    noise: the one-sided 5 % bound of rho under no relation, z / sqrt(n - 1)."""
    return DISAGREEMENT_Z / math.sqrt(max(1, n - 1))


def support(n: int, z: float = SUPPORT_Z) -> float:
    """How far above 0 Spearman's rho over `n` pairs must be to support a source: the
    one-sided bound z / sqrt(n - 1) of rho under no relation."""
    return z / math.sqrt(max(1, n - 1))


def predict_ranks(
    surface: Sequence[tuple[dict[str, Any], float]],
    points: Sequence[dict[str, Any]],
    space: dict[str, ParamSpec],
    neighbours: int = NEIGHBOURS,
) -> list[float]:
    """The mean past rank of the `neighbours` nearest surface configurations to each of
    `points`."""
    if not surface:
        return [math.nan] * len(points)
    past = [_coords(params, space) for params, _ in surface]
    past_ranks = np.array([rank for _, rank in surface], dtype=float)
    out = []
    for point in points:
        here = _coords(point, space)
        distances = np.array([_distance(here, there) for there in past])
        nearest = np.argsort(distances, kind="stable")[:neighbours]
        out.append(float(np.mean(past_ranks[nearest])))
    return out


def _coords(params: dict[str, Any], space: dict[str, ParamSpec]) -> dict[str, Any]:
    """A configuration in the new space's unit coordinates (categoricals as JSON keys)."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if name not in params:
            continue
        value = params[name]
        if isinstance(spec, CategoricalParam):
            out[name] = json.dumps(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = _unit(float(value), spec.low, spec.high, spec.log)
    return out


def _unit(value: float, low: float, high: float, log: bool) -> float:
    if high <= low:
        return 0.0
    if log:
        value, low, high = (math.log(max(v, 1e-300)) for v in (value, low, high))
    return min(max((value - low) / (high - low), 0.0), 1.0)


def _distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    total = 0.0
    for name in a.keys() | b.keys():
        if name not in a or name not in b:
            total += MISSING_DISTANCE
        elif isinstance(a[name], str) or isinstance(b[name], str):
            total += 0.0 if a[name] == b[name] else 1.0
        else:
            total += (a[name] - b[name]) ** 2
    return total


def agreement(
    surface: Sequence[tuple[dict[str, Any], float]],
    observed: Sequence[tuple[dict[str, Any], float]],
    space: dict[str, ParamSpec],
    minimize: bool = True,
    min_pairs: int = MIN_PAIRS,
    min_agreement: float = MIN_AGREEMENT,
) -> Agreement:
    """Compare the new study's (params, value) pairs with a past surface (see the module)."""
    if not surface:
        return Agreement(None, len(observed), False)
    predicted = predict_ranks(surface, [params for params, _ in observed], space)
    values = [value if minimize else -value for _, value in observed]
    return judge(predicted, values, min_pairs, min_agreement)


def judge(
    predicted: Sequence[float],
    values: Sequence[float],
    min_pairs: int = MIN_PAIRS,
    min_agreement: float = MIN_AGREEMENT,
    support_z: float = SUPPORT_Z,
) -> Agreement:
    """The verdict from past ranks predicted for the new trials and the new trials' values
    (lower is better), pair by pair."""
    correlation = _spearman(list(predicted), list(values))
    n = len(values)
    if correlation is None or n < min_pairs:
        return Agreement(correlation, n, False, False)
    disagrees = correlation < min(min_agreement, -critical(n))
    doubtful = disagrees or correlation < min_agreement
    supports = not doubtful and correlation >= support(n, support_z)
    return Agreement(correlation, n, disagrees, doubtful, supports)


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho, or None when it is undefined (a constant side)."""
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    rho = spearman(a, b)
    return None if math.isnan(rho) else round(rho, 4)
