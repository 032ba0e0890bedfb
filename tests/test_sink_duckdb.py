"""DuckDB destination: apply semantics, exactly-once, types, options.

Micro benchmark (``WALLABY_BENCH=1 pytest tests/test_sink_duckdb.py -k bench -s``;
2-core VM, duckdb 1.5.5, file database, batches of 5,000 rows, one epoch per
200,000 rows, i.e. write() x40 + commit() per epoch):

    1M narrow inserts (int8 key, int4, text):            740k - 1.04M rows/s
    1M mixed, 50% insert / 30% update / 20% delete:      840k - 1.04M rows/s
    (three runs each). Rarer shapes, measured ad hoc with the same harness:
    1M updates leaving a TOAST column unchanged:         ~430k rows/s
    same with 30% of them changing the key:              ~130-150k rows/s
    (the identity-chain path: pointer jumping + a LEFT JOIN on the target)
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dataflows.buildable import check_buildable
from sinks.base import PermanentSinkError, WriterSink
from sinks.duckdb.types import duckdb_type
from sinks.duckdb.writer import DuckDBOptions, DuckDBWriter, _AttachedFile, _safe_dsn, duckdb_sink
from sinks.sql.types import numeric_precision_scale
from tests.builders import Stream, col, dele, evolve, ins, numeric_typmod, read, table, table_changes, upd
from wallaby.core import registry
from wallaby.core.changes import OP_DDL, ChangeBatch, Position
from wallaby.core.spec import parse_flow

EXAMPLES = int(os.environ.get("WALLABY_HYPOTHESIS_EXAMPLES", "100"))
USERS = table("users", [col("id", "int4", key=True), col("name", "text"), col("big", "text")])


def make(
    dsn: str | Path = ":memory:", name: str = "duck", flow: str = "flow1", max_buffer_rows: int = 200_000,
    max_tx_bytes: int = 1 << 62, **opts
) -> DuckDBWriter:
    return DuckDBWriter(name, flow, DuckDBOptions(dsn=str(dsn), **opts), max_buffer_rows=max_buffer_rows,
                        max_tx_bytes=max_tx_bytes)


def rows(w: DuckDBWriter, sql: str) -> list[tuple]:
    return w.connection.execute(sql).fetchall()


def users(w: DuckDBWriter, tbl: str = "public.users") -> list[tuple]:
    return rows(w, f"SELECT id, name, big FROM {tbl} ORDER BY id")


def apply(w: DuckDBWriter, *batches: ChangeBatch) -> dict | None:
    for b in batches:
        w.write(b)
    return w.commit()


# --------------------------------------------------------------------------- target mode, keyed


def test_insert_update_delete():
    w, s = make(), Stream()
    state = apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"))))
    assert users(w) == [(1, "a", "A"), (2, "b", "B")]
    assert state == {"lsn": s.last.lsn, "ordinal": s.last.ordinal}
    apply(
        w, s.batch(s.rows(USERS, upd({"id": 1, "name": "a2", "big": "A2"}), dele(id=2), ins(id=3, name="c", big=None)))
    )
    assert users(w) == [(1, "a2", "A2"), (3, "c", None)]


def test_key_change():
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"))))
    apply(w, s.batch(s.rows(USERS, upd({"id": 10, "name": "a", "big": "A"}, before={"id": 1}))))
    assert users(w) == [(2, "b", "B"), (10, "a", "A")]
    # swap keys through a free slot, inside one batch: 2 -> 99, 10 -> 2, 99 -> 10
    apply(
        w,
        s.batch(
            s.rows(
                USERS,
                upd({"id": 99, "name": "b", "big": "B"}, before={"id": 2}),
                upd({"id": 2, "name": "a", "big": "A"}, before={"id": 10}),
                upd({"id": 10, "name": "b", "big": "B"}, before={"id": 99}),
            )
        ),
    )
    assert users(w) == [(2, "a", "A"), (10, "b", "B")]


def test_many_changes_to_one_key_in_one_batch_and_across_batches():
    w, s = make(), Stream()
    seg = s.rows(
        USERS, *[ins(id=1, name="v0", big="x")], *[upd({"id": 1, "name": f"v{i}", "big": "x"}) for i in range(1, 50)]
    )
    apply(w, s.batch(seg))
    assert users(w) == [(1, "v49", "x")]
    # across batches of one epoch
    for i in range(50, 60):
        w.write(s.batch(s.rows(USERS, upd({"id": 1, "name": f"v{i}", "big": "x"}))))
    w.commit()
    assert users(w) == [(1, "v59", "x")]
    # insert, delete, insert, update, delete, insert in one segment
    apply(
        w,
        s.batch(
            s.rows(
                USERS,
                ins(id=5, name="a", big="1"),
                dele(id=5),
                ins(id=5, name="b", big="2"),
                upd({"id": 5, "name": "c", "big": "3"}),
                dele(id=5),
                ins(id=5, name="d", big="4"),
                dele(id=1),
            )
        ),
    )
    assert users(w) == [(5, "d", "4")]


def test_delete_then_reinsert_across_epochs_and_in_one():
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="A"))))
    apply(w, s.batch(s.rows(USERS, dele(id=1)), s.rows(USERS, ins(id=1, name="again", big=None))))
    assert users(w) == [(1, "again", None)]
    apply(w, s.batch(s.rows(USERS, dele(id=1))))
    assert users(w) == []
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="third", big="T"))))
    assert users(w) == [(1, "third", "T")]


def test_unchanged_toast_keeps_stored_value():
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="HUGE"), ins(id=2, name="b", big="HUGE2"))))
    # across epochs: value comes from the table
    apply(w, s.batch(s.rows(USERS, upd({"id": 1, "name": "a2"}, unchanged=["big"]))))
    assert users(w) == [(1, "a2", "HUGE"), (2, "b", "HUGE2")]
    # within the epoch: from an earlier change of the same row, also across a key change
    apply(
        w,
        s.batch(
            s.rows(
                USERS,
                ins(id=3, name="c", big="C"),
                upd({"id": 3, "name": "c2"}, unchanged=["big"]),
                upd({"id": 1, "name": "a3", "big": "NEW"}),
                upd({"id": 1, "name": "a4"}, unchanged=["big"]),
                upd({"id": 20, "name": "b2"}, before={"id": 2}, unchanged=["big"]),
                upd({"id": 21, "name": "b3"}, before={"id": 20}, unchanged=["big"]),
            )
        ),
    )
    assert users(w) == [(1, "a4", "NEW"), (3, "c2", "C"), (21, "b3", "HUGE2")]
    # an unchanged TOAST value set to NULL earlier stays NULL
    apply(
        w,
        s.batch(
            s.rows(USERS, upd({"id": 3, "name": "c3", "big": None}), upd({"id": 3, "name": "c4"}, unchanged=["big"]))
        ),
    )
    assert users(w)[1] == (3, "c4", None)


def test_key_change_chain_resolves_toast_from_the_original_row():
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(USERS, *[ins(id=i, name=str(i), big=f"B{i}") for i in range(1, 6)])))
    # id = id + 10 for all rows, then again + 10, every update leaves big unchanged
    chain = [upd({"id": i + 10, "name": str(i)}, before={"id": i}, unchanged=["big"]) for i in range(5, 0, -1)]
    chain += [upd({"id": i + 20, "name": str(i)}, before={"id": i + 10}, unchanged=["big"]) for i in range(5, 0, -1)]
    apply(w, s.batch(s.rows(USERS, *chain)))
    assert users(w) == [(i + 20, str(i), f"B{i}") for i in range(1, 6)]


def test_composite_key_and_schema_option():
    t = table("kv", [col("a", "int4", key=True), col("b", "text", key=True), col("v", "int8")], schema="app")
    w, s = make(schema="wh"), Stream()
    apply(
        w,
        s.batch(
            s.rows(t, ins(a=1, b="x", v=1), ins(a=1, b="y", v=2), upd({"a": 1, "b": "x", "v": 3}), dele(a=1, b="y"))
        ),
    )
    assert rows(w, "SELECT a, b, v FROM wh.kv") == [(1, "x", 3)]


def test_table_option_sends_every_table_to_one_table():
    w, s = make(table="everything"), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None))))
    assert users(w, "public.everything") == [(1, "a", None)]
    assert rows(w, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'users'") == [(0,)]


def test_load_op_upserts():
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="A"))))
    apply(w, s.batch(s.rows(USERS, read(id=1, name="loaded", big="L"), read(id=2, name="b", big="B"))))
    assert users(w) == [(1, "loaded", "L"), (2, "b", "B")]


# --------------------------------------------------------------------------- REPLICA IDENTITY FULL

FULL = table("logs", [col("a", "int4", key=True), col("b", "text", key=True)], replica_identity="f")


def logs(w: DuckDBWriter) -> list[tuple]:
    return rows(w, "SELECT a, b FROM public.logs ORDER BY a, b NULLS FIRST")


def test_replica_identity_full_with_duplicate_rows():
    w, s = make(), Stream()
    apply(
        w, s.batch(s.rows(FULL, ins(a=1, b="x"), ins(a=1, b="x"), ins(a=1, b="x"), ins(a=2, b=None), ins(a=2, b=None)))
    )
    assert logs(w) == [(1, "x")] * 3 + [(2, None)] * 2
    # delete one of three duplicates, update one of two (NULL-matching), across epochs
    apply(w, s.batch(s.rows(FULL, dele(a=1, b="x"), upd({"a": 2, "b": "y"}, before={"a": 2, "b": None}))))
    assert logs(w) == [(1, "x")] * 2 + [(2, None), (2, "y")]
    # in one epoch: insert a duplicate, delete two, update the remaining one
    apply(
        w,
        s.batch(
            s.rows(
                FULL,
                ins(a=1, b="x"),
                dele(a=1, b="x"),
                dele(a=1, b="x"),
                upd({"a": 3, "b": "x"}, before={"a": 1, "b": "x"}),
                dele(a=2, b=None),
            )
        ),
    )
    assert logs(w) == [(2, "y"), (3, "x")]


def test_replica_identity_full_unchanged_toast_from_before_image():
    t = table("docs", [col("a", "int4"), col("body", "text")], replica_identity="f")
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(t, ins(a=1, body="LONG"))))
    apply(w, s.batch(s.rows(t, upd({"a": 2}, before={"a": 1, "body": "LONG"}, unchanged=["body"]))))
    assert rows(w, "SELECT a, body FROM public.docs") == [(2, "LONG")]


def test_keyless_update_without_before_image_is_an_error():
    t = table("nokey", [col("a", "int4")], replica_identity="d")
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(t, ins(a=1))))
    w.write(s.batch(s.rows(t, upd({"a": 2}))))
    with pytest.raises(PermanentSinkError, match="REPLICA IDENTITY FULL"):
        w.commit()


# --------------------------------------------------------------------------- events


def test_truncate_orders_with_changes_in_one_epoch():
    w, s = make(), Stream()
    other = table("other", [col("id", "int4", key=True)])
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None)), s.rows(other, ins(id=1))))
    w.write(
        s.batch(
            s.rows(USERS, ins(id=2, name="b", big=None)),
            s.rows(other, ins(id=2)),
            s.truncate(USERS),
            s.rows(USERS, ins(id=3, name="c", big=None)),
        )
    )
    w.commit()
    assert users(w) == [(3, "c", None)]
    assert rows(w, "SELECT id FROM public.other ORDER BY id") == [(1,), (2,)]
    # truncate of a table seen first in the truncate: created empty
    t = table("fresh", [col("id", "int4", key=True)])
    apply(w, s.batch(s.truncate(t, USERS)))
    assert rows(w, "SELECT count(*) FROM public.fresh") == [(0,)]
    assert users(w) == []


def test_truncate_after_mid_epoch_apply():
    w, s = make(max_buffer_rows=2), Stream()
    w.write(s.batch(s.rows(USERS, ins(id=1, name="a", big=None), ins(id=2, name="b", big=None))))  # applied now
    w.write(s.batch(s.truncate(USERS)))
    w.write(s.batch(s.rows(USERS, ins(id=3, name="c", big=None))))
    w.commit()
    assert users(w) == [(3, "c", None)]


def test_ddl_and_messages_are_ignored():
    w, s = make(), Stream()
    apply(
        w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None)), s.event(OP_DDL, USERS, sql="ALTER ..."), s.message())
    )
    assert users(w) == [(1, "a", None)]
    assert w.commit() == {"lsn": s.last.lsn, "ordinal": s.last.ordinal}


# --------------------------------------------------------------------------- schema evolution


def test_new_column_added_and_dropped_column_kept():
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"))))
    v2 = evolve(USERS, [*USERS.columns, col("age", "int4")])
    # v1 and v2 segments in one epoch: the v1 update does not touch age
    apply(
        w,
        s.batch(
            s.rows(v2, ins(id=3, name="c", big="C", age=30), upd({"id": 1, "name": "a", "big": "A", "age": 41})),
            s.rows(USERS, upd({"id": 1, "name": "a1", "big": "A"})),
        ),
    )
    assert rows(w, "SELECT id, name, age FROM public.users ORDER BY id") == [
        (1, "a1", 41),
        (2, "b", None),
        (3, "c", 30),
    ]
    # v3 drops big: the column stays, updated rows keep their value, new rows get NULL
    v3 = evolve(v2, [c for c in v2.columns if c.name != "big"])
    apply(w, s.batch(s.rows(v3, upd({"id": 2, "name": "b2", "age": 5}), ins(id=4, name="d", age=1))))
    assert rows(w, "SELECT id, name, big, age FROM public.users ORDER BY id") == [
        (1, "a1", "A", 41),
        (2, "b2", "B", 5),
        (3, "c", "C", 30),
        (4, "d", None, 1),
    ]
    # a key change carries the dropped column's value along; a delete + re-insert does not
    apply(
        w,
        s.batch(
            s.rows(
                v3,
                upd({"id": 10, "name": "a1", "age": 41}, before={"id": 1}),
                dele(id=3),
                ins(id=3, name="c", age=30),
            )
        ),
    )
    assert rows(w, "SELECT id, big FROM public.users ORDER BY id") == [(2, "B"), (3, None), (4, None), (10, "A")]
    cols = rows(w, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'users' ORDER BY column_index")
    assert [c for (c,) in cols] == ["id", "name", "big", "age"]


def test_drop_columns_follows_a_source_drop_after_the_rows_that_carried_it(tmp_path):
    dsn = tmp_path / "d.duckdb"
    w, s = make(dsn, drop_columns=True), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="A"))))
    v2 = evolve(USERS, [c for c in USERS.columns if c.name != "big"])
    # one epoch: a v1 insert (still carries big) and then v2 rows; big goes only after the v1 row is in
    apply(w, s.batch(s.rows(USERS, ins(id=2, name="b", big="B")), s.rows(v2, ins(id=3, name="c"))))
    cols = rows(w, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'users' ORDER BY column_index")
    assert [c for (c,) in cols] == ["id", "name"]
    assert rows(w, "SELECT id, name FROM public.users ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
    # a column the user added to the DuckDB table is not the source's: never dropped
    w.connection.execute("ALTER TABLE public.users ADD COLUMN note VARCHAR")
    w.close()
    # after a restart the previous shape comes from the meta table
    w = make(dsn, drop_columns=True)
    v3 = evolve(v2, [*v2.columns, col("age", "int4")])
    apply(w, s.batch(s.rows(v3, ins(id=4, name="d", age=4))))
    v4 = evolve(v3, [c for c in v3.columns if c.name != "age"])
    w.close()
    w = make(dsn, drop_columns=True)
    apply(w, s.batch(s.rows(v4, ins(id=5, name="e"))))
    cols = rows(w, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'users' ORDER BY column_index")
    assert [c for (c,) in cols] == ["id", "name", "note"]
    assert rows(w, "SELECT id, name FROM public.users ORDER BY id") == [(1, "a"), (2, "b"), (3, "c"), (4, "d"),
                                                                       (5, "e")]
    # a table created from an epoch that holds both shapes ends in the latest one
    fresh, s2 = make(drop_columns=True), Stream()
    apply(fresh, s2.batch(s2.rows(USERS, ins(id=1, name="a", big="A")), s2.rows(v2, ins(id=2, name="b"))))
    cols = rows(fresh, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'users' ORDER BY column_index")
    assert [c for (c,) in cols] == ["id", "name"]


def test_meta_table_contents():
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None))))
    meta = rows(
        w,
        "SELECT flow_id, source_schema, source_table, dest_schema, dest_table, schema_version, write_mode,"
        " columns_json::VARCHAR FROM main.__wallaby_meta",
    )
    assert len(meta) == 1
    assert meta[0][:7] == ("flow1", "public", "users", "public", "users", 1, "target")
    assert json.loads(meta[0][7]) == [
        {"name": "id", "pg_type": "int4", "duckdb_type": "INTEGER", "key": True, "nullable": True},
        {"name": "name", "pg_type": "text", "duckdb_type": "VARCHAR", "key": False, "nullable": True},
        {"name": "big", "pg_type": "text", "duckdb_type": "VARCHAR", "key": False, "nullable": True},
    ]
    v2 = evolve(USERS, [*USERS.columns, col("n", "numeric", typmod=numeric_typmod(10, 2))])
    apply(w, s.batch(s.rows(v2, ins(id=2, name="b", big=None, n=None))))
    meta = rows(w, "SELECT schema_version, columns_json::VARCHAR FROM main.__wallaby_meta")
    assert len(meta) == 1 and meta[0][0] == 2
    assert json.loads(meta[0][1])[-1]["duckdb_type"] == "DECIMAL(10,2)"


def test_meta_table_disabled():
    w, s = make(meta_table_enabled="false"), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None))))
    assert rows(w, "SELECT count(*) FROM duckdb_tables() WHERE table_name = '__wallaby_meta'") == [(0,)]


# --------------------------------------------------------------------------- append mode


def test_append_mode():
    w, s = make(write_mode="append"), Stream()
    apply(
        w,
        s.batch(
            s.rows(USERS, ins(id=1, name="a", big="A"), upd({"id": 1, "name": "b", "big": "A"}), dele(id=1)),
            s.truncate(USERS),
        ),
    )
    got = rows(w, "SELECT id, name, __op, __lsn, __ord, epoch_us(__ts) FROM public.users ORDER BY __lsn, __ord")
    assert [g[:3] for g in got] == [
        (1, "a", "insert"),
        (1, "b", "update"),
        (1, None, "delete"),
        (None, None, "truncate"),
    ]
    assert [(g[3], g[4]) for g in got] == [
        (s.last.lsn - 0x100, 1),
        (s.last.lsn - 0x100, 2),
        (s.last.lsn - 0x100, 3),
        (s.last.lsn, 1),
    ]
    assert got[0][5] == s.ts - 1000 and got[3][5] == s.ts
    types = dict(rows(w, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'users'"))
    assert types["__lsn"] == "UBIGINT" and types["__ts"] == "TIMESTAMP WITH TIME ZONE"


def test_append_mode_column_clash_is_an_error():
    t = table("clash", [col("id", "int4", key=True), col("__op", "text")])
    w, s = make(write_mode="append"), Stream()
    w.write(s.batch(s.rows(t, ins(id=1, __op="x"))))
    with pytest.raises(PermanentSinkError, match="clash"):
        w.commit()


# --------------------------------------------------------------------------- exactly once


def test_replay_after_commit_changes_nothing(tmp_path):
    dsn = tmp_path / "w.duckdb"
    s = Stream()
    batches = [
        s.batch(s.rows(USERS, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"))),
        s.batch(s.rows(USERS, upd({"id": 1, "name": "a2", "big": "A"}), dele(id=2))),
    ]
    w = make(dsn)
    state = apply(w, *batches)
    w.close()
    w = make(dsn)
    assert w.high_water == Position(state["lsn"], state["ordinal"])
    assert apply(w, *batches) == state
    assert users(w) == [(1, "a2", "A")]
    assert w.stats["skipped_rows"] == 4
    # a batch straddling the high-water: only the new part is applied
    straddle = ChangeBatch("flow1", [*batches[1].segments, s.rows(USERS, ins(id=2, name="again", big=None))], s.last)
    apply(w, straddle)
    assert users(w) == [(1, "a2", "A"), (2, "again", None)]
    # another destination name / flow on the same file keeps its own high-water
    other = make(dsn, name="duck2")
    assert other.high_water == Position(0, 0)


def test_crash_before_commit_leaves_nothing(tmp_path):
    dsn = tmp_path / "sub" / "dir" / "w.duckdb"  # parent directories are created
    s = Stream()
    first = s.batch(s.rows(USERS, ins(id=1, name="a", big="A")))
    second = s.batch(s.rows(USERS, ins(id=2, name="b", big="B"), upd({"id": 1, "name": "a2", "big": "A"})))
    w = make(dsn, max_buffer_rows=1)  # forces the apply inside the open transaction
    apply(w, first)
    w.write(second)
    assert w.stats["applies"] >= 2  # applied, not yet committed
    w.close()  # the process dies before commit()
    w = make(dsn)
    assert users(w) == [(1, "a", "A")]
    assert apply(w, first, second) == {"lsn": s.last.lsn, "ordinal": s.last.ordinal}
    assert users(w) == [(1, "a2", "A"), (2, "b", "B")]


def test_big_transaction_is_committed_early_and_replays_exactly_once(tmp_path):
    """Past max_tx_bytes the open transaction commits mid-epoch with its high-water; a crash after that (before the
    epoch's commit) replays the whole epoch without duplicating what was committed early."""
    dsn = tmp_path / "w.duckdb"
    s = Stream()
    batches = [s.batch(s.rows(USERS, ins(id=i, name=f"n{i}", big="x" * 100))) for i in range(1, 6)]
    batches.append(s.batch(s.rows(USERS, upd({"id": 1, "name": "changed", "big": "x" * 100}), dele(id=2))))
    w = make(dsn, max_buffer_rows=1, max_tx_bytes=1)  # every early apply is committed at once
    for b in batches[:4]:
        w.write(b)
    assert w.high_water == batches[3].position  # durable in DuckDB although commit() was not called
    w.close()  # the worker dies mid-epoch; the source resumes from its last snapshot (before batch 1)
    w = make(dsn, max_buffer_rows=1, max_tx_bytes=1)
    assert w.high_water == batches[3].position
    state = apply(w, *batches)
    assert state == {"lsn": s.last.lsn, "ordinal": s.last.ordinal}
    assert [(i, n) for i, n, _ in users(w)] == [(1, "changed"), (3, "n3"), (4, "n4"), (5, "n5")]
    assert w.stats["skipped_rows"] == 4


def test_commit_without_data():
    w = make()
    assert w.commit() is None
    s = Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None))))
    assert w.commit() == {"lsn": s.last.lsn, "ordinal": s.last.ordinal}


def test_sink_factory_builds_a_partition(tmp_path):
    sink = duckdb_sink("duck", "flow1", DuckDBOptions(dsn=str(tmp_path / "x.duckdb")))
    assert isinstance(sink, WriterSink) and sink.list_parts() == ["duck"]
    part = sink.build_part("step", "duck", None)
    s = Stream()
    part.write_batch([s.batch(s.rows(USERS, ins(id=1, name="a", big=None)))])
    assert part.snapshot() == {"lsn": s.last.lsn, "ordinal": s.last.ordinal}
    part.close()
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    assert con.execute("SELECT lsn, ordinal, flow_id, destination FROM main.__wallaby_state").fetchall() == [
        (s.last.lsn, s.last.ordinal, "flow1", "duck")
    ]
    con.close()


# --------------------------------------------------------------------------- types


def test_types_round_trip():
    t = table(
        "typed",
        [
            col("id", "int8", key=True),
            col("b", "bool"),
            col("i2", "int2"),
            col("f4", "float4"),
            col("f8", "float8"),
            col("n", "numeric", typmod=numeric_typmod(10, 2)),
            col("m", "money"),
            col("bin", "bytea"),
            col("d", "date"),
            col("tm", "time"),
            col("ts", "timestamp"),
            col("tstz", "timestamptz"),
            col("iv", "interval"),
            col("u", "uuid"),
            col("j", "jsonb"),
            col("arr", "_int4", base_type="int4", arrow_type=pa.list_(pa.list_(pa.int32()))),
            col("tags", "_text", base_type="text", arrow_type=pa.list_(pa.string())),
            col("ip", "inet"),
            col("o", "oid"),
            col("tz", "timetz"),
        ],
    )
    from decimal import Decimal

    w, s = make(), Stream()
    row = dict(
        id=1,
        b=True,
        i2=-3,
        f4=1.5,
        f8=float("nan"),
        n=Decimal("12.34"),
        m=Decimal("-5.10"),
        bin=b"\x00\xff",
        d=None,
        tm=None,
        ts=None,
        tstz=None,
        iv=pa.scalar((1, 2, 3_000), pa.month_day_nano_interval()).as_py(),
        u="a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        j='{"a": [1, 2]}',
        arr=[[1, 2], [3, None]],
        tags=["x", None],
        ip="10.0.0.1/8",
        o=4294967295,
        tz="04:05:06-08:00:30",
    )
    apply(w, s.batch(s.rows(t, ins(**row))))
    types = dict(rows(w, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'typed'"))
    assert types == {
        "id": "BIGINT",
        "b": "BOOLEAN",
        "i2": "SMALLINT",
        "f4": "FLOAT",
        "f8": "DOUBLE",
        "n": "DECIMAL(10,2)",
        "m": "DECIMAL(19,2)",
        "bin": "BLOB",
        "d": "DATE",
        "tm": "TIME",
        "ts": "TIMESTAMP",
        "tstz": "TIMESTAMP WITH TIME ZONE",
        "iv": "INTERVAL",
        "u": "UUID",
        "j": "JSON",
        "arr": "INTEGER[][]",
        "tags": "VARCHAR[]",
        "ip": "VARCHAR",
        "o": "UINTEGER",
        "tz": "VARCHAR",
    }
    got = rows(
        w,
        "SELECT b, i2, f4, isnan(f8), n::VARCHAR, m::VARCHAR, bin, datepart('month', iv), datepart('day', iv),"
        " datepart('microseconds', iv), u::VARCHAR, j->>'$.a[1]', arr, tags, ip, o, tz FROM public.typed",
    )
    assert got == [
        (
            True,
            -3,
            1.5,
            True,
            "12.34",
            "-5.10",
            b"\x00\xff",
            1,
            2,
            3,
            row["u"],
            "2",
            [[1, 2], [3, None]],
            ["x", None],
            "10.0.0.1/8",
            4294967295,
            "04:05:06-08:00:30",
        )
    ]


def test_infinity_dates_and_timestamps():
    t = table("inf", [col("id", "int4", key=True), col("d", "date"), col("ts", "timestamp"), col("tz", "timestamptz")])
    i32max, i32min, i64max, i64min = 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)
    s = Stream()
    s.tx()
    changes = [
        ins(id=1, d=i32max, ts=i64max, tz=i64max),
        ins(id=2, d=i32min, ts=i64min, tz=i64min),
        ins(id=3, d=0, ts=0, tz=0),
    ]
    for ch in changes:
        ch.position = s.next()
    seg = table_changes(
        t,
        changes,
        arrow_types={"d": pa.int32(), "ts": pa.int64(), "tz": pa.int64()},
    )
    # the source's Arrow types: date32 / timestamp[us] / timestamp[us, UTC] holding the sentinels
    rb = seg.rows
    rb = rb.set_column(1, pa.field("d", pa.date32()), rb.column(1).cast(pa.date32()))
    rb = rb.set_column(2, pa.field("ts", pa.timestamp("us")), rb.column(2).cast(pa.timestamp("us")))
    rb = rb.set_column(3, pa.field("tz", pa.timestamp("us", tz="UTC")), rb.column(3).cast(pa.timestamp("us", tz="UTC")))
    seg.rows = rb
    w = make()
    apply(w, s.batch(seg))
    got = rows(
        w,
        "SELECT id, d = 'infinity'::DATE, d = '-infinity'::DATE, ts = 'infinity'::TIMESTAMP,"
        " ts = '-infinity'::TIMESTAMP, tz = 'infinity'::TIMESTAMPTZ, tz = '-infinity'::TIMESTAMPTZ,"
        " isinf(d), CASE WHEN isinf(tz) THEN tz::VARCHAR ELSE epoch_us(tz)::VARCHAR END FROM public.inf ORDER BY id",
    )
    assert got == [
        (1, True, False, True, False, True, False, True, "infinity"),
        (2, False, True, False, True, False, True, True, "-infinity"),
        (3, False, False, False, False, False, False, False, "0"),
    ]


def test_nan_numeric_in_varchar_column():
    # unconstrained numeric: exact text, VARCHAR column
    t = table("nums", [col("id", "int4", key=True), col("x", "numeric")])
    w, s = make(), Stream()
    apply(w, s.batch(s.rows(t, ins(id=1, x="NaN"), ins(id=2, x="123456789012345678901234567890.000000001"))))
    assert rows(w, "SELECT x FROM public.nums ORDER BY id") == [("NaN",), ("123456789012345678901234567890.000000001",)]
    # numeric(10,2) mapped to VARCHAR with type_mappings: decimal batches and text (NaN) batches both land
    t2 = table("nums2", [col("id", "int4", key=True), col("x", "numeric", typmod=numeric_typmod(10, 2))])
    from decimal import Decimal

    w = make(type_mappings='{"numeric": "VARCHAR"}')
    apply(
        w,
        s.batch(
            s.rows(t2, ins(id=1, x=Decimal("1.50"))),
            s.rows(t2, ins(id=2, x="NaN"), ins(id=3, x="-Infinity"), arrow_types={"x": pa.string()}),
        ),
    )
    assert rows(w, "SELECT x FROM public.nums2 ORDER BY id") == [("1.50",), ("NaN",), ("-Infinity",)]


def test_decimal_column_receiving_nan_text_is_a_clear_error(tmp_path):
    from decimal import Decimal

    t = table("prices", [col("id", "int4", key=True), col("p", "numeric", typmod=numeric_typmod(10, 2))])
    dsn = tmp_path / "w.duckdb"
    w, s = make(dsn), Stream()
    apply(w, s.batch(s.rows(t, ins(id=1, p=Decimal("9.99")))))
    # text that fits is fine
    apply(w, s.batch(s.rows(t, ins(id=2, p="1.25"), arrow_types={"p": pa.string()})))
    w.write(
        s.batch(s.rows(t, ins(id=3, p=Decimal("7.00"))), s.rows(t, ins(id=4, p="NaN"), arrow_types={"p": pa.string()}))
    )
    with pytest.raises(PermanentSinkError) as err:
        w.commit()
    msg = str(err.value)
    assert "'duck'" in msg and "public.prices" in msg and "'p'" in msg and "DECIMAL(10,2)" in msg
    assert "type_mappings" in msg and '{"numeric": "VARCHAR"}' in msg
    with pytest.raises(PermanentSinkError, match="restarted"):
        w.write(s.batch(s.rows(t, ins(id=5, p=Decimal("1")))))
    w.close()
    w = make(dsn)
    assert rows(w, "SELECT id, p::VARCHAR FROM public.prices ORDER BY id") == [(1, "9.99"), (2, "1.25")]


def test_type_map():
    assert duckdb_type(col("a", "int4")) == "INTEGER"
    assert duckdb_type(col("a", "numeric", typmod=numeric_typmod(38, 38))) == "DECIMAL(38,38)"
    assert duckdb_type(col("a", "numeric", typmod=numeric_typmod(39, 2))) == "VARCHAR"
    assert duckdb_type(col("a", "numeric", typmod=numeric_typmod(5, -2))) == "VARCHAR"
    assert numeric_precision_scale(numeric_typmod(5, -2)) == (5, -2)
    assert duckdb_type(col("a", "numeric")) == "VARCHAR"
    assert duckdb_type(col("a", "_numeric", typmod=numeric_typmod(8, 3), arrow_type=pa.list_(pa.decimal128(8, 3)))) == (
        "DECIMAL(8,3)[]"
    )
    assert duckdb_type(col("a", "_float8", base_type="float8", arrow_type=pa.list_(pa.list_(pa.float64())))) == (
        "DOUBLE[][]"
    )
    assert duckdb_type(col("a", "_int4", base_type="int4", arrow_type=pa.list_(pa.int32())), {"int4": "BIGINT"}) == (
        "BIGINT[]"
    )
    assert duckdb_type(col("a", "posint", base_type="int4")) == "INTEGER"  # a domain
    assert duckdb_type(col("a", "mood")) == "VARCHAR"  # an enum
    geo = col("g", "geometry", extension="postgis")
    assert duckdb_type(geo) == "VARCHAR"
    assert duckdb_type(geo, {"ext:postgis.geometry": "BLOB"}) == "BLOB"
    assert duckdb_type(geo, {"ext:postgis": "BLOB"}) == "BLOB"
    assert duckdb_type(col("j", "jsonb"), {"jsonb": "VARCHAR"}) == "VARCHAR"
    for name, want in [("timetz", "VARCHAR"), ("inet", "VARCHAR"), ("xml", "VARCHAR"), ("bpchar", "VARCHAR")]:
        assert duckdb_type(col("x", name)) == want


def test_type_mappings_text_and_file(tmp_path):
    f = tmp_path / "map.yaml"
    f.write_text("# overrides\njsonb: VARCHAR\next:postgis.geometry: BLOB\n")
    o = DuckDBOptions(dsn=":memory:", type_mappings_file=str(f), type_mappings="timetz: TIMETZ")
    assert o.mappings() == {"jsonb": "VARCHAR", "ext:postgis.geometry": "BLOB", "timetz": "TIMETZ"}
    assert DuckDBOptions(dsn=":memory:", type_mappings={"a": "B"}).mappings() == {"a": "B"}
    with pytest.raises(ValidationError, match="type_mappings_file"):
        DuckDBOptions(dsn=":memory:", type_mappings_file=str(tmp_path / "missing.json"))
    with pytest.raises(ValidationError, match="type_mappings"):
        DuckDBOptions(dsn=":memory:", type_mappings="[1, 2]")


# --------------------------------------------------------------------------- options


def test_option_defaults():
    o = DuckDBOptions(dsn="./data/warehouse.duckdb")
    # One model: the flow spec's (sinks.duckdb.options), which also holds the metadata options.
    assert DuckDBOptions is registry.plugin("duckdb").options
    assert o.model_dump(by_alias=True).items() >= {
        "dsn": "./data/warehouse.duckdb",
        "schema": None,
        "table": None,
        "write_mode": "target",
        "batch_mode": "target",
        "batch_resolution": "none",
        "staging_schema": None,
        "staging_table": None,
        "staging_suffix": "_staging",
        "meta_table_enabled": True,
        "drop_columns": False,
        "type_mappings": None,
        "type_mappings_file": None,
    }.items()


def test_every_option_from_strings():
    o = DuckDBOptions.model_validate(
        {
            "dsn": ":memory:",
            "schema": "wh",
            "table": "t",
            "write_mode": "append",
            "batch_mode": "target",
            "batch_resolution": "replace",
            "staging_schema": "st",
            "staging_table": "stt",
            "staging_suffix": "_s",
            "meta_table_enabled": "false",
            "drop_columns": "true",
            "type_mappings": '{"jsonb": "VARCHAR"}',
            "type_mappings_file": "",
        }
    )
    assert (o.schema_name, o.table, o.write_mode, o.batch_resolution, o.meta_table_enabled, o.drop_columns) == (
        "wh",
        "t",
        "append",
        "replace",
        False,
        True,
    )
    assert (o.staging_schema, o.staging_table, o.staging_suffix, o.type_mappings_file) == ("st", "stt", "_s", None)
    assert DuckDBOptions(dsn=":memory:", meta_table_enabled="true", schema="").meta_table_enabled is True


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({}, "dsn"),
        ({"dsn": ""}, "dsn"),
        ({"dsn": "x", "write_mode": "upsert"}, "write_mode"),
        ({"dsn": "x", "batch_mode": "bulk"}, "batch_mode"),
        ({"dsn": "x", "batch_resolution": "merge"}, "batch_resolution"),
        ({"dsn": "x", "meta_table_enabled": "maybe"}, "meta_table_enabled"),
        ({"dsn": "x", "nonsense": "1"}, "nonsense"),
        ({"dsn": "x", "type_mappings_file": "/nonexistent/map.json"}, "type_mappings_file"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValidationError) as err:
        DuckDBOptions.model_validate(options)
    assert field in str(err.value)


def test_staging_options_are_buildable():
    # Validated by the options (USAGE.md names them) and built (tests/test_staging.py): no longer refused.
    spec = parse_flow({"name": "f", "source": {"type": "postgres", "options": {
        "dsn": "postgresql://u@127.0.0.1:1/db", "slot": "s", "publication": "p"}},
        "destinations": [{"name": "d", "type": "duckdb", "options": {
            "dsn": ":memory:", "batch_mode": "staging", "staging_suffix": "_x", "batch_resolution": "none"}}]})
    check_buildable(spec)


def test_writer_accepts_an_options_dict_and_reports_open_errors(tmp_path):
    w = DuckDBWriter("duck", "f", {"dsn": ":memory:"})
    assert w.commit() is None
    (tmp_path / "file").write_text("")
    with pytest.raises(PermanentSinkError, match="duck"):
        make(tmp_path / "file" / "x.duckdb")  # parent is a file


def test_dsn_redaction():
    assert _safe_dsn("./data/warehouse.duckdb") == "./data/warehouse.duckdb"
    assert _safe_dsn(":memory:") == ":memory:"
    assert _safe_dsn("md:db?motherduck_token=secret") == "<redacted dsn>"


# --------------------------------------------------------------------------- property tests


def _split(draw, items: list) -> list[list]:
    """Cut a list into consecutive non-empty chunks at random points."""
    out, cur = [], []
    for it in items:
        cur.append(it)
        if draw(st.integers(0, 3)) == 0:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


@st.composite
def keyed_histories(draw):
    """Valid WAL histories on a key space of 6 and the expected final table."""
    model: dict[int, tuple[str | None, str | None]] = {}
    ops: list = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["ins", "ins", "upd", "upd", "upd", "del", "trunc", "rekey"]))
        free = [k for k in range(6) if k not in model]
        used = sorted(model)
        v = draw(st.sampled_from(["a", "b", None]))
        big = draw(st.sampled_from(["X", "Y", None]))
        if kind == "trunc":
            ops.append("truncate")
            model.clear()
        elif kind == "ins" and free:
            k = draw(st.sampled_from(free))
            ops.append(ins(id=k, v=v, big=big))
            model[k] = (v, big)
        elif kind == "upd" and used:
            k = draw(st.sampled_from(used))
            if draw(st.booleans()):
                ops.append(upd({"id": k, "v": v}, unchanged=["big"]))
                model[k] = (v, model[k][1])
            else:
                ops.append(upd({"id": k, "v": v, "big": big}))
                model[k] = (v, big)
        elif kind == "rekey" and used and free:
            k, k2 = draw(st.sampled_from(used)), draw(st.sampled_from(free))
            keep = draw(st.booleans())
            ops.append(
                upd(
                    {"id": k2, "v": v, **({} if keep else {"big": big})},
                    before={"id": k},
                    unchanged=["big"] if keep else None,
                )
            )
            old = model.pop(k)
            model[k2] = (v, old[1] if keep else big)
        elif kind == "del" and used:
            k = draw(st.sampled_from(used))
            ops.append(dele(id=k))
            del model[k]
    return ops, model


def _feed(draw, ops: list, t, stream: Stream) -> list[tuple[ChangeBatch, bool]]:
    """Segments -> batches; each batch flagged True when an epoch ends (commit) after it."""
    segments = []
    for chunk in _split(draw, ops):
        run: list = []
        for op in chunk:
            if op == "truncate":
                if run:
                    segments.append(stream.rows(t, *run))
                    run = []
                segments.append(stream.truncate(t))
            else:
                run.append(op)
        if run:
            segments.append(stream.rows(t, *run))
    return [(stream.batch(*segs), draw(st.booleans())) for segs in _split(draw, segments)]


KV = table("kv", [col("id", "int4", key=True), col("v", "text"), col("big", "text")])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_keyed_history_matches_model(data):
    ops, model = data.draw(keyed_histories())
    batches = _feed(data.draw, ops, KV, Stream())
    cap = data.draw(st.sampled_from([1, 3, 200_000]))
    tx_cap = data.draw(st.sampled_from([1, 1 << 62]))  # early commits of the open transaction, or none
    crash_at = data.draw(st.integers(0, len(batches)))
    # early commits at row group ends (ROW_GROUP_ROWS): any row group size, waited for or not (ROW_GROUP_HOLD)
    row_groups = mock.patch.multiple("sinks.duckdb.writer", ROW_GROUP_ROWS=data.draw(st.sampled_from([2, 3, 122_880])),
                                     ROW_GROUP_HOLD=data.draw(st.sampled_from([0, 1 << 40])))
    with tempfile.TemporaryDirectory() as tmp, row_groups:
        dsn = Path(tmp) / "p.duckdb"
        w = make(dsn, max_buffer_rows=cap, max_tx_bytes=tx_cap)
        for i, (b, end_epoch) in enumerate(batches):
            if i == crash_at:  # die without committing, restart and replay everything from the start
                w.close()
                w = make(dsn, max_buffer_rows=cap, max_tx_bytes=tx_cap)
                for b2, end2 in batches[:i]:
                    w.write(b2)
                    if end2:
                        w.commit()
            w.write(b)
            if end_epoch:
                w.commit()
        w.commit()
        if rows(w, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'kv'") == [(0,)]:
            got = {}  # nothing but truncates of a never-seen table, or no ops
        else:
            got = {r[0]: (r[1], r[2]) for r in rows(w, "SELECT id, v, big FROM public.kv")}
            assert rows(w, "SELECT count(*) FROM public.kv")[0][0] == len(got)
        w.close()
    assert got == model


@st.composite
def full_histories(draw):
    """REPLICA IDENTITY FULL histories (duplicates allowed) and the expected multiset."""
    bag: list[tuple[int, str | None]] = []
    ops: list = []
    values = st.tuples(st.integers(0, 2), st.sampled_from(["x", "y", None]))
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["ins", "ins", "upd", "del", "trunc"]))
        if kind == "trunc":
            ops.append("truncate")
            bag.clear()
        elif kind == "ins" or not bag:
            a, b = draw(values)
            ops.append(ins(a=a, b=b))
            bag.append((a, b))
        elif kind == "upd":
            old = bag.pop(draw(st.integers(0, len(bag) - 1)))
            a, b = draw(values)
            if draw(st.booleans()):
                ops.append(upd({"a": a}, before={"a": old[0], "b": old[1]}, unchanged=["b"]))
                b = old[1]
            else:
                ops.append(upd({"a": a, "b": b}, before={"a": old[0], "b": old[1]}))
            bag.append((a, b))
        else:
            old = bag.pop(draw(st.integers(0, len(bag) - 1)))
            ops.append(dele(a=old[0], b=old[1]))
    return ops, bag


FULL2 = table("bag", [col("a", "int4", key=True), col("b", "text", key=True)], replica_identity="f")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_replica_identity_full_matches_multiset(data):
    ops, bag = data.draw(full_histories())
    w = make(max_buffer_rows=data.draw(st.sampled_from([2, 200_000])),
             max_tx_bytes=data.draw(st.sampled_from([1, 1 << 62])))
    for b, end_epoch in _feed(data.draw, ops, FULL2, Stream()):
        w.write(b)
        if end_epoch:
            w.commit()
    w.commit()
    got = rows(w, "SELECT a, b FROM public.bag")
    key = lambda r: (r[0], r[1] or "")  # noqa: E731
    assert sorted(got, key=key) == sorted(bag, key=key)


# --------------------------------------------------------------------------- benchmark


def _bench(dsn: Path, mixed: bool, n: int = 1_000_000, batch: int = 5_000, epoch: int = 200_000) -> float:
    t = table("bench", [col("id", "int8", key=True), col("a", "int4"), col("b", "text")])
    s = Stream()
    rnd = random.Random(7)
    live: list[int] = []
    next_id = 0
    prepared = []
    for _ in range(0, n, batch):
        s.tx()
        ids, a_vals, b_vals, ops, before = [], [], [], [], []
        for _ in range(batch):
            r = rnd.random()
            if not mixed or r < 0.5 or len(live) < 1000:
                ids.append(next_id)
                live.append(next_id)
                next_id += 1
                ops.append("insert")
                before.append(None)
            elif r < 0.8:
                ids.append(live[rnd.randrange(len(live))])
                ops.append("update")
                before.append(None)
            else:
                j = rnd.randrange(len(live))
                live[j], live[-1] = live[-1], live[j]
                before.append(live.pop())
                ids.append(None)
                ops.append("delete")
            a_vals.append(None if ops[-1] == "delete" else len(ids))
            b_vals.append(None if ops[-1] == "delete" else f"value-{len(ids)}")
        k = len(ids)
        start = s.ordinal
        s.ordinal += k
        s.last = Position(s.lsn, s.ordinal)
        cols = {
            "id": pa.array(ids, pa.int64()),
            "a": pa.array(a_vals, pa.int32()),
            "b": pa.array(b_vals, pa.string()),
            "__op": pa.array(ops),
            "__lsn": pa.array([s.lsn] * k, pa.uint64()),
            "__ord": pa.array(range(start + 1, start + k + 1), pa.uint64()),
            "__ts": pa.array([s.ts] * k, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "__xid": pa.array([s.xid] * k, pa.uint32()),
            "__unchanged": pa.nulls(k, pa.list_(pa.string())),
        }
        if mixed:
            cols |= {
                "__before.id": pa.array(before, pa.int64()),
                "__before.a": pa.nulls(k, pa.int32()),
                "__before.b": pa.nulls(k, pa.string()),
            }
        from wallaby.core.changes import TableChanges

        prepared.append(s.batch(TableChanges(t, pa.RecordBatch.from_pydict(cols))))
    w = make(dsn)
    t0 = time.perf_counter()
    done = 0
    for b in prepared:
        w.write(b)
        done += len(b)
        if done % epoch == 0:
            w.commit()
    w.commit()
    elapsed = time.perf_counter() - t0
    expect = len(live)
    assert rows(w, "SELECT count(*) FROM public.bench") == [(expect,)]
    w.close()
    return n / elapsed


@pytest.mark.skipif(not os.environ.get("WALLABY_BENCH"), reason="set WALLABY_BENCH=1 to run the micro benchmark")
def test_bench(tmp_path):
    inserts = _bench(tmp_path / "ins.duckdb", mixed=False)
    mixed = _bench(tmp_path / "mixed.duckdb", mixed=True)
    print(f"\n1M narrow inserts: {inserts:,.0f} rows/s; 1M mixed insert/update/delete: {mixed:,.0f} rows/s")


def test_inserts_above_every_key_skip_the_upsert_delete_and_others_still_upsert():
    """An epoch of inserts whose integer keys are all above the target's highest needs no delete before its insert
    (an ETL load, ids that only grow); any other epoch still upserts: an insert of a key already there, after an
    update that moved a key up, after a delete, across a writer started again on the same file."""
    path = Path(tempfile.mkdtemp()) / "k.duckdb"
    w, s = make(path, release_file=False), Stream()  # one connection: the spy below sees every statement
    deletes: list[str] = []
    real = w._con

    class Spy:  # counts the statements that delete from the target
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            if sql.startswith('DELETE FROM "public"."users"'):
                deletes.append(sql)
            return real.execute(sql, *args)

    w._con = Spy()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None), ins(id=2, name="b", big=None))))
    apply(w, s.batch(s.rows(USERS, ins(id=3, name="c", big=None), ins(id=5, name="e", big=None))))
    assert deletes == []  # an empty table, then keys above 2
    apply(w, s.batch(s.rows(USERS, ins(id=4, name="d", big=None))))  # below the highest: it may be there
    assert len(deletes) == 1
    apply(w, s.batch(s.rows(USERS, upd({"id": 9, "name": "a9", "big": None}, before={"id": 1}))))
    deletes.clear()
    apply(w, s.batch(s.rows(USERS, ins(id=9, name="again", big=None))))  # 9 is there now: an upsert
    assert len(deletes) == 1
    assert users(w) == [(2, "b", None), (3, "c", None), (4, "d", None), (5, "e", None), (9, "again", None)]
    w.close()
    w2 = make(path)  # a new writer reads the bound from the file
    apply(w2, s.batch(s.rows(USERS, ins(id=9, name="upsert", big=None), ins(id=10, name="j", big=None))))
    assert users(w2)[-2:] == [(9, "upsert", None), (10, "j", None)]
    w2.close()


def test_closing_the_file_after_a_catch_up_checkpoints_on_every_core(monkeypatch):
    """The close that folds a catch-up's log into the file runs with DuckDB's threads raised to the machine's cores
    (the source and walsender are idle then); a close after less than FOLD_WIDE_BYTES of changes, and the file opened
    again, stay on one thread. Nothing is lost either way."""
    import sinks.duckdb.writer as writer_module

    monkeypatch.setattr(writer_module, "FOLD_THREADS", 2)
    path = Path(tempfile.mkdtemp()) / "fold.duckdb"
    w, s = make(path), Stream()  # release_file: the file is let go after each epoch's commit
    statements: list[str] = []
    w.connection  # noqa: B018 - opens the file: attached to the writer's in-memory database (release_file)
    real = w._file.base

    class Spy:  # the in-memory database's own connection: it attaches, detaches and sets the threads
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            statements.append(sql)
            return real.execute(sql, *args)

    w._file.base = Spy()

    monkeypatch.setattr(writer_module, "FOLD_WIDE_BYTES", 1 << 40)
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None))))
    assert w._released and statements[-1].startswith("DETACH") and "SET threads = 2" not in statements  # one thread

    monkeypatch.setattr(writer_module, "FOLD_WIDE_BYTES", 0)
    apply(w, s.batch(s.rows(USERS, ins(id=2, name="b", big=None))))
    assert w._released and statements[-3:-1] == ["SET threads = 2", 'DETACH "fold"']  # the close, on two threads

    assert w.connection.execute("SELECT current_setting('threads')").fetchone()[0] == 1  # opened again: one
    assert users(w) == [(1, "a", None), (2, "b", None)]
    w.close()


def test_the_file_is_attached_to_one_in_memory_database_per_process(tmp_path):
    """release_file: the writer holds its file attached to an in-memory DuckDB; letting go detaches it (the file is
    checkpointed: no WAL left) and another connection of this process may open it; a writer that needs the file
    while such a connection holds it waits for it (DuckDB's "Unique file handle conflict", not a failure). Two
    writers of one file share its attachment."""
    path = tmp_path / "attached.duckdb"
    w, other, s = make(path), make(path, name="duck2"), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None))))
    apply(other, s.batch(s.rows(USERS, ins(id=2, name="b", big=None))))
    assert w._file is other._file and w._released and other._released
    assert not Path(f"{path}.wal").exists()  # detached: checkpointed
    assert rows(w, "SELECT current_database()") == [("attached",)]  # named as duckdb.connect names it
    w.flush()  # (rows() opened the file again: let go of it as a quiet stream does)
    assert w._released and w._file.holders == 0
    held = duckdb.connect(str(path))  # this process, while the writers are let go of
    assert held.execute("SELECT count(*) FROM public.users").fetchone() == (2,)
    threading.Timer(0.3, held.close).start()
    apply(w, s.batch(s.rows(USERS, ins(id=3, name="c", big=None))))  # waits for `held`
    assert [r[0] for r in users(w)] == [1, 2, 3]
    w.close()
    other.close()
    assert str(path.resolve()) not in _AttachedFile._files  # the last writer closed the in-memory database


def _commits_counting(w: DuckDBWriter, tbl: str = "public.users") -> list[int]:
    """The rows ``tbl`` holds after each of ``w``'s commits, as they happen."""
    counts: list[int] = []
    real = w._commit_at

    def spy(mark: Position) -> None:
        real(mark)
        counts.append(w._con.execute(f"SELECT count(*) FROM {tbl}").fetchone()[0])

    w._commit_at = spy
    return counts


def test_inserts_past_max_tx_bytes_commit_at_row_group_ends(tmp_path, monkeypatch):
    """A transaction of inserts past max_tx_bytes commits at the last row group end its rows passed, the rows after
    it beginning the next transaction (a partial row group per transaction makes DuckDB's checkpoint rewrite the
    table: ROW_GROUP_ROWS); held open until a row group's end while one costs at most ROW_GROUP_HOLD times
    max_tx_bytes. A crash after such a commit replays from its high-water: every row once."""
    import sinks.duckdb.writer as writer_module

    monkeypatch.setattr(writer_module, "ROW_GROUP_ROWS", 4)
    monkeypatch.setattr(writer_module, "ROW_GROUP_HOLD", 1 << 40)  # any row width waits for its row group
    s = Stream()
    batches = [s.batch(s.rows(USERS, ins(id=i, name=f"n{i}", big=None))) for i in range(1, 11)]
    w = make(tmp_path / "rg.duckdb", max_buffer_rows=3, max_tx_bytes=1)  # an apply every 3 rows, each past the cap
    counts = _commits_counting(w)
    for b in batches[:9]:
        w.write(b)
    assert counts == [4, 8]  # applies of rows 1-3 (held), 4-6 (cut after 4), 7-9 (cut after 8)
    w.close()  # dies mid-epoch: rows 9 was applied, not committed
    w = make(tmp_path / "rg.duckdb", max_buffer_rows=3, max_tx_bytes=1)
    assert w.high_water == batches[7].position
    apply(w, *batches)
    assert [r[0] for r in users(w)] == list(range(1, 11)) and w.stats["skipped_rows"] == 8
    w.close()

    monkeypatch.setattr(writer_module, "ROW_GROUP_HOLD", 0)  # rows too wide to wait for a row group: the cap rules
    w, s = make(tmp_path / "cap.duckdb", max_buffer_rows=3, max_tx_bytes=1), Stream()
    counts = _commits_counting(w)
    apply(w, *[s.batch(s.rows(USERS, ins(id=i, name=f"n{i}", big=None))) for i in range(1, 11)])
    assert counts == [3, 6, 9, 10]
    w.close()

    monkeypatch.setattr(writer_module, "ROW_GROUP_HOLD", 1 << 40)  # an apply with an update commits at the cap
    w, s = make(tmp_path / "mixed.duckdb", max_buffer_rows=3, max_tx_bytes=1), Stream()
    counts = _commits_counting(w)
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None), ins(id=2, name="b", big=None),
                            upd({"id": 1, "name": "a2", "big": None}))),
          *[s.batch(s.rows(USERS, ins(id=i, name=f"n{i}", big=None))) for i in range(3, 9)])
    assert counts == [2, 6, 8]  # then the inserts' own transaction: rows 3-5 held, cut after 4 more
    w.close()
