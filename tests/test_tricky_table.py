"""The tricky table, Postgres -> DuckDB through the real source and sink: every type, value for value.

Expected DuckDB values are written out by hand (not computed by wallaby's own
decoder), so a decoding bug and a sink bug both show up here. (xml is left out:
the embedded Postgres is built without libxml; xml travels as text like json.)
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg
import pytest

from tests.flows import flow_spec

UTC = dt.UTC
BIG = "🦘" * 300_000  # > 1 MB of UTF-8: TOASTed out of line

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE DOMAIN price AS numeric(10,2);
CREATE TABLE tricky (
  id int PRIMARY KEY,
  b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
  n_small numeric(12,4), n_big numeric(1000,500), n_free numeric,
  t text, vc varchar(20), ch char(5), by bytea,
  d date, tm time, ts timestamp, tstz timestamptz, iv interval,
  u uuid, j json, jb jsonb,
  ia int4[], ta text[], m2 int4[][],
  e mood, dom posint, dnum price,
  ip inet, mac macaddr, mon money,
  big text
);
ALTER TABLE tricky ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE composite (a int, b text, v text, PRIMARY KEY (a, b));
CREATE TABLE nokey (a int, b text);
ALTER TABLE nokey REPLICA IDENTITY FULL;
"""

N_BIG = "1" * 500 + "." + "9" * 500
ROW1 = {
    "id": 1, "b": True, "i2": -32768, "i4": 2147483647, "i8": -9223372036854775808, "f4": 0.1, "f8": 5e-324,
    "n_small": Decimal("-12345678.1234"), "n_big": N_BIG, "n_free": "NaN",
    "t": "e\u0301 RTL \u05e9\u05dc\u05d5\u05dd 🦘 \x01", "vc": "ascii", "ch": "ab",
    "by": bytes(range(256)) + b"\x00\x00",
    "d": "0044-03-15 BC", "tm": "24:00:00", "ts": "infinity", "tstz": "2024-03-10 02:30:00.123456 America/New_York",
    "iv": "1 year 2 mons -3 days 04:05:06.789", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "j": '{"a": [1, 2, {"b": "\\u00e9"}]}', "jb": '{"k": "é 🦘 \\"quoted\\"", "n": null}',
    "ia": "{1,NULL,3}", "ta": '{"a,b","c\\"d",NULL,"NULL","}{"}', "m2": "{{1,2},{3,NULL}}",
    "e": "happy 😀", "dom": 7, "dnum": Decimal("12.30"),
    "ip": "192.168.0.1/24", "mac": "08:00:2b:01:02:03", "mon": "-1234.56", "big": BIG,
}
ROW2 = {
    "id": 2, "b": False, "f4": float("-inf"), "f8": float("nan"), "n_small": Decimal("0.0001"), "n_free": "1e-40",
    "d": "infinity", "ts": "2000-01-01 00:00:00", "tstz": "-infinity", "iv": "-1 days",
    "tm": "00:00:00.000001", "t": "", "ia": "{}", "m2": "{}", "ta": "{}",
}
ROW3 = {"id": 3}  # NULL everywhere


def insert(conn: psycopg.Connection, row: dict) -> None:
    cols = list(row)
    conn.execute(f"INSERT INTO tricky ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                 [row[c] for c in cols])


@pytest.fixture
def tricky(pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(SCHEMA)
    return pgdb


def run_once(spec) -> None:
    from datetime import timedelta as td

    from bytewax.testing import run_main

    from dataflows.flow import build_flow

    run_main(build_flow(spec, max_empty_reads=2), epoch_interval=td(milliseconds=200))


def duck(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as d:
        d.execute("SET TimeZone = 'UTC'")
        return d.execute(sql).fetchall()


def test_tricky_table_equals_postgres_value_for_value(tricky, tmp_path):
    path = tmp_path / "tricky.duckdb"
    spec = flow_spec(tricky, duckdb_path=path,
                     source={"publication_tables": "public.tricky,public.composite,public.nokey"})
    from sources.postgres.setup import prepare_source

    prepare_source(spec.source_options(), spec.id)
    with psycopg.connect(tricky, autocommit=True) as c:
        c.execute("SET TimeZone = 'Asia/Kathmandu'")  # +05:45: the source session's zone must not matter
        for row in (ROW1, ROW2, ROW3):
            insert(c, row)
        c.execute("UPDATE tricky SET i4 = 42 WHERE id = 1")  # big stays unchanged (TOAST 'u')
        c.execute("INSERT INTO composite VALUES (1, 'x', 'one'), (1, 'y', 'two'), (2, 'x', 'three')")
        c.execute("UPDATE composite SET v = 'uno' WHERE a = 1 AND b = 'x'")
        c.execute("UPDATE composite SET b = 'z' WHERE a = 2")  # key change
        c.execute("DELETE FROM composite WHERE a = 1 AND b = 'y'")
        c.execute("INSERT INTO nokey VALUES (1, 'a'), (1, 'a'), (2, NULL)")
        c.execute("DELETE FROM nokey WHERE ctid = (SELECT min(ctid) FROM nokey WHERE a = 1)")
        c.execute("UPDATE nokey SET b = 'b' WHERE a = 2")
    run_once(spec)

    got = {r[0]: r for r in duck(path, "SELECT * FROM public.tricky ORDER BY id")}
    names = [r[0] for r in duck(path, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'tricky'"
                                      " ORDER BY column_index")]
    assert set(got) == {1, 2, 3}
    r1 = dict(zip(names, got[1], strict=True))
    r2 = dict(zip(names, got[2], strict=True))
    r3 = dict(zip(names, got[3], strict=True))

    assert all(v is None for k, v in r3.items() if k != "id")

    assert (r1["b"], r1["i2"], r1["i4"], r1["i8"]) == (True, -32768, 42, -9223372036854775808)
    assert r1["f4"] == pytest.approx(0.1, rel=1e-7) and r1["f8"] == 5e-324
    assert r1["n_small"] == Decimal("-12345678.1234")
    assert str(r1["n_big"]) == N_BIG and r1["n_free"] == "NaN"
    assert r1["t"] == ROW1["t"] and r1["vc"] == "ascii" and r1["ch"] == "ab   "
    assert bytes(r1["by"]) == ROW1["by"]
    assert r1["tstz"] == dt.datetime(2024, 3, 10, 7, 30, 0, 123456, tzinfo=UTC)
    assert r1["u"] in (uuid.UUID(ROW1["u"]), ROW1["u"])
    import json as _json

    assert _json.loads(r1["j"]) == {"a": [1, 2, {"b": "é"}]}
    assert _json.loads(r1["jb"]) == {"k": 'é 🦘 "quoted"', "n": None}
    assert r1["ia"] == [1, None, 3] and r1["ta"] == ["a,b", 'c"d', None, "NULL", "}{"]
    assert r1["m2"] == [[1, 2], [3, None]]
    assert r1["e"] == "happy 😀" and r1["dom"] == 7 and r1["dnum"] == Decimal("12.30")
    assert r1["ip"] == "192.168.0.1/24" and r1["mac"] == "08:00:2b:01:02:03"
    assert r1["mon"] == Decimal("-1234.56")
    assert r1["big"] == BIG  # unchanged by the update: kept, not overwritten with NULL

    assert r2["b"] is False and r2["f4"] == float("-inf") and math.isnan(r2["f8"])
    assert r2["n_small"] == Decimal("0.0001") and Decimal(r2["n_free"]) == Decimal("1e-40")
    assert r2["t"] == "" and r2["ia"] == [] and r2["m2"] == [] and r2["ta"] == []
    assert r2["ts"] == dt.datetime(2000, 1, 1)
    assert r2["tm"] == dt.time(0, 0, 0, 1)

    # Values Python cannot hold (infinity, BC, 24:00, months): compare DuckDB's own text.
    text = {r[0]: r[1:] for r in duck(path, "SELECT id, d::VARCHAR, ts::VARCHAR, tstz::VARCHAR, tm::VARCHAR,"
                                            " iv::VARCHAR FROM public.tricky ORDER BY id")}
    assert text[1][0] == "0044-03-15 (BC)"
    assert text[1][1] == "infinity"
    assert text[1][3] == "24:00:00"
    assert text[1][4] == "1 year 2 months -3 days 04:05:06.789"
    assert text[2][0] == "infinity"
    assert text[2][2] == "-infinity"
    assert text[2][4] == "-1 day"

    assert duck(path, "SELECT a, b, v FROM public.composite ORDER BY a, b") == [(1, "x", "uno"), (2, "z", "three")]
    assert sorted(duck(path, "SELECT a, b FROM public.nokey"), key=str) == sorted([(1, "a"), (2, "b")], key=str)


def test_interval_components(tricky, tmp_path):
    """Intervals keep months, days and microseconds apart (no 30-day months)."""
    path = tmp_path / "iv.duckdb"
    spec = flow_spec(tricky, duckdb_path=path, source={"publication_tables": "public.tricky"})
    from sources.postgres.setup import prepare_source

    prepare_source(spec.source_options(), spec.id)
    with psycopg.connect(tricky, autocommit=True) as c:
        insert(c, {"id": 10, "iv": "1 mon 1 day 00:00:01"})
    run_once(spec)
    row = duck(path, "SELECT datepart('month', iv), datepart('day', iv), datepart('microseconds', iv)"
                     " FROM public.tricky WHERE id = 10")
    assert row == [(1, 1, 1_000_000)]
    assert timedelta(seconds=1).total_seconds() == 1
