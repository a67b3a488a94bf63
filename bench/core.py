"""Core benchmark: latency to first dispatch, trials/s through RabbitMQ + Celery, idle memory,
wall-clock against plain Optuna for objectives that take time, result -> next dispatch, and
the daemon's CPU per trial; a full run ends with issue 16's targets judged on its figures
(`bench/core_targets.py`), each beside its baseline from the same run.

Each figure is printed next to a baseline measured in the same run on the same machine (plain
Optuna on the same kind of storage), because shared machines are noisy: read the ratios.

    python bench/core.py [--trials 300] [--amqp amqp://guest:guest@127.0.0.1:5672/%2F]
                                               # everything, and the targets (~12 min)
    python bench/core.py --only wallclock      # just the wall-clock table (~10 min)
    python bench/core.py --only cpu --trials 1000 [--profile /tmp/daemon.json]
                                               # the daemon's CPU per trial (~2 min)
    python bench/core.py --only throughput     # trials/s batched and unbatched (~2 min)
    python bench/core.py --only latency        # result -> next dispatch p50/p99 (~2 min)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import pika
import psutil
from core_targets import Figures, targets_table

SPACE = {
    "x": {"type": "float", "low": -2.0, "high": 2.0},
    "y": {"type": "float", "low": -2.0, "high": 2.0},
}


#: Modes of the overhead runs: every efficiency policy off but batching (or that too).
BENCH_MODES = """
[bench-unbatched]
policies = []
[bench-batched]
policies = ["batching"]
batch_seconds = 0.5
max_pack = 1000
"""


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env_for(data_dir: Path, **settings: str) -> dict[str, str]:
    """Environment of hpod processes for this benchmark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPOD_")}
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "bench-modes.toml").write_text(BENCH_MODES)
    env.update(
        HPOD_MODES_FILE=str(data_dir / "bench-modes.toml"),
        HPOD_DATA_DIR=str(data_dir),
        HPOD_HTTP_PORT=str(free_port()),
        HPOD_API_TOKEN="bench-token-" + "x" * 16,
        HPOD_LOG_LEVEL="warning",
        HPOD_DRAIN_TIMEOUT="2",  # the dispatch benchmark leaves trials unevaluated on purpose
        HPOD_CONFIG=str(data_dir / "none.toml"),
        **{f"HPOD_{k.upper()}": v for k, v in settings.items()},
    )
    return env


def start(
    argv: list[str], env: dict[str, str], cprofile: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start an hpod process quietly; with `cprofile`, under cProfile on every thread
    (`bench/cprofile_daemon.py`), its stats written there when the process exits."""
    launcher = (
        ["-m", "hpod"]
        if cprofile is None
        else [str(Path(__file__).with_name("cprofile_daemon.py")), str(cprofile)]
    )
    return subprocess.Popen(
        [sys.executable, *launcher, *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_healthy(env: dict[str, str]) -> None:
    """Block until the daemon's /health answers."""
    url = f"http://127.0.0.1:{env['HPOD_HTTP_PORT']}/health"
    for _ in range(1200):  # 2 min: a start-up on a loaded shared machine can take over 30 s
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("daemon did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def purge(channel: Any) -> None:
    """Empty hpod's queues of earlier runs' messages."""
    for q in ("hpod.requests", "hpod.results", "hpod.trials"):
        channel.queue_declare(q, durable=True)
        channel.queue_purge(q)


def create_message(
    name: str,
    trials: int,
    concurrent: int,
    objective: str | None,
    mode: str = "bench-unbatched",
    sampler: str = "random",
) -> bytes:
    """A study.create request."""
    study: dict[str, Any] = {
        "name": name,
        "space": SPACE,
        "budget": {"trials": trials},
        "max_concurrent": concurrent,
        "sampler": {"name": sampler, "seed": 0},
        "mode": mode,
        # Every study is of the same space: off, none takes enqueued trials from the last.
        "transfer": "off",
    }
    if objective:
        study["objective"] = objective
    return json.dumps({"v": 1, "type": "study.create", "study": study}).encode()


def bench_first_dispatch(amqp: str, tmp: Path, n: int) -> list[float]:
    """Seconds from publishing study.create to its first task on hpod.trials (no worker)."""
    env = env_for(tmp / "dispatch", broker_url=amqp)
    daemon = start(["run", "--no-workers"], env)
    wait_healthy(env)
    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    ch = conn.channel()
    purge(ch)
    latencies = []
    try:
        for i in range(n):
            name = f"dispatch-{uuid.uuid4().hex[:8]}-{i}"
            t0 = time.perf_counter()
            ch.basic_publish("", "hpod.requests", create_message(name, 1, 1, "quadratic"))
            while True:
                method, _props, _body = ch.basic_get("hpod.trials", auto_ack=True)
                if method is not None:
                    latencies.append(time.perf_counter() - t0)
                    break
                time.sleep(0.0005)
    finally:
        conn.close()
        stop(daemon)
    return latencies


def bench_throughput(
    amqp: str,
    tmp: Path,
    trials: int,
    concurrency: int,
    mode: str = "bench-unbatched",
    sampler: str = "random",
    profile: Path | None = None,
) -> tuple[float, float]:
    """Trials/s of the trivial objective through RabbitMQ and Celery on the default durable
    storage (journal file, group commit), from study request to `study.completed`, and the
    daemon's CPU seconds per trial over that span (its process alone, workers not counted).
    With `profile`, py-spy samples the daemon meanwhile (`start_profile`), or, for a path
    ending in .pstats, the daemon runs under cProfile (its start-up included)."""
    env = env_for(tmp / f"throughput-{uuid.uuid4().hex[:6]}", broker_url=amqp, max_inflight="256")
    cprofile = profile if profile is not None and profile.suffix == ".pstats" else None
    daemon = start(["run", "--no-workers"], env, cprofile)
    worker = start(["worker", "-c", str(concurrency), "-n", f"bench-{os.getpid()}@%h"], env)
    try:
        wait_healthy(env)
    except BaseException:  # never leave a worker consuming the broker's tasks behind
        for proc in (worker, daemon):
            proc.terminate()
            proc.wait(timeout=60)
        raise
    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    ch = conn.channel()
    ch.exchange_declare("hpod.events", exchange_type="topic", durable=True)
    events = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(events, "hpod.events", routing_key="study.completed")
    time.sleep(3)  # let the worker connect, so its start-up is not counted
    name = f"throughput-{uuid.uuid4().hex[:8]}"
    spy = start_profile(daemon.pid, profile) if profile and cprofile is None else None
    try:
        cpu0 = daemon_cpu(daemon.pid)
        t0 = time.perf_counter()
        message = create_message(name, trials, 32, "quadratic", mode, sampler)
        ch.basic_publish("", "hpod.requests", message)
        while True:
            method, _props, body = ch.basic_get(events, auto_ack=True)
            if method is not None and json.loads(body)["study"] == name:
                break
            conn.process_data_events(time_limit=0.05)
        rate = trials / (time.perf_counter() - t0)
        return rate, (daemon_cpu(daemon.pid) - cpu0) / trials
    finally:
        if spy is not None:
            stop_profile(spy)
        conn.close()
        stop(worker)
        stop(daemon)


def baseline_plain_optuna(
    tmp: Path, trials: int, kind: str = "wal", sampler: str = "random"
) -> tuple[float, float]:
    """Plain Optuna ask + tell of the same objective, in one process, on a local storage:
    trials/s and the process's CPU seconds per trial."""
    import sqlite3

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = tmp / f"baseline-{kind}-{uuid.uuid4().hex[:6]}"
    storage: Any
    if kind == "journal":
        storage = JournalStorage(JournalFileBackend(str(path)))
    else:
        if kind == "wal":
            sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
        storage = f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = (
        optuna.samplers.RandomSampler(seed=0)
        if sampler == "random"
        else optuna.samplers.TPESampler(seed=0)
    )
    study = optuna.create_study(storage=storage, sampler=chosen)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        x, y = trial.suggest_float("x", -2, 2), trial.suggest_float("y", -2, 2)
        study.tell(trial, (x - 0.5) ** 2 + (y - 0.5) ** 2)
    return trials / (time.perf_counter() - t0), (time.process_time() - cpu0) / trials


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """Sample process `pid` with py-spy (the thread holding the GIL, 200 Hz) into `out` (a
    flame graph SVG, speedscope JSON when `out` ends in .json, collapsed stacks when .txt)
    until `stop_profile`."""
    fmt = {".json": "speedscope", ".txt": "raw"}.get(out.suffix, "flamegraph")
    spy_bin = str(Path(sys.executable).with_name("py-spy"))
    argv = [spy_bin, "record", "-p", str(pid), "-r", "200", "--gil", "-f", fmt, "-o", str(out)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached before anything is timed
    return spy


def stop_profile(spy: subprocess.Popen[bytes]) -> None:
    """Stop py-spy; it writes its file on SIGINT."""
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)


def cpu_table(
    amqp: str,
    tmp: Path,
    trials: int,
    concurrency: int,
    profile: Path | None = None,
    figures: Figures | None = None,
) -> str:
    """The daemon's CPU per trial, unbatched, beside plain Optuna's sampler + storage CPU.

    One daemon on RabbitMQ with a Celery worker of `concurrency` processes; per sampler, a
    warm-up study, then a study of `trials` trivial trials (no sleep), `concurrency` in
    flight. Process CPU time of the daemon alone is robust to a shared machine, unlike
    wall-clock. Plain Optuna: ask + tell in one process on a journal file, the same
    sampler, one trial at a time (its lowest CPU per trial: no threads).
    """
    env = env_for(tmp / "cpu", broker_url=amqp, max_inflight="64")
    daemon = start(["run", "--no-workers"], env)
    worker = start(["worker", "-c", str(concurrency), "-n", f"cpu-{os.getpid()}@%h"], env)
    lines = [
        f"{trials} trials of `quadratic` (no sleep), unbatched, {concurrency} in flight, "
        f"RabbitMQ + a Celery worker of {concurrency} processes; plain Optuna: ask + tell "
        "in one process, journal file, one trial at a time.",
        "",
        "| sampler | daemon CPU ms/trial | plain Optuna CPU ms/trial | ratio | hpod trials/s "
        "| plain trials/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    try:
        wait_healthy(env)
        time.sleep(3)
        hpod_wallclock(env, daemon.pid, 0.0, 20, concurrency, "random")  # warm-up
        for sampler in ("random", "tpe"):
            out = (
                profile.with_name(f"{profile.stem}-{sampler}{profile.suffix}") if profile else None
            )
            spy = start_profile(daemon.pid, out) if out else None
            before = process_cpu(daemon.pid, worker.pid)
            try:
                h = hpod_wallclock(env, daemon.pid, 0.0, trials, concurrency, sampler, amqp)
            finally:
                if spy is not None:
                    stop_profile(spy)
            spent = {
                k: (v - before[k]) / trials * 1000
                for k, v in process_cpu(daemon.pid, worker.pid).items()
            }
            print(
                f"{sampler}, CPU ms per trial of the same study: daemon user "
                f"{spent['daemon_user']:.2f} + system {spent['daemon_system']:.2f}, Celery "
                f"worker processes {spent['workers']:.2f}, RabbitMQ {spent['broker']:.2f}",
                flush=True,
            )
            rate, cpu = baseline_plain_optuna(tmp, trials, "journal", sampler)
            if figures is not None:
                figures.cpu[sampler] = (h["daemon_cpu"] / trials * 1000, cpu * 1000)
            row = (
                f"| {sampler} | {h['daemon_cpu'] / trials * 1000:.2f} | {cpu * 1000:.2f} "
                f"| {h['daemon_cpu'] / trials / cpu:.2f}x | {trials / h['wall']:.0f} "
                f"| {rate:.0f} |"
            )
            print(row, flush=True)
            lines.append(row)
    finally:
        stop(worker)
        stop(daemon)
    return "\n".join(lines)


def throughput_table(
    amqp: str, tmp: Path, trials: int, concurrency: int, profile: Path | None = None
) -> str:
    """Trials/s and daemon CPU per trial, batched (random, QMC) and unbatched, beside plain
    Optuna's in-process journal file measured in the same run."""
    runs = [
        ("hpod, batching off, random sampler", "bench-unbatched", "random"),
        ("hpod, batching on, random sampler", "bench-batched", "random"),
        ("hpod, batching on, QMC sampler", "bench-batched", "qmc"),
    ]
    measured: list[tuple[str, float, float]] = []
    for label, mode, sampler in runs:
        out = profile and profile.with_name(f"{profile.stem}-{mode}-{sampler}{profile.suffix}")
        rate, cpu = bench_throughput(amqp, tmp, trials, concurrency, mode, sampler, out)
        measured.append((label, rate, cpu))
        print(measured[-1], flush=True)
    base, base_cpu = baseline_plain_optuna(tmp, trials, "journal")
    measured.append(("plain Optuna in-process, journal file, random sampler", base, base_cpu))
    lines = [
        f"{trials} trivial trials, RabbitMQ + a Celery worker of {concurrency} processes, "
        "every result durable before its ack; CPU: the daemon process alone (hpod), the "
        "whole process (plain).",
        "",
        "| path | trials/s | vs plain journal | CPU ms/trial |",
        "|---|---:|---:|---:|",
    ]
    return "\n".join(lines + rate_rows(measured, base))


def rate_rows(measured: Sequence[tuple[str, float, float | None]], base: float) -> list[str]:
    """Table rows: each path's trials/s, its ratio to plain Optuna's `base`, its CPU per trial."""
    return [
        f"| {label} | {rate:.0f} | {rate / base:.2f}x | "
        + ("n/a" if cpu is None else f"{cpu * 1000:.2f}")
        + " |"
        for label, rate, cpu in measured
    ]


def bench_idle_memory(tmp: Path) -> tuple[float, bool]:
    """Resident MB of an idle daemon (embedded default, workers not counted); torch loaded?"""
    env = env_for(tmp / "idle", local_workers="0")
    daemon = start(["run"], env)
    wait_healthy(env)
    time.sleep(5)
    proc = psutil.Process(daemon.pid)
    rss = proc.memory_info().rss / 2**20
    torch_loaded = any("libtorch" in m.path for m in proc.memory_maps())
    stop(daemon)
    return rss, torch_loaded


def bare_python_memory() -> float:
    """Resident MB of a bare Python process, for scale."""
    out = subprocess.run(
        [sys.executable, "-c", "import psutil; print(psutil.Process().memory_info().rss)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout) / 2**20


def overhead_table(
    amqp: str, tmp: Path, trials: int, concurrency: int, figures: Figures | None = None
) -> str:
    """The overhead table: hpod end to end, batching off and on, next to plain Optuna."""
    runs = [
        ("hpod, RabbitMQ + Celery, batching off, random sampler", "bench-unbatched", "random"),
        ("hpod, RabbitMQ + Celery, batching on, random sampler", "bench-batched", "random"),
        ("hpod, RabbitMQ + Celery, batching on, QMC sampler", "bench-batched", "qmc"),
        ("hpod, RabbitMQ + Celery, batching on, default TPE", "bench-batched", "tpe"),
    ]
    measured: list[tuple[str, float, float | None]] = [
        (label, *bench_throughput(amqp, tmp, trials, concurrency, m, s)) for label, m, s in runs
    ]
    base, base_cpu = baseline_plain_optuna(tmp, trials, "journal")
    if figures is not None:
        figures.unbatched = measured[0][1]
        batched = zip(runs[1:], measured[1:], strict=True)
        figures.batched = {sampler: m[1] for (_, _, sampler), m in batched}
        figures.plain_journal = base
    measured += [
        ("plain Optuna in-process, journal file, random sampler", base, base_cpu),
        (
            "plain Optuna in-process, SQLite, random sampler",
            *baseline_plain_optuna(tmp, trials, "sqlite"),
        ),
        (
            "plain Optuna in-process, journal file, default TPE",
            *baseline_plain_optuna(tmp, trials, "journal", "tpe"),
        ),
    ]
    lines = [
        f"{trials} trials of the trivial `quadratic` objective; hpod: {concurrency} Celery "
        "worker processes, every result durably stored (journal file, group commit) before "
        "its message is acknowledged; plain Optuna: one process, one durable write per call. "
        "CPU ms/trial: the daemon process alone for hpod (workers not counted), the whole "
        "process for plain Optuna (sampler, storage and the objective).",
        "",
        "| path | trials/s | vs plain Optuna, journal, random | CPU ms/trial |",
        "|---|---:|---:|---:|",
    ]
    return "\n".join(lines + rate_rows(measured, base))


#: Trivial trials per sampler of the daemon-CPU table in a full run (`cpu_table`).
CPU_TRIALS = 1000
#: The wall-clock runs: (objective seconds, trials per study). A 1 s objective gets fewer.
WALLCLOCK_COSTS = ((0.01, 100), (0.1, 60), (1.0, 16))


def http_call(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """One call to the daemon's HTTP API with its token; the decoded JSON answer."""
    url = f"http://127.0.0.1:{env['HPOD_HTTP_PORT']}{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {env['HPOD_API_TOKEN']}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def daemon_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the daemon process itself, not of its children."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def process_cpu(daemon_pid: int, worker_pid: int) -> dict[str, float]:
    """CPU seconds so far of the daemon (user and system apart), of the Celery worker with
    its child processes, and of RabbitMQ's `beam.smp` (0 where it is not found): where an
    unbatched trial's CPU goes, process by process (docs/benchmarks.md, "Fifth pass")."""
    daemon = psutil.Process(daemon_pid).cpu_times()
    worker = psutil.Process(worker_pid)
    workers = sum(_cpu_seconds(p) for p in [worker, *worker.children(recursive=True)])
    broker = sum(
        _cpu_seconds(p)
        for p in psutil.process_iter(["name"])
        if (p.info["name"] or "").startswith("beam")
    )
    return {
        "daemon_user": daemon.user,
        "daemon_system": daemon.system,
        "workers": workers,
        "broker": broker,
    }


def _cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of `process`; 0 if it has ended meanwhile."""
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def hpod_wallclock(
    env: dict[str, str],
    daemon_pid: int,
    sleep: float,
    trials: int,
    workers: int,
    sampler: str,
    amqp: str | None = None,
) -> dict[str, float]:
    """One study of `quadratic` sleeping `sleep` s per trial, `workers` trials in flight:
    seconds from the request to the daemon's `completed`, daemon CPU seconds, and the
    timeline's mean hpod share per trial (daemon + transport, `hpod.daemon.timeline`). With
    `amqp`, the end is watched on the broker, else on the daemon's HTTP event stream."""
    name = f"wall-{uuid.uuid4().hex[:8]}"
    study = {
        "name": name,
        "objective": "quadratic",
        "objective_kwargs": {"sleep": sleep},
        "space": SPACE,
        "budget": {"trials": trials},
        "max_concurrent": workers,
        "sampler": {"name": sampler, "seed": 0},
        "mode": "bench-unbatched",
        "transfer": "off",  # cold, as plain Optuna's runs (no trial from the last study)
    }
    if amqp is not None:
        # The end is read from the broker's events exchange, which the daemon publishes to
        # anyway: watching costs it nothing (an event stream over HTTP costs it a write per
        # event, about 5 % of its CPU per trivial trial).
        conn = pika.BlockingConnection(pika.URLParameters(amqp))
        ch = conn.channel()
        ch.exchange_declare("hpod.events", exchange_type="topic", durable=True)
        events = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(events, "hpod.events", routing_key="study.completed")
        try:
            cpu0 = daemon_cpu(daemon_pid)
            t0 = time.perf_counter()
            http_call(env, "POST", "/studies", study)
            while True:
                method, _props, body = ch.basic_get(events, auto_ack=True)
                if method is not None and json.loads(body)["study"] == name:
                    break
                conn.process_data_events(time_limit=0.01)
            wall = time.perf_counter() - t0
            cpu = daemon_cpu(daemon_pid) - cpu0
        finally:
            conn.close()
    else:
        # The end is read from the daemon's event stream, not by polling: a poll costs the
        # daemon CPU (a status document) and would be counted as its own.
        url = f"http://127.0.0.1:{env['HPOD_HTTP_PORT']}/events?study={name}"
        with urllib.request.urlopen(url, timeout=600) as stream:
            cpu0 = daemon_cpu(daemon_pid)
            t0 = time.perf_counter()
            http_call(env, "POST", "/studies", study)
            for line in stream:
                if (
                    line.startswith(b"data: ")
                    and json.loads(line[6:]).get("event") == "study.completed"
                ):
                    break
            wall = time.perf_counter() - t0
            cpu = daemon_cpu(daemon_pid) - cpu0
    status = http_call(env, "GET", f"/studies/{name}")
    per_trial = (status.get("efficiency") or {}).get("time_per_trial") or {}
    latency = http_call(env, "GET", f"/studies/{name}/doctor").get("result_to_dispatch") or {}
    return {
        "wall": wall,
        "daemon_cpu": cpu,
        "overhead": float(per_trial.get("overhead") or float("nan")),
        "result_to_dispatch_p50": float(latency.get("p50", float("nan"))),
        "result_to_dispatch_p99": float(latency.get("p99", float("nan"))),
    }


def plain_wallclock(
    tmp: Path, sleep: float, trials: int, workers: int, sampler: str
) -> dict[str, float]:
    """Plain Optuna in one process, journal file, the same objective, `workers` threads
    (`n_jobs`; the objective sleeps, so threads overlap as worker processes do): wall
    seconds and the process's CPU seconds (sampler + storage: sleeping costs none)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(tmp / f"plain-{uuid.uuid4().hex[:6]}")))
    chosen = (
        optuna.samplers.RandomSampler(seed=0)
        if sampler == "random"
        else optuna.samplers.TPESampler(seed=0)
    )
    study = optuna.create_study(storage=storage, sampler=chosen)

    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", -2, 2), trial.suggest_float("y", -2, 2)
        time.sleep(sleep)
        return (x - 0.5) ** 2 + (y - 0.5) ** 2

    cpu0, t0 = time.process_time(), time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=workers)
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}


@contextlib.contextmanager
def warm_daemon(
    data_dir: Path, url: str | None, workers: int
) -> Iterator[tuple[dict[str, str], subprocess.Popen[bytes]]]:
    """A daemon on RabbitMQ at `url` with a Celery worker of `workers` processes, or on the
    embedded default (`url` None) with as many local workers; healthy, connected and warmed
    up by a few trials before anything is timed; stopped on exit. Yields its environment and
    process."""
    settings = {"local_workers": str(workers)} if url is None else {"broker_url": url}
    env = env_for(data_dir, **settings, max_inflight="64")
    daemon = start(["run"] if url is None else ["run", "--no-workers"], env)
    worker = (
        start(["worker", "-c", str(workers), "-n", f"{data_dir.name}-{os.getpid()}@%h"], env)
        if url is not None
        else None
    )
    try:
        wait_healthy(env)
        time.sleep(3)  # workers connected and warm before anything is timed
        hpod_wallclock(env, daemon.pid, 0.0, 8, workers, "random")  # warm-up
        yield env, daemon
    finally:
        if worker is not None:
            stop(worker)
        stop(daemon)


def wallclock_table(
    amqp: str | None, tmp: Path, worker_counts: Sequence[int], figures: Figures | None = None
) -> str:
    """hpod's wall-clock to run a study against plain Optuna's, in the same run.

    For each transport (RabbitMQ + a Celery worker; the embedded default with its local
    worker processes), each number of workers and each sampler: one daemon, studies of
    10 ms, 100 ms and 1 s trials with as many trials in flight as workers. "hpod per trial"
    is (hpod's wall - plain's) / trials: what a user waits for hpod. "timeline" is the
    daemon's own per-trial split (daemon + transport). Daemon CPU per trial is beside plain
    Optuna's whole CPU per trial (its sampler and storage, in one process).
    """
    lines = [
        "| transport | workers | sampler | trial | trials | hpod wall s | plain wall s "
        "| ratio | hpod per trial ms | timeline ms | daemon CPU/trial ms | plain CPU/trial ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    transports = [("RabbitMQ", amqp)] if amqp else []
    transports.append(("embedded", None))
    for transport, url in transports:
        for workers in worker_counts:
            with warm_daemon(tmp / f"wall-{transport}-{workers}", url, workers) as (env, daemon):
                for sampler in ("random", "tpe"):
                    for sleep, trials in WALLCLOCK_COSTS:
                        h = hpod_wallclock(env, daemon.pid, sleep, trials, workers, sampler)
                        p = plain_wallclock(tmp, sleep, trials, workers, sampler)
                        if figures is not None and workers == 1 and sleep == 0.1:
                            figures.sequential[(transport, sampler)] = h["wall"] / p["wall"]
                        row = (
                            f"| {transport} | {workers} | {sampler} | {sleep * 1000:.0f} ms "
                            f"| {trials} | {h['wall']:.2f} | {p['wall']:.2f} "
                            f"| {h['wall'] / p['wall']:.2f}x "
                            f"| {(h['wall'] - p['wall']) / trials * 1000:.1f} "
                            f"| {h['overhead'] * 1000:.1f} "
                            f"| {h['daemon_cpu'] / trials * 1000:.1f} "
                            f"| {p['cpu'] / trials * 1000:.1f} |"
                        )
                        print(row, flush=True)
                        lines.append(row)
    return "\n".join(lines)


def latency_table(amqp: str | None, tmp: Path, trials: int, figures: Figures | None = None) -> str:
    """Result -> next dispatch, p50 and p99, of a sequential study (one worker, one trial in
    flight, the trivial objective) on RabbitMQ + Celery and on the embedded default, as the
    daemon measures it (`GET /studies/{name}/doctor`: a worker's result reaching the study
    to the next task on the broker: the tell, the next ask, the publish). Beside it, plain
    Optuna's tell + ask of the next trial in one process (journal file, same sampler), the
    in-process equivalent, measured in the same run."""
    lines = [
        f"{trials} sequential trials of `quadratic` (no sleep), one worker, one trial in "
        "flight, mode without policies; plain Optuna: ask + tell in one process, journal file.",
        "",
        "| transport | sampler | result -> next dispatch p50 ms | p99 ms "
        "| plain Optuna tell + ask ms |",
        "|---|---|---:|---:|---:|",
    ]
    transports = [("RabbitMQ", amqp)] if amqp else []
    transports.append(("embedded", None))
    for transport, url in transports:
        with warm_daemon(tmp / f"latency-{transport}", url, 1) as (env, daemon):
            for sampler in ("random", "tpe"):
                h = hpod_wallclock(env, daemon.pid, 0.0, trials, 1, sampler, url)
                rate, _cpu = baseline_plain_optuna(tmp, trials, "journal", sampler)
                if figures is not None and transport == "RabbitMQ":
                    figures.dispatch_p50[sampler] = (h["result_to_dispatch_p50"], 1 / rate)
                row = (
                    f"| {transport} | {sampler} | {h['result_to_dispatch_p50'] * 1000:.1f} "
                    f"| {h['result_to_dispatch_p99'] * 1000:.1f} | {1000 / rate:.1f} |"
                )
                print(row, flush=True)
                lines.append(row)
    return "\n".join(lines)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` in `path`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    stamp = (
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/core.py` on {os.cpu_count()} cores."
    )
    path.write_text(f"{head}{start}\n{stamp}\n\n{body}\n{end}{tail}")


def main() -> None:
    """Run every measurement and print figures with their baselines."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--dispatches", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the idle daemon's memory (no broker)"
    )
    parser.add_argument(
        "--only",
        choices=["wallclock", "cpu", "throughput", "latency"],
        help="only this measurement (wallclock: hpod's wall-clock against plain Optuna's; "
        "cpu: the daemon's CPU per trial; throughput: trials/s batched and unbatched; "
        "latency: result -> next dispatch p50/p99, RabbitMQ and embedded)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="with --only cpu or throughput: py-spy profiles of the daemon, one per run, "
        "named after this path; with --only throughput and a path ending in .pstats, the "
        "daemon runs under cProfile instead (bench/cprofile_daemon.py)",
    )
    parser.add_argument(
        "--workers", default="1,4", help="worker counts of the wall-clock table (default 1,4)"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.memory_only:
            print_idle_memory(tmp)
            return
        if args.only == "cpu":
            table = cpu_table(args.amqp, tmp, args.trials, args.concurrency, args.profile)
            write_section(Path(args.out), "cpu", table)
            return
        if args.only == "throughput":
            table = throughput_table(args.amqp, tmp, args.trials, args.concurrency, args.profile)
            write_section(Path(args.out), "throughput", table)
            return
        if args.only == "latency":
            table = latency_table(args.amqp, tmp, min(args.trials, 300))
            write_section(Path(args.out), "latency", table)
            return
        if args.only == "wallclock":
            write_section(Path(args.out), "wallclock", wallclock_table(args.amqp, tmp, counts))
            return
        lat = bench_first_dispatch(args.amqp, tmp, args.dispatches)
        p50, p90 = statistics.median(lat), statistics.quantiles(lat, n=10)[-1]
        print(
            f"study request -> first dispatch (RabbitMQ): p50 {p50 * 1000:.1f} ms, "
            f"p90 {p90 * 1000:.1f} ms over {len(lat)} studies"
        )
        figures = Figures()
        rows = overhead_table(args.amqp, tmp, args.trials, args.concurrency, figures)
        print(rows)
        write_section(Path(args.out), "overhead", rows)
        rates = {k: baseline_plain_optuna(tmp, 200, k)[0] for k in ("sqlite", "wal", "journal")}
        print(
            "default-storage choice, plain Optuna random ask+tell, 200 trials: "
            + ", ".join(f"{k} {v:.0f} trials/s" for k, v in rates.items())
            + f" (WAL/plain SQLite = {rates['wal'] / rates['sqlite']:.1f})"
        )
        wallclock = wallclock_table(args.amqp, tmp, counts, figures)
        write_section(Path(args.out), "wallclock", wallclock)
        write_section(Path(args.out), "latency", latency_table(args.amqp, tmp, 200, figures))
        cpu = cpu_table(args.amqp, tmp, CPU_TRIALS, args.concurrency, figures=figures)
        write_section(Path(args.out), "cpu", cpu)
        figures.idle_mb = print_idle_memory(tmp)
        targets = targets_table(figures)
        print(targets)
        write_section(Path(args.out), "targets", targets)


def print_idle_memory(tmp: Path) -> tuple[float, float]:
    """Print the idle daemon's resident memory beside a bare Python's; both, in MB."""
    rss, torch_loaded = bench_idle_memory(tmp)
    bare = bare_python_memory()
    print(
        f"idle daemon resident memory: {rss:.0f} MB (bare Python: {bare:.0f} MB, "
        f"ratio {rss / bare:.1f}); torch loaded: {torch_loaded}"
    )
    return rss, bare


if __name__ == "__main__":
    main()
