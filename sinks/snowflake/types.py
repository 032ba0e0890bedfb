"""Postgres -> Snowflake column types for the Snowflake destination (the table is in docs/snowflake.md).

Keyed by :attr:`wallaby.core.changes.Column.type_name` (then ``base_type`` for domains); overrides (the
destination's ``type_mappings``) first, by the keys ``ext:<extension>.<type_name>``, ``ext:<extension>``, the
``type_name`` (``_int4`` for an int4 array), then ``base_type``, as the DuckDB destination
(:func:`sinks.duckdb.types.duckdb_type`). An array is ``ARRAY`` unless its own type name is mapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sinks.sql.types import TypeMap, is_array
from wallaby.core.changes import Column

VARCHAR = "VARCHAR"

DEFAULT_TYPE_MAP: dict[str, str] = {
    "int2": "NUMBER(5,0)",
    "smallint": "NUMBER(5,0)",
    "int4": "NUMBER(10,0)",
    "integer": "NUMBER(10,0)",
    "int": "NUMBER(10,0)",
    "int8": "NUMBER(19,0)",
    "bigint": "NUMBER(19,0)",
    "oid": "NUMBER(10,0)",
    "float4": "FLOAT",
    "real": "FLOAT",
    "float8": "FLOAT",
    "double precision": "FLOAT",
    "money": "NUMBER(19,2)",
    "bool": "BOOLEAN",
    "boolean": "BOOLEAN",
    "text": VARCHAR,
    "varchar": VARCHAR,
    "character varying": VARCHAR,
    "bpchar": VARCHAR,
    "character": VARCHAR,
    "name": VARCHAR,
    "char": VARCHAR,
    "bytea": "BINARY",
    "date": "DATE",
    "time": "TIME(6)",
    "time without time zone": "TIME(6)",
    "timestamp": "TIMESTAMP_NTZ(6)",
    "timestamp without time zone": "TIMESTAMP_NTZ(6)",
    "timestamptz": "TIMESTAMP_TZ(6)",
    "timestamp with time zone": "TIMESTAMP_TZ(6)",
    "timetz": VARCHAR,
    "interval": VARCHAR,
    "uuid": "VARCHAR(36)",
    "json": "VARIANT",
    "jsonb": "VARIANT",
}


TYPE_MAP = TypeMap(DEFAULT_TYPE_MAP, decimal="NUMBER({p},{s})", fallback=VARCHAR)


def snowflake_type(column: Column, overrides: Mapping[str, str] | None = None) -> str:
    """The Snowflake column type of a source column (overrides first, then the default map)."""
    overrides = overrides or {}
    name = column.type_name
    if is_array(column):
        return overrides.get(name, "ARRAY")
    return TYPE_MAP.of(column, overrides)


_ALIASES = {
    "TEXT": "VARCHAR", "STRING": "VARCHAR", "CHAR": "VARCHAR", "CHARACTER": "VARCHAR",
    "INT": "NUMBER(38,0)", "INTEGER": "NUMBER(38,0)", "BIGINT": "NUMBER(38,0)", "SMALLINT": "NUMBER(38,0)",
    "TINYINT": "NUMBER(38,0)", "BYTEINT": "NUMBER(38,0)", "NUMBER": "NUMBER(38,0)", "DECIMAL": "NUMBER(38,0)",
    "NUMERIC": "NUMBER(38,0)", "DOUBLE": "FLOAT", "DOUBLE PRECISION": "FLOAT", "REAL": "FLOAT", "FLOAT4": "FLOAT",
    "FLOAT8": "FLOAT", "VARBINARY": "BINARY", "DATETIME": "TIMESTAMP_NTZ", "TIMESTAMP": "TIMESTAMP_NTZ",
    "BOOL": "BOOLEAN",
}
_MAX_VARCHAR = (16777216, 134217728)  # Snowflake's VARCHAR without a length (before / after the 2025 change)


def canonical_type(type_sql: str) -> str:
    """A Snowflake type in one spelling: ``NUMBER(p,s)``, ``VARCHAR`` / ``VARCHAR(n)``, timestamps and times without
    their fractional precision, ``ARRAY`` / ``OBJECT`` as ``VARIANT`` (fakesnow reports them so)."""
    t = re.sub(r"\s+", " ", type_sql.strip().upper())
    t = re.sub(r"\s*\(\s*", "(", t)
    t = re.sub(r"\s*,\s*", ",", t).replace(" )", ")")
    m = re.fullmatch(r"(NUMBER|DECIMAL|NUMERIC)\((\d+)(?:,(\d+))?\)", t)
    if m:
        return f"NUMBER({m.group(2)},{m.group(3) or 0})"
    m = re.fullmatch(r"(VARCHAR|TEXT|STRING|CHAR|CHARACTER|CHARACTER VARYING)\((\d+)\)", t)
    if m:
        return VARCHAR if int(m.group(2)) in _MAX_VARCHAR else f"VARCHAR({m.group(2)})"
    m = re.fullmatch(r"(TIMESTAMP_NTZ|TIMESTAMP_TZ|TIMESTAMP_LTZ|TIMESTAMP|DATETIME|TIME)\(\d\)", t)
    if m:
        t = m.group(1)
    t = re.sub(r"^(BINARY|VARBINARY)\(\d+\)$", "BINARY", t)
    t = _ALIASES.get(t, t)
    if t in ("ARRAY", "OBJECT"):
        return "VARIANT"
    return t


def is_json_type(type_sql: str) -> bool:
    """Whether values of this Snowflake type are loaded as JSON text and parsed (VARIANT, ARRAY, OBJECT)."""
    return canonical_type(type_sql) == "VARIANT"


_NUMBER = re.compile(r"NUMBER\((\d+),(\d+)\)")
_VARCHAR_N = re.compile(r"VARCHAR\((\d+)\)")


def widens(have: str, want: str) -> bool:
    """True when Snowflake can change a column of type ``have`` to ``want`` in place, keeping every value:
    ``NUMBER(p,s)`` to more digits at the same scale (Snowflake never changes a scale), ``VARCHAR(n)`` longer."""
    h, w = canonical_type(have), canonical_type(want)
    if h == w:
        return False
    hm, wm = _NUMBER.fullmatch(h), _NUMBER.fullmatch(w)
    if hm and wm:
        return int(hm.group(2)) == int(wm.group(2)) and int(wm.group(1)) > int(hm.group(1))
    hv = _VARCHAR_N.fullmatch(h)
    if hv:
        wv = _VARCHAR_N.fullmatch(w)
        return w == VARCHAR or (wv is not None and int(wv.group(1)) > int(hv.group(1)))
    return False


__all__ = ["DEFAULT_TYPE_MAP", "canonical_type", "is_json_type", "snowflake_type", "widens"]
