"""Paired A/B runs of the trivial-trial throughput benchmark: two checkouts of hpod, alternated.

    git archive BASE | tar -x -C /tmp/base; git archive NEW | tar -x -C /tmp/new
    python bench/paired_throughput.py --base /tmp/base --new /tmp/new --pairs 4 \
        [--amqp amqp://guest:guest@127.0.0.1:5672/%2F]

Each pair runs `bench/core.py`'s `bench_throughput` (a fresh daemon on RabbitMQ, a Celery
worker of 4 processes) for each checkout, the order swapped every other pair: a batched study
of `--trials` trivial trials and an unbatched one of a quarter as many, each followed by
plain Optuna (ask + tell, journal file) on 300 trials in the same process. Per run: trials/s,
the daemon's CPU per trial and the worker processes' CPU per trial (from the daemon's start
of the study to its `study.completed`). On a shared machine wall-clock moves with the load;
CPU per trial much less: read the per-pair ratios new / base and their bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: One run, in a child process whose PYTHONPATH is the checkout under test (its daemon and
#: worker inherit it). Prints one JSON line.
CHILD = """
import json, sys, tempfile
from pathlib import Path
import psutil
sys.path.insert(0, sys.argv[1])
import core
amqp, mode, trials = sys.argv[2], sys.argv[3], int(sys.argv[4])
me = psutil.Process()
snaps = []
def tree():
    out = {}
    for c in me.children(recursive=True):
        try:
            out[c.pid] = (c.cmdline()[3:4] == ["worker"] or "-A" in c.cmdline(),
                          sum(c.cpu_times()[:2]))
        except psutil.Error:
            pass
    return out
real = core.daemon_cpu
def daemon_cpu(pid):
    snaps.append(tree())
    return real(pid)
core.daemon_cpu = daemon_cpu
with tempfile.TemporaryDirectory() as d:
    rate, cpu = core.bench_throughput(amqp, Path(d), trials, 4, mode, "random")
    a, b = snaps[0], snaps[-1]
    worker = sum(cpu1 - a.get(pid, (w, 0.0))[1] for pid, (w, cpu1) in b.items() if w)
    plain_rate, plain_cpu = core.baseline_plain_optuna(Path(d), 300, "journal")
print(json.dumps({"rate": rate, "daemon_cpu": cpu, "worker_cpu": worker / trials,
                  "plain_rate": plain_rate, "plain_cpu": plain_cpu}))
"""


def run(checkout: Path, amqp: str, mode: str, trials: int) -> dict[str, float] | None:
    """One benchmark run of `checkout`; None if it failed (a daemon too slow to start)."""
    return run_child(checkout, CHILD, amqp, mode, str(trials))


def run_child(checkout: Path, child: str, *args: str) -> dict[str, float] | None:
    """Run the script `child` (bench/ on its path, then `args`) against `checkout`'s hpod;
    its last line of output as JSON, or None if it failed."""
    proc = subprocess.run(
        [sys.executable, "-c", child, str(Path(__file__).parent), *args],
        env={**os.environ, "PYTHONPATH": str(checkout)},
        cwd=checkout,  # `python -m hpod` puts its working directory first on sys.path
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bootstrap_median(ratios: list[float], n: int = 10_000) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the median of `ratios` (seed 0)."""
    rnd = random.Random(0)
    medians = sorted(statistics.median(rnd.choices(ratios, k=len(ratios))) for _ in range(n))
    return medians[int(0.025 * n)], medians[int(0.975 * n)]


def paired_parser(pairs: int, trials: int) -> argparse.ArgumentParser:
    """The arguments of every paired runner: the two checkouts, the pairs, the trials of a
    run and the broker (defaults `pairs` and `trials`)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=pairs)
    parser.add_argument("--trials", type=int, default=trials)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    return parser


def report_ratios(
    base: list[dict[str, Any]], new: list[dict[str, Any]], keys: Sequence[str]
) -> None:
    """Print, per figure of `keys`, the medians of the complete pairs' runs, each pair's
    ratio new / base, and the median ratio with its bootstrap 95 % interval."""
    for key in keys:
        b = [float(run[key]) for run in base]
        n = [float(run[key]) for run in new]
        ratios = [new_ / base_ for base_, new_ in zip(b, n, strict=True)]
        low, high = bootstrap_median(ratios)
        print(
            f"{key}: base median {statistics.median(b):.4g}, new median "
            f"{statistics.median(n):.4g}, new/base per pair "
            f"{[round(r, 2) for r in ratios]}, median {statistics.median(ratios):.2f} "
            f"(bootstrap 95 % {low:.2f}-{high:.2f})"
        )


def main() -> None:
    parser = paired_parser(pairs=4, trials=2000)
    parser.add_argument("--only", choices=["batched", "unbatched"], help="only this kind")
    args = parser.parse_args()
    kinds = {
        "batched": ("bench-batched", args.trials),
        "unbatched": ("bench-unbatched", max(1, args.trials // 4)),
    }
    if args.only:
        kinds = {args.only: kinds[args.only]}
    runs: dict[tuple[str, str, int], dict[str, Any] | None] = {}
    for i in range(args.pairs):
        order = ("base", "new") if i % 2 == 0 else ("new", "base")
        for kind, (mode, trials) in kinds.items():
            for which in order:
                checkout = args.base if which == "base" else args.new
                runs[kind, which, i] = got = run(checkout, args.amqp, mode, trials)
                print(kind, which, i, got, flush=True)
    for kind in kinds:
        pairs = [i for i in range(args.pairs) if runs[kind, "base", i] and runs[kind, "new", i]]
        print(f"## {kind}: {len(pairs)} complete pairs")
        if pairs:
            report_ratios(
                [runs[kind, "base", i] or {} for i in pairs],
                [runs[kind, "new", i] or {} for i in pairs],
                ("daemon_cpu", "worker_cpu", "rate"),
            )


if __name__ == "__main__":
    main()
