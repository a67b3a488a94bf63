"""Objectives that poison their worker, registered by tests through ``HPOD_OBJECTIVES``.

Kept out of the test modules: a worker imports this module, and it must import nothing of
pytest's.
"""

from __future__ import annotations

import os
from typing import Any


def exit_always(ctx: Any) -> float:
    """Kill the pool process running it, every time (as an OOM kill or a segfault would)."""
    os._exit(1)


def noisy(ctx: Any, *, line: str = "") -> float:
    """Print `line` on the worker's stdout (as an objective's own print would), then answer."""
    print(line, flush=True)
    return float(ctx.params.get("x", 0.0))
