"""The honest split of a trial's time through a real daemon and its worker (issue 16, item 1).

Two sequential studies (`max_concurrent` 1) of a 100 ms objective share one local worker
process with one pool slot. Batching packs their trials five to a task, so packed trials
wait behind each other (pack wait), and each study's tasks wait while the other's run
(queue wait). hpod's own parts, daemon and transport, must come out far below those waits:
the old single "dispatch overhead" counted both waits as hpod's cost. No timing threshold:
the parts are compared with each other, within the run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import Daemon, DaemonFactory, quadratic_spec
from prometheus_client.parser import text_string_to_metric_families

from hpod.daemon.timeline import PARTS
from hpod.engine import COST_ATTR, make_storage

TRIALS = 16


def spec(name: str) -> dict[str, Any]:
    """A sequential study of 100 ms trials in the default mode (batching on)."""
    return quadratic_spec(
        name, trials=TRIALS, objective_kwargs={"sleep": 0.1}, max_concurrent=1, mode="balanced"
    )


def stored_splits(data_dir: Path, name: str) -> list[dict[str, float]]:
    """Each trial's stored split (`time` in its cost record), read from the journal."""
    storage = make_storage(f"journal://{data_dir / 'studies.journal'}")
    study = optuna.load_study(study_name=name, storage=storage)
    return [t.user_attrs[COST_ATTR]["time"] for t in study.get_trials()]


def total(splits: list[dict[str, float]], *parts: str) -> float:
    """Seconds of `parts` summed over `splits`."""
    return sum(s[p] for s in splits for p in parts)


def hpod(daemon: Daemon, *args: str) -> str:
    """Run an `hpod` command against `daemon`; its standard output."""
    return subprocess.run(
        [sys.executable, "-m", "hpod", *args],
        env={**daemon.env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def trial_time_counts(daemon: Daemon) -> dict[str, float]:
    """`hpod_trial_time_seconds_count` by part, from /metrics."""
    import urllib.request

    with urllib.request.urlopen(daemon.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return {
        s.labels["part"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "hpod_trial_time_seconds_count"
    }


def test_waits_are_split_from_hpods_own_time(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    """Every trial of two sequential studies on one worker slot has all five parts, none
    negative; over the run, daemon + transport is far below the pack waits and the queue
    waits; status, doctor, /metrics and `hpod status` show the parts."""
    daemon = start_daemon(local_workers="1")
    names = ("split-a", "split-b")
    for name in names:
        assert daemon.request("POST", "/studies", spec(name))[0] == 201
    statuses = {name: daemon.wait_study(name) for name in names}
    doctor = {name: daemon.get(f"/studies/{name}/doctor") for name in names}
    counts = trial_time_counts(daemon)
    out = hpod(daemon, "status", names[0])
    doctor_out = hpod(daemon, "doctor", names[0])
    daemon.stop()

    splits = [s for name in names for s in stored_splits(tmp_path / "data", name)]
    assert len(splits) == 2 * TRIALS
    assert all(set(s) == set(PARTS) and all(v >= 0 for v in s.values()) for s in splits)
    assert all(s["evaluation"] >= 0.1 for s in splits)
    ours = total(splits, "daemon", "transport")
    packed = [s for s in splits if s["pack_wait"] > 0]
    assert len(packed) >= TRIALS  # most trials travelled in packs
    assert total(packed, "daemon", "transport") * 3 < total(packed, "pack_wait")
    assert ours * 4 < total(splits, "queue_wait")  # each study waited for the other's packs

    for name in names:
        per_trial = statuses[name]["efficiency"]["time_per_trial"]
        assert per_trial["trials"] == TRIALS
        assert per_trial["overhead"] * 4 < per_trial["pack_wait"] + per_trial["queue_wait"]
        hpods = per_trial["daemon"] + per_trial["transport"]
        assert per_trial["overhead"] == pytest.approx(hpods, abs=1e-5)
        assert "dispatch_overhead_seconds" not in statuses[name]["efficiency"]
        report = doctor[name]
        assert set(report["per_trial"]) == set(PARTS)
        assert report["seconds"]["pack_wait"] > 0 and report["seconds"]["transport"] >= 0
    assert all(counts.get(part) == 2 * TRIALS for part in PARTS), counts
    assert "ms of hpod (daemon + transport)" in out
    assert "pack wait (behind the other trials of its pack)" in out
    assert "transport (hpod: the broker both ways)" in doctor_out
