"""Resolve a DuckDB destination's staging tables (``batch_mode=staging``) into their target tables.

The writer (:mod:`sinks.duckdb.writer`, "Staging") appends a backfill's read rows to
``<staging_schema or the target's schema>.<staging_table or the target's name + staging_suffix>``.
:func:`resolve_staging` moves them, one transaction per target table, by ``batch_resolution``:

- ``append``: ``INSERT INTO target SELECT ... FROM staging`` (the target is created from the staging table when
  absent), then the staging table is dropped;
- ``replace``: the target's rows are replaced by the staging table's: ``DELETE FROM target`` and the insert in
  the same transaction (another connection sees the old rows or the new ones, never an empty or half table; the
  target keeps its column types, and its columns the staging table lacks hold NULL), then the staging table is
  dropped;
- ``none``: refused (a ConfigError naming ``batch_resolution``); the rows stay staged.

Columns the staging table has and the target lacks are added to the target first. The wallaby meta table
(``main.__wallaby_meta``) follows: the staging table's row of a source table becomes the target's (when its
schema version is not older than the target's), with the target's DuckDB types.

Which tables: the flow's, found in the meta table (each source table the writer recorded, mapped through the
``schema``/``table``/``staging_*`` options); without a meta table (``meta_table_enabled=false``) by name: an
existing target table whose staging table exists, or a ``<name><staging_suffix>`` table in the same schema when
``staging_schema`` and ``staging_table`` are unset. ``tables`` (``schema.table``, the source's or the target's
name) and ``schemas`` (a source or target schema) select some; a selected table with nothing staged is reported
with ``staged=False``, a name that matches none of the flow's tables is a ConfigError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import duckdb

from sinks.duckdb.apply import q
from sinks.duckdb.options import DuckDBDestinationOptions
from sinks.duckdb.writer import META_TABLE, _connect, _held_elsewhere, _safe_dsn
from sinks.sql.staging import (
    Candidate,
    ResolvedTable,
    candidates_by_name,
    candidates_of,
    check_resolvable,
    qualified,
    select,
)
from wallaby.core.errors import PermanentSinkError, TransientSinkError

log = logging.getLogger("wallaby.sinks.duckdb")


def _existing(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    rows = con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database()"
                       " AND NOT temporary").fetchall()
    return {(r[0], r[1]) for r in rows}


def _candidates(con: duckdb.DuckDBPyConnection, flow_id: str, options: DuckDBDestinationOptions,
                existing: set[tuple[str, str]]) -> dict[tuple[str, str], Candidate]:
    """Target table -> its candidate (see the module docstring)."""
    if options.meta_table_enabled and ("main", "__wallaby_meta") in existing:
        rows = con.execute(f"SELECT DISTINCT source_schema, source_table FROM {META_TABLE} WHERE flow_id = ?",
                           [flow_id]).fetchall()
        return candidates_of(options, rows)
    return candidates_by_name(options, existing)


def _columns(con: duckdb.DuckDBPyConnection, t: tuple[str, str]) -> dict[str, str]:
    rows = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database()"
                       " AND schema_name = ? AND table_name = ? ORDER BY column_index", list(t)).fetchall()
    return dict(rows)


def _move_meta(con: duckdb.DuckDBPyConnection, flow_id: str, c: Candidate) -> None:
    """The staging table's meta rows become the target's (see the module docstring)."""
    types = _columns(con, c.target)
    rows = con.execute(f"SELECT source_schema, source_table, schema_version, write_mode, columns_json FROM"
                       f" {META_TABLE} WHERE flow_id = ? AND dest_schema = ? AND dest_table = ?",
                       [flow_id, *c.staging]).fetchall()
    where = "flow_id = ? AND source_schema = ? AND source_table = ? AND dest_schema = ? AND dest_table = ?"
    for schema, name, version, mode, cols_json in rows:
        args = [flow_id, schema, name, *c.target]
        have = con.execute(f"SELECT schema_version FROM {META_TABLE} WHERE {where}", args).fetchone()
        if have is not None and have[0] is not None and version is not None and version < have[0]:
            continue
        cols = json.loads(cols_json)
        for col in cols:
            col["duckdb_type"] = types.get(col["name"])
        con.execute(f"DELETE FROM {META_TABLE} WHERE {where}", args)
        con.execute(f"INSERT INTO {META_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
                    [*args, version, mode, json.dumps(cols)])
    con.execute(f"DELETE FROM {META_TABLE} WHERE flow_id = ? AND dest_schema = ? AND dest_table = ?",
                [flow_id, *c.staging])


def _resolve(con: duckdb.DuckDBPyConnection, flow_id: str, c: Candidate, mode: str, meta: bool) -> int:
    """Move ``c``'s staging table into its target in one transaction; the rows moved."""
    qt, qs = f"{q(c.target[0])}.{q(c.target[1])}", f"{q(c.staging[0])}.{q(c.staging[1])}"
    con.execute("BEGIN TRANSACTION")
    try:
        rows = int(con.execute(f"SELECT count(*) FROM {qs}").fetchone()[0])
        staged = _columns(con, c.staging)
        target = _columns(con, c.target)
        if not target:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {q(c.target[0])}")
            con.execute(f"CREATE TABLE {qt} AS SELECT * FROM {qs}")
        else:
            for name, dtype in staged.items():
                if name not in target:
                    con.execute(f"ALTER TABLE {qt} ADD COLUMN {q(name)} {dtype}")
            if mode == "replace":
                con.execute(f"DELETE FROM {qt}")
            cols = ", ".join(q(n) for n in staged)
            con.execute(f"INSERT INTO {qt} ({cols}) SELECT {cols} FROM {qs}")
        con.execute(f"DROP TABLE {qs}")
        if meta:
            _move_meta(con, flow_id, c)
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    return rows


def resolve_staging(name: str, flow_id: str, options: DuckDBDestinationOptions, tables: list[str] | None = None,
                    schemas: list[str] | None = None) -> list[ResolvedTable]:
    """Resolve destination ``name``'s staging tables of ``flow_id`` by ``batch_resolution`` (the module docstring):
    every staged table, or those ``tables`` / ``schemas`` select. Opens the DuckDB file itself, waiting for its lock
    like the writer. ConfigError for ``batch_mode`` not staging, ``batch_resolution=none`` and unknown names;
    PermanentSinkError when DuckDB refuses (that table's transaction is rolled back)."""
    if not isinstance(options, DuckDBDestinationOptions):
        options = DuckDBDestinationOptions.model_validate(options)
    check_resolvable(name, options)
    dsn, shown = options.dsn, _safe_dsn(options.dsn)
    if dsn == ":memory:" or (not dsn.startswith(("md:", "motherduck:")) and not Path(dsn).expanduser().exists()):
        select({}, set(), tables, schemas, f"destination {name!r}")  # names are unknown: nothing was written
        return []
    try:
        con = _connect(str(Path(dsn).expanduser()) if not dsn.startswith(("md:", "motherduck:")) else dsn, {})
    except duckdb.Error as exc:
        text = str(exc).replace(dsn, shown) if shown != dsn else str(exc)
        if _held_elsewhere(exc):
            raise TransientSinkError(name, f"DuckDB {shown} is held by another process (a running worker of the"
                                           f" flow?): {text}") from None
        raise PermanentSinkError(name, f"cannot open DuckDB {shown}: {text}") from None
    try:
        return resolve_in(con, name, flow_id, options, tables, schemas,
                          lambda where, text: f"DuckDB {shown}{where}: cannot resolve staging:"
                                              f" {text.replace(dsn, shown) if shown != dsn else text}")
    finally:
        con.close()


def resolve_in(con: duckdb.DuckDBPyConnection, name: str, flow_id: str, options: DuckDBDestinationOptions,
               tables: list[str] | None, schemas: list[str] | None,
               failure: Callable[[str, str], str]) -> list[ResolvedTable]:
    """Resolve the staging tables ``tables`` / ``schemas`` select (all when neither) through ``con`` (a DuckDB file,
    or a lake attached as its default catalog), one transaction per target table. A DuckDB error is a
    PermanentSinkError with ``failure(where, text)`` (``where``: ", table <t>" or "")."""
    out: list[ResolvedTable] = []
    current = ""
    try:
        existing = _existing(con)
        cands = _candidates(con, flow_id, options, existing)
        meta = options.meta_table_enabled and ("main", "__wallaby_meta") in existing
        for c, staged in select(cands, existing, tables, schemas, f"destination {name!r}"):
            current = qualified(c.target)
            if not staged:
                out.append(ResolvedTable(name, current, qualified(c.staging), 0, options.batch_resolution,
                                         staged=False))
                continue
            rows = _resolve(con, flow_id, c, options.batch_resolution, meta)
            log.info("destination %r: %s resolved into %s (%s, %d rows)", name, qualified(c.staging), current,
                     options.batch_resolution, rows, extra={"flow": flow_id})
            out.append(ResolvedTable(name, current, qualified(c.staging), rows, options.batch_resolution))
    except duckdb.Error as exc:
        raise PermanentSinkError(name, failure(f", table {current}" if current else "", str(exc))) from None
    return out


__all__ = ["ResolvedTable", "check_resolvable", "resolve_in", "resolve_staging"]  # (the first two: sinks.sql.staging)
