"""One back-off for every retry loop of hpod: reconnects, requeues, restarts of loops and workers.

Each loop that retries something keeps a `Backoff`: `next_delay()` gives how long to wait before
the next try (exponential, capped, with jitter so that many retries do not fall in step) and
`reset()` is called after a success that has lasted, so the next fault starts small again.
`exhausted` tells a loop with a bounded number of tries when to give up (dead-letter, mark
failed, exit). Written by hand: a retry *library* (tenacity, say) wraps one call, while these
loops need the state between tries (a consumer reconnecting, a supervisor restarting a child).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential back-off with full jitter, a cap and an optional limit of tries."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    #: None: retry forever (a broker that is down comes back); else give up after this many.
    max_tries: int | None = None
    jitter: float = 0.2
    tries: int = field(default=0, init=False)
    _rng: random.Random = field(default_factory=random.Random, init=False, repr=False)

    def next_delay(self) -> float:
        """The wait before the next try; counts the try."""
        base = min(self.maximum, self.initial * self.factor**self.tries)
        self.tries += 1
        spread = base * self.jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    @property
    def exhausted(self) -> bool:
        """True once `max_tries` tries have been made."""
        return self.max_tries is not None and self.tries >= self.max_tries

    def reset(self) -> None:
        """After a success: the next fault waits `initial` again."""
        self.tries = 0
