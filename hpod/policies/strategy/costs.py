"""Cost models of evaluations, fitted from the measured CPU of shipped objectives.

A simulated evaluation of configuration x at fidelity f (a data fraction, or the share of
the epochs run) costs, in CPU seconds,

    cost(x, f) = unit * k(x) * (overhead + (1 - overhead) * f ** exponent)

- ``unit``: the median CPU of a full evaluation over the recorded configurations;
- ``k(x)``: the configuration's own factor, log-normal with the spread measured across
  configurations (the same configuration always gets the same factor);
- ``overhead``: the share of a full evaluation paid at any fidelity (data loading, set-up,
  prediction on fixed validation rows): a ninth of the data is not a ninth of the CPU;
- ``exponent``: how the rest grows with the fidelity.

`fit` takes them from recorded real runs (`recorded.py`): the overhead and exponent that
best explain each configuration's cost ratios between fidelities (least squares on logs),
the spread as the standard deviation of the log full cost. The simulator charges CPU seconds,
so the ``log_cost`` and ``cost_spread`` features mean in training what they mean in the
daemon (which reads the CPU its workers measured).
"""

from __future__ import annotations

import math
import statistics
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CostModel:
    """Cost in CPU seconds of an evaluation by configuration and fidelity."""

    unit: float
    overhead: float
    exponent: float
    spread: float
    source: str = "assumed"

    def factor(self, params: dict[str, Any]) -> float:
        """The configuration's own cost factor (deterministic: a hash of the params)."""
        if not self.spread:
            return 1.0
        seed = zlib.crc32(repr(sorted(params.items())).encode())
        z = float(np.random.default_rng(seed).normal())
        return float(math.exp(self.spread * z - self.spread**2 / 2))  # mean factor 1

    def cost(self, params: dict[str, Any], fidelity: float) -> float:
        """CPU seconds of evaluating `params` at `fidelity` in (0, 1]."""
        share = self.overhead + (1 - self.overhead) * float(fidelity) ** self.exponent
        return float(self.unit * self.factor(params) * share)

    def as_fn(self) -> Callable[[dict[str, Any], float], float]:
        return self.cost


def fit(rows: list[dict[str, Any]], source: str) -> CostModel:
    """The cost model that best explains recorded rows ({"cpu": {fidelity: seconds}})."""
    points: list[tuple[float, float]] = []  # (fidelity, cost / full cost)
    fulls = []
    for row in rows:
        cpu = {float(f): float(c) for f, c in row["cpu"].items()}
        top = max(cpu)
        if cpu[top] <= 0:
            continue
        fulls.append(cpu[top])
        points += [(f / top, c / cpu[top]) for f, c in cpu.items() if f < top and c > 0]
    best = (math.inf, 0.0, 1.0)
    for overhead in np.linspace(0.0, 0.9, 91):
        for exponent in np.linspace(0.2, 2.5, 47):
            share = overhead + (1 - overhead) * np.array([f for f, _ in points]) ** exponent
            err = float(np.sum((np.log(share) - np.log([r for _, r in points])) ** 2))
            if err < best[0]:
                best = (err, float(overhead), float(exponent))
    logs = [math.log(c) for c in fulls]
    return CostModel(
        unit=float(statistics.median(fulls)),
        overhead=round(best[1], 3),
        exponent=round(best[2], 3),
        spread=round(statistics.pstdev(logs), 3),
        source=source,
    )


@cache
def fitted(name: str) -> CostModel:
    """The cost model fitted on the recorded runs of `name` (see `recorded.RECORDINGS`)."""
    from hpod.policies.strategy import recorded

    return fit(recorded.load()[name]["rows"], f"fitted on recorded {name}")


def full_spread(rows: list[dict[str, Any]]) -> float:
    """Ratio of the dearest to the cheapest full evaluation among the recorded rows."""
    fulls = [max(row["cpu"].items(), key=lambda kv: float(kv[0]))[1] for row in rows]
    return float(max(fulls)) / max(1e-9, float(min(fulls)))
