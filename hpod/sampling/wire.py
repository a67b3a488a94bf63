"""What the daemon and its sampler process say to each other: one JSON object a line.

A request carries everything the GP needs and nothing else, so the process keeps no state
between requests and a restarted one answers exactly as the old one would have: the
study's directions, the search space (Optuna's own distribution JSON), and for each trial
that counts (complete, or running with all its parameters) its state, its parameters in
Optuna's internal representation (floats, a categorical as its index) in the space's order
and its values. Never pickle: the process is a separate program reading text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from math import isfinite
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.trial import FrozenTrial, TrialState

#: The version of the exchange; a process that answers another one is restarted.
PROTOCOL = 1
#: A value this share of its range outside the bounds is float round-off, put back inside.
ROUND_OFF = 1e-9


class WireError(ValueError):
    """A message that does not follow the protocol."""


def request(
    directions: Sequence[str],
    space: dict[str, BaseDistribution],
    trials: Sequence[FrozenTrial],
    seed: int | None,
) -> dict[str, Any]:
    """The request for the next point of a study with `trials` over `space`."""
    names = list(space)
    rows = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.RUNNING):
            continue
        if not all(name in t.params for name in names):
            continue  # a running trial not yet suggested, or outside the space
        if t.state == TrialState.COMPLETE and not t.values:
            continue
        rows.append(
            {
                "state": t.state.name,
                "x": [space[name].to_internal_repr(t.params[name]) for name in names],
                "values": list(t.values) if t.state == TrialState.COMPLETE else None,
            }
        )
    return {
        "v": PROTOCOL,
        "directions": list(directions),
        "space": {name: distribution_to_json(d) for name, d in space.items()},
        "trials": rows,
        "seed": seed,
    }


def encode(message: dict[str, Any]) -> bytes:
    """One line of JSON (non-finite values, which Optuna allows, as JSON5-style literals)."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The message on one line; `WireError` if it is not a JSON object."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise WireError("not a JSON object")
    return message


def read_space(raw: Any) -> dict[str, BaseDistribution]:
    """The search space of a request."""
    if not isinstance(raw, dict):
        raise WireError("space: not an object")
    return {str(name): json_to_distribution(str(text)) for name, text in raw.items()}


def external(space: dict[str, BaseDistribution], internal: Any) -> dict[str, Any]:
    """Parameters answered in internal representation, as Optuna's external values: every
    name of `space` must be there with a finite number, which is snapped to its grid (an
    integer, a step) so that float round-off never leaves a value outside it."""
    if not isinstance(internal, dict) or set(internal) != set(space):
        raise WireError("params: not the names of the space")
    params = {}
    for name, dist in space.items():
        value = internal[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not isfinite(value):
            raise WireError(f"params.{name}: not a finite number")
        snapped = _snap(dist, float(value))
        if not dist._contains(snapped):
            raise WireError(f"params.{name}: {value!r} is outside its distribution")
        params[name] = dist.to_external_repr(snapped)
    return params


def _snap(dist: BaseDistribution, value: float) -> float:
    """`value` on `dist`'s grid: a choice's index, a multiple of the step from low."""
    if isinstance(dist, CategoricalDistribution):
        return float(round(value))
    if isinstance(dist, IntDistribution | FloatDistribution) and dist.step is not None:
        k = round((value - dist.low) / dist.step)
        value = dist.low + k * dist.step
        if isinstance(dist, IntDistribution):
            value = float(round(value))
    if isinstance(dist, IntDistribution | FloatDistribution):
        slack = ROUND_OFF * (dist.high - dist.low)
        if dist.low - slack <= value <= dist.high + slack:  # round-off, not a wrong answer
            return min(max(value, dist.low), dist.high)
    return value
