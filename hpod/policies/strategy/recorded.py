"""Recorded real runs of shipped objectives: configuration x fidelity -> value, CPU seconds.

The held-out suite judges the strategy policy on real objectives with real costs, not on a
modelled cost. Running the objectives inside every benchmark study would cost hours and give
a different figure on every busy machine, so each objective is run once on a grid of
configurations (every grid point at every fidelity a strategy can ask for: the data ladder's
rungs, or every epoch) and the values and the measured process CPU are stored compressed in
``hpod/data/strategy/recorded.json.gz``. A study then asks any configuration of the
objective's declared space and gets the value and the CPU of the nearest grid point
(per parameter, on the log scale where the parameter is log): a tabular benchmark in the
manner of HPOBench's, with the objective's real landscape, its real per-configuration cost
spread and its real fixed overhead.

From the same rows, `fit_cost` fits the cost model the synthetic tasks of the training and
validation suites charge (`costs.CostModel`): fixed overhead, exponent in the data fraction
and the spread of full-fit cost across configurations.

    python -m hpod.policies.strategy.recorded          # records every objective (~10 min)
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hpod.policies.strategy.actions import THIRDS, Fidelity

PATH = Path(__file__).resolve().parents[2] / "data" / "strategy" / "recorded.json.gz"


@dataclass(frozen=True)
class Recording:
    """How one shipped objective is recorded: its grid, its fidelity, its data."""

    name: str
    objective: str
    fidelity: Fidelity
    #: Parameter -> grid values (numbers or categories), and which numeric ones are log.
    grid: dict[str, list[Any]]
    log: frozenset[str]
    kwargs: dict[str, Any]
    #: Parameters that apply only under a choice: param -> (parent, values).
    conditions: dict[str, tuple[str, list[Any]]] | None = None
    epochs: int = 0


RECORDINGS: tuple[Recording, ...] = (
    Recording(
        "rf_data",
        "random_forest",
        "data",
        {
            "n_estimators": [10, 25, 60, 150],
            "max_depth": [2, 4, 8, 16, 32],
            "min_samples_leaf": [1, 4, 16, 64],
            "max_features": [0.1, 0.3, 0.6, 1.0],
        },
        frozenset({"n_estimators", "max_depth", "min_samples_leaf"}),
        {"n_samples": 3000},
    ),
    Recording(
        "hgb_data",
        "gradient_boosting",
        "data",
        {
            "learning_rate": [0.01, 0.03, 0.1, 0.3],
            "max_iter": [20, 60, 150],
            "max_leaf_nodes": [4, 16, 64],
            "min_samples_leaf": [2, 10, 50],
        },
        frozenset({"learning_rate", "max_leaf_nodes", "min_samples_leaf"}),
        {"n_samples": 3000},
    ),
    Recording(
        "pipeline_data",
        "model_choice",
        "data",
        {
            "model": ["logreg", "knn", "svc", "tree"],
            "scale": [True, False],
            "logreg_C": [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3],
            "knn_k": [1, 3, 10, 30, 100],
            "knn_weights": ["uniform", "distance"],
            "svc_C": [1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3],
            "svc_gamma": [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
            "tree_depth": [1, 3, 6, 12, 30],
            "tree_min_leaf": [1, 4, 16, 100],
        },
        frozenset({"logreg_C", "knn_k", "svc_C", "svc_gamma", "tree_min_leaf"}),
        {"n_samples": 3000},
        {
            "logreg_C": ("model", ["logreg"]),
            "knn_k": ("model", ["knn"]),
            "knn_weights": ("model", ["knn"]),
            "svc_C": ("model", ["svc"]),
            "svc_gamma": ("model", ["svc"]),
            "tree_depth": ("model", ["tree"]),
            "tree_min_leaf": ("model", ["tree"]),
        },
    ),
    Recording(
        "mlp_epochs",
        "mlp_digits",
        "epochs",
        {
            "lr": [1e-4, 1e-3, 3e-3, 1e-2, 5e-2],
            "hidden": [16, 64, 256],
            "layers": [1, 2, 3],
            "dropout": [0.0, 0.25, 0.5],
        },
        frozenset({"lr", "hidden"}),
        {"epochs": 10},
        epochs=10,
    ),
)


def configurations(rec: Recording) -> Iterator[dict[str, Any]]:
    """Every grid point of `rec` (only the parameters that apply under its choices)."""
    roots = [p for p in rec.grid if not rec.conditions or p not in rec.conditions]
    for values in itertools.product(*(rec.grid[p] for p in roots)):
        base = dict(zip(roots, values, strict=True))
        children = [
            p
            for p, (parent, allowed) in (rec.conditions or {}).items()
            if base.get(parent) in allowed
        ]
        for more in itertools.product(*(rec.grid[p] for p in children)):
            yield base | dict(zip(children, more, strict=True))


def key(params: dict[str, Any]) -> str:
    """A grid point as a stable string."""
    return json.dumps(sorted(params.items()), default=str)


class _Curve:
    """A reporter that keeps each report's value and the process CPU when it came."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float, float]] = []

    def report(self, value: float, step: int) -> None:
        self.points.append((step, float(value), time.process_time()))

    def should_prune(self) -> bool:
        return False


def _objective(name: str) -> Callable[..., float]:
    from hpod.workers.objectives import forest, gradient_boosting, mlp, pipeline

    table: dict[str, Callable[..., float]] = {
        "random_forest": forest.random_forest,
        "gradient_boosting": gradient_boosting.gradient_boosting,
        "model_choice": pipeline.model_choice,
        "mlp_digits": mlp.mlp_digits,
    }
    return table[name]


def record_one(rec: Recording, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run `rec`'s objective on its whole grid; one row per grid point with, by fidelity,
    the value and the CPU seconds of that evaluation (epochs: cumulative, one run)."""
    from hpod.workers.context import TrialContext

    fn = _objective(rec.objective)
    first = next(configurations(rec))
    fn(TrialContext(first, 1.0), **rec.kwargs)  # warm-up: data generation, imports
    rows = []
    started = time.time()
    for i, params in enumerate(configurations(rec)):
        row: dict[str, Any] = {"params": params, "values": {}, "cpu": {}}
        if rec.fidelity == "epochs":
            curve = _Curve()
            begin = time.process_time()
            fn(TrialContext(params, 1.0, curve), **rec.kwargs)
            for step, value, at in curve.points:
                row["values"][str(step)] = value
                row["cpu"][str(step)] = at - begin
        else:
            for fraction in THIRDS:
                begin = time.process_time()
                value = fn(TrialContext(params, fraction), **rec.kwargs)
                row["values"][f"{fraction:.4f}"] = float(value)
                row["cpu"][f"{fraction:.4f}"] = time.process_time() - begin
        rows.append(row)
        if i % 25 == 0:
            log(f"{rec.name}: {i + 1} configurations, {time.time() - started:.0f} s")
    return rows


def record(path: Path = PATH, names: list[str] | None = None) -> None:
    """Record every objective (or those named) and write them, compressed, to `path`."""
    try:
        import torch

        torch.set_num_threads(1)  # process CPU = one core's work, as a worker runs it
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    stored = load(path) if path.exists() else {}
    for rec in RECORDINGS:
        if names and rec.name not in names:
            continue
        stored[rec.name] = {"objective": rec.objective, "rows": record_one(rec)}
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same rows give the same bytes.
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(json.dumps(stored, sort_keys=True).encode())


@cache
def load(path: Path = PATH) -> dict[str, Any]:
    """The stored recordings by name."""
    with gzip.open(path, "rb") as f:
        data: dict[str, Any] = json.loads(f.read())
    return data


def by_name(name: str) -> Recording:
    return next(r for r in RECORDINGS if r.name == name)


def nearest(rec: Recording, params: dict[str, Any]) -> dict[str, Any]:
    """The grid point nearest `params`, parameter by parameter."""
    out = {}
    for p, value in params.items():
        grid = rec.grid[p]
        if not isinstance(grid[0], int | float) or isinstance(grid[0], bool):
            out[p] = value
            continue
        scale: Callable[[float], float] = math.log if p in rec.log else float
        out[p] = min(grid, key=lambda g: abs(scale(float(g)) - scale(float(value))))
    return out


@cache
def table(name: str) -> dict[str, dict[str, Any]]:
    """The recorded rows of `name` by grid point."""
    return {key(row["params"]): row for row in load()[name]["rows"]}


def lookup(name: str, params: dict[str, Any], fidelity: float) -> tuple[float, float]:
    """(value, CPU seconds) of the grid point nearest `params` at `fidelity` (a ladder rung,
    or epochs / total epochs; for epochs the CPU is that of the run up to this epoch)."""
    rec = by_name(name)
    row = table(name)[key(nearest(rec, params))]
    if rec.fidelity == "epochs":
        step = str(max(1, round(fidelity * rec.epochs)))
        return float(row["values"][step]), float(row["cpu"][step])
    rung = min(THIRDS, key=lambda f: abs(f - fidelity))
    return float(row["values"][f"{rung:.4f}"]), float(row["cpu"][f"{rung:.4f}"])


def space(rec: Recording) -> dict[str, Any]:
    """The declared search space of a recording (the samplers search it, not the grid)."""
    out: dict[str, Any] = {}
    for p, grid in rec.grid.items():
        if isinstance(grid[0], bool) or not isinstance(grid[0], int | float):
            spec: dict[str, Any] = {"type": "categorical", "choices": grid}
        elif all(isinstance(g, int) for g in grid):
            spec = {"type": "int", "low": min(grid), "high": max(grid), "log": p in rec.log}
        else:
            spec = {"type": "float", "low": min(grid), "high": max(grid), "log": p in rec.log}
        if rec.conditions and p in rec.conditions:
            parent, values = rec.conditions[p]
            spec["condition"] = {"param": parent, "values": values}
        out[p] = spec
    return out


def main(argv: list[str]) -> int:
    record(names=argv or None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
