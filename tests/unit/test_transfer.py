"""Transfer across studies, the pure parts: memory records, similarity, mapping, agreement,
and their storage in a plain Optuna storage."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hpod.ranks import spearman
from hpod.schema import StudySpec
from hpod.transfer.agreement import (
    Agreement,
    agreement,
    critical,
    judge,
    predict_ranks,
    support,
)
from hpod.transfer.mapping import (
    MAX_TRANSFER_SHARE,
    Transferred,
    map_params,
    plan_transfer,
    transfer_count,
)
from hpod.transfer.memory import (
    MAX_MEMORY_BYTES,
    MAX_SURFACE,
    TOP_K,
    Observed,
    StudyMemory,
    build_memory,
    dump_memory,
    load_memory,
    ranks,
)
from hpod.transfer.similarity import Target, rank_sources, similarity, space_overlap
from hpod.transfer.store import (
    DROPPED_ATTR,
    TRANSFERRED_ATTR,
    counts_in_budget,
    drop_waiting,
    enqueue,
    load_memories,
    write_memory,
)


def space(**params: dict[str, Any]) -> dict[str, Any]:
    """A validated space from plain dicts."""
    spec = StudySpec.model_validate(
        {"name": "s", "space": params, "budget": {"trials": 1}}, strict=False
    )
    return dict(spec.space)


SPACE = space(
    x={"type": "float", "low": -2.0, "high": 2.0},
    lr={"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    n={"type": "int", "low": 2, "high": 20, "step": 2},
    kind={"type": "categorical", "choices": ["a", "b"]},
    depth={"type": "int", "low": 1, "high": 5, "condition": {"param": "kind", "values": ["b"]}},
)


def memory_of(
    study: str,
    observed: list[Observed],
    objective: str = "quadratic",
    sp: dict[str, Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    version: str | None = "1",
    directions: list[Any] | None = None,
) -> StudyMemory:
    memory = build_memory(
        study,
        objective,
        sp or SPACE,
        directions or ["minimize"],
        observed,
        kwargs=kwargs or {},
        version=version,
    )
    assert memory is not None
    return memory


def grid(f: Any, n: int = 40) -> list[Observed]:
    """Trials on x in [-2, 2] with value f(x)."""
    return [Observed({"x": -2 + 4 * i / (n - 1)}, [f(-2 + 4 * i / (n - 1))]) for i in range(n)]


# --- mapping -----------------------------------------------------------------------------


def test_a_past_configuration_is_clipped_put_on_the_grid_and_pruned_to_the_new_space() -> None:
    past = {"x": 3.5, "lr": 1e-5, "n": 7, "kind": "c", "gone": 1, "depth": 3}
    assert map_params(past, SPACE) == {"x": 2.0, "lr": 1e-3, "n": 8}
    # A kept categorical activates its conditional child; a missing parameter stays absent.
    assert map_params({"kind": "b", "depth": 9, "n": 21}, SPACE) == {
        "kind": "b",
        "depth": 5,
        "n": 20,
    }
    # The child of a parent that is not active is dropped; JSON-typed membership (1 ≠ true).
    assert map_params({"kind": "a", "depth": 3}, SPACE) == {"kind": "a"}
    flags = space(f={"type": "categorical", "choices": [1, "x"]})
    assert map_params({"f": True}, flags) == {}
    assert map_params({"x": "text", "n": float("nan")}, SPACE) == {}


def test_the_transferred_share_is_bounded() -> None:
    assert transfer_count(0.25, 20) == 5
    assert transfer_count(0.25, 3) == 0
    assert transfer_count(0.0, 100) == 0
    assert transfer_count(0.9, 100) == int(MAX_TRANSFER_SHARE * 100)
    assert transfer_count(0.25, None) > 0


def test_plan_takes_the_best_first_round_robin_without_duplicates() -> None:
    a = memory_of("a", [Observed({"x": v}, [abs(v - 1)]) for v in (1.0, 1.5, 3.0, 4.0)])
    b = memory_of("b", [Observed({"x": v}, [abs(v + 1)]) for v in (-1.0, -0.5)])
    planned = plan_transfer(SPACE, [(a, 0.9), (b, 0.5)], limit=4)
    assert planned == [
        Transferred({"x": 1.0}, "a", 0),
        Transferred({"x": -1.0}, "b", 0),
        Transferred({"x": 1.5}, "a", 1),
        Transferred({"x": -0.5}, "b", 1),
    ]
    # 3.0 and 4.0 both clip to 2.0: one trial, not two.
    assert [t.params for t in plan_transfer(SPACE, [(a, 1.0)], limit=10)] == [
        {"x": 1.0},
        {"x": 1.5},
        {"x": 2.0},
    ]


# --- similarity --------------------------------------------------------------------------


def target(**changes: Any) -> Target:
    base: dict[str, Any] = {
        "objective": "quadratic",
        "space": SPACE,
        "directions": ["minimize"],
        "kwargs": {"offset": 0.5},
        "version": "1",
    }
    return Target(**{**base, **changes})


def test_similarity_needs_the_same_objective_and_directions() -> None:
    past = memory_of("p", grid(abs), kwargs={"offset": 0.5})
    assert similarity(target(), past) == 1.0
    assert similarity(target(objective="branin"), past) == 0.0
    assert similarity(target(directions=["maximize"]), past) == 0.0


def test_similarity_falls_with_shifted_kwargs_another_version_and_less_overlap() -> None:
    past = memory_of("p", grid(abs), kwargs={"offset": 0.5})
    shifted = similarity(target(kwargs={"offset": 1.5}), past)
    assert 0.5 < shifted < 1.0
    assert similarity(target(version="2"), past) == 0.5
    assert similarity(target(version=None), past) == 0.8
    narrower = space(x={"type": "float", "low": 0.0, "high": 2.0})
    assert space_overlap(narrower, {"x": SPACE["x"]}) == pytest.approx(0.5)
    assert similarity(target(space=narrower), past) < similarity(target(), past)
    # The same data fingerprint makes the kwargs irrelevant.
    same_data = memory_of("q", grid(abs), kwargs={"offset": 9})
    assert similarity(target(fingerprint=same_data.fingerprint, kwargs={}), same_data) == 1.0


def test_sources_are_ranked_bounded_and_an_explicit_list_is_honoured() -> None:
    close = memory_of("close", grid(abs), kwargs={"offset": 0.5})
    far = memory_of("far", grid(abs), kwargs={"offset": 50.0})
    other = memory_of("other", grid(abs), objective="branin")
    old = memory_of("old", grid(abs), kwargs={"offset": 0.5}, version="0")
    ranked = rank_sources(target(), [far, other, old, close])
    assert [m.study for m, _ in ranked] == ["close", "far", "old"]
    assert [m.study for m, _ in rank_sources(target(), [far, close], max_sources=1)] == ["close"]
    assert [m.study for m, _ in rank_sources(target(), [far, close, other], ["far", "other"])] == [
        "far"
    ]


# --- memory ------------------------------------------------------------------------------


def test_ranks_follow_the_directions() -> None:
    obs = [Observed({}, [v]) for v in (3.0, 1.0, 2.0, 1.0)]
    assert ranks(obs, ["minimize"]) == [1.0, 0.0, 2 / 3, 0.0]
    assert ranks(obs, ["maximize"]) == [0.0, 2 / 3, 1 / 3, 2 / 3]


def test_a_memory_keeps_the_best_and_a_bounded_surface_and_round_trips() -> None:
    observed = grid(lambda x: (x - 0.5) ** 2, n=500)
    memory = memory_of("p", observed)
    assert len(memory.top) == TOP_K
    assert memory.top[0].params["x"] == pytest.approx(0.5, abs=0.01)
    assert len(memory.surface) == MAX_SURFACE
    assert min(rank for _, rank in memory.surface) == 0.0
    assert max(rank for _, rank in memory.surface) == 1.0
    assert memory.n_complete == 500
    assert load_memory(dump_memory(memory)) == memory
    assert load_memory(json.loads(dump_memory(memory))) == memory
    assert build_memory("p", "q", SPACE, ["minimize"], []) is None


def test_a_memory_is_bounded_in_size() -> None:
    wide = {f"p{i}": {"type": "categorical", "choices": [f"c{j}" * 20 for j in range(50)]}
            for i in range(40)}  # fmt: skip
    sp = space(**wide)
    observed = [
        Observed({f"p{i}": f"c{(i + k) % 50}" * 20 for i in range(40)}, [float(k)])
        for k in range(300)
    ]
    memory = build_memory("p", "q", sp, ["minimize"], observed)
    assert memory is not None
    assert len(dump_memory(memory)) <= MAX_MEMORY_BYTES
    assert 0 < len(memory.surface) < MAX_SURFACE


@pytest.mark.parametrize(
    "raw",
    [None, "not json", "[]", {"format": 99}, {"format": 1, "study": "x"}, 5],
)
def test_a_bad_record_in_storage_is_ignored(raw: Any) -> None:
    assert load_memory(raw) is None


# --- agreement ---------------------------------------------------------------------------


def test_nearest_neighbour_prediction() -> None:
    surface = [({"x": -1.0}, 0.0), ({"x": 1.0}, 1.0), ({"x": 1.5}, 0.5)]
    points = [{"x": -0.9}, {"x": 0.5}, {"x": 2.0}]
    assert predict_ranks(surface, points, SPACE, neighbours=1) == [0.0, 1.0, 0.5]
    # The default: the mean rank of the nearest few (here all three, then the nearest two).
    assert predict_ranks(surface, points, SPACE) == [0.5, 0.5, 0.5]
    assert predict_ranks(surface, points, SPACE, neighbours=2) == [0.5, 0.75, 0.75]


def test_a_past_surface_that_agrees_is_kept_one_that_disagrees_is_dropped() -> None:
    past = memory_of("p", grid(lambda x: (x - 0.5) ** 2))
    new_xs = [-1.9, -1.2, -0.6, 0.1, 0.4, 0.9, 1.3, 1.8, 1.95]
    similar = [({"x": x}, (x - 0.7) ** 2 + 0.1) for x in new_xs]
    verdict = agreement(past.surface, similar, SPACE)
    assert verdict.correlation is not None and verdict.correlation > 0.8
    assert not verdict.disagrees
    opposite = [({"x": x}, -((x - 0.5) ** 2)) for x in new_xs]
    verdict = agreement(past.surface, opposite, SPACE)
    assert verdict.disagrees and verdict.pairs == len(new_xs)
    # Too few pairs to judge: kept, whatever the correlation.
    assert not agreement(past.surface, opposite[:4], SPACE).disagrees
    # Maximising: the values are turned round before they are compared.
    assert not agreement(past.surface, opposite, SPACE, minimize=False).disagrees


def test_the_disagreement_bound_shrinks_with_the_number_of_pairs() -> None:
    assert critical(8) == pytest.approx(1.645 / 7**0.5)
    assert critical(8) > critical(17) > critical(48) > 0
    # What one-sided 5 % means: rho of independent orders falls below -critical(n) in about
    # 5 % of draws (Spearman's rho under no relation, by simulation).
    rng = np.random.default_rng(1)
    for n in (10, 30):
        draws = [spearman(list(rng.permutation(n)), list(range(n))) for _ in range(4000)]
        share = float(np.mean(np.asarray(draws) < -critical(n)))
        assert 0.02 < share < 0.08, (n, share)


def test_the_support_bound_lets_in_about_one_unrelated_source_in_five() -> None:
    assert support(9) == pytest.approx(0.84 / 8**0.5)
    rng = np.random.default_rng(2)
    for n in (8, 16):
        draws = [spearman(list(rng.permutation(n)), list(range(n))) for _ in range(4000)]
        share = float(np.mean(np.asarray(draws) >= support(n)))
        assert 0.14 < share < 0.26, (n, share)
    values = [float(i) for i in range(8)]
    weak = [values[i] for i in (0, 5, 3, 4, 6, 1, 7, 2)]  # rho 0.24 < support(8) 0.32
    verdict = judge(weak, values)
    assert verdict.correlation is not None and 0 < verdict.correlation < support(8)
    assert not verdict.doubtful and not verdict.supports


def test_near_zero_correlation_pauses_a_source_a_clear_one_drops_it() -> None:
    n = 12
    values = [float(i) for i in range(n)]
    # Slightly negative (noise, a related source's dip): doubtful, paused, not dropped.
    dip = values[:]
    dip[0], dip[1] = dip[1], dip[0]
    dip.reverse()
    near_zero = [values[i] for i in (11, 8, 6, 1, 0, 7, 2, 3, 10, 5, 4, 9)]  # rho -0.056
    verdict = judge(near_zero, values)
    assert verdict.correlation is not None and -critical(n) < verdict.correlation < 0
    assert verdict.doubtful and not verdict.disagrees
    # Clearly reversed: disagrees (and is doubtful too).
    verdict = judge(dip, values)
    assert verdict.disagrees and verdict.doubtful
    # Agreeing, or too few pairs: neither.
    assert judge(values, values) == Agreement(1.0, n, False, False, True)
    assert not judge(dip[:5], values[:5]).doubtful


# --- storage -----------------------------------------------------------------------------


def test_memories_enqueued_and_dropped_trials_in_an_optuna_storage() -> None:
    storage = optuna.storages.InMemoryStorage()
    old = optuna.create_study(storage=storage, study_name="old")
    new = optuna.create_study(storage=storage, study_name="new")
    write_memory(storage, "old", memory_of("old", grid(abs)))
    storage.set_study_user_attr(new._study_id, "hpod:memory", {"format": 1, "junk": True})
    assert [m.study for m in load_memories(storage, exclude="new")] == ["old"]
    assert load_memories(storage, exclude="old") == []
    assert old.user_attrs["hpod:memory"]["study"] == "old"

    configs = [Transferred({"x": 0.0}, "old", 0), Transferred({"x": 0.1}, "b", 0)]
    assert enqueue(new, configs) == configs
    assert enqueue(new, configs) == []  # a retried start adds nothing
    assert len(new.trials) == 2
    trial = new.ask()
    assert trial.params == {} and trial.suggest_float("x", -2, 2) == 0.0
    assert trial.user_attrs[TRANSFERRED_ATTR] == {"from": "old", "rank": 0}
    assert drop_waiting(new, "b", "disagrees") == [1]
    assert drop_waiting(new, "old", "disagrees") == []
    frozen = new.trials
    assert frozen[1].state == TrialState.FAIL and frozen[1].user_attrs[DROPPED_ATTR]
    assert [counts_in_budget(t) for t in frozen] == [True, False]
    new.enqueue_trial({"x": 1.0})
    assert not counts_in_budget(new.trials[2])  # waiting: counted when it is asked
