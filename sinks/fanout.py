"""A flow's destinations: one bytewax output step each, with the flow's policies.

Each destination is a bytewax output step of its own (``destination_sinks``; the step is ``dest_<name>``), a
``FixedPartitionedSink`` with one part (one per slot in a flow of several, :mod:`wallaby.core.identity`
``part_name``): bytewax places the parts over its workers, and waits for every output's epoch before the source
may confirm it. Around each destination's writer, a :class:`DestinationWriter` records its metrics and carries:

- ``parallelism``: how many destinations write at the same time (a thread pool of the flow shared by its
  destinations: each destination's write runs there while bytewax hands the next destination its batch; one write
  in flight per destination, so each still sees batches in WAL order; ``commit()`` waits for its write first).
- ``config.ack_policy=all`` (default): the epoch ends, and so the slot may
  advance, only when every destination committed it; a destination that is
  down holds the slot.
- ``config.ack_policy=primary``: only ``primary_destination`` holds the slot; every
  other destination sits behind a durable local spool (:mod:`sinks.spool`) that
  a delivery thread drains, so a secondary that is down catches up when it
  returns, and loses nothing.

When the source hands over a batch with nothing more waiting (``ChangeBatch.caught_up``), the writer is asked to
``flush()`` after it: DuckDB and pgstream then commit what they hold with its high-water (and DuckDB lets go of
its file), so a quiet stream's changes show within a batch, not an epoch; under a backlog no batch is caught up
and epochs stay whole.

A part's resume state is its writer's state.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bytewax.outputs import FixedPartitionedSink

from sinks.base import PartedWriterSink, Writer, WriterSink
from sinks.spool import SpooledWriter, spool_root
from wallaby.core.changes import ChangeBatch
from wallaby.core.identity import SourceCheck, part_name
from wallaby.core.metrics import (
    DestinationCall,
    batch_size,
    change_bytes,
    changes,
    commit_duration,
    commit_span,
    destination_attributes,
    epoch_write,
)

log = logging.getLogger("wallaby.sinks.fanout")

MakeWriter = Callable[[Any], Writer]


class DestinationWriter(Writer):
    """One destination's writer in its output step: its metrics (changes, bytes, write and commit times, errors)
    and, with a ``pool`` (``parallelism`` > 1), its writes run there, one at a time."""

    def __init__(self, flow_id: str, name: str, writer: Writer, pool: ThreadPoolExecutor | None = None,
                 batch_size: int = 0):
        self.flow_id = flow_id
        self.name = name
        self.writer = writer
        self.pool = pool
        # the source option batch_size: the most changes a batch handed to a writer that does not take whole
        # batches holds (0: as they come)
        self.batch_size = 0 if getattr(writer, "WHOLE_BATCHES", False) else batch_size
        self.attrs = destination_attributes(flow_id, name)  # metric labels
        self.pending = (0, 0)  # changes and their Arrow bytes written since the last commit (metrics)
        self.write_time = 0.0  # seconds spent in write this epoch
        self._in_flight: Future | None = None

    def write(self, batch: ChangeBatch) -> None:
        self.write_many([batch])

    def write_many(self, batches: list[ChangeBatch]) -> None:
        for batch in batches:
            n, size = batch_size(batch)  # per batch, not per row
            self.pending = (self.pending[0] + n, self.pending[1] + size)
        if self.pool is None:
            self._write(batches)
            return
        self._wait()  # one write in flight: batches stay in order
        self._in_flight = self.pool.submit(self._write, batches)

    def _write(self, batches: list[ChangeBatch]) -> None:
        call = DestinationCall(self.attrs, "write")
        with call:
            for batch in batches:
                for piece in batch.split(self.batch_size):  # itself when within the size, or the size is 0
                    self.writer.write(piece)
        self.write_time += call.elapsed
        if batches and batches[-1].caught_up:  # the stream is quiet: show what the epoch holds so far
            with DestinationCall(self.attrs, "flush", commit_duration):
                self.writer.flush()

    def _wait(self) -> None:
        if self._in_flight is not None:
            f, self._in_flight = self._in_flight, None
            f.result()  # re-raises the write's failure

    def commit(self) -> Any:
        self._wait()
        n, size = self.pending
        self.pending = (0, 0)
        with commit_span(self.flow_id, n, self.name), DestinationCall(self.attrs, "commit", commit_duration):
            state = self.writer.commit()
        epoch_write.record(self.write_time, self.attrs)
        self.write_time = 0.0
        if n:
            changes.add(n, self.attrs)
            change_bytes.add(size, self.attrs)
        return state

    def close(self) -> None:
        try:
            if self._in_flight is not None:
                self._in_flight.cancel()
            self.writer.close()
        except Exception:
            log.exception("destination %s: close failed", self.name, extra={"flow": self.flow_id})


def step_ids(names: list[str]) -> dict[str, str]:
    """Destination name -> its output step's id (``dest_<name>``, what bytewax allows in a step id, made unique)."""
    out: dict[str, str] = {}
    for name in names:
        base = "dest_" + (re.sub(r"[^0-9A-Za-z_-]", "_", name) or "_")
        step, i = base, 1
        while step in out.values():
            i += 1
            step = f"{base}_{i}"
        out[name] = step
    return out


@dataclass
class FanoutPart:
    """The destinations of one slot of a flow of several (source option ``slots``): ``key`` the slot (what its
    items are keyed by), ``makers`` its writer factories (destination name -> factory, each keeping its state
    under :func:`~wallaby.core.identity.part_name`), ``source`` the slot as judged at start."""

    key: str
    index: int | None  # None: the flow has one slot
    makers: dict[str, MakeWriter]
    source: SourceCheck | None = None


def destination_sinks(flow_id: str, names: list[str], parts: list[FanoutPart], *, parallelism: int = 1,
                      primary: str | None = None, batch_size: int = 0) -> list[tuple[str, FixedPartitionedSink]]:
    """``(step id, sink)`` of each destination in ``names``: one part (a flow of one slot: ``parts`` holds one,
    its ``index`` None) or one part per slot, routed by the items' key. With ``primary``, the others are spooled;
    with ``parallelism`` > 1 the destinations' writes share a pool of that many threads. ``batch_size``: the
    most changes in a batch a writer gets, unless it takes whole batches (``Writer.WHOLE_BATCHES``)."""
    pool = ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="wallaby-dest") \
        if parallelism > 1 and len(names) > 1 else None
    steps = step_ids(names)
    out: list[tuple[str, FixedPartitionedSink]] = []
    for name in names:
        makes = [(part_name(name, p.index), _maker(flow_id, name, p, primary, pool, batch_size)) for p in parts]
        if len(parts) == 1 and parts[0].index is None:
            sink: FixedPartitionedSink = WriterSink(name, makes[0][1])
        else:
            sink = PartedWriterSink(makes, {p.key: i for i, p in enumerate(parts)})
        out.append((steps[name], sink))
    return out


def _maker(flow_id: str, name: str, part: FanoutPart, primary: str | None,
           pool: ThreadPoolExecutor | None, batch_size: int = 0) -> MakeWriter:
    maker = part.makers[name]

    def make(resume_state: Any) -> DestinationWriter:
        if primary is None or name == primary:
            inner: Writer = maker(resume_state)
        else:
            spooled = part_name(name, part.index)
            inner = SpooledWriter(spooled, flow_id, maker, spool_root() / flow_id / spooled, part.source)
        return DestinationWriter(flow_id, part_name(name, part.index), inner, pool, batch_size)

    return make
