"""Support-vector classifiers: the breast-cancer set (small, conditional space) and a
generated one whose size makes the data fraction pay.

``load_breast_cancer`` ships inside scikit-learn (569 rows, 30 features), so nothing is
downloaded. The space is the textbook one — ``C`` and ``gamma`` on log scales, a categorical
``kernel`` and a ``degree`` that only matters for the polynomial kernel — which makes it a
good test of conditional parameters and of the samplers on log scales. A 5-fold
cross-validation takes a few hundredths of a second.

The fidelity is the share of rows given to the cross-validation.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from hpod.workers.context import TrialContext
from hpod.workers.objectives._generated import Split, classification_split
from hpod.workers.objectives.gradient_boosting import DataKwargs
from hpod.workers.registry import ObjectiveKwargs

if TYPE_CHECKING:  # for annotations only: sklearn is imported where it is used
    from sklearn.svm import SVC

KERNELS = ("rbf", "linear", "poly")
GAMMA_NAMES = ("scale", "auto")


def svc_breast_cancer(ctx: TrialContext, *, folds: int = 5, seed: int = 0) -> float:
    """One minus the mean cross-validated accuracy of a scaled SVC; lower is better.

    Parameters read from ``ctx.params`` and the recommended search space:

    - ``C``: float, log, [1e-3, 1e3] (default 1.0)
    - ``gamma``: float, log, [1e-4, 10], or ``"scale"`` / ``"auto"`` (default ``"scale"``);
      ignored by the linear kernel
    - ``kernel``: categorical ``"rbf"``, ``"linear"``, ``"poly"`` (default ``"rbf"``)
    - ``degree``: int, [2, 5] (default 3), only used with ``kernel == "poly"`` — give it a
      condition on ``kernel`` in the space

    Good settings (e.g. C=1, gamma="scale"; or C=10, gamma=0.01) score about 0.02;
    C=1e-4, or gamma >= 1 with the rbf kernel, predicts the majority class and scores 0.37.

    Keyword arguments (the study's ``objective_kwargs``): ``folds`` (5) — the number of
    stratified folds, reduced automatically when a low fidelity leaves too few rows of a
    class — and ``seed`` (0), which shuffles the folds.

    Raises ValueError for an unknown kernel or gamma name, and when the fidelity leaves
    fewer than two rows of some class.
    """
    # Imported here: the daemon imports this module for its declared kwargs, never sklearn.
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _data()
    x, y = ctx.subsample(x, y, stratify=y)
    n_splits = min(int(folds), int(np.bincount(y).min()))
    if n_splits < 2:
        raise ValueError(
            f"fidelity {ctx.fidelity} leaves {len(y)} rows, too few to cross-validate every "
            "class; use a higher minimum fidelity"
        )
    model = make_pipeline(StandardScaler(), _svc(ctx.params))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=int(seed))
    scores = cross_val_score(model, x, y, cv=cv, error_score="raise")
    return float(1.0 - np.mean(scores))


svc_breast_cancer.hpod_fidelity = "data"  # type: ignore[attr-defined]


class BreastCancerKwargs(ObjectiveKwargs):
    """`svc_breast_cancer`'s keyword arguments."""

    folds: int = Field(default=5, ge=2, le=20)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


class SyntheticKwargs(DataKwargs):
    """`svc_synthetic`'s keyword arguments (a kernel SVC's fit grows about quadratically
    with the rows: fewer than for gradient boosting)."""

    n_samples: int = Field(default=6000, ge=20, le=50_000)
    n_informative: int = Field(default=10, ge=1, le=500)
    flip_y: float = Field(default=0.05, ge=0.0, le=1.0)


svc_breast_cancer.hpod_kwargs = BreastCancerKwargs  # type: ignore[attr-defined]


def _svc(params: dict[str, Any]) -> SVC:
    """The SVC that `params` describe, with checked kernel and gamma."""
    from sklearn.svm import SVC

    kernel = str(params.get("kernel", "rbf"))
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    gamma: str | float = params.get("gamma", "scale")
    if isinstance(gamma, str):
        if gamma not in GAMMA_NAMES:
            raise ValueError(f"gamma must be a positive number or one of {GAMMA_NAMES}")
    else:
        gamma = float(gamma)
    return SVC(
        C=float(params.get("C", 1.0)),
        gamma=gamma,
        kernel=kernel,
        degree=int(params.get("degree", 3)),
    )


@lru_cache(maxsize=1)
def _data() -> tuple[np.ndarray, np.ndarray]:
    """The breast-cancer features and labels, loaded once per process and read-only."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x, y = np.asarray(x), np.asarray(y)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def svc_synthetic(
    ctx: TrialContext,
    *,
    n_samples: int = 6000,
    n_features: int = 20,
    n_informative: int = 10,
    flip_y: float = 0.05,
    validation_fraction: float = 0.25,
    seed: int = 0,
) -> float:
    """Validation error rate of an RBF (or other kernel) SVC on a generated data set.

    Parameters read from ``ctx.params``: ``C`` (float, log, [1e-2, 1e3]), ``gamma`` (float,
    log, [1e-4, 1], or "scale"/"auto"), optionally ``kernel`` and ``degree`` as in
    `svc_breast_cancer`. Lower is better.

    Where `svc_breast_cancer` is small, this one is a data set where the data fraction pays:
    a kernel SVC's fit grows faster than linearly with the rows (about quadratically), so a
    ninth of the training rows costs far less than a ninth of the time. The validation rows
    never change with the fidelity, so scores at every fidelity measure the same thing.

    Keyword arguments describe the data (``make_classification``): ``n_samples`` (6000),
    ``n_features`` (20), ``n_informative`` (10), ``flip_y`` (0.05, label noise),
    ``validation_fraction`` (0.25) and ``seed`` (0).
    """
    x_train, x_val, y_train, y_val = _synthetic(
        int(n_samples),
        int(n_features),
        int(n_informative),
        float(flip_y),
        float(validation_fraction),
        int(seed),
    )
    x_train, y_train = ctx.subsample(x_train, y_train, stratify=y_train)
    model = _svc(ctx.params).fit(x_train, y_train)
    return float(np.mean(model.predict(x_val) != y_val))


svc_synthetic.hpod_fidelity = "data"  # type: ignore[attr-defined]
svc_synthetic.hpod_kwargs = SyntheticKwargs  # type: ignore[attr-defined]


@lru_cache(maxsize=4)
def _synthetic(
    n_samples: int,
    n_features: int,
    n_informative: int,
    flip_y: float,
    validation_fraction: float,
    seed: int,
) -> Split:
    """The generated, standardised data set split into train and validation; built once."""
    x_train, x_val, y_train, y_val = classification_split(
        n_samples, n_features, n_informative, 2, flip_y, validation_fraction, seed
    )
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    parts = (scaler.transform(x_train), scaler.transform(x_val), y_train, y_val)
    for array in parts:
        array.flags.writeable = False
    return parts
