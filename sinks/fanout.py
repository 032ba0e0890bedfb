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
from typing import Any

from sinks.base import Writer, WriterSink
from sinks.spool import SpooledWriter, spool_root
from wallaby.core.changes import ChangeBatch
from wallaby.core.identity import SourceCheck
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

    def make(resume_state: Any) -> FanoutWriter:
        state = resume_state if isinstance(resume_state, dict) else {}
        writers: dict[str, Writer] = {}
        for name, maker in makers.items():
            if primary is None or name == primary:
                writers[name] = maker(state.get(name))
            else:
                writers[name] = SpooledWriter(name, flow_id, maker, spool_root() / flow_id / name, source)
        return FanoutWriter(flow_id, writers, parallelism)

    return WriterSink("destinations", make)
