"""A linear model trained by stochastic gradient descent, pass by pass: a resumable objective.

scikit-learn's ``SGDClassifier`` learns by ``partial_fit``, one pass over the training rows
at a time (rows in a new seeded order each pass), on a generated classification problem
(`hpod.workers.objectives._generated`, nothing downloaded), scored by validation log-loss.
Its fidelity is the number of passes: it reports after each one, and it is *resumable*
(``hpod_resumable``): a continued study pauses it after a few passes and continues the
promising trials from their coefficients (`hpod.workers.context.TrialContext.steps`).

The state is small and plain: the coefficients, the intercepts, the classes and the step
count ``t_`` that drives the learning-rate schedule, so a continued trial learns exactly as
an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from hpod.workers.context import TrialContext, TrialPruned
from hpod.workers.objectives._generated import classification_split
from hpod.workers.objectives.gradient_boosting import DataKwargs


class SgdKwargs(DataKwargs):
    """`sgd_classifier`'s keyword arguments: the generated data set's, and the passes."""

    passes: int = Field(default=30, ge=1, le=1000)
    n_samples: int = Field(default=20_000, ge=20, le=250_000)
    n_features: int = Field(default=40, ge=2, le=500)
    n_informative: int = Field(default=12, ge=1, le=500)


def sgd_classifier(
    ctx: TrialContext,
    *,
    passes: int = 30,
    n_samples: int = 20_000,
    n_features: int = 40,
    n_informative: int = 12,
    validation_fraction: float = 0.25,
    seed: int = 0,
) -> float:
    """Validation log-loss of a logistic-regression ``SGDClassifier``; lower is better.

    Parameters read from ``ctx.params`` (all optional) and the recommended search space:

    - ``alpha``: float, log, [1e-6, 1e-1] (default 1e-4) — regularisation strength
    - ``learning_rate``: categorical, ["optimal", "invscaling", "adaptive", "constant"]
      (default "optimal")
    - ``eta0``: float, log, [1e-4, 1.0] (default 0.01) — initial step (not for "optimal")
    - ``penalty``: categorical, ["l2", "l1", "elasticnet"] (default "l2")
    - ``l1_ratio``: float, [0, 1] (default 0.15) — for "elasticnet"

    After every pass the validation loss is reported with ``step`` = the passes completed;
    the trial raises `TrialPruned` when ``ctx.should_prune()`` says so. Keyword arguments:
    ``passes`` (30), the data set's (``n_samples`` 20,000, ``n_features`` 40,
    ``n_informative`` 12, ``validation_fraction``) and ``seed`` (data, split, row orders).
    """
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import log_loss

    x_train, x_val, y_train, y_val = classification_split(
        int(n_samples),
        int(n_features),
        int(n_informative),
        2,
        0.01,
        float(validation_fraction),
        int(seed),
    )
    x_train, y_train = ctx.subsample(x_train, y_train, stratify=y_train)
    classes = np.unique(y_val)
    p = ctx.params
    model = SGDClassifier(
        loss="log_loss",
        alpha=float(p.get("alpha", 1e-4)),
        learning_rate=str(p.get("learning_rate", "optimal")),
        eta0=float(p.get("eta0", 0.01)),
        penalty=str(p.get("penalty", "l2")),
        l1_ratio=float(p.get("l1_ratio", 0.15)),
        shuffle=False,  # the row order is ours, new each pass and the same when resumed
        random_state=int(seed),
    )
    resumed = ctx.resume()
    if resumed is not None:
        _restore(model, resumed.arrays, resumed.meta)
    done = ctx.resumed_step
    value: float | None = None
    for done in ctx.steps(int(passes)):
        order = np.random.default_rng([int(seed), done]).permutation(len(y_train))
        model.partial_fit(x_train[order], y_train[order], classes=classes)
        value = _score(model, x_val, y_val, classes, log_loss)
        ctx.report(value, done)
        if ctx.should_prune():
            raise TrialPruned(f"pruned after pass {done} with validation loss {value:.4f}")
    if value is None:  # resumed at (or past) this rung already: score the restored model
        value = _score(model, x_val, y_val, classes, log_loss)
    ctx.checkpoint(done, *_state(model))
    return value


sgd_classifier.hpod_fidelity = "epochs"  # type: ignore[attr-defined]
sgd_classifier.hpod_resumable = True  # type: ignore[attr-defined]
sgd_classifier.hpod_kwargs = SgdKwargs  # type: ignore[attr-defined]


def _score(model: Any, x_val: np.ndarray, y_val: np.ndarray, classes: Any, loss: Any) -> float:
    """Validation log-loss, capped: a diverged model scores badly, never infinitely."""
    value = float(loss(y_val, model.predict_proba(x_val), labels=classes))
    return value if math.isfinite(value) else 1e6


def _state(model: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The fitted model's state as plain arrays and JSON."""
    arrays = {"coef": model.coef_, "intercept": model.intercept_, "classes": model.classes_}
    return arrays, {"t": float(model.t_), "features": int(model.n_features_in_)}


def _restore(model: Any, arrays: Any, meta: Any) -> None:
    """Put `_state` back: ``partial_fit`` then goes on from these coefficients (it allocates
    them only when there are none) with the learning-rate schedule at step ``t_``."""
    model.coef_ = np.array(arrays["coef"])
    model.intercept_ = np.array(arrays["intercept"])
    model.classes_ = np.array(arrays["classes"])
    model.t_ = float(meta["t"])
    model.n_features_in_ = int(meta["features"])
