"""sources.postgres.batcher.Batcher against a row-by-row reading of the same pgoutput messages.

The batcher keeps a run's rows column by column (their messages, ordinals, the transactions they fall in, the rows
that are not plain inserts, the old images) and builds Arrow only when a batch is taken. Any stream of inserts,
updates (with no old image, an old key or an old row) and deletes over two tables, in any transactions, taken at
any points, must come out (each table's rows in WAL order) as :class:`sources.postgres.pgoutput.Decoder` reads each
message: op, commit LSN, ordinal, commit time, xid, values, unchanged columns, the old image and the raw message.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sources.postgres.batcher import Batcher
from sources.postgres.pgoutput import UNCHANGED, Begin, Decoder, Delete, Insert, Update
from sources.postgres.resolver import TypeResolver
from wallaby.core.changes import (
    BEFORE_PREFIX,
    LSN_COL,
    OP_COL,
    ORD_COL,
    TS_COL,
    UNCHANGED_COL,
    WAL_COL,
    XID_COL,
    TableChanges,
)

COLS = ("id", "v", "w")  # int4 key, text, text
TABLES = {16384: "a", 16385: "b"}


def _cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def relation(relid: int, name: str) -> bytes:
    body = struct.pack(">I", relid) + _cstr("public") + _cstr(name) + b"d" + struct.pack(">h", len(COLS))
    for i, (col, oid) in enumerate(zip(COLS, (23, 25, 25), strict=True)):
        body += bytes([1 if i == 0 else 0]) + _cstr(col) + struct.pack(">Ii", oid, -1)
    return b"R" + body


def tuple_data(values: list) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            raw = str(v).encode()
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


VALUE = st.one_of(st.none(), st.text(max_size=20), st.just(UNCHANGED))
CHANGE = st.tuples(
    st.sampled_from(sorted(TABLES)),
    st.sampled_from(["I", "U", "UK", "UO", "DK", "DO"]),
    st.integers(-(2**31), 2**31 - 1),
    VALUE, VALUE,
)
TXNS = st.lists(st.tuples(st.lists(CHANGE, min_size=1, max_size=12), st.integers(0, 2**32 - 1)), max_size=8)


def change_message(relid: int, kind: str, key: int, v, w) -> bytes:
    new = [key, None if v is UNCHANGED else v, w]  # the key is never unchanged; an insert has every value
    old = [key, None, None] if kind.endswith("K") else [key, v if v is not UNCHANGED else None, "old"]
    head = struct.pack(">I", relid)
    if kind == "I":
        return b"I" + head + b"N" + tuple_data([key, None if v is UNCHANGED else v, None if w is UNCHANGED else w])
    if kind == "U":
        return b"U" + head + b"N" + tuple_data(new)
    if kind in ("UK", "UO"):
        return b"U" + head + kind[1].encode() + tuple_data(old) + b"N" + tuple_data(new)
    return b"D" + head + kind[1].encode() + tuple_data(old)


def stream(txns: list) -> list[bytes]:
    msgs = [relation(r, n) for r, n in TABLES.items()]
    lsn = 0x10_0000
    for i, (changes, xid) in enumerate(txns):
        lsn += 0x1000
        msgs.append(b"B" + struct.pack(">Qq", lsn, 700_000_000_000_000 + i) + struct.pack(">I", xid))
        msgs += [change_message(*c) for c in changes]
        msgs.append(b"C" + struct.pack(">BQQq", 0, lsn, lsn + 0x10, 700_000_000_000_000 + i))
    return msgs


def row_by_row(msgs: list[bytes]) -> list[dict]:
    """Each change as the decoder reads its message on its own."""
    dec = Decoder(1)
    out: list[dict] = []
    lsn = ts = xid = ordinal = 0
    for raw in msgs:
        m = dec.decode(raw)
        if isinstance(m, Begin):
            lsn, ts, xid, ordinal = m.final_lsn, m.commit_ts, m.xid, 0
            continue
        if not isinstance(m, Insert | Update | Delete):
            continue
        ordinal += 1
        new = None if isinstance(m, Delete) else m.new
        old = getattr(m, "old", None)
        op = {Insert: "insert", Update: "update", Delete: "delete"}[type(m)]

        def text(vals, i):
            if vals is None or vals[i] is None or vals[i] is UNCHANGED:
                return None
            return vals[i].decode() if i else int(vals[i])

        row = {"table": TABLES[m.relid], OP_COL: op, LSN_COL: lsn, ORD_COL: ordinal, TS_COL: ts, XID_COL: xid,
               WAL_COL: raw}
        for i, c in enumerate(COLS):
            row[c] = text(new, i)
        gone = [c for i, c in enumerate(COLS) if new is not None and new[i] is UNCHANGED]
        row[UNCHANGED_COL] = gone or None
        row["old"] = None if old is None else tuple(text(old, i) for i in range(len(COLS)))
        out.append(row)
    return out


def through_batcher(msgs: list[bytes], takes: set[int], gather: int, keep_wal: bool) -> list[dict]:
    b = Batcher("f", 100, TypeResolver("", False, "f"), keep_wal=keep_wal)
    b.gather = gather
    got: list[dict] = []

    def take() -> None:
        batch = b.take()
        for seg in batch.segments if batch is not None else []:
            assert isinstance(seg, TableChanges)
            data = seg.rows.to_pydict()
            for r in range(seg.rows.num_rows):
                row = {"table": seg.table.name}
                for k in (OP_COL, LSN_COL, ORD_COL, XID_COL, UNCHANGED_COL, *COLS):
                    row[k] = data[k][r]
                row[TS_COL] = seg.rows.column(TS_COL).cast("int64")[r].as_py()
                row[WAL_COL] = data[WAL_COL][r] if keep_wal else None
                olds = [BEFORE_PREFIX + c for c in COLS]
                row["old"] = None if olds[0] not in data or row[OP_COL] == "insert" or (
                    all(data[c][r] is None for c in olds)) else tuple(data[c][r] for c in olds)
                got.append(row)

    for i, raw in enumerate(msgs):
        b.feed(raw)
        if i in takes or b.full():
            take()
    take()
    return got


@settings(max_examples=150, deadline=None)
@given(TXNS, st.sets(st.integers(0, 120)), st.integers(1, 20), st.booleans())
def test_taken_runs_are_the_row_by_row_reading(txns, takes, gather, keep_wal):
    msgs = stream(txns)
    want = row_by_row(msgs)
    for w in want:
        if not keep_wal:
            w[WAL_COL] = None
        if w[OP_COL] == "update" and w["old"] is not None and all(v is None for v in w["old"]):
            w["old"] = None  # an old image of NULLs reads as none (the before columns are NULL either way)
    got = through_batcher(msgs, takes, gather, keep_wal)

    def per_table(rows: list[dict]) -> list[dict]:  # a table's rows in WAL order (runs are per table)
        return sorted(rows, key=lambda r: r["table"])

    assert per_table(got) == per_table(want)
