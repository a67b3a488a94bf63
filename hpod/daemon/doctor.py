"""Where a study's time goes: seconds per stage of a trial's path, and the bottleneck.

The study loop adds the seconds of each stage as trials pass through it: the sampler (the
``ask`` call on the Optuna thread), dispatch (publishing the task), queue wait (published to
a worker starting the task), pack wait (a packed trial waiting behind, or for, the other
trials of its task), evaluation (as the worker measured it), transport (the rest of the
published → result interval: the broker both ways), storage (``tell`` and the bookkeeping
writes) and the policy chain's hooks; `hpod.daemon.timeline` says how a trial's time is split.
The stage with the largest share is the bottleneck, and the verdict says what to change about
it. Queue wait, pack wait, evaluation and transport are summed over trials that run in
parallel (worker-seconds); the other stages run one at a time in the daemon. The report also
gives the mean per trial of each part of a trial's time (`hpod.daemon.timeline.PARTS`):
sampler, dispatch, storage and policies together are the *daemon* part, hpod's own cost.
The figures cover this daemon's lifetime (they are not persisted), and only its running
studies and the most recently started finished ones (`max_finished_study_series`).
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hpod.daemon.timeline import PARTS

#: The stages, in the order a trial meets them, each with what to do when it dominates.
ADVICE = {
    "sampler": "asking Optuna is slow; a cheaper sampler (random, tpe) or a smaller "
    "space would help",
    "dispatch": "publishing tasks is slow; check the broker (and its disk)",
    "queue_wait": "trials wait before a worker starts them; add workers",
    "pack_wait": "packed trials wait behind each other in one task; more workers or a "
    "smaller pack (batch_seconds) let idle workers run them",
    "evaluation": "the objective itself takes the time, as it should; lower fidelity or "
    "more aggressive pruning make it cheaper",
    "transport": "the broker's round trip dominates; RabbitMQ is faster than the embedded "
    "broker, and batching trials of a few milliseconds pays it once per pack",
    "storage": "storage writes are slow; the journal file or PostgreSQL is faster than SQLite",
    "policies": "a policy hook is slow; the log names the policies in the chain",
}
STAGES = tuple(ADVICE)
#: The stages that are the daemon's own work on a trial (the `daemon` part of its time).
DAEMON_STAGES = ("sampler", "dispatch", "storage", "policies")
#: Result -> next dispatch latencies kept per study (the latest), for their quantiles.
LATENCY_SAMPLES = 10_000


class TimeBreakdown:
    """Seconds one study spent in each stage, accumulated as its trials pass."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.trials = 0
        #: Seconds from a worker's result reaching the study to the study's next task
        #: reaching the broker (the tell, the next ask and its publish), latest last.
        self.result_to_dispatch: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def add(self, stage: str, seconds: float) -> None:
        """Count `seconds` (negative values, from clock skew between hosts, count as 0)."""
        self.seconds[stage] += max(0.0, seconds)

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Count the time the block takes, even when it raises."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def bottleneck(self) -> str | None:
        """The stage with the largest share, or None before anything was measured."""
        stage = max(STAGES, key=lambda s: self.seconds[s])
        return stage if self.seconds[stage] > 0 else None

    def report(self) -> dict[str, Any]:
        """Seconds and shares per stage, the bottleneck and a one-sentence verdict."""
        total = sum(self.seconds.values())
        shares = {s: (v / total if total else 0.0) for s, v in self.seconds.items()}
        stage = self.bottleneck()
        if stage is None:
            verdict = "no timings recorded by this daemon yet"
        else:
            verdict = f"bottleneck: {stage} ({shares[stage]:.0%} of the time): {ADVICE[stage]}"
        return {
            "seconds": dict(self.seconds),
            "shares": shares,
            "total_seconds": total,
            "trials": self.trials,
            "per_trial": self.per_trial(),
            "result_to_dispatch": self.latency(),
            "bottleneck": stage,
            "verdict": verdict,
        }

    def latency(self) -> dict[str, float] | None:
        """Result -> next dispatch: median and 99th percentile in seconds over the latest
        `LATENCY_SAMPLES` (None before one)."""
        samples = sorted(self.result_to_dispatch)
        if not samples:
            return None
        p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))]
        return {"p50": statistics.median(samples), "p99": p99, "samples": len(samples)}

    def per_trial(self) -> dict[str, float] | None:
        """Mean seconds per told trial of each part of a trial's time (None before one).

        The daemon's stages together are its `daemon` part; the waits, the evaluation and
        transport are the trial's own parts (`hpod.daemon.timeline.PARTS`)."""
        if not self.trials:
            return None
        daemon = sum(self.seconds[s] for s in DAEMON_STAGES)
        parts = {"daemon": daemon, **{p: self.seconds[p] for p in PARTS if p != "daemon"}}
        return {p: parts[p] / self.trials for p in PARTS}


class Doctor:
    """The time breakdowns of the studies this daemon ran, by study name.

    Every running study keeps its breakdown; of the finished ones, the `max_finished` that
    started last are kept and older ones forgotten (a bounded LRU: a daemon that runs
    thousands of studies must not hold a record of each forever)."""

    def __init__(
        self, max_finished: int = 200, running: Callable[[str], bool] = lambda name: False
    ) -> None:
        self.max_finished = max_finished
        self._running = running
        #: Least recently started first.
        self._studies: OrderedDict[str, TimeBreakdown] = OrderedDict()

    def breakdown(self, study: str) -> TimeBreakdown:
        """The breakdown of `study`, created empty on first use (a study (re)started)."""
        breakdown = self._studies.get(study)
        if breakdown is not None:
            self._studies.move_to_end(study)
            return breakdown
        breakdown = self._studies[study] = TimeBreakdown()
        self._evict()
        return breakdown

    def _evict(self) -> None:
        """Forget the least recently started finished studies beyond the bound (on a new
        study, and before the reports are listed: a study that finished since counts)."""
        if len(self._studies) <= self.max_finished:
            return
        finished = [name for name in self._studies if not self._running(name)]
        for name in finished[: max(0, len(finished) - self.max_finished)]:
            del self._studies[name]

    def report(self, study: str) -> dict[str, Any]:
        """The report of `study` (empty if this daemon never ran it, or forgot it)."""
        breakdown = self._studies.get(study) or TimeBreakdown()
        return {"study": study, **breakdown.report()}

    def reports(self) -> dict[str, dict[str, Any]]:
        """The reports of the studies this daemon keeps (running, and recent finished)."""
        self._evict()
        return {name: self.report(name) for name in sorted(self._studies)}
