"""The honest split of a trial's time (issue 16, item 1): queue wait, pack wait, evaluation
and transport from synthetic timestamps, never a wait counted as hpod's overhead."""

from __future__ import annotations

import pytest

from hpod.daemon.doctor import TimeBreakdown
from hpod.daemon.store import _time_per_trial
from hpod.daemon.timeline import PARTS, TrialTimes, mean_parts, split_task, valid_parts

INTERVAL_PARTS = ("queue_wait", "pack_wait", "evaluation", "transport")


def interval(parts: dict[str, float]) -> float:
    """The parts that make up the published → result interval."""
    return sum(parts[p] for p in INTERVAL_PARTS)


class TestSplitTask:
    """One task's results, split per trial."""

    def test_a_pack_of_three_waits_behind_and_for_its_members(self) -> None:
        """Published at 100, the worker takes the pack at 100.5 and runs three 1 s trials
        one after the other; the message arrives at 103.6. Every trial queued 0.5 s; the
        2nd and 3rd waited behind earlier trials (1 s, 2 s), the 1st and 2nd waited for
        later ones before the one message went back (2 s, 1 s); transport is the 0.1 s left."""
        pack = [
            TrialTimes(0, 100.0, 100.5, 1.0, daemon=0.002),
            TrialTimes(1, 100.0, 101.5, 1.0, daemon=0.002),
            TrialTimes(2, 100.0, 102.5, 1.0, daemon=0.002),
        ]
        parts = split_task(pack, received_at=103.6)
        for number in range(3):
            assert parts[number]["queue_wait"] == pytest.approx(0.5)
            assert parts[number]["pack_wait"] == pytest.approx(2.0)
            assert parts[number]["evaluation"] == pytest.approx(1.0)
            assert parts[number]["transport"] == pytest.approx(0.1)
            assert parts[number]["daemon"] == pytest.approx(0.002)
            assert interval(parts[number]) == pytest.approx(3.6)
        # The waits behind earlier trials, as the brief states them: the 2nd and 3rd.
        behind = {t.number: (t.started_at or 0.0) - 100.5 for t in pack}
        assert behind == pytest.approx({0: 0.0, 1: 1.0, 2: 2.0})

    def test_a_pack_of_unequal_trials(self) -> None:
        """Trials of 0.1, 0.3 and 0.2 s started back to back at 10.0: the pack ends at 10.6;
        each trial's pack wait is the pack's span less its own evaluation."""
        pack = [
            TrialTimes(5, 9.99, 10.0, 0.1),
            TrialTimes(6, 9.99, 10.1, 0.3),
            TrialTimes(7, 9.99, 10.4, 0.2),
        ]
        parts = split_task(pack, received_at=10.61)
        assert [parts[n]["pack_wait"] for n in (5, 6, 7)] == pytest.approx([0.5, 0.3, 0.4])
        assert all(parts[n]["queue_wait"] == pytest.approx(0.01) for n in (5, 6, 7))
        assert all(parts[n]["transport"] == pytest.approx(0.01) for n in (5, 6, 7))

    def test_a_trial_that_waited_for_a_worker_has_queue_wait_not_overhead(self) -> None:
        """A lone trial published at 100 and started at 105 (every worker busy): 5 s of
        queue wait, no pack wait, and only the 10 ms left over is transport."""
        parts = split_task([TrialTimes(3, 100.0, 105.0, 1.0, daemon=0.003)], 106.01)[3]
        assert parts["queue_wait"] == pytest.approx(5.0)
        assert parts["pack_wait"] == 0.0
        assert parts["transport"] == pytest.approx(0.01)
        assert parts["daemon"] + parts["transport"] < parts["queue_wait"] / 100

    def test_a_worker_clock_behind_the_daemons_makes_nothing_negative(self) -> None:
        """Started 'before' it was published (clock skew): queue wait 0, the rest of the
        interval is transport; no part is negative."""
        parts = split_task([TrialTimes(1, 100.0, 99.0, 0.5)], 100.8)[1]
        assert parts["queue_wait"] == 0.0
        assert all(v >= 0 for v in parts.values())
        assert parts["transport"] == pytest.approx(0.3)

    def test_a_result_without_timestamps_is_all_transport_beyond_evaluation(self) -> None:
        """No `started_at`: no wait can be told apart, so none is claimed."""
        parts = split_task([TrialTimes(1, 100.0, None, 0.5)], 101.0)[1]
        assert parts["queue_wait"] == parts["pack_wait"] == 0.0
        assert parts["transport"] == pytest.approx(0.5)


class TestReports:
    """The per-study figures built from the per-trial splits."""

    def test_the_efficiency_report_means_valid_splits_only(self) -> None:
        """`time_per_trial` averages the stored splits and names hpod's share; a record
        that is not a split (an old `overhead`, a forged value) is left out."""
        good = {"daemon": 0.002, "queue_wait": 0.0, "pack_wait": 0.3, "evaluation": 0.1}
        records = [
            {**good, "transport": 0.004},
            {**good, "transport": 0.006},
        ]
        assert not valid_parts({**good, "transport": "x"})
        assert not valid_parts({**good, "transport": -1.0})
        assert not valid_parts({"overhead": 0.39})
        assert all(valid_parts(r) for r in records)
        report = _time_per_trial(records)
        assert report is not None
        assert report["trials"] == 2
        assert report["transport"] == pytest.approx(0.005)
        assert report["pack_wait"] == pytest.approx(0.3)
        assert report["overhead"] == pytest.approx(0.007)
        assert _time_per_trial([]) is None
        assert mean_parts([]) is None

    def test_the_doctor_gives_the_parts_per_trial(self) -> None:
        """The daemon part is the sampler, dispatch, storage and policy stages together;
        waits and transport are their own parts, per told trial."""
        timings = TimeBreakdown()
        for stage, seconds in {
            "sampler": 0.01,
            "dispatch": 0.01,
            "storage": 0.02,
            "policies": 0.0,
            "queue_wait": 1.0,
            "pack_wait": 3.0,
            "transport": 0.04,
            "evaluation": 2.0,
        }.items():
            timings.add(stage, seconds)
        timings.trials = 4
        per_trial = timings.report()["per_trial"]
        assert set(per_trial) == set(PARTS)
        assert per_trial["daemon"] == pytest.approx(0.01)
        assert per_trial["pack_wait"] == pytest.approx(0.75)
        assert per_trial["transport"] == pytest.approx(0.01)
        assert TimeBreakdown().report()["per_trial"] is None
        assert timings.bottleneck() == "pack_wait"
