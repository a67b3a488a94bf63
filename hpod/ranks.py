"""Ranks and Spearman's correlation, in NumPy.

Written here rather than taken from `scipy.stats` (`rankdata`, `spearmanr`, which these
follow exactly): importing `scipy.stats` costs the daemon about 0.6 s at start and tens of
MB of resident memory for two small functions, and the idle daemon must stay small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt


def rankdata(
    values: Sequence[float] | npt.NDArray[np.float64], method: Literal["average", "min"] = "average"
) -> npt.NDArray[np.float64]:
    """Ranks from 1 (the smallest value) as `scipy.stats.rankdata`: tied values share the
    mean of their ranks (``average``) or the lowest (``min``)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return np.empty(0)
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # where each group of ties starts
    group = np.cumsum(first) - 1  # the group of each sorted position
    starts = np.flatnonzero(first)
    sizes = np.diff(np.r_[starts, a.size])
    shared = starts + 1.0 if method == "min" else starts + (sizes + 1) / 2.0
    ranks = np.empty(a.size)
    ranks[order] = shared[group]
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho of two equally long samples (the Pearson correlation of their average
    ranks, as `scipy.stats.spearmanr`); NaN when a side is constant."""
    if len(a) != len(b):
        raise ValueError("spearman needs two samples of the same length")
    ra = rankdata(a)
    rb = rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    scale = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum()) / scale if scale else math.nan
