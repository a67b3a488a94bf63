"""CMA-ES for long numeric runs: a QMC opening, a warm start at its best point, IPOP restarts.

Optuna's `CmaEsSampler` starts from the centre of the space and, since Optuna 4.4, has no
restarts (its ``restart_strategy`` argument is accepted and ignored; restarts moved to
OptunaHub, which hpod does not depend on). `OpeningCmaEsSampler` wraps it:

1. a scrambled Sobol opening of `opening_size` trials covers the space;
2. CMA-ES then starts at the best point found so far (its own step size, a sixth of each
   range), or at the ``x0`` it was given (a study switched to CMA-ES mid-way,
   `strategy.actions.warm_start`);
3. when the running CMA-ES says it has converged (``should_stop``: its spread or its
   improvements have become negligible), it restarts at the best point so far with twice the
   population and a wider step (IPOP-CMA-ES), so a long budget is not spent polishing one
   basin.

Each CMA-ES run keeps its state in trial system attributes under its own prefix (the
restart's number on every trial it sampled), so a daemon restart resumes the same run. The
check of convergence reads the optimiser Optuna restored, a private part of Optuna (version
pinned); if that ever fails, the study just goes on without restarts, logged once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import structlog
from optuna.distributions import BaseDistribution
from optuna.samplers import CmaEsSampler, QMCSampler, TPESampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpod.sampling.delegate import DelegatingSampler
from hpod.sampling.opening import opening_size

log = structlog.get_logger("hpod.sampler")

#: Trial system attribute: the CMA-ES run (0 = first, then each restart) that sampled it.
RESTART_ATTR = "hpod:cma_restart"
#: Step size of a restarted run, in units of each parameter's range (IPOP restarts wide).
RESTART_SIGMA = 0.25
#: Restarts at most (each doubles the population).
MAX_RESTARTS = 8


class OpeningCmaEsSampler(DelegatingSampler):
    """CMA-ES after a QMC opening, warm-started at the best point, with IPOP restarts."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        x0: dict[str, Any] | None = None,
        sigma0: float | None = None,
        n_startup_trials: int | None = None,
        popsize: int | None = None,
        restarts: bool = True,
        parallel: bool = False,
        **cma_options: Any,
    ) -> None:
        self._seed = seed
        self._x0 = x0
        self._sigma0 = sigma0
        self._n_startup = n_startup_trials
        self._popsize = popsize
        self._restarts = restarts
        self._options = cma_options
        self._opening = QMCSampler(
            seed=seed,
            scramble=True,
            warn_independent_sampling=False,
            warn_asynchronous_seeding=False,
        )
        self._inner = TPESampler(seed=seed, constant_liar=parallel)
        self._space = self._build(0, None, None, None)
        self._cma: CmaEsSampler | None = None
        self._run: int | None = None
        self._check_failed = False

    def _build(
        self, run: int, x0: dict[str, Any] | None, sigma0: float | None, popsize: int | None
    ) -> CmaEsSampler:
        seed = None if self._seed is None else self._seed + 7919 * run
        with warnings.catch_warnings():
            # x0 and sigma0 are deprecated in favour of source_trials (a warm start from
            # another study's trials), which is not what a restart needs.
            warnings.simplefilter("ignore", FutureWarning)
            sampler = CmaEsSampler(
                seed=seed,
                x0=x0,
                sigma0=sigma0,
                popsize=popsize,
                independent_sampler=self._inner,
                warn_independent_sampling=False,
                **self._options,
            )
        if run:
            sampler._attr_prefix = f"{sampler._attr_prefix}r{run}:"
        return sampler

    def reseed_rng(self) -> None:
        self._opening.reseed_rng()
        self._inner.reseed_rng()
        if self._cma is not None:
            self._cma.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._space.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        trials = study._get_trials(deepcopy=False, use_cache=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        opening = opening_size(len(search_space)) if self._n_startup is None else self._n_startup
        if self._x0 is None and len(complete) < opening:
            return self._opening.sample_relative(study, trial, search_space)
        sampler = self._current(study, trials, complete, search_space)
        params = sampler.sample_relative(study, trial, search_space)
        study._storage.set_trial_system_attr(trial._trial_id, RESTART_ATTR, self._run or 0)
        return params

    def _current(
        self,
        study: Study,
        trials: Sequence[FrozenTrial],
        complete: Sequence[FrozenTrial],
        space: dict[str, BaseDistribution],
    ) -> CmaEsSampler:
        """The CMA-ES run in force, restarted when it has converged."""
        if self._run is None:
            runs = [int(t.system_attrs.get(RESTART_ATTR, 0)) for t in trials]
            self._run = max(runs, default=0)
        if self._cma is None:
            self._cma = self._start(self._run, study, complete, space)
        if self._restarts and self._run < MAX_RESTARTS and self._converged(self._cma, complete):
            self._run += 1
            log.info("sampler.cmaes_restart", study=study.study_name, run=self._run)
            self._cma = self._start(self._run, study, complete, space)
        return self._cma

    def _start(
        self,
        run: int,
        study: Study,
        complete: Sequence[FrozenTrial],
        space: dict[str, BaseDistribution],
    ) -> CmaEsSampler:
        best = _best(study, complete, space)
        if run == 0:
            x0 = self._x0 if self._x0 is not None else best
            sigma0 = self._sigma0
            popsize = self._popsize
        else:
            x0, sigma0 = best, RESTART_SIGMA
            base = self._popsize or 4 + int(3 * math.log(max(1, len(space))))
            popsize = base * 2**run
        if x0 is not None and set(x0) != set(space):
            x0 = None  # the space changed since: the centre, as Optuna would
        return self._build(run, x0, sigma0, popsize)

    def _converged(self, sampler: CmaEsSampler, complete: Sequence[FrozenTrial]) -> bool:
        if self._check_failed:
            return False
        try:
            optimizer = sampler._restore_optimizer(list(complete))
            return optimizer is not None and bool(optimizer.should_stop())
        except Exception as exc:  # a private part of Optuna: never worth a failed trial
            self._check_failed = True
            log.warning("sampler.cmaes_restart_check_failed", error=repr(exc))
            return False


def _best(
    study: Study, complete: Sequence[FrozenTrial], space: dict[str, BaseDistribution]
) -> dict[str, Any] | None:
    """The best complete trial's values of `space`'s parameters (None if there is none)."""
    usable = [t for t in complete if all(name in t.params for name in space)]
    if not usable:
        return None
    sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
    best = min(usable, key=lambda t: sign * t.values[0])
    return {name: best.params[name] for name in space}
