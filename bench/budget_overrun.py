"""How far studies ran past `budget.cpu_seconds`, from bench/savings.py's raw results.

Reads one or more ``--json`` files of bench/savings.py (say, one measured before a change
and one after) and prints a Markdown table per file: per task and configuration, CPU spent / budget
for each seed, their mean with a bootstrap 95 % interval over seeds, the largest overrun
(CPU seconds past the budget) and the largest single trial's CPU; then, for
two files, the paired difference (second - first) of spent / budget by seed, with its
bootstrap interval. Nothing is measured here.

    .venv/bin/python bench/budget_overrun.py before.json after.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

RESAMPLES = 10_000


def bootstrap(values: list[float], rng: random.Random) -> tuple[float, float]:
    """A percentile bootstrap 95 % interval of the mean of `values`."""
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(RESAMPLES))
    return means[int(0.025 * RESAMPLES)], means[int(0.975 * RESAMPLES) - 1]


def cell(run: dict[str, Any]) -> str:
    """A run's row: its task and configuration (one file may hold several tasks)."""
    return f"{run['task']} {run['config']}"


def ratios(raw: dict[str, Any]) -> dict[str, dict[int, float]]:
    """CPU spent / budget by task and configuration, and seed."""
    out: dict[str, dict[int, float]] = {}
    for run in raw["runs"]:
        spent = sum(float(t["cpu"]) for t in run["trials"])
        out.setdefault(cell(run), {})[int(run["seed"])] = spent / float(run["budget_cpu"])
    return out


def table(raw: dict[str, Any], rng: random.Random) -> list[str]:
    """One file's table."""
    meta = raw["meta"]
    lines = [
        f"hpod {meta['hpod_commit']}, {meta['seeds']} seeds, `{meta['command']}`",
        "",
        "| task configuration | spent / budget by seed | mean [95 % CI] | largest overrun (s) "
        "| largest trial CPU (s) |",
        "|---|---|---|---|---|",
    ]
    by_config = ratios(raw)
    for config, seeds in by_config.items():
        runs = [r for r in raw["runs"] if cell(r) == config]
        largest = max(float(t["cpu"]) for r in runs for t in r["trials"])
        overrun = max(sum(float(t["cpu"]) for t in r["trials"]) - r["budget_cpu"] for r in runs)
        values = [seeds[s] for s in sorted(seeds)]
        low, high = bootstrap(values, rng)
        shown = ", ".join(f"{v:.2f}" for v in values)
        lines.append(
            f"| {config} | {shown} | {statistics.fmean(values):.2f} [{low:.2f}, {high:.2f}] "
            f"| {max(overrun, 0.0):.2f} | {largest:.2f} |"
        )
    return lines


def main() -> None:
    """Print the tables of the files given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="bench/savings.py --json files")
    args = parser.parse_args()
    rng = random.Random(0)
    raws = [json.loads(path.read_text()) for path in args.json]
    for raw in raws:
        print("\n".join(table(raw, rng)), end="\n\n")
    if len(raws) == 2:
        first, second = (ratios(raw) for raw in raws)
        what = "paired difference of spent / budget (second - first) [95 % CI]"
        print(f"| task configuration | {what} |")
        print("|---|---|")
        for config in first:
            seeds = sorted(set(first[config]) & set(second.get(config, {})))
            diffs = [second[config][s] - first[config][s] for s in seeds]
            low, high = bootstrap(diffs, rng)
            print(f"| {config} | {statistics.fmean(diffs):+.2f} [{low:+.2f}, {high:+.2f}] |")


if __name__ == "__main__":
    main()
