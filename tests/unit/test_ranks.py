"""hpod.ranks follows scipy.stats exactly (rankdata with ties, spearmanr), without loading it
into the daemon."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata as scipy_rankdata
from scipy.stats import spearmanr

from hpod.ranks import rankdata, spearman


@pytest.mark.parametrize("method", ["average", "min"])
def test_ranks_match_scipy_with_and_without_ties(method: str) -> None:
    rng = np.random.default_rng(7)
    for size in (1, 2, 5, 40):
        for values in (rng.normal(size=size), rng.integers(0, 4, size=size).astype(float)):
            assert np.array_equal(rankdata(values, method), scipy_rankdata(values, method=method))
    assert rankdata([3.0, 1.0, 3.0, 2.0], "average").tolist() == [3.5, 1.0, 3.5, 2.0]
    assert rankdata([3.0, 1.0, 3.0, 2.0], "min").tolist() == [3.0, 1.0, 3.0, 2.0]
    assert rankdata([]).size == 0


def test_spearman_matches_scipy_and_is_nan_for_a_constant_side() -> None:
    rng = np.random.default_rng(3)
    for size in (3, 8, 50):
        a = rng.normal(size=size)
        b = a + rng.normal(size=size)
        ties = np.round(b)
        for other in (b, ties):
            assert spearman(list(a), list(other)) == pytest.approx(spearmanr(a, other).statistic)
    assert math.isnan(spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    with pytest.raises(ValueError):
        spearman([1.0], [1.0, 2.0])


def test_the_daemon_does_not_load_scipy_stats() -> None:
    """What hpod.ranks is for: the daemon's modules import without scipy.stats."""
    import subprocess
    import sys

    code = "import sys, hpod.daemon.service; print('scipy.stats' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
