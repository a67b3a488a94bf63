"""Where a trial's time went: an honest split of dispatch → result into its parts.

A trial's life, in order: the daemon asks Optuna for it and runs the policies (*daemon*),
publishes its task, the task waits until a worker takes it (*queue wait*: no free worker, or
the broker's delivery to an idle one), inside a packed task the trial waits behind the
trials packed before it and, evaluated, for those packed after it, since a pack answers in
one message (*pack wait*), the objective runs (*evaluation*, the worker's own measure), the
result travels back, and the daemon tells Optuna and runs the policies again (*daemon*).
*Transport* is what remains of the dispatch → result interval once queue wait, pack wait and
evaluation are taken out: publishing, the broker both ways, the worker's own bookkeeping.

Only *daemon* and *transport* are hpod's cost. Queue and pack waits are time a trial spent
waiting for a worker, which more workers (or smaller packs) buy back; counting them as
overhead made a sequential study of 100 ms trials look like it paid 300 to 400 ms of hpod per
trial when it paid about 35 ms.

The split uses the worker's wall clock (``started_at``) against the daemon's
(``dispatched_at``) only for the queue wait; the pack wait compares worker clock readings
with each other. Clock skew between hosts shifts time between queue wait and transport, and
each part is clamped at zero, so the parts add up to the interval except under skew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: The parts of a trial's time, in the order the trial meets them.
PARTS = ("daemon", "queue_wait", "pack_wait", "evaluation", "transport")
#: The parts that are hpod's own cost (the rest is waiting for workers, or the objective).
OVERHEAD_PARTS = ("daemon", "transport")


@dataclass(frozen=True)
class TrialTimes:
    """What the daemon knows of one trial's timing when its result arrives."""

    number: int
    #: The daemon's ``time.time()`` when it dispatched the trial's task.
    dispatched_at: float
    #: The worker's ``time.time()`` when it started the trial (None: not reported).
    started_at: float | None
    #: The evaluation's wall time as the worker measured it (None: not reported).
    duration: float | None
    #: The daemon's own seconds on the trial so far (ask, policies, dispatch bookkeeping).
    daemon: float = 0.0


def split_task(trials: Sequence[TrialTimes], received_at: float) -> dict[int, dict[str, float]]:
    """The parts of each trial of one worker task whose results arrived at `received_at`.

    `trials` are the members of one task (one trial, or a pack) answered in one message.
    The task started when its first trial did (the worker starts a pack's first trial right
    away) and ended when its last trial ended; a trial's pack wait is the time of that span
    it did not spend in its own evaluation.
    """
    started = [t.started_at for t in trials if t.started_at is not None]
    ends = [t.started_at + (t.duration or 0.0) for t in trials if t.started_at is not None]
    task_start = min(started) if started else None
    task_end = max(ends) if ends else None
    return {t.number: _split_one(t, received_at, task_start, task_end) for t in trials}


def _split_one(
    t: TrialTimes, received_at: float, task_start: float | None, task_end: float | None
) -> dict[str, float]:
    """One trial's parts, given the span of the task it travelled in."""
    evaluation = max(0.0, t.duration or 0.0)
    queue = pack = 0.0
    if t.started_at is not None and task_start is not None and task_end is not None:
        queue = max(0.0, task_start - t.dispatched_at)
        own_end = t.started_at + evaluation
        pack = max(0.0, t.started_at - task_start) + max(0.0, task_end - own_end)
    interval = max(0.0, received_at - t.dispatched_at)
    transport = max(0.0, interval - queue - pack - evaluation)
    return {
        "daemon": max(0.0, t.daemon),
        "queue_wait": queue,
        "pack_wait": pack,
        "evaluation": evaluation,
        "transport": transport,
    }


def valid_parts(record: object) -> bool:
    """Whether `record` is a split as the daemon stores it: every part, a number >= 0."""
    return isinstance(record, dict) and all(
        type(record.get(p)) in (int, float) and record[p] >= 0 for p in PARTS
    )


def mean_parts(records: Sequence[dict[str, float]]) -> dict[str, float] | None:
    """The mean seconds of each part over `records` (None when there are none)."""
    if not records:
        return None
    return {p: sum(float(r.get(p) or 0.0) for r in records) / len(records) for p in PARTS}
