"""The small base every destination builds on.

A destination implements :class:`Writer`: ``write(batch)`` takes a
:class:`~wallaby.changes.ChangeBatch` (it may apply it inside an open
transaction or buffer it), and ``commit()`` makes everything written so far
durable and returns the state to resume from. bytewax calls ``commit()``
through the sink partition's ``snapshot()`` at the end of each epoch in which
the partition received data; the source confirms a position to Postgres only
after that (see docs/ARCHITECTURE.md, "When the slot may advance").

Every destination is a bytewax ``FixedPartitionedSink`` with one partition:
bytewax waits for a stateful sink's epoch before the source may confirm, which
it does not do for a ``DynamicSink`` when recovery is on.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from wallaby.changes import ChangeBatch
from wallaby.runtime import release_memory, tune_memory

log = logging.getLogger("wallaby.sinks")


class SinkError(Exception):
    """A destination failed. ``destination`` names it; messages never carry secrets."""

    def __init__(self, destination: str, message: str):
        super().__init__(f"destination {destination!r}: {message}")
        self.destination = destination


class TransientSinkError(SinkError):
    """Worth retrying (server away, timeout, throttled). ``retry_after`` seconds if known."""

    def __init__(self, destination: str, message: str, retry_after: float | None = None):
        super().__init__(destination, message)
        self.retry_after = retry_after


class PermanentSinkError(SinkError):
    """Retrying cannot help (bad credentials, incompatible schema, rejected payload)."""


class Writer(ABC):
    """One destination's writer. Constructed with its validated options and resume state."""

    name: str = ""

    @abstractmethod
    def write(self, batch: ChangeBatch) -> None:
        """Take a batch. Need not be durable until :meth:`commit`."""

    @abstractmethod
    def commit(self) -> Any:
        """Make every written batch durable; return the state to resume from (JSON-able)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. May never be called (a crash)."""


class _WriterPartition(StatefulSinkPartition):
    def __init__(self, writer: Writer):
        self._writer = writer

    def write_batch(self, values: list[ChangeBatch]) -> None:
        for batch in values:
            self._writer.write(batch)

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
