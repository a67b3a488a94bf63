"""Past studies as a prior for TPE: their surfaces join the sampler's view, never the study.

Optuna's `TPESampler` has no input for prior knowledge (its ``consider_prior`` is a flat
prior over the space, not past trials; only `CmaEsSampler` takes ``source_trials``, and hpod's
default sampler is TPE). So `PriorSampler` wraps the study's sampler and, when it samples,
shows it a *view* of the study that holds the study's own trials plus prior trials built from
the memories of the past studies still in use (`prior_trials`). Nothing is written: the prior
trials never enter the storage, the study's records, its budget or its best trial, and they
carry the user attribute ``hpod:prior`` (their source) and negative numbers in the view.

What the prior holds and how it fades:

- per source, `PER_SOURCE` points spread over its surface by rank (its best first), mapped
  into the new space (`hpod.transfer.mapping.map_params`), at most `MAX_PRIOR` in all;
- their values are the new study's own: a point of past rank r (0 the best) gets the r-th
  quantile of the study's complete values (r itself while it has none), so the past orders
  configurations and the present sets the scale;
- one prior point is removed for every `FADE` complete trials of the study's own, so the
  study's own evidence takes over; a source judged not to agree
  (`hpod.transfer.agreement`) is removed at once (the driver passes the sources in use).

With the prior, TPE's startup (random) trials are counted over the view, so TPE models from
the first trial on; that is where a prior pays, and why a misleading one is cut as soon as the
first results disagree. Samplers other than TPE are used as they are (`wraps`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpod.sampling.delegate import DelegatingSampler
from hpod.schema import CategoricalParam, FloatParam, ParamSpec
from hpod.transfer.mapping import map_params
from hpod.transfer.memory import StudyMemory

#: Surface points a source gives to the prior.
PER_SOURCE = 12
#: Prior points at most, over all sources.
MAX_PRIOR = 24
#: The study's own complete trials that replace one prior point.
FADE = 1
#: User attribute of a prior trial in the sampler's view: its source.
PRIOR_ATTR = "hpod:prior"


def wraps(sampler: BaseSampler) -> bool:
    """Whether a prior can be given to `sampler` (TPE: it models from the trials it sees)."""
    return isinstance(sampler, TPESampler)


def distributions(space: dict[str, ParamSpec]) -> dict[str, BaseDistribution]:
    """The Optuna distributions of a space (those `hpod.engine.suggest` uses)."""
    out: dict[str, BaseDistribution] = {}
    for name, p in space.items():
        if isinstance(p, CategoricalParam):
            out[name] = optuna.distributions.CategoricalDistribution(p.choices)
        elif isinstance(p, FloatParam):
            out[name] = optuna.distributions.FloatDistribution(
                p.low, p.high, log=p.log, step=p.step
            )
        else:
            out[name] = optuna.distributions.IntDistribution(
                int(p.low), int(p.high), log=p.log, step=int(p.step)
            )
    return out


def prior_points(
    memories: Sequence[StudyMemory], space: dict[str, ParamSpec]
) -> list[tuple[dict[str, Any], float, str]]:
    """(mapped params, past rank, source) of the prior, taken round-robin from `memories`
    (most similar first), each source's points spread over its surface from its best."""
    queues = []
    for memory in memories:
        surface = sorted(memory.surface, key=lambda pair: pair[1])
        n = len(surface)
        picks = sorted({round(j * (n - 1) / max(1, PER_SOURCE - 1)) for j in range(PER_SOURCE)})
        queues.append([(surface[i][0], surface[i][1], memory.study) for i in picks if n])
    out: list[tuple[dict[str, Any], float, str]] = []
    while len(out) < MAX_PRIOR and any(queues):
        for queue in queues:
            if queue and len(out) < MAX_PRIOR:
                params, rank, source = queue.pop(0)
                mapped = map_params(params, space)
                if mapped:
                    out.append((mapped, float(rank), source))
    return out


def prior_trials(
    points: Sequence[tuple[dict[str, Any], float, str]],
    own: Sequence[FrozenTrial],
    active: Container[str],
    direction: StudyDirection,
    space: dict[str, ParamSpec],
) -> list[FrozenTrial]:
    """The prior trials to show the sampler now (see the module): the points of the sources
    in `active`, faded by the study's `own` complete trials, valued on their scale."""
    points = [p for p in points if p[2] in active]
    keep = max(0, len(points) - len(own) // FADE)
    if keep == 0:
        return []
    # Fade from the least informative end: keep the best ranks and the spread of the rest.
    ordered = sorted(points, key=lambda p: p[1])
    chosen = [ordered[i] for i in sorted({round(j * (len(ordered) - 1) / max(1, keep - 1))
                                          for j in range(keep)})][:keep]  # fmt: skip
    values = [t.value for t in own if t.value is not None]
    dists = distributions(space)
    out = []
    for i, (params, rank, source) in enumerate(chosen):
        if values:
            q = float(
                np.quantile(values, rank if direction == StudyDirection.MINIMIZE else 1 - rank)
            )
        else:
            q = rank if direction == StudyDirection.MINIMIZE else -rank
        trial = optuna.trial.create_trial(
            params=params,
            distributions={k: dists[k] for k in params if k in dists},
            value=q,
            user_attrs={PRIOR_ATTR: source},
        )
        trial.number = -(i + 1)
        out.append(trial)
    return out


class _View:
    """A study as the wrapped sampler sees it: its own trials, and the prior first."""

    def __init__(self, study: Study, prior: list[FrozenTrial]) -> None:
        self._study = study
        self._prior = prior

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        own = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if states is not None and TrialState.COMPLETE not in states:
            return own
        return [*self._prior, *own]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)


class PriorSampler(DelegatingSampler):
    """`inner` (a TPE sampler) sampling over the study plus the prior `source()` returns:
    ``source(study)`` gives the prior trials to show now (empty: `inner` as it is). Optuna's
    per-trial hooks go to `inner` as they are (`DelegatingSampler`)."""

    def __init__(self, inner: BaseSampler, source: Callable[[Study], list[FrozenTrial]]) -> None:
        self._inner = inner
        self._source = source

    @property
    def inner(self) -> BaseSampler:
        """The wrapped sampler."""
        return self._inner

    def _view(self, study: Study) -> Any:
        prior = self._source(study)
        return _View(study, prior) if prior else study

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        return self.inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(
            self._view(study), trial, param_name, param_distribution
        )


def own_complete(study: Study) -> list[FrozenTrial]:
    """The study's own complete single-objective trials (what the prior is scaled and faded
    by)."""
    return [
        t
        for t in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
        if t.values is not None and len(t.values) == 1 and not math.isnan(t.values[0])
    ]
