"""Objectives that poison their worker, registered by tests through ``HPOD_OBJECTIVES``.

Kept out of the test modules: a worker imports this module, and it must import nothing of
pytest's.
"""

from __future__ import annotations

import os
import signal
from typing import Any


def exit_always(ctx: Any) -> float:
    """End the pool process running it, every time (as a crashing extension would)."""
    os._exit(1)


def killed_always(ctx: Any) -> float:
    """SIGKILL the pool process running it, every time: what the kernel's OOM killer does to
    a process that exceeds the memory it may use."""
    os.kill(os.getpid(), signal.SIGKILL)
    return 0.0


def noisy(ctx: Any, *, line: str = "") -> float:
    """Print `line` on the worker's stdout (as an objective's own print would), then answer."""
    print(line, flush=True)
    return float(ctx.params.get("x", 0.0))
