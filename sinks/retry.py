"""Jittered exponential backoff for destinations that deliver over the network (HTTP, gRPC)."""

from __future__ import annotations

import random
import time


class Backoff:
    """Delay before retry ``n`` (from 0): uniform in [0, min(cap, base * factor**n)] ("full jitter")."""

    def __init__(self, base: float, factor: float, cap: float, rng: random.Random | None = None):
        self.base, self.factor, self.cap = base, factor, cap
        self.rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * self.factor ** attempt)

    def delay(self, attempt: int, at_least: float | None = None) -> float:
        """The delay for ``attempt``; never below ``at_least`` (a server's Retry-After)."""
        d = self.rng.uniform(0, self.ceiling(attempt))
        return max(d, at_least) if at_least is not None else d

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
