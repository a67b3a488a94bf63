"""bench/savings.py's analysis, by exact inputs: quality at the budget, compute to target,
paired bootstrap ratios, the targets' verdicts, and configurations as data."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import savings
from savings import CONFIGS, Run, analyse, bootstrap_ratio, verdicts

from hpod.modes import ALL_POLICIES, load_modes


def _run(config: str, seed: int, curve: list[tuple[float, float | None]], budget: float) -> Run:
    """A run whose trials finished with these (cpu, value) in order (None: pruned)."""
    trials: list[dict[str, Any]] = []
    cum, best = 0.0, math.inf
    for number, (cpu, value) in enumerate(curve):
        cum += cpu
        if value is not None:
            best = min(best, value)
        trials.append(
            {
                "number": number,
                "state": "complete" if value is not None else "pruned",
                "cpu": cpu,
                "cum_cpu": cum,
                "at": cum * 2,
                "best": None if math.isinf(best) else best,
                "cache": None,
            }
        )
    return Run("forest", config, seed, 4, f"{config}-{seed}", budget, cum * 2, trials)


def test_quality_at_the_budget_leaves_out_trials_finished_past_it() -> None:
    run = _run("tpe", 0, [(1.0, 0.5), (1.0, 0.4), (1.0, 0.1)], budget=2.5)
    assert run.best_at_budget == 0.4  # the third trial finished past 2.5 CPU s
    assert run.cpu_to(0.4) == 2.0 and run.cpu_to(0.1) == 3.0
    assert run.wall_to(0.4) == 4.0 and math.isinf(run.cpu_to(0.01))


def test_the_bootstrap_pairs_seeds_and_brackets_the_ratio() -> None:
    rng = np.random.default_rng(0)
    base = {0: 4.0, 1: 6.0, 2: 8.0}
    mine = {0: 2.0, 1: 3.0, 2: 4.0}
    ratio = bootstrap_ratio(base, mine, rng)
    assert ratio.value == 2.0
    assert ratio.low == ratio.high == 2.0  # every paired draw keeps the ratio
    never = bootstrap_ratio(base, {0: math.inf, 1: math.inf, 2: math.inf}, rng)
    assert never.value == 0.0 and never.text() == "T not reached"
    assert math.isnan(bootstrap_ratio(base, {7: 1.0}, rng).value)  # no seed in common


def test_analysis_and_targets_from_runs() -> None:
    """plain TPE reaches T = 0.4 at 2 CPU s; balanced at 1 s (2x), fast at 0.25 s (8x, and
    quality 0.4 / 0.4 = 1): balanced beats the simple set-ups, fast doubles balanced."""
    runs = [
        _run("tpe", 0, [(1.0, 0.5), (1.0, 0.4), (1.0, 0.45)], 3.0),
        _run("cmaes", 0, [(1.5, 0.6), (1.5, 0.4)], 3.0),
        _run("balanced", 0, [(0.5, 0.5), (0.5, 0.4), (0.5, None)], 3.0),
        _run("fast", 0, [(0.25, 0.4), (0.25, None)], 3.0),
    ]
    a = analyse(runs, np.random.default_rng(0))
    assert a["target"] == 0.4
    cells = a["cells"]
    assert (cells["cmaes"].cpu.value, cells["balanced"].cpu.value) == (2.0 / 3.0, 2.0)
    assert cells["fast"].cpu.value == 8.0 and cells["fast"].quality == 1.0
    found = {what.split(": ", 1)[1]: ok for what, _, ok in verdicts({"forest@4": a})}
    assert found["balanced >= the best simple set-up (tpe)"] is True
    assert found["fast >= 2x balanced's ratio, quality <= 1.005"] is True
    assert found["balanced's wall-clock to quality >= plain TPE's (ratio >= 1)"] is True


def test_every_policy_has_its_ablation_and_every_config_its_mode() -> None:
    """A new policy gets its ablation without a new line; no config names a missing mode."""
    for policy in ALL_POLICIES:
        assert CONFIGS[f"balanced-no-{policy}"].mode == f"balanced-no-{policy}"
    known = set(load_modes()) | set(savings.all_modes())
    for config in CONFIGS.values():
        assert config.mode in known, config


@pytest.mark.parametrize("name", sorted(savings.BENCH_MODES))
def test_the_bench_modes_are_valid_modes(name: str, tmp_path: Path) -> None:
    path = tmp_path / "modes.toml"
    path.write_text(savings.modes_toml({name: savings.BENCH_MODES[name]}))
    assert load_modes(str(path))[name].sampler == savings.BENCH_MODES[name]["sampler"]


def test_every_study_starts_cold_and_a_dropped_transferred_trial_is_not_in_the_curve() -> None:
    """Each configuration's studies are of the same task: with transfer on, a seed's study
    would start warm from the earlier seeds' (plain TPE's included). And a transferred trial
    dropped before it ran (stored FAIL) is no finished trial of the curve."""
    import optuna
    import quality

    from hpod.transfer.store import DROPPED_ATTR

    task = savings.TASKS["gbm_large"]
    for config in CONFIGS.values():
        spec = savings.study_spec(task, config, 0, "s", {"trials": 5}, 1, True)
        assert spec["transfer"] == "off", config.name
    one = next(iter(quality.TASKS.values()))
    assert quality.study_spec(one, "balanced", 0, "s", 5)["transfer"] == "off"
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5}, user_attrs={DROPPED_ATTR: "disagrees"})
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[0]
    study._storage.set_trial_state_values(waiting._trial_id, optuna.trial.TrialState.FAIL)
    rows = savings.curve(study.get_trials(), created=0.0)
    assert [row["number"] for row in rows] == [1], rows


def test_runs_merged_from_two_files_keep_only_the_last_runs_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mlp_epochs was measured at 16.2 CPU s in the headline and at 28.06 CPU s in the gate's
    re-run of four configurations: merged, the other three stay out (not compared at
    another compute), and the merge says so."""
    import json

    first = [_run(c, 0, [(1.0, 0.5)], budget=16.2083) for c in ("tpe", "cmaes", "balanced")]
    second = [_run(c, 0, [(1.0, 0.4)], budget=28.06) for c in ("tpe", "balanced")]
    paths = []
    for index, runs in enumerate((first, second)):
        path = tmp_path / f"part{index}.progress.jsonl"
        meta = {"command": f"part {index}", "hpod_commit": "x", "wall_minutes": 0.0}
        lines = [{"meta": meta}, *({"run": vars(r)} for r in runs)]
        path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        paths.append(path)
    runs, _ = savings.load_runs(paths)
    assert sorted((r.config, r.budget_cpu) for r in runs) == [("balanced", 28.06), ("tpe", 28.06)]
    assert "dropped cmaes" in capsys.readouterr().out


def test_fast_that_never_reaches_the_target_does_not_pass_as_twice_balanced() -> None:
    """mlp_epochs at 6cfe47c: neither fast nor balanced reached T in the median (both ratios
    0), fast's quality 0.996: "fast >= 2x balanced" printed PASS on 0 >= 2 x 0."""
    runs = [
        _run("tpe", 0, [(1.0, 0.5), (1.0, 0.4)], 2.0),
        _run("balanced", 0, [(1.0, 0.5), (1.0, 0.45)], 2.0),
        _run("fast", 0, [(1.0, 0.42), (1.0, 0.401)], 2.0),
    ]
    a = analyse(runs, np.random.default_rng(0))
    cells = a["cells"]
    assert cells["fast"].cpu.value == cells["balanced"].cpu.value == 0.0
    assert cells["fast"].quality <= savings.FAST_QUALITY  # within 0.5 %: only T decides
    found = {what.split(": ", 1)[1]: ok for what, _, ok in verdicts({"mlp_epochs@1": a})}
    assert found["fast >= 2x balanced's ratio, quality <= 1.005"] is False
