"""Cheap analytic objectives: closed-form functions with known minima.

They exist to exercise the daemon end to end (asking, dispatching, telling, sampler
convergence) without any machine learning in the way: each evaluation costs microseconds,
unless the study asks for a simulated cost with the ``sleep`` keyword argument. Their minima
are known exactly, so a test can check that a study converges towards them.

Both ignore ``ctx.fidelity``: there is no data to subsample.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any

from pydantic import Field

from hpod.workers.context import TrialContext
from hpod.workers.registry import ObjectiveKwargs

BRANIN_MINIMUM = 0.397887357729738
"""The global minimum of `branin`, reached at (-pi, 12.275), (pi, 2.275) and (9.42478, 2.475)."""


def quadratic(ctx: TrialContext, *, offset: float = 0.5, sleep: float = 0.0) -> float:
    """Sum of ``(x - offset) ** 2`` over every numeric parameter in ``ctx.params``; lower is better.

    The minimum is 0, reached when every numeric parameter equals ``offset``. Any number of
    parameters, with any names, may be searched; non-numeric parameters (strings, booleans,
    None) are ignored, so a space may mix in categorical parameters to test the samplers.

    Recommended search space: each parameter a float in [-2, 2] (or an int in [-5, 5]).

    Keyword arguments (the study's ``objective_kwargs``):
        offset: where the minimum lies in every coordinate (default 0.5).
        sleep: seconds to sleep before answering, to simulate an expensive trial (default 0).

    Raises ValueError when no parameter is numeric: an objective that is constant 0 would
    make a misconfigured study look perfectly solved.
    """
    _sleep(sleep)
    values = [
        float(v)
        for v in ctx.params.values()
        if isinstance(v, numbers.Real) and not isinstance(v, bool)
    ]
    if not values:
        raise ValueError(f"quadratic needs at least one numeric parameter, got {ctx.params!r}")
    centre = float(offset)
    return math.fsum((x - centre) ** 2 for x in values)


class QuadraticKwargs(ObjectiveKwargs):
    """`quadratic`'s keyword arguments: a finite offset, at most an hour of sleep."""

    offset: float = Field(default=0.5, ge=-1e9, le=1e9)
    sleep: float = Field(default=0.0, ge=0.0, le=3600.0)


class BraninKwargs(ObjectiveKwargs):
    """`branin`'s keyword arguments: at most an hour of sleep."""

    sleep: float = Field(default=0.0, ge=0.0, le=3600.0)


quadratic.hpod_kwargs = QuadraticKwargs  # type: ignore[attr-defined]


def branin(ctx: TrialContext, *, sleep: float = 0.0) -> float:
    """The Branin-Hoo function of ``x1`` and ``x2``; lower is better, minimum 0.397887.

    The classic two-dimensional benchmark with three global minima, at (-pi, 12.275),
    (pi, 2.275) and (9.42478, 2.475), all with value `BRANIN_MINIMUM`. Its largest values
    (about 308) are in the corner (-5, 0).

    Recommended search space: ``x1`` a float in [-5, 10], ``x2`` a float in [0, 15].

    Keyword arguments (the study's ``objective_kwargs``):
        sleep: seconds to sleep before answering, to simulate an expensive trial (default 0).

    Raises ValueError when ``x1`` or ``x2`` is missing or not a number.
    """
    _sleep(sleep)
    x1 = _number(ctx.params, "x1")
    x2 = _number(ctx.params, "x2")
    a = 1.0
    b = 5.1 / (4.0 * math.pi**2)
    c = 5.0 / math.pi
    r = 6.0
    s = 10.0
    t = 1.0 / (8.0 * math.pi)
    return a * (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1.0 - t) * math.cos(x1) + s


branin.hpod_kwargs = BraninKwargs  # type: ignore[attr-defined]


def _number(params: dict[str, Any], name: str) -> float:
    """The parameter `name` as a float, or a ValueError that names it."""
    value = params.get(name)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"parameter {name!r} must be a number, got {value!r}")
    return float(value)


def _sleep(seconds: float) -> None:
    """Simulate the cost of a real evaluation (no-op for 0)."""
    seconds = float(seconds)
    if seconds < 0:
        raise ValueError(f"sleep must be >= 0 seconds, got {seconds}")
    if seconds > 0:
        time.sleep(seconds)
