"""BBOB-style numeric test functions: shifted sphere, ellipsoid, Rosenbrock and Rastrigin.

After the noiseless functions of the COCO platform's BBOB suite (Hansen et al., "Real-parameter
black-box optimization benchmarking 2009: noiseless functions definitions"): each instance
moves the optimum to a point ``x_opt`` drawn from the instance seed in [-4, 4]^d, and the
value returned is the distance to the optimal value, ``f(x) - f_opt`` (0 at the optimum), so
targets such as 1e-2 read the same on every function. Parameters are ``x0`` … ``x{dim-1}``,
each in [-5, 5] (the suite's domain).

They cost microseconds: ``repeat`` evaluates the function that many times, so that a benchmark
can give an evaluation a measurable CPU cost (its compute is then proportional to evaluations,
as for a real expensive black box). No fidelity.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field

from hpod.workers.context import TrialContext
from hpod.workers.registry import ObjectiveKwargs

FunctionName = Literal["sphere", "ellipsoid", "rosenbrock", "rastrigin"]


def _sphere(z: np.ndarray) -> float:
    return float(np.sum(z * z))


def _ellipsoid(z: np.ndarray) -> float:
    d = len(z)
    weights = 10.0 ** (6.0 * np.arange(d) / max(d - 1, 1))
    return float(np.sum(weights * z * z))


def _rosenbrock(z: np.ndarray) -> float:
    # BBOB's f8 scales and moves z so that its optimum, z = 1, sits at x_opt.
    z = max(1.0, np.sqrt(len(z)) / 8.0) * z + 1.0
    return float(np.sum(100.0 * (z[:-1] ** 2 - z[1:]) ** 2 + (z[:-1] - 1.0) ** 2))


def _rastrigin(z: np.ndarray) -> float:
    d = len(z)
    return float(10.0 * (d - np.sum(np.cos(2.0 * np.pi * z))) + np.sum(z * z))


FUNCTIONS: dict[str, Callable[[np.ndarray], float]] = {
    "sphere": _sphere,
    "ellipsoid": _ellipsoid,
    "rosenbrock": _rosenbrock,
    "rastrigin": _rastrigin,
}


class BbobKwargs(ObjectiveKwargs):
    """`bbob`'s keyword arguments."""

    function: FunctionName = "sphere"
    dim: int = Field(default=5, ge=1, le=40)
    instance: int = Field(default=1, ge=0, le=2**32 - 1)
    repeat: int = Field(default=1, ge=1, le=100_000)


def bbob(
    ctx: TrialContext,
    *,
    function: str = "sphere",
    dim: int = 5,
    instance: int = 1,
    repeat: int = 1,
) -> float:
    """``f(x) - f_opt`` of the shifted BBOB-style `function` at ``x0`` … ``x{dim-1}``.

    Keyword arguments: ``function`` (sphere, ellipsoid, rosenbrock, rastrigin), ``dim``
    (5), ``instance`` (1; the seed of the optimum's position) and ``repeat`` (1; evaluations
    per call, for a measurable cost). A parameter ``x{i}`` missing from the space counts 0.
    """
    fn = FUNCTIONS[function]
    x = np.array([float(ctx.params.get(f"x{i}", 0.0)) for i in range(int(dim))])
    z = x - _optimum(int(dim), int(instance))
    value = 0.0
    for _ in range(int(repeat)):
        value = fn(z)
    return value


bbob.hpod_kwargs = BbobKwargs  # type: ignore[attr-defined]


@lru_cache(maxsize=64)
def _optimum(dim: int, instance: int) -> np.ndarray:
    """The instance's optimum, in [-4, 4]^dim; read-only."""
    x_opt = np.random.default_rng(instance).uniform(-4.0, 4.0, size=dim)
    x_opt.flags.writeable = False
    return x_opt
