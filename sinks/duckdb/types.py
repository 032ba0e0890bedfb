"""Postgres -> DuckDB column types for the DuckDB destination.

The map is keyed by :attr:`wallaby.core.changes.Column.type_name` (falling back to
``base_type`` for domains). Every DuckDB type below was checked to take the
Arrow values the source produces without loss (``duckdb==1.5.5``):

=====================================  ================================  ==========================================
Postgres ``type_name``                 DuckDB type                       Arrow values from the source
=====================================  ================================  ==========================================
``int2``                               ``SMALLINT``                      int16
``int4``                               ``INTEGER``                       int32
``int8``                               ``BIGINT``                        int64
``oid``                                ``UINTEGER``                      uint32
``float4``                             ``REAL``                          float32 (NaN, +-inf kept)
``float8``                             ``DOUBLE``                        float64 (NaN, +-inf kept)
``numeric(p,s)``, p <= 38, 0<=s<=p     ``DECIMAL(p,s)``                  decimal128(p,s); a batch holding 'NaN' or
                                                                         'Infinity' carries text instead: that is
                                                                         an error (map ``numeric`` to VARCHAR)
``numeric`` (no typmod, p > 38, s<0)   ``VARCHAR``                       exact text
``money``                              ``DECIMAL(19,2)``                 decimal128(19,2)
``bool``                               ``BOOLEAN``                       bool
``text``, ``varchar``, ``bpchar``,     ``VARCHAR``                       text (bpchar keeps its padding)
``name``, ``char``
``bytea``                              ``BLOB``                          binary
``date``                               ``DATE``                          date32; +-infinity become DuckDB's
                                                                         ``infinity`` / ``-infinity``
``time``                               ``TIME``                          time64[us] (24:00:00 is kept)
``timestamp``                          ``TIMESTAMP``                     timestamp[us]; +-infinity kept
``timestamptz``                        ``TIMESTAMPTZ``                   timestamp[us, UTC]; +-infinity kept
``interval``                           ``INTERVAL``                      month_day_nano (Postgres is microseconds)
``uuid``                               ``UUID``                          text
``json``, ``jsonb``                    ``JSON`` (built-in extension)     text; ``json`` text is kept verbatim
arrays (``_int4``, ...)                element type + ``[]`` per         list<...>, nested once per dimension
                                       dimension, e.g. ``INTEGER[][]``
everything else: ``timetz``, ``inet``, ``VARCHAR``                       Postgres text form
``cidr``, ``macaddr``, ``xml``, enums,
ranges, ``tsvector``, extension types
=====================================  ================================  ==========================================

``timetz`` stays VARCHAR: DuckDB's TIMETZ rewrites offsets that carry seconds
(``04:05:06-08:00:30`` reads back as ``04:05:06-08:30``); map it with
``type_mappings`` (``{"timetz": "TIMETZ"}``) if your offsets are whole minutes.

Overrides (the destination's ``type_mappings``) are looked up first, by these
keys in order: ``ext:<extension>.<type_name>``, ``ext:<extension>``, the
``type_name`` itself (``_int4`` for an int4 array), then ``base_type`` (a
domain's base type). An override of an element type applies to its arrays too:
``{"int4": "BIGINT"}`` makes an ``int4[]`` column ``BIGINT[]``. Values are used
verbatim as DuckDB type SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sinks.sql.types import TypeMap, is_array, list_depth
from wallaby.core.changes import Column

VARCHAR = "VARCHAR"

DEFAULT_TYPE_MAP: dict[str, str] = {
    "int2": "SMALLINT",
    "smallint": "SMALLINT",
    "int4": "INTEGER",
    "integer": "INTEGER",
    "int": "INTEGER",
    "int8": "BIGINT",
    "bigint": "BIGINT",
    "oid": "UINTEGER",
    "float4": "REAL",
    "real": "REAL",
    "float8": "DOUBLE",
    "double precision": "DOUBLE",
    "money": "DECIMAL(19,2)",
    "bool": "BOOLEAN",
    "boolean": "BOOLEAN",
    "text": VARCHAR,
    "varchar": VARCHAR,
    "character varying": VARCHAR,
    "bpchar": VARCHAR,
    "character": VARCHAR,
    "name": VARCHAR,
    "char": VARCHAR,
    "bytea": "BLOB",
    "date": "DATE",
    "time": "TIME",
    "time without time zone": "TIME",
    "timestamp": "TIMESTAMP",
    "timestamp without time zone": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "timestamp with time zone": "TIMESTAMPTZ",
    "interval": "INTERVAL",
    "uuid": "UUID",
    "json": "JSON",
    "jsonb": "JSON",
}

TYPE_MAP = TypeMap(DEFAULT_TYPE_MAP, decimal="DECIMAL({p},{s})", fallback=VARCHAR)


def duckdb_type(column: Column, overrides: Mapping[str, str] | None = None) -> str:
    """The DuckDB column type for a source column (overrides first, then the default map)."""
    overrides = overrides or {}
    name = column.type_name
    if is_array(column):
        if name in overrides:
            return overrides[name]
        return TYPE_MAP.element(column, overrides) + "[]" * max(1, list_depth(column.arrow_type))
    return TYPE_MAP.of(column, overrides)


# DuckDB reports some types under another name than the one we create them with.
_TYPE_ALIASES = (("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"), ("TIMETZ", "TIME WITH TIME ZONE"), ("REAL", "FLOAT"))


def canonical_type(type_sql: str) -> str:
    out = type_sql.upper().replace(" ", "")
    for alias, name in _TYPE_ALIASES:
        out = re.sub(rf"\b{alias}\b", name.replace(" ", ""), out)
    return out


_INT_RANK = {"TINYINT": 1, "SMALLINT": 2, "INTEGER": 3, "BIGINT": 4, "HUGEINT": 5}
_DECIMAL = re.compile(r"DECIMAL\((\d+),(\d+)\)")


def widens(have: str, want: str) -> bool:
    """True when every value of DuckDB type ``have`` fits ``want`` (a source type change DuckDB can follow in
    place: int2 -> int4 -> int8, float4 -> float8, numeric(p,s) to more digits, varchar(n) -> text, ...)."""
    h, w = canonical_type(have), canonical_type(want)
    if h == w:
        return False
    if h in _INT_RANK and w in _INT_RANK:
        return _INT_RANK[w] > _INT_RANK[h]
    if (h, w) == ("FLOAT", "DOUBLE") or (h in _INT_RANK and w == "DOUBLE" and _INT_RANK[h] <= 3):
        return True
    hm, wm = _DECIMAL.fullmatch(h), _DECIMAL.fullmatch(w)
    if hm and wm:
        hp, hs, wp, ws = (int(x) for x in (*hm.groups(), *wm.groups()))
        return ws >= hs and wp - ws >= hp - hs
    if h in _INT_RANK and wm:
        wp, ws = int(wm.group(1)), int(wm.group(2))
        return wp - ws >= {1: 3, 2: 5, 3: 10, 4: 19, 5: 39}[_INT_RANK[h]]
    if h.startswith("VARCHAR(") and w == "VARCHAR":
        return True
    return w == "VARCHAR" and h not in ("BLOB",) and not h.endswith("[]")
