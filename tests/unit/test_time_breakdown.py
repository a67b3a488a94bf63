"""The per-study time breakdown and its bottleneck verdict."""

from __future__ import annotations

import time

import pytest

from hpod.daemon.doctor import STAGES, Doctor, TimeBreakdown


class TestTimeBreakdown:
    """Seconds per stage, shares and the bottleneck."""

    def test_the_largest_share_is_the_bottleneck(self) -> None:
        """The stage with the most seconds is named, with its share, in the verdict."""
        timings = TimeBreakdown()
        timings.add("sampler", 1.0)
        timings.add("evaluation", 3.0)
        report = timings.report()
        assert report["bottleneck"] == "evaluation"
        assert report["shares"]["evaluation"] == pytest.approx(0.75)
        assert report["verdict"].startswith("bottleneck: evaluation (75% of the time)")
        assert set(report["seconds"]) == set(STAGES)

    def test_result_to_dispatch_quantiles_over_the_latest_samples(self) -> None:
        """p50 and p99 of the result -> next dispatch latencies; none before the first."""
        timings = TimeBreakdown()
        assert timings.report()["result_to_dispatch"] is None
        timings.result_to_dispatch.extend(i / 1000 for i in range(1, 201))  # 1..200 ms
        latency = timings.report()["result_to_dispatch"]
        assert latency["p50"] == pytest.approx(0.1005)
        assert latency["p99"] == pytest.approx(0.199)
        assert latency["samples"] == 200

    def test_nothing_measured_names_no_bottleneck(self) -> None:
        """An empty breakdown says so instead of naming a stage."""
        report = TimeBreakdown().report()
        assert report["bottleneck"] is None
        assert report["total_seconds"] == 0

    def test_measure_counts_a_block_that_raises(self) -> None:
        """A policy hook that raises (SkipEvaluation) still has its time counted."""
        timings = TimeBreakdown()
        with pytest.raises(RuntimeError), timings.measure("policies"):
            time.sleep(0.01)
            raise RuntimeError
        assert timings.seconds["policies"] >= 0.01

    def test_negative_seconds_from_clock_skew_count_as_zero(self) -> None:
        """A worker clock behind the daemon's never makes a stage negative."""
        timings = TimeBreakdown()
        timings.add("queue_wait", -2.0)
        assert timings.seconds["queue_wait"] == 0.0


class TestDoctor:
    """Breakdowns by study."""

    def test_reading_an_unknown_study_does_not_create_it(self) -> None:
        """A report of a study never run is empty and leaves no entry behind."""
        doctor = Doctor()
        assert doctor.report("nope")["bottleneck"] is None
        assert doctor.reports() == {}
