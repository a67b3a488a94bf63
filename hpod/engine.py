"""Optuna glue shared by the daemon and the workers: storages, samplers, pruners, spaces.

hpod keeps its own bookkeeping in Optuna's study and trial user attributes (prefix
``hpod:``), so the storage stays a plain Optuna storage that the `optuna` CLI and
optuna-dashboard read unchanged.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import math
import os
import sqlite3
import threading
import warnings
from typing import Any

import optuna
from optuna._transform import _SearchSpaceTransform  # what RandomSampler builds per draw
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal._file import BaseJournalFileLock  # not re-exported; stable ABC

from hpod.errors import RequestRejected
from hpod.journal import GroupCommitJournalBackend
from hpod.schema import CategoricalParam, FloatParam, IntParam, ParamSpec, StudySpec

SPEC_ATTR = "hpod:spec"
STATE_ATTR = "hpod:state"
CREATED_ATTR = "hpod:created_at"
MODE_ATTR = "hpod:mode"
EXTERNAL_ATTR = "hpod:external"
DISPATCHED_ATTR = "hpod:dispatched"
REQUEST_ATTR = "hpod:request_id"
ERROR_ATTR = "hpod:error"
#: What a trial's evaluation cost: CPU seconds, data evaluated, rungs, cache use, overhead.
COST_ATTR = "hpod:cost"
#: The verdict that turned a study's data ladder off (`hpod.policies.ladder_payoff`), stored
#: by the strategy driver so a restart keeps it; shown in the efficiency report.
LADDER_ATTR = "hpod:ladder"
#: A budget changed live (the spec keeps the one the study was created with).
BUDGET_ATTR = "hpod:budget"

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Multivariate TPE, its `group` option and a few pruners are flagged experimental; hpod pins
# Optuna's version and tests them, so the warning is noise in every log line.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class KernelJournalLock(BaseJournalFileLock):
    """A journal-file write lock that the kernel releases when its holder dies.

    Optuna's own locks (a symlink or an O_EXCL file) outlive a SIGKILLed holder, and every
    other process then waits out a 30 s grace period before breaking them; surviving SIGKILL
    is hpod's job, so its processes lock with flock(2) instead. Only writers lock (Optuna
    reads whole lines without a lock), so `optuna` and optuna-dashboard still read the file.
    """

    def __init__(self, journal_path: str) -> None:
        self._path = journal_path + ".flock"
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Block until this process holds the lock."""
        self._thread_lock.acquire()
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return True

    def release(self) -> None:
        """Let the next writer in."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._thread_lock.release()


def make_storage(url: str) -> BaseStorage:
    """An Optuna storage for `url`: ``journal:///path`` or any SQLAlchemy RDB URL."""
    if url.startswith("journal://"):
        path = url.removeprefix("journal://")
        return JournalStorage(GroupCommitJournalBackend(path, lock_obj=KernelJournalLock(path)))
    if url.startswith("sqlite"):
        _use_wal(url)
        # Several processes (daemon, workers reporting) share the file: wait for locks
        # instead of failing at once.
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def _use_wal(url: str) -> None:
    """Put a SQLite file in WAL mode (persistent): readers stop blocking the writer."""
    path = url.removeprefix("sqlite:///")
    if path and path != url and not path.startswith(":memory:"):
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")


def sampler_seed(seed: int | None, n_trials: int) -> int | None:
    """The seed of a sampler built when the study already holds `n_trials` trials.

    A study's sampler is rebuilt whenever its plan changes (a strategy switch) and after a
    restart. Given the spec's seed again, a seeded sampler would restart its random sequence
    and propose the study's first configurations again (answered by the result cache: wasted
    budget, repeated exploration). So only the first sampler (no trials yet) takes the spec's
    seed; a later one takes a stable hash of (seed, trials so far): a seeded study stays
    reproducible, and never replays its own start. Unseeded stays unseeded.
    """
    if seed is None or n_trials == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{n_trials}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


class RandomSampler(optuna.samplers.RandomSampler):
    """Optuna's random sampler, building each parameter's search-space transform once.

    Optuna's builds a `_SearchSpaceTransform` for every parameter it samples, a quarter of
    its sampling time (issue 16's profile of trivial trials); the transform depends only on
    the parameter's name and distribution, so it is kept per (name, distribution). The draws
    are Optuna's own, the same random-state calls in the same order: the same seed gives the
    same parameters.
    """

    #: Transforms kept at most (a study's space has a few dozen parameters).
    KEPT = 1024

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self._transforms: dict[tuple[str, BaseDistribution], _SearchSpaceTransform] = {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """As Optuna's: one uniform draw in the parameter's transformed space."""
        key = (param_name, param_distribution)
        trans = self._transforms.get(key)
        if trans is None:
            if len(self._transforms) >= self.KEPT:
                self._transforms.clear()
            trans = self._transforms[key] = _SearchSpaceTransform({param_name: param_distribution})
        bounds = trans.bounds
        trans_params = self._rng.rng.uniform(bounds[:, 0], bounds[:, 1])
        return trans.untransform(trans_params)[param_name]


def make_sampler(
    name: str, options: dict[str, Any], seed: int | None, parallel: bool = False
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `name` with the mode's `options`.

    With trials evaluated in parallel, TPE lies constantly about the trials still running,
    so trials asked together are spread out instead of piling onto one point. ``cmaes`` and
    ``gp`` are hpod's samplers around Optuna's (`hpod.sampling`): each opens with a short
    scrambled Sobol design; the GP runs in a separate process.
    """
    options = dict(options)
    if name == "random":
        return RandomSampler(seed=seed)
    if name == "qmc":
        options.setdefault("scramble", True)
        return optuna.samplers.QMCSampler(seed=seed, **options)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **options)
    if name == "cmaes":
        # A QMC opening, a warm start at its best point and IPOP restarts (hpod.sampling.cmaes).
        from hpod.sampling.cmaes import OpeningCmaEsSampler

        return OpeningCmaEsSampler(seed=seed, parallel=parallel, **options)
    if name == "gp":
        # Optuna's GPSampler in the sampler process: torch never enters this one.
        from hpod.sampling.process import ProcessGPSampler

        return ProcessGPSampler(seed=seed, parallel=parallel, **options)
    if name != "tpe":
        raise ValueError(f"unknown sampler {name!r}")
    if parallel:
        options.setdefault("constant_liar", True)
    if options.get("multivariate"):
        options.setdefault("group", True)
    return optuna.samplers.TPESampler(seed=seed, **options)


def check_sampler_available(name: str) -> None:
    """Refuse a sampler whose optional dependency is missing, before the study exists."""
    needs = {"cmaes": "cmaes", "gp": "torch", "qmc": "scipy"}
    module = needs.get(name)
    if module is None:
        return
    if not _importable(module):
        raise RequestRejected(
            "unavailable",
            "study.sampler.name",
            f"sampler {name!r} needs the {module!r} package on the daemon",
        )


def _importable(module: str) -> bool:
    """Whether `module` can be used: torch (for gp) is only found, never imported, since it
    must stay out of the daemon's memory; the others are imported, so that a package that is
    there but broken counts as missing."""
    if module == "torch":
        return importlib.util.find_spec(module) is not None
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Suggest every active parameter of `space`, in order (conditions see earlier values).

    Calling it again on the same trial returns the values already stored, so a trial can be
    rebuilt after a restart.
    """
    params: dict[str, Any] = {}
    for name, p in space.items():
        if p.condition is not None:
            parent = params.get(p.condition.param, _INACTIVE)
            if parent is _INACTIVE or parent not in p.condition.values:
                continue
        if isinstance(p, FloatParam):
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            params[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
        else:
            params[name] = trial.suggest_categorical(name, p.choices)
    return params


_INACTIVE = object()


def check_params(params: dict[str, Any], space: dict[str, ParamSpec]) -> None:
    """Refuse a proposed configuration that the space could not have produced."""
    for name, value in params.items():
        field = f"params.{name}"
        p = space.get(name)
        if p is None:
            raise RequestRejected("invalid", field, f"{name!r} is not a parameter of the space")
        if isinstance(p, CategoricalParam):
            if value not in p.choices or type(value) is not type(_match(value, p.choices)):
                raise RequestRejected("invalid", field, f"{value!r} is not one of {p.choices!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestRejected("invalid", field, f"expected a number, got {value!r}")
        if isinstance(p, IntParam) and not float(value).is_integer():
            raise RequestRejected("invalid", field, f"expected an integer, got {value!r}")
        if not math.isfinite(value) or not p.low <= value <= p.high:
            raise RequestRejected("invalid", field, f"{value!r} is outside [{p.low}, {p.high}]")


def _match(value: Any, choices: list[Any]) -> Any:
    return next(c for c in choices if c == value)


def load_spec(storage: BaseStorage, study_name: str) -> StudySpec | None:
    """The hpod spec stored with a study, or None for a study hpod does not manage."""
    study_id = storage.get_study_id_from_name(study_name)
    raw = storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
    return StudySpec.model_validate_json(raw) if raw else None
