"""Paired A/B runs of a sequential study: two checkouts of hpod, alternated.

    git archive BASE | tar -x -C /tmp/base; git archive NEW | tar -x -C /tmp/new
    python bench/paired_latency.py --base /tmp/base --new /tmp/new --pairs 6 \
        [--amqp amqp://guest:guest@127.0.0.1:5672/%2F] [--trials 200]

Each pair runs, for each checkout (the order swapped every other pair), `bench/core.py`'s
`warm_daemon` and `hpod_wallclock` on RabbitMQ: one study of `--trials` trivial trials
(random sampler, one worker, one trial in flight, the mode without policies). Per run: the
daemon's result -> next dispatch p50 and p99 (to the broker's confirm of the next task, as
`hpod doctor` reports it), the study's wall-clock from its request to `study.completed`, and
the daemon's CPU per trial (its process alone; it also counts the daemon's periodic work over
the run). Read the per-pair ratios new / base and their bootstrap interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paired_throughput import paired_parser, report_ratios, run_child

#: One run, in a child process whose PYTHONPATH is the checkout under test.
CHILD = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import core
amqp, trials = sys.argv[2], int(sys.argv[3])
with tempfile.TemporaryDirectory() as d:
    with core.warm_daemon(Path(d) / "latency", amqp, 1) as (env, daemon):
        h = core.hpod_wallclock(env, daemon.pid, 0.0, trials, 1, "random", amqp)
print(json.dumps({"p50": h["result_to_dispatch_p50"], "p99": h["result_to_dispatch_p99"],
                  "wall": h["wall"], "daemon_cpu": h["daemon_cpu"] / trials}))
"""


def run(checkout: Path, amqp: str, trials: int) -> dict[str, float] | None:
    """One sequential study on `checkout`; None if it failed."""
    return run_child(checkout, CHILD, amqp, str(trials))


def main() -> None:
    args = paired_parser(pairs=6, trials=200).parse_args()
    runs: dict[tuple[str, int], dict[str, Any] | None] = {}
    for i in range(args.pairs):
        for which in ("base", "new") if i % 2 == 0 else ("new", "base"):
            checkout = args.base if which == "base" else args.new
            runs[which, i] = got = run(checkout, args.amqp, args.trials)
            print(which, i, got, flush=True)
    pairs = [i for i in range(args.pairs) if runs["base", i] and runs["new", i]]
    print(f"## {len(pairs)} complete pairs")
    if pairs:
        report_ratios(
            [runs["base", i] or {} for i in pairs],
            [runs["new", i] or {} for i in pairs],
            ("p50", "p99", "wall", "daemon_cpu"),
        )


if __name__ == "__main__":
    main()
