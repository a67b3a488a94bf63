"""A sampler whose per-parameter work is another sampler's.

hpod's samplers (`cmaes.OpeningCmaEsSampler`, `process.ProcessGPSampler`) decide the relative
(joint) part themselves and leave parameters outside it, and Optuna's per-trial hooks, to an
inner TPE sampler. This base holds that forwarding once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


class DelegatingSampler(BaseSampler):
    """Forwards `sample_independent`, `before_trial` and `after_trial` to `self._inner`."""

    _inner: BaseSampler

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)
