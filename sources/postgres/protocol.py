"""The walsender conversation as wallaby holds it, with no I/O: what arrived goes in, what to do comes out.

In the style of psycopg's ``generators.py``: :class:`ReplicationProtocol` never touches a socket, a queue or a
clock. The reader thread (:mod:`sources.postgres.reader`) gives it each chunk of CopyData payloads that
:meth:`~sources.postgres.replication.ReplicationStream.read` returned, together with the time, and runs what
:meth:`ReplicationProtocol.pump` yields: queue items to hand to the partition and :class:`Status` updates to
send. The waiting (``select``, the bounded queue) and the socket calls stay in that thin layer, so every rule
that decides when the slot may advance is testable without a server (tests/test_replication_core.py).

The rules, all carried over from the reader as they were:

- The flushed (and applied) LSN reported is :attr:`ReplicationProtocol.confirmed` and nothing else: the partition
  sets it once a position is durable in every destination and in the checkpoint store. Nothing read, covered or
  received is ever reported as flushed.
- Written is :attr:`~ReplicationProtocol.received`, the highest WAL end a primary keepalive reported.
- ``covered``: every change below it has been read and is held or handed over. It moves to the end of the last
  COMMIT when a batch is taken or nothing is held, and to a keepalive's WAL end only when no transaction is open
  and nothing is held (then all WAL up to there is accounted for).
- A status update is due at the end of a chunk when a keepalive asked for a reply (sent without asking for one
  back), every ``status_interval`` (asking the server for a reply: an idle server then tells its WAL end, which
  becomes covered and lets the slot advance), and every :data:`STOPPING_STATUS_EVERY` while a ``stop_at_lsn`` is
  not yet covered and the stream is quiet; otherwise as soon as ``confirmed`` moved past what was last sent.
  While the partition's queue is full, at least every ``min(status_interval, FULL_STATUS_EVERY)``.
- Held changes are handed over when the batch is full, when a read brought nothing and no transaction is half-read
  (the batch is then ``caught_up``: the stream had nothing more waiting, and it ends a transaction), or when the
  oldest has waited ``batch_timeout``.
- ``last_activity``: the time of the last read that brought WAL data (keepalives are not activity); with
  ``received`` and ``covered`` it is what the partition's empty-read rule (``-max-empty-reads``) looks at.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

from sources.postgres.batcher import Batcher
from sources.postgres.pgoutput import decode_copy_data, standby_status

# While the partition's queue is full the reader reads nothing (so it sees no keepalive request), and the walsender
# ends a connection that has not answered for wal_sender_timeout (60s by default, settable per connection): at least
# this often (or every status_interval, if shorter) it then sends a status update.
FULL_STATUS_EVERY = 0.5
# While a stop_at_lsn (or a position the partition waits for) is not covered yet and a read brings nothing, a status
# update (asking for a reply) at most this often: the server's answer carries its WAL end, which covers the position
# once nothing is open.
STOPPING_STATUS_EVERY = 0.05

# A queue item for the partition, in stream order (described in sources/postgres/reader.py).
Item = tuple[str, object, int]


class Status(NamedTuple):
    """A Standby Status Update to send: written/flushed/applied LSNs and whether the server should reply at once."""

    written: int
    flushed: int
    applied: int
    reply: bool

    def encode(self, now_pg_us: int) -> bytes:
        """The 'r' CopyData body, stamped with the sender's clock (µs since the Postgres epoch)."""
        return standby_status(self.written, self.flushed, self.applied, now_pg_us, self.reply)


class ReplicationProtocol:
    """What to send and hand over for the stream read so far. Times are ``time.monotonic()`` seconds, passed in.

    Attributes the partition reads through the reader: ``covered``, ``received``, ``last_activity``; the one it
    sets: ``confirmed`` (a plain attribute: the partition thread writes it, the reader thread reads it once per
    status update).
    """

    def __init__(self, batcher: Batcher, *, covered: int, confirmed: int, status_interval: float,
                 batch_timeout: float, stop_at_lsn: int | None, now: float):
        self.batcher = batcher
        self.covered = covered  # every change below this end LSN has been read and is held or handed over
        self.handed = covered  # the covered LSN of the last item handed over
        self.confirmed = confirmed  # set by the partition: the flush LSN to report
        self.received = covered  # server WAL end seen in keepalives
        # a WAL position the partition waits to see covered (the empty-read rule's): while the stream is quiet and
        # below it, status updates ask for the server's WAL end as often as for a stop_at_lsn
        self.wanted: int | None = None
        self.status_interval = status_interval
        self.batch_timeout = batch_timeout
        self.stop_at_lsn = stop_at_lsn
        self.sent_confirmed = -1  # the flushed LSN of the last status update sent
        self.last_status = 0.0  # when it was sent (0: the first chunk sends one)
        # last time the server sent WAL data (keepalives do not count: a checkpoint store in the source's own cluster
        # writes WAL every epoch, and its keepalives would keep an idle flow "active")
        self.last_activity = now
        self.first_held_at: float | None = None  # when the oldest change held was read

    # -- what arrived -------------------------------------------------------------------------
    def pump(self, msgs: Sequence[memoryview | bytes], now: float) -> Iterator[Item | Status]:
        """Feed one chunk of CopyData payloads (possibly none) read at ``now``; yield what to do, in order.

        Yields queue items (``("batch", ChangeBatch, covered)``, ``("covered", None, covered)``) to put for the
        partition and :class:`Status` updates to send (then report with :meth:`sent`). A caller that stops
        part-way (it was told to halt) drops the rest, as the reader always did.
        """
        batcher = self.batcher
        feed, full = batcher.feed, batcher.full
        reply = data = False
        for raw in msgs:
            kind = raw[0]
            if kind == 119:  # 'w' XLogData
                data = True
                feed(bytes(raw[25:]))
                if full():
                    yield from self._take()
            elif kind == 107 and self.keepalive(raw):  # 'k' primary keepalive
                reply = True
        # When the oldest change held was read: rows only grow between takes, so rows held at the end of the
        # chunk were first held in it (or before it, when first_held_at is already set).
        if batcher.rows and self.first_held_at is None:
            self.first_held_at = now
        if data:
            self.last_activity = now
        held_too_long = self.first_held_at is not None and now - self.first_held_at >= self.batch_timeout
        if batcher.rows and (held_too_long or not msgs) and (held_too_long or not batcher.in_txn):
            # Caught up with the stream (or batch_timeout passed): hand over what we hold.
            whole = not batcher.in_txn
            items = self._take()
            if items and whole and not msgs:  # the server had nothing more, at a transaction's end: show it now
                items[-1][1].caught_up = True  # type: ignore[union-attr]
            yield from items
        if not batcher.in_txn and not batcher.rows:
            self.covered = max(self.covered, batcher.last_commit_end)
            if self.covered > self.handed:
                self.handed = self.covered
                yield ("covered", None, self.covered)
        stopping_soon = (not msgs and now - self.last_status >= STOPPING_STATUS_EVERY
                         and any(t is not None and self.covered < t for t in (self.stop_at_lsn, self.wanted)))
        if reply or stopping_soon or now - self.last_status >= self.status_interval:
            # Ask for a reply so an idle server tells us its WAL end: that lets the slot advance.
            yield self.status(reply=not reply)
        elif self.confirmed > self.sent_confirmed:
            yield self.status()

    def keepalive(self, raw: memoryview | bytes) -> bool:
        """A primary keepalive ('k'): note the server's WAL end; True when it asks for a reply at once."""
        ka = decode_copy_data(bytes(raw))  # rare: the shared framing decoder is fine here
        end = ka.end_lsn
        if end > self.received:
            self.received = end
        batcher = self.batcher
        # Idle: nothing open, nothing held, every commit handed over -> WAL up to here is covered.
        if not batcher.in_txn and not batcher.rows and end > self.covered:
            self.covered = end
        return ka.reply_requested

    def _take(self) -> list[Item]:
        """What is held, whole, as one queue item (none when nothing is held): the fanout cuts it at batch_size for
        the destinations a batch is a unit of (sinks/fanout.py)."""
        batch = self.batcher.take()
        self.first_held_at = None
        if batch is None:
            return []
        # Every COMMIT seen so far is fully in this batch or before it (an open transaction is not).
        self.covered = max(self.covered, self.batcher.last_commit_end)
        self.handed = self.covered
        return [("batch", batch, self.covered)]

    # -- what to send -----------------------------------------------------------------------
    def status(self, reply: bool = False) -> Status:
        """A status update now: written = what the server reported, flushed = applied = what the partition confirmed."""
        confirmed = self.confirmed
        return Status(self.received, confirmed, confirmed, reply)

    def sent(self, status: Status, now: float) -> None:
        """``status`` went out at ``now``."""
        self.sent_confirmed = status.flushed
        self.last_status = now

    def status_if_behind(self) -> Status | None:
        """A status update if the partition confirmed more than the server was last told."""
        return self.status() if self.confirmed > self.sent_confirmed else None

    def status_while_full(self, now: float) -> Status | None:
        """While the partition's queue is full (nothing is read meanwhile): a status update when one is due."""
        if now - self.last_status >= min(self.status_interval, FULL_STATUS_EVERY):
            return self.status()
        return None
