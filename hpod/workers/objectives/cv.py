"""An RBF SVC scored by k-fold cross-validation, reporting one value per fold.

The most common ML objective averages a score over cross-validation folds. Declared with
``hpod_fidelity = "folds"``, it visits the folds in the trial's own shuffled order
(`TrialContext.folds`) and reports each fold's error (`TrialContext.report_fold`), so the
mode's fold rule (`hpod.pruners.FoldPruner`) stops a clearly worse trial after two
or three of its folds instead of paying for all of them.

The data set is generated (``make_classification``, a few thousand rows, label noise): a fit
takes a few tenths of a second, and a 5-fold trial about a second.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from pydantic import Field, model_validator

from hpod.workers.context import TrialContext
from hpod.workers.objectives.svc import _svc
from hpod.workers.registry import ObjectiveKwargs

#: Most cells (rows x features) of the generated data set: one fit stays within seconds.
MAX_CELLS = 400_000


class CVKwargs(ObjectiveKwargs):
    """`svc_cv`'s keyword arguments, bounded."""

    n_samples: int = Field(default=3000, ge=40, le=20_000)
    n_features: int = Field(default=20, ge=2, le=200)
    n_informative: int = Field(default=8, ge=2, le=198)
    flip_y: float = Field(default=0.05, ge=0.0, le=1.0)
    folds: int = Field(default=5, ge=2, le=50)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _fits(self) -> CVKwargs:
        if self.n_samples * self.n_features > MAX_CELLS:
            raise ValueError(f"n_samples x n_features must be at most {MAX_CELLS:,}")
        if self.n_informative + 2 > self.n_features:  # make_classification adds 2 redundant
            raise ValueError("n_informative must be at most n_features - 2")
        return self


def svc_cv(
    ctx: TrialContext,
    *,
    n_samples: int = 3000,
    n_features: int = 20,
    n_informative: int = 8,
    flip_y: float = 0.05,
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Mean cross-validated error rate of an SVC on a generated data set; lower is better.

    Parameters read from ``ctx.params`` (recommended space): ``C`` (float, log, [1e-2, 1e3]),
    ``gamma`` (float, log, [1e-4, 1]), optionally ``kernel`` and ``degree`` as in
    `svc_breast_cancer`. Keyword arguments: the data (``n_samples`` 3000, ``n_features`` 20,
    ``n_informative`` 8, ``flip_y`` 0.05), ``folds`` (5, stratified) and ``seed`` (0: the
    data and the folds).

    Each fold's error is reported at the fold's index; a pruned trial stops between folds.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, splits = _folds(
        int(n_samples), int(n_features), int(n_informative), float(flip_y), int(folds), int(seed)
    )
    for fold in ctx.folds(len(splits)):
        train, test = splits[fold]
        model = make_pipeline(StandardScaler(), _svc(ctx.params)).fit(x[train], y[train])
        ctx.report_fold(fold, float(np.mean(model.predict(x[test]) != y[test])))
    return ctx.fold_mean()


svc_cv.hpod_fidelity = "folds"  # type: ignore[attr-defined]
svc_cv.hpod_kwargs = CVKwargs  # type: ignore[attr-defined]


@lru_cache(maxsize=4)
def _folds(
    n_samples: int, n_features: int, n_informative: int, flip_y: float, folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The data set and its stratified folds, built once per process."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import StratifiedKFold

    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        flip_y=flip_y,
        random_state=seed,
    )
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y))
    for array in (x, y):
        array.flags.writeable = False
    return x, y, splits
