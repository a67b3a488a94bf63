"""Trials just told: the names of their final states and the events that announce them.

A told trial's event (``trial.completed``, ``trial.pruned``, ``trial.failed``) carries its
number, params, values, error and duration, and what its result added (docs/protocol.md).
The study's loop publishes them (`hpod.daemon.studies`), and so does
`hpod.daemon.results` for a trial told while no loop runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from hpod.engine import ERROR_ATTR

if TYPE_CHECKING:
    from hpod.daemon.bus import Bus
    from hpod.daemon.store import Outcome

#: Optuna's final states as hpod names them on the wire, in events and in metrics.
STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
}
#: The event that announces a trial told in each final state.
TRIAL_EVENTS = {
    TrialState.COMPLETE: "trial.completed",
    TrialState.PRUNED: "trial.pruned",
    TrialState.FAIL: "trial.failed",
}


async def publish_told(bus: Bus, study: str, result: Outcome, frozen: FrozenTrial) -> None:
    """Publish the event of a trial just told (its state as Optuna recorded it)."""
    await publish_told_many(bus, study, [(result, frozen)])


async def publish_told_many(bus: Bus, study: str, told: list[tuple[Outcome, FrozenTrial]]) -> None:
    """Publish the events of trials just told, in order, in one call to the bus."""
    await bus.events(
        [
            (
                TRIAL_EVENTS[frozen.state],
                study,
                {
                    "trial": result.number,
                    "params": frozen.params,
                    "values": frozen.values,
                    "error": result.error or frozen.user_attrs.get(ERROR_ATTR),
                    "duration": result.duration,
                    **result.extra,
                },
            )
            for result, frozen in told
        ]
    )
