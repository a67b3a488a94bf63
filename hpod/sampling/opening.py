"""The space-filling opening of hpod's model-based samplers.

A model fitted to three points is guesswork, and Optuna's default of ten random trials is a
sixth of a 60-trial budget spent without a design: a short scrambled Sobol (QMC) design of
two points per dimension, at least `MIN_OPENING`, covers the space first.
"""

from __future__ import annotations

#: The fewest trials of the opening design, whatever the dimension.
MIN_OPENING = 4
#: Points of the opening design per dimension of the space.
OPENING_PER_DIMENSION = 2


def opening_size(dimensions: int) -> int:
    """Trials of the QMC opening for a space of `dimensions` numeric parameters."""
    return max(MIN_OPENING, OPENING_PER_DIMENSION * dimensions)
