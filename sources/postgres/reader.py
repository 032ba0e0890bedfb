"""Reading and decoding the replication stream ahead of bytewax, on a thread of its own.

The bytewax worker thread runs the destinations too; when it also read and decoded the
stream, a slow destination write (DuckDB's apply and commit, Kafka's delivery wait, an S3
upload) was time nobody read the stream. :class:`StreamReader` owns the replication
connection and the :class:`~sources.postgres.batcher.Batcher`: it reads CopyData, answers
keepalives, builds ChangeBatches and hands them to the partition through a short bounded
queue. Destinations release the GIL while they wait on I/O or run native code, so the two
overlap.

What stays with the partition (sources/postgres.py): what has been *emitted* to bytewax,
snapshots, the confirm rule, the checkpoint store, the DDL gate. The reader only sends
the flush LSN the partition has set in :attr:`StreamReader.confirmed`; it never decides
what may be confirmed. Everything the reader built but the partition did not take is
dropped when the reader stops and read again from the partition's ``covered`` LSN.

Queue items, in stream order:
  ``("batch", ChangeBatch, covered)``: a batch; once it is emitted, every change below
  ``covered`` has been emitted.
  ``("covered", None, covered)``: nothing new to emit, but the stream moved on (a
  keepalive while idle, commits of unpublished tables).
  ``("error", exc, 0)``: the reader stopped on ``exc`` (``StreamClosed``: reconnect).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from sources.postgres.batcher import Batcher
from sources.postgres.pgoutput import decode_copy_data
from sources.postgres.replication import ReplicationStream
from wallaby.core.changes import ChangeBatch

log = logging.getLogger("wallaby.source")

# Batches built ahead of what bytewax has taken. Each holds up to batch_size changes (and
# at most MAX_BATCH_BYTES of messages), so this bounds the memory read ahead.
QUEUE_BATCHES = 2
# How long the reader waits on an idle socket before it looks at its flags again.
IDLE_WAIT = 0.005
# While the queue is full, how often the reader wakes, and at least how often it then sends a status
# update: it reads nothing meanwhile (so it sees no keepalive request), and the walsender ends a
# connection that has not answered for wal_sender_timeout (60s by default, settable per connection).
FULL_WAIT = 0.05
FULL_STATUS_EVERY = 0.5

Item = tuple[str, object, int]


class StreamReader(threading.Thread):
    def __init__(self, stream: ReplicationStream, batcher: Batcher, *, covered: int, confirmed: int,
                 status_interval: float, batch_timeout: float, stop_at_lsn: int | None, name: str):
        super().__init__(name=f"wallaby-reader:{name}", daemon=True)
        self.stream = stream
        self.batcher = batcher
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.covered = covered  # every change below this end LSN has been read and is held or handed over
        self.handed = covered  # the covered LSN of the last item put on the queue
        self.confirmed = confirmed  # set by the partition: the flush LSN to report
        self.received = covered  # server WAL end seen in keepalives
        self.status_interval = status_interval
        self.batch_timeout = batch_timeout
        self.stop_at_lsn = stop_at_lsn
        self.sent_confirmed = -1
        self.last_status = 0.0
        # last time the server sent WAL data (read by the partition; keepalives do not count: a checkpoint store in
        # the source's own cluster writes WAL every epoch, and its keepalives would keep an idle flow "active")
        self.last_activity = time.monotonic()
        self.first_held_at: float | None = None
        self._halt = threading.Event()

    # -- seen from the partition -------------------------------------------------------------
    @property
    def holding(self) -> bool:
        """Changes read but not yet handed over (an open transaction or a batch being filled)."""
        return bool(self.batcher.rows) or not self.queue.empty()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading; report the last confirmed LSN to the server; close the connection."""
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        if self.is_alive():
            log.warning("%s did not stop within %.0fs", self.name, timeout)

    # -- the thread ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self._pump()
            self._status_if_behind()
        except BaseException as exc:  # handed to the partition, raised there in stream order
            self._put(("error", exc, 0), final=True)
        finally:
            self.stream.close()

    def _put(self, item: Item, final: bool = False) -> bool:
        """Queue ``item``, keeping the connection alive while the partition is behind. False when stopped."""
        while True:
            if self._halt.is_set():
                return False
            try:
                self.queue.put(item, timeout=FULL_WAIT)
                return True
            except queue.Full:
                if not final and time.monotonic() - self.last_status >= min(self.status_interval, FULL_STATUS_EVERY):
                    self._send_status()

    def _send_status(self, reply: bool = False) -> None:
        confirmed = self.confirmed
        self.stream.send_status(self.received, confirmed, confirmed, reply)
        self.sent_confirmed = confirmed
        self.last_status = time.monotonic()

    def _status_if_behind(self) -> None:
        if self.confirmed > self.sent_confirmed:
            self._send_status()

    def _take(self) -> bool:
        batch = self.batcher.take()
        self.first_held_at = None
        if batch is None:
            return True
        # Every COMMIT seen so far is fully in this batch or before it (an open transaction is not).
        self.covered = max(self.covered, self.batcher.last_commit_end)
        self.handed = self.covered
        return self._put(("batch", batch, self.covered))

    def _pump(self) -> None:
        stream, batcher = self.stream, self.batcher
        now = time.monotonic()
        msgs = stream.read()
        if not msgs and not batcher.rows:
            self._status_if_behind()
            if stream.wait_readable(IDLE_WAIT):
                msgs = stream.read()
        reply = data = False
        for raw in msgs:
            kind = raw[0]
            if kind == 119:  # 'w' XLogData
                data = True
                batcher.feed(bytes(raw[25:]))
                if batcher.rows and self.first_held_at is None:
                    self.first_held_at = now
                if batcher.full() and not self._take():
                    return
            elif kind == 107:  # 'k' keepalive (rare: the shared framing decoder is fine here)
                ka = decode_copy_data(bytes(raw))
                end = ka.end_lsn
                if end > self.received:
                    self.received = end
                if ka.reply_requested:
                    reply = True
                # Idle: nothing open, nothing held, every commit handed over -> WAL up to here is covered.
                if not batcher.in_txn and not batcher.rows and end > self.covered:
                    self.covered = end
        if data:
            self.last_activity = now
        held_too_long = self.first_held_at is not None and now - self.first_held_at >= self.batch_timeout
        if batcher.rows and (held_too_long or not msgs) and (held_too_long or not batcher.in_txn):
            # Caught up with the stream (or batch_timeout passed): hand over what we hold.
            if not self._take():
                return
        if not batcher.in_txn and not batcher.rows:
            self.covered = max(self.covered, batcher.last_commit_end)
            if self.covered > self.handed:
                self.handed = self.covered
                if not self._put(("covered", None, self.covered)):
                    return
        stopping_soon = (self.stop_at_lsn is not None and not msgs and self.covered < self.stop_at_lsn
                         and now - self.last_status >= 0.05)
        if reply or stopping_soon or now - self.last_status >= self.status_interval:
            # Ask for a reply so an idle server tells us its WAL end: that lets the slot advance.
            self._send_status(reply=not reply)
        else:
            self._status_if_behind()


def drain(reader: StreamReader, limit: int, wait: float,
          on_batch: Callable[[ChangeBatch, int], None], on_covered: Callable[[int], None]) -> BaseException | None:
    """Take up to ``limit`` items from the reader's queue (waiting up to ``wait`` s for the first).

    Returns the reader's error, if it stopped on one."""
    q = reader.queue
    for i in range(limit):
        try:
            kind, obj, covered = q.get(timeout=wait) if i == 0 and wait > 0 else q.get_nowait()
        except queue.Empty:
            return None
        if kind == "batch":
            on_batch(obj, covered)  # type: ignore[arg-type]
        elif kind == "covered":
            on_covered(covered)
        else:
            return obj  # type: ignore[return-value]
    return None
