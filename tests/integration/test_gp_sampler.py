"""A GP study in a real daemon with real workers (the strategy named: `auto` picks the GP only
for evaluations that cost seconds, which `quadratic`'s do not; tests/unit/test_strategy_rules.py
holds that rule), the GP runs in the sampler process, torch is mapped there and never in the daemon,
its CPU shows in the efficiency report, its CPU and memory in /metrics apart from the
daemon's, and the process ends with the daemon."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import psutil
from conftest import DaemonFactory, eventually, quadratic_spec
from prometheus_client.parser import text_string_to_metric_families

from hpod.engine import make_storage
from hpod.sampling import SAMPLER_CPU_ATTR


def maps_torch(pid: int) -> bool:
    """Whether process `pid` has libtorch mapped (read from /proc/<pid>/maps)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_a_gp_study_keeps_torch_in_the_sampler_process(start_daemon: DaemonFactory) -> None:
    daemon = start_daemon()
    assert daemon.proc is not None
    name = "gp-small-budget"
    body = quadratic_spec(name, 14, sampler={"seed": 3}, max_concurrent=2, strategy="gp")
    assert daemon.request("POST", "/studies", body)[0] == 201
    final = daemon.wait_study(name, timeout=300)
    assert final["n_trials"] == 14 and final["counts"] == {"complete": 14}

    shown = final["strategy"]
    assert shown["current"] == "gp", shown
    assert shown["plan"]["sampler"] == "gp"

    journal = f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal"
    trials = optuna.load_study(study_name=name, storage=make_storage(journal)).trials
    by_gp = [t for t in trials if SAMPLER_CPU_ATTR in t.user_attrs]
    assert by_gp, "no trial was sampled by the GP"
    assert min(t.number for t in by_gp) >= 4  # after the Sobol opening (2 x 2 dims)
    sampler = final["efficiency"]["sampler_process"]
    assert sampler["suggestions"] == len(by_gp)
    assert sampler["cpu_seconds"] > 0

    shown_cli = subprocess.run(
        [sys.executable, "-m", "hpod", "status", name],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown_cli.returncode == 0, shown_cli.stderr
    assert f"for {len(by_gp)} GP suggestions (outside the daemon" in shown_cli.stdout

    process = daemon.get("/policy")["sampler_process"]
    # Started once and never failed (a trial may have fallen back while torch was loading).
    assert process["deaths"] == 0 and process["starts"] == 1, process
    assert process["suggestions"] == len(by_gp)
    child = process["pid"]
    assert psutil.Process(child).ppid() == daemon.proc.pid
    assert maps_torch(child), "the sampler process has no torch mapped: is it the GP?"
    assert not maps_torch(daemon.proc.pid), "torch was loaded into the daemon"

    def sampler_rss() -> float:
        """The sampler process's resident memory as GET /metrics gives it, apart."""
        with urllib.request.urlopen(daemon.url + "/metrics", timeout=30) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "hpod_process_rss_bytes" and sample.labels == {
                    "process": "sampler_process"
                }:
                    return float(sample.value)
        return 0.0

    assert eventually(sampler_rss) > 50 * 1024 * 1024  # torch: its RSS is the child's, apart

    daemon.stop()
    eventually(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie")
