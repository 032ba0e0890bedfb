"""DuckLake destination: the DuckDB writer on a DuckLake catalog, against real engines.

Writer-level tests build change batches (tests/builders.py) and run them against a DuckDB-file catalog and a
``sqlite:`` catalog (one against a ``postgres:`` catalog, one with its Parquet files on the moto S3 server); the
end-to-end tests stream a real Postgres into the lake with ``wallaby-worker`` (the tricky-type table, random
histories, kill -9 at random moments, a second process reading the lake while a worker writes it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import random
import subprocess
import sys
import textwrap
import time
import uuid
from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sinks.base import PermanentSinkError, SchemaChangeError, WriterSink
from sinks.ducklake import PLUGIN
from sinks.ducklake.checks import check_ducklake_paths
from sinks.ducklake.options import DuckLakeDestinationOptions
from sinks.ducklake.writer import (
    DuckLakeWriter,
    attach_lake,
    discard_position,
    extension_problems,
    make_sink,
    resolve_staging,
    s3_secret_sql,
    stored_position,
)
from tests import WORKER
from tests.builders import Stream, col, dele, evolve, ins, numeric_typmod, read, table, upd
from tests.flows import pg_rows, run_worker, slot_confirmed, worker_env, worker_flow
from tests.histories import create_tables, history, play
from tests.killkit import ItemWrites, create_item_tables, kill_at_random
from tests.s3_server import s3_server  # noqa: F401 - the fixture
from wallaby.core import registry
from wallaby.core.changes import Position
from wallaby.core.errors import ConfigError
from wallaby.core.options import validate_options
from wallaby.core.spec import parse_flow

ROOT = Path(__file__).resolve().parent.parent
USERS = table("users", [col("id", "int4", key=True), col("name", "text"), col("big", "text")])
FULL = table("logs", [col("a", "int4", key=True), col("b", "text", key=True)], replica_identity="f")
CATALOGS = ["duckdb", "sqlite"]


def lake_options(tmp_path: Path, kind: str = "duckdb", **opts) -> DuckLakeDestinationOptions:
    catalog = {"duckdb": str(tmp_path / "lake" / "meta.ducklake"),
               "sqlite": f"sqlite:{tmp_path / 'lake' / 'meta.sqlite'}"}.get(kind, kind)
    (tmp_path / "lake").mkdir(exist_ok=True)
    base = {"dsn": str(tmp_path / "host.duckdb"), "catalog": catalog, "data_path": str(tmp_path / "lake" / "data")}
    return DuckLakeDestinationOptions.model_validate({**base, **opts})


def make(tmp_path: Path, kind: str = "duckdb", name: str = "lake", flow: str = "flow1", max_buffer_rows: int = 200_000,
         max_tx_bytes: int = 1 << 62, **opts) -> DuckLakeWriter:
    return DuckLakeWriter(name, flow, lake_options(tmp_path, kind, **opts), max_buffer_rows=max_buffer_rows,
                          max_tx_bytes=max_tx_bytes)


def rows(w: DuckLakeWriter, sql: str) -> list[tuple]:
    return [tuple(r) for r in w.connection.execute(sql).fetchall()]


def users(w: DuckLakeWriter, tbl: str = "public.users") -> list[tuple]:
    return rows(w, f"SELECT id, name, big FROM {tbl} ORDER BY id")


def apply(w: DuckLakeWriter, *batches) -> dict | None:
    for b in batches:
        w.write(b)
    return w.commit()


def snapshots(w: DuckLakeWriter) -> list[int]:
    return [r[0] for r in rows(w, "SELECT snapshot_id FROM ducklake_snapshots('ducklake') ORDER BY 1")]


def read_lake(options: DuckLakeDestinationOptions, sql: str) -> list[tuple]:
    """``sql`` on the lake through a connection of its own (read-only attach), as a reader would."""
    con = duckdb.connect(":memory:")
    try:
        attach_lake(con, options, "reader", read_only=True)
        con.execute("SET TimeZone = 'UTC'")
        return [tuple(r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()


# --------------------------------------------------------------------------- keyed, keyless, append, truncate


@pytest.mark.parametrize("kind", CATALOGS)
def test_keyed_upserts_deletes_key_changes_and_unchanged_toast(tmp_path, kind):
    w, s = make(tmp_path, kind), Stream()
    state = apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"),
                                    ins(id=3, name="c", big="C"))))
    assert state == {"lsn": s.last.lsn, "ordinal": s.last.ordinal}
    assert users(w) == [(1, "a", "A"), (2, "b", "B"), (3, "c", "C")]
    # an insert of a present key upserts; updates, deletes, a key change, unchanged TOAST values across epochs
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a1", big="A1"), upd({"id": 2, "name": "b2"}, unchanged=["big"]),
                            dele(id=3), upd({"id": 20, "name": "b3"}, before={"id": 2}, unchanged=["big"]))))
    assert users(w) == [(1, "a1", "A1"), (20, "b3", "B")]
    # inside one epoch: a chain of key changes keeps the TOAST value of the original row; swap keys via a free slot
    apply(w, s.batch(s.rows(USERS, ins(id=5, name="e", big="E"), upd({"id": 6, "name": "e"}, before={"id": 5},
                                                                      unchanged=["big"]),
                            upd({"id": 99, "name": "x"}, before={"id": 1}, unchanged=["big"]),
                            upd({"id": 1, "name": "y"}, before={"id": 20}, unchanged=["big"]),
                            upd({"id": 20, "name": "z", "big": "Z"}, before={"id": 99}))))
    assert users(w) == [(1, "y", "B"), (6, "e", "E"), (20, "z", "Z")]
    # many changes of one key in one epoch, across batches
    for i in range(5):
        w.write(s.batch(s.rows(USERS, upd({"id": 6, "name": f"v{i}", "big": "E"}))))
    w.write(s.batch(s.rows(USERS, dele(id=6), ins(id=6, name="again", big=None))))
    w.commit()
    assert users(w) == [(1, "y", "B"), (6, "again", None), (20, "z", "Z")]
    w.close()


@pytest.mark.parametrize("kind", CATALOGS)
def test_keyless_tables_are_a_multiset(tmp_path, kind):
    w, s = make(tmp_path, kind), Stream()

    def logs() -> list[tuple]:
        return rows(w, "SELECT a, b FROM public.logs ORDER BY a, b NULLS FIRST")

    apply(w, s.batch(s.rows(FULL, ins(a=1, b="x"), ins(a=1, b="x"), ins(a=1, b="x"), ins(a=2, b=None),
                            ins(a=2, b=None))))
    assert logs() == [(1, "x")] * 3 + [(2, None)] * 2
    apply(w, s.batch(s.rows(FULL, dele(a=1, b="x"), upd({"a": 2, "b": "y"}, before={"a": 2, "b": None}))))
    assert logs() == [(1, "x")] * 2 + [(2, None), (2, "y")]
    apply(w, s.batch(s.rows(FULL, ins(a=1, b="x"), dele(a=1, b="x"), dele(a=1, b="x"),
                            upd({"a": 3, "b": "x"}, before={"a": 1, "b": "x"}), dele(a=2, b=None))))
    assert logs() == [(2, "y"), (3, "x")]
    # many rows, so DuckLake writes Parquet files (not inlined rows): deletes by row id across files
    apply(w, s.batch(s.rows(FULL, *[ins(a=i % 7, b="p") for i in range(300)])))
    apply(w, s.batch(s.rows(FULL, *[dele(a=i, b="p") for i in range(7)], ins(a=100, b="q"))))
    got = rows(w, "SELECT a, count(*) FROM public.logs WHERE b = 'p' GROUP BY a ORDER BY a")
    assert got == [(i, len(range(i, 300, 7)) - 1) for i in range(7)]
    w.close()


@pytest.mark.parametrize("kind", CATALOGS)
def test_append_mode_keeps_every_change(tmp_path, kind):
    w, s = make(tmp_path, kind, write_mode="append"), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="A"), upd({"id": 1, "name": "b", "big": "A"}),
                            dele(id=1)), s.truncate(USERS)))
    got = rows(w, "SELECT id, name, __op FROM public.users ORDER BY __lsn, __ord")
    assert got == [(1, "a", "insert"), (1, "b", "update"), (1, None, "delete"), (None, None, "truncate")]
    types = dict(rows(w, "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = 'ducklake'"
                         " AND table_name = 'users'"))
    assert types["__lsn"] == "UBIGINT" and types["__ts"] == "TIMESTAMP WITH TIME ZONE"
    w.close()


@pytest.mark.parametrize("kind", CATALOGS)
def test_truncate_orders_with_the_changes_of_its_epoch(tmp_path, kind):
    w, s = make(tmp_path, kind), Stream()
    other = table("other", [col("id", "int4", key=True)])
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None)), s.rows(other, ins(id=1))))
    apply(w, s.batch(s.rows(USERS, ins(id=2, name="b", big=None)), s.rows(other, ins(id=2)), s.truncate(USERS),
                     s.rows(USERS, ins(id=3, name="c", big=None))))
    assert users(w) == [(3, "c", None)]
    assert rows(w, "SELECT id FROM public.other ORDER BY id") == [(1,), (2,)]
    fresh = table("fresh", [col("id", "int4", key=True)])
    apply(w, s.batch(s.truncate(fresh, USERS)))
    assert rows(w, "SELECT count(*) FROM public.fresh") == [(0,)] and users(w) == []
    w.close()


# --------------------------------------------------------------------------- schema evolution


@pytest.mark.parametrize("kind", CATALOGS)
def test_columns_added_widened_and_dropped(tmp_path, kind):
    t1 = table("t", [col("id", "int4", key=True), col("small", "int2"),
                     col("n", "numeric", typmod=numeric_typmod(8, 2)), col("gone", "text")])
    w, s = make(tmp_path, kind, drop_columns=True), Stream()
    apply(w, s.batch(s.rows(t1, ins(id=1, small=1, n=Decimal("1.25"), gone="g"))))
    # one epoch: rows of v1, then v2 (small int2 -> int4, n numeric(8,2) -> numeric(12,2), a column added with a
    # constant default, gone dropped)
    added = dataclasses.replace(col("extra", "text"), missing=pa.array(["dflt"]))
    t2 = evolve(t1, [col("id", "int4", key=True), col("small", "int4"),
                     col("n", "numeric", typmod=numeric_typmod(12, 2)), added])
    apply(w, s.batch(s.rows(t1, ins(id=2, small=2, n=Decimal("2.50"), gone="h")),
                     s.rows(t2, ins(id=3, small=70_000, n=Decimal("1234567890.12"), extra="x"),
                            upd({"id": 1, "small": 100_000, "n": Decimal("9.99"), "extra": "y"}))))
    types = dict(rows(w, "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = 'ducklake'"
                         " AND table_name = 't'"))
    assert types == {"id": "INTEGER", "small": "INTEGER", "n": "DECIMAL(12,2)", "extra": "VARCHAR"}
    assert rows(w, "SELECT id, small, n, extra FROM public.t ORDER BY id") == [
        (1, 100_000, Decimal("9.99"), "y"), (2, 2, Decimal("2.50"), "dflt"), (3, 70_000, Decimal("1234567890.12"), "x")]
    # after a restart the writer knows the table from the lake and its meta table
    w.close()
    w = make(tmp_path, kind, drop_columns=True)
    t3 = evolve(t2, [*t2.columns, col("later", "int8")])
    apply(w, s.batch(s.rows(t3, ins(id=4, small=4, n=Decimal("4"), extra=None, later=2**40))))
    assert rows(w, "SELECT id, later FROM public.t ORDER BY id") == [(1, None), (2, None), (3, None), (4, 2**40)]
    meta = rows(w, "SELECT schema_version, columns_json::VARCHAR FROM main.__wallaby_meta")
    assert len(meta) == 1 and [c["name"] for c in json.loads(meta[0][1])] == ["id", "small", "n", "extra", "later"]
    w.close()


@pytest.mark.parametrize(("old", "new", "values"), [
    (col("v", "text"), col("v", "int4"), ("7", 8)),  # VARCHAR -> INTEGER: not a promotion
    (col("v", "int4"), col("v", "text"), (7, "eight")),  # INTEGER -> VARCHAR: DuckDB widens, DuckLake cannot
])
def test_a_type_change_ducklake_cannot_express_holds_the_flow(tmp_path, old, new, values):
    """The DuckDB writer's RetypeError path: a SchemaChangeError naming the source table, the column and both types
    (the worker holds the flow at that change through the DDL gate), the epoch rolled back."""
    t1 = table("t", [col("id", "int4", key=True), old])
    t2 = evolve(t1, [col("id", "int4", key=True), new])
    w, s = make(tmp_path), Stream()
    apply(w, s.batch(s.rows(t1, ins(id=1, v=values[0]))))
    w.write(s.batch(s.rows(t2, ins(id=2, v=values[1]))))
    with pytest.raises(SchemaChangeError) as err:
        w.commit()
    e = err.value
    assert (e.table, e.column) == ("public.t", "v") and e.position == s.last
    msg = str(e)
    assert old.type_name in msg and new.type_name in msg and "DuckLake" in msg and "type_mappings" in msg
    w.close()
    w = make(tmp_path)
    assert rows(w, "SELECT id, v FROM public.t") == [(1, values[0])]
    w.close()


def test_a_promotion_ducklake_follows_across_a_restart(tmp_path):
    """int4 -> int8 and float4 -> float8 in a new writer: the column is promoted in the lake, old rows kept."""
    t1 = table("t", [col("id", "int4", key=True), col("v", "int4"), col("f", "float4")])
    t2 = evolve(t1, [col("id", "int4", key=True), col("v", "int8"), col("f", "float8")])
    w, s = make(tmp_path), Stream()
    apply(w, s.batch(s.rows(t1, ins(id=1, v=7, f=0.5))))
    w.close()
    w = make(tmp_path)
    apply(w, s.batch(s.rows(t2, ins(id=2, v=2**40, f=1e300))))
    assert rows(w, "SELECT id, v, f FROM public.t ORDER BY id") == [(1, 7, 0.5), (2, 2**40, 1e300)]
    assert rows(w, "SELECT data_type FROM duckdb_columns() WHERE database_name = 'ducklake' AND table_name = 't'"
                   " AND column_name IN ('v', 'f') ORDER BY column_name") == [("DOUBLE",), ("BIGINT",)]
    w.close()


# --------------------------------------------------------------------------- exactly once


@pytest.mark.parametrize("kind", CATALOGS)
def test_each_epoch_is_one_snapshot_holding_its_high_water(tmp_path, kind):
    w, s = make(tmp_path, kind), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None))))  # the first epoch creates the table too
    marks = []
    for i in range(3):
        before = snapshots(w)
        w.write(s.batch(s.rows(USERS, ins(id=10 + i, name="x", big=None))))
        w.write(s.batch(s.rows(USERS, upd({"id": 1, "name": f"a{i}", "big": None}))))
        state = w.commit()
        after = snapshots(w)
        assert len(after) == len(before) + 1
        marks.append((after[-1], state))
    for snap, state in marks:  # time travel: the snapshot holds the epoch's rows and its high-water
        got = rows(w, f"SELECT lsn, ordinal FROM main.__wallaby_state AT (VERSION => {snap})")
        assert got == [(state["lsn"], state["ordinal"])]
    assert rows(w, f"SELECT name FROM public.users AT (VERSION => {marks[1][0]}) WHERE id = 1") == [("a1",)]
    w.close()


@pytest.mark.parametrize("kind", CATALOGS)
def test_a_replay_after_a_crash_skips_what_the_lake_holds(tmp_path, kind):
    s = Stream()
    batches = [s.batch(s.rows(USERS, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"))),
               s.batch(s.rows(USERS, upd({"id": 1, "name": "a2", "big": "A"}), dele(id=2)))]
    w = make(tmp_path, kind)
    state = apply(w, *batches)
    w.close()
    w = make(tmp_path, kind)
    assert w.high_water == Position(state["lsn"], state["ordinal"])
    assert apply(w, *batches) == state and users(w) == [(1, "a2", "A")]
    assert w.stats["skipped_rows"] == 4
    # applied inside an open transaction, then the process dies before the commit: nothing of it is in the lake
    third = s.batch(s.rows(USERS, ins(id=3, name="c", big="C")))
    w.close()
    w = make(tmp_path, kind, max_buffer_rows=1)
    w.write(third)
    assert w.stats["applies"] >= 1
    w.close()
    w = make(tmp_path, kind)
    assert users(w) == [(1, "a2", "A")]
    assert apply(w, *batches, third) == {"lsn": s.last.lsn, "ordinal": s.last.ordinal}
    assert users(w) == [(1, "a2", "A"), (3, "c", "C")]
    w.close()
    # a big epoch committed early (max_tx_bytes) and replayed whole after a crash: each change once
    w = make(tmp_path, kind, max_buffer_rows=1, max_tx_bytes=1)
    more = [s.batch(s.rows(FULL, ins(a=i, b="r"))) for i in range(5)]
    for b in more[:3]:
        w.write(b)
    assert w.high_water == more[2].position
    w.close()
    w = make(tmp_path, kind, max_buffer_rows=1, max_tx_bytes=1)
    apply(w, *more)
    assert rows(w, "SELECT a FROM public.logs ORDER BY a") == [(i,) for i in range(5)]
    w.close()
    # another destination name on the same lake keeps its own high-water
    assert make(tmp_path, kind, name="other").high_water == Position(0, 0)


@pytest.mark.parametrize("kind", CATALOGS)
def test_stored_position_and_discard(tmp_path, kind):
    opts = lake_options(tmp_path, kind)
    assert stored_position("lake", "flow1", opts) is None  # no catalog yet: nothing is created to find out
    assert sorted(p.name for p in (tmp_path / "lake").iterdir()) == []
    w, s = make(tmp_path, kind), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big=None))))
    w.close()
    pos, identity, where = stored_position("lake", "flow1", opts)
    assert pos == s.last and identity is None and "DuckLake" in where
    assert stored_position("lake", "other-flow", opts) is None
    discard_position("lake", "flow1", opts)
    assert stored_position("lake", "flow1", opts) is None
    assert PLUGIN.stored_position is not None and PLUGIN.discard_position is not None


# --------------------------------------------------------------------------- types


def test_types_round_trip_through_parquet(tmp_path):
    """Every default type, in inlined rows and after DuckLake flushed them to Parquet; interval lands in VARCHAR
    (DuckDB's interval text: exact, casts back to INTERVAL)."""
    t = table("typed", [
        col("id", "int8", key=True), col("b", "bool"), col("i2", "int2"), col("f4", "float4"), col("f8", "float8"),
        col("n", "numeric", typmod=numeric_typmod(38, 10)), col("m", "money"), col("bin", "bytea"),
        col("d", "date"), col("tm", "time"), col("ts", "timestamp"), col("tstz", "timestamptz"),
        col("iv", "interval"), col("u", "uuid"), col("j", "jsonb"),
        col("arr", "_int4", base_type="int4", arrow_type=pa.list_(pa.list_(pa.int32()))),
        col("ivs", "_interval", base_type="interval", arrow_type=pa.list_(pa.month_day_nano_interval())),
        col("o", "oid"), col("free", "numeric")])
    mdn = pa.month_day_nano_interval()
    iv = pa.scalar((14, -3, 14_706_789_001_000), mdn).as_py()  # 1 year 2 months -3 days 04:05:06.789001
    row = dict(id=1, b=True, i2=-3, f4=1.5, f8=float("nan"), n=Decimal("-1234567890123456789012345678.1234567891"),
               m=Decimal("-5.10"), bin=b"\x00\xff", d=dt.date(1, 1, 1), tm=dt.time(23, 59, 59, 999999),
               ts=dt.datetime(2000, 1, 1), tstz=dt.datetime(2024, 3, 10, 7, 30, 0, 123456, tzinfo=dt.UTC), iv=iv,
               u="a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", j='{"a": [1, 2]}', arr=[[1, 2], [3, None]],
               ivs=[iv, pa.scalar((0, 0, 1_000), mdn).as_py()], o=4294967295, free="NaN")
    w, s = make(tmp_path), Stream()
    apply(w, s.batch(s.rows(t, ins(**row), ins(id=2))))
    types = dict(rows(w, "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = 'ducklake'"
                         " AND table_name = 'typed'"))
    assert (types["iv"], types["ivs"], types["n"], types["o"], types["free"]) == (
        "VARCHAR", "VARCHAR[]", "DECIMAL(38,10)", "UINTEGER", "VARCHAR")
    query = ("SELECT b, i2, f4, isnan(f8), n, m, bin, d, tm, ts, tstz, iv, iv::INTERVAL = INTERVAL '1 year 2 months"
             " -3 days 04:05:06.789001', ivs, u::VARCHAR, j->>'$.a[1]', arr, o, free FROM public.typed WHERE id = 1")
    want = [(True, -3, 1.5, True, row["n"], row["m"], b"\x00\xff", dt.date(1, 1, 1), dt.time(23, 59, 59, 999999),
             dt.datetime(2000, 1, 1), row["tstz"], "1 year 2 months -3 days 04:05:06.789001", True,
             ["1 year 2 months -3 days 04:05:06.789001", "00:00:00.000001"], row["u"], "2", [[1, 2], [3, None]],
             4294967295, "NaN")]
    w.connection.execute("SET TimeZone = 'UTC'")
    assert rows(w, query) == want
    w.connection.execute("CALL ducklake_flush_inlined_data('ducklake')")
    assert rows(w, query) == want
    assert rows(w, "SELECT count(*) FROM ducklake_list_files('ducklake', 'typed', schema => 'public')") == [(1,)]
    w.close()


def test_type_mappings_win_and_lossy_ones_are_refused(tmp_path):
    t = table("m", [col("id", "int4", key=True), col("iv", "interval"), col("x", "int4")])
    w, s = make(tmp_path, type_mappings={"int4": "BIGINT"}), Stream()
    apply(w, s.batch(s.rows(t, ins(id=1, iv=None, x=5))))
    types = dict(rows(w, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'm'"))
    assert types == {"id": "BIGINT", "iv": "VARCHAR", "x": "BIGINT"}
    w.close()
    for bad in ({"interval": "INTERVAL"}, {"int8": "HUGEINT"}):
        _, problems = validate_options(DuckLakeDestinationOptions, {"dsn": ":memory:", "catalog": "m.ducklake",
                                                                    "type_mappings": bad}, "options")
        assert [p.path for p in problems] == ["options.type_mappings"], problems
        assert "Parquet" in problems[0].message
    # a type DuckLake cannot store at all: DuckLake's own error, naming the table
    t2 = table("bits", [col("id", "int4", key=True), col("flags", "varbit")])
    w, s = make(tmp_path, name="lake2", type_mappings={"varbit": "BIT"}), Stream()
    w.write(s.batch(s.rows(t2, ins(id=1, flags="101"))))
    with pytest.raises(PermanentSinkError, match=r"public\.bits.*BIT"):
        w.commit()
    w.close()


# --------------------------------------------------------------------------- catalogs and object storage


def test_a_postgres_catalog(tmp_path, lake_db):
    opts = lake_options(tmp_path, f"postgres:{lake_db}")
    w = DuckLakeWriter("lake", "flow1", opts)
    s = Stream()
    apply(w, s.batch(s.rows(USERS, *[ins(id=i, name=f"n{i}", big=None) for i in range(50)])))
    apply(w, s.batch(s.rows(USERS, dele(id=3), upd({"id": 4, "name": "four", "big": "B"}))))
    w.close()
    got = read_lake(opts, "SELECT count(*), max(name) FILTER (WHERE id = 4) FROM public.users")
    assert got == [(49, "four")]
    assert stored_position("lake", "flow1", opts)[0] == s.last
    with psycopg.connect(lake_db) as c:  # the catalog's tables are in that database
        assert c.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'ducklake_snapshot'").fetchone() == (1,)


def test_parquet_files_on_s3(tmp_path, s3_server, monkeypatch):  # noqa: F811 - the fixture
    import boto3

    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=bucket)
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cretvalue")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    opts = lake_options(tmp_path, "sqlite", data_path=f"s3://{bucket}/some/prefix")
    w, s = DuckLakeWriter("lake", "flow1", opts), Stream()
    apply(w, s.batch(s.rows(USERS, *[ins(id=i, name="x" * 50, big=None) for i in range(200)])))
    apply(w, s.batch(s.rows(USERS, *[dele(id=i) for i in range(0, 200, 2)], upd({"id": 1, "name": "one", "big": "B"}))))
    assert rows(w, "SELECT count(*), min(name) FROM public.users") == [(100, "one")]
    files = rows(w, "SELECT data_file FROM ducklake_list_files('ducklake', 'users', schema => 'public')")
    assert files and all(f.startswith(f"s3://{bucket}/some/prefix/") for (f,) in files)
    w.close()
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                                           aws_access_key_id="test", aws_secret_access_key="test")
            .list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(k.startswith("some/prefix/") and k.endswith(".parquet") for k in keys)
    # a reader of its own (read-only attach, credentials from the same environment) sees the same rows
    assert read_lake(opts, "SELECT count(*) FROM public.users") == [(100,)]
    assert stored_position("lake", "flow1", opts)[0] == s.last


def test_s3_credentials_come_from_the_aws_environment():
    sql = s3_secret_sql({"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TOK",
                         "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://minio:9000"})
    assert "TYPE s3" in sql and "KEY_ID 'AK'" in sql and "SECRET 'SK'" in sql and "SESSION_TOKEN 'TOK'" in sql
    assert "REGION 'eu-west-1'" in sql and "ENDPOINT 'minio:9000'" in sql and "URL_STYLE 'path'" in sql
    assert "USE_SSL false" in sql and "TEMPORARY" in sql
    https = s3_secret_sql({"AWS_ENDPOINT_URL_S3": "https://s3.example.com", "AWS_ENDPOINT_URL": "http://other"})
    assert "ENDPOINT 's3.example.com'" in https and "USE_SSL true" in https
    assert s3_secret_sql({}) is None  # httpfs's own defaults
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        s3_secret_sql({"AWS_ACCESS_KEY_ID": "AK"})


def test_read_rows_upsert_into_the_targets(tmp_path):
    w, s = make(tmp_path), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="a", big="A"))))
    apply(w, s.batch(s.rows(USERS, read(id=1, name="loaded", big="L"), read(id=2, name="b", big="B"))))
    assert users(w) == [(1, "loaded", "L"), (2, "b", "B")]
    w.close()


# --------------------------------------------------------------------------- staging


def test_staged_reads_resolve_in_the_lake(tmp_path):
    w, s = make(tmp_path, "sqlite", batch_mode="staging", batch_resolution="replace"), Stream()
    apply(w, s.batch(s.rows(USERS, ins(id=1, name="streamed", big=None))))
    apply(w, s.batch(s.rows(USERS, read(id=1, name="read", big="R"), read(id=2, name="read2", big=None))))
    assert users(w, "public.users_staging") == [(1, "read", "R"), (2, "read2", None)]
    w.close()
    opts = lake_options(tmp_path, "sqlite", batch_mode="staging", batch_resolution="replace")
    (done,) = resolve_staging("lake", "flow1", opts)
    assert (done.table, done.staging_table, done.rows, done.resolution) == ("public.users", "public.users_staging", 2,
                                                                            "replace")
    assert read_lake(opts, "SELECT id, name FROM public.users ORDER BY id") == [(1, "read"), (2, "read2")]
    assert read_lake(opts, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'users_staging'") == [(0,)]
    with pytest.raises(ConfigError, match="batch_resolution"):
        resolve_staging("lake", "flow1", lake_options(tmp_path, "sqlite", batch_mode="staging"))
    assert PLUGIN.resolve_staging is not None


# --------------------------------------------------------------------------- bad options and catalogs


def test_a_catalog_in_a_missing_directory_is_one_clear_error_and_creates_nothing(tmp_path):
    for catalog in (f"sqlite:{tmp_path / 'missing' / 'm.sqlite'}", str(tmp_path / "missing" / "m.ducklake")):
        opts = DuckLakeDestinationOptions(dsn=str(tmp_path / "new" / "host.duckdb"), catalog=catalog)
        with pytest.raises(PermanentSinkError) as err:
            DuckLakeWriter("lake", "flow1", opts)
        msg = str(err.value)
        assert "'lake'" in msg and "catalog" in msg and "m." in msg
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # not the dsn file nor its directory
        problems = check_ducklake_paths(0, None, opts)
        assert [p.path for p in problems] == ["destinations[0].options.catalog"]
        assert "does not exist" in problems[0].message


def test_a_new_sqlite_catalog_needs_a_data_path(tmp_path):
    opts = DuckLakeDestinationOptions(dsn=":memory:", catalog=f"sqlite:{tmp_path / 'm.sqlite'}")
    with pytest.raises(PermanentSinkError, match="data_path"):
        DuckLakeWriter("lake", "flow1", opts)
    assert not (tmp_path / "m.sqlite").exists()
    assert [p.path for p in check_ducklake_paths(0, None, opts)] == ["destinations[0].options.data_path"]


def test_a_postgres_catalog_that_refuses_is_one_clear_error_without_the_password(tmp_path):
    with socket_closed() as port:
        for catalog in (f"postgres:postgresql://wallaby:hunter2secret@127.0.0.1:{port}/lake",
                        f"postgres:host=127.0.0.1 port={port} dbname=lake user=wallaby password=hunter2secret"):
            opts = DuckLakeDestinationOptions(dsn=str(tmp_path / "host.duckdb"), catalog=catalog)
            with pytest.raises(PermanentSinkError) as err:
                DuckLakeWriter("lake", "flow1", opts)
            msg = str(err.value)
            assert "hunter2secret" not in msg and "catalog" in msg and str(port) in msg, msg
            assert not (tmp_path / "host.duckdb").exists()
            assert stored_position("lake", "flow1", opts) is None


def test_install_extensions_false_with_nothing_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # DuckDB's extension directory: ~/.duckdb/extensions, empty
    (tmp_path / "home").mkdir()
    opts = lake_options(tmp_path, "sqlite", install_extensions=False)
    with pytest.raises(PermanentSinkError) as err:
        DuckLakeWriter("lake", "flow1", opts)
    msg = str(err.value)
    assert "install_extensions" in msg and "'ducklake'" in msg and "duckdb-extension-ducklake" in msg
    assert str(tmp_path / "home") in msg
    (problem,) = extension_problems(0, opts)
    assert problem.path == "destinations[0].options.install_extensions"
    assert extension_problems(0, lake_options(tmp_path, "sqlite")) == []  # from the wheels
    assert not (tmp_path / "host.duckdb").exists()


def test_options_model_and_refusals():
    def problems(**opts) -> dict[str, str]:
        _, found = validate_options(DuckLakeDestinationOptions, {"dsn": "./data/w.duckdb", "catalog": "m.ducklake",
                                                                 **opts}, "options")
        return {p.path.removeprefix("options."): p.message for p in found}

    o = DuckLakeDestinationOptions(dsn=":memory:", catalog="m.ducklake", schema="wh", write_mode="append",
                                   batch_mode="staging", type_mappings='{"int4": "BIGINT"}', drop_columns="true")
    assert (o.catalog_name, o.data_path, o.override_data_path, o.install_extensions, o.release_file) == (
        "ducklake", None, False, True, False)
    assert (o.schema_name, o.write_mode, o.batch_mode, o.drop_columns) == ("wh", "append", "staging", True)
    assert "release_file" in problems(release_file="false") and "DuckLake" in problems(release_file="true")[
        "release_file"]
    assert "catalog_name" in problems(catalog_name="w")  # the dsn file's database is named w
    assert "catalog_name" in problems(catalog_name="memory") and "catalog_name" in problems(catalog_name="1x")
    assert "catalog" in problems(catalog="mysql:db=x")
    assert problems(catalog="sqlite:x.sqlite", catalog_name="lake") == {}
    assert problems(catalog="postgres:dbname=x") == {}
    assert "catalog" in problems(catalog="")
    assert registry.plugin("ducklake") is PLUGIN and PLUGIN.make_sink is not None


def test_the_sink_and_the_flow_spec(tmp_path):
    spec = parse_flow({"id": "dl-spec", "name": "dl-spec",
                       "source": {"name": "pg", "type": "postgres", "options": {
                           "dsn": "postgresql://u@127.0.0.1:1/db", "slot": "s", "publication": "p"}},
                       "destinations": [{"name": "lake", "type": "ducklake", "options": {
                           "dsn": str(tmp_path / "h.duckdb"), "catalog": f"sqlite:{tmp_path / 'm.sqlite'}",
                           "data_path": str(tmp_path / "data")}}]}, origin="test")
    opts = spec.destination_options(0)
    assert isinstance(opts, DuckLakeDestinationOptions)
    sink = make_sink("lake", "dl-spec", opts)
    assert isinstance(sink, WriterSink) and sink.list_parts() == ["lake"]
    part = sink.build_part("step", "lake", None)
    s = Stream()
    part.write_batch([s.batch(s.rows(USERS, ins(id=1, name="a", big=None)))])
    assert part.snapshot() == {"lsn": s.last.lsn, "ordinal": s.last.ordinal}
    part.close()
    assert read_lake(opts, "SELECT lsn, flow_id, destination FROM main.__wallaby_state") == [
        (s.last.lsn, "dl-spec", "lake")]
    example = json.loads((ROOT / "examples" / "flows" / "postgres_to_ducklake.json").read_text())
    parsed = parse_flow(example, origin="example")
    assert parsed.destinations[0].type == "ducklake"
    assert isinstance(parsed.destination_options(0), DuckLakeDestinationOptions)


# --------------------------------------------------------------------------- helpers for the end-to-end tests


class socket_closed:
    """A local TCP port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None


@pytest.fixture
def lake_db(pg):
    """A database of its own on the session server for a ``postgres:`` catalog (libpq URL)."""
    from tests.conftest import _drop_database

    name = "lake_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield pg.dsn(name)
    _drop_database(pg.dsn(), name)


def _flow(tmp: Path, dsn: str, flow_id: str, tables: str, destination: dict, **source) -> Path:
    return worker_flow(tmp, dsn, flow_id, tables, destination, dest_type="ducklake", dest_name="lake", **source)



def _lake_table(opts: DuckLakeDestinationOptions, sql: str, table_name: str) -> list[tuple]:
    """``sql`` on the lake; [] when the table was never created (no change reached the lake)."""
    if not Path(opts.catalog.removeprefix("sqlite:")).exists() and not opts.catalog.startswith("postgres:"):
        return []
    if not read_lake(opts, f"SELECT 1 FROM duckdb_tables() WHERE table_name = '{table_name}'"):
        return []
    return read_lake(opts, sql)


def test_a_backfill_then_the_stream_into_the_lake(pgdb, tmp_path):
    """-mode backfill reads the table's parts into the lake (a snapshot's read rows), then the stream goes on
    from the backfill's slot: the lake ends equal to Postgres."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g")
    dest = {"dsn": str(tmp_path / "lake.duckdb"), "catalog": f"sqlite:{tmp_path / 'cat.sqlite'}",
            "data_path": str(tmp_path / "data")}
    flow = _flow(tmp_path, pgdb, "lake-bf", "public.t", dest)
    run_worker(tmp_path, flow, args=("-mode", "backfill", "-partition-count", "3"))
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("UPDATE t SET v = 'u' WHERE id % 7 = 0")
        c.execute("DELETE FROM t WHERE id % 11 = 0")
        c.execute("INSERT INTO t VALUES (5000, 'new')")
    run_worker(tmp_path, flow)
    opts = DuckLakeDestinationOptions.model_validate(dest)
    want = pg_rows(pgdb, "SELECT id, v FROM t ORDER BY id")
    assert _lake_table(opts, "SELECT id, v FROM public.t ORDER BY id", "t") == want and len(want) == 2729


# --------------------------------------------------------------------------- the tricky table end to end

TRICKY_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TABLE tricky (
  id int PRIMARY KEY,
  b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
  n_small numeric(12,4), n_big numeric(1000,500), n_free numeric,
  t text, vc varchar(20), ch char(5), by bytea,
  d date, tm time, ts timestamp, tstz timestamptz, iv interval,
  u uuid, j json, jb jsonb, ia int4[], ta text[], m2 int4[][],
  e mood, dom posint, ip inet, mac macaddr, mon money, big text
);
ALTER TABLE tricky ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE nokey (a int, b text);
ALTER TABLE nokey REPLICA IDENTITY FULL;
"""
BIG = "🦘" * 300_000  # > 1 MB: TOASTed out of line
N_BIG = "1" * 500 + "." + "9" * 500
TRICKY_ROWS = [
    {"id": 1, "b": True, "i2": -32768, "i4": 2147483647, "i8": -9223372036854775808, "f4": 0.1, "f8": 5e-324,
     "n_small": Decimal("-12345678.1234"), "n_big": N_BIG, "n_free": "NaN",
     "t": "e\u0301 RTL \u05e9\u05dc\u05d5\u05dd 🦘 \x01", "vc": "ascii", "ch": "ab", "by": bytes(range(256)),
     "d": "0044-03-15 BC", "tm": "24:00:00", "ts": "infinity", "tstz": "2024-03-10 02:30:00.123456 America/New_York",
     "iv": "1 year 2 mons -3 days 04:05:06.789001", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
     "j": '{"a": [1, 2, {"b": "\\u00e9"}]}', "jb": '{"k": "é 🦘", "n": null}', "ia": "{1,NULL,3}",
     "ta": '{"a,b","c\\"d",NULL,"NULL"}', "m2": "{{1,2},{3,NULL}}", "e": "happy 😀", "dom": 7,
     "ip": "192.168.0.1/24", "mac": "08:00:2b:01:02:03", "mon": "-1234.56", "big": BIG},
    {"id": 2, "b": False, "f4": float("-inf"), "f8": float("nan"), "n_small": Decimal("0.0001"), "n_free": "1e-40",
     "d": "infinity", "ts": "2000-01-01 00:00:00", "tstz": "-infinity", "iv": "-1 days -00:00:00.000001",
     "tm": "00:00:00.000001", "t": "", "ia": "{}", "m2": "{}", "ta": "{}"},
    {"id": 3},
]


def test_the_tricky_table_ends_equal_to_postgres(pgdb, tmp_path):
    """Postgres -> DuckLake through the worker: every type value for value; interval in VARCHAR (DuckDB's interval
    text, which casts back to the same INTERVAL: months, days and microseconds kept, negative ones too)."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(TRICKY_SCHEMA)
    opts = {"dsn": str(tmp_path / "host.duckdb"), "catalog": f"sqlite:{tmp_path / 'tricky.sqlite'}",
            "data_path": str(tmp_path / "data")}
    flow = _flow(tmp_path, pgdb, "dl-tricky", "public.tricky,public.nokey", opts)
    run_worker(tmp_path, flow)  # creates the slot
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("SET TimeZone = 'Asia/Kathmandu'")
        for row in TRICKY_ROWS:
            names = list(row)
            c.execute(f"INSERT INTO tricky ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})",
                      [row[n] for n in names])
        c.execute("UPDATE tricky SET i4 = 42 WHERE id = 1")  # big stays unchanged (TOAST)
        c.execute("INSERT INTO nokey VALUES (1, 'a'), (1, 'a'), (2, NULL)")
        c.execute("DELETE FROM nokey WHERE ctid = (SELECT min(ctid) FROM nokey WHERE a = 1)")
        c.execute("UPDATE nokey SET b = 'b' WHERE a = 2")
    run_worker(tmp_path, flow)
    lake = DuckLakeDestinationOptions.model_validate(opts)
    for flushed in (False, True):
        if flushed:  # the same values once DuckLake moved the inlined rows into Parquet files
            con = duckdb.connect(":memory:")
            attach_lake(con, lake, "flush")
            con.execute("CALL ducklake_flush_inlined_data('ducklake')")
            con.close()
        got = read_lake(lake, "SELECT * FROM public.tricky ORDER BY id")
        names = [r[0] for r in read_lake(lake, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'tricky'"
                                               " ORDER BY column_index")]
        r1, r2, r3 = (dict(zip(names, r, strict=True)) for r in got)
        assert all(v is None for k, v in r3.items() if k != "id")
        assert (r1["b"], r1["i2"], r1["i4"], r1["i8"]) == (True, -32768, 42, -9223372036854775808)
        assert r1["f4"] == pytest.approx(0.1, rel=1e-7) and r1["f8"] == 5e-324
        assert r1["n_small"] == Decimal("-12345678.1234") and r1["n_big"] == N_BIG and r1["n_free"] == "NaN"
        assert r1["t"] == TRICKY_ROWS[0]["t"] and r1["ch"] == "ab   " and bytes(r1["by"]) == bytes(range(256))
        assert r1["tstz"] == dt.datetime(2024, 3, 10, 7, 30, 0, 123456, tzinfo=dt.UTC)
        assert str(r1["u"]) == TRICKY_ROWS[0]["u"]
        assert json.loads(r1["j"]) == {"a": [1, 2, {"b": "é"}]} and json.loads(r1["jb"]) == {"k": "é 🦘", "n": None}
        assert r1["ia"] == [1, None, 3] and r1["ta"] == ["a,b", 'c"d', None, "NULL"] and r1["m2"] == [[1, 2], [3, None]]
        assert (r1["e"], r1["dom"], r1["ip"], r1["mac"], r1["mon"]) == (
            "happy 😀", 7, "192.168.0.1/24", "08:00:2b:01:02:03", Decimal("-1234.56"))
        assert r1["big"] == BIG
        assert r2["f4"] == float("-inf") and math.isnan(r2["f8"]) and Decimal(r2["n_free"]) == Decimal("1e-40")
        assert (r2["t"], r2["ia"], r2["m2"], r2["ta"], r2["ts"], r2["tm"]) == (
            "", [], [], [], dt.datetime(2000, 1, 1), dt.time(0, 0, 0, 1))
        text = {r[0]: r[1:] for r in read_lake(lake, "SELECT id, d::VARCHAR, ts::VARCHAR, tstz::VARCHAR, tm::VARCHAR,"
                                                     " iv, iv::INTERVAL::VARCHAR FROM public.tricky ORDER BY id")}
        assert text[1][:4] == ("0044-03-15 (BC)", "infinity", "2024-03-10 07:30:00.123456+00", "24:00:00")
        assert text[1][4] == text[1][5] == "1 year 2 months -3 days 04:05:06.789001"  # the documented fallback
        assert text[2][0] == "infinity" and text[2][2] == "-infinity" and text[2][4] == "-1 day -00:00:00.000001"
        # the interval text is exactly Postgres's interval
        pg_iv = pg_rows(pgdb, "SELECT extract(epoch FROM iv)::numeric(30,6) FROM tricky WHERE id IN (1, 2) ORDER BY id")
        lake_iv = read_lake(lake, "SELECT epoch(iv::INTERVAL) FROM public.tricky WHERE id IN (1, 2) ORDER BY id")
        assert [float(a) for (a,) in pg_iv] == [pytest.approx(b, abs=1e-6) for (b,) in lake_iv]
        assert sorted(read_lake(lake, "SELECT a, b FROM public.nokey"), key=str) == sorted([(1, "a"), (2, "b")],
                                                                                          key=str)


# --------------------------------------------------------------------------- random histories (hypothesis)

@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(rounds=st.lists(history(50), min_size=1, max_size=3))
def test_random_histories_streamed_by_a_worker_end_equal(pg, rounds, tmp_path_factory):
    from tests.conftest import _drop_database

    tmp = tmp_path_factory.mktemp("dlhist")
    name = f"dlh{random.getrandbits(40):x}"
    flow_id = f"dl-hist-{name}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    dsn = pg.dsn(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            create_tables(c)
        opts = {"dsn": str(tmp / "host.duckdb"), "catalog": str(tmp / "meta.ducklake"), "data_path": str(tmp / "data")}
        flow = _flow(tmp, dsn, flow_id, "public.h,public.k", opts, batch_size="7")
        run_worker(tmp, flow, epoch="100ms")  # creates the slot
        lake = DuckLakeDestinationOptions.model_validate(opts)
        for ops in rounds:
            with psycopg.connect(dsn) as conn:
                play(conn, ops)
            run_worker(tmp, flow, epoch="100ms")
            assert _lake_table(lake, "SELECT id, v, t FROM public.h ORDER BY id", "h") == \
                pg_rows(dsn, "SELECT id, v, t FROM h ORDER BY id"), rounds
            assert _lake_table(lake, "SELECT a, b FROM public.k ORDER BY a, b", "k") == \
                pg_rows(dsn, "SELECT a, b FROM k ORDER BY a, b"), rounds
    finally:
        _drop_database(pg.dsn(), name)


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(pgdb, tmp_path):
    """A writer thread keeps changing a keyed table and appending to a keyless one while the worker is killed -9 at
    6 random moments of its streaming; a last run catches up: the keyed table equals Postgres, and the keyless one
    holds every inserted row exactly once."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        create_item_tables(c)
    opts = {"dsn": str(tmp_path / "host.duckdb"), "catalog": f"sqlite:{tmp_path / 'kill.sqlite'}",
            "data_path": str(tmp_path / "data")}
    flow = _flow(tmp_path, pgdb, "dl-kill", "public.items,public.events", opts, batch_size="50")
    run_worker(tmp_path, flow)  # the slot
    with ItemWrites(pgdb) as writes:
        logs = kill_at_random([*WORKER, "-flow-file", str(flow)], worker_env(tmp_path), ROOT, tmp_path, runs=6,
                               started="streaming from", window=(0.3, 3.0), seed=2024)
    assert all("Traceback" not in log for log in logs), logs
    run_worker(tmp_path, flow, args=("-max-empty-reads", "3"), timeout=300)
    lake = DuckLakeDestinationOptions.model_validate(opts)
    assert writes.written > 100
    assert read_lake(lake, "SELECT * FROM public.items ORDER BY id") == pg_rows(pgdb, "SELECT * FROM items ORDER BY id")
    got = read_lake(lake, "SELECT n, count(*) FROM public.events GROUP BY n ORDER BY n")
    assert got == [(n, 1) for (n,) in pg_rows(pgdb, "SELECT n FROM events ORDER BY n")]


# --------------------------------------------------------------------------- reading while a flow runs

READER = textwrap.dedent("""
    import json, sys, time
    import duckdb
    from sinks.ducklake.options import DuckLakeDestinationOptions
    from sinks.ducklake.writer import attach_lake

    opts = DuckLakeDestinationOptions.model_validate(json.loads(sys.argv[1]))
    stop_file, out = sys.argv[2], sys.argv[3]
    ok, failures, counts = 0, [], []
    con = duckdb.connect(":memory:")
    while True:  # until the worker created the lake and its table
        try:
            attach_lake(con, opts, "reader", read_only=True)
            con.execute("SELECT count(*) FROM public.items").fetchall()
            break
        except Exception:
            con.close()
            con = duckdb.connect(":memory:")
            time.sleep(0.1)
    import os
    while not os.path.exists(stop_file):
        try:
            # max(id) grows with every write; the count settles (each write deletes one of 13 residues of id)
            counts.append(con.execute("SELECT count(*), max(id) FROM public.items").fetchall()[0])
            con.execute("SELECT max(qty), count(DISTINCT note) FROM public.items").fetchall()
            ok += 1
            open(out + ".progress", "w").write(str(ok))
        except Exception as exc:
            failures.append(str(exc)[:300])
        time.sleep(0.1)
    json.dump({"ok": ok, "failures": failures, "counts": counts}, open(out, "w"))
""")


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_a_second_process_reads_the_lake_while_a_worker_streams(pgdb, lake_db, tmp_path, kind):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, qty int, note text)")
        c.execute("INSERT INTO items VALUES (0, 0, 'seed')")
    catalog = f"postgres:{lake_db}" if kind == "postgres" else f"sqlite:{tmp_path / 'read.sqlite'}"
    opts = {"dsn": str(tmp_path / "host.duckdb"), "catalog": catalog, "data_path": str(tmp_path / "data")}
    flow_id = f"dl-read-{kind}"
    flow = _flow(tmp_path, pgdb, flow_id, "public.items", opts)
    run_worker(tmp_path, flow)  # the slot
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("UPDATE items SET qty = 1")  # the table reaches the lake in the first epoch
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([*WORKER, "-flow-file", str(flow)], env=worker_env(tmp_path, "200ms"), stdout=log,
                              stderr=subprocess.STDOUT, cwd=ROOT)
    stop_file, out = tmp_path / "stop", tmp_path / "reader.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, json.dumps(opts), str(stop_file), str(out)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    try:
        progress = Path(str(out) + ".progress")
        with psycopg.connect(pgdb, autocommit=True) as c:
            i = 0
            # write until the reader has read the lake 30 times while it changes (bounded by 3000 transactions)
            while i < 3000 and (i < 100 or not progress.exists() or int(progress.read_text() or 0) < 30):
                assert reader.poll() is None, "the reader stopped"
                i += 1
                with c.transaction():
                    c.execute("INSERT INTO items SELECT g, g, 'n' || g FROM generate_series(%s::int, %s::int) g",
                              (i * 100, i * 100 + 49))
                    c.execute("UPDATE items SET qty = qty + 1 WHERE id %% 7 = %s", (i % 7,))
                    c.execute("DELETE FROM items WHERE id %% 13 = %s AND id > 0", (i % 13,))
                time.sleep(0.05)
        # caught up: the slot confirmed past the last write (the worker confirms only what the lake holds); a
        # count of rows can match before the last updates are in, and a busy machine takes long
        from tests.apiserver import current_lsn

        target, slot = current_lsn(pgdb), f"wallaby_{flow_id.replace('-', '_')}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and slot_confirmed(pgdb, slot) < target:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.3)
        lake = DuckLakeDestinationOptions.model_validate(opts)
    finally:
        stop_file.write_text("stop")
        reader.wait(timeout=60)
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
    result = json.loads(out.read_text())
    assert result["failures"] == [], result["failures"][:3]
    assert result["ok"] >= 30 and len({tuple(c) for c in result["counts"]}) > 1  # it read while the lake changed
    assert read_lake(lake, "SELECT * FROM public.items ORDER BY id") == pg_rows(pgdb, "SELECT * FROM items ORDER BY id")


def test_a_type_change_the_lake_cannot_follow_holds_the_worker_at_the_gate(pgdb, tmp_path):
    """int -> text at the source: the worker stops once (exit 75) naming the column, the drift event is left
    pending; a worker started again holds before the change and writes nothing after it."""
    from wallaby.state.checkpoints import open_store

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    opts = {"dsn": str(tmp_path / "host.duckdb"), "catalog": str(tmp_path / "gate.ducklake"),
            "data_path": str(tmp_path / "data")}
    flow = _flow(tmp_path, pgdb, "dl-gate", "public.t", opts)
    run_worker(tmp_path, flow)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t VALUES (1, 7)")
    run_worker(tmp_path, flow)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("ALTER TABLE t ALTER COLUMN v TYPE text")
        c.execute("INSERT INTO t VALUES (2, 'eight')")
    r = subprocess.run([*WORKER, "-flow-file", str(flow), "-max-empty-reads", "2"], env=worker_env(tmp_path),
                       capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 75, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert "'v'" in line and "DuckLake" in line and "pending" in line, line
    store = open_store(worker_env(tmp_path))
    try:
        assert [e.status for e in store.flow_store.list_ddl(flow_id="dl-gate")] == ["pending"]
    finally:
        store.close()
    lake = DuckLakeDestinationOptions.model_validate(opts)
    assert read_lake(lake, "SELECT id, v FROM public.t ORDER BY id") == [(1, 7)]


def test_a_reader_holding_a_sqlite_catalog_open_is_a_transient_failure_not_a_permanent_one(pgdb, tmp_path):
    """A reader that leaves a query open on a ``sqlite:`` catalog holds SQLite's read lock, so no snapshot can
    commit: the worker rolls the epoch back and exits 75 (transient: restarted), naming the catalog and the cause;
    once the reader lets go, the next run catches up and the lake equals Postgres."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, qty int)")
        c.execute("INSERT INTO items VALUES (0, 0)")
    opts = {"dsn": str(tmp_path / "host.duckdb"), "catalog": f"sqlite:{tmp_path / 'held.sqlite'}",
            "data_path": str(tmp_path / "data")}
    flow = _flow(tmp_path, pgdb, "dl-held", "public.items", opts)
    run_worker(tmp_path, flow)  # the slot
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("UPDATE items SET qty = 1")
    run_worker(tmp_path, flow)  # the lake and its table
    lake = DuckLakeDestinationOptions.model_validate(opts)
    reader = duckdb.connect(":memory:")
    try:
        attach_lake(reader, lake, "reader", read_only=True)
        held = reader.execute("SELECT id FROM public.items")
        assert held.fetchone() == (0,)  # the rest not fetched: the query, and SQLite's read lock, stay open
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 50) g")
        r = run_worker(tmp_path, flow, status=75)
        last = r.stderr.strip().splitlines()[-1]
        assert "destination 'lake'" in last and "held.sqlite" in last and "locked by another process" in last
        assert slot_confirmed(pgdb, "wallaby_dl_held") < int(pg_rows(pgdb, "SELECT pg_current_wal_lsn() - '0/0'")[0][0])
    finally:
        reader.close()
    run_worker(tmp_path, flow)
    assert read_lake(lake, "SELECT * FROM public.items ORDER BY id") == pg_rows(pgdb, "SELECT * FROM items ORDER BY id")
