"""Exponential backoff with "equal jitter", bounded: retries spread out and never stop.

The switcher's reconnects and reports and the responder's outbound webhooks all wait this way, so
a flapping peer is neither hammered (at least half the ceiling) nor waited on forever (a cap).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def backoff_delay(failures: int, base: float, cap: float,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after `failures` failures in a row (1 = the first): doubling from `base`,
    at most `cap`, drawn from the upper half of that ceiling."""
    exponent = min(max(0, failures - 1), 60)  # bounded: 2**60 * base is past any cap
    ceiling = min(cap, base * 2 ** exponent)
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass
class Backoff:
    """`backoff_delay` with its count: `next()` after a failure, `reset()` after a success."""

    base: float = 0.5
    cap: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next(self) -> float:
        self.attempt += 1
        return backoff_delay(self.attempt, self.base, self.cap, self.rng)

    def reset(self) -> None:
        self.attempt = 0
