"""Snowflake destination against fakesnow (tests/snowserver.py): the writer with built batches, the DSN, and real
workers streaming Postgres into it (end to end, a property test, kill -9).

Each test writes into a database of its own (fakesnow creates it at login), so state never leaks between tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sinks.base import PermanentSinkError, SchemaChangeError
from sinks.snowflake.dsn import DsnError, parse_dsn
from sinks.snowflake.options import SnowflakeDestinationOptions
from sinks.snowflake.types import canonical_type, snowflake_type, widens
from sinks.snowflake.writer import SnowflakeWriter
from tests import WORKER
from tests.builders import Stream, col, dele, evolve, ins, numeric_typmod, read, table, upd
from tests.flows import pg_rows, run_worker, worker_env, worker_flow
from tests.histories import create_tables, history, play
from tests.snowserver import snowflake  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]


def _name(prefix: str = "DB") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10].upper()}"


def dsn_of(server, database: str, schema: str | None = None, password: str | None = None, **params) -> str:
    """A DSN of the fake server. No schema by default: fakesnow folds identifier case, so a login schema PUBLIC and
    the source's "public" would be one schema there (two in Snowflake)."""
    params = {"host": server.host, "port": server.port, "protocol": server.protocol, "network_timeout": 5, **params}
    query = "&".join(f"{k}={v}" for k, v in params.items())
    path = f"{database}/{schema}" if schema else database
    return f"{server.user}:{password or server.password}@{server.account}/{path}?{query}"


@pytest.fixture
def db(snowflake):  # noqa: F811
    return _name()


def make(server, database: str, name: str = "snow", flow: str = "flow1", **opts) -> SnowflakeWriter:
    return SnowflakeWriter(name, flow, SnowflakeDestinationOptions(dsn=dsn_of(server, database), **opts))


def rows(server, database: str, sql: str) -> list[tuple]:
    with server.connect(database=database, schema=None) as c:
        return c.cursor().execute(sql).fetchall()


def apply(w: SnowflakeWriter, *batches) -> None:
    for b in batches:
        w.write(b)
    w.commit()


USERS = [col("id", "int4", key=True), col("name", "text"), col("big", "text")]


def users(server, database: str, tbl: str = '"public"."users"') -> list[tuple]:
    return rows(server, database, f'SELECT "id", "name", "big" FROM {tbl} ORDER BY "id"')


# --------------------------------------------------------------------------- keyed


def test_keyed_upserts_deletes_and_key_changes(snowflake, db):  # noqa: F811
    t = table("users", USERS)
    s = Stream()
    w = make(snowflake, db)
    try:
        apply(w, s.batch(s.rows(t, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"),
                                ins(id=3, name="c", big="C"))))
        assert users(snowflake, db) == [(1, "a", "A"), (2, "b", "B"), (3, "c", "C")]
        apply(w, s.batch(
            s.rows(t, upd({"id": 1, "name": "a2", "big": "A2"}), dele(id=2)),
            s.rows(t, upd({"id": 30, "name": "c30", "big": "C30"}, before={"id": 3})),  # key change
            s.rows(t, ins(id=2, name="b again", big="B2"), ins(id=4, name="d", big="D")),
            s.rows(t, dele(id=4)),
            s.rows(t, ins(id=1, name="a3", big="A3"))))  # an insert of a present key upserts
        assert users(snowflake, db) == [(1, "a3", "A3"), (2, "b again", "B2"), (30, "c30", "C30")]
        # chained key changes inside one epoch, and a key freed then reused
        apply(w, s.batch(s.rows(t, upd({"id": 31, "name": "c31", "big": "C31"}, before={"id": 30}),
                                upd({"id": 32, "name": "c32", "big": "C32"}, before={"id": 31}),
                                ins(id=30, name="new30", big="N"))))
        assert users(snowflake, db) == [(1, "a3", "A3"), (2, "b again", "B2"), (30, "new30", "N"),
                                        (32, "c32", "C32")]
    finally:
        w.close()


def test_unchanged_toast_values_are_kept_also_across_a_key_change(snowflake, db):  # noqa: F811
    t = table("users", USERS)
    s = Stream()
    w = make(snowflake, db)
    try:
        apply(w, s.batch(s.rows(t, ins(id=1, name="a", big="BIG1"), ins(id=2, name="b", big="BIG2"),
                                ins(id=3, name="c", big="BIG3"))))
        apply(w, s.batch(s.rows(
            t,
            upd({"id": 1, "name": "a2", "big": None}, unchanged=["big"]),
            upd({"id": 20, "name": "b20", "big": None}, before={"id": 2}, unchanged=["big"]),
            upd({"id": 21, "name": "b21", "big": None}, before={"id": 20}, unchanged=["big"]),
            upd({"id": 3, "name": "c2", "big": "NEW3"}),
            upd({"id": 3, "name": "c3", "big": None}, unchanged=["big"]),
            ins(id=4, name="d", big="BIG4"),
            upd({"id": 4, "name": "d2", "big": None}, unchanged=["big"]))))
        assert users(snowflake, db) == [(1, "a2", "BIG1"), (3, "c3", "NEW3"), (4, "d2", "BIG4"),
                                        (21, "b21", "BIG2")]
    finally:
        w.close()


def test_keyless_multiset_with_duplicates(snowflake, db):  # noqa: F811
    t = table("log", [col("a", "int4"), col("b", "text")], replica_identity="f")
    s = Stream()
    w = make(snowflake, db)
    try:
        apply(w, s.batch(s.rows(t, *[ins(a=1, b="x") for _ in range(3)], ins(a=2, b=None), ins(a=2, b=None))))
        apply(w, s.batch(s.rows(
            t,
            dele(a=1, b="x"),  # 3 -> 2 copies
            upd({"a": 3, "b": "y"}, before={"a": 2, "b": None}),  # one (2, NULL) becomes (3, 'y')
            ins(a=1, b="x"), dele(a=1, b="x"), dele(a=1, b="x"))))  # 2 -> 1
        got = rows(snowflake, db, 'SELECT "a", "b" FROM "public"."log" ORDER BY "a", "b"')
        assert got == [(1, "x"), (2, None), (3, "y")]
        apply(w, s.batch(s.rows(t, ins(a=3, b="y"), ins(a=3, b="y"), dele(a=2, b=None))))
        got = rows(snowflake, db, 'SELECT "a", "b" FROM "public"."log" ORDER BY "a", "b"')
        assert got == [(1, "x"), (3, "y"), (3, "y"), (3, "y")]
    finally:
        w.close()


def test_append_mode_and_truncate(snowflake, db):  # noqa: F811
    t = table("users", USERS)
    s = Stream()
    w = make(snowflake, db, write_mode="append")
    try:
        apply(w, s.batch(s.rows(t, ins(id=1, name="a", big="A"), upd({"id": 1, "name": "b", "big": "B"}),
                                dele(id=1, name="b", big="B")), s.truncate(t)))
        got = rows(snowflake, db, 'SELECT "id", "name", "__op", "__lsn", "__ord" FROM "public"."users"'
                                  ' ORDER BY "__lsn", "__ord"')
        assert [r[:3] for r in got] == [(1, "a", "insert"), (1, "b", "update"), (1, "b", "delete"),
                                        (None, None, "truncate")]
        assert all(r[3] > 0 and r[4] >= 1 for r in got)
        ts = rows(snowflake, db, 'SELECT DISTINCT "__ts" FROM "public"."users"')
        assert all(isinstance(r[0], dt.datetime) for r in ts)
    finally:
        w.close()
    # target mode: a truncate empties the table, what comes after it in the epoch lands
    t2 = table("users", USERS)
    w = make(snowflake, db, schema="tgt")
    try:
        apply(w, s.batch(s.rows(t2, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"))))
        apply(w, s.batch(s.rows(t2, ins(id=3, name="c", big="C")), s.truncate(t2),
                         s.rows(t2, ins(id=4, name="d", big="D"))))
        assert users(snowflake, db, '"tgt"."users"') == [(4, "d", "D")]
        apply(w, s.batch(s.truncate(t2)))
        assert users(snowflake, db, '"tgt"."users"') == []
    finally:
        w.close()


def test_add_widen_and_drop_columns(snowflake, db):  # noqa: F811
    t1 = table("evo", [col("id", "int4", key=True), col("n", "int2"), col("gone", "text"),
                       col("v", "varchar")])
    s = Stream()
    w = make(snowflake, db)
    try:
        apply(w, s.batch(s.rows(t1, ins(id=1, n=1, gone="g1", v="a"), ins(id=2, n=2, gone="g2", v="b"))))
        # a column added with a constant default (older rows get it), n widened int2 -> int8, "gone" dropped
        added = dataclasses.replace(col("extra", "text"), missing=pa.array(["dflt"]))
        t2 = evolve(t1, [col("id", "int4", key=True), col("n", "int8"), col("v", "varchar"), added])
        apply(w, s.batch(s.rows(t2, ins(id=3, n=3_000_000_000, v="c", extra="x"),
                                upd({"id": 1, "n": 10, "v": "a2", "extra": "y"}))))
        got = rows(snowflake, db, 'SELECT "id", "n", "gone", "v", "extra" FROM "public"."evo" ORDER BY "id"')
        assert got == [(1, 10, "g1", "a2", "y"), (2, 2, "g2", "b", "dflt"), (3, 3_000_000_000, None, "c", "x")]
        types = dict(rows(snowflake, db, "SELECT column_name, numeric_precision FROM information_schema.columns"
                                         " WHERE table_schema = 'public' AND table_name = 'evo'"))
        assert types["n"] == 19
        meta = rows(snowflake, db, 'SELECT SCHEMA_VERSION, PRIMARY_KEY, COLUMNS_JSON FROM "WALLABY_META"."__METADATA"'
                                   " WHERE DEST_TABLE = 'evo'")
        assert meta[0][0] == 2 and meta[0][1] == "pk_id"
        assert [c["name"] for c in json.loads(meta[0][2])] == ["id", "n", "v", "extra"]
        # a type change Snowflake cannot make: held at the DDL gate
        t3 = evolve(t2, [col("id", "int4", key=True), col("n", "bool"), col("v", "varchar"), col("extra", "text")])
        with pytest.raises(SchemaChangeError, match="'n' changed type at the source from int8 to bool"):
            apply(w, s.batch(s.rows(t3, ins(id=4, n=True, v="d", extra="z"))))
    finally:
        w.close()
    assert len(rows(snowflake, db, 'SELECT * FROM "public"."evo"')) == 3


def test_a_second_writer_skips_what_the_first_committed(snowflake, db):  # noqa: F811
    t = table("users", USERS)
    s = Stream()
    b1 = s.batch(s.rows(t, ins(id=1, name="a", big="A")))
    b2 = s.batch(s.rows(t, ins(id=2, name="b", big="B"), upd({"id": 1, "name": "a2", "big": "A2"})))
    b3 = s.batch(s.rows(t, dele(id=2), ins(id=3, name="c", big="C")))
    w1 = make(snowflake, db)
    try:
        apply(w1, b1, b2)
        w1.write(b3)  # taken, never committed: the crash
    finally:
        w1.close()
    w2 = make(snowflake, db)
    try:
        assert w2.high_water == b2.position
        apply(w2, b1, b2, b3)  # replayed from before the first's high-water
        assert w2.stats["skipped_rows"] == 3
        assert users(snowflake, db) == [(1, "a2", "A2"), (3, "c", "C")]
    finally:
        w2.close()
    # another flow on the same destination starts from nothing
    w3 = make(snowflake, db, flow="flow2", schema="other")
    try:
        assert w3.high_water.lsn == 0
    finally:
        w3.close()


def test_staging_mode_lands_reads_in_the_staging_table(snowflake, db):  # noqa: F811
    t = table("users", USERS)
    s = Stream()
    w = make(snowflake, db, batch_mode="staging", meta_table_enabled=False)
    try:
        apply(w, s.batch(s.rows(t, read(id=1, name="a", big="A"), read(id=2, name="b", big="B"),
                                ins(id=3, name="c", big="C"))))
        assert users(snowflake, db) == [(3, "c", "C")]
        assert users(snowflake, db, '"public"."users_staging"') == [(1, "a", "A"), (2, "b", "B")]
        assert rows(snowflake, db, "SELECT count(*) FROM information_schema.tables WHERE table_schema ="
                                   " 'WALLABY_META' AND table_name = '__METADATA'") == [(0,)]
    finally:
        w.close()


def test_staging_resolves_by_append_and_replace(snowflake, db):  # noqa: F811
    """batch_mode=staging, then resolve_staging: append adds the staged rows to the target (created LIKE the
    staging table when absent); replace swaps the target's rows for them in one transaction; the meta rows follow,
    the staging table is dropped; a name that is not the flow's is a ConfigError with a did-you-mean."""
    from sinks.snowflake import PLUGIN
    from wallaby.core.errors import ConfigError

    t = table("users", USERS)
    for mode in ("append", "replace"):
        opts = {"batch_mode": "staging", "batch_resolution": mode}
        database = _name()
        s = Stream()
        w = make(snowflake, database, **opts)
        try:
            apply(w, s.batch(s.rows(t, ins(id=9, name="old", big="O"))))
            apply(w, s.batch(s.rows(t, read(id=1, name="a", big="A"), read(id=2, name="b", big="B"))))
        finally:
            w.close()
        options = SnowflakeDestinationOptions(dsn=dsn_of(snowflake, database), **opts)
        with pytest.raises(ConfigError, match="did you mean 'public.users'"):
            PLUGIN.resolve_staging("snow", "flow1", options, tables=["public.user"])
        (done,) = PLUGIN.resolve_staging("snow", "flow1", options)
        assert (done.table, done.staging_table, done.rows, done.staged) == ("public.users", "public.users_staging",
                                                                           2, True)
        want = [(1, "a", "A"), (2, "b", "B")] if mode == "replace" else [(1, "a", "A"), (2, "b", "B"), (9, "old", "O")]
        assert users(snowflake, database) == want
        assert rows(snowflake, database, "SELECT count(*) FROM information_schema.tables WHERE table_name ="
                                         " 'users_staging'") == [(0,)]
        assert rows(snowflake, database, 'SELECT DISTINCT "DEST_TABLE" FROM "WALLABY_META"."__METADATA"') == \
            [("users",)]
        assert PLUGIN.resolve_staging("snow", "flow1", options) == []  # nothing staged any more
        (again,) = PLUGIN.resolve_staging("snow", "flow1", options, tables=["public.users"])
        assert not again.staged and users(snowflake, database) == want


def test_a_resolution_stopped_before_its_drop_moves_nothing_twice(snowflake, db):  # noqa: F811
    """A staging table with no meta rows left (the rows were moved, the drop did not happen) is dropped by the next
    resolution without moving its rows again; without the meta table the staging table is emptied with the move."""
    from sinks.snowflake import PLUGIN

    t = table("users", USERS)
    s = Stream()
    opts = {"batch_mode": "staging", "batch_resolution": "append"}
    w = make(snowflake, db, **opts)
    try:
        apply(w, s.batch(s.rows(t, read(id=1, name="a", big="A"))))
    finally:
        w.close()
    options = SnowflakeDestinationOptions(dsn=dsn_of(snowflake, db), **opts)
    PLUGIN.resolve_staging("snow", "flow1", options)
    with snowflake.connect(database=db, schema=None) as c:  # the staging table as a stopped run leaves it
        c.cursor().execute('CREATE TABLE "public"."users_staging" AS SELECT * FROM "public"."users"')
    (done,) = PLUGIN.resolve_staging("snow", "flow1", options)
    assert not done.staged and users(snowflake, db) == [(1, "a", "A")]
    assert rows(snowflake, db, "SELECT count(*) FROM information_schema.tables WHERE table_name ="
                               " 'users_staging'") == [(0,)]

    database = _name()
    w = make(snowflake, database, meta_table_enabled=False, **opts)
    try:
        apply(w, s.batch(s.rows(t, read(id=2, name="b", big="B"))))
    finally:
        w.close()
    options = SnowflakeDestinationOptions(dsn=dsn_of(snowflake, database), meta_table_enabled=False, **opts)
    (done,) = PLUGIN.resolve_staging("snow", "flow1", options)
    assert done.rows == 1 and users(snowflake, database) == [(2, "b", "B")]


def test_types_land_as_documented(snowflake, db):  # noqa: F811
    cols = [col("id", "int8", key=True), col("i2", "int2"), col("n", "numeric", typmod=numeric_typmod(12, 3)),
            col("nu", "numeric"), col("f", "float8"), col("b", "bool"), col("by", "bytea"), col("d", "date"),
            col("ts", "timestamp"), col("tz", "timestamptz"), col("tm", "time"), col("u", "uuid"),
            col("j", "jsonb"), col("arr", "_int4", arrow_type=pa.list_(pa.int32())), col("iv", "interval")]
    t = table("ty", cols)
    s = Stream()
    w = make(snowflake, db)
    ts = dt.datetime(2024, 1, 2, 3, 4, 5, 123456)
    try:
        apply(w, s.batch(s.rows(t, ins(
            id=1, i2=-5, n=decimal.Decimal("123456789.123"), nu="NaN", f=float("inf"), b=True, by=b"\x00\xff",
            d=dt.date(2024, 1, 2), ts=ts, tz=ts.replace(tzinfo=dt.UTC), tm=dt.time(3, 4, 5, 6),
            u="0b7e4a6e-62b3-4d7e-9f3b-1f0f4e1b2c3d", j='{"a": [1, 2.5, "x"], "b": null}', arr=[1, None, 3],
            iv=pa.scalar((1, 2, 3_000_000_000), pa.month_day_nano_interval()).as_py()),
            ins(id=2))))
        got = rows(snowflake, db, 'SELECT * FROM "public"."ty" ORDER BY "id"')
        r = got[0]
        assert r[:9] == (1, -5, decimal.Decimal("123456789.123"), "NaN", float("inf"), True, bytearray(b"\x00\xff"),
                         dt.date(2024, 1, 2), ts)
        assert r[9] == ts.replace(tzinfo=dt.UTC) and r[10] == dt.time(3, 4, 5, 6)
        assert r[11] == "0b7e4a6e-62b3-4d7e-9f3b-1f0f4e1b2c3d"
        assert json.loads(r[12]) == {"a": [1, 2.5, "x"], "b": None} and json.loads(r[13]) == [1, None, 3]
        assert r[14] and "month" in r[14]
        # fakesnow hands NULL timestamps to the connector as 1970-01-01 (they are NULL in the table)
        assert got[1][:8] == (2, *[None] * 7) and got[1][10:] == (None,) * 5
        assert rows(snowflake, db, 'SELECT "ts" IS NULL, "tz" IS NULL FROM "public"."ty" WHERE "id" = 2') == [
            (True, True)]
    finally:
        w.close()


def test_infinite_dates_and_timestamps_are_clamped(snowflake, db):  # noqa: F811
    from sources.postgres.pgtypes import DATE_NEG_INF, DATE_POS_INF, TS_NEG_INF, TS_POS_INF

    t = table("inf", [col("id", "int4", key=True), col("d", "date"), col("ts", "timestamp")])
    s = Stream()
    w = make(snowflake, db)
    try:
        seg = s.rows(t, ins(id=1, d=DATE_NEG_INF, ts=TS_NEG_INF), ins(id=2, d=DATE_POS_INF, ts=TS_POS_INF),
                     arrow_types={"d": pa.int32(), "ts": pa.int64()})
        rb = seg.rows
        seg = dataclasses.replace(seg, rows=pa.RecordBatch.from_arrays(
            [rb.column(0), rb.column(1).cast(pa.date32()), rb.column(2).cast(pa.timestamp("us")),
             *rb.columns[3:]], schema=rb.schema.set(1, pa.field("d", pa.date32())).set(2, pa.field(
                 "ts", pa.timestamp("us")))))
        apply(w, s.batch(seg))
        assert rows(snowflake, db, 'SELECT "d", "ts" FROM "public"."inf" ORDER BY "id"') == [
            (dt.date(1, 1, 1), dt.datetime(1, 1, 1)), (dt.date(9999, 12, 31), dt.datetime(9999, 12, 31, 23, 59, 59,
                                                                                          999999))]
    finally:
        w.close()


# --------------------------------------------------------------------------- types and DSN, no server


def test_type_map_and_widening():
    assert snowflake_type(col("a", "int2")) == "NUMBER(5,0)"
    assert snowflake_type(col("a", "numeric", typmod=numeric_typmod(40, 2))) == "VARCHAR"
    assert snowflake_type(col("a", "numeric", typmod=numeric_typmod(10, 2))) == "NUMBER(10,2)"
    assert snowflake_type(col("a", "jsonb")) == "VARIANT"
    assert snowflake_type(col("a", "_text", arrow_type=pa.list_(pa.string()))) == "ARRAY"
    assert snowflake_type(col("a", "geometry", extension="postgis"), {"ext:postgis": "GEOGRAPHY"}) == "GEOGRAPHY"
    assert snowflake_type(col("a", "mood", base_type="text")) == "VARCHAR"
    assert snowflake_type(col("a", "int4"), {"int4": "NUMBER(38,0)"}) == "NUMBER(38,0)"
    assert widens("NUMBER(10,0)", "NUMBER(19,0)") and not widens("NUMBER(10,0)", "NUMBER(19,2)")
    assert widens("VARCHAR(36)", "VARCHAR") and not widens("VARCHAR", "VARCHAR(36)")
    assert canonical_type("TEXT") == "VARCHAR" and canonical_type("TIMESTAMP_NTZ(6)") == "TIMESTAMP_NTZ"


def test_dsn_forms():
    d = parse_dsn("me:p%40ss@acct/DB/SCH?warehouse=WH&role=R&port=8080&protocol=http&host=h")
    assert d.kwargs == {"user": "me", "password": "p@ss", "account": "acct", "database": "DB", "schema": "SCH",
                        "warehouse": "WH", "role": "R", "port": 8080, "protocol": "http", "host": "h"}
    assert d.shown == "me@acct/DB/SCH"
    assert parse_dsn("me@acct/DB?authenticator=externalbrowser").kwargs["authenticator"] == "externalbrowser"
    for bad, why in (("no-at-sign", "no user@"), ("me:secretpw@acct", "no database"),
                     ("me:secretpw@acct/db/s/x", "path"), (":secretpw@acct/db", "no user"),
                     ("me:secretpw@acct/db?port=abc", "port must be a number")):
        with pytest.raises(DsnError, match=why) as e:
            parse_dsn(bad)
        assert "secretpw" not in str(e.value)


# --------------------------------------------------------------------------- bad options


def test_a_dsn_it_cannot_parse_is_refused_before_anything_is_created():
    from dataflows.preflight import preflight
    from wallaby.core.errors import ConfigError
    from wallaby.core.spec import parse_flow

    spec = parse_flow({"name": "f", "source": {"type": "postgres", "options": {
        "dsn": "postgres://u@localhost/db", "slot": "s", "publication": "p"}},
        "destinations": [{"name": "d", "type": "snowflake", "options": {"dsn": "me:hunter2secret@acct"}}]})
    with pytest.raises(ConfigError) as err:
        preflight(spec, source=False)
    assert [str(p) for p in err.value.problems] == [
        "destinations[0].options.dsn: Snowflake dsn: the dsn names no database (user@account/database[/schema]);"
        " the destination's tables, state and meta tables live in it"]
    with pytest.raises(PermanentSinkError) as e:
        SnowflakeWriter("snow", "f", SnowflakeDestinationOptions(dsn="me:hunter2secret@acct"))
    assert "no database" in str(e.value) and "hunter2secret" not in str(e.value)


def test_a_dsn_it_cannot_connect_with_is_one_clear_error(snowflake, tmp_path):  # noqa: F811
    from tests.servers import free_port

    dsn = f"me:hunter2secret@acct/{_name()}/PUBLIC?host=127.0.0.1&port={free_port()}&protocol=http&login_timeout=3"
    with pytest.raises(PermanentSinkError) as e:
        SnowflakeWriter("snow", "f", SnowflakeDestinationOptions(dsn=dsn))
    text = str(e.value)
    assert "cannot connect to Snowflake me@acct/" in text and "hunter2secret" not in text
    # a parameter the connector does not know is a session parameter (gosnowflake's rule)
    w = SnowflakeWriter("snow", "f", SnowflakeDestinationOptions(
        dsn=dsn_of(snowflake, _name(), password="hunter2secret", query_tag="wallaby")))
    w.close()


# --------------------------------------------------------------------------- real workers




def _flow(tmp: Path, dsn: str, flow_id: str, tables: str, destination: dict, **source) -> Path:
    return worker_flow(tmp, dsn, flow_id, tables, destination, dest_type="snowflake", dest_name="snow", **source)



def _snow(server, database: str, sql: str, table_name: str) -> list[tuple]:
    """``sql`` on Snowflake; [] when the table was never created (no change reached it)."""
    found = rows(server, database, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
                                   f" AND table_name = '{table_name}'")
    return rows(server, database, sql) if found[0][0] else []


def test_a_backfill_then_the_stream_into_snowflake(snowflake, pgdb, tmp_path):  # noqa: F811
    """-mode backfill reads the table's parts into Snowflake (read rows, upserted), then the stream goes on from the
    backfill's slot: Snowflake ends equal to Postgres."""
    import psycopg

    database = _name()
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g")
    flow = _flow(tmp_path, pgdb, "sf-bf", "public.t", {"dsn": dsn_of(snowflake, database)})
    run_worker(tmp_path, flow, args=("-mode", "backfill", "-partition-count", "3"))
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("UPDATE t SET v = 'u' WHERE id % 7 = 0")
        c.execute("DELETE FROM t WHERE id % 11 = 0")
        c.execute("INSERT INTO t VALUES (5000, 'new')")
    run_worker(tmp_path, flow)
    want = pg_rows(pgdb, "SELECT id, v FROM t ORDER BY id")
    assert rows(snowflake, database, 'SELECT "id", "v" FROM "public"."t" ORDER BY "id"') == want and len(want) == 2729


TYPES_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TABLE many (
  id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
  n_small numeric(12,4), n_big numeric(60,20), n_free numeric, t text, vc varchar(20), ch char(5), by bytea,
  d date, tm time, ts timestamp, tstz timestamptz, iv interval, tz timetz, u uuid, j json, jb jsonb,
  ia int4[], ta text[], e mood, dom posint, ip inet, mon money, big text
);
ALTER TABLE many ALTER COLUMN big SET STORAGE EXTERNAL;
"""
BIG = "🦘" * 100_000  # TOASTed out of line


def test_a_table_of_many_types_streamed_by_a_worker_equals_postgres(snowflake, pgdb, tmp_path):  # noqa: F811
    import psycopg

    database = _name()
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(TYPES_SCHEMA)
    flow = _flow(tmp_path, pgdb, "sf-types", "public.many", {"dsn": dsn_of(snowflake, database)})
    run_worker(tmp_path, flow)  # the slot
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("""INSERT INTO many VALUES (1, true, -32768, 2147483647, -9223372036854775808, 0.1, 5e-324,
            -12345678.1234, '12345678901234567890123456789012345678.12345678901234567890', 'NaN',
            'e\u0301 RTL שלום 🦘', 'ascii', 'ab', '\\x00ff10', '2024-02-29', '24:00:00', '2024-01-02 03:04:05.123456',
            '2024-03-10 02:30:00.123456 America/New_York', '1 year 2 mons -3 days 04:05:06.789', '04:05:06-08:00:30',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2, {"b": "é"}]}', '{"k": "é 🦘", "n": null}',
            '{1,NULL,3}', '{"a,b","c\\"d",NULL}', 'happy 😀', 7, '192.168.0.1/24', '-1234.56', %s)""", (BIG,))
        c.execute("INSERT INTO many (id, f4, f8, n_free, d, ts, tstz) VALUES (2, '-Infinity', 'NaN', '1e-40',"
                  " 'infinity', '-infinity', 'infinity')")
        c.execute("INSERT INTO many (id) VALUES (3)")
        c.execute("UPDATE many SET t = 'changed' WHERE id = 1")  # big: unchanged TOAST, kept from Snowflake
    run_worker(tmp_path, flow)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("UPDATE many SET id = 10, i4 = 5 WHERE id = 1")  # a key change, big still unchanged
    run_worker(tmp_path, flow)
    got = {r[0]: r for r in rows(snowflake, database, 'SELECT "id", "b", "i2", "i4", "i8", "f4", "f8", "n_small",'
                                 ' "n_big", "n_free", "t", "vc", "ch", "by", "d", "tm", "ts", "tstz", "iv", "tz", "u",'
                                 ' "j", "jb", "ia", "ta", "e", "dom", "ip", "mon", "big", "ts" IS NULL'
                                 ' FROM "public"."many" ORDER BY "id"')}
    assert sorted(got) == [2, 3, 10]
    r = got[10]
    pgr = pg_rows(pgdb, "SELECT id, b, i2, i4, i8, f4, f8, n_small, n_big::text, n_free::text, t, vc, ch, by, d,"
                    " tm::text, ts, tstz, iv::text, tz::text, u::text, j::text, jb::text, ia, ta, e::text, dom,"
                    " ip::text, mon::numeric, big FROM many WHERE id = 10")[0]
    assert r[:5] == pgr[:5]
    assert abs(r[5] - pgr[5]) < 1e-6 and r[6] == pgr[6]  # float4 as FLOAT: the float4's value
    assert r[7] == pgr[7]
    assert r[8] == pgr[8] and r[9] == "NaN"  # numeric beyond 38 digits, unconstrained numeric: text
    assert r[10:13] == pgr[10:13] and bytes(r[13]) == pgr[13] and r[14] == pgr[14]
    assert r[15] == dt.time(23, 59, 59, 999999)  # time 24:00:00: Snowflake's TIME ends before it (documented)
    assert r[16] == pgr[16] and r[17] == pgr[17]
    assert r[18] and r[19] == pgr[19] and r[20] == pgr[20]  # interval as text; timetz as Postgres' text
    assert json.loads(r[21]) == json.loads(pgr[21]) and json.loads(r[22]) == json.loads(pgr[22])
    assert json.loads(r[23]) == pgr[23] and json.loads(r[24]) == pgr[24]
    assert r[25:28] == pgr[25:28] and decimal.Decimal(r[28]) == pgr[28] and r[29] == BIG
    r2 = got[2]
    assert r2[5] == float("-inf") and r2[6] != r2[6]
    assert r2[9] == pg_rows(pgdb, "SELECT n_free::text FROM many WHERE id = 2")[0][0] == "0." + "0" * 39 + "1"
    assert r2[14] == dt.date(9999, 12, 31) and r2[17] == dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert r2[16] == dt.datetime(1, 1, 1)  # -infinity: the least timestamp
    names = ["b", "i2", "i4", "i8", "f4", "f8", "n_small", "n_big", "n_free", "t", "vc", "ch", "by", "d", "tm", "ts",
             "tstz", "iv", "tz", "u", "j", "jb", "ia", "ta", "e", "dom", "ip", "mon", "big"]
    nulls = " AND ".join(f'"{c}" IS NULL' for c in names)
    # (read as IS NULL: fakesnow hands a NULL timestamp to the connector as 1970-01-01)
    assert rows(snowflake, database, f'SELECT "id" FROM "public"."many" WHERE {nulls}') == [(3,)]


@settings(max_examples=int(os.environ.get("WALLABY_SNOWFLAKE_EXAMPLES", "3")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(rounds=st.lists(history(40), min_size=1, max_size=3))
def test_random_histories_streamed_by_a_worker_end_equal(snowflake, pg, rounds, tmp_path_factory):  # noqa: F811
    import psycopg

    from tests.conftest import _drop_database

    tmp = tmp_path_factory.mktemp("sfhist")
    name = f"sfh{random.getrandbits(40):x}"
    database = _name()
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    dsn = pg.dsn(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            create_tables(c, toast=True)
        flow = _flow(tmp, dsn, f"sf-hist-{name}", "public.h,public.k", {"dsn": dsn_of(snowflake, database)},
                     batch_size="7")
        run_worker(tmp, flow, epoch="100ms")  # creates the slot
        for ops in rounds:
            with psycopg.connect(dsn) as conn:
                play(conn, ops, toast=True)
            run_worker(tmp, flow, epoch="100ms")
            assert _snow(snowflake, database, 'SELECT "id", "v", "t" FROM "public"."h" ORDER BY "id"', "h") == \
                pg_rows(dsn, "SELECT id, v, t FROM h ORDER BY id"), rounds
            assert _snow(snowflake, database, 'SELECT "a", "b" FROM "public"."k" ORDER BY "a", "b"', "k") == \
                pg_rows(dsn, "SELECT a, b FROM k ORDER BY a, b"), rounds
    finally:
        _drop_database(pg.dsn(), name)


# A fakesnow server whose databases are DuckDB files in a directory: killed and started again between the worker's
# kills, it drops the transactions the killed worker left open (fakesnow keeps a session, and its open transaction,
# until the client logs out: a new worker's writes would conflict with them for ever). Snowflake aborts a detached
# transaction itself (after its timeout, or SYSTEM$ABORT_TRANSACTION).
FILE_SERVER = """
import importlib, sys
import uvicorn
srv = importlib.import_module("fakesnow.server")
from fakesnow.instance import FakeSnow
srv.shared_fs = FakeSnow(db_path=sys.argv[1])
uvicorn.run(srv.app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


class _FileSnow:
    def __init__(self, directory: Path):
        from tests.servers import free_port

        self.dir, self.port, self.proc = directory, free_port(), None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        from tests.snowserver import _answers

        env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWFLAKE_")}
        env["TMPDIR"] = str(self.dir)
        with open(self.dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", FILE_SERVER, str(self.dir), str(self.port)],
                                         env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        while not _answers(self.port):
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.dir / "server.log").read_text()
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def server(self):
        from tests.snowserver import SnowflakeServer

        return SnowflakeServer(host="127.0.0.1", port=self.port, tmp_dir=str(self.dir))


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(pgdb, tmp_path):
    """A writer thread keeps changing a keyed table and appending to a keyless one while the worker is killed -9 at
    6 random moments of its streaming (the fake Snowflake restarted after each, dropping the killed worker's open
    transaction); a last run catches up: the keyed table equals Postgres, and the keyless one holds every inserted
    row exactly once."""
    import psycopg

    from tests.killkit import ItemWrites, create_item_tables, kill_at_random

    snow = _FileSnow(tmp_path / "snow")
    snow.start()
    database = _name()
    with psycopg.connect(pgdb, autocommit=True) as c:
        create_item_tables(c)
    flow = _flow(tmp_path, pgdb, "sf-kill", "public.items,public.events", {"dsn": dsn_of(snow.server(), database)},
                 batch_size="50")
    try:
        run_worker(tmp_path, flow)  # the slot
        logs = []
        with ItemWrites(pgdb) as writes:
            for run in range(6):
                logs += kill_at_random([*WORKER, "-flow-file", str(flow)], worker_env(tmp_path), ROOT, tmp_path, runs=1,
                                       started="streaming from", window=(0.3, 3.0), seed=2025 + run)
                snow.kill()
                snow.start()
        assert all("Traceback" not in log for log in logs), logs
        run_worker(tmp_path, flow, args=("-max-empty-reads", "3"), timeout=300)
        assert writes.written > 100
        server = snow.server()
        assert rows(server, database, 'SELECT "id", "qty", "note" FROM "public"."items" ORDER BY "id"') == \
            pg_rows(pgdb, "SELECT * FROM items ORDER BY id")
        got = rows(server, database, 'SELECT "n", count(*) FROM "public"."events" GROUP BY "n" ORDER BY "n"')
        assert got == [(n, 1) for (n,) in pg_rows(pgdb, "SELECT n FROM events ORDER BY n")]
    finally:
        snow.kill()


def test_stored_position_and_discard_position_through_the_plugin(snowflake, db):  # noqa: F811
    from sinks.snowflake import PLUGIN

    opts = SnowflakeDestinationOptions(dsn=dsn_of(snowflake, db))
    assert PLUGIN.stored_position("snow", "flow1", opts) is None  # nothing there yet, and nothing created
    t = table("users", USERS)
    s = Stream()
    w = make(snowflake, db)
    try:
        b = s.batch(s.rows(t, ins(id=1, name="a", big="A")))
        apply(w, b)
    finally:
        w.close()
    position, _identity, where = PLUGIN.stored_position("snow", "flow1", opts)
    assert position == b.position and where.startswith("Snowflake fake@fakesnow/")
    PLUGIN.discard_position("snow", "flow1", opts)
    assert PLUGIN.stored_position("snow", "flow1", opts) is None


# the connector's own request thread reports the refused connection when the server is gone
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_snowflake_going_away_mid_epoch_is_a_transient_error(tmp_path):
    from sinks.base import TransientSinkError

    snow = _FileSnow(tmp_path / "snow")
    snow.start()
    database = _name()
    t = table("users", USERS)
    s = Stream()
    try:
        w = SnowflakeWriter("snow", "f", SnowflakeDestinationOptions(
            dsn=dsn_of(snow.server(), database, password="hunter2secret", login_timeout=3, network_timeout=3)))
        apply(w, s.batch(s.rows(t, ins(id=1, name="a", big="A"))))
        snow.kill()
        w.write(s.batch(s.rows(t, ins(id=2, name="b", big="B"))))
        with pytest.raises(TransientSinkError) as e:
            w.commit()
        assert "hunter2secret" not in str(e.value) and "table public.users" in str(e.value)
        snow.start()  # committed before it went away: there; the rest replays
        w.close()
        w = SnowflakeWriter("snow", "f", SnowflakeDestinationOptions(dsn=dsn_of(snow.server(), database)))
        apply(w, s.batch(s.rows(t, ins(id=2, name="b", big="B"))))
        w.close()
        assert users(snow.server(), database) == [(1, "a", "A"), (2, "b", "B")]
    finally:
        snow.kill()
