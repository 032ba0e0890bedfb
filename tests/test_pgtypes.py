"""sources.postgres.pgtypes / sources.postgres.pgarray against the real server's text output.

Values are inserted into a fresh database, read back as the server's raw text
output (text format, ``pgresult.get_value``) under SESSION_SETTINGS, exactly
what pgoutput sends, and decoded. Expected values come from Python or from
the server itself (``extract(epoch ...)``, ``d - '1970-01-01'``), never from
the decoder.

decode_column cost, ns per value, batches of 10,000 (``python -m tests.test_pgtypes``
prints this table: timeit, best of 5; a shared 2-vCPU VM, Python 3.11,
pyarrow 26; figures move by +-40% between runs there). "list" is a Python
list of bytes, "view" the binary_view array the batcher really passes
(sources/tuples.py):

    type                                 list    view
    bool                                   58      31
    int4                                   51      19
    int8                                   55      26
    float8                                 72      41
    numeric(12,4) -> decimal128            88      60
    numeric (no typmod) -> string          39      13
    text (20 chars)                        37      11
    uuid                                   39      12
    money                                 177     148
    bytea (16 bytes)                      175     159
    date                                   52      26
    time                                  131     101
    timestamp                              70      47
    timestamptz                            83      45
    timestamptz, 1% 'infinity'            213     162
    timestamptz, 1% BC                    235     211
    interval                             1581    1474   (RE2 extract_regex dominates)
    int4[] (5 elements)                   608     471
    text[] (3 unquoted elements)          256     218
    text[] (3 quoted elements)           3398    3437   (per-value parser)
    int4[][] (2x2)                        533     415
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import timeit
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sources.postgres import pgarray, pgtypes
from sources.postgres.pgtypes import (
    BUILTIN_TYPES,
    DATE_NEG_INF,
    DATE_POS_INF,
    INTERVAL_NEG_INF,
    INTERVAL_POS_INF,
    SESSION_SETTINGS,
    TS_NEG_INF,
    TS_POS_INF,
    ColumnType,
    PgType,
    column_type,
    decode_column,
    decode_value,
    libpq_options,
    numeric_precision,
    resolve_types,
)

# -- helpers -------------------------------------------------------------------------------------------------


@pytest.fixture
def conn(pgdb):
    with psycopg.connect(pgdb, options=libpq_options(SESSION_SETTINGS), autocommit=True) as c:
        yield c


def raw_rows(conn: psycopg.Connection, sql: str, params=None) -> tuple[list[bytes | None], int, int]:
    """The server's text output of the first result column: (raw values, type oid, typmod)."""
    cur = conn.execute(sql, params)
    res = cur.pgresult
    assert res is not None and res.fformat(0) == 0  # text format
    return [res.get_value(i, 0) for i in range(res.ntuples)], res.ftype(0), res.fmod(0)


def table(conn: psycopg.Connection, ddl: str, rows: list[dict]) -> None:
    """CREATE TABLE t (id serial, <ddl>) and insert rows (values as text; psycopg leaves them untyped)."""
    conn.execute(f"CREATE TABLE t (id serial PRIMARY KEY, {ddl})")
    for row in rows:
        if not row:
            conn.execute("INSERT INTO t DEFAULT VALUES")
            continue
        cols = list(row)
        conn.execute(f"INSERT INTO t ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                     [row[c] for c in cols])


def coltype(conn: psycopg.Connection, col: str, rel: str = "t") -> ColumnType:
    """The column's ColumnType the way the source builds it: atttypid, atttypmod, attndims, resolve_types."""
    oid, typmod, ndims = conn.execute(
        "SELECT atttypid::int8, atttypmod, attndims FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
        (rel, col),
    ).fetchone()
    return column_type(oid, typmod, {**BUILTIN_TYPES, **resolve_types(conn, [oid])}, max(ndims, 1))


def decoded(conn: psycopg.Connection, col: str, rel: str = "t") -> pa.Array:
    raw, _, _ = raw_rows(conn, f"SELECT {col} FROM {rel} ORDER BY id")
    return decode_column(coltype(conn, col, rel), raw)


def server_text(conn: psycopg.Connection, col: str, rel: str = "t") -> list[str | None]:
    raw, _, _ = raw_rows(conn, f"SELECT {col} FROM {rel} ORDER BY id")
    return [None if v is None else v.decode() for v in raw]


def storage(arr: pa.Array) -> list:
    """Temporal values as their integers (sentinels and BC dates do not fit Python's datetime)."""
    t = arr.type
    if pa.types.is_date32(t):
        return arr.cast(pa.int32()).to_pylist()
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return arr.cast(pa.int64()).to_pylist()
    return arr.to_pylist()


def f64_bits(x: float) -> bytes:
    return struct.pack("<d", x)


def f32_bits(x: float) -> bytes:
    return struct.pack("<f", x)


# -- settings ---------------------------------------------------------------------------------------------------


def test_session_settings_reach_the_server(pgdb):
    settings = {**SESSION_SETTINGS, "application_name": "a b\\c  d"}  # spaces and a backslash
    opts = libpq_options(settings)
    assert opts.startswith("-c TimeZone=UTC -c DateStyle=ISO ")
    assert "-c application_name=a\\ b\\\\c\\ \\ d" in opts
    with psycopg.connect(pgdb, options=opts) as c:
        for k, v in settings.items():
            shown = c.execute(f"SHOW {k}").fetchone()[0]
            assert shown == v or (k == "DateStyle" and shown.startswith("ISO")), (k, shown)
    with pytest.raises(ValueError):
        libpq_options({"bad name": "x"})


# -- the registry ---------------------------------------------------------------------------------------------


def test_builtin_types_match_the_server(conn):
    rows = conn.execute(
        "SELECT t.oid::int8, t.typname::text, n.nspname::text, t.typtype::text, t.typdelim::text,"
        " CASE WHEN t.typoutput = 'array_out'::regproc THEN t.typelem ELSE 0 END::int8, t.typbasetype::int8"
        " FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = ANY(%s)",
        (list(BUILTIN_TYPES),),
    ).fetchall()
    server = {r[0]: PgType(r[0], r[1], r[2], r[3], r[6], r[5], None, r[4]) for r in rows}
    assert set(server) == set(BUILTIN_TYPES)
    for oid, t in BUILTIN_TYPES.items():
        assert t == server[oid], (oid, t, server[oid])
    # the numbers the rest of the code (and the brief) rely on
    expected = {16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2", 23: "int4", 25: "text",
                26: "oid", 114: "json", 142: "xml", 650: "cidr", 700: "float4", 701: "float8", 774: "macaddr8",
                790: "money", 829: "macaddr", 869: "inet", 1042: "bpchar", 1043: "varchar", 1082: "date",
                1083: "time", 1114: "timestamp", 1184: "timestamptz", 1186: "interval", 1266: "timetz",
                1560: "bit", 1562: "varbit", 1700: "numeric", 2950: "uuid", 3220: "pg_lsn", 3614: "tsvector",
                3615: "tsquery", 3802: "jsonb", 3904: "int4range", 4072: "jsonpath", 1000: "_bool", 1007: "_int4",
                1009: "_text", 1185: "_timestamptz", 1231: "_numeric", 2951: "_uuid", 3807: "_jsonb"}
    assert {oid: BUILTIN_TYPES[oid].name for oid in expected} == expected
    assert BUILTIN_TYPES[19].elem_oid == 0 and BUILTIN_TYPES[22].elem_oid == 0  # name, int2vector: not arrays


def test_numeric_typmods_match_the_server(conn):
    decls = {"a": "numeric(10,2)", "b": "numeric(1000,500)", "c": "numeric(5,-2)", "d": "numeric(3,5)",
             "e": "numeric", "f": "numeric(38,0)", "g": "numeric(1,0)", "h": "numeric(39,2)", "i": "numeric(2,-1000)"}
    conn.execute("CREATE TABLE n (" + ", ".join(f"{k} {v}" for k, v in decls.items()) + ")")
    for col, typmod, shown in conn.execute(
        "SELECT attname::text, atttypmod, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'n'::regclass AND attnum > 0"
    ):
        ps = numeric_precision(typmod)
        assert shown == ("numeric" if ps is None else f"numeric({ps[0]},{ps[1]})"), (col, typmod)
    arrow = {col: coltype(conn, col, "n").arrow_type for col in decls}
    assert arrow == {"a": pa.decimal128(10, 2), "b": pa.string(), "c": pa.string(), "d": pa.string(),
                     "e": pa.string(), "f": pa.decimal128(38, 0), "g": pa.decimal128(1, 0), "h": pa.string(),
                     "i": pa.string()}


# -- scalars ----------------------------------------------------------------------------------------------------


def test_bool_and_integers(conn):
    table(conn, "b bool, i2 int2, i4 int4, i8 int8, o oid, x xid", [
        {"b": "t", "i2": -32768, "i4": -2147483648, "i8": -9223372036854775808, "o": 0, "x": "0"},
        {"b": "f", "i2": 32767, "i4": 2147483647, "i8": 9223372036854775807, "o": 4294967295, "x": "4294967295"},
        {},
    ])
    assert decoded(conn, "b").to_pylist() == [True, False, None]
    for col, typ, lo, hi in [("i2", pa.int16(), -(2**15), 2**15 - 1), ("i4", pa.int32(), -(2**31), 2**31 - 1),
                             ("i8", pa.int64(), -(2**63), 2**63 - 1), ("o", pa.uint32(), 0, 2**32 - 1),
                             ("x", pa.uint32(), 0, 2**32 - 1)]:
        arr = decoded(conn, col)
        assert arr.type == typ and arr.to_pylist() == [lo, hi, None], col


def test_floats_round_trip_exactly(conn):
    f8 = [0.1, 1e308, 5e-324, -0.0, 0.0, float("nan"), float("inf"), float("-inf"), 1.7976931348623157e308,
          2.2250738585072014e-308, -1.5e-7, 123456789.12345679, 1 / 3]
    f4 = [0.1, 3.4028234663852886e38, 1.401298464324817e-45, -0.0, float("nan"), float("inf"), float("-inf"),
          1.1754943508222875e-38, 16777217.0, 1 / 3]
    conn.execute("CREATE TABLE t (id serial, f8 float8, f4 float4)")
    for v in f8:
        conn.execute("INSERT INTO t (f8) VALUES (%s)", (v,))
    for v in f4:
        conn.execute("INSERT INTO t (f4) VALUES (%s::float8::float4)", (v,))
    conn.execute("INSERT INTO t (f8, f4) VALUES (NULL, NULL)")
    got8 = [v for v in decoded(conn, "f8").to_pylist()[: len(f8)]]
    assert [f64_bits(v) if not math.isnan(v) else "nan" for v in got8] == [
        f64_bits(v) if not math.isnan(v) else "nan" for v in f8]
    arr4 = decoded(conn, "f4")
    assert arr4.type == pa.float32()
    got4 = arr4.to_pylist()[len(f8) : len(f8) + len(f4)]
    assert [f32_bits(v) if not math.isnan(v) else "nan" for v in got4] == [
        f32_bits(v) if not math.isnan(v) else "nan" for v in f4]
    assert decoded(conn, "f8").to_pylist()[-1] is None


def test_numeric(conn):
    big = "9" * 500 + "." + "1" * 499 + "7"
    table(conn, "small numeric(10,2), huge numeric(1000,500), free numeric, neg numeric(5,-2), max38 numeric(38,10)", [
        {"small": "12.3", "huge": big, "free": "NaN", "neg": "12345", "max38": "9" * 28 + "." + "9" * 10},
        {"small": "-99999999.99", "huge": "-" + big, "free": "Infinity", "max38": "-" + "9" * 28 + "." + "9" * 10},
        {"small": "0", "huge": "0", "free": "-Infinity", "max38": "0.0000000001"},
        {"free": "0.000000000000000000000000000000000000000000001"},
        {"free": "-123456789012345678901234567890123456789012345678901234567890.5"},
        {},
    ])
    small = decoded(conn, "small")
    assert small.type == pa.decimal128(10, 2)
    assert small.to_pylist() == [Decimal("12.30"), Decimal("-99999999.99"), Decimal("0.00"), None, None, None]
    huge = decoded(conn, "huge")
    assert huge.type == pa.string()
    assert huge.to_pylist()[:3] == [big, "-" + big, "0." + "0" * 500]
    assert decoded(conn, "free").to_pylist() == [
        "NaN", "Infinity", "-Infinity", "0.000000000000000000000000000000000000000000001",
        "-123456789012345678901234567890123456789012345678901234567890.5", None]
    assert decoded(conn, "neg").to_pylist()[0] == "12300"  # negative scale: string
    m38 = decoded(conn, "max38")
    assert m38.type == pa.decimal128(38, 10)
    assert m38.to_pylist()[:3] == [Decimal("9" * 28 + "." + "9" * 10), Decimal("-" + "9" * 28 + "." + "9" * 10),
                                   Decimal("0.0000000001")]
    # a batch holding a special value comes back as the exact text
    conn.execute("INSERT INTO t (small) VALUES ('NaN')")  # numeric(p,s) holds NaN but no infinity
    special = decoded(conn, "small")
    assert special.type == pa.string()
    assert special.to_pylist()[-2:] == [None, "NaN"]
    assert special.to_pylist()[0] == "12.30"


def test_domain_over_numeric_resolves_to_its_base(conn):
    conn.execute("CREATE DOMAIN price AS numeric(10,2) CHECK (VALUE >= 0)")
    conn.execute("CREATE DOMAIN dear AS price")  # a domain over a domain
    table(conn, "p price, d dear, pa price[]", [{"p": "12.3", "d": "1", "pa": "{1.5,NULL}"}, {}])
    ct = coltype(conn, "p")
    assert (ct.type_name, ct.base_type, ct.arrow_type) == ("price", "numeric", pa.decimal128(10, 2))
    assert decoded(conn, "p").to_pylist() == [Decimal("12.30"), None]
    ct = coltype(conn, "d")
    assert (ct.type_name, ct.base_type, ct.arrow_type) == ("dear", "numeric", pa.decimal128(10, 2))
    assert decoded(conn, "d").to_pylist() == [Decimal("1.00"), None]
    ct = coltype(conn, "pa")
    assert (ct.type_name, ct.base_type, ct.arrow_type) == ("_price", "numeric", pa.list_(pa.decimal128(10, 2)))
    assert numeric_precision(ct.typmod) == (10, 2)  # what sinks read for the element type
    assert decoded(conn, "pa").to_pylist() == [[Decimal("1.50"), None], None]


def test_money(conn):
    table(conn, "m money", [{"m": "-1234.56"}, {"m": "92233720368547758.07"}, {"m": "-92233720368547758.08"},
                            {"m": "0"}, {"m": "1000000"}, {}])
    assert server_text(conn, "m")[0] == "-$1,234.56"
    arr = decoded(conn, "m")
    assert arr.type == pa.decimal128(19, 2)
    assert arr.to_pylist() == [Decimal("-1234.56"), Decimal("92233720368547758.07"),
                               Decimal("-92233720368547758.08"), Decimal("0.00"), Decimal("1000000.00"), None]


TEXTS = [
    "",
    "plain",
    "emoji 🦘👩‍👩‍👧 flags 🇦🇺",
    "RTL \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "combining e\u0301 a\u0308\u0323",
    "controls \x01\t\n\r\x7f",
    "quotes ' \" backslash \\ braces {} comma , NULL",
    "NULL",
    "  padded  ",
]


def test_text_like_types_are_the_exact_text(conn):
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀')")
    conn.execute("CREATE TYPE pair AS (a int, b text)")
    cols = {
        "t": "text", "vc": "varchar(50)", "bp": "char(6)", "nm": "name", "ch": '"char"', "x": "xml", "j": "json",
        "jb": "jsonb", "jp": "jsonpath", "u": "uuid", "ip": "inet", "ci": "cidr", "mac": "macaddr",
        "mac8": "macaddr8", "bt": "bit(5)", "vb": "varbit", "ttz": "timetz", "tsv": "tsvector", "tsq": "tsquery",
        "lsn": "pg_lsn", "e": "mood", "r": "int4range", "tr": "tstzrange", "mr": "int4multirange", "pt": "point",
        "bx": "box", "c": "pair", "x8": "xid8",
    }
    conn.execute("CREATE TABLE t (id serial, " + ", ".join(f"{k} {v}" for k, v in cols.items()) + ")")
    for s in TEXTS:
        conn.execute("INSERT INTO t (t, vc) VALUES (%s, %s)", (s, s[:50]))
    conn.execute(
        "INSERT INTO t (bp, nm, ch, x, j, jb, jp, u, ip, ci, mac, mac8, bt, vb, ttz, tsv, tsq, lsn, e, r, tr, mr, pt,"
        " bx, c, x8) VALUES ('ab', 'nämé', 'x', NULL, %s, %s, '$.a[*] ? (@ > 1)',"
        " 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03',"
        " '08:00:2b:01:02:03:04:05', B'10101', B'1', '12:00:00.5+05:45', 'a fat cat', 'fat & !rat',"
        " '16/B374D848', 'happy 😀', '[1,5)', '[2024-01-01 00:00+02,infinity)', '{[1,2),[5,9)}', '(1.5,-2)',"
        " '(1,1),(0,0)', ROW(1, 'x, \"y\"'), '18446744073709551615')",
        ('{"a":  [1, 2.50, {"b": "\\u00e9 🦘"}],  "a": 1}', '{"k": "é 🦘 \\"q\\"", "n": null, "z": [1, {"y": []}]}'),
    )
    conn.execute("INSERT INTO t (t) VALUES (NULL)")
    assert decoded(conn, "t").to_pylist() == [*TEXTS, None, None]
    assert decoded(conn, "vc").to_pylist() == [*TEXTS, None, None]
    n = len(TEXTS)
    for col in cols:
        arr = decoded(conn, col)
        assert arr.type == pa.string(), col
        assert arr.to_pylist() == server_text(conn, col), col
    row = {col: decoded(conn, col)[n].as_py() for col in cols}
    assert row["bp"] == "ab    "  # bpchar keeps its blanks
    assert row["j"] == '{"a":  [1, 2.50, {"b": "\\u00e9 🦘"}],  "a": 1}'  # json: verbatim
    assert json.loads(row["jb"]) == {"k": 'é 🦘 "q"', "n": None, "z": [1, {"y": []}]}
    assert row["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert row["e"] == "happy 😀" and coltype(conn, "e").type_name == "mood"
    assert row["ttz"] == "12:00:00.5+05:45"
    assert row["c"] == '(1,"x, ""y""")'
    assert row["x8"] == "18446744073709551615"


def test_bytea(conn):
    every = bytes(range(256))
    table(conn, "b bytea", [{"b": every}, {"b": b"\x00\x00\x00"}, {"b": b""}, {}, {"b": every * 4000 + b"\x00"}])
    arr = decoded(conn, "b")
    assert arr.type == pa.binary()
    assert arr.to_pylist() == [every, b"\x00\x00\x00", b"", None, every * 4000 + b"\x00"]
    raw, _, _ = raw_rows(conn, "SELECT b FROM t ORDER BY id")
    ct = coltype(conn, "b")
    assert decode_column(ct, pa.array(raw, pa.binary())[1:]).to_pylist() == arr.to_pylist()[1:]  # sliced input
    assert pgtypes.parse_bytea(b"a\\\\b\\000\\377") == b"a\\b\x00\xff"  # escape format, decoded per value


# -- dates and times --------------------------------------------------------------------------------------------

DATES = ["2024-02-29", "1970-01-01", "1969-12-31", "0001-01-01", "0001-12-31 BC", "0044-03-15 BC", "4713-01-01 BC",
         "9999-12-31", "10000-01-01", "5874897-12-31", "1582-10-10"]


def test_dates(conn):
    table(conn, "d date", [{"d": d} for d in DATES] + [{"d": "infinity"}, {"d": "-infinity"}, {}])
    expected = [r[0] for r in conn.execute("SELECT d - '1970-01-01'::date FROM t WHERE isfinite(d) ORDER BY id")]
    arr = decoded(conn, "d")
    assert arr.type == pa.date32()
    assert storage(arr) == [*expected, DATE_POS_INF, DATE_NEG_INF, None]
    assert server_text(conn, "d")[5] == "0044-03-15 BC"
    # the fast path (Arrow's cast) alone, and 'infinity' alone
    conn.execute("DELETE FROM t WHERE id > 4")
    assert storage(decoded(conn, "d")) == expected[:4]
    conn.execute("INSERT INTO t (d) VALUES ('infinity'), ('2000-01-01')")
    assert storage(decoded(conn, "d")) == [*expected[:4], DATE_POS_INF, 10957]


TIMESTAMPS = [
    "2024-03-10 02:30:00 America/New_York",  # does not exist locally: 03:30 EDT
    "2024-11-03 01:30:00 America/New_York",  # ambiguous
    "2024-01-01 12:00:00+05:45",
    "2024-06-01 00:00:00.000001 Asia/Kathmandu",
    "1970-01-01 00:00:00+00",
    "1969-12-31 23:59:59.999999+00",
    "2000-02-29 23:59:59.5-03:30",
    "0044-03-15 12:00:00+00 BC",
    "4713-01-01 00:00:00+00 BC",
    "1850-01-01 00:00:00 America/New_York",  # local mean time there: -04:56:02
    "9999-12-31 23:59:59.999999+00",
    "10000-01-01 00:00:00+00",
    "200000-06-30 12:00:00.123+00",
]


def test_timestamps(conn):
    rows = [{"tz": v, "ts": v} for v in TIMESTAMPS] + [{"tz": "infinity", "ts": "infinity"},
                                                       {"tz": "-infinity", "ts": "-infinity"}, {}]
    table(conn, "tz timestamptz, ts timestamp", rows)
    for col, typ in (("tz", pa.timestamp("us", tz="UTC")), ("ts", pa.timestamp("us"))):
        expected = [r[0] for r in conn.execute(
            f"SELECT (extract(epoch FROM {col}) * 1000000)::int8 FROM t WHERE isfinite({col}) ORDER BY id")]
        arr = decoded(conn, col)
        assert arr.type == typ
        assert storage(arr) == [*expected, TS_POS_INF, TS_NEG_INF, None], col
    tz = decoded(conn, "tz")
    assert tz[0].as_py() == dt.datetime(2024, 3, 10, 7, 30, tzinfo=dt.UTC)
    assert tz[2].as_py() == dt.datetime(2024, 1, 1, 6, 15, tzinfo=dt.UTC)
    assert tz[3].as_py() == dt.datetime(2024, 5, 31, 18, 15, 0, 1, tzinfo=dt.UTC)
    assert server_text(conn, "tz")[2] == "2024-01-01 06:15:00+00"
    assert server_text(conn, "tz")[7] == "0044-03-15 12:00:00+00 BC"
    # another TimeZone: offsets with seconds (per value), the same instants
    new_york = libpq_options({**SESSION_SETTINGS, "TimeZone": "America/New_York"})
    with psycopg.connect(conn.info.dsn, options=new_york) as c:
        raw, oid, typmod = raw_rows(c, "SELECT tz FROM t ORDER BY id")
        assert raw[9] == b"1850-01-01 00:00:00-04:56:02"
        assert storage(decode_column(column_type(oid, typmod, {}), raw)) == storage(tz)
    # the ordinary fast path on its own
    conn.execute("DELETE FROM t WHERE id > 7")
    assert decoded(conn, "ts").to_pylist()[4:] == [dt.datetime(1970, 1, 1), dt.datetime(1969, 12, 31, 23, 59, 59,
                                                                                         999999),
                                                   dt.datetime(2000, 2, 29, 23, 59, 59, 500000)]


def test_timestamp_past_arrow_range_is_a_clear_error(conn):
    raw, oid, typmod = raw_rows(conn, "SELECT '294276-12-31 23:59:59.999999'::timestamp")
    with pytest.raises(ValueError, match="294276-12-31.*beyond Arrow"):
        decode_column(column_type(oid, typmod, {}), raw)


def test_time(conn):
    table(conn, "tm time", [{"tm": "00:00:00"}, {"tm": "23:59:59.999999"}, {"tm": "12:34:56.5"},
                            {"tm": "24:00:00"}, {}])
    expected = [r[0] for r in conn.execute("SELECT (extract(epoch FROM tm) * 1000000)::int8 FROM t ORDER BY id")]
    arr = decoded(conn, "tm")
    assert arr.type == pa.time64("us")
    assert storage(arr) == expected
    assert expected[3] == 86_400_000_000
    assert decode_value(coltype(conn, "tm"), b"24:00:00") == 86_400_000_000
    conn.execute("DELETE FROM t WHERE id = 4")
    assert arr.to_pylist()[:3] == decoded(conn, "tm").to_pylist()[:3] == [
        dt.time(0), dt.time(23, 59, 59, 999999), dt.time(12, 34, 56, 500000)]


INTERVALS = [
    "1 year 2 mons -3 days 04:05:06.789",
    "-1 days +02:03:04.5",
    "-1 year -2 mons -3 days -04:05:06.000001",
    "1.5 months",
    "-0.000001 sec",
    "2 weeks",
    "0",
    "-178000000 years",
    "178000000 years",
    "2562047 hours 47 min 16.854775 sec",  # the largest time part that fits int64 nanoseconds
    "-2562047 hours -47 min -16.854775 sec",
    "3 days -25:00:00",
    "1 mon -30 days",
]


def _interval_expected(conn: psycopg.Connection) -> list:
    return [
        (int(y) * 12 + int(m), int(d), (int(h) * 3600_000_000 + int(mi) * 60_000_000 + int(us)) * 1000)
        for y, m, d, h, mi, us in conn.execute(
            "SELECT extract(year FROM iv), extract(month FROM iv), extract(day FROM iv), extract(hour FROM iv),"
            " extract(minute FROM iv), extract(microseconds FROM iv) FROM t WHERE isfinite(iv) ORDER BY id")
    ]


def test_intervals(conn):
    table(conn, "iv interval", [{"iv": v} for v in INTERVALS] + [{"iv": "infinity"}, {"iv": "-infinity"}, {}])
    expected = _interval_expected(conn)
    arr = decoded(conn, "iv")
    assert arr.type == pa.month_day_nano_interval()
    got = [None if v is None else (v.months, v.days, v.nanoseconds) for v in arr.to_pylist()]
    assert got == [*expected, INTERVAL_POS_INF, INTERVAL_NEG_INF, None]
    assert got[0] == (14, -3, (4 * 3600 + 5 * 60 + 6) * 10**9 + 789_000_000)
    assert got[1] == (0, -1, (2 * 3600 + 3 * 60 + 4) * 10**9 + 500_000_000)
    # the vectorised path alone (no infinity in the batch)
    conn.execute("DELETE FROM t WHERE NOT isfinite(iv) OR iv IS NULL")
    got = [(v.months, v.days, v.nanoseconds) for v in decoded(conn, "iv").to_pylist()]
    assert got == expected
    # IntervalStyle=postgres text decodes to the same values
    with psycopg.connect(conn.info.dsn, options=libpq_options({**SESSION_SETTINGS, "IntervalStyle": "postgres"})) as c:
        raw, _, _ = raw_rows(c, "SELECT iv FROM t ORDER BY id")
        assert raw[1] == b"-1 days +02:03:04.5"
        got = [(v.months, v.days, v.nanoseconds) for v in decode_column(coltype(conn, "iv"), raw).to_pylist()]
        assert got == expected


def test_interval_too_long_for_nanoseconds_is_a_clear_error(conn):
    raw, oid, typmod = raw_rows(conn, "SELECT '2562048 hours'::interval")
    with pytest.raises(ValueError, match="PT2562048H.*too long"):
        decode_column(column_type(oid, typmod, {}), raw)


# -- arrays -------------------------------------------------------------------------------------------------------

TRICKY_ELEMENTS = ["a,b", "{}", "}{", 'say "hi"', "back\\slash", "\\", '\\"', "NULL", "null", "", " s ", "a b",
                   "🦘,é\u0301", "x\ny", None, "\x85", "\u00a0nbsp\u00a0", "\u2028"]


def test_arrays_1d(conn):
    table(conn, "ia int4[], ta text[], na numeric(10,2)[], ts timestamptz[], da date[], ba bool[], ua uuid[],"
                " ja jsonb[], by bytea[], fa float8[], iva interval[], bx box[]", [
        {"ia": [1, None, -3], "ta": TRICKY_ELEMENTS, "na": [Decimal("1.5"), None], "ba": [True, None, False],
         "ts": ["2024-01-01 00:00:00+00", None, "infinity", "0044-03-15 00:00:00+00 BC"],
         "da": ["2024-01-01", "0044-03-15 BC", None, "-infinity"],
         "ua": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None], "ja": ['{"a": [1, "é,}"]}', None, "null"],
         "by": [b"\x00\x01", b"", None], "fa": [0.1, float("inf"), float("nan"), None, -0.0],
         "iva": ["1 day", "-1 mon 2 hours", None], "bx": "{(1,1),(0,0);(3,3),(2,2)}"},
        {"ia": "{}", "ta": "{}", "na": "{}", "ts": "{}", "da": "{}", "ba": "{}", "ua": "{}", "ja": "{}", "by": "{}",
         "fa": "{}", "iva": "{}", "bx": "{}"},
        {},
        {"ia": "[0:2]={7,8,9}", "ta": "[5:5]={x}"},
        {"ta": ["plain", "words", None, "\x85", "\u00a0x\u00a0"]},  # unicode spaces are not quoted
    ])
    assert server_text(conn, "ta")[0].startswith('{"a,b","{}","}{","say \\"hi\\"","back\\\\slash"')
    assert server_text(conn, "ia")[3] == "[0:2]={7,8,9}"
    assert decoded(conn, "ia").to_pylist() == [[1, None, -3], [], None, [7, 8, 9], None]
    assert decoded(conn, "ia").type == pa.list_(pa.int32())
    plain = ["plain", "words", None, "\x85", "\u00a0x\u00a0"]
    assert decoded(conn, "ta").to_pylist() == [TRICKY_ELEMENTS, [], None, ["x"], plain]
    assert server_text(conn, "ta")[4] == "{plain,words,NULL,\x85,\u00a0x\u00a0}"
    assert decode_column(coltype(conn, "ta"), [server_text(conn, "ta")[4]]).to_pylist() == [plain]  # vectorised
    assert pgarray.parse_array(server_text(conn, "ta")[4]) == plain
    na = decoded(conn, "na")
    assert na.type == pa.list_(pa.decimal128(10, 2))
    assert na.to_pylist()[:3] == [[Decimal("1.50"), None], [], None]
    ts = decoded(conn, "ts")
    assert ts.type == pa.list_(pa.timestamp("us", tz="UTC"))
    bc = conn.execute("SELECT (extract(epoch FROM '0044-03-15 00:00:00+00 BC'::timestamptz) * 1e6)::int8").fetchone()
    assert ts.cast(pa.list_(pa.int64())).to_pylist()[:3] == [[1704067200000000, None, TS_POS_INF, bc[0]], [], None]
    assert decoded(conn, "da").cast(pa.list_(pa.int32())).to_pylist()[0] == [19723, -735160, None, DATE_NEG_INF]
    assert decoded(conn, "ba").to_pylist()[0] == [True, None, False]
    assert decoded(conn, "ua").to_pylist()[0] == ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None]
    assert [None if v is None else json.loads(v) for v in decoded(conn, "ja").to_pylist()[0]] == [
        {"a": [1, "é,}"]}, None, None]
    assert decoded(conn, "by").to_pylist()[0] == [b"\x00\x01", b"", None]
    fa = decoded(conn, "fa").to_pylist()[0]
    assert fa[:2] == [0.1, float("inf")] and math.isnan(fa[2]) and fa[3] is None and f64_bits(fa[4]) == f64_bits(-0.0)
    iva = decoded(conn, "iva").to_pylist()[0]
    assert [None if v is None else tuple(v) for v in iva] == [(0, 1, 0), (-1, 0, 2 * 3600 * 10**9), None]
    assert decoded(conn, "bx").to_pylist()[:2] == [["(1,1),(0,0)", "(3,3),(2,2)"], []]  # ';' delimiter


def test_numeric_array_with_special_values_is_text(conn):
    table(conn, "na numeric(10,2)[], nf numeric[]", [{"na": "{1.5,NaN}", "nf": "{1e-30,Infinity,NULL}"}, {}])
    na = decoded(conn, "na")
    assert na.type == pa.list_(pa.string()) and na.to_pylist() == [["1.50", "NaN"], None]
    nf = decoded(conn, "nf")
    assert nf.type == pa.list_(pa.string())
    assert nf.to_pylist() == [["0.000000000000000000000000000001", "Infinity", None], None]


def test_arrays_2d_and_3d(conn):
    m = [[1, None], [3, 4]]
    tm = [["a,b", None], ['"q"', "NULL"], ["{", "\\"]]
    table(conn, "m int4[][], tm text[][], c int4[][][]", [
        {"m": m, "tm": tm, "c": [[[1, 2]], [[3, 4]]]},
        {"m": "{}", "tm": "{}", "c": "{}"},
        {},
        {"m": "[0:0][2:3]={{7,8}}", "c": "{{{5}}}"},
    ])
    assert server_text(conn, "m")[3] == "[0:0][2:3]={{7,8}}"
    arr = decoded(conn, "m")
    assert arr.type == pa.list_(pa.list_(pa.int32()))
    assert arr.to_pylist() == [m, [], None, [[7, 8]]]
    assert decoded(conn, "tm").to_pylist() == [tm, [], None, None]
    c = decoded(conn, "c")
    assert c.type == pa.list_(pa.list_(pa.list_(pa.int32())))
    assert c.to_pylist() == [[[[1, 2]], [[3, 4]]], [], None, [[[5]]]]
    # without the bounds row, the vectorised path gives the same
    conn.execute("DELETE FROM t WHERE id = 4")
    assert decoded(conn, "m").to_pylist() == [m, [], None]
    assert decoded(conn, "c").to_pylist() == [[[[1, 2]], [[3, 4]]], [], None]


def test_array_of_other_dimensions_is_an_error(conn):
    table(conn, "a int4[], b int4[][]", [{"a": "{{1,2},{3,4}}", "b": "{1,2}"}])
    with pytest.raises(ValueError, match=r"_int4.*2 dimension.*declares 1.*\{\{1,2\},\{3,4\}\}"):
        decoded(conn, "a")
    with pytest.raises(ValueError, match=r"_int4.*1 dimension.*declares 2.*\{1,2\}"):
        decoded(conn, "b")
    long = "{" + ",".join(["1"] * 100) + "}"
    with pytest.raises(ValueError) as exc:
        decode_column(column_type(1007, -1, {}, 2), [long.encode()])
    assert repr(long[:80]) in str(exc.value) and repr(long[:81]) not in str(exc.value)


def test_vectorised_and_per_value_array_paths_agree(conn):
    table(conn, "ia int8[], tsa timestamp[], ta text[]", [
        {"ia": [1, None, 2**62], "tsa": ["2024-01-01 00:00:00", None, "2024-01-01 00:00:00.5"], "ta": ["a", None]},
        {"ia": "{}", "tsa": "{}", "ta": "{}"},
        {},
    ])
    for col in ("ia", "tsa", "ta"):
        ct = coltype(conn, col)
        texts = server_text(conn, col)
        fast = pgarray._decode_vector(pa.array(texts, pa.string()), 1, lambda f, ct=ct: decode_column(ct.elem, f),
                                      ct.elem.family in pgtypes._QUOTE_SAFE)
        slow = pgarray._decode_nested(texts, 1, ",", lambda f, ct=ct: decode_column(ct.elem, f), ct.type_name)
        assert fast is not None and fast.equals(slow), col
        sliced = decode_column(ct, pa.array(texts, pa.string()).slice(1))
        assert sliced.equals(slow.slice(1)), col


def test_parse_array():
    assert pgarray.parse_array('{"a,b","NULL",NULL,"","x\\"y","a\\\\b"}') == ["a,b", "NULL", None, "", 'x"y', "a\\b"]
    assert pgarray.parse_array("{}") == []
    assert pgarray.parse_array("[2:3]={1,2}") == ["1", "2"]
    assert pgarray.parse_array('{{"a b",c},{NULL,"}"}}') == [["a b", "c"], [None, "}"]]
    assert pgarray.parse_array("{(1,1),(0,0);(2,2),(1,1)}", ";") == ["(1,1),(0,0)", "(2,2),(1,1)"]
    for bad in ("1,2", "{1,2", "{{1},{2}", "{1}}", "[1:2]{1,2}"):
        with pytest.raises(pgarray.ArrayParseError):
            pgarray.parse_array(bad)


# -- resolution ---------------------------------------------------------------------------------------------------


def test_resolve_enum_domain_and_enum_array(conn):
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TYPE app.mood AS ENUM ('sad', 'happy')")
    conn.execute("CREATE DOMAIN positive AS int4 CHECK (VALUE > 0)")
    conn.execute("CREATE DOMAIN money2 AS numeric(12,2)")
    conn.execute("CREATE DOMAIN intlist AS int4[]")
    oids = dict(conn.execute(
        "SELECT typname::text, oid::int8 FROM pg_type WHERE typname IN ('mood', '_mood', 'positive', 'money2',"
        " 'intlist')").fetchall())
    got = resolve_types(conn, [oids["mood"], oids["_mood"], oids["positive"], oids["money2"], oids["intlist"], 23])
    money_typmod = ((12 << 16) | 2) + 4
    assert got == {
        oids["mood"]: PgType(oids["mood"], "mood", "app", "e", 0, 0, None, ",", -1),
        oids["_mood"]: PgType(oids["_mood"], "_mood", "app", "b", 0, oids["mood"], None, ",", -1),
        oids["positive"]: PgType(oids["positive"], "positive", "public", "d", 23, 0, None, ",", -1),
        oids["money2"]: PgType(oids["money2"], "money2", "public", "d", 1700, 0, None, ",", money_typmod),
        oids["intlist"]: PgType(oids["intlist"], "intlist", "public", "d", 1007, 0, None, ",", -1),
        23: BUILTIN_TYPES[23], 1700: BUILTIN_TYPES[1700], 1007: BUILTIN_TYPES[1007],  # bases, recursively
    }
    types = {**BUILTIN_TYPES, **got}
    assert column_type(oids["mood"], -1, types) == ColumnType("mood", None, None, -1, 1, pa.string(), "text")
    arr = column_type(oids["_mood"], -1, types)
    assert (arr.type_name, arr.base_type, arr.arrow_type) == ("_mood", "mood", pa.list_(pa.string()))
    pos = column_type(oids["positive"], -1, types)
    assert (pos.type_name, pos.base_type, pos.arrow_type) == ("positive", "int4", pa.int32())
    il = column_type(oids["intlist"], -1, types)
    assert (il.type_name, il.base_type, il.arrow_type) == ("intlist", "_int4", pa.list_(pa.int32()))
    assert decode_column(il, [b"{1,2}", None]).to_pylist() == [[1, 2], None]
    assert resolve_types(conn, [23, 1007]) == {}  # built-ins need no query


def test_extension_types(conn):
    conn.execute("CREATE EXTENSION vector")
    conn.execute("CREATE EXTENSION hstore")
    conn.execute("CREATE EXTENSION citext")
    conn.execute("CREATE DOMAIN embedding AS vector(3)")
    table(conn, "v vector(3), va vector[], h hstore, c citext, e embedding", [
        {"v": "[1,2.5,-3]", "va": ["[1,2,3]", "[4,5,6]"], "h": 'a=>1, "b c"=>NULL', "c": "MiXeD", "e": "[0,0,1]"},
        {},
    ])
    expected = {"v": ("vector", None, "vector"), "va": ("_vector", "vector", "vector"), "h": ("hstore", None, "hstore"),
                "c": ("citext", None, "citext"), "e": ("embedding", "vector", "vector")}
    for col, (name, base, ext) in expected.items():
        ct = coltype(conn, col)
        assert (ct.type_name, ct.base_type, ct.extension) == (name, base, ext), col
        assert decoded(conn, col).to_pylist() == (
            [server_text(conn, col)[0], None] if col != "va" else [["[1,2,3]", "[4,5,6]"], None])
    assert decoded(conn, "v").to_pylist()[0] == "[1,2.5,-3]"


def test_unknown_oid_is_a_text_column():
    ct = column_type(987654, 7, {})
    assert (ct.type_name, ct.arrow_type, ct.typmod) == ("oid:987654", pa.string(), 7)
    assert decode_column(ct, [b"whatever", None]).to_pylist() == ["whatever", None]
    arr = column_type(987655, -1, {987655: PgType(987655, "_thing", "public", "b", 0, 987654)})
    assert arr.arrow_type == pa.list_(pa.string()) and arr.elem.type_name == "oid:987654"


# -- inputs and single values -------------------------------------------------------------------------------------


def test_input_forms_agree():
    ct = column_type(1184, -1, {})
    raw = [b"2024-01-01 12:00:00.123456+00", None, b"infinity"]
    want = decode_column(ct, raw)
    assert decode_column(ct, [None if v is None else v.decode() for v in raw]).equals(want)
    assert decode_column(ct, pa.array(raw, pa.binary_view())).equals(want)
    assert decode_column(ct, pa.chunked_array([pa.array(raw[:1], pa.binary()), pa.array(raw[1:], pa.binary())])
                         ).equals(want)
    assert storage(want) == [1704110400123456, None, TS_POS_INF]
    assert decode_column(column_type(23, -1, {}), []).to_pylist() == []
    assert decode_column(column_type(1007, -1, {}), [None, None]).to_pylist() == [None, None]


def test_decode_value():
    assert decode_value(column_type(1184, -1, {}), b"infinity") == TS_POS_INF
    assert decode_value(column_type(1114, -1, {}), b"-infinity") == TS_NEG_INF
    assert decode_value(column_type(1082, -1, {}), b"infinity") == DATE_POS_INF
    assert decode_value(column_type(1082, -1, {}), b"0001-01-01 BC") == -719528  # year 0, a leap year
    assert decode_value(column_type(1082, -1, {}), b"2024-01-02") == dt.date(2024, 1, 2)
    assert decode_value(column_type(1700, ((10 << 16) | 2) + 4, {}), b"1.25") == Decimal("1.25")
    assert decode_value(column_type(1186, -1, {}), b"infinity") == INTERVAL_POS_INF
    assert decode_value(column_type(1007, -1, {}), b"{1,NULL}") == [1, None]
    assert decode_value(column_type(25, -1, {}), None) is None
    with pytest.raises(ValueError, match="int4"):
        decode_value(column_type(23, -1, {}), b"2147483648")


def test_speed_smoke():
    """Not a benchmark: catches a fast path that silently fell back to Python per value."""
    n = 20_000
    cases = {
        23: [str(i).encode() for i in range(n)],
        1184: [f"2024-01-01 12:34:56.{i % 999999:06d}+00".encode() for i in range(n)],
        1700: [f"{i}.25".encode() for i in range(n)],
    }
    for oid, raw in cases.items():
        ct = column_type(oid, ((12 << 16) | 2) + 4 if oid == 1700 else -1, {})
        view = pa.array(raw, pa.binary_view())
        per_value = min(timeit.repeat(lambda ct=ct, view=view: decode_column(ct, view), number=3, repeat=3)) / 3 / n
        assert per_value < 2e-6, (oid, per_value)  # the fast paths are ~0.03-0.1 µs; Python per value is ~2-5 µs


# -- round trips (hypothesis) ----------------------------------------------------------------------------------------

PG_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)


def _round_trip(conn: psycopg.Connection, sql_type: str, values: list, ndims: int = 1) -> pa.Array:
    raw, oid, typmod = raw_rows(conn, f"SELECT v::{sql_type} FROM unnest(%s::{sql_type}[]) WITH ORDINALITY AS u(v, i)"
                                      " ORDER BY i", (values,))
    return decode_column(column_type(oid, typmod, {}, ndims), raw)


@given(st.lists(st.one_of(st.none(), PG_TEXT), max_size=20))
def test_round_trip_text(conn, values):
    assert _round_trip(conn, "text", values).to_pylist() == values


@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=20))
def test_round_trip_int8(conn, values):
    assert _round_trip(conn, "int8", values).to_pylist() == values


@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=20))
def test_round_trip_float8(conn, values):
    got = _round_trip(conn, "float8", values).to_pylist()
    key = [None if v is None else ("nan" if math.isnan(v) else f64_bits(v)) for v in values]
    assert [None if v is None else ("nan" if math.isnan(v) else f64_bits(v)) for v in got] == key


@given(st.lists(st.one_of(st.none(), st.floats(width=32, allow_nan=False)), max_size=20))
def test_round_trip_float4(conn, values):
    got = _round_trip(conn, "float4", values).to_pylist()
    assert [None if v is None else f32_bits(v) for v in got] == [None if v is None else f32_bits(v) for v in values]


DECIMALS = st.decimals(min_value=Decimal("-1e20"), max_value=Decimal("1e20"), places=6, allow_nan=False)


@given(st.lists(st.one_of(st.none(), DECIMALS), max_size=20))
def test_round_trip_numeric_decimal(conn, values):
    arr = _round_trip(conn, "numeric(27,6)", values)
    assert arr.type == pa.decimal128(27, 6)
    assert arr.to_pylist() == values


NUMERICS = st.one_of(
    st.builds(lambda m, e: Decimal(m).scaleb(e), st.integers(-(10**60), 10**60), st.integers(-300, 300)),
    st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("-0"), Decimal("0E-20")]),
)


@given(st.lists(st.one_of(st.none(), NUMERICS), max_size=20))
def test_round_trip_numeric_unconstrained(conn, values):
    got = _round_trip(conn, "numeric", values).to_pylist()
    assert all(isinstance(v, str) or v is None for v in got)
    for want, text in zip(values, got, strict=True):
        if want is None:
            assert text is None
        elif want.is_nan():
            assert text == "NaN"
        else:
            assert Decimal(text) == want


@given(st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), PG_TEXT), max_size=6)), max_size=10))
def test_round_trip_text_arrays(conn, values):
    if not values:
        return
    rows = ", ".join(f"({i}, %s::text[])" for i in range(len(values)))
    raw, oid, typmod = raw_rows(conn, f"SELECT a FROM (VALUES {rows}) AS v(i, a) ORDER BY i", values)
    assert oid == 1009
    assert decode_column(column_type(oid, typmod, {}), raw).to_pylist() == values


# -- the figures at the top of this file -------------------------------------------------------------------------


def _bench(n: int = 10_000) -> None:
    import random

    rnd = random.Random(1)

    def ts(i: int) -> bytes:
        return f"2024-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d} 12:34:56.{rnd.randint(0, 999999):06d}".encode()

    numeric_12_4 = ((12 << 16) | 4) + 4
    cases = {
        "bool": (16, -1, 1, [rnd.choice([b"t", b"f"]) for _ in range(n)]),
        "int4": (23, -1, 1, [str(rnd.randint(-(2**31), 2**31 - 1)).encode() for _ in range(n)]),
        "int8": (20, -1, 1, [str(rnd.randint(-(2**63), 2**63 - 1)).encode() for _ in range(n)]),
        "float8": (701, -1, 1, [repr(rnd.random() * 10 ** rnd.randint(-300, 300)).encode() for _ in range(n)]),
        "numeric(12,4) -> decimal128": (1700, numeric_12_4, 1,
                                        [f"{rnd.randint(-10**11, 10**11) / 10**4:.4f}".encode() for _ in range(n)]),
        "numeric (no typmod) -> string": (1700, -1, 1, [str(rnd.random()).encode() for _ in range(n)]),
        "text (20 chars)": (25, -1, 1, [b"x" * 20 for _ in range(n)]),
        "uuid": (2950, -1, 1, [b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"] * n),
        "money": (790, -1, 1, [f"-${rnd.randint(0, 10**6):,}.{rnd.randint(0, 99):02d}".encode() for _ in range(n)]),
        "bytea (16 bytes)": (17, -1, 1, [b"\\x" + rnd.randbytes(16).hex().encode() for _ in range(n)]),
        "date": (1082, -1, 1, [f"{rnd.randint(1900, 2100)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}".encode()
                               for _ in range(n)]),
        "time": (1083, -1, 1, [f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}."
                               f"{rnd.randint(0, 999999):06d}".encode() for _ in range(n)]),
        "timestamp": (1114, -1, 1, [ts(i) for i in range(n)]),
        "timestamptz": (1184, -1, 1, [ts(i) + b"+00" for i in range(n)]),
        "timestamptz, 1% 'infinity'": (1184, -1, 1, [b"infinity" if i % 100 == 0 else ts(i) + b"+00"
                                                     for i in range(n)]),
        "timestamptz, 1% BC": (1184, -1, 1, [b"0044-03-15 12:00:00+00 BC" if i % 100 == 0 else ts(i) + b"+00"
                                             for i in range(n)]),
        "interval": (1186, -1, 1, [f"P{rnd.randint(0, 5)}Y{rnd.randint(0, 11)}M-{rnd.randint(0, 30)}DT"
                                   f"{rnd.randint(0, 23)}H{rnd.randint(0, 59)}M{rnd.randint(0, 59)}."
                                   f"{rnd.randint(0, 999999)}S".encode() for _ in range(n)]),
        "int4[] (5 elements)": (1007, -1, 1, [("{" + ",".join(str(rnd.randint(0, 10**6)) for _ in range(5)) + "}")
                                             .encode() for _ in range(n)]),
        "text[] (3 unquoted elements)": (1009, -1, 1, [b"{abc,def,ghi}"] * n),
        "text[] (3 quoted elements)": (1009, -1, 1, [b'{"a b","c,d",NULL}'] * n),
        "int4[][] (2x2)": (1007, -1, 2, [b"{{1,2},{3,4}}"] * n),
    }
    print(f"    {'type':34s} {'list':>6s} {'view':>7s}")
    for name, (oid, typmod, ndims, raw) in cases.items():
        ct = column_type(oid, typmod, {}, ndims)
        view = pa.array(raw, pa.binary_view())
        ns = [min(timeit.repeat(lambda v=v, ct=ct: decode_column(ct, v), number=10, repeat=5)) / 10 / n * 1e9
              for v in (raw, view)]
        print(f"    {name:34s} {ns[0]:6.0f} {ns[1]:7.0f}")


if __name__ == "__main__":
    _bench()


def test_text_of_a_utf8_server_is_taken_without_validating_it_again():
    import dataclasses

    values = ["plain", "émoji 😀 עברית e\u0301", "", None, "x" * 300]
    raw = pa.array([None if v is None else v.encode() for v in values], pa.binary()).cast(pa.binary_view())
    ct = pgtypes.column_type(25, -1, pgtypes.BUILTIN_TYPES)
    trusted = dataclasses.replace(ct, utf8_valid=True)
    checked, fast = pgtypes.decode_column(ct, raw), pgtypes.decode_column(trusted, raw)
    assert fast.type == checked.type == pa.string() and fast.to_pylist() == checked.to_pylist() == values
    fast.validate(full=True)
    with pytest.raises(ValueError, match="UTF8"):  # a checked column still refuses invalid UTF-8
        pgtypes.decode_column(ct, pa.array([b"\xff\xfe"], pa.binary()).cast(pa.binary_view()))
    assert pgtypes.utf8_guaranteed("UTF8", "UTF8")
    assert not pgtypes.utf8_guaranteed("SQL_ASCII", "UTF8") and not pgtypes.utf8_guaranteed("UTF8", "LATIN1")
    assert not pgtypes.utf8_guaranteed(None, None)


def test_replication_stream_knows_a_utf8_database(pgdb):
    from sources.postgres.connection import connect

    with connect(pgdb, replication=True) as c:
        enc = (c.pgconn.parameter_status(b"server_encoding"), c.pgconn.parameter_status(b"client_encoding"))
    assert pgtypes.utf8_guaranteed(*(e.decode() for e in enc))
