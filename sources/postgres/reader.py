"""Reading and decoding the replication stream ahead of bytewax, on a thread of its own.

The bytewax worker thread runs the destinations too; when it also read and decoded the
stream, a slow destination write (DuckDB's apply and commit, Kafka's delivery wait, an S3
upload) was time nobody read the stream. :class:`StreamReader` owns the replication
connection and the :class:`~sources.postgres.batcher.Batcher`: it reads CopyData, answers
keepalives, builds ChangeBatches and hands them to the partition through a short bounded
queue. Destinations release the GIL while they wait on I/O or run native code, so the two
overlap.

The reader is the thin, waiting layer: it reads chunks, waits on the socket and on the
queue, and sends. What to hand over, what is covered and when to report what is decided by
the I/O-free :class:`~sources.postgres.protocol.ReplicationProtocol` it feeds each chunk to.

What stays with the partition (sources/postgres/source.py): what has been *emitted* to bytewax,
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
from sources.postgres.protocol import Item, ReplicationProtocol, Status
from sources.postgres.replication import ReplicationStream
from wallaby.core.changes import ChangeBatch
from wallaby.core.metrics import batch_size

log = logging.getLogger("wallaby.source")

# Items built ahead of what bytewax has taken: each the batches taken from one read of the stream (a batch holds up to
# the batcher's gather rows and MAX_BATCH_BYTES of messages; a read, up to READ_CHUNK messages), so this bounds the
# memory read ahead. One item per read, not per batch: handing each batch over on its own (a thread switch each)
# measured (bulk group, 1M inserts into DuckDB) 50-96k rows/s against 106-116k. An item is handed over once its
# batches reach BUNDLE_BYTES (wide rows: a read of 20k messages of 5 KB would otherwise be 100 MB decoded at once).
QUEUE_BATCHES = 2
BUNDLE_BYTES = 4 << 20
# How long the reader waits on an idle socket before it looks at its flags again.
IDLE_WAIT = 0.005
# While the queue is full, how often the reader wakes to send a status update if one is due
# (protocol.FULL_STATUS_EVERY: it reads nothing meanwhile, and the walsender ends a connection that
# has not answered for wal_sender_timeout).
FULL_WAIT = 0.05


class StreamReader(threading.Thread):
    def __init__(self, stream: ReplicationStream, batcher: Batcher, *, covered: int, confirmed: int,
                 status_interval: float, batch_timeout: float, stop_at_lsn: int | None, name: str):
        super().__init__(name=f"wallaby-reader:{name}", daemon=True)
        self.stream = stream
        self.batcher = batcher
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=QUEUE_BATCHES)
        # every decision (what to hand over, what is covered, when and what to report) is the protocol's
        self.core = ReplicationProtocol(batcher, covered=covered, confirmed=confirmed,
                                        status_interval=status_interval, batch_timeout=batch_timeout,
                                        stop_at_lsn=stop_at_lsn, now=time.monotonic())
        self._halt = threading.Event()

    # -- seen from the partition -------------------------------------------------------------
    @property
    def holding(self) -> bool:
        """Changes read but not yet handed over (an open transaction or a batch being filled)."""
        return bool(self.batcher.rows) or not self.queue.empty()

    @property
    def covered(self) -> int:
        """Every change below this end LSN has been read and is held or handed over."""
        return self.core.covered

    @property
    def received(self) -> int:
        """The server's WAL end, as its keepalives last reported it."""
        return self.core.received

    @property
    def last_activity(self) -> float:
        """When the server last sent WAL data (``time.monotonic()``; keepalives do not count)."""
        return self.core.last_activity

    @property
    def confirmed(self) -> int:
        """The flush LSN to report: set by the partition, sent to the server at once."""
        return self.core.confirmed

    @confirmed.setter
    def confirmed(self, lsn: int) -> None:
        self.core.confirmed = lsn

    def want_covered(self, lsn: int | None) -> None:
        """Ask the server for its WAL end often while the stream is quiet and has not covered ``lsn`` (None: no
        longer)."""
        self.core.wanted = lsn

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
            self._send(self.core.status_if_behind())
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
                if not final:
                    self._send(self.core.status_while_full(time.monotonic()))

    def _send(self, status: Status | None) -> None:
        if status is not None:
            self.stream.send_status(status.written, status.flushed, status.applied, status.reply)
            self.core.sent(status, time.monotonic())

    def _pump(self) -> None:
        stream = self.stream
        now = time.monotonic()
        msgs = stream.read()
        if not msgs and not self.batcher.rows:
            self._send(self.core.status_if_behind())
            if stream.wait_readable(IDLE_WAIT):
                msgs = stream.read()
        taken: list[Item] = []  # the batches of one read go into the queue as one item (see QUEUE_BATCHES)
        held = 0  # their Arrow bytes
        for out in self.core.pump(msgs, now):
            if type(out) is Status:
                self._send(out)
            elif out[0] == "batch":
                taken.append(out)
                held += batch_size(out[1])[1]  # type: ignore[arg-type]
                if held >= BUNDLE_BYTES:
                    if not self._put(_bundle(taken)):
                        return
                    taken, held = [], 0
            else:
                if taken and not self._put(_bundle(taken)):
                    return
                taken, held = [], 0
                if not self._put(out):
                    return
        if taken:
            self._put(_bundle(taken))


def _bundle(taken: list[Item]) -> Item:
    """The batches taken from one read as one queue item: one hand-over between the threads for all of them (a
    read of a backlog takes a batch every ``gather`` changes)."""
    return taken[0] if len(taken) == 1 else ("batches", taken, 0)


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
        elif kind == "batches":
            for _, batch, covered in obj:  # type: ignore[union-attr]
                on_batch(batch, covered)
        elif kind == "covered":
            on_covered(covered)
        else:
            return obj  # type: ignore[return-value]
    return None
