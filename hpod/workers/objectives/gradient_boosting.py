"""Gradient-boosted trees on a generated classification problem: a realistic, cheap objective.

A scikit-learn ``HistGradientBoostingClassifier`` is fitted on a synthetic data set made by
``make_classification`` (nothing is downloaded) and scored by validation log-loss. It has the
shape of a real tuning problem — six interacting hyperparameters, a noisy but smooth response,
over-fitting at one end and under-fitting at the other — while one fit at the default size
takes a fraction of a second on one core. Fits use a single OpenMP thread, so that concurrent
trials on one machine do not fight over the cores.

The fidelity is the share of the *training* rows used; the validation rows never change, so
scores at different fidelities measure the same thing and compare fairly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from hpod.workers.context import TrialContext
from hpod.workers.objectives._generated import Split, classification_split
from hpod.workers.registry import ObjectiveKwargs

#: Most cells (rows x features) of a generated data set: 40 MB of float64, so a study's kwargs
#: can never make one evaluation exhaust a worker's memory.
MAX_CELLS = 5_000_000


class DataKwargs(ObjectiveKwargs):
    """The generated data set's keyword arguments, bounded (`MAX_CELLS`) and consistent."""

    n_samples: int = Field(default=4000, ge=20, le=250_000)
    n_features: int = Field(default=20, ge=2, le=500)
    n_informative: int = Field(default=8, ge=1, le=500)
    validation_fraction: float = Field(default=0.25, ge=0.05, le=0.9)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _fits(self) -> DataKwargs:
        if self.n_samples * self.n_features > MAX_CELLS:
            raise ValueError(
                f"n_samples x n_features must be at most {MAX_CELLS:,} "
                f"(got {self.n_samples * self.n_features:,})"
            )
        if self.n_informative > self.n_features:
            raise ValueError("n_informative must not exceed n_features")
        return self


class GradientBoostingKwargs(DataKwargs):
    """`gradient_boosting`'s keyword arguments."""

    n_classes: int = Field(default=2, ge=2, le=20)

    @model_validator(mode="after")
    def _classes_fit(self) -> GradientBoostingKwargs:
        if self.n_classes * 2 > 2**self.n_informative:  # make_classification's own rule
            raise ValueError("n_classes * 2 must be at most 2 ** n_informative")
        return self


def gradient_boosting(
    ctx: TrialContext,
    *,
    n_samples: int = 4000,
    n_features: int = 20,
    n_informative: int = 8,
    n_classes: int = 2,
    validation_fraction: float = 0.25,
    seed: int = 0,
) -> float:
    """Validation log-loss of a HistGradientBoostingClassifier; lower is better.

    Parameters read from ``ctx.params`` (all optional; the default is scikit-learn's) and the
    recommended search space:

    - ``learning_rate``: float, log, [0.01, 0.5] (default 0.1)
    - ``max_iter``: int, [20, 300] (default 100) — the number of boosting rounds
    - ``max_leaf_nodes``: int, log, [4, 128] (default 31)
    - ``max_depth``: int, [2, 12], or None for unlimited (default None)
    - ``min_samples_leaf``: int, log, [2, 100] (default 20)
    - ``l2_regularization``: float, [0, 10] (default 0), or log [1e-6, 10]

    With the default data, scikit-learn's defaults score 0.146 and a tuned model about 0.14;
    poor settings score far worse: 0.58 for learning_rate=0.01 with max_iter=20 (under-fit),
    0.32 for learning_rate=0.5 with 128 leaves of 2 rows (over-fit).

    Keyword arguments (the study's ``objective_kwargs``) describe the data set:
    ``n_samples`` (4000), ``n_features`` (20), ``n_informative`` (8), ``n_classes`` (2),
    ``validation_fraction`` (0.25) and ``seed`` (0, for the data, the split and the model),
    bounded by `GradientBoostingKwargs` (at most `MAX_CELLS` rows x features).

    Early stopping is switched off explicitly: scikit-learn turns it on by itself above 10,000
    training rows, which would make a trial's effective ``max_iter`` depend on the fidelity.

    The training rows are subsampled by class (stratified), so every class keeps at least
    one row at any fidelity; below a few percent the scores stop ranking models usefully.
    """
    # Imported here: the daemon imports this module for its declared kwargs, never sklearn.
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import log_loss
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # sklearn's

    x_train, x_val, y_train, y_val = _data(
        int(n_samples),
        int(n_features),
        int(n_informative),
        int(n_classes),
        float(validation_fraction),
        int(seed),
    )
    x_train, y_train = ctx.subsample(x_train, y_train, stratify=y_train)
    classes = np.unique(y_val)
    if len(np.unique(y_train)) < len(classes):
        raise ValueError(
            f"fidelity {ctx.fidelity} leaves {len(y_train)} training rows that do not contain "
            "every class; use a higher minimum fidelity"
        )
    p = ctx.params
    # Continued by boosting rounds (`hpod_resumable`): fit up to this task's rung with
    # warm_start, from the trees of the trial's checkpoint when there is one.
    rounds = ctx.steps(int(p.get("max_iter", 100)))
    target = rounds.stop - 1 if rounds else ctx.resumed_step
    model = HistGradientBoostingClassifier(
        learning_rate=float(p.get("learning_rate", 0.1)),
        max_iter=max(1, target),
        warm_start=True,
        max_leaf_nodes=int(p.get("max_leaf_nodes", 31)),
        max_depth=_optional_int(p.get("max_depth")),
        min_samples_leaf=int(p.get("min_samples_leaf", 20)),
        l2_regularization=float(p.get("l2_regularization", 0.0)),
        early_stopping=False,
        random_state=int(seed),
    )
    # One OpenMP thread: workers run about one trial per core, and HistGradientBoosting's
    # default of one thread per core makes concurrent trials oversubscribe the CPU. Measured
    # on two cores with two concurrent trials: 15 s per fit unlimited, 0.3 s with this limit.
    resumed = ctx.resume()
    if resumed is not None and resumed.step <= model.max_iter:
        _restore_trees(model, resumed.arrays, resumed.meta)
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x_train, y_train)
        proba = model.predict_proba(x_val)
    ctx.checkpoint(int(model.n_iter_), *_trees(model))
    return float(log_loss(y_val, proba, labels=classes))


gradient_boosting.hpod_fidelity = "data"  # type: ignore[attr-defined]
gradient_boosting.hpod_kwargs = GradientBoostingKwargs  # type: ignore[attr-defined]


def gradient_boosting_rounds(ctx: TrialContext, **kwargs: Any) -> float:
    """`gradient_boosting` with its boosting rounds as the fidelity, continued from its
    trees (``hpod_resumable``) instead of re-fitted on more data; the same keyword arguments
    and value. It reports the value at each rung, step = the rounds fitted.

    A separate registered name, because which fidelity pays depends on the search space:
    with ``learning_rate`` searched, the ranking after a ninth of the rounds says little
    about the ranking after all of them (a high rate leads early and over-fits late;
    measured Spearman correlation -0.09 over 24 random configurations of 150 rounds), and
    the data ladder, which fits every round on less data, ranks better (docs/policies.md).
    """
    value = gradient_boosting(ctx, **kwargs)
    if ctx.saved is not None:
        ctx.report(value, ctx.saved.step)
    return value


gradient_boosting_rounds.hpod_fidelity = "epochs"  # type: ignore[attr-defined]
gradient_boosting_rounds.hpod_resumable = True  # type: ignore[attr-defined]
gradient_boosting_rounds.hpod_kwargs = GradientBoostingKwargs  # type: ignore[attr-defined]


def _trees(model: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A fitted HistGradientBoosting model's state as plain arrays and JSON.

    skops is not a dependency and pickle is not allowed, so the state is taken apart by
    hand: each tree is a structured NumPy array of nodes (plain dtypes) plus two bitset
    arrays, and the rest is the baseline prediction, the scores and two seeds. These are
    private attributes of scikit-learn: the checkpoint names the version that wrote it,
    and another version starts from scratch (`_restore_trees`); a unit test checks that a
    continued fit equals an uninterrupted one on the installed version.
    """
    import sklearn

    arrays: dict[str, np.ndarray] = {"baseline": np.asarray(model._baseline_prediction)}
    per_iteration = len(model._predictors[0]) if model._predictors else 0
    for i, row in enumerate(model._predictors):
        for k, tree in enumerate(row):
            arrays[f"tree.{i}.{k}.nodes"] = tree.nodes
            arrays[f"tree.{i}.{k}.binned"] = tree.binned_left_cat_bitsets
            arrays[f"tree.{i}.{k}.raw"] = tree.raw_left_cat_bitsets
    arrays["train_score"] = np.asarray(model.train_score_)
    arrays["validation_score"] = np.asarray(model.validation_score_)
    meta = {
        "sklearn": sklearn.__version__,
        "iterations": len(model._predictors),
        "per_iteration": per_iteration,
        "random_seed": int(model._random_seed),
        "feature_rng": model._feature_subsample_rng.bit_generator.state,
    }
    return arrays, meta


def _restore_trees(model: Any, arrays: Mapping[str, np.ndarray], meta: Any) -> None:
    """Put `_trees`' state back into an unfitted model, so that its warm-started `fit`
    goes on from there; nothing (a fit from scratch) if another scikit-learn wrote it."""
    import sklearn
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

    if not isinstance(meta, dict) or meta.get("sklearn") != sklearn.__version__:
        return
    model._predictors = [
        [
            TreePredictor(
                arrays[f"tree.{i}.{k}.nodes"],
                arrays[f"tree.{i}.{k}.binned"],
                arrays[f"tree.{i}.{k}.raw"],
            )
            for k in range(int(meta["per_iteration"]))
        ]
        for i in range(int(meta["iterations"]))
    ]
    model._baseline_prediction = arrays["baseline"]
    model.train_score_ = arrays["train_score"]
    model.validation_score_ = arrays["validation_score"]
    model._random_seed = int(meta["random_seed"])
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["feature_rng"]
    model._feature_subsample_rng = rng


def _optional_int(value: Any) -> int | None:
    """An int, or None for "no limit" (a categorical choice may be JSON null)."""
    return None if value is None else int(value)


def _data(
    n_samples: int,
    n_features: int,
    n_informative: int,
    n_classes: int,
    validation_fraction: float,
    seed: int,
) -> Split:
    """The generated data set, split into train and validation (scikit-learn's default
    label noise, flip_y = 0.01); built once per process."""
    return classification_split(
        n_samples, n_features, n_informative, n_classes, 0.01, validation_fraction, seed
    )
