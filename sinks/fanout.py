"""All of a flow's destinations behind one bytewax sink: fan-out with the flow's policies.

- ``parallelism``: how many destinations write one batch at the same time
  (a thread pool; each destination still sees batches in WAL order).
- ``config.ack_policy=all`` (default): the epoch ends, and so the slot may
  advance, only when every destination committed it; a destination that is
  down holds the slot.
- ``config.ack_policy=primary``: only ``primary_destination`` holds the slot; every
  other destination sits behind a durable local spool (:mod:`sinks.spool`) that
  a delivery thread drains, so a secondary that is down catches up when it
  returns, and loses nothing.

The resume state is ``{destination name: its writer's state}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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


class FanoutWriter(Writer):
    def __init__(self, flow_id: str, writers: dict[str, Writer], parallelism: int = 1):
        self.flow_id = flow_id
        self.writers = writers
        self.pool = ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="wallaby-dest") \
            if parallelism > 1 and len(writers) > 1 else None
        self.attrs = {name: destination_attributes(flow_id, name) for name in writers}  # metric labels
        self.pending = (0, 0)  # changes and their Arrow bytes written since the last commit (metrics)
        self.write_time = dict.fromkeys(writers, 0.0)  # seconds each destination spent in write this epoch

    def _each(self, call: Callable[[str, Writer], Any]) -> dict[str, Any]:
        if self.pool is None:
            return {name: call(name, w) for name, w in self.writers.items()}
        futures = {name: self.pool.submit(call, name, w) for name, w in self.writers.items()}
        return {name: f.result() for name, f in futures.items()}  # re-raises the first failure

    def write(self, batch: ChangeBatch) -> None:
        n, size = batch_size(batch)  # per batch, not per row
        self.pending = (self.pending[0] + n, self.pending[1] + size)
        self._each(lambda name, w: self._write(name, w, batch))

    def _write(self, name: str, w: Writer, batch: ChangeBatch) -> None:
        call = DestinationCall(self.attrs[name], "write")
        with call:
            w.write(batch)
        self.write_time[name] += call.elapsed

    def commit(self) -> Any:
        n, size = self.pending
        self.pending = (0, 0)

        def commit_one(name: str, w: Writer) -> Any:
            attrs = self.attrs[name]
            with DestinationCall(attrs, "commit", commit_duration):
                state = w.commit()
            epoch_write.record(self.write_time[name], attrs)
            self.write_time[name] = 0.0
            if n:
                changes.add(n, attrs)
                change_bytes.add(size, attrs)
            return state

        with commit_span(self.flow_id, n):
            return self._each(commit_one)

    def close(self) -> None:
        for name, w in self.writers.items():
            try:
                w.close()
            except Exception:
                log.exception("destination %s: close failed", name, extra={"flow": self.flow_id})
        if self.pool is not None:
            self.pool.shutdown(wait=False)


def fanout_sink(flow_id: str, makers: dict[str, MakeWriter], *, parallelism: int = 1,
                primary: str | None = None, source: SourceCheck | None = None) -> WriterSink:
    """One sink for ``makers`` (destination name -> writer factory). With ``primary``, the others are spooled."""
    return WriterSink("destinations", _fanout_maker(flow_id, makers, parallelism, primary, source, None))


@dataclass
class FanoutPart:
    """The destinations of one slot of a flow of several (source option ``slots``): ``key`` the slot (what its
    items are keyed by), ``makers`` its writer factories (destination name -> factory, each keeping its state
    under :func:`~wallaby.core.identity.part_name`), ``source`` the slot as judged at start."""

    key: str
    index: int
    makers: dict[str, MakeWriter]
    source: SourceCheck | None = None


def parted_fanout_sink(flow_id: str, parts: list[FanoutPart], *, parallelism: int = 1,
                       primary: str | None = None) -> PartedWriterSink:
    """One sink part per slot, each a fan-out of its own writers (a spool of its own for each secondary): bytewax
    spreads the parts over its workers, and routes each slot's items to its part."""
    return PartedWriterSink(
        [(part_name("destinations", p.index), _fanout_maker(flow_id, p.makers, parallelism, primary, p.source,
                                                            p.index)) for p in parts],
        {p.key: i for i, p in enumerate(parts)})


def _fanout_maker(flow_id: str, makers: dict[str, MakeWriter], parallelism: int, primary: str | None,
                  source: SourceCheck | None, index: int | None) -> MakeWriter:
    def make(resume_state: Any) -> FanoutWriter:
        state = resume_state if isinstance(resume_state, dict) else {}
        writers: dict[str, Writer] = {}
        for name, maker in makers.items():
            if primary is None or name == primary:
                writers[name] = maker(state.get(name))
            else:
                part = part_name(name, index)
                writers[name] = SpooledWriter(part, flow_id, maker, spool_root() / flow_id / part, source)
        return FanoutWriter(flow_id, writers, parallelism)

    return make
