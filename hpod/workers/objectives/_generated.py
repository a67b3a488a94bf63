"""Generated classification data shared by the example objectives: built once per process.

scikit-learn is imported where it is used: the daemon imports the objective modules to read
their declared kwargs (`hpod_kwargs`) and must not pay for scikit-learn (about 90 MB).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@lru_cache(maxsize=8)
def classification_split(
    n_samples: int,
    n_features: int,
    n_informative: int,
    n_classes: int,
    flip_y: float,
    validation_fraction: float,
    seed: int,
) -> Split:
    """``make_classification`` data split into (x_train, x_val, y_train, y_val), stratified.

    Cached because every trial of a study asks for the same data; the arrays are marked
    read-only so that no objective can change them for the trials that follow.
    """
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_classes=n_classes,
        flip_y=flip_y,
        random_state=seed,
    )
    parts: Split = tuple(
        train_test_split(x, y, test_size=validation_fraction, random_state=seed, stratify=y)
    )
    for array in parts:
        array.flags.writeable = False
    return parts
