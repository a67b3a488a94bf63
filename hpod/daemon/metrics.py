"""Prometheus metrics of the daemon, served at ``GET /metrics``.

All series live in one `CollectorRegistry` owned by a `Metrics` object, not in
prometheus-client's global registry, so several daemons (or tests) in one process never
share or clash on a series. Counters and histograms are updated where things happen (the
study loops, the worker results, the requests); gauges of sampled state (queue depths,
workers, process resources) are set by the resource monitor; the in-flight gauges are read
at scrape time. `hpod.daemon.observers` builds the registry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from optuna.trial import FrozenTrial, TrialState
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from hpod.cache import CACHE
from hpod.daemon.told import STATE_NAMES

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


#: From a few milliseconds (a publish) to a minute (a broker in trouble).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: From a trivial objective to a long training run.
DURATION_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


#: Pruning steps above this share one ``rung`` label value (``"100+"``): the number of
#: values a worker reports is not bounded, a study's series must be.
MAX_RUNG_LABEL = 100


def rung_label(steps: int) -> str:
    """The ``rung`` label of a trial pruned after `steps` reported values."""
    return str(steps) if steps <= MAX_RUNG_LABEL else f"{MAX_RUNG_LABEL}+"


class _StudyInflight:
    """Trials in flight per running study, read from the study loops at scrape time."""

    def __init__(self, per_study: Callable[[], dict[str, int]]) -> None:
        self._per_study = per_study

    def describe(self) -> Iterable[Metric]:
        """The family this collector yields (so the registry can detect name clashes)."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """One sample per running study."""
        family = self._family()
        for study, count in self._per_study().items():
            family.add_metric([study], count)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "hpod_study_inflight_trials",
            "Trials of a study dispatched to workers and not yet told.",
            labels=["study"],
        )


class Metrics:
    """Every series hpod exports, in a registry of its own.

    Series labelled by study are kept for every running study and for the
    `max_finished_studies` finished ones that were active last; older ones are removed, so a
    daemon that has run thousands of studies exports (and holds) a bounded number of series.
    A study that runs again gets fresh series (Prometheus reads that as a counter reset)."""

    def __init__(self, max_finished_studies: int = 200) -> None:
        self.max_finished_studies = max_finished_studies
        #: Studies that have series, least recently active first.
        self._studies: OrderedDict[str, None] = OrderedDict()
        self._running: Callable[[], Iterable[str]] = lambda: ()
        self.registry = CollectorRegistry()
        r = self.registry
        self.trials = Counter(
            "hpod_trials", "Trials told, by final state.", ["study", "state"], registry=r
        )
        self.dispatch_latency = Histogram(
            "hpod_dispatch_latency_seconds",
            "From asking Optuna for a trial to its task reaching the broker.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.result_to_dispatch = Histogram(
            "hpod_result_to_dispatch_seconds",
            "From a worker's result reaching its study to the study's next task reaching the "
            "broker (tell, ask and publish).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.evaluation = Histogram(
            "hpod_evaluation_seconds",
            "Duration of an evaluation, as reported by the worker.",
            ["objective"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "hpod_queue_wait_seconds",
            "From a trial's task being published to a worker starting the task.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        # The parts of a trial's time (hpod.daemon.timeline): daemon and transport are hpod's
        # cost; queue and pack waits are waiting for workers; evaluation is the objective.
        self.trial_time = Histogram(
            "hpod_trial_time_seconds",
            "A dispatched trial's time by part: daemon (its share of ask, policies and "
            "publish), queue_wait, pack_wait, evaluation, transport.",
            ["part"],
            buckets=tuple(sorted({*LATENCY_BUCKETS, *DURATION_BUCKETS})),
            registry=r,
        )
        self.queue_depth = Gauge(
            "hpod_queue_depth", "Messages ready in a queue (sampled).", ["queue"], registry=r
        )
        self.inflight = Gauge("hpod_inflight_trials", "Trials in flight, all studies.", registry=r)
        self.cache_hits = Counter(
            "hpod_cache_hits", "Trials answered from the result cache.", registry=r
        )
        self.cache_misses = Counter(
            "hpod_cache_misses", "Trials looked up in the result cache and not found.", registry=r
        )
        self.prunes = Counter(
            "hpod_prunes",
            "Pruned trials, by the step (number of reported values) they stopped at; "
            f"steps above {MAX_RUNG_LABEL} count as '{MAX_RUNG_LABEL}+'.",
            ["study", "rung"],
            registry=r,
        )
        self.mode_changes = Counter(
            "hpod_mode_changes", "Live mode switches, by new mode.", ["mode"], registry=r
        )
        self.strategy_decisions = Counter(
            "hpod_strategy_decisions",
            "Strategy decisions of the strategy policy: the strategy ('mode' for a study "
            "driven by its mode), who decided (policy, rules, explore, forced, mode) and the "
            "sampler it gave.",
            ["strategy", "source", "sampler"],
            registry=r,
        )
        self.workers = Gauge(
            "hpod_workers",
            "Live workers: Celery nodes answering ping on RabbitMQ; "
            "local pool processes on the embedded broker.",
            registry=r,
        )
        self.backpressure = Gauge(
            "hpod_backpressure",
            "1 while memory is above the high-water mark and dispatch is throttled.",
            registry=r,
        )
        self.process_cpu = Gauge(
            "hpod_process_cpu_percent",
            "CPU use of the daemon, of the GP's sampler process and of its local workers, in "
            "percent of one core.",
            ["process"],
            registry=r,
        )
        self.process_rss = Gauge(
            "hpod_process_rss_bytes",
            "Resident memory of the daemon, of the GP's sampler process and of its local workers.",
            ["process"],
            registry=r,
        )
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def watch_inflight(
        self, total: Callable[[], int], per_study: Callable[[], dict[str, int]]
    ) -> None:
        """Read the in-flight counts from the study loops whenever metrics are scraped."""
        self.inflight.set_function(lambda: float(total()))
        self.registry.register(_StudyInflight(per_study))
        self._running = lambda: per_study().keys()

    def _touch(self, study: str) -> None:
        """Note activity of `study`; when it is new, remove the series of the finished
        studies beyond the bound (least recently active first)."""
        if study in self._studies:
            self._studies.move_to_end(study)
            return
        self._studies[study] = None
        self._evict()

    def _evict(self) -> None:
        """Remove the series of the least recently active finished studies beyond the bound
        (on a new study, and before every scrape: a study that finished since counts)."""
        if len(self._studies) <= self.max_finished_studies:
            return
        running = set(self._running())
        finished = [name for name in self._studies if name not in running]
        for name in finished[: max(0, len(finished) - self.max_finished_studies)]:
            self.forget(name)

    def forget(self, study: str) -> None:
        """Remove every series labelled with `study`."""
        self._studies.pop(study, None)
        for family in (self.trials, self.prunes):
            family.remove_by_labels({"study": study})

    def studies(self) -> list[str]:
        """The studies that have series, least recently active first."""
        return list(self._studies)

    def told(self, study: str, frozen: FrozenTrial) -> None:
        """Count a trial just told, and where a pruned trial stopped."""
        state = STATE_NAMES.get(frozen.state)
        if state is None:
            return
        self._touch(study)
        self.trials.labels(study, state).inc()
        if frozen.state == TrialState.PRUNED:
            self.prunes.labels(study, rung_label(len(frozen.intermediate_values))).inc()

    def looked_up(self, outcome: object) -> None:
        """Count a trial the caching policy looked up and did not find (`LOOKUP_NOTE` is
        "miss"); hits are counted by `skipped`, as the trial is told without evaluation."""
        if outcome == "miss":
            self.cache_misses.inc()

    def skipped(self, reason: str) -> None:
        """Count a trial a policy answered without an evaluation: a cache hit when the reason
        is the caching policy's (`CACHE`, the one spelling it raises)."""
        if reason == CACHE:
            self.cache_hits.inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (`CONTENT_TYPE_LATEST`)."""
        self._evict()
        return generate_latest(self.registry)
