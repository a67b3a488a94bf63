"""Optuna's GP sampler, run in a separate process so that torch never enters the daemon.

`SamplerProcess` is the daemon's one sampler process (`shared()`): started on first use,
restarted with `hpod.backoff.Backoff` after it dies, times out or answers nonsense, stopped
when the daemon shuts down (`stop_shared`). `ProcessGPSampler` is the Optuna sampler a study
uses: a scrambled Sobol opening (`hpod.sampling.opening`), then each trial's point from the
process. Where the process cannot answer in time, that one trial is sampled by multivariate
TPE (random while TPE has too few trials) and the fallback is logged and counted; the study
never waits on a broken process.

The daemon calls samplers on its Optuna thread (`hpod.daemon.store`), never on the event
loop, so the blocking exchange with the process here stalls no coroutine; other studies'
asks wait behind it, as they do behind an in-process sampler. The CPU the process spent on
each suggestion is stored on the trial (`SAMPLER_CPU_ATTR`) for the efficiency report.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from optuna.distributions import BaseDistribution
from optuna.samplers import QMCSampler, TPESampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from hpod.backoff import Backoff
from hpod.sampling import SAMPLER_CPU_ATTR, wire
from hpod.sampling.delegate import DelegatingSampler
from hpod.sampling.opening import opening_size

log = structlog.get_logger("hpod.sampler")

#: Seconds to wait for a started process to have torch loaded.
START_TIMEOUT = 120.0
#: Seconds one request waits for a process still starting (its trial falls back after).
READY_WAIT = 5.0
#: Seconds to wait for one suggestion; a GP over a few hundred trials takes about one.
SUGGEST_TIMEOUT = 30.0
#: Seconds to wait for the process to leave after stdin closes, before it is killed.
STOP_TIMEOUT = 5.0
#: Bytes of one answer line at most (an answer is a few hundred).
MAX_LINE = 1 << 20


class SamplerUnavailable(RuntimeError):
    """The sampler process could not answer this request (the reason says why)."""


@dataclass
class ProcessStats:
    """What the sampler process has done since the daemon started."""

    suggestions: int = 0
    cpu_seconds: float = 0.0
    fallbacks: int = 0
    starts: int = 0
    deaths: int = 0
    last_error: str | None = None
    by_study: dict[str, dict[str, float]] = field(default_factory=dict)

    def note(self, study: str, key: str, amount: float) -> None:
        entry = self.by_study.setdefault(study, {"suggestions": 0, "cpu_seconds": 0.0})
        entry[key] = entry.get(key, 0) + amount


class SamplerProcess:
    """One long-lived child process answering GP requests, one at a time (thread-safe)."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        start_timeout: float = START_TIMEOUT,
        timeout: float = SUGGEST_TIMEOUT,
        backoff: Backoff | None = None,
        ready_wait: float = READY_WAIT,
    ) -> None:
        self.command = list(command or [sys.executable, "-m", "hpod.sampling.child"])
        self.start_timeout = start_timeout
        self.ready_wait = ready_wait
        self.timeout = timeout
        self.backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self.stats = ProcessStats()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._buffer = b""
        self._retry_at = 0.0
        self._started_at = 0.0
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running process's id (None when there is none)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def prestart(self) -> None:
        """Start the process now, without waiting for it: it loads torch while the study's
        opening design runs, so the first suggestion does not pay for the start."""
        with self._lock:
            if not self._closed and self._proc is None and time.monotonic() >= self._retry_at:
                self._spawn()

    def suggest(self, study: str, request: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """The process's answer to `request` (params in internal representation) and the CPU
        seconds it spent; `SamplerUnavailable` if it cannot answer now."""
        with self._lock:
            proc = self._running()
            try:
                if not self._ready:
                    self._await_ready(proc)
                assert proc.stdin is not None
                proc.stdin.write(wire.encode(request))
                proc.stdin.flush()
                reply = wire.decode(self._read_line(proc, self.timeout))
            except (OSError, TimeoutError, wire.WireError) as exc:
                self._fail(f"{type(exc).__name__}: {exc}")
                raise SamplerUnavailable(self.stats.last_error or "") from exc
            if not reply.get("ok"):
                # The process is fine; it could not serve this request (it said why).
                raise SamplerUnavailable(f"the sampler process refused: {reply.get('error')}")
            cpu = float(reply.get("cpu") or 0.0)
            self.stats.suggestions += 1
            self.stats.cpu_seconds += cpu
            self.stats.note(study, "suggestions", 1)
            self.stats.note(study, "cpu_seconds", cpu)
            self.backoff.reset()
            params = reply.get("params")
            if not isinstance(params, dict):
                raise SamplerUnavailable("the sampler process answered no params")
            return params, cpu

    def note_fallback(self, study: str) -> None:
        """Count a trial sampled without the process."""
        with self._lock:
            self.stats.fallbacks += 1
            self.stats.note(study, "fallbacks", 1)

    def status(self) -> dict[str, Any]:
        """The process and its figures, for ``GET /policy`` and ``hpod policy status``."""
        s = self.stats
        return {
            "pid": self.pid,
            "ready": self._ready and self.pid is not None,
            "starts": s.starts,
            "deaths": s.deaths,
            "suggestions": s.suggestions,
            "cpu_seconds": round(s.cpu_seconds, 4),
            "fallbacks": s.fallbacks,
            "last_error": s.last_error,
        }

    def close(self) -> None:
        """Stop the process (stdin closed, then killed if it lingers); no restart after."""
        with self._lock:
            self._closed = True
            self._stop()

    # --- inside the lock -------------------------------------------------------------------

    def _running(self) -> subprocess.Popen[bytes]:
        if self._closed:
            raise SamplerUnavailable("the sampler process is stopped (daemon shutting down)")
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._fail(f"the sampler process exited with {proc.returncode}")
            proc = None
        if proc is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise SamplerUnavailable(
                    f"the sampler process restarts in {wait:.1f} s ({self.stats.last_error})"
                )
            proc = self._spawn()
        return proc

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Read the process's hello. A process still loading torch is waited for at most
        `ready_wait` seconds per request (the trial falls back meanwhile: the daemon's Optuna
        thread serves every study), and given up on after `start_timeout` in all."""
        left = self._started_at + self.start_timeout - time.monotonic()
        try:
            line = self._read_line(proc, max(0.0, min(self.ready_wait, left)))
        except TimeoutError:
            if left > self.ready_wait:
                raise SamplerUnavailable("the sampler process is still starting") from None
            raise TimeoutError(f"not ready within {self.start_timeout:g} s") from None
        hello = wire.decode(line)
        if hello.get("v") != wire.PROTOCOL:
            raise wire.WireError(f"the process speaks protocol {hello.get('v')!r}")
        self._ready = True

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        self._ready = False
        self._buffer = b""
        self._started_at = time.monotonic()
        self.stats.starts += 1
        log.info("sampler.process_started", pid=self._proc.pid, starts=self.stats.starts)
        return self._proc

    def _read_line(self, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
        """One line from the process within `timeout` seconds (`TimeoutError` if not; `OSError`
        if the process closed its end)."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer within {timeout:g} s")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise OSError(f"the sampler process closed its output (exit {proc.poll()})")
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                raise wire.WireError("answer longer than the limit")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _fail(self, reason: str) -> None:
        """The process is unusable: stop it and restart after the back-off."""
        self.stats.deaths += 1
        self.stats.last_error = reason
        delay = self.backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        log.warning("sampler.process_failed", reason=reason, restart_in=round(delay, 2))
        self._stop(graceful=False)

    def _stop(self, graceful: bool = True) -> None:
        """End the process: stdin closed and `STOP_TIMEOUT` to leave, or (`graceful` False:
        it hangs or speaks nonsense) killed at once."""
        proc, self._proc = self._proc, None
        self._ready = False
        self._buffer = b""
        if proc is None:
            return
        if not graceful and proc.poll() is None:
            proc.kill()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


_shared: SamplerProcess | None = None
_shared_lock = threading.Lock()


def shared() -> SamplerProcess:
    """This process's sampler process (one per daemon), created on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SamplerProcess()
            atexit.register(_shared.close)
        return _shared


def shared_status() -> dict[str, Any] | None:
    """The shared process's status (None if no study has used one)."""
    return _shared.status() if _shared is not None else None


def stop_shared() -> None:
    """Stop the shared process (daemon shutdown); a later use starts a new one."""
    global _shared
    with _shared_lock:
        process, _shared = _shared, None
    if process is not None:
        process.close()


class ProcessGPSampler(DelegatingSampler):
    """Optuna's GPSampler, answered by the sampler process, after a QMC opening."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        n_startup_trials: int | None = None,
        process: SamplerProcess | None = None,
        parallel: bool = False,
        deterministic_objective: bool = False,
    ) -> None:
        self._seed = seed
        self._deterministic = deterministic_objective
        self._n_startup = n_startup_trials
        self._process = process
        self._space = IntersectionSearchSpace()
        self._opening = QMCSampler(
            seed=seed,
            scramble=True,
            warn_independent_sampling=False,
            warn_asynchronous_seeding=False,
        )
        # The inner sampler: parameters outside the joint space, and every trial the process
        # cannot answer (its fallback).
        self._inner = TPESampler(
            seed=seed,
            multivariate=True,
            constant_liar=parallel,
        )

    @property
    def process(self) -> SamplerProcess:
        if self._process is None:
            self._process = shared()
        return self._process

    def reseed_rng(self) -> None:
        self._opening.reseed_rng()
        self._inner.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {
            name: dist for name, dist in self._space.calculate(study).items() if not dist.single()
        }

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        trials = study._get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING), use_cache=False
        )
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        opening = opening_size(len(search_space)) if self._n_startup is None else self._n_startup
        if complete < opening:
            self.process.prestart()
            return self._opening.sample_relative(study, trial, search_space)
        request = wire.request(
            [d.name.lower() for d in study.directions], search_space, trials, self._seed
        )
        request["deterministic_objective"] = self._deterministic
        try:
            internal, cpu = self.process.suggest(study.study_name, request)
            params = wire.external(search_space, internal)
        except (SamplerUnavailable, wire.WireError) as exc:
            log.warning(
                "sampler.fallback",
                study=study.study_name,
                trial=trial.number,
                reason=str(exc),
                fallback="tpe",
            )
            self.process.note_fallback(study.study_name)
            return self._inner.sample_relative(study, trial, search_space)
        study._storage.set_trial_user_attr(trial._trial_id, SAMPLER_CPU_ATTR, round(cpu, 6))
        return params


__all__ = [
    "SAMPLER_CPU_ATTR",
    "ProcessGPSampler",
    "SamplerProcess",
    "SamplerUnavailable",
    "shared",
    "shared_status",
    "stop_shared",
]
