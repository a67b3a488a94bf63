"""The data ladder's arithmetic and verdict (`hpod.policies.ladder_payoff`), on the measured
cost exponents of issue 13 and on the rung costs of a real `hpod demo` study (gradient
boosting, the demo's objective then)."""

from __future__ import annotations

from typing import Any

import pytest

from hpod.policies.ladder_payoff import (
    PAYS_BELOW,
    expected_cost,
    ideal_reach,
    judge,
    measure,
    min_ladder_trials,
    power_law_costs,
)

LADDER = (0.111111, 0.333333, 1.0)


@pytest.mark.parametrize(
    ("exponent", "expected"),
    # E = 9^-a + 3^-a / 3 + 1/9 under ideal successive halving (eta = 3).
    [(0.3, 0.8683), (0.5, 0.6369), (0.7, 0.4800), (1.4, 0.2288)],
)
def test_ideal_halving_cost_of_a_ladder_for_the_measured_exponents(
    exponent: float, expected: float
) -> None:
    """Gradient boosting (a = 0.3-0.7) and svc_synthetic (a = 1.4) on 1/9, 1/3, 1."""
    cost = expected_cost(power_law_costs(LADDER, exponent), ideal_reach(LADDER, 3))
    assert cost == pytest.approx(expected, abs=5e-4)


def test_ideal_reach_is_eta_to_the_minus_k() -> None:
    assert ideal_reach(LADDER, 3) == pytest.approx({0.111111: 1.0, 0.333333: 1 / 3, 1.0: 1 / 9})


@pytest.mark.parametrize(
    ("exponent", "verdict"),
    # 60 % of the trials reach 1/3 and 40 % the full data (issue 13: 23-55 % reached it).
    [(0.3, "off"), (0.5, "off"), (0.7, "off"), (1.4, "on")],
)
def test_at_the_reach_asynchronous_halving_gives_only_svc_synthetic_pays(
    exponent: float, verdict: str
) -> None:
    """E = c_0 + 0.6 c_1 + 0.4: 1.36 / 1.08 / 0.86 for a = 0.3 / 0.5 / 0.7, 0.58 for 1.4."""
    reach = {0.111111: 1.0, 0.333333: 0.6, 1.0: 0.4}
    costs = power_law_costs(LADDER, exponent)
    payoff = judge(costs, reach, 20, {0.111111: 3, 0.333333: 3}, LADDER, 3)
    assert payoff.verdict == verdict
    assert payoff.expected == pytest.approx(expected_cost(costs, reach))
    assert (payoff.expected is not None and payoff.expected >= PAYS_BELOW) == (verdict == "off")


def test_a_ladder_without_pruning_never_pays() -> None:
    """Every trial climbs every rung: E = 1 + sum of the lower rungs' costs > 1."""
    costs = power_law_costs(LADDER, 1.4)
    reach = dict.fromkeys(LADDER, 1.0)
    payoff = judge(costs, reach, 8, {0.111111: 3, 0.333333: 3}, LADDER, None)
    assert payoff.verdict == "off" and payoff.expected is not None and payoff.expected > 1


def test_no_verdict_on_too_few_trials() -> None:
    """eta^(K-1) = 9 ladder trials under halving by 3 over three rungs (at least 8), and three
    trials that ran each rung and the full data."""
    assert min_ladder_trials(LADDER, 3) == 9
    assert min_ladder_trials(LADDER, 4) == 16
    assert min_ladder_trials((0.25, 1.0), 2) == 8
    assert min_ladder_trials(LADDER, None) == 8
    flat = dict.fromkeys(LADDER, 1.0)
    pairs = {0.111111: 3, 0.333333: 3}
    assert judge(flat, flat, 8, pairs, LADDER, 3).verdict == "measuring"
    assert judge(flat, flat, 9, pairs, LADDER, 3).verdict == "off"
    few = {0.111111: 3, 0.333333: 2}
    assert judge(flat, flat, 30, few, LADDER, 3).verdict == "measuring"


def record(*cpus: float, cached: bool = False) -> dict[str, Any]:
    """A cost record of a trial that ran the rungs of `LADDER` with these CPU seconds."""
    return {"rungs": [[f, 0.5, cached, cpu] for f, cpu in zip(LADDER, cpus, strict=False)]}


#: The first 14 trials of one `hpod demo` (gradient boosting, balanced, commit f3423de): CPU
#: seconds of each rung reached. The first trial paid the cold start on its 1/9 rung.
DEMO = [
    (1.273, 0.159, 0.181),
    (1.249,),
    (0.053,),
    (0.055, 0.085, 0.104),
    (0.259,),
    (0.072,),
    (0.055,),
    (0.078, 0.231),
    (0.065, 0.113),
    (0.085,),
    (0.189,),
    (0.258,),
    (0.033,),
    (0.056, 0.095, 0.103),
]


def test_the_demo_study_measures_a_ladder_that_costs_more_than_it_saves() -> None:
    """The first trial's 1/9 rung (7.0 times its full fit) is a warm-up and not measured, so
    after 14 trials 1/9 has two pairs: no verdict. One more trial that climbed (constructed:
    0.050, 0.080, 0.100 s) gives it. Paired medians: 1/9 costs 0.53 of the same trial's full
    fit, 1/3 costs 0.85 (median of four); 6 of 15 trials reached 1/3 and 4 the full data:
    E = 0.529 + 6/15 * 0.848 + 4/15 = 1.135."""
    assert measure([record(*cpus) for cpus in DEMO], LADDER, 3).verdict == "measuring"
    payoff = measure([record(*cpus) for cpus in [*DEMO, (0.050, 0.080, 0.100)]], LADDER, 3)
    assert payoff.rung_cost[0.111111] == pytest.approx(0.055 / 0.104, abs=1e-3)
    assert payoff.rung_cost[0.333333] == pytest.approx((0.085 / 0.104 + 0.159 / 0.181) / 2)
    assert payoff.reach == pytest.approx({0.111111: 1.0, 0.333333: 6 / 15, 1.0: 4 / 15})
    assert payoff.expected == pytest.approx(1.135, abs=1e-3)
    assert payoff.verdict == "off"
    assert payoff.reason().startswith("ladder off: a 1/9 rung costs 0.53, a 1/3 rung costs 0.85")


def test_a_warm_up_is_not_a_rung_measurement() -> None:
    """Two workers, each paying a 1 s warm-up on its first fit (a 1/9 rung), as a live study
    of svc_synthetic did: without the rule the median of the first three pairs is a warm-up
    (2.4) and a ladder that pays (c_0 = 0.07) was turned off."""
    costs = [record(1.018, 0.063, 0.339), record(1.056, 0.074, 0.44), record(0.013, 0.035, 0.218)]
    costs += [record(0.015) for _ in range(6)]
    assert measure(costs, LADDER, 3).verdict == "measuring"  # one pair of 1/9 left
    costs += [record(0.012, 0.039, 0.157), record(0.014, 0.04, 0.2)]
    payoff = measure(costs, LADDER, 3)
    assert payoff.rung_cost[0.111111] == pytest.approx(0.07, abs=0.01)
    # 5 of 11 reached 1/3 and the full data: E = 0.07 + 5/11 * 0.186 + 5/11 = 0.61.
    assert payoff.verdict == "on" and payoff.expected == pytest.approx(0.609, abs=1e-3)


def test_cache_hits_and_cached_rungs_are_not_measured() -> None:
    """A cache hit cost nothing; a rung served from the cache has no CPU of its own."""
    costs = [record(0.1, 0.3, 1.0) for _ in range(9)]
    costs += [{"cache": "hit", "rungs": []}, record(0.9, 0.9, 1.0, cached=True)]
    payoff = measure(costs, LADDER, 3)
    assert payoff.trials == 10
    assert payoff.rung_cost[0.111111] == pytest.approx(0.1)
    assert payoff.verdict == "off"  # every trial climbed: 0.1 + 0.3 + 1 = 1.4


def test_full_data_trials_are_not_ladder_trials() -> None:
    """Trials told after the ladder went off ran on the full data only: not measured."""
    payoff = measure([{"rungs": [[1.0, 0.5, False, 1.0]]}] * 20, LADDER, 3)
    assert payoff.trials == 0 and payoff.verdict == "measuring"
