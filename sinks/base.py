"""The small base every destination builds on.

A destination implements :class:`Writer`: ``write(batch)`` takes a
:class:`~wallaby.core.changes.ChangeBatch` (it may apply it inside an open
transaction or buffer it), and ``commit()`` makes everything written so far
durable and returns the state to resume from; ``flush()``, called when the
source has caught up, may make it visible sooner (DuckDB, pgstream). bytewax calls ``commit()``
through the sink partition's ``snapshot()`` at the end of each epoch in which
the partition received data; the source confirms a position to Postgres only
after that (see docs/ARCHITECTURE.md, "When the slot may advance").

Every destination is a bytewax ``FixedPartitionedSink`` with one partition (one per slot of a flow of several):
bytewax waits for a stateful sink's epoch before the source may confirm, which
it does not do for a ``DynamicSink`` when recovery is on.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from wallaby.core.changes import ZERO, ChangeBatch, Position

# The sink errors belong to wallaby's one error taxonomy (wallaby.core.errors); destinations import them from here.
from wallaby.core.errors import PermanentSinkError as PermanentSinkError
from wallaby.core.errors import SchemaChangeError as SchemaChangeError
from wallaby.core.errors import SinkError as SinkError
from wallaby.core.errors import TransientSinkError as TransientSinkError
from wallaby.core.identity import DISCARD, SourceCheck, SourceIdentity
from wallaby.core.runtime import release_memory, tune_memory

log = logging.getLogger("wallaby.sinks")


class Writer(ABC):
    """One destination's writer. Constructed with its validated options and resume state."""

    name: str = ""
    # Whether the writer takes a stream's batch whole, whatever its size (a table engine buffers changes by table).
    # Otherwise the fanout (sinks/fanout.py) hands it the source's batches cut at the source option batch_size,
    # the most records a batch holds (a message, a request, a record of its own in each wire format).
    WHOLE_BATCHES: bool = False

    @abstractmethod
    def write(self, batch: ChangeBatch) -> None:
        """Take a batch. Need not be durable until :meth:`commit`."""

    def write_many(self, batches: list[ChangeBatch]) -> None:
        """Take several batches in order (what bytewax hands a sink at once)."""
        for batch in batches:
            self.write(batch)

    @abstractmethod
    def commit(self) -> Any:
        """Make every written batch durable; return the state to resume from (JSON-able)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """The source has caught up (the last batch written is ``caught_up``): a destination that can make what it
        holds durable and visible now, exactly once (its high-water stored with it) and cheaply enough to do it
        whenever the stream goes quiet, does so; the epoch's :meth:`commit` follows as always, and the source still
        confirms only after it. Default: nothing (what is written shows at the epoch's commit)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. May never be called (a crash)."""


class _WriterPartition(StatefulSinkPartition):
    def __init__(self, writer: Writer):
        self._writer = writer

    def write_batch(self, values: list[ChangeBatch]) -> None:
        self._writer.write_many(values)

    def snapshot(self) -> Any:
        state = self._writer.commit()
        release_memory()  # the epoch's buffers are freed: hand their pages back
        return state

    def close(self) -> None:
        self._writer.close()


class WriterSink(FixedPartitionedSink):
    """A bytewax sink around a :class:`Writer` factory. Items are ``(key, ChangeBatch)``."""

    def __init__(self, name: str, make_writer: Callable[[Any], Writer]):
        self._name = name
        self._make_writer = make_writer

    def list_parts(self) -> list[str]:
        return [self._name]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _WriterPartition:
        tune_memory()
        return _WriterPartition(self.new_writer(resume_state))

    def new_writer(self, resume_state: Any = None) -> Writer:
        """A writer outside a dataflow (the API server's IngestService applies batches with it)."""
        return self._make_writer(resume_state)


class PartedWriterSink(FixedPartitionedSink):
    """A bytewax sink of several parts, each a :class:`Writer` of its own (a flow of several slots: one part per
    slot, each slot's changes in their own order). ``parts``: the part names and writer factories, in order;
    ``route``: an item's key -> the index of its part."""

    def __init__(self, parts: list[tuple[str, Callable[[Any], Writer]]], route: dict[str, int]):
        self._parts = dict(parts)
        self._route = route

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def part_fn(self, item_key: str) -> int:
        return self._route[item_key]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _WriterPartition:
        tune_memory()
        return _WriterPartition(self._parts[for_part](resume_state))


def trusted_high_water(source: SourceCheck | None, name: str, stored: Position, identity: SourceIdentity | None,
                       where: str) -> Position:
    """The stored high-water a writer may skip at or below, judged against the flow's source
    (:meth:`wallaby.core.identity.SourceCheck.judge`): as stored, ``ZERO`` when a reset discards it; a high-water of
    another source raises :class:`~wallaby.core.identity.PositionMismatchError`. Without ``source`` (a writer built
    outside a flow) it is taken as stored."""
    if source is None or stored == ZERO:
        return stored
    return ZERO if source.judge(identity, stored.lsn, where, reset_as=name) == DISCARD else stored


class HighWater:
    """The replay contract of a positioned writer (DuckDB, S3, pgstream, the spool), written once.

    ``stored``: the high-water the destination holds durably, judged once against the flow's source
    (:meth:`judged`, through :func:`trusted_high_water`); ``taken``: the last position the writer has taken
    (written or buffered; durable once :meth:`settle` is called after a commit). A batch at or below ``taken`` is a
    replay: everything in it is already held, skip it (:meth:`replayed`); a batch's segments are judged alike
    (:meth:`holds`, ``seg.since(taken)``)."""

    __slots__ = ("stored", "taken")

    def __init__(self, stored: Position = ZERO):
        self.stored = stored
        self.taken = stored

    @classmethod
    def judged(cls, source: SourceCheck | None, name: str, stored: Position, identity: SourceIdentity | None,
               where: str) -> HighWater:
        """The high-water ``stored`` with ``identity`` in ``where``, as :func:`trusted_high_water` judges it."""
        return cls(trusted_high_water(source, name, stored, identity, where))

    def holds(self, position: Position) -> bool:
        """Whether the change at ``position`` is already taken."""
        return position <= self.taken

    def replayed(self, batch: ChangeBatch) -> bool:
        """Whether ``batch`` is a replay: every change in it is at or below the high-water. A backfill's batch
        (``batch.snapshot``) never is: its rows are outside the stream's order (idempotent in target mode)."""
        return not batch.snapshot and batch.position <= self.taken

    def advance(self, position: Position) -> None:
        """Everything up to ``position`` is taken (never moves back)."""
        if position > self.taken:
            self.taken = position

    @property
    def pending(self) -> bool:
        """Whether positions were taken past the stored high-water (a commit has something to store)."""
        return self.taken > self.stored

    def settle(self) -> Position:
        """What was taken is now stored durably; returns it."""
        self.stored = self.taken
        return self.stored


def source_json(source: SourceCheck | None) -> str | None:
    """The identity a writer stores beside its high-water (None: unknown)."""
    return source.current.to_json() if source is not None else None
