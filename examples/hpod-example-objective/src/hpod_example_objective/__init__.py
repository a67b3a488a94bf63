"""An hpod objective of your own: a random forest on scikit-learn's digits data.

hpod's workers call ``random_forest_digits(ctx, **objective_kwargs)`` for each trial:
``ctx.params`` holds the trial's parameters (the study's search space), ``ctx.subsample``
gives the share of rows the trial's fidelity allows, and the return value is what the study
minimises. Registered under the name ``example_forest`` by this distribution's entry point
(group ``hpod.objectives`` in pyproject.toml). See docs/objectives.md in hpod's repository.

The digits data (1797 8x8 images, 10 classes) ships inside scikit-learn: nothing is
downloaded, so every worker has it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score

from hpod.workers.context import TrialContext

__all__ = ["ForestKwargs", "random_forest_digits"]


class ForestKwargs(BaseModel):
    """The keyword arguments a study may pass (its ``objective_kwargs``), with bounds.

    Strict and closed: an unknown key, a string for a number or a fold count that would
    make one evaluation needlessly long is refused when the study is created.
    """

    model_config = ConfigDict(strict=True, extra="forbid")

    folds: int = Field(default=3, ge=2, le=10)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


def random_forest_digits(ctx: TrialContext, *, folds: int = 3, seed: int = 0) -> float:
    """The cross-validated error rate (1 - accuracy) of a random forest; lower is better.

    Parameters read from ``ctx.params`` (a suggested space in the README):

    - ``n_estimators``: int, [10, 100] (default 30)
    - ``max_depth``: int, [2, 20] (default 10)
    - ``max_features``: float, (0, 1] (default 0.3), the share of features per split
    - ``min_samples_leaf``: int, [1, 10] (default 1)

    Keyword arguments: ``folds`` stratified cross-validation folds, ``seed`` for the forest
    and the folds. Given the same parameters, keyword arguments and fidelity it returns the
    same value, which lets hpod's result cache serve a repeated configuration.
    """
    x, y = _digits()
    x, y = ctx.subsample(x, y, stratify=y)
    n_splits = min(folds, int(np.bincount(y).min()))
    if n_splits < 2:
        raise ValueError(f"fidelity {ctx.fidelity} leaves too few rows of a class for CV")
    model = RandomForestClassifier(
        n_estimators=int(ctx.params.get("n_estimators", 30)),
        max_depth=int(ctx.params.get("max_depth", 10)),
        max_features=float(ctx.params.get("max_features", 0.3)),
        min_samples_leaf=int(ctx.params.get("min_samples_leaf", 1)),
        random_state=seed,
        n_jobs=1,  # one trial per worker process: more threads only fight over the cores
    )
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return float(1.0 - np.mean(cross_val_score(model, x, y, cv=cv)))


# What hpod reads from the function (see docs/objectives.md):
# - its fidelity is the data size: hpod runs it on a ladder of data fractions (1/9, 1/3, all)
#   and stops losers early; only full-data values count as the trial's value;
# - its version is part of the result cache's key: change it whenever results would change;
# - the keyword arguments it accepts, checked when a study is created and before every call.
random_forest_digits.hpod_fidelity = "data"  # type: ignore[attr-defined]
random_forest_digits.hpod_version = "1"  # type: ignore[attr-defined]
random_forest_digits.hpod_kwargs = ForestKwargs  # type: ignore[attr-defined]


@lru_cache(maxsize=1)
def _digits() -> tuple[Any, Any]:
    """The digits data, loaded once per worker process."""
    data = load_digits()
    return data.data, data.target
