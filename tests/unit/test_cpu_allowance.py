"""A trial's CPU allowance on the worker (`hpod.workers.allowance`): a trial that reaches it
stops, pruned, with the CPU it measured; one that stays below it is untouched."""

from __future__ import annotations

import signal
import time
from typing import Any

from hpod.workers.allowance import CpuAllowance, grace_seconds
from hpod.workers.context import NoPruning, TrialContext, TrialPruned
from hpod.workers.evaluation import evaluate

#: The allowance in these tests, CPU seconds.
ALLOWANCE = 0.15


def burn(seconds: float) -> float:
    """Spend `seconds` of CPU in Python; the CPU it took."""
    started = time.process_time()
    total = 0
    while time.process_time() - started < seconds:
        total += sum(range(200))
    return time.process_time() - started


class Chunks:
    """An objective of `steps` chunks of CPU, reporting after each (`reports`) or never;
    records each chunk's CPU."""

    def __init__(self, steps: int, chunk: float, reports: bool) -> None:
        self.steps, self.chunk, self.reports = steps, chunk, reports
        self.done: list[float] = []
        self.hpod_fidelity = "epochs" if reports else None

    def __call__(self, ctx: TrialContext, **_: Any) -> float:
        for step in range(1, self.steps + 1):
            self.done.append(burn(self.chunk))
            if self.reports:
                ctx.report(1.0 / step, step)
                if ctx.should_prune():
                    raise TrialPruned("pruned")
        return 0.0


def run(fn: Chunks, seconds: float | None) -> tuple[Any, CpuAllowance]:
    allowance = CpuAllowance(seconds)
    with allowance.running():
        result = evaluate(allowance.objective(fn), {}, {}, [1.0], allowance.reporter(NoPruning()))
    return result, allowance


def test_a_reporting_trial_stops_at_its_next_report_after_the_allowance() -> None:
    """40 chunks of 0.02 s (0.8 s in all), allowance 0.15 s: pruned after a few chunks; it
    spent at most the allowance and one report interval (one chunk) more."""
    fn = Chunks(40, 0.02, reports=True)
    result, allowance = run(fn, ALLOWANCE)
    assert result.pruned and allowance.spent and allowance.asks
    assert len(fn.done) < 40
    assert result.cpu_seconds <= ALLOWANCE + 2 * max(fn.done)


def test_a_trial_that_never_reports_is_interrupted() -> None:
    """The same work without reports: interrupted inside a chunk, pruned, CPU measured."""
    fn = Chunks(40, 0.02, reports=False)
    result, allowance = run(fn, ALLOWANCE)
    assert result.pruned and allowance.spent and not allowance.asks
    assert len(fn.done) < 40
    assert ALLOWANCE / 2 <= result.cpu_seconds <= ALLOWANCE + 2 * max(fn.done)


def test_a_trial_within_its_allowance_completes() -> None:
    fn = Chunks(3, 0.01, reports=False)
    result, allowance = run(fn, 5.0)
    assert not result.pruned and result.values == [0.0] and not allowance.spent
    assert len(fn.done) == 3


def test_no_allowance_means_no_limit_and_no_timer() -> None:
    before = signal.getsignal(signal.SIGPROF)
    fn = Chunks(2, 0.01, reports=True)
    result, allowance = run(fn, None)
    assert not result.pruned and not allowance.spent
    assert signal.getsignal(signal.SIGPROF) is before
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)


def test_the_timer_is_disarmed_after_the_evaluation() -> None:
    fn = Chunks(2, 0.01, reports=False)
    run(fn, 5.0)
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)


def test_a_call_into_c_past_allowance_and_grace_calls_on_overrun_once() -> None:
    """One PBKDF2 call of about 2.5 CPU seconds, allowance 0.1 s, grace 1 s: no Python
    handler runs inside it, so the watchdog reports the overrun (once, with the CPU spent
    then, past allowance and grace) while the objective still runs."""
    import hashlib

    started = time.process_time()
    hashlib.pbkdf2_hmac("sha256", b"hpod", b"unit", 20_000)
    per_round = max(time.process_time() - started, 1e-4) / 20_000
    seen: list[float] = []

    def in_c(ctx: TrialContext) -> float:
        # 2.5 s where 1.1 s would do: the calibration above varies under load.
        hashlib.pbkdf2_hmac("sha256", b"hpod", b"unit", int(2.5 / per_round))
        return 0.0

    allowance = CpuAllowance(0.1, seen.append)
    with allowance.running():
        evaluate(allowance.objective(in_c), {}, {}, [1.0], allowance.reporter(NoPruning()))
    assert len(seen) == 1 and seen[0] >= 0.1 + grace_seconds(0.1)
    assert allowance.spent
