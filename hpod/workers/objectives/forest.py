"""A random forest on a generated classification problem, its fidelity the training rows.

scikit-learn's ``RandomForestClassifier`` (one thread), scored by validation log-loss on rows
that never change with the fidelity. A forest's fit grows a little faster than linearly in
its rows (each tree sorts them), so the data ladder saves about what it skips.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from hpod.workers.context import TrialContext
from hpod.workers.objectives._generated import classification_split
from hpod.workers.objectives.gradient_boosting import DataKwargs


class ForestKwargs(DataKwargs):
    """`random_forest`'s keyword arguments: the generated data set."""

    n_samples: int = Field(default=8000, ge=20, le=250_000)


def random_forest(
    ctx: TrialContext,
    *,
    n_samples: int = 8000,
    n_features: int = 20,
    n_informative: int = 8,
    validation_fraction: float = 0.25,
    seed: int = 0,
) -> float:
    """Validation log-loss of a random forest; lower is better.

    Parameters read from ``ctx.params`` and the recommended space: ``n_estimators`` (int,
    [10, 200], default 50), ``max_depth`` (int, log, [2, 32], default none), ``min_samples_leaf``
    (int, log, [1, 64], default 1), ``max_features`` (float, [0.05, 1.0], default "sqrt").

    Keyword arguments describe the data (``make_classification``, 2 classes): ``n_samples``
    (8000), ``n_features`` (20), ``n_informative`` (8), ``validation_fraction`` (0.25) and
    ``seed`` (0, also the forest's).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import log_loss

    x_train, x_val, y_train, y_val = classification_split(
        int(n_samples),
        int(n_features),
        int(n_informative),
        2,
        0.05,
        float(validation_fraction),
        int(seed),
    )
    x_train, y_train = ctx.subsample(x_train, y_train, stratify=y_train)
    params = ctx.params
    max_depth = params.get("max_depth")
    model = RandomForestClassifier(
        n_estimators=int(params.get("n_estimators", 50)),
        max_depth=None if max_depth is None else int(max_depth),
        min_samples_leaf=int(params.get("min_samples_leaf", 1)),
        max_features=float(params["max_features"]) if "max_features" in params else "sqrt",
        n_jobs=1,
        random_state=int(seed),
    ).fit(x_train, y_train)
    proba = np.clip(model.predict_proba(x_val), 1e-6, 1 - 1e-6)
    return float(log_loss(y_val, proba, labels=[0, 1]))


random_forest.hpod_fidelity = "data"  # type: ignore[attr-defined]
random_forest.hpod_kwargs = ForestKwargs  # type: ignore[attr-defined]
