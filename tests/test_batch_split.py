"""ChangeBatch.split: the source gathers a backlog, decodes it at once and hands it over whole; each destination's
writer that does not take whole batches (sinks/fanout.py, ``Writer.WHOLE_BATCHES``) gets it in batches of
batch_size. The batches hold exactly the changes of the whole, at most batch_size each, cut by position (every
change of one before every change of the next, though a batch's runs are per table and interleave), each at its
last change's position; the slices' sizes add up to the whole's; only the last batch keeps the whole's caught_up."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.base import Writer
from sinks.fanout import DestinationWriter
from tests.builders import col, ins, table, table_changes
from wallaby.core.changes import OP_MESSAGE, ORD_COL, ChangeBatch, Event, Position, TableChanges

TABLES = {name: table(name, [col("id", "int8", key=True), col("v", "text")]) for name in "abc"}


def _batch(wal: list[str], caught_up: bool, txn_size: int) -> ChangeBatch:
    """The batch a batcher builds of ``wal`` (a table's name: a row of it; "" a logical message): one run per table,
    opened at its first row (so runs interleave), events where they come; ``txn_size`` changes per transaction."""
    runs: dict[str, list] = {}
    order: list = []
    for i, what in enumerate(wal):
        pos = Position(0x100 + 0x100 * (i // txn_size), i % txn_size + 1)
        if not what:
            order.append(Event(OP_MESSAGE, pos, 0, 1, (), {"prefix": "p", "content": ""}))
            continue
        ch = ins(id=i, v=f"v{i}")
        ch.position = pos
        if what not in runs:
            runs[what] = []
            order.append(what)
        runs[what].append(ch)
    segments = [s if isinstance(s, Event) else table_changes(TABLES[s], runs[s]) for s in order]
    last = len(wal) - 1
    return ChangeBatch("f", segments, Position(0x100 + 0x100 * (last // txn_size), last % txn_size + 1),
                       caught_up=caught_up)


def _changes(batch: ChangeBatch) -> list[tuple]:
    out = []
    for seg in batch.segments:
        if isinstance(seg, Event):
            out.append((seg.position.lsn, seg.position.ordinal, "event"))
        else:
            out += [(lsn, o, seg.table.name) for lsn, o in zip(seg.rows.column("__lsn").to_pylist(),
                                                                 seg.rows.column(ORD_COL).to_pylist(), strict=True)]
    return out


@settings(max_examples=300, deadline=None)
@given(wal=st.lists(st.sampled_from(["a", "b", "c", ""]), min_size=1, max_size=120), size=st.integers(1, 30),
       txn_size=st.integers(1, 12), caught_up=st.booleans())
def test_split_cuts_by_position_into_batches_of_at_most_the_size(wal, size, txn_size, caught_up):
    whole = _batch(wal, caught_up, txn_size)
    parts = whole.split(size)
    assert sorted(c for p in parts for c in _changes(p)) == sorted(_changes(whole))
    assert all(0 < len(p) <= size for p in parts)
    assert len(parts) == -(-len(whole) // size)
    for p in parts:  # each at its last change
        assert p.position == Position(*max(_changes(p))[:2])
    for earlier, later in pairwise(parts):  # every change of one before every one of the next
        assert max(_changes(earlier)) < min(_changes(later))
    assert parts[-1].position == whole.position
    assert [p.caught_up for p in parts] == [False] * (len(parts) - 1) + [caught_up]
    for p in parts:  # each run keeps the table order of its rows
        for seg in p.segments:
            if isinstance(seg, TableChanges):
                ords = list(zip(seg.rows.column("__lsn").to_pylist(), seg.rows.column(ORD_COL).to_pylist(),
                                strict=True))
                assert ords == sorted(ords)
    total = sum(s.buffer_size() for s in whole.segments if isinstance(s, TableChanges))
    sliced = sum(s.buffer_size() for p in parts for s in p.segments if isinstance(s, TableChanges))
    assert total - len(parts) * len(whole.segments) <= sliced <= total  # each slice its share, not the whole


def test_a_batch_within_the_size_or_of_a_backfill_is_itself():
    b = _batch(["a", "b", "", "a", "c", "a"], False, 3)
    assert b.split(6) == [b] and b.split(0) == [b]
    b.snapshot = object()  # type: ignore[assignment]  # a backfill's mark: never split
    assert b.split(2) == [b]


class _Recorder(Writer):
    def __init__(self, whole: bool):
        self.WHOLE_BATCHES = whole
        self.got: list[ChangeBatch] = []
        self.flushes = 0

    def write(self, batch: ChangeBatch) -> None:
        self.got.append(batch)

    def flush(self) -> None:
        self.flushes += 1

    def commit(self) -> None:
        return None


def test_the_fanout_cuts_batches_at_batch_size_only_for_writers_that_do_not_take_them_whole():
    whole = _batch(["a", "b", "", "a", "c", "a", "b", "a"], True, 3)
    cut, kept = _Recorder(whole=False), _Recorder(whole=True)
    for rec in (cut, kept):
        DestinationWriter("f", "d", rec, batch_size=3).write_many([whole])
    assert [len(b) for b in cut.got] == [3, 3, 2] and cut.got == whole.split(3)
    assert [b.caught_up for b in cut.got] == [False, False, True] and cut.flushes == 1  # flushed after the last
    assert kept.got == [whole] and kept.flushes == 1
    small = _batch(["a", "b"], False, 3)
    DestinationWriter("f", "d", cut, batch_size=3).write_many([small])
    assert cut.got[-1] is small
