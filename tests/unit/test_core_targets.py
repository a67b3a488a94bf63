"""bench/core.py's target verdicts (issue 16), by exact inputs: the figures of the run at
0674f00 quoted in docs/benchmarks.md, and a run that measured only part of them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from core_targets import Figures, targets_table


def _rows(table: str) -> dict[str, list[str]]:
    """Each target row's cells after the first, by the target's first words."""
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[" ".join(cells[0].split()[:2])] = cells[1:]
    return rows


def test_the_0674f00_run_is_judged_as_docs_say() -> None:
    figures = Figures(
        batched={"random": 1435.0, "qmc": 689.0, "tpe": 108.0},
        unbatched=311.0,
        plain_journal=661.0,
        sequential={
            ("RabbitMQ", "random"): 6.40 / 6.18,
            ("RabbitMQ", "tpe"): 6.50 / 6.31,
            ("embedded", "random"): 6.41 / 6.18,
            ("embedded", "tpe"): 6.55 / 6.26,
        },
        dispatch_p50={"random": (0.0034, 0.0019), "tpe": (0.0063, 0.0040)},
        cpu={"random": (2.17, 1.47), "tpe": (6.06, 5.54)},
        idle_mb=(103.0, 11.0),
    )
    rows = _rows(targets_table(figures))
    assert rows["batched trivial"] == [
        "random 1,435/s, qmc 689/s",
        "plain Optuna, journal file, random: 661/s",
        "missed",
    ]
    assert rows["unbatched >="][0] == "311/s = 0.47x"
    assert rows["unbatched >="][2] == "missed"
    assert rows["sequential 100"][2] == "met"  # 1.04x at worst, under 1.05x
    assert rows["result ->"][0] == "random 3.4 ms, tpe 6.3 ms"
    assert rows["result ->"][2] == "partly met"
    assert rows["daemon CPU"][0] == "random 2.17 ms = 1.48x, tpe 6.06 ms = 1.09x"
    assert rows["daemon CPU"][2] == "missed"
    assert rows["idle daemon"] == ["103 MB", "bare Python 11 MB", "met"]


def test_a_figure_the_run_did_not_measure_is_said_so_not_judged() -> None:
    rows = _rows(targets_table(Figures(unbatched=700.0, plain_journal=661.0)))
    assert rows["unbatched >="][2] == "met"
    for target in ("batched trivial", "sequential 100", "result ->", "daemon CPU", "idle daemon"):
        assert rows[target][-1] == "not measured in this run"
    # A rate with no baseline is not judged either.
    assert _rows(targets_table(Figures(unbatched=700.0)))["unbatched >="][2] == (
        "not measured in this run"
    )


def test_a_target_just_over_its_threshold_is_missed() -> None:
    figures = Figures(
        sequential={("RabbitMQ", "random"): 1.05, ("embedded", "random"): 1.0501},
        dispatch_p50={"random": (0.005, 0.001)},
        idle_mb=(150.0, 11.0),
    )
    rows = _rows(targets_table(figures))
    assert rows["sequential 100"][2] == "partly met"
    assert rows["result ->"][2] == "missed"  # < 5 ms, and 5.0 ms is not
    assert rows["idle daemon"][2] == "missed"
