"""The fidelity each objective declares, known to the daemon before a study's first trial.

An objective declares ``hpod_fidelity`` ("data": it subsamples; "epochs" or any other value:
it reports by itself), so the strategy policy and the plan can use the mode's pruner and data
ladder from a study's first window instead of waiting for trials to show it (issue 13).

The daemon never imports objectives itself: that would load scikit-learn (or worse) into its
memory and run the operator's module code in its process. The attribute is read through the
objective registry in a short-lived child process (``python -m hpod.daemon.declared``), once
per objective for the daemon's lifetime, bounded in time. An objective the daemon cannot
resolve there (not installed on the daemon's host, an import that fails or hangs, an external
ask/tell study) has no declared fidelity; the strategy driver then infers it from the study's
told trials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:  # the probe imports this module: it stays light (no Optuna)
    from hpod.policies.strategy.actions import Fidelity

log = structlog.get_logger("hpod.declared")

#: A probe that takes longer than this is abandoned (the study infers its fidelity instead).
PROBE_TIMEOUT_SECONDS = 60.0
#: The probe's answer is a few bytes of JSON: anything longer is not its answer.
MAX_ANSWER_BYTES = 4096
#: `hpod.workers.evaluation.FIDELITY_ATTR`, spelt out: importing that module loads Optuna,
#: a second of the probe's start-up (a unit test checks they agree).
FIDELITY_ATTR = "hpod_fidelity"
#: `hpod.workers.evaluation.RESUMABLE_ATTR`, spelt out for the same reason.
RESUMABLE_ATTR = "hpod_resumable"


def as_fidelity(declared: str | None) -> Fidelity | None:
    """The strategy policy's fidelity for a declared value: "data" subsamples, any other
    declared value reports by itself ("epochs"), nothing declared is unknown (None)."""
    if declared is None:
        return None
    return "data" if declared == "data" else "epochs"


class DeclaredFidelities:
    """The declared fidelity of each objective, probed once per name and kept."""

    def __init__(self, configured: Mapping[str, str]) -> None:
        self.configured = dict(configured)
        self._probes: dict[str, asyncio.Task[Fidelity | None]] = {}
        #: Objectives that declare ``hpod_resumable`` (continuation), filled by the probes.
        self._resumable: set[str] = set()

    def prefetch(self, name: str) -> None:
        """Start probing `name` now, so its answer is ready when a study first needs it."""
        if name not in self._probes:
            self._probes[name] = asyncio.create_task(self._probe(name), name=f"declared:{name}")

    async def fidelity(self, name: str) -> Fidelity | None:
        """The fidelity objective `name` declares, or None if it declares none or cannot be
        resolved here. Never raises: a failed probe is logged and answers None."""
        self.prefetch(name)
        return await asyncio.shield(self._probes[name])

    async def resumable(self, name: str) -> bool:
        """Whether objective `name` declares ``hpod_resumable`` (False if it cannot be
        resolved here: its trials are then re-trained, never continued)."""
        await self.fidelity(name)
        return name in self._resumable

    async def close(self) -> None:
        """Stop the probes still running (their children are killed), at the daemon's stop."""
        running = [task for task in self._probes.values() if not task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _probe(self, name: str) -> Fidelity | None:
        request = json.dumps({"name": name, "configured": self.configured}).encode()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hpod.daemon.declared",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("objective.fidelity_unknown", objective=name, error=repr(exc))
            return None
        try:
            out, err = await asyncio.wait_for(proc.communicate(request), PROBE_TIMEOUT_SECONDS)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("objective.fidelity_unknown", objective=name, error="probe timed out")
            return None
        return self._answer(name, proc.returncode, out, err)

    def _answer(self, name: str, code: int | None, out: bytes, err: bytes) -> Fidelity | None:
        """The probe's answer, or None (logged) when it failed or said something else."""
        # The answer is the last line: an objective's module may print while it is imported.
        last = out[-MAX_ANSWER_BYTES:].strip().splitlines()[-1:] or [b""]
        try:
            answer: Any = json.loads(last[0]) if code == 0 else None
        except ValueError:
            answer = None
        declared = answer.get("fidelity") if isinstance(answer, dict) else None
        if code != 0 or not isinstance(answer, dict) or not isinstance(declared, str | None):
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {code}"]
            log.warning("objective.fidelity_unknown", objective=name, error=tail[0][:500])
            return None
        fidelity = as_fidelity(declared)
        if answer.get("resumable") is True:
            self._resumable.add(name)
        log.info(
            "objective.fidelity_declared",
            objective=name,
            fidelity=fidelity,
            resumable=name in self._resumable,
        )
        return fidelity


def main() -> None:
    """The probe: read {name, configured} as JSON on stdin, print {"fidelity": ...}."""
    from hpod.workers.registry import ObjectiveRegistry

    request = json.load(sys.stdin)
    registry = ObjectiveRegistry(request.get("configured") or {})
    fn = registry.get(str(request["name"]))
    declared = getattr(fn, FIDELITY_ATTR, None)
    resumable = getattr(fn, RESUMABLE_ATTR, False) is True
    print(
        json.dumps(
            {"fidelity": None if declared is None else str(declared), "resumable": resumable}
        )
    )


if __name__ == "__main__":
    main()
