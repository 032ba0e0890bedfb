"""Resolve a Snowflake destination's staging tables (``batch_mode=staging``) into their target tables, by
``batch_resolution`` (which tables: :mod:`sinks.sql.staging`, from the meta table's rows of the flow, or by name
without it):

- ``append``: ``INSERT INTO target SELECT ... FROM staging``; ``replace``: ``DELETE FROM target`` and that insert
  in one transaction (a reader sees the old rows or the new ones, never an empty or half table). The target is
  created ``LIKE`` the staging table when absent, and the columns it lacks are added first (Snowflake commits at
  every DDL statement, so all DDL runs before the transaction).
- The meta table's rows of the staging table become the target's in that same transaction (kept when the target's
  schema version is newer); then the staging table is dropped. A run stopped between the commit and the drop leaves
  a staging table with no meta rows: the next run drops it and moves nothing again. Without a meta table
  (``meta_table_enabled=false``) the staging table is emptied in the transaction instead, so a run again moves
  nothing twice; an empty staging table then replaces nothing (an empty backfill cannot empty a target that way).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sinks.snowflake.dsn import DsnError, parse_dsn
from sinks.snowflake.options import SnowflakeDestinationOptions
from sinks.snowflake.writer import _connect, table_columns
from sinks.sql.reduce import q
from sinks.sql.staging import (
    Candidate,
    ResolvedTable,
    candidates_by_name,
    candidates_of,
    check_resolvable,
    qualified,
    select,
)
from wallaby.core.errors import PermanentSinkError

log = logging.getLogger("wallaby.sinks.snowflake")

META_WHERE = "FLOW_ID = %s AND DEST_SCHEMA = %s AND DEST_TABLE = %s"


def resolve_staging(name: str, flow_id: str, options: SnowflakeDestinationOptions, tables: list[str] | None = None,
                    schemas: list[str] | None = None) -> list[ResolvedTable]:
    """Resolve destination ``name``'s staging tables of ``flow_id`` (the module docstring): every staged table, or
    those ``tables`` / ``schemas`` select. ConfigError for ``batch_mode`` not staging, ``batch_resolution=none`` and
    unknown names; PermanentSinkError when Snowflake refuses (that table's transaction is rolled back)."""
    if not isinstance(options, SnowflakeDestinationOptions):
        options = SnowflakeDestinationOptions.model_validate(options)
    check_resolvable(name, options)
    try:
        dsn = parse_dsn(options.dsn)
    except DsnError as exc:
        raise PermanentSinkError(name, f"Snowflake dsn: {exc}") from None
    import snowflake.connector.errors as sferr

    try:
        con = _connect(dsn)
    except Exception as exc:
        raise PermanentSinkError(name, f"cannot connect to Snowflake {dsn.shown}: {dsn.clean(str(exc))}") from None
    out: list[ResolvedTable] = []
    current = ""
    try:
        cur = con.cursor()
        meta = f"{q(options.meta_schema)}.{q(options.meta_table)}"
        has_meta = options.meta_table_enabled and _exists(cur, (options.meta_schema, options.meta_table))
        if has_meta:
            sources = cur.execute(f"SELECT DISTINCT SOURCE_SCHEMA, SOURCE_TABLE FROM {meta} WHERE FLOW_ID = %s",
                                  (flow_id,)).fetchall()
            cands = candidates_of(options, [(s, t) for s, t in sources])
            existing = {t for c in cands.values() for t in (c.target, c.staging) if _exists(cur, t)}
        else:
            existing = {(s, t) for s, t in cur.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'")}
            cands = candidates_by_name(options, existing, internal="__wallaby")
        for c, staged in select(cands, existing, tables, schemas, f"destination {name!r}"):
            current = qualified(c.target)
            if staged and has_meta and not cur.execute(f"SELECT count(*) FROM {meta} WHERE {META_WHERE}",
                                                       (flow_id, *c.staging)).fetchone()[0]:
                # resolved by a run stopped before its drop: the rows are in the target already
                cur.execute(f"DROP TABLE IF EXISTS {_q(c.staging)}")
                staged = False
            if not staged:
                out.append(ResolvedTable(name, current, qualified(c.staging), 0, options.batch_resolution,
                                         staged=False))
                continue
            rows = _resolve(con, flow_id, c, options, meta if has_meta else None)
            log.info("destination %r: %s resolved into %s (%s, %d rows)", name, qualified(c.staging), current,
                     options.batch_resolution, rows, extra={"flow": flow_id})
            out.append(ResolvedTable(name, current, qualified(c.staging), rows, options.batch_resolution))
    except sferr.Error as exc:
        try:
            con.rollback()
        except Exception:
            pass
        where = f", table {current}" if current else ""
        raise PermanentSinkError(name, f"Snowflake {dsn.shown}{where}: cannot resolve staging:"
                                       f" {dsn.clean(str(getattr(exc, 'msg', None) or exc))}") from None
    finally:
        con.close()
    return out


def _q(t: tuple[str, str]) -> str:
    return f"{q(t[0])}.{q(t[1])}"


def _exists(cur: Any, t: tuple[str, str]) -> bool:
    return bool(cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND"
                            " table_name = %s", t).fetchone()[0])


def _resolve(con: Any, flow_id: str, c: Candidate, options: SnowflakeDestinationOptions, meta: str | None) -> int:
    """Move ``c``'s staging table into its target; the rows moved."""
    cur = con.cursor()
    qt, qs = _q(c.target), _q(c.staging)
    staged = table_columns(cur, c.staging) or {}
    target = table_columns(cur, c.target)
    if target is None:
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {q(c.target[0])}")
        cur.execute(f"CREATE TABLE {qt} LIKE {qs}")
        target = dict(staged)
    for col, dtype in staged.items():
        if col not in target:
            cur.execute(f"ALTER TABLE {qt} ADD COLUMN {q(col)} {dtype}")
            target[col] = dtype
    rows = int(cur.execute(f"SELECT count(*) FROM {qs}").fetchone()[0])
    if options.batch_resolution == "replace" and (meta is not None or rows):
        cur.execute(f"DELETE FROM {qt}")
    cols = ", ".join(q(n) for n in staged)
    cur.execute(f"INSERT INTO {qt} ({cols}) SELECT {cols} FROM {qs}")
    if meta is not None:
        _move_meta(cur, meta, flow_id, c, target)
    else:
        cur.execute(f"DELETE FROM {qs}")
    con.commit()
    cur.execute(f"DROP TABLE {qs}")
    con.commit()
    return rows


def _move_meta(cur: Any, meta: str, flow_id: str, c: Candidate, types: dict[str, str]) -> None:
    """The staging table's meta rows become the target's (unless the target's schema version is newer)."""
    found = cur.execute(f"SELECT SOURCE_SCHEMA, SOURCE_TABLE, SCHEMA_VERSION, WRITE_MODE, PRIMARY_KEY, COLUMNS_JSON"
                        f" FROM {meta} WHERE {META_WHERE}", (flow_id, *c.staging)).fetchall()
    where = "FLOW_ID = %s AND SOURCE_SCHEMA = %s AND SOURCE_TABLE = %s AND DEST_SCHEMA = %s AND DEST_TABLE = %s"
    for schema, name, version, mode, pk, cols_json in found:
        args = (flow_id, schema, name, *c.target)
        have = cur.execute(f"SELECT SCHEMA_VERSION FROM {meta} WHERE {where}", args).fetchone()
        if have is not None and have[0] is not None and version is not None and int(version) < int(have[0]):
            continue
        cols = json.loads(cols_json) if cols_json else []
        for col in cols:
            col["snowflake_type"] = types.get(col["name"])
        cur.execute(f"DELETE FROM {meta} WHERE {where}", args)
        cur.execute(f"INSERT INTO {meta} (FLOW_ID, SOURCE_SCHEMA, SOURCE_TABLE, DEST_SCHEMA, DEST_TABLE,"
                    " SCHEMA_VERSION, WRITE_MODE, PRIMARY_KEY, COLUMNS_JSON, UPDATED_AT)"
                    " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, current_timestamp()",
                    (*args, version, mode, pk, json.dumps(cols)))
    cur.execute(f"DELETE FROM {meta} WHERE {META_WHERE}", (flow_id, *c.staging))


__all__ = ["resolve_staging"]
