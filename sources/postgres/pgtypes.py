"""Postgres types: the registry, OID resolution, and text -> Arrow column decoding.

pgoutput sends each value as the type's text output, produced under the
walsender session's settings; :data:`SESSION_SETTINGS` fixes those so the
text is deterministic. :func:`decode_column` turns one column's raw values of
a batch into one typed Arrow array with Arrow's vectorised casts and string
kernels (numpy for bytea and interval assembly). Python runs per value only
for what Arrow cannot parse: just the odd values of a date/time batch (BC,
years past 9999, ``24:00:00``, offsets with seconds; 'infinity' too), whole
batches of intervals holding 'infinity', and arrays that are quoted text or
carry bounds (sources/pgarray.py).

| Postgres | Arrow | notes |
|---|---|---|
| bool | bool | 't' / 'f' |
| int2 / int4 / int8 | int16 / int32 / int64 | |
| oid, xid | uint32 | |
| float4 / float8 | float32 / float64 | NaN, ±Infinity; exact round trip (1) |
| numeric(p,s), 1 <= p <= 38, 0 <= s <= p | decimal128(p,s) | string for a batch holding NaN/±Infinity (2) |
| numeric: no typmod, p > 38, s < 0, s > p | string | the exact text, never a float |
| money | decimal128(19,2) | lc_monetary=C: '-$1,234.56' |
| bytea | binary | hex output (escape format decoded too) |
| date | date32 | ±infinity: INT32_MAX / INT32_MIN days; BC (3) |
| time | time64[us] | 24:00:00 kept as 86_400_000_000 µs |
| timestamp | timestamp[us] | ±infinity: INT64_MAX / INT64_MIN µs; BC, years > 9999 (3) |
| timestamptz | timestamp[us, tz=UTC] | same sentinels |
| interval | month_day_nano_interval | exact months, days, ns (4) |
| arrays (_int4, _text, ...) | list<element>, once per dimension | (5) |
| domains | their base type, recursively | the domain's typmod applies: numeric(10,2) |
| everything else | string | the exact text (6) |

(1) extra_float_digits=3 makes Postgres print the shortest exact text.
(2) numeric(p,s) batches holding 'NaN', 'Infinity' or '-Infinity' come back
    as pa.string() with the exact text for that batch; sinks handle both.
(3) Proleptic Gregorian, 1 BC is year 0 (as Postgres counts).
(4) IntervalStyle iso_8601 ('postgres' style is parsed too). ±infinity:
    (INT32_MAX, INT32_MAX, INT64_MAX) / (INT32_MIN, INT32_MIN, INT64_MIN). A
    time part beyond ~2.56 million hours does not fit int64 ns: ValueError.
(5) Dimensions from pg_attribute.attndims (0 means 1); a value with other
    dimensions raises ValueError ('{}' fits any). Elements follow their own
    type's rules (a numeric(p,s)[] batch holding NaN is list<string>).
    Bounds decoration ('[0:1]={1,2}') is dropped, values kept.
(6) "Everything else": text, varchar, bpchar (trailing blanks kept), name, char,
json, jsonb, jsonpath, xml, uuid, inet, cidr, macaddr, macaddr8, bit, varbit,
timetz, tsvector, tsquery, pg_lsn, xid8, cid, tid, reg* types, geometric types,
enums, ranges, multiranges, composites, extension types (postgis geometry,
pgvector vector, hstore, citext, ...) and OIDs nobody could resolve (their
type name is then ``oid:<n>``).
"""

from __future__ import annotations

import binascii
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sources.postgres.pgarray import decode_array
from wallaby.core.civil import days_from_civil

SESSION_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "lc_monetary": "C",
    "bytea_output": "hex",
}

_GUC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def libpq_options(settings: Mapping[str, str]) -> str:
    """The libpq ``options`` value that sets these GUCs: ``-c TimeZone=UTC -c DateStyle=ISO ...``.

    libpq splits ``options`` on spaces unless escaped: a space is written ``\\ ``
    and a backslash ``\\\\``.
    """
    parts = []
    for k, v in settings.items():
        if not _GUC_NAME.match(k):
            raise ValueError(f"{k!r} is not a setting name")
        parts.append("-c " + k + "=" + str(v).replace("\\", "\\\\").replace(" ", "\\ "))
    return " ".join(parts)


INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
DATE_POS_INF = INT32_MAX  # days since 1970-01-01
DATE_NEG_INF = INT32_MIN
TS_POS_INF = INT64_MAX  # µs since 1970-01-01 00:00 (UTC for timestamptz)
TS_NEG_INF = INT64_MIN
INTERVAL_POS_INF = (INT32_MAX, INT32_MAX, INT64_MAX)  # (months, days, nanoseconds)
INTERVAL_NEG_INF = (INT32_MIN, INT32_MIN, INT64_MIN)


# -- the registry -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgType:
    """One row of pg_type, as much as decoding needs."""

    oid: int
    name: str
    schema: str = "pg_catalog"
    kind: str = "b"  # b base, d domain, e enum, c composite, r range, m multirange, p pseudo
    base_oid: int = 0  # a domain's base type
    elem_oid: int = 0  # an array's element type (0: not an array; name and point are not arrays)
    extension: str | None = None  # the extension that owns the type
    delim: str = ","  # typdelim: ';' for box
    typmod: int = -1  # a domain's own typmod: numeric(10,2) in CREATE DOMAIN price AS numeric(10,2)


# (oid, name, array oid); kinds: 'b' unless listed below. Checked against the server by the tests.
_BUILTIN_ROWS = (
    (16, "bool", 1000), (17, "bytea", 1001), (18, "char", 1002), (19, "name", 1003), (20, "int8", 1016),
    (21, "int2", 1005), (22, "int2vector", 1006), (23, "int4", 1007), (24, "regproc", 1008), (25, "text", 1009),
    (26, "oid", 1028), (27, "tid", 1010), (28, "xid", 1011), (29, "cid", 1012), (30, "oidvector", 1013),
    (114, "json", 199), (142, "xml", 143), (600, "point", 1017), (601, "lseg", 1018), (602, "path", 1019),
    (603, "box", 1020), (604, "polygon", 1027), (628, "line", 629), (650, "cidr", 651), (700, "float4", 1021),
    (701, "float8", 1022), (705, "unknown", 0), (718, "circle", 719), (774, "macaddr8", 775),
    (790, "money", 791), (829, "macaddr", 1040), (869, "inet", 1041), (1033, "aclitem", 1034),
    (1042, "bpchar", 1014), (1043, "varchar", 1015), (1082, "date", 1182), (1083, "time", 1183),
    (1114, "timestamp", 1115), (1184, "timestamptz", 1185), (1186, "interval", 1187), (1266, "timetz", 1270),
    (1560, "bit", 1561), (1562, "varbit", 1563), (1700, "numeric", 1231), (1790, "refcursor", 2201),
    (2202, "regprocedure", 2207), (2203, "regoper", 2208), (2204, "regoperator", 2209),
    (2205, "regclass", 2210), (2206, "regtype", 2211), (2249, "record", 2287), (2275, "cstring", 1263),
    (2950, "uuid", 2951), (2970, "txid_snapshot", 2949), (3220, "pg_lsn", 3221), (3614, "tsvector", 3643),
    (3615, "tsquery", 3645), (3642, "gtsvector", 3644), (3734, "regconfig", 3735),
    (3769, "regdictionary", 3770), (3802, "jsonb", 3807), (3904, "int4range", 3905),
    (3906, "numrange", 3907), (3908, "tsrange", 3909), (3910, "tstzrange", 3911), (3912, "daterange", 3913),
    (3926, "int8range", 3927), (4072, "jsonpath", 4073), (4089, "regnamespace", 4090),
    (4096, "regrole", 4097), (4191, "regcollation", 4192), (4451, "int4multirange", 6150),
    (4532, "nummultirange", 6151), (4533, "tsmultirange", 6152), (4534, "tstzmultirange", 6153),
    (4535, "datemultirange", 6155), (4536, "int8multirange", 6157), (5038, "pg_snapshot", 5039),
    (5069, "xid8", 271),
)
_KINDS = {
    **dict.fromkeys((3904, 3906, 3908, 3910, 3912, 3926), "r"),
    **dict.fromkeys((4451, 4532, 4533, 4534, 4535, 4536), "m"),
    **dict.fromkeys((705, 2249, 2275, 2287), "p"),
}


def _builtins() -> dict[int, PgType]:
    out: dict[int, PgType] = {}
    for oid, name, array_oid in _BUILTIN_ROWS:
        delim = ";" if name == "box" else ","
        out[oid] = PgType(oid, name, kind=_KINDS.get(oid, "b"), delim=delim)
        if array_oid:
            out[array_oid] = PgType(array_oid, "_" + name, kind=_KINDS.get(array_oid, "b"), elem_oid=oid, delim=delim)
    return out


BUILTIN_TYPES: dict[int, PgType] = _builtins()

# One query: the OIDs asked for plus, recursively, domain base types and array element types.
# An array is what array_out prints (int2vector and oidvector have an element type but print '1 2').
_RESOLVE_SQL = """
WITH RECURSIVE wanted(oid) AS (
    SELECT unnest(%s::oid[])
  UNION
    SELECT dep.oid
    FROM wanted w
    JOIN pg_type t ON t.oid = w.oid
    CROSS JOIN LATERAL (VALUES (t.typbasetype),
                               (CASE WHEN t.typoutput = 'array_out'::regproc THEN t.typelem ELSE 0 END)) AS dep(oid)
    WHERE dep.oid <> 0
)
SELECT t.oid::int8, t.typname::text, n.nspname::text, t.typtype::text, t.typbasetype::int8,
       CASE WHEN t.typoutput = 'array_out'::regproc THEN t.typelem ELSE 0 END::int8,
       e.extname::text, t.typdelim::text, t.typtypmod
FROM wanted w
JOIN pg_type t ON t.oid = w.oid
JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_depend d ON d.classid = 'pg_type'::regclass AND d.objid = t.oid
                     AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
LEFT JOIN pg_extension e ON e.oid = d.refobjid
"""


def resolve_types(conn: Any, oids: Iterable[int]) -> dict[int, PgType]:
    """Look OIDs up in pg_type, with domain base types and array element types, recursively.

    One catalog query on a normal (non-replication) psycopg connection. OIDs
    of :data:`BUILTIN_TYPES` are not asked for (they may still come back as
    the base or element of another). An array type (which Postgres does not
    record as an extension member) takes its element's extension.
    """
    wanted = sorted({int(o) for o in oids} - set(BUILTIN_TYPES))
    if not wanted:
        return {}
    out: dict[int, PgType] = {}
    for oid, name, schema, kind, base, elem, ext, delim, typmod in conn.execute(_RESOLVE_SQL, (wanted,)):
        out[oid] = PgType(oid, name, schema, kind, base, elem, ext, delim or ",", typmod)
    for oid, t in out.items():
        if t.elem_oid and t.extension is None:
            elem = out.get(t.elem_oid) or BUILTIN_TYPES.get(t.elem_oid)
            if elem is not None and elem.extension:
                out[oid] = PgType(t.oid, t.name, t.schema, t.kind, t.base_oid, t.elem_oid, elem.extension, t.delim,
                                  t.typmod)
    return out


# -- column types ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnType:
    """What decoding a column needs: resolved names, typmod, dimensions, the Arrow type.

    ``arrow_type`` is what :func:`decode_column` returns, except for
    numeric(p,s) (and arrays of it): a batch holding NaN/Infinity comes back as
    string (list<string>) instead of decimal128.
    """

    type_name: str  # int4, numeric, _int4, geometry, mood, price (a domain), oid:12345 (unknown)
    base_type: str | None = None  # domain: its base type's name; array: the element's (domains resolved)
    extension: str | None = None
    typmod: int = -1
    ndims: int = 1
    arrow_type: pa.DataType = field(default_factory=pa.string)
    family: str = "text"  # which decoder: text, int, float, bool, numeric, numeric_text, money, bytea, ...
    elem: ColumnType | None = None  # arrays: the element's column type
    delim: str = ","  # arrays: the element delimiter
    # The server guarantees valid UTF-8 (a UTF8 database sending UTF8): text values are not validated again.
    utf8_valid: bool = False
    # Which decoder of sources/postgres/pgbinary.py reads the type's binary send format (pgoutput ``binary 'true'``);
    # None: none does, such values go through the server's receive and output functions (pgbinary's docstring).
    binary: str | None = field(default=None, compare=False)  # derived from the type: not part of its identity


def utf8_guaranteed(server_encoding: str | None, client_encoding: str | None) -> bool:
    """True when every text value the server sends is valid UTF-8: a UTF8 database (it validates all input)
    talking UTF8. SQL_ASCII stores any bytes; other encodings are converted, but we do not rely on it."""
    return (server_encoding or "").upper() == "UTF8" and (client_encoding or "").upper() == "UTF8"


def numeric_precision(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of numeric(p,s), None when unconstrained.

    typmod = ((p << 16) | (s & 0x7ff)) + 4: since Postgres 15 the scale is an
    11-bit signed field (-1000..1000), so numeric(5,-2) gives (5, -2).
    """
    if typmod < 4:
        return None
    v = typmod - 4
    return (v >> 16) & 0xFFFF, ((v & 0x7FF) ^ 1024) - 1024


_SCALAR: dict[str, tuple[str, pa.DataType]] = {
    "bool": ("bool", pa.bool_()),
    "int2": ("int", pa.int16()),
    "int4": ("int", pa.int32()),
    "int8": ("int", pa.int64()),
    "oid": ("int", pa.uint32()),
    "xid": ("int", pa.uint32()),
    "float4": ("float", pa.float32()),
    "float8": ("float", pa.float64()),
    "money": ("money", pa.decimal128(19, 2)),
    "bytea": ("bytea", pa.binary()),
    "date": ("date", pa.date32()),
    "time": ("time", pa.time64("us")),
    "timestamp": ("timestamp", pa.timestamp("us")),
    "timestamptz": ("timestamptz", pa.timestamp("us", tz="UTC")),
    "interval": ("interval", pa.month_day_nano_interval()),
}
# Element families whose text never holds ',', braces, quotes or backslashes (array fast path).
_QUOTE_SAFE = {"int", "float", "bool", "numeric", "numeric_text", "date", "time", "timestamp", "timestamptz",
               "interval"}


def _lookup(oid: int, types: Mapping[int, PgType]) -> PgType | None:
    return types.get(oid) or BUILTIN_TYPES.get(oid)


def _resolve_domain(t: PgType, typmod: int, types: Mapping[int, PgType]) -> tuple[PgType, int, str | None]:
    """Follow a domain to its base (recursively): (base type, effective typmod, extension)."""
    ext = t.extension
    for _ in range(32):
        if t.kind != "d" or not t.base_oid:
            break
        base = _lookup(t.base_oid, types)
        if base is None:
            break
        if typmod < 0:
            typmod = t.typmod  # the column has none: the domain's own (numeric(10,2) of the domain)
        t = base
        ext = ext or t.extension
    return t, typmod, ext


# Text-family types whose binary send format pgbinary reads: the text itself (textsend, namesend, json_send,
# enum_send all send the output function's bytes), jsonb (a version byte, then the text), uuid (16 bytes), pg_lsn
# (uint64; wallaby's own state table has one, published by FOR ALL TABLES publications).
_BINARY_TEXT = {"text": "text", "varchar": "text", "bpchar": "text", "name": "text", "json": "text",
                "jsonb": "jsonb", "uuid": "uuid", "pg_lsn": "pg_lsn"}


def _scalar(name: str, base: PgType, typmod: int, base_name: str | None, ext: str | None) -> ColumnType:
    key = base.name if base.schema == "pg_catalog" else ""
    if key == "numeric":
        ps = numeric_precision(typmod)
        if ps and 1 <= ps[0] <= 38 and 0 <= ps[1] <= ps[0]:
            return ColumnType(name, base_name, ext, typmod, 1, pa.decimal128(*ps), "numeric", binary="numeric")
        return ColumnType(name, base_name, ext, typmod, 1, pa.string(), "numeric_text", binary="numeric")
    if key in _SCALAR:
        family, arrow = _SCALAR[key]
        return ColumnType(name, base_name, ext, typmod, 1, arrow, family, binary=family)
    binary = _BINARY_TEXT.get(key) or ("text" if base.kind == "e" else None)
    return ColumnType(name, base_name, ext, typmod, 1, pa.string(), "text", delim=base.delim, binary=binary)


def column_type(oid: int, typmod: int, types: Mapping[int, PgType], ndims: int = 1) -> ColumnType:
    """The decoder's view of a column of type ``oid`` (``types`` from :func:`resolve_types`).

    Domains resolve to their base type, recursively (a domain over an array is
    an array). ``ndims``: pg_attribute.attndims, 0 meaning 1. An OID unknown to
    ``types`` and :data:`BUILTIN_TYPES` gives a text column named ``oid:<n>``.
    """
    t = _lookup(oid, types)
    if t is None:
        return ColumnType(f"oid:{oid}", typmod=typmod)
    base, typmod, ext = _resolve_domain(t, typmod, types)
    base_name = base.name if base is not t else None
    if not base.elem_oid:
        return _scalar(t.name, base, typmod, base_name, ext)
    elem_t = _lookup(base.elem_oid, types)
    if elem_t is None:
        elem = ColumnType(f"oid:{base.elem_oid}", typmod=typmod)
    else:
        eb, etypmod, eext = _resolve_domain(elem_t, typmod, types)
        elem = _scalar(elem_t.name, eb, etypmod, eb.name if eb is not elem_t else None, eext)
    n = max(1, ndims)
    arrow = elem.arrow_type
    for _ in range(n):
        arrow = pa.list_(arrow)
    elem_base = elem.base_type or elem.type_name
    # typmod: the element's (a column's atttypmod of numeric(10,2)[] is the element's; price[] takes the domain's)
    return ColumnType(t.name, base_name if base_name else elem_base, ext or elem.extension, elem.typmod, n, arrow,
                      "array", elem, elem_t.delim if elem_t is not None else ",",
                      binary="array" if n == 1 and elem.binary else None)


# -- per-value parsers (the slow path, and decode_value) -----------------------------------------------------

_DATE_RE = re.compile(r"^(\d{4,})-(\d\d)-(\d\d)( BC)?$")
_TS_RE = re.compile(
    r"^(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?(?:([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?)?( BC)?$"
)
_TIME_RE = re.compile(r"^(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?$")
_ISO_INTERVAL = (
    r"^P(?:(?P<y>-?\d+)Y)?(?:(?P<mo>-?\d+)M)?(?:(?P<w>-?\d+)W)?(?:(?P<d>-?\d+)D)?"
    r"(?:T(?:(?P<h>-?\d+)H)?(?:(?P<mi>-?\d+)M)?(?:(?P<s>-?\d+(?:\.\d+)?)S)?)?$"
)
_ISO_INTERVAL_RE = re.compile(_ISO_INTERVAL)
_PG_INTERVAL_RE = re.compile(
    r"^(?:(?P<y>[+-]?\d+) years? ?)?(?:(?P<mo>[+-]?\d+) mons? ?)?(?:(?P<d>[+-]?\d+) days? ?)?"
    r"(?:(?P<sign>[+-])?(?P<h>\d+):(?P<mi>\d\d):(?P<s>\d\d(?:\.\d+)?))?$"
)


def _micros(frac: str | None) -> int:
    return int(frac.ljust(6, "0")) if frac else 0


def parse_date_days(text: str) -> int:
    """Postgres date text (DateStyle ISO) -> days since 1970-01-01; ±infinity -> the sentinels."""
    if text == "infinity":
        return DATE_POS_INF
    if text == "-infinity":
        return DATE_NEG_INF
    m = _DATE_RE.match(text)
    if not m:
        raise ValueError(f"not a Postgres date: {text[:80]!r}")
    y = int(m.group(1))
    return days_from_civil(1 - y if m.group(4) else y, int(m.group(2)), int(m.group(3)))


def parse_timestamp_us(text: str) -> int:
    """Postgres timestamp(tz) text -> µs since the epoch (UTC when an offset is given); ±infinity -> sentinels."""
    if text == "infinity":
        return TS_POS_INF
    if text == "-infinity":
        return TS_NEG_INF
    m = _TS_RE.match(text)
    if not m:
        raise ValueError(f"not a Postgres timestamp: {text[:80]!r}")
    y, mo, d, h, mi, s, frac, sign, oh, om, osec, bc = m.groups()
    days = days_from_civil(1 - int(y) if bc else int(y), int(mo), int(d))
    secs = ((days * 24 + int(h)) * 60 + int(mi)) * 60 + int(s)
    if sign:
        off = int(oh) * 3600 + int(om or 0) * 60 + int(osec or 0)
        secs -= off if sign == "+" else -off
    us = secs * 1_000_000 + _micros(frac)
    if not TS_NEG_INF < us < TS_POS_INF:
        # Postgres goes to 294276 AD; int64 µs since 1970 ends in 294247 AD
        raise ValueError(f"timestamp {text[:80]!r} is beyond Arrow's timestamp[us] range (294247 AD)")
    return us


def parse_time_us(text: str) -> int:
    """Postgres time text -> µs since midnight (24:00:00 -> 86_400_000_000)."""
    m = _TIME_RE.match(text)
    if not m:
        raise ValueError(f"not a Postgres time: {text[:80]!r}")
    h, mi, s, frac = m.groups()
    return ((int(h) * 60 + int(mi)) * 60 + int(s)) * 1_000_000 + _micros(frac)


def _signed_micros(sec: str) -> int:
    neg = sec.startswith("-")
    whole, _, frac = sec.lstrip("+-").partition(".")
    us = int(whole) * 1_000_000 + _micros(frac)
    return -us if neg else us


def parse_interval(text: str) -> tuple[int, int, int]:
    """Interval text (IntervalStyle iso_8601 or postgres) -> (months, days, nanoseconds), exactly."""
    if text == "infinity":
        return INTERVAL_POS_INF
    if text == "-infinity":
        return INTERVAL_NEG_INF
    m = _ISO_INTERVAL_RE.match(text)
    if m:
        g = m.groupdict()
        days = int(g["w"] or 0) * 7 + int(g["d"] or 0)
        us = (int(g["h"] or 0) * 60 + int(g["mi"] or 0)) * 60_000_000 + _signed_micros(g["s"] or "0")
    else:
        m = _PG_INTERVAL_RE.match(text)
        if not m or not text:
            raise ValueError(f"not an interval in IntervalStyle iso_8601 or postgres: {text[:80]!r}")
        g = m.groupdict()
        days = int(g["d"] or 0)
        us = (int(g["h"] or 0) * 60 + int(g["mi"] or 0)) * 60_000_000 + _signed_micros(g["s"] or "0")
        if g["sign"] == "-":
            us = -us
    months = int(g["y"] or 0) * 12 + int(g["mo"] or 0)
    nanos = us * 1000
    if not INT64_MIN <= nanos <= INT64_MAX:
        raise ValueError(f"interval {text[:80]!r} is too long for Arrow's month_day_nano (int64 nanoseconds)")
    return months, days, nanos


def parse_money(text: str) -> Decimal:
    """money text under lc_monetary=C ('-$1,234.56') -> Decimal."""
    neg = text.startswith("-") or text.startswith("(")
    value = Decimal(text.strip("-()").replace("$", "").replace(",", "").strip())
    return -value if neg else value


_ESCAPED_OCTET = re.compile(rb"\\(\\|[0-3][0-7]{2})")


def parse_bytea(text: str | bytes) -> bytes:
    """bytea text, hex ('\\x00ff') or escape format -> bytes."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if raw.startswith(b"\\x"):
        return binascii.unhexlify(raw[2:])
    return _ESCAPED_OCTET.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1), 8)]), raw)


# -- columns ----------------------------------------------------------------------------------------------------


def _raw(values: list | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Raw values as an Arrow array (binary, binary_view or string); a list may hold bytes, str or None."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(values, pa.binary())


def _str(raw: pa.Array) -> pa.Array:
    """As pa.string() (validates UTF-8)."""
    return raw if raw.type == pa.string() else raw.cast(pa.string())


def _valid_bitmap(arr: pa.Array) -> pa.Buffer | None:
    if not arr.null_count:
        return None
    return pa.py_buffer(np.packbits(arr.is_valid().to_numpy(zero_copy_only=False), bitorder="little"))


def _per_value(raw: pa.Array, parse: Any, storage: pa.DataType, arrow_type: pa.DataType) -> pa.Array:
    values = [None if v is None else parse(v) for v in _str(raw).to_pylist()]
    return pa.array(values, storage).cast(arrow_type) if storage != arrow_type else pa.array(values, arrow_type)


def _dec_text(ct: ColumnType, raw: pa.Array) -> pa.Array:
    if ct.utf8_valid and raw.type == pa.binary_view():
        # Copy the views into one buffer and take it as UTF-8 as it is: about half the cost of a validating cast.
        b = raw.cast(pa.binary())
        return pa.Array.from_buffers(pa.string(), len(b), b.buffers(), b.null_count, b.offset)
    return _str(raw)


def _dec_cast(ct: ColumnType, raw: pa.Array) -> pa.Array:
    return raw.cast(ct.arrow_type)  # ints, floats: Arrow parses binary and string directly


def _dec_bool(ct: ColumnType, raw: pa.Array) -> pa.Array:
    return pc.equal(_str(raw), "t")


@functools.cache
def _special_numeric() -> pa.Array:
    # made on first use: pa.array from a list imports pandas (to look for its types), ~0.25 s of a worker's start
    return pa.array(["NaN", "Infinity", "-Infinity"])


def _dec_numeric(ct: ColumnType, raw: pa.Array) -> pa.Array:
    try:
        return raw.cast(ct.arrow_type)
    except pa.ArrowInvalid:
        s = _str(raw)
        if pc.any(pc.is_in(s, value_set=_special_numeric())).as_py():
            return s  # NaN / ±Infinity: this batch carries the exact text
        raise


def _dec_money(ct: ColumnType, raw: pa.Array) -> pa.Array:
    s = _str(raw)
    try:
        return pc.replace_substring(pc.replace_substring(s, "$", ""), ",", "").cast(ct.arrow_type)
    except pa.ArrowInvalid:
        return _per_value(s, parse_money, ct.arrow_type, ct.arrow_type)


def _dec_bytea(ct: ColumnType, raw: pa.Array) -> pa.Array:
    arr = raw if raw.type == pa.binary() else raw.cast(pa.binary())
    n = len(arr)
    if n == 0 or arr.null_count == n:
        return arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=arr.offset + n + 1)[arr.offset :]
    first = int(offsets[0])
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8, count=int(offsets[-1]))[first:]
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    starts = offsets[:-1][valid] - first
    if (
        lengths[~valid].any()
        or (lengths[valid] < 2).any()
        or (lengths[valid] & 1).any()
        or (data[starts] != 0x5C).any()  # '\'
        or (data[starts + 1] != 0x78).any()  # 'x'
    ):
        return _per_value(arr, parse_bytea, pa.binary(), pa.binary())
    keep = np.ones(len(data), dtype=bool)
    keep[starts] = False
    keep[starts + 1] = False
    try:
        out = binascii.unhexlify(data[keep].tobytes())
    except (binascii.Error, ValueError):
        return _per_value(arr, parse_bytea, pa.binary(), pa.binary())
    new_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.where(valid, (lengths - 2) // 2, 0), out=new_offsets[1:])
    return pa.Array.from_buffers(pa.binary(), n, [_valid_bitmap(arr), pa.py_buffer(new_offsets), pa.py_buffer(out)])


def _odd_dates(s: pa.Array) -> pa.Array:
    """Date / timestamp texts Arrow cannot parse: ±infinity, BC, years past 9999 (no '-' at offset 4)."""
    return pc.or_(pc.not_equal(pc.utf8_slice_codeunits(s, 4, 5), "-"), pc.ends_with(s, " BC")).fill_null(False)


def _mixed(s: pa.Array, odd: pa.Array, fast: Any, parse: Any, storage: pa.DataType,
           arrow_type: pa.DataType) -> pa.Array:
    """Arrow's cast for the ordinary values, ``parse`` per value for the ``odd`` ones only."""
    try:
        base = fast(pc.if_else(odd, pa.scalar(None, pa.string()), s)).cast(storage)
    except pa.ArrowInvalid:  # something else is odd too (an offset with seconds, ...): all per value
        return _per_value(s, parse, storage, arrow_type)
    patch = pa.array([parse(v) for v in s.filter(odd).to_pylist()], storage)
    return pc.replace_with_mask(base, odd, patch).cast(arrow_type)


def _dec_date(ct: ColumnType, raw: pa.Array) -> pa.Array:
    s = _str(raw)
    try:
        return s.cast(pa.date32())
    except pa.ArrowInvalid:
        pass  # 'infinity', BC, years past 9999
    return _mixed(s, _odd_dates(s), lambda x: x.cast(pa.date32()), parse_date_days, pa.int32(), pa.date32())


def _dec_timestamp(ct: ColumnType, raw: pa.Array) -> pa.Array:
    s = _str(raw)
    try:
        return s.cast(ct.arrow_type)
    except pa.ArrowInvalid:
        pass  # 'infinity', BC, years past 9999, offsets with seconds
    return _mixed(s, _odd_dates(s), lambda x: x.cast(ct.arrow_type), parse_timestamp_us, pa.int64(), ct.arrow_type)


def _time_fast(s: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise("1970-01-01", s, " ").cast(pa.timestamp("us")).cast(pa.int64())


def _dec_time(ct: ColumnType, raw: pa.Array) -> pa.Array:
    s = _str(raw)
    try:
        return _time_fast(s).cast(pa.time64("us"))
    except pa.ArrowInvalid:  # 24:00:00
        odd = pc.starts_with(s, "24:").fill_null(False)
        return _mixed(s, odd, _time_fast, parse_time_us, pa.int64(), pa.time64("us"))


_INTERVAL_FIELDS = ("y", "mo", "w", "d", "h", "mi", "s")


def _dec_interval(ct: ColumnType, raw: pa.Array) -> pa.Array:
    s = _str(raw)
    n = len(s)
    m = pc.extract_regex(s, _ISO_INTERVAL)
    if m.null_count != s.null_count:  # infinity, another IntervalStyle
        return _interval_per_value(s)
    parts = {}
    for name in _INTERVAL_FIELDS:
        f = m.field(name)
        parts[name] = pc.if_else(pc.equal(f, ""), "0", f).fill_null("0")
    try:
        ints = {k: parts[k].cast(pa.int64()) for k in _INTERVAL_FIELDS[:-1]}
        months = pc.add_checked(pc.multiply_checked(ints["y"], 12), ints["mo"]).cast(pa.int32())
        days = pc.add_checked(pc.multiply_checked(ints["w"], 7), ints["d"]).cast(pa.int32())
        # |seconds| < 60 with at most 6 decimals: a float64 times 1e6, rounded, is exact
        sec_us = pc.round(pc.multiply(parts["s"].cast(pa.float64()), 1e6)).cast(pa.int64())
        minutes = pc.add_checked(pc.multiply_checked(ints["h"], 60), ints["mi"])
        us = pc.add_checked(pc.multiply_checked(minutes, 60_000_000), sec_us)
        nanos = pc.multiply_checked(us, 1000)
    except (pa.ArrowInvalid, OverflowError):
        return _interval_per_value(s)  # raises the clear error for an interval too long for int64 ns
    rec = np.zeros(n, dtype=[("months", "<i4"), ("days", "<i4"), ("nanos", "<i8")])
    rec["months"] = months.to_numpy(zero_copy_only=False)
    rec["days"] = days.to_numpy(zero_copy_only=False)
    rec["nanos"] = nanos.to_numpy(zero_copy_only=False)
    return pa.Array.from_buffers(pa.month_day_nano_interval(), n, [_valid_bitmap(s), pa.py_buffer(rec)])


def _interval_per_value(s: pa.Array) -> pa.Array:
    return pa.array([None if v is None else parse_interval(v) for v in s.to_pylist()], pa.month_day_nano_interval())


def _dec_array(ct: ColumnType, raw: pa.Array) -> pa.Array:
    elem = ct.elem
    assert elem is not None
    return decode_array(_str(raw), ct.ndims, lambda flat: decode_column(elem, flat), delim=ct.delim,
                        quote_safe=elem.family in _QUOTE_SAFE, type_name=ct.type_name)


_DECODERS = {
    "text": _dec_text,
    "numeric_text": _dec_text,
    "int": _dec_cast,
    "float": _dec_cast,
    "bool": _dec_bool,
    "numeric": _dec_numeric,
    "money": _dec_money,
    "bytea": _dec_bytea,
    "date": _dec_date,
    "timestamp": _dec_timestamp,
    "timestamptz": _dec_timestamp,
    "time": _dec_time,
    "interval": _dec_interval,
    "array": _dec_array,
}


def decode_column(ct: ColumnType, values: list | pa.Array | pa.ChunkedArray) -> pa.Array:
    """One column's raw text values of a batch -> one Arrow array of ``ct.arrow_type``.

    ``values``: bytes (or str) per row, None for NULL; or a binary,
    binary_view or string Arrow array. The exception to ``ct.arrow_type``: a
    numeric(p,s) batch holding NaN/Infinity comes back as string (list<string>
    for arrays). Raises ValueError naming the type on text it cannot decode.
    """
    raw = _raw(values)
    try:
        return _DECODERS.get(ct.family, _dec_text)(ct, raw)
    except (pa.ArrowInvalid, binascii.Error) as exc:
        raise ValueError(f"{ct.type_name}: {str(exc)[:300]}") from exc


def _int_storage(t: pa.DataType) -> pa.DataType | None:
    """The integer type behind a temporal type (nested in lists too), None when not temporal."""
    if pa.types.is_list(t):
        inner = _int_storage(t.value_type)
        return pa.list_(inner) if inner is not None else None
    if pa.types.is_date32(t):
        return pa.int32()
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return pa.int64()
    return None


def decode_value(ct: ColumnType, raw: bytes | str | None) -> Any:
    """One value as a Python object: what :func:`decode_column` would hold, ``as_py()``.

    Dates and timestamps Python cannot hold (±infinity, BC, past 9999) come
    back as their Arrow integer (days / µs since the epoch), e.g. TS_POS_INF,
    and ``24:00:00`` as 86_400_000_000 (µs).
    """
    if raw is None:
        return None
    arr = decode_column(ct, [raw])
    if ct.family == "time":
        us = arr.cast(pa.int64())[0].as_py()
        if us == 86_400_000_000:
            return us  # 24:00:00: datetime.time cannot hold it
    try:
        return arr.to_pylist()[0]
    except (ValueError, OverflowError):
        storage = _int_storage(arr.type)
        if storage is None:
            raise
        return arr.cast(storage).to_pylist()[0]
