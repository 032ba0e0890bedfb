"""One retry loop, and the delays it waits, for every destination that waits and asks again.

:func:`retry` calls, classifies what the call raised (``retryable``), waits the policy's delay for that retry
(never less than a ``retry_after`` the error carries: a server's Retry-After) and calls again, until the call
returns, an error is not retryable (raised at once), or the ``attempts`` or the ``deadline`` are used up (the
last error is raised). The sleep and the clock are injectable, so the loop is tested without waiting
(tests/test_retry.py). Its users: the HTTP and gRPC writers' request retries, DuckDB's wait for another
process's file lock, Kafka's wait for a new topic's metadata.

HTTP and gRPC retry each request inside ``write``, not the batch from outside: a batch is several requests, and
retrying the whole batch would resend the requests already delivered.

Policies (anything with ``delay(attempt, at_least)``): :class:`Backoff`, jittered exponential backoff for
destinations that deliver over the network; :class:`Steps`, a fixed or doubling wait without jitter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from wallaby.core import metrics
from wallaby.core.errors import TransientError

T = TypeVar("T")


class Policy(Protocol):
    def delay(self, attempt: int, at_least: float | None = None) -> float:
        """The wait before retry ``attempt`` (from 0), never below ``at_least``."""
        ...


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


class Steps:
    """Delay before retry ``n`` (from 0): ``min(cap, first * factor**n)``, no jitter (``factor`` 1: a fixed step)."""

    def __init__(self, first: float, factor: float = 1.0, cap: float = float("inf")):
        self.first, self.factor, self.cap = first, factor, cap

    def delay(self, attempt: int, at_least: float | None = None) -> float:
        d = min(self.cap, self.first * self.factor ** attempt)
        return max(d, at_least) if at_least is not None else d


def _transient(exc: Exception) -> bool:
    return isinstance(exc, TransientError)


def retry(call: Callable[[], T], *, policy: Policy, retryable: Callable[[Exception], bool] | None = None,
          attempts: int | None = None, deadline: float | None = None,
          on_retry: Callable[[Exception, int, float], None] | None = None,
          sleep: Callable[[float], None] | None = None, clock: Callable[[], float] | None = None) -> T:
    """``call()``'s result, calling again after a retryable error.

    - ``retryable(exc)``: whether ``exc`` may pass by asking again (default: a
      :class:`~wallaby.core.errors.TransientError`); any other error is raised at once.
    - ``policy.delay(n, exc.retry_after)``: the wait before retry ``n`` (from 0), at least the error's
      ``retry_after`` when it carries one.
    - ``attempts``: calls in all (retries + 1); ``deadline``: seconds from the first call within which every wait
      must end (a wait that would end later is not started). Either used up: the last error is raised.
    - ``on_retry(exc, n, delay)``: called before each wait (a log line).
    - ``sleep``, ``clock``: ``time.sleep`` and ``time.monotonic`` unless given.
    """
    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    is_retryable = retryable or _transient
    end = clock() + deadline if deadline is not None else None
    n = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_retryable(exc) or (attempts is not None and n + 1 >= attempts):
                raise
            delay = policy.delay(n, getattr(exc, "retry_after", None))
            if end is not None and clock() + delay > end:
                raise
            if on_retry is not None:
                on_retry(exc, n, delay)
            metrics.retried()  # wallaby_destination_retries_total of the destination calling
            sleep(delay)
            n += 1
