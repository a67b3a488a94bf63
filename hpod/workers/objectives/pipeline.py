"""A pipeline that chooses its model: a mixed, conditional space on one data set.

The categorical ``model`` picks logistic regression, k-nearest neighbours, an RBF SVC or a
decision tree; each model's own parameters are active only under it (conditions in the
space), and ``scale`` chooses whether features are standardised first. This is the space
TPE is made for and where a numeric sampler (CMA-ES, GP) has to fall back on something else.
The fidelity is the share of training rows; scored by validation error rate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from hpod.workers.context import TrialContext
from hpod.workers.objectives._generated import classification_split
from hpod.workers.objectives.gradient_boosting import DataKwargs

MODELS = ("logreg", "knn", "svc", "tree")


class PipelineKwargs(DataKwargs):
    """`model_choice`'s keyword arguments: the generated data set."""

    n_samples: int = Field(default=4000, ge=20, le=50_000)


def model_choice(
    ctx: TrialContext,
    *,
    n_samples: int = 4000,
    n_features: int = 20,
    n_informative: int = 8,
    validation_fraction: float = 0.25,
    seed: int = 0,
) -> float:
    """Validation error rate of the pipeline `ctx.params` describe; lower is better.

    Parameters: ``model`` (categorical: logreg, knn, svc, tree), ``scale`` (categorical:
    true/false); under logreg ``logreg_C`` (float, log, [1e-3, 1e3]); under knn ``knn_k``
    (int, log, [1, 100]) and ``knn_weights`` (uniform/distance); under svc ``svc_C`` (float,
    log, [1e-2, 1e3]) and ``svc_gamma`` (float, log, [1e-4, 1]); under tree ``tree_depth``
    (int, [1, 30]) and ``tree_min_leaf`` (int, log, [1, 100]). Keyword arguments describe the
    data as for `random_forest`.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

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
    steps: list[Any] = [StandardScaler()] if ctx.params.get("scale", True) else []
    model = make_pipeline(*steps, _model(ctx.params, int(seed), len(y_train)))
    model.fit(x_train, y_train)
    return float(np.mean(model.predict(x_val) != y_val))


model_choice.hpod_fidelity = "data"  # type: ignore[attr-defined]
model_choice.hpod_kwargs = PipelineKwargs  # type: ignore[attr-defined]


def _model(params: dict[str, Any], seed: int, rows: int) -> Any:
    """The estimator `params` choose, with its own parameters."""
    name = str(params.get("model", "logreg"))
    if name == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=float(params.get("logreg_C", 1.0)), max_iter=500)
    if name == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        k = min(int(params.get("knn_k", 5)), rows)
        return KNeighborsClassifier(
            n_neighbors=k, weights=str(params.get("knn_weights", "uniform"))
        )
    if name == "svc":
        from sklearn.svm import SVC

        return SVC(C=float(params.get("svc_C", 1.0)), gamma=float(params.get("svc_gamma", 0.01)))
    if name == "tree":
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(
            max_depth=int(params.get("tree_depth", 8)),
            min_samples_leaf=int(params.get("tree_min_leaf", 1)),
            random_state=seed,
        )
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")
