"""pgoutput ``binary 'true'`` (source option ``binary``): binary decoders against the text path, the fallback for
types without a binary decoder, the option, and the stream and a worker end to end with binary on against off.

The oracle is the text path (pgtypes.decode_column): a real server gives each generated value both as its output
function's text and as its send function's bytes (one query, result format text and then binary), and the two
decoded Arrow arrays must be equal, type and values, NULLs included (or both decoders must refuse the value).
"""

from __future__ import annotations

import json
import math
import struct

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sources.postgres import pgbinary, pgtypes
from sources.postgres.connection import connect
from sources.postgres.pgbinary import decode_values, numeric_text_value, numeric_texts
from sources.postgres.replication import ReplicationStream, binary_choice, binary_mode
from sources.postgres.resolver import TypeResolver, array_send
from tests.builders import parse_tuples
from tests.flows import drain, flow_spec, pg_rows, rows_of, run_worker, source_part, worker_flow
from wallaby.core.changes import TableChanges
from wallaby.core.errors import ConfigError, TerminalSourceError
from wallaby.core.options import PostgresSourceOptions

# -- the oracle ---------------------------------------------------------------------------------------------------


def both_forms(conn: psycopg.Connection, expr: str, inputs: list[str | None]) -> tuple[list, list]:
    """Each input (text, or None) cast by ``expr`` (of ``x``) on the server: (text forms, binary send forms)."""
    q = f"SELECT {expr} FROM unnest(%s::text[]) WITH ORDINALITY AS t(x, i) ORDER BY i"
    out = []
    for binary in (False, True):
        cur = conn.cursor()
        cur.execute(q, [inputs], binary=binary)
        res = cur.pgresult
        out.append([res.get_value(r, 0) for r in range(res.ntuples)])
    return out[0], out[1]


def ctype(conn: psycopg.Connection, sqltype: str) -> pgtypes.ColumnType:
    """The ColumnType of a column of ``sqltype`` (its typmod too), resolved as the resolver does."""
    conn.execute(f"DROP TABLE IF EXISTS probe; CREATE TEMP TABLE probe (v {sqltype})")
    oid, typmod, ndims = conn.execute("SELECT atttypid::int8, atttypmod, attndims FROM pg_attribute"
                                      " WHERE attrelid = 'probe'::regclass AND attname = 'v'").fetchone()
    known = dict(pgtypes.BUILTIN_TYPES)
    known.update(pgtypes.resolve_types(conn, [oid]))
    return pgtypes.column_type(int(oid), int(typmod), known, max(int(ndims), 1))


def assert_same(text_arr: pa.Array | Exception, bin_arr: pa.Array | Exception, what: str) -> None:
    if isinstance(text_arr, Exception) or isinstance(bin_arr, Exception):
        assert isinstance(text_arr, ValueError) and isinstance(bin_arr, ValueError), (what, text_arr, bin_arr)
        return
    assert text_arr.type == bin_arr.type, (what, text_arr.type, bin_arr.type)
    assert len(text_arr) == len(bin_arr)
    assert text_arr.is_valid().equals(bin_arr.is_valid()), what
    if pa.types.is_floating(text_arr.type):
        a = text_arr.to_numpy(zero_copy_only=False)
        b = bin_arr.to_numpy(zero_copy_only=False)
        ok = text_arr.is_valid().to_numpy(zero_copy_only=False)
        assert np.array_equal(a[ok], b[ok], equal_nan=True), (what, a, b)
        assert (np.signbit(a[ok]) == np.signbit(b[ok])).all() or np.isnan(a[ok]).any(), what
        return
    assert text_arr.equals(bin_arr), (what, text_arr.to_pylist()[:5], bin_arr.to_pylist()[:5])


def check(conn: psycopg.Connection, sqltype: str, inputs: list[str | None], expr: str | None = None) -> None:
    ct = ctype(conn, sqltype)
    texts, bins = both_forms(conn, expr or f"x::{sqltype}", inputs)
    results = []
    for raw, binary in ((texts, False), (bins, True)):
        try:
            results.append(decode_values(ct, pa.array(raw, pa.binary_view()), binary))
        except ValueError as exc:
            results.append(exc)
    assert_same(results[0], results[1], f"{sqltype} {inputs[:4]}")


@pytest.fixture
def conn(pgdb):
    with connect(pgdb) as c:  # the walsender's session settings: the text pgoutput would send
        yield c


def nulls(s: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.one_of(st.none(), s), min_size=1, max_size=40)


def _f(v: float) -> str:
    return "NaN" if math.isnan(v) else "Infinity" if v == math.inf else "-Infinity" if v == -math.inf else repr(v)


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
PG_DAYS = st.one_of(st.integers(-2451545, 2145031948), st.sampled_from([2**31 - 1, -(2**31), 0, -730120]))
PG_US = st.one_of(st.integers(-211813488000000000, 9223371331199999999),
                  st.sampled_from([2**63 - 1, -(2**63), 0, 9214646400000000000, 9223371331199999999]),
                  st.integers(-10**15, 10**15))
_DAYS_EXPR = ("CASE x::int8 WHEN 2147483647 THEN 'infinity'::date WHEN -2147483648 THEN '-infinity'::date"
              " ELSE '2000-01-01'::date + x::int4 END")


def _ts_expr(t: str) -> str:
    return (f"CASE x::numeric WHEN 9223372036854775807 THEN 'infinity'::{t} WHEN -9223372036854775808 THEN"
            f" '-infinity'::{t} ELSE '2000-01-01 00:00:00+00'::{t} + (x || ' microseconds')::interval END")


# -- property tests: binary == text, per type -------------------------------------------------------------------------


@given(v=nulls(st.booleans().map(str)))
def test_bool(conn, v):
    check(conn, "bool", v)


@given(v=nulls(st.integers(-(2**15), 2**15 - 1).map(str)), w=nulls(st.integers(-(2**31), 2**31 - 1).map(str)),
       x=nulls(st.integers(-(2**63), 2**63 - 1).map(str)), o=nulls(st.integers(0, 2**32 - 1).map(str)))
def test_integers(conn, v, w, x, o):
    check(conn, "int2", v)
    check(conn, "int4", w)
    check(conn, "int8", x)
    check(conn, "oid", o)


@given(f4=nulls(st.floats(width=32).map(_f)), f8=nulls(st.floats().map(_f)))
def test_floats(conn, f4, f8):
    check(conn, "float4", f4)
    check(conn, "float8", f8)


@given(t=nulls(TEXT), c=nulls(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                        max_size=7)))
def test_text_types(conn, t, c):
    check(conn, "text", t)
    check(conn, "varchar(40)", t)
    check(conn, "char(5)", c)  # bpchar: trailing blanks kept in both
    check(conn, "name", t)


@given(b=nulls(st.binary(max_size=40).map(lambda b: "\\x" + b.hex())))
def test_bytea(conn, b):
    check(conn, "bytea", b)


@given(d=nulls(PG_DAYS.map(str)))
def test_date(conn, d):
    check(conn, "date", d, _DAYS_EXPR)


@given(us=nulls(PG_US.map(str)))
def test_timestamps(conn, us):
    check(conn, "timestamp", us, _ts_expr("timestamp"))
    check(conn, "timestamptz", us, _ts_expr("timestamptz"))


@given(us=nulls(st.one_of(st.integers(0, 86_400_000_000), st.just(86_400_000_000)).map(str)))
def test_time(conn, us):
    check(conn, "time", us, "CASE WHEN x::int8 = 86400000000 THEN '24:00:00'::time"
                            " ELSE '00:00'::time + (x || ' microseconds')::interval END")


INTERVALS = st.tuples(st.integers(-(2**31) + 1, 2**31 - 2), st.integers(-(2**31) + 1, 2**31 - 2),
                      st.one_of(st.integers(-(2**62), 2**62), st.integers(-10**13, 10**13))
                      ).map(lambda t: f"{t[0]} mons {t[1]} days {t[2]} microseconds")


@given(data=st.data())
def test_interval(conn, data):
    """Past ~2.56 M hours both refuse (int64 ns); ±infinity from Postgres 17."""
    specials = ["infinity", "-infinity"] if conn.info.server_version >= 170000 else ["0"]
    check(conn, "interval", data.draw(nulls(INTERVALS | st.sampled_from(specials))))


@given(u=nulls(st.uuids().map(str)))
def test_uuid(conn, u):
    check(conn, "uuid", u)


@given(lsn=nulls(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**32, 2**64 - 1, 0xABC00000000]))
                 .map(lambda v: f"{v >> 32:X}/{v & 0xFFFFFFFF:X}")))
def test_pg_lsn(conn, lsn):
    check(conn, "pg_lsn", lsn)


def test_jsonb_long_values_as_views(conn):
    """Every value 14 bytes or more (as parse_tuples' views hold them): the views are moved on by the version byte,
    nothing copied; the short-value path is test_json's."""
    values = ['{"a": 1, "b": "xxxxxxxxxxxxxxxxxxxxxxxxxxxx"}', None, '["é🦘", 12345678901234]', '"0123456789ab"']
    ct = ctype(conn, "jsonb")
    texts, bins = both_forms(conn, "x::jsonb", values)
    raw = pa.array(bins, pa.binary_view())
    assert pgbinary._jsonb_views(raw) is not None
    assert_same(decode_values(ct, pa.array(texts, pa.binary_view()), False), decode_values(ct, raw, True), "jsonb")


@given(j=nulls(st.recursive(st.none() | st.booleans() | st.integers() | TEXT,
                            lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3),
                            max_leaves=8).map(json.dumps)))
def test_json(conn, j):
    check(conn, "json", j)
    check(conn, "jsonb", j)


NUMERIC_SPECIAL = st.sampled_from(["NaN", "Infinity", "-Infinity", "0", "-0.000", "1e-30", "9999.9999",
                                   "100000000", "0.0001"])


@given(n=nulls(st.one_of(st.decimals(allow_nan=False, allow_infinity=False).map(str), NUMERIC_SPECIAL)))
def test_numeric_unconstrained(conn, n):
    check(conn, "numeric", n)


def _scaled(unscaled: int, scale: int) -> str:
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    return ("-" if unscaled < 0 else "") + digits[:len(digits) - scale] + ("." + digits[-scale:] if scale else "")


@pytest.mark.parametrize("p,s", [(10, 2), (38, 10), (5, 0), (18, 4), (3, 3), (38, 0), (1, 0)])
@given(data=st.data())
def test_numeric_typmods(conn, p, s, data):
    values = data.draw(nulls(st.one_of(
        st.integers(-(10**p) + 1, 10**p - 1).map(lambda u: _scaled(u, s)),
        st.sampled_from(["NaN", "0"]) if data.draw(st.booleans()) else st.just("0"))))
    check(conn, f"numeric({p},{s})", values)


@given(c=nulls(st.integers(-(2**63), 2**63 - 1).map(str)))
def test_money(conn, c):
    check(conn, "money", c, "(x::numeric / 100)::money")


def test_enum_and_domains(conn):
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 🦘')")
    conn.execute("CREATE DOMAIN price AS numeric(10,2)")
    conn.execute("CREATE DOMAIN word AS varchar(10)")
    check(conn, "mood", ["sad", None, "happy 🦘"])
    check(conn, "price", ["1.5", None, "-99999999.99"])
    check(conn, "word", ["a", None, ""])


def test_numeric_texts_per_value_path_agrees(conn, monkeypatch):
    """The per-value rebuild (huge matrices) prints what the vectorised one does."""
    values = ["0", "-0.5", "123456789.000100", "NaN", "Infinity", "-Infinity", None, "1e-20", "1e30", "0.0000",
              "-12345678901234567890.123456789"]
    _, bins = both_forms(conn, "x::numeric", values)
    vec = numeric_texts(pa.array(bins, pa.binary_view()))
    per = [None if b is None else numeric_text_value(b) for b in bins]
    assert vec.to_pylist() == per
    monkeypatch.setattr(pgbinary, "NUMERIC_MATRIX_MAX", 0)
    assert numeric_texts(pa.array(bins, pa.binary_view())).to_pylist() == per
    texts, _ = both_forms(conn, "x::numeric", values)
    assert per == [None if t is None else t.decode() for t in texts]


def test_bad_binary_values_are_refused():
    ct = pgtypes.column_type(23, -1, pgtypes.BUILTIN_TYPES)
    with pytest.raises(ValueError, match="int4"):
        decode_values(ct, pa.array([b"\x00\x01"], pa.binary_view()), True)
    jb = pgtypes.column_type(3802, -1, pgtypes.BUILTIN_TYPES)
    with pytest.raises(ValueError, match="version"):
        decode_values(jb, pa.array([b"\x02{}"], pa.binary_view()), True)


def test_mixed_kinds_in_one_column(conn):
    """A column whose batch holds text and binary values (never sent so today) decodes each by its kind."""
    ct = ctype(conn, "numeric(6,2)")
    texts, bins = both_forms(conn, "x::numeric(6,2)", ["1.5", None, "NaN", "-3"])
    mixed = [texts[0], None, bins[2], bins[3]]
    got = decode_values(ct, pa.array(mixed, pa.binary_view()), np.array([False, False, True, True]))
    assert got.to_pylist() == ["1.50", None, "NaN", "-3.00"]


# -- tuples: the kind of each column --------------------------------------------------------------------------------


def _tuple(*cols: tuple[bytes, bytes | None]) -> bytes:
    out = struct.pack(">h", len(cols))
    for kind, v in cols:
        out += kind + (b"" if v is None else struct.pack(">i", len(v)) + v)
    return out


def test_parse_tuples_reports_binary_columns():
    rows = [(_tuple((b"t", b"1"), (b"b", b"\x00\x00\x00\x02"), (b"n", None), (b"b", b"x")), 0),
            None,
            (_tuple((b"t", b"3"), (b"n", None), (b"u", None), (b"t", b"y")), 0)]
    p = parse_tuples(rows, 4)
    assert p.binary[0] is False and p.binary[1] is True and p.binary[2] is False
    assert p.binary[3].tolist() == [True, False, False]
    assert p.values[1].to_pylist() == [b"\x00\x00\x00\x02", None, None]


# -- the option -------------------------------------------------------------------------------------------------------


def test_option_parses_and_explains():
    base = {"dsn": "postgresql://u@h/db", "slot": "s", "publication": "p"}
    assert PostgresSourceOptions.parse(base).binary == "false"  # off by default
    assert PostgresSourceOptions.parse({**base, "binary": True}).binary == "true"
    assert PostgresSourceOptions.parse({**base, "binary": "OFF"}).binary == "false"
    with pytest.raises(ConfigError, match=r"binary.*'auto', 'true', 'false'"):
        PostgresSourceOptions.parse({**base, "binary": "sometimes"})


def test_binary_choice():
    assert binary_choice("false", 160000, None) == (False, "off (binary=false)")
    assert binary_choice("true", 140000, ["point"])[0] is True
    assert binary_choice("auto", 150000, [])[0] is True
    on, why = binary_choice("auto", 150000, ["inet", "point"])
    assert not on and "inet, point" in why
    on, why = binary_choice("auto", 130000, None)
    assert not on and "14" in why
    with pytest.raises(TerminalSourceError, match="binary=true needs Postgres 14"):
        binary_choice("true", 130011, None, "db:5432")
    # raw pgoutput messages to a destination (HTTP payload_mode=wal): auto keeps them text
    assert binary_mode("auto", True) == "false" and binary_mode("auto", False) == "auto"
    assert binary_mode("true", True) == "true"
    assert binary_mode("auto", False, resolve_types=False) == "false"  # custom types unknown to the decoders


# -- types without a binary decoder: through the server ---------------------------------------------------------------

UNDECODED = {  # type -> values (text input)
    "point": ["(1,2)", None, "(-1.5,1e300)"],
    "inet": ["1.2.3.4", "::1/128", None, "10.0.0.0/8"],  # inet::text would add /32: the output function does not
    "tsvector": ["a fat cat", None, "'x y':1A"],
    "pair": ["(1,\"a b\")", None, "(,)"],  # a composite
    "posint": ["5", None],  # a domain over int4 decodes; over point it does not:
    "place": ["(0,0)", None],
    "int4range": ["[1,5)", "empty", None],
    "point[]": ["{\"(1,2)\",NULL}", "{}", None],  # an array of a type without a decoder
    "int4[][]": ["{{1,2},{3,NULL}}", "{}", None, "[0:0][2:3]={{7,8}}"],  # 2-D: no array type to send them in
}


def test_binary_as_text_for_types_without_a_decoder(pgdb):
    with connect(pgdb) as c:
        c.execute("CREATE TYPE pair AS (a int, b text)")
        c.execute("CREATE DOMAIN posint AS int4 CHECK (VALUE > 0)")
        c.execute("CREATE DOMAIN place AS point")
        resolver = TypeResolver(pgdb, True, "t")
        try:
            for name, values in UNDECODED.items():
                ct = ctype(c, name)
                oid = c.execute("SELECT %s::regtype::oid::int8", (name,)).fetchone()[0]
                texts, bins = both_forms(c, f"x::{name}", values)
                want = pgtypes.decode_column(ct, pa.array(texts, pa.binary_view()))
                got = decode_values(ct, pa.array(bins, pa.binary_view()), True,
                                    lambda v, oid=oid: resolver.binary_as_text(oid, v))
                assert_same(want, got, name)
                if name != "posint":
                    assert not pgbinary.decodes(ct), name
        finally:
            resolver.close()


def test_binary_values_without_decoder_or_server_are_refused():
    ct = pgtypes.column_type(600, -1, pgtypes.BUILTIN_TYPES)  # point
    with pytest.raises(pgbinary.NoBinaryDecoder, match="point"):
        decode_values(ct, pa.array([b"\x00" * 16], pa.binary_view()), True)


def test_array_send_layout():
    assert array_send(23, [b"\x00\x00\x00\x01", None]) == (
        struct.pack(">iiIii", 1, 1, 23, 2, 1) + struct.pack(">i", 4) + b"\x00\x00\x00\x01" + b"\xff\xff\xff\xff")


# -- the stream: binary on against off -----------------------------------------------------------------------

EVERY_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE every (id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8,
  t text, vc varchar(20), c char(4), nm name, by bytea, d date, ts timestamp, tz timestamptz, tm time,
  iv interval, u uuid, n numeric, n2 numeric(12,3), nb numeric(38,6), m money, j json, jb jsonb, e mood);
"""
ODD_DDL = """
CREATE TYPE pair AS (a int, b text);
CREATE TABLE odd (id int PRIMARY KEY, p point, addr inet, tv tsvector, pr pair, a int4[], n numeric(5,1));
"""
EVERY_ROWS = """
INSERT INTO every SELECT g, g % 2 = 0, g, g * 1000, g::int8 * 10000000000, g, g / 7.0, g / 3.0,
  'text ' || g || repeat('x', g % 20), 'v' || g, 'c' || (g % 10), 'n' || g, decode(md5(g::text), 'hex'),
  '2000-01-01'::date + g * 37, '1999-12-31 23:59:59.5'::timestamp + g * interval '1 day 1.25 sec',
  '2020-06-01 12:00+02'::timestamptz + g * interval '77 min', '00:00'::time + g * interval '13 min 0.001 sec',
  make_interval(g % 30, g % 11, 0, g % 5, g, 0, g / 9.0), md5(g::text)::uuid, g / 17.0, g * 1.125,
  g::numeric * 1e20 / 7, g * 1.01, json_build_object('g', g, 's', 'é' || g),
  jsonb_build_object('g', g, 'l', jsonb_build_array(g, 'x')),
  CASE WHEN g % 2 = 0 THEN 'sad' ELSE 'ok' END::mood
FROM generate_series(1, 300) g;
INSERT INTO every (id) VALUES (0);
INSERT INTO every (id, f8, d, ts, n) VALUES (-1, 'NaN', 'infinity', '-infinity', 'NaN');
UPDATE every SET t = t || '!', n2 = n2 + 1 WHERE id % 7 = 0;
DELETE FROM every WHERE id % 11 = 0;
"""
ODD_ROWS = """
INSERT INTO odd SELECT g, point(g, -g), ('10.0.' || (g % 250) || '.1')::inet, to_tsvector('simple', 'w' || g || ' z'),
  ROW(g, 'b ' || g)::pair, ARRAY[g, NULL, g + 1], g / 4.0 FROM generate_series(1, 120) g;
INSERT INTO odd (id) VALUES (0);
UPDATE odd SET p = point(0, 0) WHERE id % 5 = 0;
"""


def _stream_rows(dsn: str, binary: str, slot: str, changes: int) -> tuple[list[dict], bool]:
    spec = flow_spec(dsn, flow_id=f"f_{slot}", slot=slot, publication=slot,
                     source={"binary": binary, "batch_size": 64, "publication_tables": "public.every,public.odd"})
    part = source_part(spec)
    try:
        rows = comparable(drain(part, until_rows=changes, timeout=60))
        on = part.reader.stream.binary if part.reader is not None else None
    finally:
        part.close()
    return rows, on


def comparable(batches) -> list[dict]:
    """Row changes as dicts, dates and times as their Arrow integers (±infinity, 24:00 have no Python value), the
    position and commit columns left out."""
    out = []
    for b in batches:
        for seg in b.segments:
            if not isinstance(seg, TableChanges):
                continue
            cols = {}
            for name, col in zip(seg.rows.column_names, seg.rows.columns, strict=True):
                if name in ("__lsn", "__ts", "__xid"):
                    continue
                if pa.types.is_date32(col.type):
                    col = col.cast(pa.int32())
                elif pa.types.is_timestamp(col.type) or pa.types.is_time64(col.type):
                    col = col.cast(pa.int64())
                cols[name] = col.to_pylist()
            out += [{"table": seg.table.name, **{k: v[i] for k, v in cols.items()}} for i in range(seg.rows.num_rows)]
    return out


def test_stream_binary_equals_text(pgdb):
    """The same changes streamed with binary off, on (auto: off here, the odd table's types have no decoder), and
    forced on: every batch decodes to the same rows; undecoded types go through the server."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(EVERY_DDL + ODD_DDL)
    slots = {"off": "false", "auto": "auto", "on": "true"}
    for slot, mode in slots.items():  # the slots exist before the changes: each streams them all
        _stream_rows(pgdb, mode, f"s_{slot}", 0)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(EVERY_ROWS + ODD_ROWS)
    ids = range(-1, 301)
    changes = (302 + sum(i % 7 == 0 for i in ids) + sum(i % 11 == 0 for i in ids)  # every: inserts, updates, deletes
               + 121 + sum(i % 5 == 0 for i in range(121)))  # odd: inserts, updates
    got = {slot: _stream_rows(pgdb, mode, f"s_{slot}", changes) for slot, mode in slots.items()}
    assert got["off"][1] is False and got["auto"][1] is False and got["on"][1] is True

    off = got["off"][0]
    assert len(off) == changes > 400
    assert {r["__op"] for r in off} >= {"insert", "update", "delete"}
    assert _same_with_nan(got["on"][0], off)
    assert _same_with_nan(got["auto"][0], off)
    assert any(r["table"] == "odd" and r["addr"] == "10.0.1.1" for r in got["on"][0])  # inet's own output


def _same_with_nan(a: list[dict], b: list[dict]) -> bool:
    return json.dumps(a, default=str, sort_keys=True) == json.dumps(b, default=str, sort_keys=True)


def test_auto_turns_binary_on_when_every_type_decodes(pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE plain (id int PRIMARY KEY, t text, n numeric(10,2), at timestamptz)")
        c.execute("CREATE PUBLICATION s_auto FOR TABLE plain")
        c.execute("SELECT pg_create_logical_replication_slot('s_auto', 'pgoutput')")
    stream = ReplicationStream(pgdb, "s_auto", "s_auto", 3, 0, "t", binary="auto")
    try:
        assert stream.binary is True
    finally:
        stream.close()
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("ALTER TABLE plain ADD COLUMN p point")
    stream = ReplicationStream(pgdb, "s_auto", "s_auto", 3, 0, "t", binary="auto")
    try:
        assert stream.binary is False
    finally:
        stream.close()


def test_auto_then_a_new_undecoded_column_goes_through_the_server(pgdb):
    """binary=auto chose on; a column of a type without a decoder is added while streaming: its values still
    arrive right (through the server), nothing lost."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE grow (id int PRIMARY KEY, v int8)")
    spec = flow_spec(pgdb, flow_id="grow", slot="s_grow", publication="s_grow",
                     source={"binary": "auto", "publication_tables": "public.grow"})
    part = source_part(spec)
    try:
        drain(part, until_rows=0)
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO grow SELECT g, g FROM generate_series(1, 50) g")
        rows = rows_of(drain(part, until_rows=50))
        assert part.reader.stream.binary is True
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("ALTER TABLE grow ADD COLUMN addr inet")
            c.execute("INSERT INTO grow SELECT g, g, ('192.168.0.' || g)::inet FROM generate_series(51, 100) g")
        rows += rows_of(drain(part, until_rows=51))  # the drift event and 50 inserts
        assert part.reader.stream.binary is True  # the same stream: no reconnect
    finally:
        part.close()
    inserts = [r for r in rows if r["__op"] == "insert"]
    assert [r["id"] for r in inserts] == list(range(1, 101))
    assert [r["v"] for r in inserts] == list(range(1, 101))
    assert [r.get("addr") for r in inserts[50:]] == [f"192.168.0.{g}" for g in range(51, 101)]


# -- a worker end to end into DuckDB: binary on ends equal to off ------------------------------------------------


def test_worker_into_duckdb_binary_equals_text(pgdb, tmp_path):
    """A worker streaming every decoded type into DuckDB with binary on ends equal to one with binary off."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(EVERY_DDL)
    flows = {}
    for mode in ("true", "false"):
        (tmp_path / mode).mkdir()
        flows[mode] = worker_flow(tmp_path / mode, pgdb, f"bin_{mode}", "public.every",
                                  {"dsn": str(tmp_path / mode / "d.duckdb")}, dest_type="duckdb", binary=mode)
        run_worker(tmp_path / mode, flows[mode])  # creates the slot: the changes below stream to both
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(EVERY_ROWS)
    tables = {}
    for mode in ("true", "false"):
        r = run_worker(tmp_path / mode, flows[mode])
        assert f"binary={mode}: {'on' if mode == 'true' else 'off'}" in r.stderr
        with duckdb.connect(str(tmp_path / mode / "d.duckdb"), read_only=True) as d:
            tables[mode] = d.execute("SELECT * FROM public.every ORDER BY id").fetchall()
    assert len(tables["false"]) == pg_rows(pgdb, "SELECT count(*) FROM every")[0][0] > 250
    assert _same_with_nan(tables["true"], tables["false"])


# -- arrays ---------------------------------------------------------------------------------------------------------


@given(data=st.data())
def test_arrays(conn, data):
    """1-D arrays of decoded types: '{}', NULL elements, bounds, NaN numerics; a 2-D value refused by both."""
    ints = nulls(st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=6)
                 .map(lambda v: "{" + ",".join("NULL" if x is None else str(x) for x in v) + "}"))
    check(conn, "int4[]", data.draw(ints))
    words = nulls(st.lists(st.one_of(st.none(), TEXT), max_size=5).map(
        lambda v: "{" + ",".join("NULL" if x is None else '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
                                 for x in v) + "}"))
    check(conn, "text[]", data.draw(words))
    nums = nulls(st.lists(st.one_of(st.none(), st.sampled_from(["1.5", "-0.25", "NaN", "100", "0"])), max_size=4)
                 .map(lambda v: "{" + ",".join("NULL" if x is None else x for x in v) + "}"))
    check(conn, "numeric(6,2)[]", data.draw(nums))
    check(conn, "timestamptz[]", data.draw(nulls(st.sampled_from(
        ["{}", "{infinity,NULL,\"2020-01-01 00:00:00+00\"}", "[0:1]={\"1999-12-31 23:59:59.999999+00\",-infinity}"]))))
    check(conn, "int8[]", data.draw(nulls(st.sampled_from(["{}", "{{1,2},{3,4}}", "[5:6]={1,2}", "{7}"]))))
