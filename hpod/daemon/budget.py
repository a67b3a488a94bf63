"""What a study has spent of its budget: trials, seconds, CPU seconds, full evaluations.

A budget may be given in compute (`budget.cpu_seconds`, `budget.full_evaluations`) so that
pruned, partial and cached trials spend only what they cost. The definitions, one each
(docs/protocol.md, "Budgets in compute"):

- **CPU seconds** of a trial: the CPU its evaluation measured in the objective (the
  worker's ``hpod:cost``.cpu: every rung, pruned and partial ones included; a cache hit
  0). A failed trial reports no CPU: it spends its wall time from ask to failure, at most
  its time limit. A trial told from outside (ask/tell) spends nothing measured.
- **One full evaluation** costs the mean CPU seconds of the study's *complete* trials that
  evaluated the full fidelity themselves (``hpod:cost``.full_cpu; not a cache hit, not a
  trial pruned part-way). Full evaluations spent = CPU seconds spent / that mean. Until the
  first such trial is told, each trial counts the data fraction it evaluated instead
  (``hpod:cost``.data: 1/9 for a trial pruned after a ninth, 0 for a cache hit, 1 for a
  full evaluation) and a failed trial 1. A transferred trial dropped before it was asked
  (``hpod:transfer_dropped``) never ran and spends nothing.

A budget in CPU is a limit: each trial dispatched gets an allowance of it (`cpu_allowance`),
the allowances of the trials in flight never exceed what is left, a trial is dispatched only
if what is left covers one expected full evaluation, and the worker stops a trial at its
allowance (`hpod.workers.allowance`).

Everything is computed from the trials told, so the figures are the same after a restart
(the loop rebuilds them from storage) and a trial is counted once whoever tells it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from optuna.trial import FrozenTrial, TrialState

from hpod.engine import COST_ATTR
from hpod.schema import MAX_BUDGET_TRIALS, Budget
from hpod.transfer.store import was_dropped

#: The key of a task plan's CPU allowance (`cpu_allowance`; the worker's `TaskPlan`).
ALLOWANCE_KEY: Final = "cpu_allowance"

_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


@dataclass
class Spend:
    """The compute a study's told trials spent (see the module docstring)."""

    #: CPU seconds spent by the trials counted.
    cpu_seconds: float = 0.0
    #: Sum and count of full-evaluation CPU seconds (complete trials that evaluated it).
    full_cpu_sum: float = 0.0
    full_cpu_count: int = 0
    #: Full evaluations by the fallback rule, used until a full evaluation is measured.
    fallback_units: float = 0.0
    #: Trial numbers counted (a trial is counted once).
    counted: set[int] = field(default_factory=set)

    def add(
        self,
        number: int,
        state: str,
        cost: dict[str, Any] | None,
        wall_seconds: float | None,
        time_limit: float,
    ) -> bool:
        """Count trial `number`, told in `state` with its stored `cost`; False if it was
        counted already. `wall_seconds`: its time from ask to tell (for a failed trial,
        which measured no CPU); `time_limit`: its study's trial timeout."""
        if number in self.counted:
            return False
        self.counted.add(number)
        if cost:
            self.cpu_seconds += _finite(cost.get("cpu"))
            self.fallback_units += _finite(cost.get("data"))
            full = cost.get("full_cpu")
            if state == "complete" and cost.get("cache") != "hit" and full is not None:
                self.full_cpu_sum += _finite(full)
                self.full_cpu_count += 1
        elif state == "failed":
            self.cpu_seconds += min(max(_finite(wall_seconds), 0.0), time_limit)
            self.fallback_units += 1.0
        return True

    def add_trial(
        self, frozen: FrozenTrial, time_limit: float, cost: dict[str, Any] | None = None
    ) -> bool:
        """Count a finished trial as stored (its cost `hpod:cost` unless `cost` is given); a
        transferred trial dropped before it was asked never ran and spends nothing (it is
        stored as FAIL only because Optuna has no state for it: not 1 full evaluation)."""
        if was_dropped(frozen):
            return False
        wall = frozen.duration.total_seconds() if frozen.duration is not None else None
        if cost is None:
            cost = frozen.user_attrs.get(COST_ATTR)
        state = _STATES.get(frozen.state, "failed")
        return self.add(frozen.number, state, cost, wall, time_limit)

    @classmethod
    def of_trials(cls, trials: list[FrozenTrial], time_limit: float) -> Spend:
        """The spend of a study's stored trials (its finished ones)."""
        spend = cls()
        for frozen in trials:
            if frozen.state.is_finished():
                spend.add_trial(frozen, time_limit)
        return spend

    @property
    def full_evaluation_cpu(self) -> float | None:
        """CPU seconds of one full evaluation (mean of those measured), None until one is."""
        if not self.full_cpu_count:
            return None
        mean = self.full_cpu_sum / self.full_cpu_count
        return mean if mean > 0 else None

    @property
    def full_evaluations(self) -> float:
        """Full-evaluation equivalents spent."""
        unit = self.full_evaluation_cpu
        return self.cpu_seconds / unit if unit is not None else self.fallback_units

    def report(self) -> dict[str, Any]:
        """The compute spent, as the study's status shows it (`spent`)."""
        unit = self.full_evaluation_cpu
        return {
            "cpu_seconds": round(self.cpu_seconds, 4),
            "full_evaluations": round(self.full_evaluations, 4),
            "full_evaluation_cpu_seconds": None if unit is None else round(unit, 4),
        }


def cpu_limit(budget: Budget, spend: Spend) -> float | None:
    """The study's compute limit in CPU seconds: `budget.cpu_seconds`, and
    `budget.full_evaluations` times the measured CPU of one full evaluation once one is
    measured (the tighter of the two); None when neither applies."""
    limits: list[float] = []
    if budget.cpu_seconds is not None:
        limits.append(budget.cpu_seconds)
    unit = spend.full_evaluation_cpu
    if budget.full_evaluations is not None and unit is not None:
        limits.append(budget.full_evaluations * unit)
    return min(limits) if limits else None


def cpu_allowance(
    budget: Budget, spend: Spend, allocated: float = 0.0, free_slots: int = 1
) -> float | None:
    """The CPU seconds the next trial dispatched may spend (its worker prunes it there),
    0.0 when none may be dispatched, None when the budget has no compute limit in CPU.

    The budget's CPU not yet spent by told trials nor `allocated` to trials in flight is
    *unallocated*. A trial is dispatched only if the unallocated CPU covers the study's
    expected cost of one full evaluation (the mean measured `full_cpu`; any positive
    amount while none is measured): a trial that cannot finish inside the budget would only
    be cut short. It gets an even share of the unallocated CPU among the `free_slots`, at
    least two expected full evaluations, at most all of it. Allowances never add up to more
    than the budget, so a study's spend exceeds it by at most what each trial runs past
    its own allowance before its worker stops it (docs/protocol.md, "Budgets in compute").
    """
    limit = cpu_limit(budget, spend)
    if limit is None:
        return None
    unallocated = limit - spend.cpu_seconds - allocated
    expected = spend.full_evaluation_cpu
    if unallocated <= 0 or (expected is not None and unallocated < expected):
        return 0.0
    share = unallocated / max(1, free_slots)
    if expected is not None:
        share = max(share, 2 * expected)
    return min(unallocated, share)


def budget_left(
    budget: Budget,
    created: int,
    elapsed: float,
    spend: Spend,
    in_flight: int = 0,
    allocated: float = 0.0,
) -> bool:
    """Whether a study may ask another trial under `budget`: none of its limits is spent.

    `created`: trials created; `elapsed`: wall seconds since the study was created. In CPU
    (`cpu_limit`), `allocated` is the CPU the trials in flight may still spend (their
    allowances): another trial is asked only if `cpu_allowance` leaves it some. In full
    evaluations before one is measured (the fallback rule), the `in_flight` trials are
    reserved at the mean spend of the trials counted so far. A study ends when any limit is
    spent; trials in flight then are still told.
    """
    if created >= (budget.trials if budget.trials is not None else MAX_BUDGET_TRIALS):
        # Without a trial limit, the largest one still bounds a study: a budget in compute
        # alone would never end if every trial were a cache hit (spending 0).
        return False
    if budget.seconds is not None and elapsed >= budget.seconds:
        return False
    allowance = cpu_allowance(budget, spend, allocated)
    if allowance is not None and allowance <= 0:
        return False
    n = len(spend.counted)
    if budget.full_evaluations is not None and spend.full_evaluation_cpu is None:
        spent = spend.full_evaluations
        reserved = in_flight * spent / n if n else 0.0
        if spent + reserved >= budget.full_evaluations:
            return False
    return True


def budget_used(budget: Budget, created: int, elapsed: float, spend: Spend) -> float:
    """The share of `budget` spent, by the tightest of its limits (0 to 1)."""
    shares = [0.0]
    if budget.trials:
        shares.append(created / budget.trials)
    if budget.seconds:
        shares.append(elapsed / budget.seconds)
    if budget.cpu_seconds:
        shares.append(spend.cpu_seconds / budget.cpu_seconds)
    if budget.full_evaluations:
        shares.append(spend.full_evaluations / budget.full_evaluations)
    return min(1.0, max(shares))


def trials_affordable(budget: Budget, spend: Spend, in_flight: int = 0) -> int | None:
    """How many more trials the compute limits leave room for at the mean spend per trial
    so far (at least 1; None when there is no compute limit or nothing is told yet): the
    batching policy packs no more than that into one task."""
    n = len(spend.counted)
    if not n:
        return None
    room: list[float] = []
    if budget.cpu_seconds is not None and spend.cpu_seconds > 0:
        mean = spend.cpu_seconds / n
        room.append((budget.cpu_seconds - spend.cpu_seconds) / mean - in_flight)
    if budget.full_evaluations is not None and spend.full_evaluations > 0:
        spent = spend.full_evaluations
        room.append((budget.full_evaluations - spent) / (spent / n) - in_flight)
    if not room:
        return None
    return max(1, math.ceil(min(room)))


def _finite(value: Any) -> float:
    """A stored number as a finite float (0 for anything else: stored costs were validated
    on their way in, this only keeps a hand-edited storage from poisoning the sums)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) else 0.0
