"""Quality per compute: hpod's modes against plain Optuna, through the same daemon and workers.

Every configuration is a *mode* of one `hpod run` daemon (embedded broker, journal storage, two
local worker processes), so only the mode differs between runs: the same objective code, the
same transport, the same storage, the same parallelism (4 trials in flight). ``plain`` is a
mode this benchmark defines to be plain Optuna: Optuna's default TPE, no pruning, full data,
no result cache, no batching. ``fast``, ``balanced`` and ``thorough`` are hpod's packaged
modes, unchanged; ``balanced-no-<policy>`` are balanced with one efficiency policy switched
off, generated from the packaged balanced mode so that they follow it.

Compute is what the workers measured and stored on each trial (``hpod:cost``.cpu: CPU seconds
spent in the objective over every rung, pruned and partial evaluations included; a cache hit
costs 0). Wall time is not used: the machine is shared and the figures must not depend on it.

For each task the target T is the median over seeds of plain's final best. A run's compute to
target is the cumulative CPU when its running best (over COMPLETE trials, whose value is always
the full-data value) first reaches T. A configuration's compute ratio is plain's median compute
to target divided by the configuration's; its quality ratio is its median final best over T.

The benchmark's currency is evaluation compute: "the same budget" means the same compute, not
the same trial count. Every hpod mode gets twice plain's trials; thorough, whose trials are not
cheaper, is judged by its quality at plain's compute: its running best when its cumulative
compute reaches plain's median total compute (its final best if it never spends that much).
Its quality after plain's trial count is reported beside it.

    .venv/bin/python bench/quality.py                 # full run: 5 seeds, ~45 min on 2 cores
    .venv/bin/python bench/quality.py --quick         # smoke run: 1 seed, small budgets
    .venv/bin/python bench/quality.py --tasks svc_6k,branin --seeds 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpod.client import Client
from hpod.engine import COST_ATTR, make_storage
from hpod.modes import ALL_POLICIES, load_modes
from hpod.transfer.store import was_dropped

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
START_MARK = "<!-- quality:start -->"
END_MARK = "<!-- quality:end -->"
HEADING = "## Quality per compute"

MODES = ("fast", "balanced", "thorough")
ABLATIONS = tuple(f"balanced-no-{policy}" for policy in ALL_POLICIES)
CONFIGS = ("plain", *MODES, *ABLATIONS)
#: Configurations given more trials than plain (what counts is compute, not trials): every hpod
#: mode. thorough's trials are not cheaper, so it is judged at plain's compute (see above).
CHEAP_CONFIGS = frozenset({*MODES, *ABLATIONS})
CHEAP_MULTIPLIER = 2
#: Targets the modes are held to (see the module docstring for the ratios).
BALANCED_GEOMEAN, BALANCED_FLOOR = 4.0, 1.0
FAST_GEOMEAN, FAST_QUALITY = 8.0, 1.005
THOROUGH_QUALITY = 1.0

STUDY_TIMEOUT = 1800.0  # seconds: a study taking longer is stuck, not slow
STOP_TIMEOUT = 60.0  # seconds between SIGTERM and SIGKILL of the daemon's process group


@dataclass(frozen=True)
class Task:
    """One tuning problem: an objective, its data (fixed across studies), space and budget."""

    name: str
    objective: str
    kwargs: dict[str, Any]
    space: dict[str, Any]
    #: Trials of plain (N); every other configuration gets `CHEAP_MULTIPLIER` times it.
    trials: int
    quick_trials: int
    about: str

    def budget(self, config: str, quick: bool) -> int:
        """The trial budget of `config` on this task."""
        base = self.quick_trials if quick else self.trials
        return base * CHEAP_MULTIPLIER if config in CHEAP_CONFIGS else base


def _log_float(low: float, high: float) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high, "log": True}


def _int(low: int, high: int, log: bool = False) -> dict[str, Any]:
    return {"type": "int", "low": low, "high": high, "log": log}


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="gbm_100k",
            objective="gradient_boosting",
            kwargs={
                "n_samples": 120_000,
                "n_features": 10,
                "n_informative": 6,
                "validation_fraction": 0.2,
                "seed": 0,
            },
            space={
                "learning_rate": _log_float(0.01, 0.5),
                "max_iter": _int(20, 100),
                "max_leaf_nodes": _int(4, 64, log=True),
                "min_samples_leaf": _int(2, 100, log=True),
                "l2_regularization": _log_float(1e-6, 10.0),
            },
            trials=20,
            quick_trials=4,
            about=(
                "HistGradientBoosting on 120,000 generated rows (96,000 training, 24,000 "
                "validation, 10 features), validation log-loss; data fidelity (the ladder "
                "subsamples the training rows). A full fit takes 0.5-3 CPU s."
            ),
        ),
        Task(
            name="svc_6k",
            objective="svc_synthetic",
            kwargs={"seed": 0},
            space={"C": _log_float(1e-2, 1e3), "gamma": _log_float(1e-4, 1.0)},
            trials=30,
            quick_trials=5,
            about=(
                "RBF SVC on the default generated 6,000 rows (4,500 training), validation "
                "error rate; data fidelity. A full fit takes 0.5-1.2 CPU s, a ninth of the "
                "data about 0.05 s."
            ),
        ),
        Task(
            name="mlp_epochs",
            objective="mlp_digits",
            kwargs={"epochs": 8, "seed": 0},
            space={
                "lr": _log_float(1e-4, 1e-1),
                "hidden": _int(16, 256, log=True),
                "layers": _int(1, 3),
                "dropout": {"type": "float", "low": 0.0, "high": 0.5},
                "weight_decay": _log_float(1e-6, 1e-2),
                "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
            },
            trials=30,
            quick_trials=5,
            about=(
                "PyTorch MLP on the digits (1,347 training images), validation cross-entropy "
                "after 8 epochs; epoch fidelity (it reports each epoch, pruning acts on "
                "epochs; no data ladder). 0.05-1 CPU s per trial."
            ),
        ),
        Task(
            name="branin",
            objective="branin",
            kwargs={},
            space={
                "x1": {"type": "float", "low": -5.0, "high": 10.0},
                "x2": {"type": "float", "low": 0.0, "high": 15.0},
            },
            trials=60,
            quick_trials=10,
            about=(
                "The Branin function (minimum 0.397887): analytic, microseconds per trial, "
                "no fidelity; its compute is in effect a trial count."
            ),
        ),
    )
}


# --- modes ---------------------------------------------------------------------------------


def packaged_modes() -> dict[str, dict[str, Any]]:
    """hpod's packaged modes as plain data, whatever ``HPOD_MODES_FILE`` says here."""
    saved = os.environ.pop("HPOD_MODES_FILE", None)
    try:
        return {name: mode.model_dump() for name, mode in load_modes().items()}
    finally:
        if saved is not None:
            os.environ["HPOD_MODES_FILE"] = saved


def bench_modes() -> dict[str, dict[str, Any]]:
    """The modes this benchmark adds: ``plain`` and balanced's four one-policy ablations.

    Every knob is written out, so nothing falls back on a default that might change.
    """
    balanced = packaged_modes()["balanced"]
    modes: dict[str, dict[str, Any]] = {
        "plain": {
            "description": "Plain Optuna: default TPE, no pruning, full data, no policies",
            "policies": [],
            "sampler": "tpe",
            "sampler_options": {},
            "pruner": "none",
            "pruner_options": {},
            "threshold": 0.0,
            "threshold_min_trials": balanced["threshold_min_trials"],
            "ladder": [1.0],
            "parallelism": balanced["parallelism"],
            "batch_seconds": 0.0,
            "max_pack": 1,
        }
    }
    for policy in ALL_POLICIES:
        modes[f"balanced-no-{policy}"] = {
            **balanced,
            "description": f"balanced without the {policy} policy (ablation)",
            "policies": [p for p in balanced["policies"] if p != policy],
        }
    return modes


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {value!r} as TOML")


def modes_toml(modes: dict[str, dict[str, Any]]) -> str:
    """`modes` as the TOML an operator's ``HPOD_MODES_FILE`` holds."""
    lines = ["# Generated by bench/quality.py: plain Optuna and balanced's ablations.", ""]
    for name, knobs in modes.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in knobs.items()]
        lines.append("")
    return "\n".join(lines)


# --- the daemon ----------------------------------------------------------------------------


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Daemon:
    """`hpod run` on a temporary data directory, always stopped and cleaned up on exit.

    It runs in its own session, so a Ctrl-C in the terminal reaches only this script, and so
    that its whole process group (daemon and local workers) can be killed if SIGTERM does
    not stop it in time.
    """

    def __init__(self, modes_file_text: str, log_copy: Path) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="hpod-quality-"))
        self.modes_file = self.data_dir / "modes_bench.toml"
        self.modes_file.write_text(modes_file_text)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "daemon.log"
        self.log_copy = log_copy
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def env(self) -> dict[str, str]:
        """The daemon's environment: only this benchmark's ``HPOD_*`` settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HPOD_")}
        env.update(
            HPOD_DATA_DIR=str(self.data_dir),
            HPOD_HTTP_PORT=str(self.port),
            HPOD_MODES_FILE=str(self.modes_file),
            HPOD_LOCAL_WORKERS="2",
            HPOD_LOG_LEVEL="warning",
            HPOD_LOG_FORMAT="json",
            HPOD_DRAIN_TIMEOUT="5",
            HPOD_CONFIG=str(self.data_dir / "no-config.toml"),  # not /etc/hpod/hpod.toml
        )
        return env

    def start(self) -> None:
        """Start the daemon and wait until /health answers and the token exists."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hpod", "run"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 120
        token_file = self.data_dir / "api-token"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hpod run exited with {self.proc.returncode}; see the log")
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).read()
                if token_file.exists():
                    self.token = token_file.read_text().strip()
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("hpod run did not become healthy within 120 s")

    def stop(self) -> None:
        """SIGTERM the daemon; SIGKILL its process group if it is still there after a while."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print("daemon did not stop after SIGTERM: killing its process group")
        # The local workers share the daemon's process group; make sure none outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def cleanup(self) -> None:
        """Keep the daemon's log next to the results, then remove the data directory."""
        with contextlib.suppress(OSError):
            self.log_copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.log_path, self.log_copy)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def check_modes(self) -> None:
        """Refuse to measure unless the daemon serves every configuration as intended."""
        with urllib.request.urlopen(f"{self.url}/modes", timeout=10) as response:
            served = json.loads(response.read())["modes"]
        expected = {**packaged_modes(), **bench_modes()}
        for name in CONFIGS:
            if served.get(name) != expected[name]:
                raise RuntimeError(f"the daemon's mode {name!r} is {served.get(name)!r}")

    def clear_cache(self) -> None:
        """DELETE /cache: forget every cached result, so no study profits from another."""
        request = urllib.request.Request(f"{self.url}/cache", method="DELETE")
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def log_problems(self) -> list[str]:
        """Log lines at warning level or above (the daemon logs nothing below warning)."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if re.search(r'"level": ?"(warning|error|critical)', line)]


@contextlib.contextmanager
def running_daemon(modes_file_text: str, log_copy: Path) -> Iterator[Daemon]:
    """A started daemon, stopped and removed whatever happens (errors, Ctrl-C, SIGTERM)."""
    daemon = Daemon(modes_file_text, log_copy)
    try:
        daemon.start()
        daemon.check_modes()
        yield daemon
    finally:
        daemon.stop()
        daemon.cleanup()


# --- one study -----------------------------------------------------------------------------


@dataclass
class Run:
    """One study's outcome: its curve of (cumulative CPU, running best) and its counts."""

    task: str
    config: str
    seed: int
    study: str
    budget: int
    wall_seconds: float
    #: Per finished trial in completion order: number, state, cpu, cumulative cpu, value,
    #: running best, cache use, the fraction it was pruned at.
    trials: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)

    @property
    def total_cpu(self) -> float:
        """Compute of every evaluation of the study."""
        return self.trials[-1]["cum_cpu"] if self.trials else 0.0

    @property
    def final_best(self) -> float:
        """The best full-data value the study found (inf if no trial completed)."""
        bests = [t["best"] for t in self.trials if t["best"] is not None]
        return bests[-1] if bests else math.inf

    def best_within(self, compute: float) -> tuple[float, bool]:
        """The running best once the cumulative CPU reaches `compute`, and whether it does.

        Only trials finished within `compute` count (the one that crosses it would exceed the
        budget); a run that never spends `compute` gives its final best.
        """
        best = math.inf
        for t in self.trials:
            if t["cum_cpu"] > compute:
                return best, True
            if t["best"] is not None:
                best = t["best"]
        return best, self.total_cpu >= compute

    def best_after(self, trials: int) -> float:
        """The running best over the first `trials` finished trials (completion order)."""
        bests = [t["best"] for t in self.trials[:trials] if t["best"] is not None]
        return bests[-1] if bests else math.inf

    def compute_to(self, target: float) -> float | None:
        """Cumulative CPU when the running best first reached `target`; None if never."""
        for t in self.trials:
            if t["best"] is not None and t["best"] <= target:
                return float(t["cum_cpu"])
        return None


def study_spec(task: Task, config: str, seed: int, name: str, budget: int) -> dict[str, Any]:
    """The study: only its name, mode and sampler seed differ between runs of a task.
    Transfer is off: with the default (``auto``) each seed's study would warm-start from the
    earlier seeds' studies of the same task, and this benchmark compares cold studies."""
    spec: dict[str, Any] = {
        "name": name,
        "objective": task.objective,
        "objective_kwargs": task.kwargs,
        "space": task.space,
        "directions": ["minimize"],
        "budget": {"trials": budget},
        "mode": config,
        "sampler": {"seed": seed},
        "transfer": "off",
    }
    return spec


def curve(trials: Sequence[FrozenTrial]) -> tuple[list[dict[str, Any]], list[str]]:
    """The finished trials in completion order with running compute and best; anomalies."""
    finished = [
        t
        for t in trials
        if t.state.is_finished() and t.datetime_complete is not None and not was_dropped(t)
    ]
    finished.sort(key=lambda t: (t.datetime_complete, t.number))
    rows: list[dict[str, Any]] = []
    anomalies: list[str] = []
    cum, best = 0.0, math.inf
    for t in finished:
        cost = t.user_attrs.get(COST_ATTR)
        if cost is None:
            if t.state != TrialState.FAIL:
                anomalies.append(f"trial {t.number} ({t.state.name}) has no {COST_ATTR}")
            cost = {}
        anomalies += _check_cost(t, cost)
        cpu = float(cost.get("cpu") or 0.0)
        cum += cpu
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = min(best, float(t.value))
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "cpu": round(cpu, 6),
                "cum_cpu": round(cum, 6),
                "value": t.value,
                "best": None if math.isinf(best) else best,
                "cache": cost.get("cache"),
                "pruned_at": cost.get("pruned_at"),
                "rungs": len(cost.get("rungs") or []),
            }
        )
    return rows, anomalies


def _check_cost(t: FrozenTrial, cost: dict[str, Any]) -> list[str]:
    """Inconsistencies between a trial's cost record and its state (hpod bugs, not noise)."""
    problems = []
    rungs = cost.get("rungs") or []
    if cost.get("cache") == "hit" and float(cost.get("cpu") or 0.0) != 0.0:
        problems.append(f"trial {t.number}: cache hit with cpu {cost.get('cpu')}")
    if rungs:
        spent = sum(float(r[3]) for r in rungs)
        if abs(spent - float(cost.get("cpu") or 0.0)) > 1e-6:
            problems.append(f"trial {t.number}: rungs cost {spent}, cpu {cost.get('cpu')}")
        last = rungs[-1]
        if t.state == TrialState.COMPLETE and (float(last[0]) != 1.0 or last[1] != t.value):
            problems.append(f"trial {t.number}: complete with value {t.value}, last rung {last}")
    return problems


def run_study(
    daemon: Daemon,
    client: Client,
    storage: optuna.storages.BaseStorage,
    spec: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, int], list[str], float]:
    """Run one study to its end on an empty cache; its curve, counts, anomalies, wall time."""
    daemon.clear_cache()
    started = time.perf_counter()
    client.create_study(spec)
    status = client.wait(spec["name"], timeout=STUDY_TIMEOUT, interval=0.3)
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=spec["name"], storage=storage)
    trials = study.get_trials(deepcopy=False)
    rows, anomalies = curve(trials)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    counts["cache_hits"] = sum(r["cache"] == "hit" for r in rows)
    if status.get("state") != "completed":
        anomalies.append(f"study ended in state {status.get('state')!r}")
    if len(trials) != spec["budget"]["trials"]:
        anomalies.append(f"{len(trials)} trials for a budget of {spec['budget']['trials']}")
    if counts.get("fail"):
        anomalies.append(f"{counts['fail']} failed trials")
    return rows, counts, anomalies, wall


def warm_up(daemon: Daemon, client: Client, task: Task, tag: str) -> None:
    """An unmeasured study per task, so no measured trial pays a worker's first-use costs.

    Objectives build their data once per worker process (lru_cache) and mlp_digits imports
    torch on its first call, all inside the timed objective: several CPU seconds that
    would otherwise land on whichever configuration happens to run first.
    """
    spec = study_spec(task, "plain", 10_000, f"warmup-{task.name}-{tag}", 8)
    daemon.clear_cache()
    client.create_study(spec)
    client.wait(spec["name"], timeout=STUDY_TIMEOUT, interval=0.3)


# --- analysis ------------------------------------------------------------------------------


@dataclass
class Cell:
    """One configuration on one task, against plain's target."""

    compute_ratio: float | None  # None when more than half the seeds never reach T
    ratio_bound: float | None  # then: an upper bound of the ratio
    quality_ratio: float
    median_compute: float  # median compute to T (inf when not reached)
    median_total: float
    reached: int
    seeds: int
    #: Median over seeds of the running best at plain's median total compute, over T.
    quality_at_plain_compute: float = math.nan
    #: How many seeds spent at least plain's median total compute.
    spent_plain_compute: int = 0
    #: Median over seeds of the running best after plain's trial count, over T.
    quality_at_plain_trials: float = math.nan


def median(values: Sequence[float]) -> float:
    """The median, with inf allowed (more than half infinite gives inf)."""
    ordered = sorted(values)
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    low, high = ordered[n // 2 - 1], ordered[n // 2]
    return math.inf if math.isinf(high) else (low + high) / 2


def analyse_task(runs: list[Run]) -> dict[str, Any]:
    """Target, plain's compute and each configuration's ratios on one task."""
    plain = [r for r in runs if r.config == "plain"]
    target = statistics.median(r.final_best for r in plain)
    plain_compute = median([_or(r.compute_to(target), r.total_cpu) for r in plain])
    plain_total = statistics.median(r.total_cpu for r in plain)
    plain_trials = int(statistics.median(r.budget for r in plain))
    cells: dict[str, Cell] = {}
    for config in CONFIGS:
        mine = [r for r in runs if r.config == config]
        if not mine:
            continue
        to_target = [_or(r.compute_to(target), math.inf) for r in mine]
        own = median(to_target)
        total = statistics.median(r.total_cpu for r in mine)
        finite = not math.isinf(own)
        cells[config] = Cell(
            compute_ratio=_ratio(plain_compute, own) if finite else None,
            ratio_bound=None if finite else _ratio(plain_compute, total),
            quality_ratio=statistics.median(r.final_best for r in mine) / target,
            median_compute=own,
            median_total=total,
            reached=sum(not math.isinf(c) for c in to_target),
            seeds=len(mine),
            quality_at_plain_compute=statistics.median(r.best_within(plain_total)[0] for r in mine)
            / target,
            spent_plain_compute=sum(r.best_within(plain_total)[1] for r in mine),
            quality_at_plain_trials=statistics.median(r.best_after(plain_trials) for r in mine)
            / target,
        )
    return {
        "target": target,
        "plain_compute": plain_compute,
        "plain_total": plain_total,
        "plain_trials": plain_trials,
        "cells": cells,
    }


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _ratio(numerator: float, denominator: float) -> float:
    return math.inf if denominator <= 0 else numerator / denominator


def geomean(cells: list[Cell]) -> tuple[float, bool]:
    """Geometric mean of compute ratios (bounds standing in where T was not reached);
    whether it is only an upper bound."""
    values = [c.compute_ratio if c.compute_ratio is not None else c.ratio_bound for c in cells]
    finite = [v for v in values if v is not None and 0 < v < math.inf]
    if len(finite) != len(values):
        return math.nan, True
    bound = any(c.compute_ratio is None for c in cells)
    return math.exp(statistics.fmean(math.log(v) for v in finite)), bound


def verdicts(analysis: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """The targets: (what, measured, passed)."""
    out = []
    tasks = list(analysis)

    def cells(config: str) -> list[Cell]:
        return [analysis[t]["cells"][config] for t in tasks if config in analysis[t]["cells"]]

    if cells("balanced"):
        g, bound = geomean(cells("balanced"))
        floor = [c.compute_ratio for c in cells("balanced")]
        ok = not bound and g >= BALANCED_GEOMEAN and all(f and f >= BALANCED_FLOOR for f in floor)
        shown = ", ".join(_fmt_ratio(c) for c in cells("balanced"))
        out.append(
            (
                f"balanced: compute geomean >= {BALANCED_GEOMEAN:g}x and >= "
                f"{BALANCED_FLOOR:g}x on every task",
                f"geomean {_fmt_geo(g, bound)}; per task {shown}",
                ok,
            )
        )
    if cells("fast"):
        g, bound = geomean(cells("fast"))
        worst = max(c.quality_ratio for c in cells("fast"))
        ok = not bound and g >= FAST_GEOMEAN and worst <= FAST_QUALITY
        out.append(
            (
                f"fast: compute geomean >= {FAST_GEOMEAN:g}x, quality ratio <= "
                f"{FAST_QUALITY} on every task",
                f"geomean {_fmt_geo(g, bound)}; worst quality ratio {worst:.4f}",
                ok,
            )
        )
    if cells("thorough"):
        worst = max(c.quality_at_plain_compute for c in cells("thorough"))
        worst_n = max(c.quality_at_plain_trials for c in cells("thorough"))
        out.append(
            (
                f"thorough: quality ratio at plain's compute budget <= {THOROUGH_QUALITY} on "
                "every task",
                f"worst quality ratio at plain's compute {worst:.4f} (at plain's trial count "
                f"{worst_n:.4f})",
                worst <= THOROUGH_QUALITY,
            )
        )
    return out


# --- report --------------------------------------------------------------------------------


def _fmt_ratio(cell: Cell) -> str:
    if cell.compute_ratio is not None:
        return f"{cell.compute_ratio:.2f}x"
    return f"not reached (<= {cell.ratio_bound:.2f}x)"


def _fmt_geo(value: float, bound: bool) -> str:
    if math.isnan(value):
        return "n/a"
    return f"<= {value:.2f}x (bound)" if bound else f"{value:.2f}x"


def _fmt_cpu(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds:.1f} s"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render(analysis: dict[str, dict[str, Any]], runs: list[Run], meta: dict[str, Any]) -> str:
    """The Markdown section: setup, the three tables, the targets and what happened."""
    tasks = list(analysis)
    lines = [
        f"Measured {meta['date']} on {meta['machine']} with `{meta['command']}` "
        f"({meta['seeds']} seed{'s' if meta['seeds'] != 1 else ''}: "
        f"{', '.join(map(str, meta['seed_list']))}; "
        f"total wall time {meta['wall_minutes']:.1f} min). Code: hpod {meta['hpod_commit']}; "
        f"Optuna {meta['optuna']}.",
        "",
        *_setup_text(tasks, meta),
        "",
        "### Per task: compute ratio (quality ratio) against plain Optuna",
        "",
    ]
    rows = []
    for t in tasks:
        a = analysis[t]
        row = [t, f"{a['target']:.5g}", _fmt_cpu(a["plain_compute"])]
        for config in MODES:
            cell = a["cells"].get(config)
            row.append("-" if cell is None else f"{_fmt_ratio(cell)} ({cell.quality_ratio:.3f})")
        rows.append(row)
    lines += table(["task", "target T", "plain compute to T", *MODES], rows)
    lines += [
        "",
        "(Every mode ran twice plain's trials; the quality ratios above are after all of them. "
        "thorough is judged at plain's compute, below.)",
    ]
    if any("thorough" in analysis[t]["cells"] for t in tasks):
        lines += [
            "",
            "### thorough at the same budget as plain",
            "",
            "The currency is evaluation compute: the same budget means the same compute. "
            "thorough's quality ratio at plain's compute = median over seeds of its running "
            "best once its cumulative compute reaches plain's median total compute (trials "
            "finished within it; a seed that never spends that much gives its final best), "
            "over T. The target is judged on this figure. The figure after plain's trial "
            "count N (its first N finished trials) is shown for transparency, and so is "
            "plain's own figure under the same rule (its seeds that spend more than the "
            "median are cut there, so it can exceed 1).",
            "",
        ]
        th_rows = []
        for t in tasks:
            a, cell = analysis[t], analysis[t]["cells"].get("thorough")
            if cell is None:
                continue
            th_rows.append(
                [
                    t,
                    _fmt_cpu(a["plain_total"]),
                    f"{a['cells']['plain'].quality_at_plain_compute:.3f}",
                    f"{cell.quality_at_plain_compute:.3f}",
                    f"{cell.spent_plain_compute} of {cell.seeds}",
                    f"{cell.quality_at_plain_trials:.3f} (N = {a['plain_trials']})",
                    f"{cell.quality_ratio:.3f}",
                ]
            )
        lines += table(
            [
                "task",
                "plain's median total compute",
                "plain's own quality ratio at it",
                "thorough: quality ratio at plain's compute",
                "seeds that spent it",
                "quality ratio at N trials",
                "quality ratio at 2N trials (final)",
            ],
            th_rows,
        )
    lines += ["", *_identical_note(tasks, runs)]
    lines += ["", "Geometric mean of compute ratios over the tasks:", ""]
    geo_rows = []
    for config in ("plain", *MODES):
        cells = [analysis[t]["cells"][config] for t in tasks if config in analysis[t]["cells"]]
        if cells:
            g, bound = geomean(cells)
            geo_rows.append([config, _fmt_geo(g, bound)])
    lines += table(["configuration", "geomean compute ratio"], geo_rows)
    lines += [
        "",
        "(plain's own row applies the same rule to plain itself: its seeds that end above "
        "the median never reach T and count as infinite, so it sits below 1x; a mode "
        "identical to plain would score the same.)",
        "",
        "### Ablations: balanced with one policy off, compute ratio (quality ratio)",
        "",
    ]
    abl_rows = []
    for config in ("balanced", *ABLATIONS):
        row = [config]
        for t in tasks:
            cell = analysis[t]["cells"].get(config)
            row.append("-" if cell is None else f"{_fmt_ratio(cell)} ({cell.quality_ratio:.3f})")
        abl_rows.append(row)
    lines += table(["configuration", *tasks], abl_rows)
    lines += ["", "### Targets", ""]
    lines += table(
        ["target", "measured", "verdict"],
        [[what, got, "PASS" if ok else "MISS"] for what, got, ok in verdicts(analysis)],
    )
    if meta.get("notes"):  # written after reading a run's raw results (see --render)
        lines += ["", "### Notes on this run", "", *(f"- {note}" for note in meta["notes"])]
    lines += ["", "### What the runs did (medians over seeds)", ""]
    lines += table(
        ["task", "configuration", "trials", "pruned", "cache hits", "total CPU", "final best"],
        _activity_rows(tasks, runs),
    )
    return "\n".join(lines) + "\n"


def same_trials(a: Run, b: Run) -> bool:
    """Whether two runs evaluated the same trials with the same outcomes, trial by trial,
    over the trial numbers both have (the longer run's extra trials are not compared)."""
    n = min(a.budget, b.budget)

    def outcomes(run: Run) -> dict[int, tuple[str, Any]]:
        return {t["number"]: (t["state"], t["value"]) for t in run.trials if t["number"] < n}

    return bool(a.trials) and outcomes(a) == outcomes(b)


def _identical_note(tasks: list[str], runs: list[Run]) -> list[str]:
    """Say where a configuration's runs were trial-for-trial plain's runs (same seed).

    In Optuna 5 the default TPE is already multivariate with a constant liar, so a mode
    whose other knobs do nothing on a task repeats plain exactly; its ratios are then
    plain's own up to CPU-time noise, and should be read that way.
    """
    plain = {(r.task, r.seed): r for r in runs if r.config == "plain"}
    found = []
    for config in CONFIGS[1:]:
        for task in tasks:
            mine = [r for r in runs if r.task == task and r.config == config]
            same = sum(
                (task, r.seed) in plain and same_trials(r, plain[(task, r.seed)]) for r in mine
            )
            if same:
                found.append(f"{config} on {task} in {same} of {len(mine)} seeds")
    if not found:
        return ["No configuration repeated plain's trials exactly."]
    return [
        "Identical to plain over plain's N trials, trial for trial (same configurations, "
        "same values; only the measured CPU differs): " + "; ".join(found) + "."
    ]


def _setup_text(tasks: list[str], meta: dict[str, Any]) -> list[str]:
    lines = [
        "Every configuration is a mode of the same `hpod run` daemon (embedded broker, journal "
        "storage, 2 local worker processes, 4 trials in flight), so only the mode differs. "
        "`plain` = plain Optuna as an hpod mode: sampler `tpe` without options, i.e. "
        "Optuna 5's default `TPESampler` (multivariate for single-objective studies and "
        "`constant_liar=True` by default in Optuna 5), pruner `none`, ladder `[1.0]`, no "
        "policies (no cache, no batching). `fast`, `balanced`, `thorough` are the packaged "
        "modes unchanged; `balanced-no-X` is balanced with policy X removed. Every study "
        "minimises; within a task only `sampler.seed` and the study "
        "name change. The result cache is cleared before every study. Each task starts with "
        "an unmeasured warm-up study, so no measured trial pays a worker's data loading or "
        "torch import.",
        "",
        "Compute = the CPU seconds the workers measured in the objective (`hpod:cost`.cpu: "
        "every rung, pruned and partial evaluations included; cache hits 0), summed over the "
        "finished trials in completion order. T = median over seeds of plain's final best. "
        "Compute to T = cumulative compute when the running best (COMPLETE trials, always "
        "full-data values) first reaches T. Compute ratio = plain's median compute to T "
        "(a plain seed that never reaches T counts its total) / the configuration's median "
        "compute to T (never = infinite). If more than half of its seeds never reach T it is "
        "shown as `not reached (<= x)`: an upper bound, x = plain's median compute to T / the "
        "configuration's median total compute. Quality ratio = median final best / T "
        "(<= 1: at least as good as plain's median). The benchmark's currency is evaluation "
        'compute, so "the same budget" means the same compute: every hpod mode gets '
        "twice plain's trials, and thorough (whose trials are not cheaper) is judged by its "
        "quality at plain's compute, i.e. its running best when its cumulative compute "
        "reaches plain's median total compute.",
        "",
    ]
    rows = []
    for name in tasks:
        task = TASKS[name]
        budgets = meta["budgets"][name]
        rows.append(
            [
                name,
                task.about,
                f"{budgets['plain']} (plain) / {max(budgets.values())} (fast, balanced, "
                "thorough, ablations)",
            ]
        )
    lines += table(["task", "what", "trials per study"], rows)
    return lines


def _activity_rows(tasks: list[str], runs: list[Run]) -> list[list[str]]:
    rows = []
    for t in tasks:
        for config in CONFIGS:
            mine = [r for r in runs if r.task == t and r.config == config]
            if not mine:
                continue
            rows.append(
                [
                    t,
                    config,
                    f"{statistics.median(len(r.trials) for r in mine):g}",
                    f"{statistics.median(r.counts.get('pruned', 0) for r in mine):g}",
                    f"{statistics.median(r.counts.get('cache_hits', 0) for r in mine):g}",
                    _fmt_cpu(statistics.median(r.total_cpu for r in mine)),
                    f"{statistics.median(r.final_best for r in mine):.5g}",
                ]
            )
    return rows


def write_section(path: Path, body: str) -> None:
    """Put `body` between the markers of `path`, creating the file or the section if needed.

    Nothing outside the markers is changed.
    """
    block = f"{START_MARK}\n{body}{END_MARK}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Benchmarks\n\n{HEADING}\n\n{block}\n")
        return
    text = path.read_text()
    if START_MARK in text and END_MARK in text:
        head, rest = text.split(START_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        path.write_text(head + block + tail)
    else:
        path.write_text(text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n")


# --- main ----------------------------------------------------------------------------------


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops the daemon


def _git_commit() -> str:
    """HEAD, and whether hpod/ differs from it (others edit hpod/ while benchmarks run)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "hpod"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head} (hpod/ has uncommitted changes)" if dirty else head


def _code_fingerprint() -> str:
    """A hash of hpod/'s source files: tells whether the code changed during the run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "hpod").rglob("*")):
        if path.is_file() and path.suffix in {".py", ".toml"}:
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, Linux {platform.release()}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds per configuration")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, small budgets")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated configurations"
    )
    parser.add_argument("--out", type=Path, help="Markdown file (default docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, help="raw results (default bench/results/...)")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: re-analyse the raw results of an earlier run and rewrite --out",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 1
    suffix = "-quick" if args.quick else ""
    # A smoke run must not overwrite the published figures unless asked to.
    args.out = args.out or (
        RESULTS / "quality-quick.md" if args.quick else ROOT / "docs" / "benchmarks.md"
    )
    args.json = args.json or RESULTS / f"quality{suffix}.json"
    args.task_list = [t for t in args.tasks.split(",") if t]
    args.config_list = [c for c in args.configs.split(",") if c]
    unknown = set(args.task_list) - set(TASKS) | set(args.config_list) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown tasks or configurations: {sorted(unknown)}")
    if "plain" not in args.config_list:
        parser.error("plain is the baseline: it must be among --configs")
    return args


def measure(args: argparse.Namespace, daemon: Daemon, tag: str) -> list[Run]:
    """Every study, one after another: task by task, seed by seed, each configuration."""
    client = Client(daemon.url, token=daemon.token, timeout=60)
    storage = make_storage(f"journal://{daemon.data_dir / 'studies.journal'}")
    runs: list[Run] = []
    for name in args.task_list:
        task = TASKS[name]
        warm_up(daemon, client, task, tag)
        for seed in range(args.seeds):
            for config in args.config_list:
                budget = task.budget(config, args.quick)
                study = f"q-{name}-{config}-s{seed}-{tag}"
                spec = study_spec(task, config, seed, study, budget)
                rows, counts, anomalies, wall = run_study(daemon, client, storage, spec)
                run = Run(name, config, seed, study, budget, wall, rows, counts, anomalies)
                runs.append(run)
                print(
                    f"{name:<10} {config:<24} seed {seed}: best {run.final_best:.5g}, "
                    f"CPU {run.total_cpu:8.3f} s, wall {wall:5.1f} s, {counts}"
                    + (f"  ANOMALIES: {anomalies[:3]}" if anomalies else ""),
                    flush=True,
                )
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or reload a run with --render), then report it."""
    args = parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        runs = [Run(**r) for r in payload["runs"]]
        report(runs, payload["meta"], payload["modes"], args.out, args.render)
        return 0
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.perf_counter()
    tag = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    # The daemon and workers load hpod/ when they start: that is the code measured.
    commit, fingerprint = _git_commit(), _code_fingerprint()
    modes = bench_modes()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "modes_bench.toml").write_text(modes_toml(modes))
    log_copy = RESULTS / ("quality-daemon-quick.log" if args.quick else "quality-daemon.log")
    with running_daemon(modes_toml(modes), log_copy) as daemon:
        runs = measure(args, daemon, tag)
        problems = daemon.log_problems()
    wall = time.perf_counter() - started
    meta = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="minutes"),
        "machine": _machine(),
        "command": " ".join([".venv/bin/python", "bench/quality.py", *(argv or sys.argv[1:])]),
        "seeds": args.seeds,
        "seed_list": list(range(args.seeds)),
        "quick": args.quick,
        "wall_minutes": wall / 60,
        "hpod_commit": commit
        + (
            ""
            if _code_fingerprint() == fingerprint
            else "; hpod/ changed during the run: the daemon and workers ran the code of its start"
        ),
        "optuna": optuna.__version__,
        "budgets": {
            name: {c: TASKS[name].budget(c, args.quick) for c in args.config_list}
            for name in args.task_list
        },
        "daemon_log_problems": problems[:200],
    }
    report(runs, meta, {**{m: packaged_modes()[m] for m in MODES}, **modes}, args.out, args.json)
    return 0


def report(
    runs: list[Run],
    meta: dict[str, Any],
    modes: dict[str, Any],
    out: Path,
    json_path: Path,
) -> None:
    """Analyse `runs`, print the tables, write the Markdown section and the raw JSON."""
    tasks = list(dict.fromkeys(r.task for r in runs))
    analysis = {name: analyse_task([r for r in runs if r.task == name]) for name in tasks}
    section = render(analysis, runs, meta)
    print("\n" + section)
    anomalies = [f"{r.study}: {a}" for r in runs for a in r.anomalies]
    for line in anomalies[:50]:
        print("ANOMALY", line)
    for line in meta.get("daemon_log_problems", [])[:20]:
        print("DAEMON LOG", line)
    write_section(out, section)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "tasks": {name: asdict(TASKS[name]) for name in tasks},
        "modes": modes,
        "analysis": {
            name: {**a, "cells": {c: asdict(cell) for c, cell in a["cells"].items()}}
            for name, a in analysis.items()
        },
        "targets": [{"target": w, "measured": m, "pass": ok} for w, m, ok in verdicts(analysis)],
        "anomalies": anomalies,
        "runs": [asdict(r) for r in runs],
    }
    json_path.write_text(json.dumps(_plain_json(payload), allow_nan=False) + "\n")
    print(f"wrote {out} and {json_path} (run took {meta['wall_minutes']:.1f} min)")


def _plain_json(value: Any) -> Any:
    """`value` with infinities and NaN as None: strict JSON that any reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
