"""Postgres types: the registry, OID resolution, and text -> Arrow column decoding.

pgoutput sends each value as the type's text output, under the walsender
session's settings; :data:`SESSION_SETTINGS` fixes those so the text is
deterministic. :func:`decode_column` turns one column's raw values of a batch
into one typed Arrow array: Arrow's vectorised casts where they parse Postgres
text exactly, Python per value only where they cannot (or for the rare value
the fast path rejects: 'infinity', BC dates, years past 9999).

| Postgres | Arrow | notes |
|---|---|---|
| bool | bool | |
| int2 / int4 / int8 | int16 / int32 / int64 | |
| oid, xid | uint32 | |
| float4 / float8 | float32 / float64 | NaN, Infinity, -Infinity; exact round trip (extra_float_digits=3) |
| numeric(p,s), 0 < p <= 38, s >= 0 | decimal128(p,s) | a batch holding NaN/Infinity carries string for that column |
| numeric (no typmod, p > 38, s < 0) | string | the exact text, never a float |
| money | decimal128(19,2) | lc_monetary=C |
| bytea | binary | |
| date | date32 | infinity = INT32_MAX days, -infinity = INT32_MIN days; BC dates proleptic |
| time | time64[us] | 24:00:00 allowed |
| timestamp | timestamp[us] | infinity = INT64_MAX µs, -infinity = INT64_MIN µs |
| timestamptz | timestamp[us, UTC] | same sentinels |
| interval | month_day_nano_interval | exact months, days, nanoseconds |
| arrays | list<element>, nested per dimension | dimensions from pg_attribute.attndims (min 1) |
| domains | their base type | |
| everything else | string | the exact text; the type name travels in Column.type_name |

"Everything else": text, varchar, bpchar, name, char, json, jsonb, jsonpath, xml,
uuid, inet, cidr, macaddr(8), bit, varbit, timetz, tsvector, tsquery, pg_lsn,
enums, ranges, composites, geometric types, extension types (postgis geometry,
pgvector vector) and unknown OIDs.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sources.pgarray import ArrayParseError, depth, parse_array

SESSION_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "lc_monetary": "C",
    "bytea_output": "hex",
}


def libpq_options(settings: Mapping[str, str]) -> str:
    """The libpq ``options`` value setting these GUCs (spaces and backslashes escaped)."""

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace(" ", "\\ ")

    return " ".join(f"-c {esc(k)}={esc(v)}" for k, v in settings.items())


DATE_POS_INF = 2**31 - 1
DATE_NEG_INF = -(2**31)
TS_POS_INF = 2**63 - 1
TS_NEG_INF = -(2**63)


@dataclass(frozen=True)
class PgType:
    oid: int
    name: str
    schema: str = "pg_catalog"
    kind: str = "b"  # b base, d domain, e enum, c composite, r range, m multirange, p pseudo
    base_oid: int = 0
    elem_oid: int = 0
    extension: str | None = None
    delim: str = ","
    typmod: int = -1  # a domain's own typmod: numeric(10,2) in CREATE DOMAIN price AS numeric(10,2)


_BUILTIN_NAMES = {
    16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2", 22: "int2vector", 23: "int4",
    24: "regproc", 25: "text", 26: "oid", 27: "tid", 28: "xid", 29: "cid", 30: "oidvector", 114: "json",
    142: "xml", 600: "point", 601: "lseg", 602: "path", 603: "box", 604: "polygon", 628: "line", 650: "cidr",
    700: "float4", 701: "float8", 718: "circle", 774: "macaddr8", 790: "money", 829: "macaddr", 869: "inet",
    1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time", 1114: "timestamp", 1184: "timestamptz",
    1186: "interval", 1266: "timetz", 1560: "bit", 1562: "varbit", 1700: "numeric", 2205: "regclass",
    2206: "regtype", 2950: "uuid", 3220: "pg_lsn", 3614: "tsvector", 3615: "tsquery", 3802: "jsonb",
    3904: "int4range", 3906: "numrange", 3908: "tsrange", 3910: "tstzrange", 3912: "daterange",
    3926: "int8range", 4072: "jsonpath", 5069: "xid8",
}
_BUILTIN_ARRAYS = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1006: 22, 1007: 23, 1008: 24, 1009: 25,
    1028: 26, 1010: 27, 1011: 28, 1012: 29, 1013: 30, 199: 114, 143: 142, 1017: 600, 1018: 601, 1019: 602,
    1020: 603, 1027: 604, 629: 628, 651: 650, 1021: 700, 1022: 701, 719: 718, 775: 774, 791: 790, 1040: 829,
    1041: 869, 1014: 1042, 1015: 1043, 1182: 1082, 1183: 1083, 1115: 1114, 1185: 1184, 1187: 1186,
    1270: 1266, 1561: 1560, 1563: 1562, 1231: 1700, 2210: 2205, 2211: 2206, 2951: 2950, 3221: 3220,
    3643: 3614, 3645: 3615, 3807: 3802, 3905: 3904, 3907: 3906, 3909: 3908, 3911: 3910, 3913: 3912,
    3927: 3926, 4073: 4072, 271: 5069,
}
_RANGES = {3904, 3906, 3908, 3910, 3912, 3926}

BUILTIN_TYPES: dict[int, PgType] = {
    oid: PgType(oid, name, kind="r" if oid in _RANGES else "b", delim=";" if name == "box" else ",")
    for oid, name in _BUILTIN_NAMES.items()
}
BUILTIN_TYPES.update({
    oid: PgType(oid, "_" + _BUILTIN_NAMES[elem], elem_oid=elem) for oid, elem in _BUILTIN_ARRAYS.items()
})

_RESOLVE_SQL = """
SELECT t.oid, t.typname, n.nspname, t.typtype, t.typbasetype, t.typelem, t.typcategory, t.typdelim, e.extname,
       t.typtypmod
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_depend d ON d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e'
LEFT JOIN pg_extension e ON e.oid = d.refobjid
WHERE t.oid = ANY(%s)
"""


def resolve_types(conn: Any, oids: Iterable[int]) -> dict[int, PgType]:
    """Look OIDs up in pg_type (with domain bases and array elements, recursively)."""
    out: dict[int, PgType] = {}
    todo = {int(o) for o in oids} - set(BUILTIN_TYPES)
    while todo:
        rows = conn.execute(_RESOLVE_SQL, (list(todo),)).fetchall()
        todo = set()
        for oid, name, schema, typtype, base, elem, category, delim, ext, typmod in rows:
            is_array = category == "A" and elem != 0
            t = PgType(int(oid), name, schema, typtype, int(base), int(elem) if is_array else 0, ext, delim or ",",
                       int(typmod))
            out[t.oid] = t
            for dep in (t.base_oid, t.elem_oid):
                if dep and dep not in out and dep not in BUILTIN_TYPES:
                    todo.add(dep)
        todo -= set(out)
    # Extension types owned through their base (e.g. a domain over geometry) keep the base's extension.
    return out


# -- column types --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnType:
    """What decoding a column needs: resolved names, typmod, dimensions, the Arrow type."""

    type_name: str
    base_type: str | None = None  # domain: its base; array: its element
    extension: str | None = None
    typmod: int = -1
    ndims: int = 1
    arrow_type: pa.DataType = field(default_factory=pa.string)
    family: str = "text"
    elem: ColumnType | None = None
    delim: str = ","


def numeric_precision(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of numeric(p,s), or None when unconstrained."""
    if typmod < 4:
        return None
    p = ((typmod - 4) >> 16) & 0xFFFF
    s = (typmod - 4) & 0xFFFF
    if s >= 0x8000:  # negative scale (PG15+) is stored as an 11-bit signed value
        s -= 0x10000
    s = s if -1000 <= s <= 1000 else (typmod - 4) & 0x7FF
    return p, s


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


def _scalar(t: PgType, typmod: int, types: Mapping[int, PgType]) -> ColumnType:
    ext = t.extension
    name = t.name
    base_name = None
    seen = 0
    while t.kind == "d" and t.base_oid and seen < 16:  # domains decode as their base type
        base = types.get(t.base_oid) or BUILTIN_TYPES.get(t.base_oid)
        if base is None:
            break
        if typmod < 0:
            typmod = t.typmod  # the column has none: the domain's own (numeric(10,2) of the domain)
        t = base
        base_name = t.name
        ext = ext or t.extension
        seen += 1
    key = t.name if t.schema == "pg_catalog" else ""
    if key == "numeric":
        ps = numeric_precision(typmod)
        if ps and 0 < ps[0] <= 38 and 0 <= ps[1] <= ps[0]:
            return ColumnType(name, base_name, ext, typmod, 1, pa.decimal128(*ps), "numeric")
        return ColumnType(name, base_name, ext, typmod, 1, pa.string(), "numeric_text")
    if key in _SCALAR:
        family, arrow = _SCALAR[key]
        return ColumnType(name, base_name, ext, typmod, 1, arrow, family)
    return ColumnType(name, base_name, ext, typmod, 1, pa.string(), "text", delim=t.delim)


def column_type(oid: int, typmod: int, types: Mapping[int, PgType], ndims: int = 1) -> ColumnType:
    t = types.get(oid) or BUILTIN_TYPES.get(oid)
    if t is None:
        return ColumnType(f"oid:{oid}", typmod=typmod)
    if t.kind == "d" and t.base_oid:  # a domain over an array is an array
        base = types.get(t.base_oid) or BUILTIN_TYPES.get(t.base_oid)
        if base is not None and base.elem_oid:
            inner = column_type(base.oid, typmod, types, ndims)
            return ColumnType(t.name, inner.base_type, t.extension or inner.extension, typmod, inner.ndims,
                              inner.arrow_type, "array", inner.elem, inner.delim)
    if t.elem_oid:
        elem_t = types.get(t.elem_oid) or BUILTIN_TYPES.get(t.elem_oid)
        elem = (_scalar(elem_t, typmod, types) if elem_t is not None
                else ColumnType(f"oid:{t.elem_oid}", typmod=typmod))
        if elem.family == "numeric":  # arrays of numeric may hold NaN anywhere: keep the exact text
            elem = ColumnType(elem.type_name, elem.base_type, elem.extension, typmod, 1, pa.string(),
                              "numeric_text")
        n = max(1, ndims)
        arrow = elem.arrow_type
        for _ in range(n):
            arrow = pa.list_(arrow)
        return ColumnType(t.name, elem.type_name, t.extension or elem.extension, typmod, n, arrow, "array", elem,
                          elem_t.delim if elem_t else ",")
    return _scalar(t, typmod, types)


# -- per-value decoders (the slow path, and decode_value) ----------------------------------------------

_EPOCH_DATE = dt.date(1970, 1, 1)
_DATE_RE = re.compile(r"^(\d{4,})-(\d{2})-(\d{2})( BC)?$")
_TS_RE = re.compile(
    r"^(\d{4,})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?([+-]\d{2}(?::?\d{2}){0,2})?( BC)?$"
)
_INTERVAL_RE = re.compile(
    r"^P(?:(?P<y>-?\d+)Y)?(?:(?P<mo>-?\d+)M)?(?:(?P<w>-?\d+)W)?(?:(?P<d>-?\d+)D)?"
    r"(?:T(?:(?P<h>-?\d+)H)?(?:(?P<mi>-?\d+)M)?(?:(?P<s>-?\d+(?:\.\d+)?)S)?)?$"
)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar, any year (astronomical numbering)."""
    y -= m <= 2
    era = y // 400  # floor division: what the C original gets with (y >= 0 ? y : y - 399) / 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_date_days(text: str) -> int:
    if text == "infinity":
        return DATE_POS_INF
    if text == "-infinity":
        return DATE_NEG_INF
    m = _DATE_RE.match(text)
    if not m:
        raise ValueError(f"not a Postgres date: {text!r}")
    y = int(m.group(1))
    if m.group(4):
        y = 1 - y  # 1 BC is year 0
    return _days_from_civil(y, int(m.group(2)), int(m.group(3)))


def parse_timestamp_us(text: str) -> int:
    if text == "infinity":
        return TS_POS_INF
    if text == "-infinity":
        return TS_NEG_INF
    m = _TS_RE.match(text)
    if not m:
        raise ValueError(f"not a Postgres timestamp: {text!r}")
    y, mo, d, h, mi, s, frac, tz, bc = m.groups()
    year = int(y)
    if bc:
        year = 1 - year
    days = _days_from_civil(year, int(mo), int(d))
    us = ((days * 24 + int(h)) * 60 + int(mi)) * 60 + int(s)
    us = us * 1_000_000 + (int(frac.ljust(6, "0")) if frac else 0)
    if tz:
        sign = -1 if tz[0] == "-" else 1
        parts = tz[1:].replace(":", "")
        off = int(parts[0:2]) * 3600 + (int(parts[2:4]) * 60 if len(parts) >= 4 else 0) + (
            int(parts[4:6]) if len(parts) >= 6 else 0)
        us -= sign * off * 1_000_000
    return us


def parse_time_us(text: str) -> int:
    hh, mm, rest = text.split(":")
    sec, _, frac = rest.partition(".")
    return ((int(hh) * 60 + int(mm)) * 60 + int(sec)) * 1_000_000 + (int(frac.ljust(6, "0")) if frac else 0)


def parse_interval(text: str) -> tuple[int, int, int]:
    """ISO 8601 interval text (IntervalStyle=iso_8601) -> (months, days, nanoseconds)."""
    m = _INTERVAL_RE.match(text)
    if not m:
        raise ValueError(f"not an ISO 8601 interval: {text!r}")
    g = m.groupdict()
    months = int(g["y"] or 0) * 12 + int(g["mo"] or 0)
    days = int(g["w"] or 0) * 7 + int(g["d"] or 0)
    secs = Decimal(g["s"] or 0)
    nanos = ((int(g["h"] or 0) * 60 + int(g["mi"] or 0)) * 60) * 1_000_000_000 + int(secs * 1_000_000_000)
    return months, days, nanos


def parse_money(text: str) -> Decimal:
    neg = text.startswith("-") or text.startswith("(")
    digits = text.strip("-()").replace("$", "").replace(",", "").strip()
    value = Decimal(digits)
    return -value if neg else value


def parse_bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    raise ValueError("bytea must be in hex output format (bytea_output=hex)")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes | bytearray | memoryview) else v


def decode_value(ct: ColumnType, raw: bytes | str | None) -> Any:
    """One value as a Python object (tests, error messages): what decode_column would hold."""
    if raw is None:
        return None
    return decode_column(ct, [raw]).to_pylist()[0]


# -- columns ---------------------------------------------------------------------------------------------


def _strings(values: list | pa.Array) -> pa.Array:
    """Raw values (bytes/str list, or a binary/binary_view Arrow array) as an Arrow string array."""
    if isinstance(values, pa.Array):
        return values if values.type == pa.string() else values.cast(pa.string())
    if values and isinstance(next((v for v in values if v is not None), b""), str):
        return pa.array(values, pa.string())
    return pa.array(values, pa.binary()).cast(pa.string())


_SPECIAL_NUMERIC = pa.array(["NaN", "Infinity", "-Infinity"])


def _has_suffix(s: pa.Array, *suffixes: str) -> bool:
    return any(pc.any(pc.ends_with(s, x)).as_py() for x in suffixes)


def decode_column(ct: ColumnType, values: list | pa.Array) -> pa.Array:
    """Raw text values of one column -> one Arrow array of ``ct.arrow_type``.

    ``values``: bytes or str per row (None = NULL), or a binary/binary_view Arrow array.
    The one exception to ``ct.arrow_type``: a numeric(p,s) column whose values
    include NaN/Infinity comes back as string for that batch.
    """
    fam = ct.family
    s = _strings(values)
    if fam == "text" or fam == "numeric_text":
        return s
    if fam == "int" or fam == "float":
        return s.cast(ct.arrow_type)
    if fam == "bool":
        return pc.equal(pc.utf8_slice_codeunits(s, 0, 1), "t")  # 't' (boolout) or 'true'
    if fam == "numeric":
        if pc.any(pc.is_in(s, value_set=_SPECIAL_NUMERIC)).as_py():
            return s
        return s.cast(ct.arrow_type)
    if fam == "timestamptz" or fam == "timestamp":
        if not _has_suffix(s, "infinity", "BC"):
            try:
                return s.cast(ct.arrow_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # e.g. a year past 9999
        us = [None if v is None else parse_timestamp_us(v) for v in s.to_pylist()]
        return pa.array(us, pa.int64()).cast(ct.arrow_type)
    if fam == "date":
        if not _has_suffix(s, "infinity", "BC"):
            try:
                return s.cast(pa.date32())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        days = [None if v is None else parse_date_days(v) for v in s.to_pylist()]
        return pa.array(days, pa.int32()).cast(pa.date32())
    py = s.to_pylist()
    if fam == "time":
        return pa.array([None if v is None else parse_time_us(v) for v in py], pa.int64()).cast(pa.time64("us"))
    if fam == "interval":
        return pa.array([None if v is None else parse_interval(v) for v in py], pa.month_day_nano_interval())
    if fam == "money":
        return pa.array([None if v is None else parse_money(v) for v in py], ct.arrow_type)
    if fam == "bytea":
        return pa.array([None if v is None else parse_bytea(v) for v in py], pa.binary())
    if fam == "array":
        return _decode_arrays(ct, py)
    return s


def _decode_arrays(ct: ColumnType, values: list) -> pa.Array:
    """Parse every array value, decode all elements in one call, rebuild the nesting with offsets."""
    assert ct.elem is not None
    flat: list = []
    # offsets per level: level 0 over rows, deeper levels over sub-lists
    levels: list[list[int]] = [[0] for _ in range(ct.ndims)]
    valid: list[bool] = []

    def walk(node: list, level: int, text: str) -> None:
        if level == ct.ndims - 1:
            if any(isinstance(x, list) for x in node):
                raise ValueError(f"{ct.type_name} value has more dimensions than {ct.ndims}: {text[:80]!r}")
            flat.extend(node)
            levels[level].append(levels[level][-1] + len(node))
            return
        for sub in node:
            if not isinstance(sub, list):
                raise ValueError(f"{ct.type_name} value has fewer dimensions than {ct.ndims}: {text[:80]!r}")
            walk(sub, level + 1, text)
        levels[level].append(levels[level][-1] + len(node))

    for v in values:
        if v is None:
            valid.append(False)
            levels[0].append(levels[0][-1])
            continue
        text = _text(v)
        try:
            parsed = parse_array(text, ct.delim)
        except ArrayParseError as exc:
            raise ValueError(f"{ct.type_name}: {exc}") from None
        if parsed and depth(parsed) != ct.ndims:
            raise ValueError(f"{ct.type_name} value has {depth(parsed)} dimensions, the column {ct.ndims}:"
                             f" {text[:80]!r}")
        valid.append(True)
        if not parsed:
            levels[0].append(levels[0][-1])
            continue
        walk(parsed, 0, text)
    inner = decode_column(ct.elem, flat)
    arr: pa.Array = inner
    for level in range(ct.ndims - 1, -1, -1):
        offsets = pa.array(levels[level], pa.int32())
        if level == 0:
            mask = pa.array([not x for x in valid], pa.bool_())
            arr = pa.ListArray.from_arrays(offsets, arr, mask=mask)
        else:
            arr = pa.ListArray.from_arrays(offsets, arr)
    return arr
