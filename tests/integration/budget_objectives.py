"""Objectives whose trials cost far more than a small compute budget, registered by tests
through ``HPOD_OBJECTIVES`` (a worker imports this module: it imports nothing of pytest's)."""

from __future__ import annotations

import time
from typing import Any

#: CPU seconds of one step (one report interval of `burn_reporting`).
STEP_CPU = 0.05
#: Steps of a full evaluation: 2 CPU seconds in all.
STEPS = 40


def _burn(seconds: float) -> None:
    started = time.process_time()
    while time.process_time() - started < seconds:
        pass


def burn_reporting(ctx: Any) -> float:
    """2 CPU seconds in 40 steps, reporting after each and asking whether to stop."""
    x = float(ctx.params["x"])
    for step in range(1, STEPS + 1):
        _burn(STEP_CPU)
        ctx.report((x - 0.3) ** 2 + 1.0 / step, step)
        if ctx.should_prune():
            from hpod.workers.context import TrialPruned

            raise TrialPruned(f"pruned at step {step}")
    return (x - 0.3) ** 2


burn_reporting.hpod_fidelity = "epochs"  # type: ignore[attr-defined]


def burn_silent(ctx: Any) -> float:
    """The same 2 CPU seconds, never reporting."""
    _burn(STEP_CPU * STEPS)
    return (float(ctx.params["x"]) - 0.3) ** 2


def burn_in_c(ctx: Any) -> float:
    """About 4 CPU seconds in one call into C (PBKDF2 in OpenSSL), which no Python signal
    handler interrupts: only ending its process stops it."""
    import hashlib

    started = time.process_time()
    hashlib.pbkdf2_hmac("sha256", b"hpod", b"budget", 20_000)
    per_round = max(time.process_time() - started, 1e-4) / 20_000
    hashlib.pbkdf2_hmac("sha256", b"hpod", b"budget", int(4.0 / per_round))
    return (float(ctx.params["x"]) - 0.3) ** 2
