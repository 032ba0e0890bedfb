"""Postgres -> ClickHouse column types for the ClickHouse destination (the table is in docs/type_mappings.md and
docs/destinations.md "ClickHouse").

Keyed by :attr:`wallaby.core.changes.Column.type_name` (then ``base_type`` for domains); overrides (the
destination's ``type_mappings``) first, by the keys ``ext:<extension>.<type_name>``, ``ext:<extension>``, the
``type_name`` (``_int4`` for an int4 array), then ``base_type``, as the DuckDB destination
(:func:`sinks.duckdb.types.duckdb_type`). An override of an element type applies to its arrays.

:func:`clickhouse_type` is the bare type; the writer makes a non-key column ``Nullable(...)`` (:func:`nullable`:
not arrays, which ClickHouse cannot make Nullable: a NULL array reads as ``[]``).

Text fallbacks (``String``): numeric without a typmod or beyond 38 digits (exact text, NaN and +-Infinity kept),
``time`` (``HH:MM:SS[.ffffff]``, 24:00:00 kept), ``interval`` (DuckDB's interval text, e.g. ``1 year 2 months -3
days 04:05:06.789``), ``timetz``, ``json``/``jsonb`` (the JSON text as Postgres sent it), enums, ``inet``, ranges,
extension types (their Postgres text form). ``bytea`` is ``String`` holding the bytes. Dates and timestamps are
``Date32`` / ``DateTime64(6)`` (range 1900-01-01 .. 2299-12-31): values outside, and +-infinity, land on the nearest
end.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sinks.sql.types import TypeMap, is_array, list_depth
from wallaby.core.changes import Column

STRING = "String"

DEFAULT_TYPE_MAP: dict[str, str] = {
    "int2": "Int16",
    "smallint": "Int16",
    "int4": "Int32",
    "integer": "Int32",
    "int": "Int32",
    "int8": "Int64",
    "bigint": "Int64",
    "oid": "UInt32",
    "float4": "Float32",
    "real": "Float32",
    "float8": "Float64",
    "double precision": "Float64",
    "money": "Decimal(19,2)",
    "bool": "Bool",
    "boolean": "Bool",
    "text": STRING,
    "varchar": STRING,
    "character varying": STRING,
    "bpchar": STRING,
    "character": STRING,
    "name": STRING,
    "char": STRING,
    "bytea": STRING,
    "date": "Date32",
    "time": STRING,
    "time without time zone": STRING,
    "timestamp": "DateTime64(6)",
    "timestamp without time zone": "DateTime64(6)",
    "timestamptz": "DateTime64(6, 'UTC')",
    "timestamp with time zone": "DateTime64(6, 'UTC')",
    "timetz": STRING,
    "interval": STRING,
    "uuid": "UUID",
    "json": STRING,
    "jsonb": STRING,
}


TYPE_MAP = TypeMap(DEFAULT_TYPE_MAP, decimal="Decimal({p},{s})", fallback=STRING)


def clickhouse_type(column: Column, overrides: Mapping[str, str] | None = None) -> str:
    """The ClickHouse column type of a source column, without ``Nullable`` (overrides first, then the default
    map)."""
    overrides = overrides or {}
    name = column.type_name
    if is_array(column):
        if name in overrides:
            return overrides[name]
        out = nullable(TYPE_MAP.element(column, overrides))
        for _ in range(max(1, list_depth(column.arrow_type))):
            out = f"Array({out})"
        return out
    return TYPE_MAP.of(column, overrides)


_NOT_NULLABLE = ("Nullable(", "Array(", "Map(", "Tuple(", "LowCardinality(", "JSON", "Object(", "Dynamic", "Variant(",
                 "Nested(")


def nullable(type_sql: str) -> str:
    """``type_sql`` able to hold NULL: ``Nullable(...)`` unless ClickHouse cannot wrap it (arrays, maps, tuples,
    LowCardinality, JSON, Dynamic, Variant) or it already is."""
    t = type_sql.strip()
    if t.startswith(_NOT_NULLABLE):
        return t
    return f"Nullable({t})"


def bare(type_sql: str) -> str:
    """``Nullable(T)`` -> ``T``; anything else unchanged."""
    t = canonical_type(type_sql)
    m = re.fullmatch(r"Nullable\((.*)\)", t)
    return m.group(1) if m else t


def canonical_type(type_sql: str) -> str:
    """A ClickHouse type in one spelling (as ``system.columns`` reports it: ``Decimal(p, s)``, ``DateTime64(6,
    'UTC')``): spaces after commas, none elsewhere around parentheses."""
    t = re.sub(r"\s+", " ", type_sql.strip())
    t = re.sub(r"\s*\(\s*", "(", t)
    t = re.sub(r"\s*\)", ")", t)
    t = re.sub(r"\s*,\s*", ", ", t)
    return t


_INT_RANK = {"Int8": 1, "Int16": 2, "Int32": 3, "Int64": 4, "Int128": 5, "Int256": 6}
_DECIMAL = re.compile(r"Decimal\((\d+), (\d+)\)")


def widens(have: str, want: str) -> bool:
    """True when every value of ClickHouse type ``have`` fits ``want`` (nullability aside): a source type change
    ClickHouse follows in place with ``ALTER TABLE ... MODIFY COLUMN`` (Int16 -> Int32 -> Int64, Float32 ->
    Float64, Decimal to more digits, any scalar to String)."""
    h, w = bare(have), bare(want)
    if h == w:
        return False
    if h in _INT_RANK and w in _INT_RANK:
        return _INT_RANK[w] > _INT_RANK[h]
    if (h, w) == ("Float32", "Float64") or (h in ("Int8", "Int16", "Int32") and w == "Float64"):
        return True
    hm, wm = _DECIMAL.fullmatch(h), _DECIMAL.fullmatch(w)
    if hm and wm:
        hp, hs, wp, ws = (int(x) for x in (*hm.groups(), *wm.groups()))
        return ws >= hs and wp - ws >= hp - hs
    if h in _INT_RANK and wm:
        wp, ws = int(wm.group(1)), int(wm.group(2))
        return wp - ws >= {1: 3, 2: 5, 3: 10, 4: 19, 5: 39, 6: 77}[_INT_RANK[h]]
    return w == STRING and not h.startswith(("Array(", "Map(", "Tuple("))


def is_string(type_sql: str) -> bool:
    return bare(type_sql) in (STRING, "LowCardinality(String)", "LowCardinality(Nullable(String))") or bare(
        type_sql).startswith("FixedString(")


__all__ = ["DEFAULT_TYPE_MAP", "STRING", "bare", "canonical_type", "clickhouse_type", "is_string", "nullable",
           "widens"]
