"""An objective whose cost is flat in its data fraction, registered by tests through
``HPOD_OBJECTIVES`` (a worker imports this module: it imports nothing of pytest's)."""

from __future__ import annotations

import time
from typing import Any


def flat_cost(ctx: Any) -> float:
    """Burn the same CPU (50 ms) whatever share of the data it is given, as a fit with a
    large fixed cost does: a data ladder can only cost more than the full data here."""
    start = time.process_time()
    while time.process_time() - start < 0.05:
        pass
    return (float(ctx.params["x"]) - 0.3) ** 2 + 0.01 * (1.0 - ctx.fidelity)


flat_cost.hpod_fidelity = "data"  # type: ignore[attr-defined]
