"""The sampler's view of a continued study: a paused trial counts as pruned at its last rung.

A continued trial (`hpod.daemon.promotion`) stays RUNNING in Optuna from its first rung until
the study tells it, so a plain sampler learns nothing from it while the study runs: TPE reads
only COMPLETE and PRUNED trials (and, with ``constant_liar``, lies that every RUNNING one is
bad, the promising paused trials included). With a budget of a few dozen trials most of a
continued study's trials are paused, so TPE stayed in its random start-up for most of the
study and then modelled the handful of trials that had finished the last rung.

`PausedAsPruned` wraps the study's sampler and shows it a view of the study in which every
continued trial with a value at some rung (paused, or running to its next rung) is a PRUNED
trial whose intermediate values are its rung values. That is how Optuna's TPE already reads a
trial stopped by a pruner: complete trials rank first, then pruned ones by the highest step
reached and their value there (``optuna.samplers._tpe.sampler._split_pruned_trials``), so
the trials leading the highest rung feed TPE's "good" density before any trial has finished,
and the ones left at the first rung its "bad" one. Nothing is written to the storage: the
trial stays RUNNING and can still be promoted (freeze-thaw); only the sampler's reading
changes. The view's steps are the rungs scaled to integers (`STEP_SCALE`), so higher rungs
rank first whatever the objective calls a step.

The view overrides ``Study._get_trials``, the private method Optuna's samplers read trials
through (Optuna 5; `tests/unit/test_paused_sampler.py` checks the contract on the installed
version).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

#: A continued trial's values at the rungs it reached, by trial number, then rung (0..1].
PausedValues = Mapping[int, Mapping[float, float]]

#: A rung's share of the steps times this is the step the view reports its value at.
STEP_SCALE = 1_000_000


class PausedAsPruned(BaseSampler):
    """`inner`, reading the trials `paused()` names as PRUNED at their rung values."""

    def __init__(self, inner: BaseSampler, paused: Callable[[], PausedValues]) -> None:
        self.inner = inner
        self._paused = paused

    def view(self, study: Study) -> Study:
        """`study` as the inner sampler sees it (itself when no trial is paused)."""
        paused = {n: v for n, v in self._paused().items() if v}
        return _StudyView(study, paused) if paused else study  # type: ignore[return-value]

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self.view(study), trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(self.view(study), trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(
            self.view(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


class _StudyView:
    """A study whose RUNNING trials named in `paused` read as PRUNED (everything else is the
    study's own attribute)."""

    def __init__(self, study: Study, paused: PausedValues) -> None:
        self._study = study
        self._paused = paused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=None, use_cache=use_cache)
        shown = [self._shown(t) for t in trials]
        return [t for t in shown if states is None or t.state in states]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def _shown(self, trial: FrozenTrial) -> FrozenTrial:
        values = self._paused.get(trial.number)
        if trial.state != TrialState.RUNNING or not values:
            return trial
        return as_pruned(trial, values)


def as_pruned(trial: FrozenTrial, values: Mapping[float, float]) -> FrozenTrial:
    """A copy of the RUNNING `trial` as a PRUNED one with `values` (by rung) as its
    intermediate values."""
    return FrozenTrial(
        number=trial.number,
        state=TrialState.PRUNED,
        value=None,
        values=None,
        datetime_start=trial.datetime_start,
        datetime_complete=None,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=trial.user_attrs,
        system_attrs=trial.system_attrs,
        intermediate_values={round(rung * STEP_SCALE): v for rung, v in values.items()},
        trial_id=trial._trial_id,
    )
