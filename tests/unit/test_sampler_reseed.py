"""A sampler rebuilt mid-study (plan change, restart) does not replay the study's start."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hpod.daemon.store import StudyStore
from hpod.engine import sampler_seed
from hpod.policies.plan import Plan
from hpod.schema import StudySpec

SPEC = StudySpec.model_validate(
    {
        "name": "reseed",
        "objective": "svc_cv",
        "space": {
            "C": {"type": "float", "low": 0.01, "high": 100, "log": True},
            "k": {"type": "int", "low": 1, "high": 1000},
        },
        "budget": {"trials": 20},
        "sampler": {"name": "random", "seed": 7},
    }
)
RANDOM = Plan(
    mode="fast",
    sampler="random",
    sampler_options={},
    seed=7,
    pruner="none",
    pruner_options={},
    threshold=0.0,
    threshold_min_trials=0,
    ladder=(1.0,),
    policies=frozenset(),
    parallelism=1,
    batch_seconds=0.0,
    max_pack=1,
)
#: TPE's startup trials come from a RandomSampler on the same seed: the replay case.
TPE = replace(RANDOM, sampler="tpe", sampler_options={"n_startup_trials": 10})


def run(path: Path, swap_after: int, total: int) -> list[dict[str, Any]]:
    """Ask and tell `total` trials serially, the plan switching random -> TPE after
    `swap_after`; the configurations in order."""
    store = StudyStore(f"journal://{path}")
    store.create(SPEC)
    store.set_plan(SPEC, RANDOM)
    asked = []
    for number in range(total):
        if number == swap_after:
            store.set_plan(SPEC, TPE)
        trial = store.ask(SPEC)
        store.tell(SPEC, trial.number, "complete", [float(trial.params["k"])])
        asked.append(trial.params)
    store.close()
    return asked


def test_swapped_sampler_does_not_repropose_the_first_configurations(tmp_path: Path) -> None:
    """Seed 7, random for 4 trials, then TPE (still in its random startup) for 4 more: none
    of the last 4 is one of the first 4 (with the spec's seed again, trials 4-7 equalled
    trials 0-3 exactly)."""
    asked = run(tmp_path / "a.log", swap_after=4, total=8)
    first, after = asked[:4], asked[4:]
    assert all(params not in first for params in after)
    assert len({(p["C"], p["k"]) for p in asked}) == 8


def test_a_seeded_study_with_a_swap_is_reproducible(tmp_path: Path) -> None:
    """The same study run twice proposes the same 8 configurations in the same order."""
    assert run(tmp_path / "a.log", 4, 8) == run(tmp_path / "b.log", 4, 8)


def test_the_first_sampler_keeps_the_spec_seed() -> None:
    """No trials yet: the spec's seed as given; unseeded stays unseeded; later builds get
    distinct seeds in numpy's range."""
    assert sampler_seed(7, 0) == 7
    assert sampler_seed(None, 5) is None
    derived = {sampler_seed(7, n) for n in range(1, 50)}
    assert len(derived) == 49 and 7 not in derived
    assert all(seed is not None and 0 <= seed < 2**31 for seed in derived)
