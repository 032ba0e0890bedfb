"""sinks.retry: the one retry loop (delays, limits, classification) without waiting; sinks.base.HighWater."""

from __future__ import annotations

import random

import pytest

from sinks.base import HighWater
from sinks.retry import Backoff, Steps, retry
from wallaby.core.changes import ZERO, ChangeBatch, Position
from wallaby.core.errors import PermanentSinkError, TransientSinkError
from wallaby.core.identity import PositionMismatchError, SourceCheck, SourceIdentity


class FakeTime:
    """An injected clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, error: Exception, result: str = "ok"):
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return result

    return call, calls


def test_full_jitter_delays_within_bounds_and_reproducible():
    t = FakeTime()
    call, calls = failing(5, TransientSinkError("d", "away"))
    assert retry(call, policy=Backoff(0.1, 2.0, 0.5, rng=random.Random(7)), attempts=6, sleep=t.sleep,
                 clock=t.clock) == "ok"
    assert len(calls) == 6 and len(t.sleeps) == 5
    for n, d in enumerate(t.sleeps):
        assert 0 <= d <= min(0.5, 0.1 * 2 ** n)
    rng = random.Random(7)  # the same seed draws the same waits
    assert t.sleeps == [rng.uniform(0, min(0.5, 0.1 * 2 ** n)) for n in range(5)]


def test_retry_after_is_a_floor():
    t = FakeTime()
    call, _ = failing(2, TransientSinkError("d", "throttled", retry_after=3.0))
    retry(call, policy=Backoff(0.01, 2.0, 0.05, rng=random.Random(1)), attempts=5, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [3.0, 3.0]
    t = FakeTime()  # a retry_after below the policy's delay does not shorten it
    call, _ = failing(1, TransientSinkError("d", "throttled", retry_after=0.1))
    retry(call, policy=Steps(1.0), sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [1.0]


def test_attempts_limit_reraises_the_last_error():
    t = FakeTime()
    errors = iter([TransientSinkError("d", f"try {i}") for i in range(10)])
    seen: list[tuple[int, float]] = []

    def call():
        raise next(errors)

    with pytest.raises(TransientSinkError, match="try 2"):
        retry(call, policy=Steps(0.5), attempts=3, sleep=t.sleep, clock=t.clock,
              on_retry=lambda exc, n, delay: seen.append((n, delay)))
    assert seen == [(0, 0.5), (1, 0.5)] and t.sleeps == [0.5, 0.5]


def test_deadline_starts_no_wait_that_would_end_past_it():
    t = FakeTime()
    call, calls = failing(100, TransientSinkError("d", "locked"))
    with pytest.raises(TransientSinkError):
        retry(call, policy=Steps(0.1, 2.0, 2.0), deadline=5.0, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [0.1, 0.2, 0.4, 0.8, 1.6]  # 3.1 s; a wait of 2 s more would end at 5.1 s
    assert len(calls) == 6
    t = FakeTime()  # a fixed step: asked again until more than 2 s have passed
    call, calls = failing(100, TransientSinkError("d", "no partitions"))
    with pytest.raises(TransientSinkError):
        retry(call, policy=Steps(0.5), deadline=2.0 + 0.5, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [0.5] * 5 and len(calls) == 6  # at 2.0 s: not past 2 s, so once more


def test_not_retryable_raised_at_once():
    t = FakeTime()
    call, calls = failing(3, PermanentSinkError("d", "refused"))
    with pytest.raises(PermanentSinkError):
        retry(call, policy=Steps(1.0), attempts=5, sleep=t.sleep, clock=t.clock)
    assert len(calls) == 1 and t.sleeps == []
    call, calls = failing(3, ValueError("other"))
    with pytest.raises(ValueError):
        retry(call, policy=Steps(1.0), attempts=5, sleep=t.sleep, clock=t.clock)
    assert len(calls) == 1
    call, calls = failing(2, KeyError("mine"))  # a classifier of one's own
    assert retry(call, policy=Steps(1.0), retryable=lambda e: isinstance(e, KeyError), sleep=t.sleep,
                 clock=t.clock) == "ok"
    assert len(calls) == 3 and t.sleeps == [1.0, 1.0]


def _batch(lsn: int, ordinal: int = 0) -> ChangeBatch:
    return ChangeBatch("f", [], Position(lsn, ordinal))


def test_high_water_skips_replays_and_advances():
    hw = HighWater(Position(10, 2))
    assert hw.replayed(_batch(10, 2)) and hw.replayed(_batch(9, 9)) and not hw.replayed(_batch(10, 3))
    assert not hw.pending
    hw.advance(Position(12))
    assert hw.taken == Position(12) and hw.stored == Position(10, 2) and hw.pending
    assert hw.replayed(_batch(11)) and hw.holds(Position(12)) and not hw.holds(Position(12, 1))
    hw.advance(Position(11))  # never moves back
    assert hw.taken == Position(12)
    assert hw.settle() == Position(12) and not hw.pending
    assert not HighWater().replayed(_batch(1))


def test_high_water_judged_against_the_source():
    ident = SourceIdentity("7001", 1, "db", "slot")
    source = SourceCheck("f", ident, wal_end=1000)
    assert HighWater.judged(None, "d", Position(50), None, "x").stored == Position(50)  # outside a flow
    assert HighWater.judged(source, "d", Position(50), ident, "x").taken == Position(50)  # this source's
    reset = SourceCheck("f", ident, wal_end=1000, reset=frozenset({"d"}))
    hw = HighWater.judged(reset, "d", Position(50), ident, "x")  # a reset of this destination discards it
    assert hw.stored == hw.taken == ZERO and not hw.replayed(_batch(10))
    other = SourceIdentity("7002", 1, "db", "slot")
    with pytest.raises(PositionMismatchError):
        HighWater.judged(source, "d", Position(50), other, "x")
