"""Promotions: which paused trial continues next (asynchronous successive halving with
resumption).

A continued study (`hpod.policies.compose.continuation_applies`) runs each new trial to the
first rung of its steps (say a ninth of its epochs), where it pauses: its worker saves its
state (`hpod.checkpoints`) and is free again. At each rung the trials among the best
1/eta of all that reached it are promoted, best first: a task continues them from their
checkpoint to the next rung. This is ASHA's rule (Li et al., 2020), applied whenever a slot
frees up: promotions go before new trials, and a trial paused long ago is promoted as soon as
enough trials have reached its rung for it to be among the best 1/eta (freeze-thaw). At the
study's end, every trial never promoted is told pruned. (Telling the worst third of a rung
pruned at once, so that the sampler learns from them, was measured worse on both benchmark
tasks: docs/policies.md.)

This module only decides; the study loop (`hpod.daemon.studies`) dispatches, persists each
trial's record (`CONTINUATION_ATTR`, so a restart recovers the paused trials) and tells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: The trial user attribute holding a continued trial's record (see `Record`).
CONTINUATION_ATTR = "hpod:continuation"
#: Most paused tasks a record lists (a ladder has at most ten rungs; a rung may run twice).
MAX_HISTORY = 32


@dataclass
class Record:
    """What the study knows of one continued trial; persisted as JSON on the trial."""

    #: The rung (share of the steps) it paused at last; None before its first rung.
    at: float | None = None
    #: Its value there.
    value: float | None = None
    #: The rung a task is running it to now; None while paused (or not yet dispatched).
    to: float | None = None
    #: CPU seconds and shares of a full evaluation spent by its tasks so far.
    cpu: float = 0.0
    data: float = 0.0
    #: Its value at each rung it reached, by rung.
    values: dict[float, float] = field(default_factory=dict)
    #: Its paused tasks, oldest first: the rung each ran to, its worker, the step it
    #: resumed from (0: from scratch) and its CPU seconds (at most `MAX_HISTORY`).
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The record as stored on the trial."""
        return {
            "at": self.at,
            "value": self.value,
            "to": self.to,
            "cpu": round(self.cpu, 6),
            "data": round(self.data, 6),
            "values": {repr(k): v for k, v in self.values.items()},
            "history": self.history[-MAX_HISTORY:],
        }

    @classmethod
    def from_json(cls, raw: Any) -> Record | None:
        """A stored record; None if it is not one (nothing continued is then assumed)."""
        if not isinstance(raw, dict):
            return None
        try:
            values = {float(k): float(v) for k, v in dict(raw.get("values") or {}).items()}
            return cls(
                at=_optional_float(raw.get("at")),
                value=_optional_float(raw.get("value")),
                to=_optional_float(raw.get("to")),
                cpu=float(raw.get("cpu") or 0.0),
                data=float(raw.get("data") or 0.0),
                values=values,
                history=[h for h in list(raw.get("history") or []) if isinstance(h, dict)],
            )
        except (TypeError, ValueError):
            return None


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


class Promotions:
    """The continued trials of one study and the ASHA rule over them."""

    def __init__(self, ladder: tuple[float, ...], eta: int, maximize: bool = False) -> None:
        if len(ladder) < 2 or list(ladder) != sorted(set(ladder)) or ladder[-1] != 1.0:
            raise ValueError(f"a continuation ladder needs rungs up to 1.0, got {ladder}")
        if eta < 2:
            raise ValueError(f"eta must be at least 2, got {eta}")
        self.ladder = tuple(ladder)
        self.eta = eta
        self.maximize = maximize
        #: Every continued trial the study still runs or has paused, by number.
        self.records: dict[int, Record] = {}
        #: Values at each rung of every trial that reached it (told ones included), by rung.
        self.reached: dict[float, dict[int, float]] = {}
        #: Trials that finished the last rung.
        self.finished: set[int] = set()

    def set_ladder(self, ladder: tuple[float, ...], eta: int) -> None:
        """Follow a new plan's rungs (a mode switch): paused trials keep their values."""
        if len(ladder) >= 2 and ladder[-1] == 1.0:
            self.ladder, self.eta = tuple(ladder), max(2, eta)

    def first_rung(self) -> float:
        """The rung new trials run to."""
        return self.ladder[0]

    def next_rung(self, at: float) -> float:
        """The rung after `at` (a rung of an older ladder maps to the next one above it)."""
        return next((r for r in self.ladder if r > at + 1e-9), 1.0)

    def record(self, number: int) -> Record:
        """The trial's record (a new one for a trial not continued yet)."""
        return self.records.setdefault(number, Record())

    def load(self, number: int, record: Record, finished: bool) -> None:
        """A record read from storage at a restart; `finished`: the trial is told."""
        for rung, value in record.values.items():
            self.reached.setdefault(rung, {})[number] = value
        if finished:
            if record.values.get(1.0) is not None:
                self.finished.add(number)
            return
        self.records[number] = record

    def dispatched(self, number: int, to: float) -> None:
        """A task runs trial `number` to rung `to` now."""
        self.record(number).to = to

    def paused(
        self,
        number: int,
        at: float,
        value: float,
        cpu: float,
        data: float,
        task: dict[str, Any] | None = None,
    ) -> Record:
        """Trial `number` reached rung `at` with `value`, spending `cpu` and `data` more;
        `task` describes the task that took it there (its worker, the step it resumed from)."""
        record = self.record(number)
        record.at, record.value, record.to = at, value, None
        record.cpu += cpu
        record.data += data
        record.values[at] = value
        record.history = [*record.history, {"to": at, "cpu": round(cpu, 6), **(task or {})}][
            -MAX_HISTORY:
        ]
        self.reached.setdefault(at, {})[number] = value
        return record

    def told(self, number: int, value: float | None) -> Record | None:
        """Trial `number` is told (complete at the last rung, pruned or failed): forget it;
        its record, if it was continued."""
        record = self.records.pop(number, None)
        if value is not None and record is not None and math.isfinite(value):
            self.reached.setdefault(1.0, {})[number] = value
            self.finished.add(number)
        return record

    def is_paused(self, number: int) -> bool:
        """Whether trial `number` waits at a rung (no task running it)."""
        record = self.records.get(number)
        return record is not None and record.at is not None and record.to is None

    def paused_numbers(self) -> list[int]:
        """The trials waiting at a rung."""
        return [n for n in self.records if self.is_paused(n)]

    def next_promotion(self, final: bool = False) -> tuple[int, float] | None:
        """The paused trial to continue now and the rung it goes to, or None.

        Higher rungs first; at a rung, the best paused trial that is among the best
        ``len(reached) // eta`` of all that reached it. With `final` (no new trial will come)
        and no trial finished at the last rung yet, the best paused trial of the highest rung
        goes on even without a quorum, so a study always ends with a full-fidelity result.
        """
        for rung in sorted(self._paused_rungs(), reverse=True):
            everyone = self.reached.get(rung, {})
            quota = len(everyone) // self.eta
            best = self._ranked(everyone)[:quota]
            for number in best:
                if self.is_paused(number) and self.records[number].at == rung:
                    return number, self.next_rung(rung)
        if final and not self.finished:
            paused = self.paused_numbers()
            if paused:
                top = max(self.records[n].at or 0.0 for n in paused)
                at_top = {n: self.records[n].value for n in paused if self.records[n].at == top}
                number = self._ranked({n: v for n, v in at_top.items() if v is not None})[0]
                return number, self.next_rung(top)
        return None

    def _paused_rungs(self) -> set[float]:
        return {self.records[n].at for n in self.paused_numbers()}  # type: ignore[misc]

    def _ranked(self, values: dict[int, float]) -> list[int]:
        """Trial numbers best first (ties: the older trial first)."""
        sign = -1.0 if self.maximize else 1.0
        return sorted(values, key=lambda n: (sign * values[n], n))
