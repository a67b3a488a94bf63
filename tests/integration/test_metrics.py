"""GET /metrics during real studies: on RabbitMQ with a separate worker, and embedded."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Daemon, DaemonFactory, eventually, quadratic_spec
from prometheus_client.parser import text_string_to_metric_families

#: Every hpod family /metrics must expose, whether or not it has samples yet.
FAMILIES = {
    "hpod_trials",
    "hpod_dispatch_latency_seconds",
    "hpod_result_to_dispatch_seconds",
    "hpod_evaluation_seconds",
    "hpod_queue_wait_seconds",
    "hpod_trial_time_seconds",
    "hpod_queue_depth",
    "hpod_inflight_trials",
    "hpod_study_inflight_trials",
    "hpod_cache_hits",
    "hpod_cache_misses",
    "hpod_prunes",
    "hpod_mode_changes",
    "hpod_strategy_decisions",
    "hpod_workers",
    "hpod_backpressure",
    "hpod_process_cpu_percent",
    "hpod_process_rss_bytes",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(daemon: Daemon) -> tuple[set[str], Samples]:
    """The family names and the samples of one GET /metrics, parsed as Prometheus does."""
    with urllib.request.urlopen(daemon.url + "/metrics", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    families = list(text_string_to_metric_families(text))
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return {f.name for f in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of sample `name` with exactly `labels`, or None if absent."""
    return samples.get((name, frozenset(labels.items())))


def scrape_until(daemon: Daemon, check: Callable[[Samples], bool], timeout: float = 60) -> Samples:
    """Scrape until `check` holds on the samples (it may take a sampling period or two)."""

    def checked() -> Samples | None:
        samples = scrape(daemon)[1]
        return samples if check(samples) else None

    return eventually(checked, timeout, 0.3, "the samples never passed the check")


def exercise(daemon: Daemon, name: str) -> Samples:
    """Run a study on the workers, switch a mode, prune an external trial; the samples at the end.

    Asserts on the way that the per-study in-flight gauge shows the study while it runs.
    """
    spec = quadratic_spec(name, trials=12, objective_kwargs={"sleep": 0.3}, max_concurrent=2)
    assert daemon.request("POST", "/studies", spec)[0] == 201
    running = scrape_until(
        daemon, lambda s: bool(value(s, "hpod_study_inflight_trials", study=name))
    )
    assert value(running, "hpod_study_inflight_trials", study=name)
    assert value(running, "hpod_inflight_trials")
    external = quadratic_spec(f"{name}-ext", trials=1)
    del external["objective"]
    assert daemon.request("POST", "/studies", external)[0] == 201
    trial = daemon.request("POST", f"/studies/{name}-ext/ask", {})[1]["result"]["trial"]
    told = {"trial": trial, "state": "pruned", "values": None}
    assert daemon.request("POST", f"/studies/{name}-ext/tell", told)[0] == 200
    assert daemon.request("POST", "/mode", {"mode": "fast", "study": name})[0] == 200
    daemon.wait_study(name)
    return scrape_until(daemon, lambda s: (value(s, "hpod_workers") or 0) >= 1)


def check_series(daemon: Daemon, samples: Samples, name: str) -> None:
    """Every family is there, and each series shows what the exercise did."""
    names, _ = scrape(daemon)
    assert names >= FAMILIES, FAMILIES - names
    assert value(samples, "hpod_trials_total", study=name, state="complete") == 12
    assert value(samples, "hpod_trials_total", study=f"{name}-ext", state="pruned") == 1
    assert value(samples, "hpod_prunes_total", study=f"{name}-ext", rung="0") == 1
    assert value(samples, "hpod_mode_changes_total", mode="fast") == 1
    # Both studies name their sampler: each is driven by its mode, one decision at its start.
    decisions = {"strategy": "mode", "source": "mode", "sampler": "random"}
    assert value(samples, "hpod_strategy_decisions_total", **decisions) == 2
    assert value(samples, "hpod_dispatch_latency_seconds_count") == 12
    assert value(samples, "hpod_evaluation_seconds_count", objective="quadratic") == 12
    assert (value(samples, "hpod_evaluation_seconds_sum", objective="quadratic") or 0) >= 3.6
    assert value(samples, "hpod_queue_wait_seconds_count") == 12
    for part in ("daemon", "queue_wait", "pack_wait", "evaluation", "transport"):
        assert value(samples, "hpod_trial_time_seconds_count", part=part) == 12
    assert value(samples, "hpod_inflight_trials") == 0
    assert value(samples, "hpod_cache_hits_total") == 0
    assert (value(samples, "hpod_cache_misses_total") or 0) <= 12  # only looked-up trials
    for queue in ("hpod.trials", "hpod.requests"):
        assert (value(samples, "hpod_queue_depth", queue=queue) or 0) >= 0
        assert value(samples, "hpod_queue_depth", queue=queue) is not None
    assert (value(samples, "hpod_workers") or 0) >= 1
    assert value(samples, "hpod_backpressure") == 0
    assert (value(samples, "process_resident_memory_bytes") or 0) > 0
    assert (value(samples, "process_cpu_seconds_total") or 0) > 0
    assert (value(samples, "hpod_process_rss_bytes", process="daemon") or 0) > 0
    assert value(samples, "hpod_process_cpu_percent", process="daemon") is not None


@pytest.mark.broker
def test_metrics_on_rabbitmq_with_a_separate_worker(
    rabbitmq: str,
    start_daemon: DaemonFactory,
    start_worker: Callable[[dict[str, str]], Any],
) -> None:
    """On RabbitMQ, /metrics parses and counts trials, latencies, prunes, modes and workers."""
    daemon = start_daemon("--no-workers", broker_url=rabbitmq)
    start_worker(daemon.env)
    samples = exercise(daemon, "metrics-amqp")
    check_series(daemon, samples, "metrics-amqp")


def test_metrics_on_the_embedded_default(start_daemon: DaemonFactory) -> None:
    """On the embedded broker, /metrics counts the same, and its local pool processes as workers."""
    daemon = start_daemon()
    samples = exercise(daemon, "metrics-embedded")
    check_series(daemon, samples, "metrics-embedded")
    assert (value(samples, "hpod_process_rss_bytes", process="local_workers") or 0) > 0


def test_a_repeated_configuration_is_a_cache_hit_in_status_trials_and_metrics(
    start_daemon: DaemonFactory,
) -> None:
    """A deterministic objective over a space of two configurations, one task at a time: once
    a configuration is evaluated, a later trial of it is answered from the cache. The hit shows
    in `hpod status`, GET /studies/NAME, the trial's own cost (0 CPU) and
    `hpod_cache_hits_total` (which once compared the reason with "cached" and never counted)."""
    daemon = start_daemon()
    name = "cache-hits"
    spec = quadratic_spec(name, trials=8, max_concurrent=1)
    spec["space"] = {"x": {"type": "categorical", "choices": [1.0, 2.0]}}
    assert daemon.request("POST", "/studies", spec)[0] == 201
    status = daemon.wait_study(name)
    assert status["counts"] == {"complete": 8}
    hits = status["efficiency"]["cache_hits"]
    assert hits > 0  # trials packed into one task are evaluated before any is cached
    rows = daemon.get(f"/studies/{name}/trials?limit=8")["trials"]
    hit_rows = [row for row in rows if row["cache"] == "hit"]
    assert len(hit_rows) == hits and all(row["cpu"] == 0 for row in hit_rows)
    assert {row["values"][0] for row in hit_rows} <= {0.25, 2.25}
    _names, samples = scrape(daemon)
    assert value(samples, "hpod_cache_hits_total") == hits
    misses = value(samples, "hpod_cache_misses_total") or 0
    # A second study of the same objective on one new configuration: its results are known
    # to the cache now, so each of its two trials is looked up, the first one a miss.
    again = quadratic_spec(f"{name}-again", trials=2, max_concurrent=1)
    again["space"] = {"x": {"type": "categorical", "choices": [5.0]}}
    assert daemon.request("POST", "/studies", again)[0] == 201
    assert daemon.wait_study(f"{name}-again")["counts"] == {"complete": 2}
    _names, samples = scrape(daemon)
    new_hits = (value(samples, "hpod_cache_hits_total") or 0) - hits
    new_misses = (value(samples, "hpod_cache_misses_total") or 0) - misses
    assert new_misses >= 1 and new_hits + new_misses == 2
    cli = subprocess.run(
        [sys.executable, "-m", "hpod", "status", name, "--url", daemon.url],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"cache hits        {hits} " in cli.stdout, cli.stdout
