"""hpod's samplers: the GP in its own process (answers, death, hang, refusal, shutdown) and
CMA-ES with a Sobol opening, a warm start and IPOP restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from conftest import eventually
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpod.backoff import Backoff
from hpod.engine import make_sampler
from hpod.sampling import SAMPLER_CPU_ATTR, wire
from hpod.sampling.cmaes import RESTART_ATTR, OpeningCmaEsSampler
from hpod.sampling.opening import opening_size
from hpod.sampling.process import (
    START_TIMEOUT,
    ProcessGPSampler,
    SamplerProcess,
    SamplerUnavailable,
)

QUICK = Backoff(initial=0.05, maximum=0.1, jitter=0.0)


@pytest.fixture
def process() -> Iterator[SamplerProcess]:
    """A sampler process of the test's own, stopped after it; it waits for torch to load
    (however loaded the machine), so which trials the GP answers is deterministic."""
    proc = SamplerProcess(
        backoff=Backoff(initial=0.05, maximum=0.1, jitter=0.0), ready_wait=START_TIMEOUT
    )
    yield proc
    proc.close()


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -3.0, 3.0)
    n = trial.suggest_int("n", 0, 8)
    return (x - 1.0) ** 2 + (n - 5) ** 2


def gp_study(process: SamplerProcess, seed: int = 1) -> optuna.Study:
    return optuna.create_study(sampler=ProcessGPSampler(seed=seed, process=process))


def test_the_gp_answers_from_its_process_after_a_sobol_opening(process: SamplerProcess) -> None:
    """Seeded, so a second study gives the same points (a restarted process answers alike)."""
    study = gp_study(process)
    study.optimize(quadratic, n_trials=opening_size(2) + 4)
    by_gp = [t for t in study.trials if SAMPLER_CPU_ATTR in t.user_attrs]
    # The opening (trial 0 by the independent sampler, then Sobol) never asks the process;
    # every trial after it does, and its CPU is recorded on the trial.
    assert [t.number for t in by_gp] == list(range(opening_size(2), len(study.trials)))
    assert all(t.user_attrs[SAMPLER_CPU_ATTR] > 0 for t in by_gp)
    status = process.status()
    assert status["suggestions"] == 4 and status["fallbacks"] == 0 and status["starts"] == 1
    assert status["cpu_seconds"] == pytest.approx(
        sum(t.user_attrs[SAMPLER_CPU_ATTR] for t in by_gp), abs=1e-3
    )
    assert status["pid"] is not None and status["pid"] != os.getpid()
    for t in study.trials:
        assert -3.0 <= t.params["x"] <= 3.0 and isinstance(t.params["n"], int)
    # The process keeps no state between requests: the same seed gives the same points.
    again = gp_study(process)
    again.optimize(quadratic, n_trials=len(study.trials))
    assert [t.params for t in again.trials] == [t.params for t in study.trials]


def test_a_dead_process_means_a_fallback_then_a_restart(
    process: SamplerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the process: the next trial is sampled by TPE (logged, counted), and once the
    back-off has passed a new process answers."""
    study = gp_study(process)
    study.optimize(quadratic, n_trials=opening_size(2) + 1)
    pid = process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: process._proc is not None and process._proc.poll() is not None)
    study.optimize(quadratic, n_trials=1)
    fallen = study.trials[-1]
    assert fallen.state == TrialState.COMPLETE and SAMPLER_CPU_ATTR not in fallen.user_attrs
    status = process.status()
    assert status["fallbacks"] == 1 and status["deaths"] == 1
    assert "exited with -9" in (status["last_error"] or "")
    logged = capsys.readouterr().out
    assert "sampler.process_failed" in logged and "sampler.fallback" in logged

    def answered_by_a_new_process() -> bool:
        study.optimize(quadratic, n_trials=1)
        return SAMPLER_CPU_ATTR in study.trials[-1].user_attrs

    eventually(answered_by_a_new_process, timeout=120)
    assert process.status()["starts"] == 2 and process.pid not in (None, pid)


def hanging(answer: str | None) -> list[str]:
    """A fake sampler process that says ready, then answers `answer` or nothing at all."""
    reply = f"sys.stdout.write({answer!r} + '\\n'); sys.stdout.flush()" if answer else ""
    body = (
        "import sys, time\n"
        'sys.stdout.write(\'{"ready": true, "v": 1}\\n\'); sys.stdout.flush()\n'
        "for line in sys.stdin:\n"
        f"    {reply or 'time.sleep(3600)'}\n"
    )
    return [sys.executable, "-c", body]


def slow_start(delay: float) -> list[str]:
    """A fake sampler process that takes `delay` seconds to say ready, then answers."""
    answer = '{"ok": true, "params": {"x": 0.5, "n": 2}, "cpu": 0.01}'
    body = (
        "import sys, time\n"
        f"time.sleep({delay})\n"
        'sys.stdout.write(\'{"ready": true, "v": 1}\\n\'); sys.stdout.flush()\n'
        "for line in sys.stdin:\n"
        f"    sys.stdout.write({answer!r} + '\\n'); sys.stdout.flush()\n"
    )
    return [sys.executable, "-c", body]


def test_a_process_still_starting_is_not_waited_for() -> None:
    """While torch loads, a trial falls back rather than holding the Optuna thread; the
    process is not killed, and answers once ready."""
    process = SamplerProcess(slow_start(1.5), start_timeout=60, ready_wait=0.1, backoff=QUICK)
    try:
        study = gp_study(process)
        study.optimize(quadratic, n_trials=opening_size(2))  # prestarts the process
        process._started_at = time.monotonic()  # as if it had only just been started
        study.optimize(quadratic, n_trials=1)
        assert process.stats.fallbacks == 1 and process.stats.deaths == 0
        assert process.pid is not None

        def answered() -> bool:
            try:
                return process.suggest("s", {"v": 1}) is not None
            except SamplerUnavailable:
                return False  # still starting

        eventually(answered, timeout=30)
        assert process.stats.starts == 1 and process.stats.deaths == 0
    finally:
        process.close()


def test_a_process_that_never_starts_is_given_up_on() -> None:
    process = SamplerProcess(slow_start(3600), start_timeout=0.3, ready_wait=0.1, backoff=QUICK)
    try:
        study = gp_study(process)
        study.optimize(quadratic, n_trials=opening_size(2) + 1)
        process._started_at = time.monotonic() - 1.0  # its start budget spent
        study.optimize(quadratic, n_trials=1)
        assert process.stats.deaths == 1 and "not ready within 0.3 s" in str(
            process.stats.last_error
        )
        assert process.stats.fallbacks == 2
    finally:
        process.close()


def test_a_hanging_process_times_out_into_a_fallback_and_is_killed() -> None:
    process = SamplerProcess(hanging(None), timeout=0.5, backoff=QUICK)
    try:
        study = gp_study(process)
        study.optimize(quadratic, n_trials=opening_size(2) + 1)
        hung = process.stats
        assert hung.fallbacks == 1 and hung.deaths == 1
        assert "no answer within 0.5 s" in (hung.last_error or "")
        assert process.pid is None  # killed, not left running
        assert study.trials[-1].state == TrialState.COMPLETE
    finally:
        process.close()


@pytest.mark.parametrize(
    ("answer", "dies"),
    [
        ('{"ok": false, "error": "no"}', False),  # a refusal: the process stays
        ('{"ok": true, "params": {"x": 9.0, "n": 1}, "cpu": 0.1}', False),  # outside the space
        ("garbage", True),  # nonsense: restarted
    ],
)
def test_a_bad_answer_is_a_fallback(answer: str, dies: bool) -> None:
    process = SamplerProcess(hanging(answer), timeout=5, backoff=QUICK)
    try:
        study = gp_study(process)
        study.optimize(quadratic, n_trials=opening_size(2) + 1)
        assert process.stats.fallbacks == 1
        assert process.stats.deaths == int(dies)
        assert (process.pid is None) == dies
        assert -3.0 <= study.trials[-1].params["x"] <= 3.0
    finally:
        process.close()


def test_a_closed_process_is_not_restarted(process: SamplerProcess) -> None:
    study = gp_study(process)
    study.optimize(quadratic, n_trials=opening_size(2) + 1)
    pid = process.pid
    process.close()
    assert process.pid is None
    assert pid is not None and not _alive(pid)
    study.optimize(quadratic, n_trials=1)
    assert process.stats.fallbacks == 1 and process.stats.starts == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie until reaped counts as gone: close() waits for it, so it is reaped.
    return True


def test_answers_are_snapped_to_the_grid_and_checked() -> None:
    space: dict[str, Any] = {
        "x": FloatDistribution(0.0, 1.0, step=0.25),
        "n": IntDistribution(1, 9),
        "c": CategoricalDistribution(["a", "b"]),
    }
    params = wire.external(space, {"x": 0.2600000001, "n": 3.9999999, "c": 1.0})
    assert params == {"x": 0.25, "n": 4, "c": "b"}
    for bad in ({"x": 0.5}, {"x": float("nan"), "n": 2, "c": 0}, {"x": 0.5, "n": 2, "c": 7}):
        with pytest.raises(wire.WireError):
            wire.external(space, bad)


def sphere(trial: optuna.Trial) -> float:
    return sum(trial.suggest_float(f"x{i}", -5.0, 5.0) ** 2 for i in range(2))


def test_cmaes_opens_with_sobol_then_restarts_when_it_converges() -> None:
    study = optuna.create_study(sampler=make_sampler("cmaes", {}, seed=1))
    study.optimize(sphere, n_trials=600)
    runs = [t.system_attrs.get(RESTART_ATTR) for t in study.trials]
    opening = opening_size(2)
    assert runs[:opening] == [None] * opening  # the Sobol opening
    assert set(runs[opening:]) >= {0, 1}  # CMA-ES, then at least one IPOP restart
    assert runs[opening:] == sorted(runs[opening:])  # restarts only go forward
    assert study.best_value < 1e-8


def test_cmaes_starts_at_the_x0_it_is_given() -> None:
    """A study switched to CMA-ES mid-way (`strategy.actions.warm_start`) starts at its best
    point with a small step, without a new opening."""
    x0 = {"x0": 4.0, "x1": -4.0}
    study = optuna.create_study(sampler=OpeningCmaEsSampler(seed=2, x0=x0, sigma0=0.01))
    study.enqueue_trial(x0)
    study.optimize(sphere, n_trials=6)
    for t in study.trials[1:]:
        assert abs(t.params["x0"] - 4.0) < 0.5 and abs(t.params["x1"] + 4.0) < 0.5


def test_building_and_checking_the_gp_sampler_imports_no_torch() -> None:
    """The daemon builds the GP's sampler and checks torch is installed without importing it."""
    code = (
        "import sys\n"
        "from hpod.engine import check_sampler_available, make_sampler\n"
        "check_sampler_available('gp')\n"
        "make_sampler('gp', {}, 0, parallel=True)\n"
        "import hpod.daemon.manager\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
