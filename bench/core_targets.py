"""Issue 16's overhead targets, judged on the figures of one `bench/core.py` run.

`bench/core.py` records what each of its tables measured into a `Figures`; `targets_table`
then prints every target beside the figure measured and the baseline of the same run, and
says whether it was met. A figure the run did not measure (`--only`) is said so, never
guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The targets' thresholds (issue 16).
BATCHED_TRIALS_PER_SECOND = 2000.0
UNBATCHED_VS_PLAIN = 1.0
SEQUENTIAL_WALL_RATIO = 1.05
DISPATCH_P50_SECONDS = 0.005
DAEMON_CPU_VS_PLAIN = 1.0
IDLE_MB = 150.0


@dataclass
class Figures:
    """What one run of `bench/core.py` measured, for its targets."""

    #: Trials/s of the batched trivial study, by sampler (random, qmc, tpe).
    batched: dict[str, float] = field(default_factory=dict)
    #: Trials/s of the unbatched trivial study (random sampler).
    unbatched: float | None = None
    #: Plain Optuna's trials/s, in-process journal file, random sampler.
    plain_journal: float | None = None
    #: hpod's wall-clock over plain Optuna's, one worker, 100 ms trials, by
    #: (transport, sampler).
    sequential: dict[tuple[str, str], float] = field(default_factory=dict)
    #: Result -> next dispatch p50 seconds on RabbitMQ, and plain Optuna's tell + ask
    #: seconds, by sampler.
    dispatch_p50: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Daemon CPU ms per unbatched trial and plain Optuna's CPU ms per trial, by sampler.
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Resident MB of the idle daemon, and of a bare Python process.
    idle_mb: tuple[float, float] | None = None


def _verdict(met: list[bool]) -> str:
    if not met:
        return "not measured in this run"
    if all(met):
        return "met"
    return "missed" if not any(met) else "partly met"


def targets_table(f: Figures) -> str:
    """The targets as a Markdown table: measured, same-run baseline, verdict."""
    rows: list[tuple[str, str, str, str]] = []

    fast = {s: r for s, r in f.batched.items() if s in ("random", "qmc")}
    rows.append(
        (
            f"batched trivial trials >= {BATCHED_TRIALS_PER_SECOND:,.0f}/s (random or QMC)",
            ", ".join(f"{s} {r:,.0f}/s" for s, r in fast.items()) or "-",
            _plain(f.plain_journal),
            _verdict([max(fast.values()) >= BATCHED_TRIALS_PER_SECOND] if fast else []),
        )
    )
    ratio = (
        f.unbatched / f.plain_journal
        if f.unbatched is not None and f.plain_journal is not None
        else None
    )
    rows.append(
        (
            f"unbatched >= {UNBATCHED_VS_PLAIN:.0f}x plain Optuna's journal file",
            "-" if ratio is None else f"{f.unbatched:,.0f}/s = {ratio:.2f}x",
            _plain(f.plain_journal),
            _verdict([] if ratio is None else [ratio >= UNBATCHED_VS_PLAIN]),
        )
    )
    rows.append(
        (
            f"sequential 100 ms trials <= {SEQUENTIAL_WALL_RATIO:.2f}x plain Optuna's wall-clock "
            "(RabbitMQ and embedded)",
            ", ".join(f"{t} {s} {r:.2f}x" for (t, s), r in sorted(f.sequential.items())) or "-",
            "plain Optuna, one process, same objective and sampler",
            _verdict([r <= SEQUENTIAL_WALL_RATIO for r in f.sequential.values()]),
        )
    )
    rows.append(
        (
            f"result -> next dispatch p50 < {DISPATCH_P50_SECONDS * 1000:.0f} ms on RabbitMQ",
            ", ".join(f"{s} {p * 1000:.1f} ms" for s, (p, _) in f.dispatch_p50.items()) or "-",
            ", ".join(
                f"plain tell + ask {s} {b * 1000:.1f} ms" for s, (_, b) in f.dispatch_p50.items()
            )
            or "-",
            _verdict([p < DISPATCH_P50_SECONDS for p, _ in f.dispatch_p50.values()]),
        )
    )
    rows.append(
        (
            "daemon CPU per trial <= plain Optuna's (same sampler, unbatched)",
            ", ".join(f"{s} {d:.2f} ms = {d / p:.2f}x" for s, (d, p) in f.cpu.items()) or "-",
            ", ".join(f"plain {s} {p:.2f} ms" for s, (_, p) in f.cpu.items()) or "-",
            _verdict([d / p <= DAEMON_CPU_VS_PLAIN for d, p in f.cpu.values()]),
        )
    )
    rows.append(
        (
            f"idle daemon < {IDLE_MB:.0f} MB resident",
            "-" if f.idle_mb is None else f"{f.idle_mb[0]:.0f} MB",
            "-" if f.idle_mb is None else f"bare Python {f.idle_mb[1]:.0f} MB",
            _verdict([] if f.idle_mb is None else [f.idle_mb[0] < IDLE_MB]),
        )
    )
    lines = [
        "| target (issue 16) | measured | baseline, same run | verdict |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {b} | {v} |" for t, m, b, v in rows]
    return "\n".join(lines)


def _plain(rate: float | None) -> str:
    return "-" if rate is None else f"plain Optuna, journal file, random: {rate:,.0f}/s"
