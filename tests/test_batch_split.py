"""ChangeBatch.split: the source gathers a backlog, decodes it at once and hands it over in batches of batch_size.
The batches hold exactly the changes of the whole, in order, at most batch_size each, each at its last change's
position; the slices' sizes add up to the whole's; only the last batch keeps the whole's caught_up."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.builders import col, ins, table, table_changes
from wallaby.core.changes import OP_MESSAGE, ORD_COL, ChangeBatch, Event, Position, TableChanges

T = table("t", [col("id", "int8", key=True), col("v", "text")])


def _batch(shape: list[int], caught_up: bool) -> ChangeBatch:
    """Segments of ``shape``: a run of n rows for n > 0, an event for 0; positions increasing."""
    segments, ordinal = [], 0
    for n in shape:
        if n == 0:
            ordinal += 1
            segments.append(Event(OP_MESSAGE, Position(0x100, ordinal), 0, 1, (), {"prefix": "p", "content": ""}))
            continue
        changes = []
        for _ in range(n):
            ordinal += 1
            ch = ins(id=ordinal, v=f"v{ordinal}")
            ch.position = Position(0x100, ordinal)
            changes.append(ch)
        segments.append(table_changes(T, changes))
    return ChangeBatch("f", segments, Position(0x100, ordinal), caught_up=caught_up)


def _changes(batch: ChangeBatch) -> list[tuple]:
    out = []
    for seg in batch.segments:
        if isinstance(seg, Event):
            out.append(("event", seg.position.ordinal))
        else:
            out += [("row", o, i) for o, i in zip(seg.rows.column(ORD_COL).to_pylist(),
                                                   seg.rows.column("id").to_pylist(), strict=True)]
    return out


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(0, 40), min_size=1, max_size=12), size=st.integers(1, 30),
       caught_up=st.booleans())
def test_split_keeps_every_change_in_order_in_batches_of_at_most_the_size(shape, size, caught_up):
    whole = _batch(shape, caught_up)
    parts = whole.split(size)
    assert [c for p in parts for c in _changes(p)] == _changes(whole)
    assert all(0 < len(p) <= size for p in parts) and (len(parts) == 1 or all(len(p) == size for p in parts[:-1]))
    assert parts[-1].position == whole.position
    for p in parts:
        last = p.segments[-1]
        assert p.position == (last.position if isinstance(last, Event) else last.last)
    assert [p.caught_up for p in parts] == [False] * (len(parts) - 1) + [caught_up]
    for seg in whole.segments:  # a run's slices stand for its size, not each for the whole buffers
        if isinstance(seg, TableChanges):
            ordinals = set(seg.rows.column(ORD_COL).to_pylist())
            pieces = [s for p in parts for s in p.segments
                      if isinstance(s, TableChanges) and s.rows.column(ORD_COL)[0].as_py() in ordinals]
            whole_size = seg.buffer_size()
            assert whole_size - len(pieces) <= sum(s.buffer_size() for s in pieces) <= whole_size


def test_a_batch_within_the_size_or_of_a_backfill_is_itself():
    b = _batch([3, 0, 2], False)
    assert b.split(6) == [b] and b.split(0) == [b]
    b.snapshot = object()  # type: ignore[assignment]  # a backfill's mark: never split
    assert b.split(2) == [b]
