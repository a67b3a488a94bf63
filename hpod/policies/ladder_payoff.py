"""Whether a study's data ladder pays, from the study's own trials (pure arithmetic).

A data ladder re-trains a trial from scratch at every rung it reaches: a trial stopped on the
first rung costs that rung; a trial that climbs to the full data costs every rung it ran plus
the full evaluation. With rungs r_0 < r_1 < … < r_{K-1} = 1 (fractions of the data), c_k the
CPU of a fit on r_k of the data relative to the same configuration's full evaluation
(c_{K-1} = 1), and p_k the share of trials reaching rung k (p_0 = 1), a trial costs on average

    E = sum_k p_k * c_k        full evaluations,

against exactly 1 for a study without the ladder (plain Optuna evaluates every trial once on
the full data). The ladder saves compute only while E < 1: that is the break-even.

Successive halving with reduction factor eta promotes the best 1/eta at each rung, so in the
ideal p_k = eta^-k. If a fit costs r^a (a the exponent of its cost in the rows), c_k = r_k^a,
and on the ladder 1/9, 1/3, 1 with eta = 3, E = 9^-a + 3^-a / 3 + 1/9:

    a = 0.3 (gradient boosting, low end)  E = 0.87
    a = 0.5                                E = 0.64
    a = 0.7                                E = 0.48
    a = 1.4 (svc_synthetic)                E = 0.23

The ideal is not what a study gets: Optuna's asynchronous successive halving promotes a trial
that is among the best max(1, n // eta) of the n trials seen so far at that rung, and a
sampler that improves makes late trials better than early ones, so 23-55 % of the trials
reached the full data where the ideal is 1/9 (issue 13). With a = 0.5 and 40 % reaching the
full data (60 % the middle rung) E = 0.33 + 0.6 * 0.58 + 0.4 = 1.08: the ladder costs more
than it replaces. So the verdict uses the *measured* p_k and the *measured* c_k (median over
the trials that ran both rung k and the full data, paired so a cheap configuration is
compared with itself), and turns the ladder off when E reaches `PAYS_BELOW` — below the
break-even of 1 by a margin, because a low fidelity also ranks some configurations wrongly
and a saving under a fifth is not worth that.

Never on too few trials:

- at least `min_ladder_trials` (eta^(K-1), and at least `MIN_LADDER_TRIALS`) trials that
  climbed the ladder: Optuna promotes the first trial at every rung unconditionally and
  promotes the best max(1, n // eta) of n, so until eta^(K-1) trials have run the bottom rung
  the top rung cannot have seen the pruner hold anybody back at its rate — the measured reach
  would be all ones, the ladder's worst case;
- at least `MIN_PAIRS` trials that ran both a rung and the full data, for each rung, not
  counting a pair whose rung cost more than `WARM_UP_RATIO` times the same trial's full fit:
  that measured a worker's warm-up (imports, data generation, caches), not the rung — each
  worker process pays one on its first fit, which is the first rung of its first trial (in
  the demo 1/9 of the data cost 7 times the full fit; with two workers two of the first three
  pairs were warm-ups, so a median of three alone does not do).

The decision is one-way: once off, no trial climbs the ladder any more, so the measurement
is frozen, and the daemon stores the verdict on the study so a restart keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from statistics import median
from typing import Any, Literal

#: The ladder is turned off once a trial is measured to cost at least this share of a full
#: evaluation (the break-even is 1; the margin pays for a low fidelity's ranking errors).
PAYS_BELOW = 0.8
#: Ladder trials before any verdict, whatever eta (see `min_ladder_trials`).
MIN_LADDER_TRIALS = 8
#: Trials that ran both a rung and the full data, per rung, before any verdict.
MIN_PAIRS = 3
#: A rung costing more than this many times its trial's full fit measured a warm-up.
WARM_UP_RATIO = 1.5

Verdict = Literal["measuring", "on", "off"]


@dataclass(frozen=True)
class LadderPayoff:
    """The measurement of a study's ladder and the verdict on it."""

    verdict: Verdict
    #: Trials that climbed the ladder (started on a rung below the full data).
    trials: int
    #: Measured cost of each rung relative to a full evaluation (median of paired ratios).
    rung_cost: dict[float, float] = field(default_factory=dict)
    #: Measured share of the ladder trials reaching each rung.
    reach: dict[float, float] = field(default_factory=dict)
    #: Expected cost of a trial in full evaluations (None while measuring).
    expected: float | None = None

    def reason(self) -> str:
        """One line for the status and the log: what a rung costs and what a trial costs."""
        if self.expected is None:
            return f"ladder measuring: {self.trials} ladder trial(s) so far"
        low = [f for f in sorted(self.rung_cost) if f < 1.0]
        costs = ", ".join(f"a {_frac(f)} rung costs {self.rung_cost[f]:.2f}" for f in low)
        reached = ", ".join(f"{self.reach.get(f, 0.0):.0%} reach {_frac(f)}" for f in low[1:])
        reached = (reached + ", " if reached else "") + f"{self.reach.get(1.0, 0.0):.0%} full"
        return (
            f"ladder {self.verdict}: {costs} of a full evaluation; {reached}; a trial costs "
            f"{self.expected:.2f} full evaluations (off at {PAYS_BELOW:.2f}; "
            f"{self.trials} ladder trials)"
        )

    def to_json(self) -> dict[str, Any]:
        """The verdict as stored on the study."""
        return {
            "verdict": self.verdict,
            "trials": self.trials,
            "expected": None if self.expected is None else round(self.expected, 4),
            "rung_cost": {str(f): round(c, 4) for f, c in self.rung_cost.items()},
            "reach": {str(f): round(p, 4) for f, p in self.reach.items()},
            "reason": self.reason(),
        }


def expected_cost(rung_cost: Mapping[float, float], reach: Mapping[float, float]) -> float:
    """E = sum_k p_k * c_k: a ladder trial's cost in full evaluations (a rung missing from
    `reach` is reached by nobody)."""
    return sum(reach.get(f, 0.0) * c for f, c in rung_cost.items())


def ideal_reach(ladder: Sequence[float], eta: float) -> dict[float, float]:
    """Successive halving's ideal share of trials reaching each rung: eta^-k."""
    return {float(f): float(eta) ** -k for k, f in enumerate(sorted(ladder))}


def power_law_costs(ladder: Sequence[float], exponent: float) -> dict[float, float]:
    """c_k = r_k^a: the rung costs of a fit whose CPU grows as its rows to the power a."""
    return {float(f): float(f) ** exponent for f in ladder}


def min_ladder_trials(ladder: Sequence[float], eta: float | None) -> int:
    """Ladder trials before a verdict: eta^(K-1) under successive halving (the bottom rung
    must have seen enough trials for the pruner to act at every rung above), at least
    `MIN_LADDER_TRIALS`."""
    if eta is None or eta <= 1 or len(ladder) < 2:
        return MIN_LADDER_TRIALS
    return max(MIN_LADDER_TRIALS, math.ceil(eta ** (len(ladder) - 1) - 1e-9))


def judge(
    rung_cost: Mapping[float, float],
    reach: Mapping[float, float],
    trials: int,
    pairs: Mapping[float, int],
    ladder: Sequence[float],
    eta: float | None,
) -> LadderPayoff:
    """The verdict from measured rung costs and reach (see the module docstring)."""
    low = [float(f) for f in ladder if f < 1.0]
    enough = trials >= min_ladder_trials(ladder, eta) and all(
        pairs.get(f, 0) >= MIN_PAIRS for f in low
    )
    if not low or not enough:
        return LadderPayoff("measuring", trials, dict(rung_cost), dict(reach))
    costs = {**{f: float(rung_cost[f]) for f in low}, 1.0: 1.0}
    expected = expected_cost(costs, reach)
    return LadderPayoff(
        "off" if expected >= PAYS_BELOW else "on", trials, costs, dict(reach), expected
    )


def measure(
    costs: Iterable[Mapping[str, Any]], ladder: Sequence[float], eta: float | None
) -> LadderPayoff:
    """The verdict from the study's stored cost records (``hpod:cost`` of finished trials).

    A ladder trial is one whose rungs start below the full data; cache hits cost nothing
    and are left out, as are rungs served from the cache and warm-ups (`WARM_UP_RATIO`)."""
    reached: dict[float, int] = {}
    ratios: dict[float, list[float]] = {}
    trials = 0
    for cost in costs:
        rungs = cost.get("rungs") or []
        if cost.get("cache") == "hit" or not rungs or float(rungs[0][0]) >= 1.0:
            continue
        trials += 1
        own = {float(r[0]): float(r[3]) for r in rungs if not r[2]}
        for r in rungs:
            reached[float(r[0])] = reached.get(float(r[0]), 0) + 1
        full = own.get(1.0)
        if full is not None and full > 0:
            for f, cpu in own.items():
                if f < 1.0 and cpu / full <= WARM_UP_RATIO:
                    ratios.setdefault(f, []).append(cpu / full)
    reach = {f: n / trials for f, n in reached.items()} if trials else {}
    rung_cost = {f: median(v) for f, v in ratios.items()}
    pairs = {f: len(v) for f, v in ratios.items()}
    return judge(rung_cost, reach, trials, pairs, ladder, eta)


def _frac(f: float) -> str:
    """1/9 for 0.111111."""
    q = Fraction(f).limit_denominator(100)
    return f"{q.numerator}/{q.denominator}"
