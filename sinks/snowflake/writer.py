"""Snowflake destination: apply a flow's changes to Snowflake tables (docs/snowflake.md).

The writer is a :class:`sinks.sql.engine.TableEngine` (buffering, cuts, staging routing, exactly-once high-water,
one error per failure); this module is Snowflake's dialect.

Load path (no per-row statement)
    Per table per apply, the epoch's changes (:func:`sinks.sql.merge.merge_pending`) are reduced in a private
    in-memory DuckDB (:mod:`sinks.sql.reduce`), written as one Parquet file, ``PUT`` to the writer's temporary stage
    and ``COPY INTO`` the table's *load table* (``<meta_schema>."__WALLABY_LOAD_<hash>"``, a TRANSIENT table of
    uppercase generated column names: ``C<i>`` the value of target column ``i``, ``K<i>`` keep the target's value,
    ``F<i>`` the key the row was under before the epoch, ``__SET``, ``__N`` ...), ``PURGE=TRUE``; then set-based SQL
    from the load table into the target:

    - keyed: the kept values (unchanged TOAST, target-only columns) are copied into the load table from the target
      under the identity's key before the epoch (``UPDATE load ... FROM target``), every touched key is deleted
      from the target and the final rows inserted (a key change inside the epoch is two mentions: the old key
      deleted, the new one inserted with the values of the old row);
    - keyless (REPLICA IDENTITY FULL / no key): the net multiset; for a row to remove ``n`` copies of, the copies
      the target holds are counted (``m``), all deleted and ``m - n`` inserted back (``TABLE(GENERATOR())``);
    - append: one row per change plus ``__op``, ``__lsn``, ``__ord``, ``__ts``;
    - truncate: ``DELETE FROM`` the target.

Transactions
    ``autocommit=False``; the rows and the high-water (``<meta_schema>."__WALLABY_STATE"``) are committed together
    with ``commit()``. Snowflake commits an open transaction at every DDL statement, so every DDL an apply needs
    (schema, table, ``ALTER TABLE``, the load table) runs before any row of the apply, after what the transaction
    holds so far is committed with its exact high-water (:meth:`SnowflakeWriter._apply_pending`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sinks.base import PermanentSinkError, WriterSink, source_json
from sinks.snowflake.dsn import DsnError, SnowflakeDsn, parse_dsn
from sinks.snowflake.options import SnowflakeDestinationOptions
from sinks.snowflake.types import canonical_type, is_json_type, snowflake_type, widens
from sinks.sql.engine import ApplyError, _Pending, fill_value
from sinks.sql.merge import merge_pending
from sinks.sql.reduce import FROM, KEEP, SEQ_COL, VALUE, ReduceError, q, reduce_keyed, reduce_keyless
from sinks.sql.remote import RemoteTableEngine
from sources.postgres.pgtypes import DATE_NEG_INF, DATE_POS_INF, TS_NEG_INF, TS_POS_INF
from wallaby.core.changes import BEFORE_PREFIX, OP_COL, OP_READ, Column, Position, TableChanges
from wallaby.core.identity import SourceCheck, SourceIdentity

log = logging.getLogger("wallaby.sinks.snowflake")

APPEND_COLS = (("__op", "VARCHAR"), ("__lsn", "NUMBER(20,0)"), ("__ord", "NUMBER(20,0)"),
               ("__ts", "TIMESTAMP_TZ(6)"))
STATE = "__WALLABY_STATE"
MAX_BUFFER_BYTES = 64 << 20
MAX_TX_BYTES = 1 << 62  # one transaction per epoch
# the dates and timestamps Snowflake holds: Postgres' +-infinity land on these (docs/snowflake.md)
DATE_MIN, DATE_MAX = -719162, 2932896  # 0001-01-01, 9999-12-31 in days since 1970-01-01
TS_MIN, TS_MAX = DATE_MIN * 86_400_000_000, DATE_MAX * 86_400_000_000 + 86_399_999_999


def _connect(dsn: SnowflakeDsn):
    """A connection with ``autocommit=False``. A DSN parameter the connector does not know is a session parameter
    (``?query_tag=cdc&lock_timeout=600``), as in gosnowflake."""
    import snowflake.connector as sfc
    from snowflake.connector.connection import DEFAULT_CONFIGURATION

    kwargs: dict[str, Any] = {}
    session = {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False}
    for key, value in dsn.kwargs.items():
        if key in DEFAULT_CONFIGURATION:
            kwargs[key] = value
        else:
            session[key.upper()] = value
    kwargs["session_parameters"] = session
    kwargs["autocommit"] = False
    return sfc.connect(**kwargs)


def make_sink(name: str, flow_id: str, options: SnowflakeDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    """The destination of a flow spec (the DSN is parsed now: a bad one is refused before anything connects)."""
    try:
        parse_dsn(options.dsn)
    except DsnError as exc:
        raise PermanentSinkError(name, f"Snowflake dsn: {exc}") from None
    return WriterSink(name, lambda resume_state: SnowflakeWriter(name, flow_id, options, resume_state, source=source))


def _state_name(options: SnowflakeDestinationOptions) -> str:
    return f"{q(options.meta_schema)}.{q(STATE)}"


def stored_position(name: str, flow_id: str, options: SnowflakeDestinationOptions
                    ) -> tuple[Position, SourceIdentity | None, str] | None:
    """The high-water destination ``name`` holds for ``flow_id`` (None: none, or Snowflake cannot be read)."""
    try:
        dsn = parse_dsn(options.dsn)
        con = _connect(dsn)
    except Exception:
        return None
    try:
        cur = con.cursor()
        found = cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND"
                            " table_name = %s", (options.meta_schema, STATE)).fetchone()[0]
        if not found:
            return None
        row = cur.execute(f"SELECT LSN, ORDINAL, SOURCE FROM {_state_name(options)} WHERE FLOW_ID = %s AND"
                          " DESTINATION = %s", (flow_id, name)).fetchone()
    except Exception:
        return None
    finally:
        con.close()
    if row is None:
        return None
    return Position(int(row[0]), int(row[1])), SourceIdentity.from_json(row[2]), f"Snowflake {dsn.shown}"


def discard_position(name: str, flow_id: str, options: SnowflakeDestinationOptions) -> None:
    """Forget the high-water destination ``name`` holds for ``flow_id`` (a reset asked for by the user)."""
    dsn = parse_dsn(options.dsn)
    con = _connect(dsn)
    try:
        con.cursor().execute(f"DELETE FROM {_state_name(options)} WHERE FLOW_ID = %s AND DESTINATION = %s",
                             (flow_id, name))
        con.commit()
    except Exception as exc:
        if "does not exist" not in str(exc):
            raise PermanentSinkError(name, f"Snowflake {dsn.shown}: {dsn.clean(str(exc))}") from None
    finally:
        con.close()


def table_columns(cur: Any, table: tuple[str, str]) -> dict[str, str] | None:
    """A table's columns (name -> Snowflake type, in table order) from information_schema; None: no such table."""
    rows = cur.execute(
        "SELECT column_name, data_type, numeric_precision, numeric_scale, character_maximum_length"
        " FROM information_schema.columns WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        table).fetchall()
    if not rows:
        return None
    cols = {}
    for name, dtype, prec, scale, length in rows:
        dtype = str(dtype).upper()
        if dtype in ("NUMBER", "DECIMAL", "NUMERIC") and prec is not None:
            cols[name] = f"NUMBER({prec},{scale or 0})"
        elif dtype in ("TEXT", "VARCHAR") and length is not None:
            cols[name] = canonical_type(f"VARCHAR({length})")
        else:  # ARRAY / OBJECT kept as such: their values are cast to them (fakesnow says VARIANT)
            cols[name] = dtype if dtype in ("ARRAY", "OBJECT") else canonical_type(dtype)
    return cols


@dataclass(slots=True)
class DestTable:
    columns: dict[str, str]  # name -> Snowflake type, in table order
    load: str | None = None  # the load table, once this writer made it for these columns
    load_cols: tuple[str, ...] = ()


@dataclass(slots=True)
class _Plan:
    create: list[tuple[str, str]] | None = None  # the target's columns when it must be created
    add: list[tuple[Column, str]] = field(default_factory=list)
    widen: list[tuple[str, str, str]] = field(default_factory=list)  # name, have, want
    load: bool = False  # the load table must be (re)made


class SnowflakeWriter(RemoteTableEngine):
    """Applies change batches to Snowflake (see the module docstring)."""

    def __init__(self, name: str, flow_id: str, options: SnowflakeDestinationOptions, resume_state: Any = None, *,
                 source: SourceCheck | None = None, max_buffer_rows: int = 500_000,
                 max_buffer_bytes: int = MAX_BUFFER_BYTES, max_tx_bytes: int = MAX_TX_BYTES):
        if not isinstance(options, SnowflakeDestinationOptions):
            options = SnowflakeDestinationOptions.model_validate(options)
        self.name = name
        self.options = options
        try:
            self._dsn = parse_dsn(options.dsn)
        except DsnError as exc:
            raise PermanentSinkError(name, f"Snowflake dsn: {exc}") from None
        self._con = None
        self._stage = ""
        self._tmp = tempfile.mkdtemp(prefix="wallaby-snowflake-")
        self._meta = f"{q(options.meta_schema)}.{q(options.meta_table)}"
        self._state = _state_name(options)
        super().__init__(name, flow_id, options, resume_state, source=source, max_buffer_rows=max_buffer_rows,
                         max_buffer_bytes=max_buffer_bytes, max_tx_bytes=max_tx_bytes,
                         where=f"Snowflake {self._dsn.shown} (destination {name!r})")

    # ------------------------------------------------------------------ connection and state

    def _sql(self, sql: str, params: Any = None):
        cur = self._con.cursor()
        cur.execute(sql, params)
        return cur

    def _open_state(self) -> tuple[int, int, str | None] | None:
        import snowflake.connector.errors as sferr

        try:
            self._con = _connect(self._dsn)
        except Exception as exc:  # sferr.Error, or the connector refusing its arguments (a key file, a type)
            self.close()
            reason = self._clean(exc) if isinstance(exc, sferr.Error) else f"{type(exc).__name__}: {self._clean(exc)}"
            raise PermanentSinkError(self.name, f"cannot connect to Snowflake {self._dsn.shown}: {reason}") from None
        try:
            ms = q(self.options.meta_schema)
            self._sql(f"CREATE SCHEMA IF NOT EXISTS {ms}")
            self._sql(f"CREATE TABLE IF NOT EXISTS {self._state} (FLOW_ID VARCHAR NOT NULL, DESTINATION VARCHAR NOT"
                      " NULL, LSN NUMBER(20,0) NOT NULL, ORDINAL NUMBER(20,0) NOT NULL, SOURCE VARCHAR,"
                      " UPDATED_AT TIMESTAMP_TZ)")
            if self.options.meta_table_enabled:
                self._sql(f"CREATE TABLE IF NOT EXISTS {self._meta} (FLOW_ID VARCHAR NOT NULL, SOURCE_SCHEMA VARCHAR,"
                          " SOURCE_TABLE VARCHAR, DEST_SCHEMA VARCHAR, DEST_TABLE VARCHAR, SCHEMA_VERSION NUMBER,"
                          " WRITE_MODE VARCHAR, PRIMARY_KEY VARCHAR, COLUMNS_JSON VARCHAR, UPDATED_AT TIMESTAMP_TZ)")
            self._stage = f"{ms}.{q('__WALLABY_STAGE_' + uuid.uuid4().hex[:12].upper())}"
            self._sql(f"CREATE OR REPLACE TEMPORARY STAGE {self._stage}")
            row = self._sql(f"SELECT LSN, ORDINAL, SOURCE FROM {self._state} WHERE FLOW_ID = %s AND DESTINATION = %s",
                            (self.flow_id, self.name)).fetchone()
            self._con.commit()
        except sferr.Error as exc:
            self.close()
            raise PermanentSinkError(self.name, f"cannot open Snowflake {self._dsn.shown}: {self._clean(exc)}") \
                from None
        self._open_reduction()
        return (int(row[0]), int(row[1]), row[2]) if row else None

    def _forget_state(self) -> None:
        self._sql(f"DELETE FROM {self._state} WHERE FLOW_ID = %s AND DESTINATION = %s", (self.flow_id, self.name))
        self._con.commit()

    def _begin(self) -> None:
        self._tx = True  # autocommit=False: the first statement opens it

    def _commit_at(self, mark: Position) -> None:
        import snowflake.connector.errors as sferr

        try:
            self._store_and_commit(mark)
        except sferr.Error as exc:
            self._fail(None, f"cannot commit: {self._error_message(None, exc)}")  # type: ignore[arg-type]

    def _store_and_commit(self, mark: Position) -> None:
        if mark > self._hw.stored:
            self._begin()
            self._sql(f"DELETE FROM {self._state} WHERE FLOW_ID = %s AND DESTINATION = %s", (self.flow_id, self.name))
            self._sql(f"INSERT INTO {self._state} (FLOW_ID, DESTINATION, LSN, ORDINAL, SOURCE, UPDATED_AT)"
                      " SELECT %s, %s, %s, %s, %s, current_timestamp()",
                      (self.flow_id, self.name, mark.lsn, mark.ordinal, source_json(self.source)))
        if self._tx:
            self._con.commit()
            self._tx = False
            self._tx_bytes = 0
            self._dml_tables.clear()
            self._hw.stored = max(self._hw.stored, mark)

    def _rollback(self) -> None:
        try:
            self._con.rollback()
        except Exception:
            pass

    def _usable(self) -> bool:
        return self._con is not None

    def close(self) -> None:
        con, self._con = getattr(self, "_con", None), None
        if con is not None:
            try:
                con.close()  # an open transaction is rolled back
            except Exception:
                pass
        self._close_reduction()
        tmp = getattr(self, "_tmp", None)
        if tmp:
            for f in os.listdir(tmp):
                os.remove(os.path.join(tmp, f))
            os.rmdir(tmp)
            self._tmp = ""

    def _clean(self, exc: BaseException | str) -> str:
        text = exc if isinstance(exc, str) else (getattr(exc, "msg", None) or str(exc))
        return self._dsn.clean(str(text))

    def _where(self, where: str | None) -> str:
        shown = self._dsn.shown
        return f"Snowflake {shown}, table {where}: " if where else f"Snowflake {shown}: "

    def _server_error(self, exc: Exception) -> bool | None:
        import snowflake.connector.errors as sferr

        return _is_transient(exc) if isinstance(exc, sferr.Error) else None

    # ------------------------------------------------------------------ DDL before rows

    def _before_rows(self, pending: list[_Pending]) -> None:
        """Snowflake commits the open transaction at every DDL statement: the DDL of every pending table runs first,
        after what the transaction holds is committed with the high-water of exactly what it holds."""
        plans = []
        for p in pending:
            with self._failing(p):
                plan = self._plan(p)
            if plan is not None:
                plans.append((p, plan))
        if plans and self._tx:
            self._commit_at(self._applied_upto)
        for p, plan in plans:
            with self._failing(p):
                self._run_plan(p, plan)
                self._con.commit()

    def _columns(self, p: _Pending) -> dict[str, Column]:
        return self._columns_of(p.table, [i for i in p.items if isinstance(i, TableChanges)])

    def _load_dest(self, dest: tuple[str, str]) -> DestTable | None:
        cols = table_columns(self._con.cursor(), dest)
        return None if cols is None else DestTable(cols)

    def _plan(self, p: _Pending) -> _Plan | None:
        """The DDL applying ``p`` needs (None: none)."""
        dest = self._tables.get(p.dest)
        if dest is None:
            dest = self._load_dest(p.dest)
            if dest is not None:
                self._tables[p.dest] = dest
        columns = self._columns(p)
        plan = _Plan()
        if dest is None:
            if self._append:
                clash = [c for c in columns if c in dict(APPEND_COLS)]
                if clash:
                    self._fail(f"{p.dest[0]}.{p.dest[1]}", f"source columns {clash} clash with append mode's columns"
                                                           f" {[c for c, _ in APPEND_COLS]}")
            defs = [(n, snowflake_type(c, self._mappings)) for n, c in columns.items()]
            if self._append:
                defs += list(APPEND_COLS)
            plan.create = defs
            plan.load = True
            return plan
        if p.dest not in self._source_cols:  # the writer's first apply to the table: the types as recorded
            for c in self._meta_columns(p) or []:
                self._applied_types.setdefault((p.dest, c["name"]), c.get("pg_type"))
        p.fills = self._reappeared(p, columns, dest.columns)  # an UPDATE with the rows, no DDL
        for name, c in columns.items():
            want = snowflake_type(c, self._mappings)
            have = dest.columns.get(name)
            if have is None:
                plan.add.append((c, want))
            elif widens(have, want):
                plan.widen.append((name, have, want))
            elif canonical_type(want) != canonical_type(have):
                before = self._applied_types.get((p.dest, name))
                if before is not None and before != c.type_name:
                    raise_at = f"{p.dest[0]}.{p.dest[1]}"
                    first = next(i.first for i in p.items if isinstance(i, TableChanges))
                    self._fail(raise_at, (
                        f"column {name!r} changed type at the source from {before} to {c.type_name}; Snowflake cannot"
                        f" change a {have} column to {want} (only to more digits at the same scale, or a longer"
                        f" VARCHAR). Map {c.type_name} to a type both fit with the destination option type_mappings,"
                        " or drop the Snowflake table and backfill it"), held=(p.table.qualified, name, first))
                if (p.dest, name, want) not in self._warned:
                    self._warned.add((p.dest, name, want))
                    log.warning("destination %r: %s.%s is %s in Snowflake, the source type now maps to %s; values"
                                " are cast", self.name, *p.dest, name, have, want)
        plan.load = bool(plan.add or plan.widen) or dest.load is None
        return plan if (plan.add or plan.widen or plan.load) else None

    def _run_ddl(self, p: _Pending, plan: _Plan) -> DestTable:
        """The table's DDL of ``plan`` (create, add, widen); the table as Snowflake lists it now."""
        qt = f"{q(p.dest[0])}.{q(p.dest[1])}"
        if plan.create is not None:
            self._sql(f"CREATE SCHEMA IF NOT EXISTS {q(p.dest[0])}")
            body = ", ".join(f"{q(n)} {t}" for n, t in plan.create)
            self._sql(f"CREATE TABLE IF NOT EXISTS {qt} ({body})")
            log.info("destination %r: created %s", self.name, qt, extra={"flow": self.flow_id})
        fills = []
        for c, want in plan.add:
            self._sql(f"ALTER TABLE {qt} ADD COLUMN {q(c.name)} {want}")
            log.info("destination %r: %s gained column %s %s", self.name, qt, c.name, want,
                     extra={"flow": self.flow_id})
            if c.missing is not None:
                fills.append(c)
        for name, have, want in plan.widen:
            self._sql(f"ALTER TABLE {qt} ALTER COLUMN {q(name)} SET DATA TYPE {want}")
            log.info("destination %r: %s.%s widened from %s to %s", self.name, qt, name, have, want,
                     extra={"flow": self.flow_id})
        p.fills = [*p.fills, *fills]
        dest = self._load_dest(p.dest)
        if dest is None:
            raise ApplyError("the table was created but Snowflake does not list its columns")
        self._tables[p.dest] = dest
        return dest

    def _run_plan(self, p: _Pending, plan: _Plan) -> None:
        dest = self._run_ddl(p, plan)
        # the load table: C<i> the value of column i (JSON text for VARIANT/ARRAY/OBJECT), K<i> keep the target's
        # value, F<i> the key before the epoch; __SET / __N / __M / __G / append mode's columns
        h = hashlib.sha1(json.dumps([self.flow_id, self.name, *p.dest]).encode()).hexdigest()[:16].upper()
        load = f"{q(self.options.meta_schema)}.{q('__WALLABY_LOAD_' + h)}"
        defs = []
        append = dict(APPEND_COLS)
        data = [n for n in dest.columns if not (self._append and n in append)]
        for i, n in enumerate(data):
            t = "VARCHAR" if is_json_type(dest.columns[n]) else dest.columns[n]
            defs += [f"C{i} {t}", f"K{i} BOOLEAN", f"F{i} {t}"]
        defs += ["__SET BOOLEAN", "__N NUMBER(19,0)", "__M NUMBER(19,0)", "__G NUMBER(19,0)", "__OP VARCHAR",
                 "__LSN NUMBER(20,0)", "__ORD NUMBER(20,0)", "__TS TIMESTAMP_TZ(6)", "__SEQ NUMBER(19,0)"]
        self._sql(f"CREATE OR REPLACE TRANSIENT TABLE {load} ({', '.join(defs)})")
        dest.load, dest.load_cols = load, tuple(data)

    # ------------------------------------------------------------------ rows

    def _meta_columns(self, p: _Pending) -> list[dict] | None:
        if not self.options.meta_table_enabled:
            return None
        row = self._sql(f"SELECT COLUMNS_JSON FROM {self._meta} WHERE FLOW_ID = %s AND SOURCE_SCHEMA = %s AND"
                        " SOURCE_TABLE = %s AND DEST_SCHEMA = %s AND DEST_TABLE = %s",
                        (self.flow_id, p.table.schema, p.table.name, *p.dest)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def _record_meta(self, p: _Pending, dest: DestTable) -> None:
        t = p.table
        key = (t.schema, t.name, p.dest[0], p.dest[1])
        cols_json = json.dumps([{"name": c.name, "pg_type": c.type_name, "snowflake_type": dest.columns.get(c.name),
                                 "key": c.key, "nullable": c.nullable} for c in t.columns])
        if self._meta_seen.get(key) == (t.version, cols_json):
            return
        pk = ",".join(self.options.meta_pk_prefix + k for k in t.key_names)
        where = "FLOW_ID = %s AND SOURCE_SCHEMA = %s AND SOURCE_TABLE = %s AND DEST_SCHEMA = %s AND DEST_TABLE = %s"
        self._sql(f"DELETE FROM {self._meta} WHERE {where}", (self.flow_id, *key))
        self._sql(f"INSERT INTO {self._meta} (FLOW_ID, SOURCE_SCHEMA, SOURCE_TABLE, DEST_SCHEMA, DEST_TABLE,"
                  " SCHEMA_VERSION, WRITE_MODE, PRIMARY_KEY, COLUMNS_JSON, UPDATED_AT)"
                  " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, current_timestamp()",
                  (self.flow_id, *key, t.version, self.options.write_mode, pk, cols_json))
        self._meta_seen[key] = (t.version, cols_json)

    def _conv(self, dest: DestTable, name: str, expr: str) -> str:
        """A load-table value ``expr`` as the target column's value."""
        t = dest.columns[name]
        if is_json_type(t):
            return f"CAST(PARSE_JSON({expr}) AS {t})" if t in ("ARRAY", "OBJECT") else f"PARSE_JSON({expr})"
        return expr

    def _keep_expr(self, dest: DestTable, name: str, expr: str) -> str:
        """A target value ``expr`` as a load-table value."""
        return f"TO_JSON({expr})" if is_json_type(dest.columns[name]) else expr

    def _ship(self, dest: DestTable, table: pa.Table) -> None:
        """The load table emptied, then filled with ``table`` (PUT + COPY INTO, in the open transaction)."""
        self._sql(f"DELETE FROM {dest.load}")
        path = os.path.join(self._tmp, f"{uuid.uuid4().hex}.parquet")
        pq.write_table(_clamp_infinity(table), path)
        try:
            self._sql(f"PUT 'file://{path}' @{self._stage} AUTO_COMPRESS=FALSE")
        finally:
            os.remove(path)
        self._sql(f"COPY INTO {dest.load} FROM @{self._stage} FILE_FORMAT=(TYPE=PARQUET)"
                  " MATCH_BY_COLUMN_NAME=CASE_SENSITIVE PURGE=TRUE")

    def _apply_rows(self, p: _Pending) -> None:
        dest = self._tables[p.dest]
        columns = {n: c for n, c in self._columns(p).items()}
        qt = f"{q(p.dest[0])}.{q(p.dest[1])}"
        if p.fills:
            self._dml_tables.add(p.dest)
            for c in p.fills:
                value = fill_value(c)[0].as_py()
                if isinstance(value, (dict, list)):
                    value = json.dumps(value)
                self._sql(f"UPDATE {qt} SET {q(c.name)} = {self._conv(dest, c.name, '%s')}", (value,))
            p.fills = []
        if self.options.meta_table_enabled:
            self._record_meta(p, dest)
        if p.truncate:
            self._dml_tables.add(p.dest)
            self._sql(f"DELETE FROM {qt}")
        if not p.items:
            return
        src = merge_pending(p.table, p.items, columns, self._append, duckdb_infinity=False)
        if src.num_rows == 0:
            return
        self._dml_tables.add(p.dest)
        self.stats["applied_rows"] += src.num_rows
        self._duck.register("__wallaby_src", src)
        table = p.table
        if self._append:
            self._apply_append(qt, dest, src, columns)
        elif p.staging:
            self._apply_keyless(qt, dest, src, columns, inserts_only=True)
        elif table.replica_identity != "f" and table.key_names:
            self._apply_keyed(qt, dest, src, columns, table.key_names)
        else:
            self._apply_keyless(qt, dest, src, columns)

    def _val(self, src: pa.Table, dest: DestTable, name: str, expr: str) -> str:
        """A value of the changes (DuckDB expression) as the load table holds it: JSON text for VARIANT/ARRAY
        columns, text for VARCHAR columns of other source types (interval, numeric mapped to text)."""
        t = dest.columns[name]
        i = src.schema.get_field_index(name)
        at = src.schema.field(i).type if i >= 0 else pa.string()
        text = pa.types.is_string(at) or pa.types.is_large_string(at)
        if is_json_type(t):
            return expr if text else f"CAST(to_json({expr}) AS VARCHAR)"
        if canonical_type(t).startswith("VARCHAR") and not text:
            return f"CAST({expr} AS VARCHAR)"
        return expr

    def _idx(self, dest: DestTable) -> dict[str, int]:
        return {n: i for i, n in enumerate(dest.load_cols)}

    def _apply_keyed(self, qt: str, dest: DestTable, src: pa.Table, columns: dict[str, Column],
                     keys: tuple[str, ...]) -> None:
        idx = self._idx(dest)
        try:
            red = reduce_keyed(self._duck, src, columns, keys, list(dest.load_cols))
        except ReduceError as exc:
            raise ApplyError(exc.message) from None
        names = list(columns)
        sel = [f"f.{q(k)} AS C{idx[k]}" for k in keys] + ["f.__set AS __SET"]
        if not red.resolve:
            sel += [f"{self._val(src, dest, c, 's.' + q(c))} AS C{idx[c]}" for c in names if c not in keys]
            # (an unset key joins its delete, whose values are never inserted; a plain equi-join stays a hash join)
            sql = (f"SELECT {', '.join(sel)} FROM __wallaby_f AS f LEFT JOIN __wallaby_src AS s"
                   f" ON s.{SEQ_COL} = f.{SEQ_COL}")
        else:
            for c in names:
                if c in keys:
                    continue
                if c in red.toast:
                    sel.append(f"{self._val(src, dest, c, 'r.' + q(VALUE + c))} AS C{idx[c]}")
                    sel.append(f"r.{q(KEEP + c)} AS K{idx[c]}")
                else:
                    sel.append(f"{self._val(src, dest, c, 'r.' + q(c))} AS C{idx[c]}")
            sel += [f"r.{q(KEEP + c)} AS K{idx[c]}" for c in red.extra]
            sel += [f"r.{q(FROM + k)} AS F{idx[k]}" for k in keys]
            on = " AND ".join(f"r.{q(k)} = f.{q(k)}" for k in keys)
            sql = f"SELECT {', '.join(sel)} FROM __wallaby_f AS f LEFT JOIN __wallaby_red AS r ON {on}"
        out = self._duck.execute(sql).fetch_arrow_table()
        red.drop(self._duck)
        self._ship(dest, out)
        L = dest.load
        if red.resolve:
            kept = [*red.toast, *red.extra]
            # (the statements' targets are not aliased: Snowflake's UPDATE / DELETE name them in full)
            sets = ", ".join(f"C{idx[c]} = CASE WHEN {L}.K{idx[c]} THEN {self._keep_expr(dest, c, 'o.' + q(c))}"
                             f" ELSE {L}.C{idx[c]} END" for c in kept)
            match = " AND ".join(f"o.{q(k)} = {L}.F{idx[k]}" for k in keys)
            self._sql(f"UPDATE {L} SET {sets} FROM {qt} AS o WHERE {match} AND {L}.__SET")
        match = " AND ".join(f"{qt}.{q(k)} = l.C{idx[k]}" for k in keys)
        self._sql(f"DELETE FROM {qt} USING {L} AS l WHERE {match}")
        cols = [*names, *red.extra] if red.resolve else names
        vals = ", ".join(self._conv(dest, c, f"l.C{idx[c]}") for c in cols)
        self._sql(f"INSERT INTO {qt} ({', '.join(q(c) for c in cols)}) SELECT {vals} FROM {L} AS l WHERE l.__SET")

    def _apply_keyless(self, qt: str, dest: DestTable, src: pa.Table, columns: dict[str, Column],
                       inserts_only: bool = False) -> None:
        idx = self._idx(dest)
        names = list(columns)
        ops = set(pc.unique(src.column(OP_COL)).to_pylist())
        if inserts_only or ops <= {"insert", OP_READ}:
            sel = ", ".join(f"{self._val(src, dest, c, q(c))} AS C{idx[c]}" for c in names)
            out = self._duck.execute(f"SELECT {sel}, 1 AS __N FROM __wallaby_src").fetch_arrow_table()
            removes = False
        else:
            try:
                reduce_keyless(self._duck, src, columns)
            except ReduceError as exc:
                raise ApplyError(exc.message) from None
            sel = ", ".join(f"{self._val(src, dest, c, q(c))} AS C{idx[c]}" for c in names)
            out = self._duck.execute(
                f"SELECT {sel}, 1 AS __N, NULL::BIGINT AS __G FROM (SELECT *, unnest(range(__n)) FROM __wallaby_net"
                f" WHERE __n > 0) UNION ALL SELECT {sel}, __n AS __N, row_number() OVER () AS __G FROM __wallaby_net"
                f" WHERE __n < 0").fetch_arrow_table()
            self._duck.execute("DROP TABLE __wallaby_net")
            removes = bool(pc.any(pc.less(out.column("__N"), 0)).as_py())
        self._ship(dest, out)
        L = dest.load
        cols = ", ".join(q(c) for c in names)
        if removes:
            def match(t: str) -> str:
                return " AND ".join(f"{t}.{q(c)} IS NOT DISTINCT FROM {self._conv(dest, c, f'd.C{idx[c]}')}"
                                    for c in names)

            self._sql(f"UPDATE {L} SET __M = x.__CNT FROM (SELECT d.__G AS __GG, count(*) AS __CNT FROM {L} AS d"
                      f" JOIN {qt} AS t ON {match('t')} WHERE d.__N < 0 GROUP BY d.__G) AS x WHERE {L}.__G = x.__GG")
            self._sql(f"DELETE FROM {qt} USING {L} AS d WHERE d.__N < 0 AND {match(qt)}")
            most = self._sql(f"SELECT max(coalesce(__M, 0) + __N) FROM {L} WHERE __N < 0").fetchone()[0]
            if most is not None and int(most) > 0:
                vals = ", ".join(self._conv(dest, c, f"d.C{idx[c]}") for c in names)
                self._sql(f"INSERT INTO {qt} ({cols}) SELECT {vals} FROM {L} AS d JOIN (SELECT row_number() OVER"
                          f" (ORDER BY seq8()) AS __I FROM TABLE(GENERATOR(ROWCOUNT => {int(most)}))) AS g"
                          f" ON g.__I <= coalesce(d.__M, 0) + d.__N WHERE d.__N < 0")
        vals = ", ".join(self._conv(dest, c, f"l.C{idx[c]}") for c in names)
        self._sql(f"INSERT INTO {qt} ({cols}) SELECT {vals} FROM {L} AS l WHERE l.__N > 0")

    def _apply_append(self, qt: str, dest: DestTable, src: pa.Table, columns: dict[str, Column]) -> None:
        idx = self._idx(dest)
        names = list(columns)

        def value(c: str) -> str:
            if src.schema.get_field_index(BEFORE_PREFIX + c) >= 0:
                return f"CASE WHEN {OP_COL} = 'delete' THEN {q(BEFORE_PREFIX + c)} ELSE {q(c)} END"
            return q(c)

        sel = ", ".join(f"{self._val(src, dest, c, value(c))} AS C{idx[c]}" for c in names)
        out = self._duck.execute(f"SELECT {sel}, __op AS __OP, CAST(__lsn AS DECIMAL(20,0)) AS __LSN,"
                                 f" CAST(__ord AS DECIMAL(20,0)) AS __ORD, __ts AS __TS,"
                                 f" {SEQ_COL} AS __SEQ FROM __wallaby_src").fetch_arrow_table()
        self._ship(dest, out)
        meta = [c for c, _ in APPEND_COLS]
        cols = ", ".join(q(c) for c in [*names, *meta])
        vals = ", ".join([*(self._conv(dest, c, f"l.C{idx[c]}") for c in names), "l.__OP", "l.__LSN", "l.__ORD",
                          "l.__TS"])
        self._sql(f"INSERT INTO {qt} ({cols}) SELECT {vals} FROM {dest.load} AS l ORDER BY l.__SEQ")


def _is_transient(exc: Exception) -> bool:
    """Snowflake away or busy: the connection (OperationalError, InterfaceError), HTTP 5xx / 429, a statement that
    waited too long for a lock (000625) or was aborted with its session (000604)."""
    import snowflake.connector.errors as sferr

    if isinstance(exc, (sferr.OperationalError, sferr.InterfaceError, sferr.InternalServerError,
                        sferr.ServiceUnavailableError, sferr.GatewayTimeoutError, sferr.BadGatewayError,
                        sferr.TooManyRequests, sferr.RequestTimeoutError)):
        return True
    return getattr(exc, "errno", None) in (625, 604, 608)


def _clamp_infinity(table: pa.Table) -> pa.Table:
    """Postgres' -infinity / +infinity dates and timestamps (the source's sentinels) as the least / greatest value
    Snowflake holds (0001-01-01, 9999-12-31 23:59:59.999999), time 24:00:00 as 23:59:59.999999: docs/snowflake.md."""
    for i, f in enumerate(table.schema):
        if pa.types.is_time64(f.type) and f.type.unit == "us":  # 24:00:00: Snowflake's TIME ends before it
            ints = table.column(i).cast(pa.int64())
            if ints.null_count < len(ints) and pc.max(ints).as_py() >= 86_400_000_000:
                fixed = pc.min_element_wise(ints, pa.scalar(86_399_999_999, pa.int64()), skip_nulls=False)
                table = table.set_column(i, f, fixed.cast(f.type))
            continue
        if pa.types.is_date32(f.type):
            ints, lo, hi, neg, pos = table.column(i).cast(pa.int32()), DATE_MIN, DATE_MAX, DATE_NEG_INF, DATE_POS_INF
        elif pa.types.is_timestamp(f.type) and f.type.unit == "us":
            ints, lo, hi, neg, pos = table.column(i).cast(pa.int64()), TS_MIN, TS_MAX, TS_NEG_INF, TS_POS_INF
        else:
            continue
        if ints.null_count == len(ints):
            continue
        mn, mx = pc.min_max(ints).values()
        if mn.as_py() > neg + 1 and mx.as_py() < pos:  # DuckDB's -infinity is MIN + 1
            continue
        fixed = pc.if_else(pc.less_equal(ints, neg + 1), pa.scalar(lo, ints.type),
                           pc.if_else(pc.equal(ints, pos), pa.scalar(hi, ints.type), ints))
        table = table.set_column(i, f, fixed.cast(f.type))
    return table


__all__ = ["APPEND_COLS", "SnowflakeWriter", "discard_position", "make_sink", "stored_position"]
