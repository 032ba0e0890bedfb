"""The replication stream's rules without a server: the I/O-free protocol core and the thin socket layer.

:class:`~sources.postgres.protocol.ReplicationProtocol` is fed CopyData payloads built here with ``struct`` (XLogData
carrying pgoutput Begin / logical Message / Commit, primary keepalives) and a fake clock, with a real
:class:`~sources.postgres.batcher.Batcher` behind it; the tests assert what it hands over and which status updates it
wants sent. :class:`~sources.postgres.replication.ReplicationStream` is driven over a small fake ``pgconn``: what is
tested there is how libpq's return codes from ``put_copy_data`` and ``flush`` are handled, not a server.
"""

from __future__ import annotations

import socket
import struct
import time

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sources.postgres.batcher import Batcher
from sources.postgres.protocol import FULL_STATUS_EVERY, STOPPING_STATUS_EVERY, ReplicationProtocol, Status
from sources.postgres.reader import StreamReader, _bundle, drain
from sources.postgres.replication import ReplicationStream, StreamClosed

T0 = 1000.0  # the fake clock's start (time.monotonic() is never 0 in practice)
START = 0x1000  # covered/confirmed at start


# -- building the stream ---------------------------------------------------------------------
def xlog(payload: bytes, lsn: int = 0) -> bytes:
    return b"w" + struct.pack(">QQq", lsn, lsn, 0) + payload


def keepalive(end: int, reply: bool = False) -> bytes:
    return b"k" + struct.pack(">QqB", end, 0, 1 if reply else 0)


def begin(final_lsn: int, xid: int = 7) -> bytes:
    return xlog(b"B" + struct.pack(">QqI", final_lsn, 0, xid), final_lsn)


def message(lsn: int, content: bytes = b"x") -> bytes:  # a transactional logical message: one change held
    return xlog(b"M\x01" + struct.pack(">Q", lsn) + b"test\x00" + struct.pack(">I", len(content)) + content, lsn)


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    return xlog(b"C" + struct.pack(">BQQq", 0, commit_lsn, end_lsn, 0), commit_lsn)


def txn(lsn: int, changes: int = 1) -> list[bytes]:
    """A whole transaction at ``lsn``; its COMMIT ends at ``lsn + 100``."""
    return [begin(lsn + 90), *(message(lsn + 1 + i) for i in range(changes)), commit(lsn + 90, lsn + 100)]


def batcher(batch_size: int = 100, gather: int | None = None) -> Batcher:
    def no_relations(*_):  # only Begin, Message and Commit are fed here
        raise AssertionError("no Relation message expected")

    b = Batcher("f", batch_size, no_relations)
    if gather is not None:
        b.gather = gather
    return b


def core(*, confirmed: int = START, status_interval: float = 10.0, batch_timeout: float = 1.0,
         stop_at_lsn: int | None = None, batch_size: int = 100, gather: int | None = None) -> ReplicationProtocol:
    """A protocol core that has just sent a status update at T0 (so nothing is due by the clock); ``gather``: the
    changes it holds before it takes in the middle of a chunk (default: GATHER_ROWS, or batch_size when larger)."""
    c = ReplicationProtocol(batcher(batch_size, gather), covered=START, confirmed=confirmed,
                            status_interval=status_interval, batch_timeout=batch_timeout, stop_at_lsn=stop_at_lsn,
                            now=T0)
    c.sent(c.status(), T0)
    return c


def pump(c: ReplicationProtocol, msgs: list[bytes], now: float = T0) -> tuple[list, list[Status]]:
    """Run one chunk; the queue items and the status updates it asked for (each reported sent at ``now``)."""
    items, statuses = [], []
    for out in c.pump([memoryview(m) for m in msgs], now):
        if type(out) is Status:
            statuses.append(out)
            c.sent(out, now)
        else:
            items.append(out)
    return items, statuses


# -- the core ----------------------------------------------------------------------------------
def test_a_keepalive_asking_for_a_reply_is_answered_at_once():
    c = core()
    assert pump(c, [keepalive(START + 50)], T0 + 0.01) == ([("covered", None, START + 50)], [])
    items, statuses = pump(c, [keepalive(START + 80, reply=True)], T0 + 0.02)
    # the answer does not ask back; written is the server's WAL end, flushed only what the partition confirmed
    assert statuses == [Status(START + 80, START, START, False)]
    assert items == [("covered", None, START + 80)]


def test_a_status_update_encodes_as_standby_status():
    body = Status(1, 2, 3, True).encode(4)
    assert body[:1] == b"r" and struct.unpack(">QQQqB", body[1:]) == (1, 2, 3, 4, 1)


def test_flushed_never_passes_what_the_partition_confirmed():
    c = core()
    items, statuses = pump(c, [*txn(START + 100), keepalive(START + 900, reply=True)], T0 + 0.01)
    assert statuses == [Status(START + 900, START, START, False)]  # covered moved, confirmed did not
    items, statuses = pump(c, [], T0 + 0.02)
    assert [i[0] for i in items] == ["batch"] and c.covered == START + 200
    assert statuses == []  # nothing confirmed since: nothing to tell
    c.confirmed = START + 200  # the partition made it durable
    items, statuses = pump(c, [], T0 + 0.03)
    assert statuses == [Status(START + 900, START + 200, START + 200, False)]
    assert pump(c, [], T0 + 0.04) == ([], [])  # told once
    assert c.status_if_behind() is None
    c.confirmed = START + 900
    assert c.status_if_behind() == Status(START + 900, START + 900, START + 900, False)


def test_a_keepalive_end_is_covered_only_when_nothing_is_in_flight():
    c = core()
    # a transaction read in part: the keepalive's WAL end is received, not covered
    items, _ = pump(c, [begin(START + 190), message(START + 101), keepalive(START + 500)], T0 + 0.01)
    assert items == [] and c.received == START + 500 and c.covered == START
    # committed but still held (the chunk was not the last): still not covered by a keepalive
    items, _ = pump(c, [commit(START + 190, START + 200), keepalive(START + 600)], T0 + 0.02)
    assert items == [] and c.covered == START and c.received == START + 600
    # the read comes back empty: the batch is handed over, covered to its COMMIT's end
    items, _ = pump(c, [], T0 + 0.03)
    assert [(k, cov) for k, _, cov in items] == [("batch", START + 200)]
    # idle: now the keepalive's end is covered, and handed over as such
    items, _ = pump(c, [keepalive(START + 700)], T0 + 0.04)
    assert items == [("covered", None, START + 700)] and c.covered == START + 700
    items, _ = pump(c, [keepalive(START + 700)], T0 + 0.05)
    assert items == []  # nothing new


def test_status_every_interval_asks_for_a_reply():
    c = core(status_interval=10.0)
    assert pump(c, [], T0 + 9.99)[1] == []
    assert pump(c, [], T0 + 10.0)[1] == [Status(START, START, START, True)]
    assert pump(c, [], T0 + 19.75)[1] == []
    c.confirmed = START + 5  # a confirm in between is sent at once, and restarts the interval
    assert pump(c, [], T0 + 19.875)[1] == [Status(START, START + 5, START + 5, False)]
    assert pump(c, [], T0 + 20.0)[1] == []
    assert pump(c, [], T0 + 29.75)[1] == []
    assert pump(c, [], T0 + 29.875)[1] == [Status(START, START + 5, START + 5, True)]


def test_the_first_chunk_sends_a_status_update():
    c = ReplicationProtocol(batcher(), covered=START, confirmed=START, status_interval=10.0, batch_timeout=1.0,
                            stop_at_lsn=None, now=T0)
    assert pump(c, [], T0)[1] == [Status(START, START, START, True)]


def test_status_while_the_queue_is_full():
    c = core(status_interval=10.0)
    assert c.status_while_full(T0 + FULL_STATUS_EVERY - 0.01) is None
    assert c.status_while_full(T0 + FULL_STATUS_EVERY) == Status(START, START, START, False)
    c2 = core(status_interval=0.2)  # a shorter status_interval wins
    assert c2.status_while_full(T0 + 0.2) is not None


def test_short_of_stop_at_lsn_a_quiet_stream_asks_the_server_often():
    c = core(stop_at_lsn=START + 500)
    assert pump(c, [], T0 + STOPPING_STATUS_EVERY / 2)[1] == []
    assert pump(c, [], T0 + 2 * STOPPING_STATUS_EVERY)[1] == [Status(START, START, START, True)]
    assert pump(c, [keepalive(START + 400)], T0 + 1.0)[1] == []  # not while messages come
    pump(c, [keepalive(START + 500)], T0 + 1.0)
    assert c.covered == START + 500
    assert pump(c, [], T0 + 1.0 + STOPPING_STATUS_EVERY)[1] == []  # reached


def test_short_of_a_wanted_position_a_quiet_stream_asks_the_server_often():
    """The empty-read rule's wait for the server's flushed WAL: as for a stop_at_lsn, without stopping there."""
    c = core()
    assert pump(c, [], T0 + 2 * STOPPING_STATUS_EVERY)[1] == []  # nothing wanted: status_interval
    c.wanted = START + 300
    assert pump(c, [], T0 + 3 * STOPPING_STATUS_EVERY)[1] == [Status(START, START, START, True)]
    pump(c, [keepalive(START + 300)], T0 + 1.0)
    assert c.covered == START + 300
    assert pump(c, [], T0 + 1.0 + STOPPING_STATUS_EVERY)[1] == []  # covered: quiet again


def test_received_covered_and_activity_for_the_empty_read_rule():
    """The partition counts an empty read when no WAL data came for batch_timeout and received <= covered."""
    c = core(batch_timeout=1.0)
    assert c.last_activity == T0
    pump(c, [keepalive(START + 50)], T0 + 5)
    assert c.last_activity == T0  # keepalives are not activity
    assert c.received == c.covered == START + 50  # idle: everything reported is covered
    # a long transaction being decoded: the server reports WAL ahead of what is covered
    pump(c, [begin(START + 5000), message(START + 101)], T0 + 6)
    assert c.last_activity == T0 + 6
    pump(c, [keepalive(START + 3000)], T0 + 6.5)
    assert c.received == START + 3000 > c.covered == START + 50
    # held past batch_timeout: handed over mid-transaction, covered does not move past the open transaction
    items, _ = pump(c, [keepalive(START + 3100)], T0 + 7)
    assert [(k, cov) for k, _, cov in items] == [("batch", START + 50)]
    assert c.received > c.covered
    items, _ = pump(c, [commit(START + 5000, START + 5100)], T0 + 8)
    assert items == [("covered", None, START + 5100)]
    pump(c, [keepalive(START + 5100)], T0 + 20)
    assert c.received == c.covered == START + 5100 and c.last_activity == T0 + 8


def test_a_full_batch_is_handed_over_within_the_chunk():
    c = core(batch_size=2, gather=2)
    items, _ = pump(c, txn(START + 100, changes=5), T0 + 0.01)
    assert [(k, len(b.segments), cov) for k, b, cov in items] == [("batch", 2, START), ("batch", 2, START)]
    # the rest waits for a read that brings nothing (the stream may have more of the same moment)
    items, _ = pump(c, [], T0 + 0.02)
    assert [(k, len(b.segments), cov) for k, b, cov in items] == [("batch", 1, START + 200)]


def test_a_backlog_is_gathered_then_handed_over_whole():
    """While the stream brings more, changes are held up to ``gather`` (decoded at once), then handed over as one
    batch covering the commits read, however many ``batch_size`` is (the fanout cuts it for the destinations a
    batch is a unit of: tests/test_fanout.py)."""
    c = core(batch_size=2, gather=4)
    items, _ = pump(c, txn(START + 100, changes=5), T0 + 0.01)
    assert [(k, len(b), cov) for k, b, cov in items] == [("batch", 4, START)]
    items, _ = pump(c, txn(START + 300, changes=3), T0 + 0.02)  # the 5th change of the first transaction, 3 more
    assert [(k, len(b) if b else None, cov) for k, b, cov in items] == [
        ("batch", 4, START + 200), ("covered", None, START + 400)]
    # taken at a read that brings nothing: whole, caught up and covering the commit
    pump(c, txn(START + 500, changes=3), T0 + 0.04)
    items, _ = pump(c, [], T0 + 0.05)
    assert [(k, len(b), cov, b.caught_up) for k, b, cov in items] == [("batch", 3, START + 600, True)]
    assert [e.position for _, b, _ in items for e in b.segments] == sorted(
        e.position for _, b, _ in items for e in b.segments)


def test_the_batches_of_one_read_cross_to_the_partition_as_one_item_in_order():
    """The reader puts the batches taken from one read into its queue as one item (one hand-over between the
    threads); the partition's drain takes them back one by one, each with what it covers, in order."""
    import queue
    from types import SimpleNamespace

    c = core(batch_size=2, gather=2)
    items, _ = pump(c, txn(START + 100, changes=5), T0 + 0.01)
    items += pump(c, [], T0 + 0.02)[0]
    batches = [i for i in items if i[0] == "batch"]
    assert len(batches) == 3 and _bundle(batches[:1]) == batches[0]
    q: queue.Queue = queue.Queue()
    q.put(_bundle(batches))
    q.put(("covered", None, START + 900))
    got: list = []
    err = drain(SimpleNamespace(queue=q), 10, 0.0, lambda b, cov: got.append((b, cov)),
                lambda cov: got.append(("covered", cov)))
    assert err is None
    assert got == [(b, cov) for _, b, cov in batches] + [("covered", START + 900)]


def test_only_a_batch_cut_when_the_stream_had_nothing_more_is_caught_up():
    c = core(batch_size=2, batch_timeout=1.0, gather=2)
    items, _ = pump(c, txn(START + 100, changes=3), T0 + 0.01)
    assert [b.caught_up for k, b, _ in items if k == "batch"] == [False]  # full: more was waiting
    items, _ = pump(c, [], T0 + 0.02)
    assert [b.caught_up for k, b, _ in items if k == "batch"] == [True]  # a read brought nothing: the stream is quiet
    # held past batch_timeout while the stream still brings data: handed over, but not caught up
    pump(c, [begin(START + 290), message(START + 201)], T0 + 0.03)
    items, _ = pump(c, [message(START + 202), commit(START + 290, START + 300)], T0 + 2.0)
    assert [b.caught_up for k, b, _ in items if k == "batch"] == [False]
    # held past batch_timeout inside a transaction while the stream is quiet: handed over, not caught up
    pump(c, [begin(START + 390), message(START + 301)], T0 + 2.1)
    items, _ = pump(c, [], T0 + 3.5)
    assert [b.caught_up for k, b, _ in items if k == "batch"] == [False]


# -- a property over any interleaving ---------------------------------------------------------
EVENTS = st.lists(st.one_of(
    # changes, the chunks it is split over (a keepalive reporting WAL beyond it after each but the last)
    st.tuples(st.just("txn"), st.integers(0, 4), st.integers(1, 3)),
    st.tuples(st.just("keepalive"), st.booleans(), st.integers(0, 300)),  # reply requested, WAL beyond
    st.tuples(st.just("confirm"), st.booleans(), st.just(0)),  # to the latest handed / covered so far
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.01, 0.3, 1.0, 10.0]), st.just(0)),
), max_size=40)


@given(EVENTS, st.integers(1, 4))
def test_reported_positions_are_monotone_and_never_past_what_was_confirmed(events, batch_size):
    c = core(batch_size=batch_size, status_interval=10.0, batch_timeout=1.0)
    now, wal = T0, START
    handed = START  # the highest covered LSN handed to the partition (what it may confirm)
    last_flushed = last_written = -1
    keepalive_ends = [START]

    def run(msgs: list[bytes], open_from: int | None) -> None:
        nonlocal handed, last_flushed, last_written
        before = c.covered
        items, statuses = pump(c, msgs, now)
        for _, _, cov in items:
            assert cov >= handed
            handed = cov
        assert c.covered >= before
        if open_from is not None:  # nothing of an open transaction is covered
            assert c.covered <= open_from
        assert c.covered <= max(wal, *keepalive_ends)
        for s in statuses:
            assert s.flushed == s.applied == c.confirmed <= handed
            assert s.flushed >= last_flushed and s.written >= last_written
            assert s.written <= max(keepalive_ends)
            last_flushed, last_written = s.flushed, s.written

    for kind, a, b in events:
        if kind == "txn":
            at, wal = wal, wal + 100
            msgs = txn(at, changes=a)
            cut = max(1, len(msgs) // b)
            for i in range(0, len(msgs), cut):
                still_open = at if i + cut < len(msgs) else None
                run(msgs[i:i + cut], still_open)
                if still_open is not None:
                    keepalive_ends.append(wal)
                    run([keepalive(wal)], still_open)
        elif kind == "keepalive":
            wal += b
            keepalive_ends.append(wal)
            run([keepalive(wal, reply=a)], None)
        elif kind == "confirm":
            c.confirmed = max(c.confirmed, handed if a else c.confirmed)
        else:
            now += a
            run([], None)


# -- the thin socket layer over libpq's return codes --------------------------------------------
class FakePGconn:
    """libpq's COPY BOTH calls as :class:`ReplicationStream` uses them, with scripted return codes."""

    def __init__(self, sock: socket.socket, put: list[int] | None = None, flush: list[int] | None = None,
                 inbound: list[bytes] | None = None):
        self.socket = sock.fileno()
        self.put_codes, self.flush_codes = list(put or []), list(flush or [])
        self.inbound = list(inbound or [])
        self.queued: list[bytes] = []
        self.flushes = 0

    def put_copy_data(self, data: bytes) -> int:
        rv = self.put_codes.pop(0) if self.put_codes else 1
        if rv == 1:
            self.queued.append(bytes(data))
        return rv

    def flush(self) -> int:
        self.flushes += 1
        return self.flush_codes.pop(0) if self.flush_codes else 0

    def get_error_message(self) -> str:
        return "server closed the connection unexpectedly\n"

    def get_copy_data(self, async_: int) -> tuple[int, memoryview | bytes]:
        if self.inbound:
            data = self.inbound.pop(0)
            return len(data), memoryview(data)
        return 0, b""

    def consume_input(self) -> None:
        pass


@pytest.fixture
def sockets():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def stream(pgconn: FakePGconn, timeout: float = 0.2) -> ReplicationStream:
    s = ReplicationStream.over(pgconn, "db.example:5432")
    s.send_timeout = timeout
    return s


def test_a_status_update_is_queued_and_flushed(sockets):
    pg = FakePGconn(sockets[0])
    stream(pg).send_status(10, 8, 8, reply=True)
    assert len(pg.queued) == 1 and pg.flushes == 1
    assert pg.queued[0][:1] == b"r" and struct.unpack(">QQQqB", pg.queued[0][1:])[:3] == (10, 8, 8)
    assert pg.queued[0][-1] == 1


def test_libpq_not_taking_the_message_is_retried_once_writable(sockets):
    pg = FakePGconn(sockets[0], put=[0, 0, 1], flush=[1, 1, 0])
    stream(pg).send_status(10, 8, 8)
    assert len(pg.queued) == 1 and pg.flushes == 3


@pytest.mark.parametrize("put,flush", [([-1], []), ([1], [-1])])
def test_a_libpq_error_is_a_closed_stream_naming_the_server(sockets, put, flush):
    pg = FakePGconn(sockets[0], put=put, flush=flush)
    with pytest.raises(StreamClosed, match=r"cannot send a status update to db\.example:5432: server closed"):
        stream(pg).send_status(10, 8, 8)


def test_psycopg_raising_for_a_failed_send_is_a_closed_stream(sockets):
    class Raising(FakePGconn):
        def put_copy_data(self, data: bytes) -> int:
            raise psycopg.OperationalError("sending copy data failed: connection reset")

    with pytest.raises(StreamClosed, match="lost the replication connection to db.example:5432: sending copy"):
        stream(Raising(sockets[0])).send_status(1, 1, 1)


@pytest.mark.parametrize("put,flush,what", [([0] * 10_000, [], "queue"), ([1], [1] * 10_000, "flush")])
def test_a_socket_that_takes_nothing_is_a_closed_stream_after_the_timeout(sockets, put, flush, what):
    a, _ = sockets
    a.setblocking(False)
    try:  # fill the socket's send buffer: select never finds it writable
        while True:
            a.send(b"\0" * 65536)
    except BlockingIOError:
        pass
    pg = FakePGconn(a, put=put, flush=flush)
    t = time.monotonic()
    with pytest.raises(StreamClosed, match=f"db.example:5432: libpq could not {what} it for 0.2s"):
        stream(pg, timeout=0.2).send_status(1, 1, 1)
    assert 0.2 <= time.monotonic() - t < 2.0


def test_the_reader_answers_a_keepalive_through_the_stream(sockets):
    """The reader thread runs the core's decisions: a keepalive asking for a reply gets a status update on the wire."""
    pg = FakePGconn(sockets[0], inbound=[keepalive(START + 64, reply=True)])
    s = stream(pg)
    r = StreamReader(s, batcher(), covered=START, confirmed=START, status_interval=10.0, batch_timeout=1.0,
                     stop_at_lsn=None, name="t")
    r.core.last_status = time.monotonic()  # the first chunk's periodic update is not what is tested
    r.start()
    deadline = time.monotonic() + 5
    while not pg.queued and time.monotonic() < deadline:
        time.sleep(0.005)
    r.confirmed = START + 32
    while len(pg.queued) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    r.stop()
    sent = [struct.unpack(">QQQqB", q[1:]) for q in pg.queued]
    assert [(w, f, a, reply) for w, f, a, _, reply in sent] == [
        (START + 64, START, START, 0), (START + 64, START + 32, START + 32, 0)]
    assert r.received == r.covered == START + 64
    item = r.queue.get_nowait()
    assert item == ("covered", None, START + 64)
