"""ClickHouse destination: apply a flow's changes to ClickHouse tables over the HTTP interface (clickhouse-connect).

The writer is a :class:`sinks.sql.engine.TableEngine` (buffering, cuts, staging routing, the high-water and replay
contract, one error per failure); this module is ClickHouse's dialect. ClickHouse has no multi-statement
transaction and its mutations (``ALTER TABLE ... UPDATE/DELETE``) are asynchronous rewrites of whole parts, so
nothing here updates or deletes rows: every change is an INSERT, and the table engines make the inserted rows add up
to the source's state, however often they are inserted again.

Tables (created on first sight; docs/destinations.md "ClickHouse")
    keyed (a primary key or replica identity index)
        ``ReplacingMergeTree(__wallaby_version, __wallaby_deleted) ORDER BY (<key>)``. Each apply inserts one row
        per touched key (the epoch reduction, :func:`sinks.sql.reduce.reduce_keyed`): its final values, or a
        tombstone (``__wallaby_deleted = 1``, the other columns NULL) for a deleted key and for the old key of a key
        change. ``__wallaby_lsn`` / ``__wallaby_ord`` are the position of the key's last change;
        ``__wallaby_version UInt128 MATERIALIZED lsn * 2^64 + ord`` orders rows exactly as the WAL does (both halves
        are UInt64, so no encoding of the pair in 64 bits could be exact, and 128 bits never overflow).
    keyless (REPLICA IDENTITY FULL, or no key)
        ``ReplacingMergeTree ORDER BY (__wallaby_lsn, __wallaby_ord, __wallaby_sign)``: one signed row per change
        (an insert +1 with its row, a delete -1 with its before image, an update both), identified by its position:
        a replayed change collapses onto itself. The multiset is ``sum(__wallaby_sign)`` per distinct row.
    append (``write_mode=append``)
        ``ReplacingMergeTree ORDER BY (__lsn, __ord)``: every change a row with ``__op``, ``__lsn``, ``__ord``,
        ``__ts`` (a delete carries its before image, a truncate is a row with ``__op = 'truncate'``); a replayed
        change collapses onto itself.

    Every keyed and keyless table gets a view ``<table>__current`` holding the current rows (keyed: ``FINAL WHERE
    __wallaby_deleted = 0``; keyless: each distinct row repeated ``sum(__wallaby_sign)`` times).

Load path (no per-row statement)
    Per table per apply, the epoch's changes (:func:`sinks.sql.merge.merge_pending`) are reduced to the last
    mention of every key, in Arrow when the epoch carries every value as ClickHouse takes it
    (:func:`_final_mentions`), else in a private in-memory DuckDB (:func:`sinks.sql.reduce.reduce_keyed`), and
    inserted with one ``INSERT ... FORMAT Arrow``. When the epoch does not carry every value of a row (an unchanged
    TOAST value, a column only ClickHouse has), the rows go to the writer's load table
    (``<state database>.__wallaby_load_<hash>``, Memory engine) and one ``INSERT INTO target SELECT ... FROM load
    LEFT JOIN (SELECT ... FROM target FINAL WHERE key IN (the keys the rows had before the epoch))`` takes the kept
    values from what ClickHouse holds.

Exactly once
    After an epoch's rows, the high-water is inserted into ``<state database>.__wallaby_state``
    (``ReplacingMergeTree(seq, deleted) ORDER BY (flow_id, destination)``, read with FINAL). There is no transaction
    around the two: a crash between them replays the changes above the stored high-water, and replaying is
    harmless because every row a change produces is identified by the change's position: a keyed row by (key,
    version), where the highest version wins and an equal version is the same change with the same values; a
    keyless or append row by its position in the sorting key. The one row a replay could compute differently is a
    keyed row with kept values (they are read from the table, which may already hold the crashed attempt's later
    rows): after a restart such rows are not inserted again when ClickHouse already holds their (key, version)
    (checked while the applied positions are at or below the highest version the table held when the writer met
    it). A reader may see a crashed epoch's rows before the replay reaches them again (they are the source's own
    later state); a TRUNCATE the crashed attempt ran is run again by the replay.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sinks.base import PermanentSinkError, WriterSink, source_json
from sinks.clickhouse.dsn import ClickHouseDsn, DsnError, parse_dsn
from sinks.clickhouse.options import ClickHouseDestinationOptions
from sinks.clickhouse.types import bare, canonical_type, clickhouse_type, is_string, nullable, widens
from sinks.sql.engine import ApplyError, RetypeError, _Pending, fill_value
from sinks.sql.merge import merge_pending
from sinks.sql.reduce import FROM, KEEP, SEQ_COL, VALUE, ReduceError, reduce_keyed, unchanged_names
from sinks.sql.reduce import lit as dlit
from sinks.sql.reduce import q as dq
from sinks.sql.remote import RemoteTableEngine
from wallaby.core.changes import (
    BEFORE_PREFIX,
    OP_COL,
    OP_DELETE,
    OP_READ,
    UNCHANGED_COL,
    Column,
    Position,
    TableChanges,
)
from wallaby.core.identity import SourceCheck, SourceIdentity

log = logging.getLogger("wallaby.sinks.clickhouse")

LSN, ORD, DELETED, VERSION, SIGN = "__wallaby_lsn", "__wallaby_ord", "__wallaby_deleted", "__wallaby_version", \
    "__wallaby_sign"
KEYED_COLS = ((LSN, "UInt64"), (ORD, "UInt64"), (DELETED, "UInt8"))
KEYLESS_COLS = ((LSN, "UInt64"), (ORD, "UInt64"), (SIGN, "Int8"))
APPEND_COLS = (("__op", "String"), ("__lsn", "UInt64"), ("__ord", "UInt64"), ("__ts", "DateTime64(6, 'UTC')"))
INTERNAL = frozenset({LSN, ORD, DELETED, VERSION, SIGN})
VIEW_SUFFIX = "__current"
STATE = "__wallaby_state"
META = "__wallaby_meta"
MAX_BUFFER_BYTES = 16 << 20  # an insert of ~80k narrow rows; measured (make bench, 1M narrow): peak RSS 433 MB at 64 MB
MAX_TX_BYTES = 1 << 62  # nothing to commit early: no transaction holds the rows
# the dates and timestamps Date32 / DateTime64 hold: values outside (and Postgres' +-infinity) land on these
DATE_MIN, DATE_MAX = -25567, 120529  # 1900-01-01, 2299-12-31 in days since 1970-01-01
TS_MIN, TS_MAX = DATE_MIN * 86_400_000_000, (DATE_MAX + 1) * 86_400_000_000 - 1
# ClickHouse away or busy: TIMEOUT_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES, NO_FREE_CONNECTION, SOCKET_TIMEOUT,
# NETWORK_ERROR, MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY, TOO_MANY_PARTS, TOO_FEW_LIVE_REPLICAS,
# UNKNOWN_STATUS_OF_INSERT, KEEPER_EXCEPTION, POCO_EXCEPTION
_TRANSIENT_CODES = {159, 202, 203, 209, 210, 241, 242, 252, 285, 319, 999, 1000}


def qi(ident: str) -> str:
    """A ClickHouse identifier, quoted."""
    return "`" + ident.replace("\\", "\\\\").replace("`", "\\`") + "`"


def lit(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _connect(dsn: ClickHouseDsn):
    import clickhouse_connect

    return clickhouse_connect.get_client(**dsn.client_kwargs(), autogenerate_session_id=False)


def _dsn(name: str, options: ClickHouseDestinationOptions) -> ClickHouseDsn:
    try:
        return parse_dsn(options.dsn)
    except DsnError as exc:
        raise PermanentSinkError(name, f"ClickHouse dsn: {exc}") from None


def make_sink(name: str, flow_id: str, options: ClickHouseDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    """The destination of a flow spec (the DSN is parsed now: a bad one is refused before anything connects)."""
    _dsn(name, options)
    return WriterSink(name, lambda resume_state: ClickHouseWriter(name, flow_id, options, resume_state,
                                                                  source=source))


def _state_name(dsn: ClickHouseDsn) -> str:
    return f"{qi(dsn.database)}.{qi(STATE)}"


_STATE_READ = ("SELECT lsn, ordinal, source FROM {t} FINAL WHERE flow_id = {{f:String}} AND destination = {{d:String}}"
               " AND deleted = 0")


def stored_position(name: str, flow_id: str, options: ClickHouseDestinationOptions
                    ) -> tuple[Position, SourceIdentity | None, str] | None:
    """The high-water destination ``name`` holds for ``flow_id`` (None: none, or ClickHouse cannot be read)."""
    try:
        dsn = parse_dsn(options.dsn)
        client = _connect(dsn)
    except Exception:
        return None
    try:
        if not client.command(f"EXISTS TABLE {_state_name(dsn)}"):
            return None
        rows = client.query(_STATE_READ.format(t=_state_name(dsn)), parameters={"f": flow_id, "d": name}).result_rows
    except Exception:
        return None
    finally:
        client.close()
    if not rows:
        return None
    lsn, ordinal, source = rows[0]
    return Position(int(lsn), int(ordinal)), SourceIdentity.from_json(source), f"ClickHouse {dsn.shown}"


def discard_position(name: str, flow_id: str, options: ClickHouseDestinationOptions) -> None:
    """Forget the high-water destination ``name`` holds for ``flow_id`` (a reset asked for by the user)."""
    dsn = _dsn(name, options)
    try:
        client = _connect(dsn)
        try:
            if client.command(f"EXISTS TABLE {_state_name(dsn)}"):
                _insert_state(client, dsn, flow_id, name, ZERO_POS, None, time.time_ns(), deleted=True)
        finally:
            client.close()
    except Exception as exc:
        raise PermanentSinkError(name, f"ClickHouse {dsn.shown}: {dsn.clean(str(exc))}") from None


ZERO_POS = Position(0, 0)


def _insert_state(client: Any, dsn: ClickHouseDsn, flow_id: str, name: str, mark: Position, source: str | None,
                  seq: int, deleted: bool = False) -> None:
    client.insert(STATE, [[flow_id, name, mark.lsn, mark.ordinal, source, dt.datetime.now(dt.UTC), seq, int(deleted)]],
                  database=dsn.database,
                  column_names=["flow_id", "destination", "lsn", "ordinal", "source", "updated_at", "seq", "deleted"])


@dataclass(slots=True)
class DestTable:
    kind: str  # keyed | keyless | append
    columns: dict[str, str]  # data column -> ClickHouse type (as system.columns says), in table order
    keys: tuple[str, ...] = ()
    load: str | None = None  # the load table, made for these columns
    guard: int | None = None  # keyed: the highest version the table held when this writer met it


class ClickHouseWriter(RemoteTableEngine):
    """Applies change batches to ClickHouse (see the module docstring)."""

    def __init__(self, name: str, flow_id: str, options: ClickHouseDestinationOptions, resume_state: Any = None, *,
                 source: SourceCheck | None = None, max_buffer_rows: int = 500_000,
                 max_buffer_bytes: int = MAX_BUFFER_BYTES, max_tx_bytes: int = MAX_TX_BYTES):
        if not isinstance(options, ClickHouseDestinationOptions):
            options = ClickHouseDestinationOptions.model_validate(options)
        self.name = name
        self.options = options
        self._dsn = _dsn(name, options)
        self._client = None
        self._seq = 0
        self._views: dict[tuple[str, str], tuple[str, ...]] = {}  # dest -> the columns of its view, as made
        db = qi(self._dsn.database)
        self._state = f"{db}.{qi(STATE)}"
        self._meta = f"{db}.{qi(META)}"
        super().__init__(name, flow_id, options, resume_state, source=source, max_buffer_rows=max_buffer_rows,
                         max_buffer_bytes=max_buffer_bytes, max_tx_bytes=max_tx_bytes,
                         where=f"ClickHouse {self._dsn.shown} (destination {name!r})")

    # ------------------------------------------------------------------ connection and state

    def _cmd(self, sql: str, parameters: dict | None = None, settings: dict | None = None) -> Any:
        return self._client.command(sql, parameters=parameters, settings=settings)

    def _rows(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        return self._client.query(sql, parameters=parameters).result_rows

    def _open_state(self) -> tuple[int, int, str | None] | None:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            self._client = _connect(self._dsn)
        except Exception as exc:  # the server away, a wrong password, a bad setting in the dsn
            self.close()
            raise PermanentSinkError(self.name, f"cannot connect to ClickHouse {self._dsn.shown}:"
                                                f" {self._clean(exc)}") from None
        try:
            self._cmd(f"CREATE DATABASE IF NOT EXISTS {qi(self._dsn.database)}")
            self._cmd(f"CREATE TABLE IF NOT EXISTS {self._state} (flow_id String, destination String, lsn UInt64,"
                      " ordinal UInt64, source Nullable(String), updated_at DateTime64(6, 'UTC'), seq UInt64,"
                      " deleted UInt8) ENGINE = ReplacingMergeTree(seq, deleted) ORDER BY (flow_id, destination)")
            rows = self._rows(_STATE_READ.format(t=self._state), {"f": self.flow_id, "d": self.name})
        except ClickHouseError as exc:
            self.close()
            raise PermanentSinkError(self.name, f"cannot open ClickHouse {self._dsn.shown}: {self._clean(exc)}") \
                from None
        if self.options.meta_table_enabled:
            try:
                self._cmd(f"CREATE TABLE IF NOT EXISTS {self._meta} (flow_id String, source_schema String,"
                          " source_table String, key_json String, dest_database String, dest_table String,"
                          " schema_version UInt32, write_mode String, primary_key String, columns_json String,"
                          f" updated_at DateTime64(6, 'UTC')) ENGINE = {self.options.meta_engine}"
                          f" ORDER BY ({self.options.meta_order_by})")
            except ClickHouseError as exc:
                self.close()
                raise PermanentSinkError(self.name, f"ClickHouse {self._dsn.shown}: cannot create the meta table"
                                                    f" {self._meta} with meta_engine={self.options.meta_engine!r}"
                                                    f" and meta_order_by={self.options.meta_order_by!r} (or set"
                                                    f" meta_table_enabled=false): {self._clean(exc)}") from None
        self._open_reduction()
        if not rows:
            return None
        lsn, ordinal, source = rows[0]
        return int(lsn), int(ordinal), source

    def _next_seq(self) -> int:
        self._seq = max(time.time_ns(), self._seq + 1)
        return self._seq

    def _forget_state(self) -> None:
        _insert_state(self._client, self._dsn, self.flow_id, self.name, ZERO_POS, None, self._next_seq(),
                      deleted=True)

    def _begin(self) -> None:
        self._tx = True  # no transaction: what is applied is in the table (replays are harmless, module docstring)

    def _commit_at(self, mark: Position) -> None:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        if mark > self._hw.stored:
            try:
                _insert_state(self._client, self._dsn, self.flow_id, self.name, mark, source_json(self.source),
                              self._next_seq())
            except ClickHouseError as exc:
                self._fail(None, f"cannot store the high-water: {self._error_message(None, exc)}")  # type: ignore
        self._tx = False
        self._tx_bytes = 0
        self._dml_tables.clear()
        self._hw.stored = max(self._hw.stored, mark)

    def _rollback(self) -> None:
        pass  # the rows inserted so far stay; a replay inserts the same rows again (module docstring)

    def _usable(self) -> bool:
        return self._client is not None

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        self._close_reduction()

    def _clean(self, exc: BaseException | str) -> str:
        return self._dsn.clean(str(exc)).strip()

    def _where(self, where: str | None) -> str:
        shown = self._dsn.shown
        return f"ClickHouse {shown}, table {where}: " if where else f"ClickHouse {shown}: "

    def _server_error(self, exc: Exception) -> bool | None:
        from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

        if not isinstance(exc, ClickHouseError):
            return None
        return isinstance(exc, OperationalError) or (
            isinstance(exc, DatabaseError) and getattr(exc, "code", None) in _TRANSIENT_CODES)

    # ------------------------------------------------------------------ tables and schema evolution

    def _qt(self, dest: tuple[str, str]) -> str:
        return f"{qi(dest[0])}.{qi(dest[1])}"

    def _load_dest(self, dest: tuple[str, str]) -> DestTable | None:
        rows = self._rows("SELECT name, type FROM system.columns WHERE database = {d:String} AND table = {t:String}"
                          " ORDER BY position", {"d": dest[0], "t": dest[1]})
        if not rows:
            return None
        cols = {n: t for n, t in rows}
        if DELETED in cols:
            key = self._rows("SELECT sorting_key FROM system.tables WHERE database = {d:String} AND"
                             " name = {t:String}", {"d": dest[0], "t": dest[1]})[0][0]
            key = key.strip()
            if key.startswith("(") and key.endswith(")"):
                key = key[1:-1]
            keys = tuple(k.strip().strip("`") for k in key.split(",") if k.strip())
            kind = "keyed"
        elif SIGN in cols:
            kind, keys = "keyless", ()
        elif "__op" in cols and "__lsn" in cols:
            kind, keys = "append", ()
        else:
            raise ApplyError("the table exists and was not made by this destination (no __wallaby_deleted,"
                             " __wallaby_sign or __op column); drop it or choose another database/table")
        data = {n: t for n, t in cols.items() if n not in INTERNAL and not (kind == "append" and n in
                                                                             dict(APPEND_COLS))}
        return DestTable(kind, data, keys)

    def _col_type(self, c: Column, key: bool) -> str:
        t = clickhouse_type(c, self._mappings)
        return t if key else nullable(t)

    def _kind(self, p: _Pending) -> str:
        if self._append:
            return "append"
        return "keyed" if p.table.replica_identity != "f" and p.table.key_names else "keyless"

    def _default(self, c: Column, type_sql: str) -> str:
        """`` DEFAULT <the value Postgres reads for older rows>`` of a column added with a constant default: the rows
        already there read it (ClickHouse fills a column added with a default without rewriting them)."""
        literal = self._fill_literal(c, type_sql) if c.missing is not None else "NULL"
        return "" if literal == "NULL" else f" DEFAULT {literal}"

    def _fill_literal(self, c: Column, type_sql: str) -> str:
        """The value Postgres reads for column ``c`` in rows older than it (``fill_value``) as a ClickHouse literal
        for a column of ``type_sql``; NULL when ClickHouse cannot be given it (logged)."""
        from clickhouse_connect.driver.binding import format_query_value

        value = fill_value(c)[0].as_py()
        if value is None:
            return "NULL"
        if is_string(type_sql) and not isinstance(value, (str, bytes)):
            value = str(value)  # time, interval, ... as the text the rows get (DuckDB's text of the value)
        try:
            return format_query_value(value)
        except Exception:
            log.warning("destination %r: column %s added with a default ClickHouse cannot be given (%r): the rows"
                        " already there read NULL for it", self.name, c.name, value)
            return "NULL"

    def _ensure_table(self, p: _Pending, columns: dict[str, Column]) -> DestTable:
        dest = self._tables.get(p.dest)
        if dest is None:
            dest = self._load_dest(p.dest)
        qt = self._qt(p.dest)
        kind = self._kind(p)
        keys = tuple(p.table.key_names) if kind == "keyed" else ()
        changed = False
        if dest is None:
            if kind == "append":
                clash = [c for c in columns if c in dict(APPEND_COLS)]
                if clash:
                    raise ApplyError(f"source columns {clash} clash with append mode's columns"
                                     f" {[c for c, _ in APPEND_COLS]}")
            clash = [c for c in columns if c in INTERNAL]
            if clash:
                raise ApplyError(f"source columns {clash} clash with the destination's columns {sorted(INTERNAL)}")
            for k in keys:
                if k not in columns:
                    raise ApplyError(f"key column {k!r} is missing from the changes")
            defs = [(n, self._col_type(c, n in keys)) for n, c in columns.items()]
            if kind == "keyed":
                defs += list(KEYED_COLS)
                tail = (f", {qi(VERSION)} UInt128 MATERIALIZED bitShiftLeft(toUInt128({qi(LSN)}), 64) + {qi(ORD)})"
                        f" ENGINE = ReplacingMergeTree({qi(VERSION)}, {qi(DELETED)})"
                        f" ORDER BY ({', '.join(qi(k) for k in keys)})")
            elif kind == "keyless":
                defs += list(KEYLESS_COLS)
                tail = f") ENGINE = ReplacingMergeTree ORDER BY ({qi(LSN)}, {qi(ORD)}, {qi(SIGN)})"
            else:
                defs += list(APPEND_COLS)
                tail = ") ENGINE = ReplacingMergeTree ORDER BY (`__lsn`, `__ord`)"
            self._cmd(f"CREATE DATABASE IF NOT EXISTS {qi(p.dest[0])}")
            body = ", ".join(f"{qi(n)} {t}" for n, t in defs)
            self._cmd(f"CREATE TABLE IF NOT EXISTS {qt} ({body}{tail}")
            log.info("destination %r: created %s (%s)", self.name, qt, kind, extra={"flow": self.flow_id})
            dest = self._load_dest(p.dest)
            if dest is None:
                raise ApplyError("the table was created but ClickHouse does not list its columns")
            previous = list(columns)
            changed = True
        else:
            if dest.kind != kind:
                raise ApplyError(
                    f"the table is a {dest.kind} table but the changes are {kind} ("
                    + ("write_mode" if "append" in (kind, dest.kind) else "the source table's key / replica"
                       " identity") + " changed); drop the ClickHouse table and backfill it, or write to another"
                    " table")
            if kind == "keyed" and dest.keys != keys:
                raise ApplyError(f"the table is ordered by the key {list(dest.keys)} but the source table's key is"
                                 f" now {list(keys)}; drop the ClickHouse table and backfill it")
            previous = (self._previous_source_columns(p) or []) if self.options.drop_columns else []
            if p.dest not in self._source_cols:  # the writer's first apply to the table: the types as recorded
                for c in self._meta_columns(p) or []:
                    self._applied_types.setdefault((p.dest, c["name"]), c.get("pg_type"))
            for c in self._reappeared(p, columns, dest.columns):  # dropped and added again: set in older rows
                if c.name not in keys and c.name not in INTERNAL:
                    self._cmd(f"ALTER TABLE {qt} UPDATE {qi(c.name)} = {self._fill_literal(c, dest.columns[c.name])}"
                              " WHERE 1", settings={"mutations_sync": 2})
            for name, c in columns.items():
                want = self._col_type(c, name in keys)
                have = dest.columns.get(name)
                if name in INTERNAL:
                    raise ApplyError(f"source column {name!r} clashes with the destination's columns")
                if have is None:
                    self._cmd(f"ALTER TABLE {qt} ADD COLUMN {qi(name)} {want}{self._default(c, want)}")
                    changed = True
                elif widens(have, want) and name not in keys:
                    self._cmd(f"ALTER TABLE {qt} MODIFY COLUMN {qi(name)} {want}", settings={"mutations_sync": 2})
                    log.info("destination %r: %s.%s widened from %s to %s", self.name, qt, name, have, want,
                             extra={"flow": self.flow_id})
                    changed = True
                elif canonical_type(bare(want)) != canonical_type(bare(have)):
                    before = self._applied_types.get((p.dest, name))
                    if before is not None and before != c.type_name:
                        raise RetypeError(
                            f"column {name!r} changed type at the source from {before} to {c.type_name}; ClickHouse"
                            f" does not change a {have} column to {want} in place (only to a wider type, not in the"
                            f" key). Map {c.type_name} to a type both fit with the destination option type_mappings,"
                            " or drop the ClickHouse table and backfill it", name)
                    if (p.dest, name, want) not in self._warned:
                        self._warned.add((p.dest, name, want))
                        log.warning("destination %r: %s.%s is %s in ClickHouse, the source type now maps to %s;"
                                    " values are converted", self.name, qt, name, have, want)
            if changed:
                dest = self._load_dest(p.dest)
                assert dest is not None
        if self.options.drop_columns:
            now = {c.name for c in p.table.columns}
            p.gone = [c for c in previous if c not in now and c in dest.columns and c not in dest.keys]
            if p.gone:
                for name in p.gone:
                    self._cmd(f"ALTER TABLE {qt} DROP COLUMN IF EXISTS {qi(name)}", settings={"mutations_sync": 2})
                    log.info("destination %r: %s.%s dropped (dropped at the source; drop_columns=true)", self.name,
                             qt, name, extra={"flow": self.flow_id})
                dest = self._load_dest(p.dest)
                assert dest is not None
                changed = True
        view = tuple(c for c in dest.columns if dest.kind == "keyed" or c in columns)
        if changed or (dest.kind != "append" and view != self._views.get(p.dest)):
            if dest.kind != "append":
                self._make_view(p.dest, dest, view)
                self._views[p.dest] = view
            dest.load = None if changed else dest.load
        old = self._tables.get(p.dest)
        if old is not None and not changed:
            dest.guard, dest.load = old.guard, old.load
        self._tables[p.dest] = dest
        if self.options.meta_table_enabled:
            self._record_meta(p, dest, changed)
        return dest

    def _make_view(self, dest: tuple[str, str], t: DestTable, columns: tuple[str, ...]) -> None:
        """``<table>__current``: the rows the table holds now (docs/destinations.md "ClickHouse"); a keyless table's
        rows are told apart by the source's columns (a column dropped at the source is not in its view)."""
        qt = self._qt(dest)
        view = f"{qi(dest[0])}.{qi(dest[1] + VIEW_SUFFIX)}"
        cols = ", ".join(qi(c) for c in columns)
        if t.kind == "keyed":
            sql = f"SELECT {cols} FROM {qt} FINAL WHERE {qi(DELETED)} = 0"
        else:
            sql = (f"SELECT {cols} FROM (SELECT {cols}, sum({qi(SIGN)}) AS __wallaby_n FROM {qt} FINAL GROUP BY"
                   f" {cols}) ARRAY JOIN range(toUInt64(greatest(__wallaby_n, 0))) AS __wallaby_copy")
        self._cmd(f"CREATE OR REPLACE VIEW {view} AS {sql}")

    def _meta_columns(self, p: _Pending) -> list[dict] | None:
        if not self.options.meta_table_enabled:
            return None
        rows = self._rows(f"SELECT columns_json FROM {self._meta} WHERE flow_id = {{f:String}} AND source_schema ="
                          " {s:String} AND source_table = {t:String} AND dest_database = {dd:String} AND dest_table ="
                          " {dt:String} ORDER BY updated_at DESC LIMIT 1",
                          {"f": self.flow_id, "s": p.table.schema, "t": p.table.name, "dd": p.dest[0],
                           "dt": p.dest[1]})
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    def _record_meta(self, p: _Pending, dest: DestTable, changed: bool) -> None:
        t = p.table
        key = (t.schema, t.name, p.dest[0], p.dest[1])
        cols_json = json.dumps([{"name": c.name, "pg_type": c.type_name, "clickhouse_type": dest.columns.get(c.name),
                                 "key": c.key, "nullable": c.nullable} for c in t.columns])
        if not changed and self._meta_seen.get(key) == (t.version, cols_json):
            return
        if not changed and self._meta_columns(p) == json.loads(cols_json):
            self._meta_seen[key] = (t.version, cols_json)
            return
        self._client.insert(META, [[self.flow_id, t.schema, t.name, json.dumps(list(t.key_names)), p.dest[0],
                                    p.dest[1], t.version, self.options.write_mode, ",".join(t.key_names), cols_json,
                                    dt.datetime.now(dt.UTC)]], database=self._dsn.database,
                            column_names=["flow_id", "source_schema", "source_table", "key_json", "dest_database",
                                          "dest_table", "schema_version", "write_mode", "primary_key", "columns_json",
                                          "updated_at"])
        self._meta_seen[key] = (t.version, cols_json)

    # ------------------------------------------------------------------ rows

    def _apply_rows(self, p: _Pending) -> None:
        segs = [i for i in p.items if isinstance(i, TableChanges)]
        columns = self._columns_of(p.table, segs)
        dest = self._ensure_table(p, columns)
        if p.gone:
            columns = {n: c for n, c in columns.items() if n not in p.gone}
            p.gone = []
        qt = self._qt(p.dest)
        if p.truncate:
            self._cmd(f"TRUNCATE TABLE {qt}")
        if not p.items:
            return
        src = merge_pending(p.table, p.items, columns, self._append, duckdb_infinity=False)
        if src.num_rows == 0:
            return
        self._check_decimals(p, dest, src)
        self.stats["applied_rows"] += src.num_rows
        self._duck.register("__wallaby_src", src)
        if dest.kind == "append":
            self._apply_append(p, dest, src, columns)
        elif dest.kind == "keyed":
            reads = pc.equal(src.column(OP_COL), OP_READ)
            n = pc.sum(reads).as_py() or 0
            if 0 < n < src.num_rows:
                # a backfill's rows and the stream's changes apart: each keeps its own version (the snapshot's
                # position, the change's), so the newer state wins whatever order they came in
                for part in (src.filter(reads), src.filter(pc.invert(reads))):
                    self._duck.unregister("__wallaby_src")
                    self._duck.register("__wallaby_src", part)
                    self._apply_keyed(p, dest, part, columns)
            else:
                self._apply_keyed(p, dest, src, columns)
        else:
            self._apply_keyless(p, dest, src, columns)

    def _check_decimals(self, p: _Pending, dest: DestTable, src: pa.Table) -> None:
        """A numeric column with NaN or +-Infinity in the epoch arrives as text; a Decimal column cannot hold those
        (ClickHouse would read them as NULL): the epoch fails, naming the column and the fix."""
        for f in src.schema:
            have = dest.columns.get(f.name)
            if have is None or not bare(have).startswith("Decimal") or not pa.types.is_string(f.type):
                continue
            values = src.column(f.name)
            bad = pc.invert(pc.match_substring_regex(values, r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"))
            if pc.any(bad).as_py():
                shown = pc.filter(values, pc.fill_null(bad, False))[0].as_py()
                pg = p.table.column(f.name).type_name if f.name in p.table.column_names else "numeric"
                raise ApplyError(
                    f"column {f.name!r} is {have} in ClickHouse but the source sent {shown!r} for it, which a Decimal"
                    " cannot hold (numeric 'NaN' / 'Infinity'); the flow stops before this epoch's high-water. Map the"
                    f' type to String with the destination option type_mappings, e.g. {{"{pg}": "String"}}, and'
                    f" alter or recreate the column (ALTER TABLE ... MODIFY COLUMN {f.name} Nullable(String))")

    def _val(self, src: pa.Table, dest: DestTable, name: str, expr: str) -> str:
        """A value of the changes (a DuckDB expression) as the ClickHouse column takes it from Arrow: text for
        String columns of other source types (time, interval, a numeric mapped to String)."""
        t = dest.columns[name]
        i = src.schema.get_field_index(name)
        at = src.schema.field(i).type if i >= 0 else pa.string()
        if is_string(t) and not (pa.types.is_string(at) or pa.types.is_large_string(at) or pa.types.is_binary(at)
                                 or pa.types.is_large_binary(at)):
            return f"CAST({expr} AS VARCHAR)"
        return expr

    def _insert(self, table: str, database: str, rows: pa.Table) -> None:
        self._client.insert_arrow(table, _clamp(rows), database=database)

    def _apply_keyed(self, p: _Pending, dest: DestTable, src: pa.Table, columns: dict[str, Column]) -> None:
        keys = dest.keys
        names = list(columns)
        if self._arrow_only(src, dest, columns):
            self._insert(p.dest[1], p.dest[0], _final_mentions(src, names, keys))
            return
        try:
            red = reduce_keyed(self._duck, src, columns, keys, list(dest.columns))
        except ReduceError as exc:
            raise ApplyError(exc.message) from None
        pos = f"s.{dq('__lsn')} AS {dq(LSN)}, s.{dq('__ord')} AS {dq(ORD)}"
        try:
            if not red.resolve:
                sel = [f"f.{dq(k)} AS {dq(k)}" for k in keys]
                sel += [f"CASE WHEN f.__set THEN {self._val(src, dest, c, 's.' + dq(c))} END AS {dq(c)}"
                        for c in names if c not in keys]
                out = self._duck.execute(
                    f"SELECT {', '.join(sel)}, {pos}, CAST(NOT f.__set AS UTINYINT) AS {dq(DELETED)}"
                    f" FROM __wallaby_f AS f JOIN __wallaby_src AS s ON s.{SEQ_COL} = f.{SEQ_COL}").fetch_arrow_table()
                self._insert(p.dest[1], p.dest[0], out)
                return
            self._apply_kept(p, dest, src, columns, red)
        finally:
            red.drop(self._duck)

    def _arrow_only(self, src: pa.Table, dest: DestTable, columns: dict[str, Column]) -> bool:
        """Whether the epoch carries every value of its rows as ClickHouse takes them from Arrow: no unchanged TOAST
        value, no column only ClickHouse has, no value to turn into text (time, interval, ...): then the final
        mention of every key is found in Arrow (:func:`_final_mentions`), without the DuckDB reduction."""
        if any(c not in columns for c in dest.columns) or unchanged_names(src):
            return False
        return self._plain(src, dest, columns)

    def _plain(self, src: pa.Table, dest: DestTable, columns: dict[str, Column]) -> bool:
        """Whether ClickHouse takes every value of ``src`` as Arrow holds it (no text conversion, :meth:`_val`)."""
        return all(self._val(src, dest, c, "x") == "x" for c in columns)

    def _apply_kept(self, p: _Pending, dest: DestTable, src: pa.Table, columns: dict[str, Column], red) -> None:
        """Keyed rows some of whose values ClickHouse holds (unchanged TOAST, columns only ClickHouse has): through
        the load table, one INSERT ... SELECT joining what the table holds under the rows' earlier keys."""
        keys = dest.keys
        names = list(columns)
        idx = {n: i for i, n in enumerate(dest.columns)}
        sel = [f"f.{dq(k)} AS C{idx[k]}" for k in keys]
        for c in names:
            if c in keys:
                continue
            if c in red.toast:
                sel.append(f"{self._val(src, dest, c, 'r.' + dq(VALUE + c))} AS C{idx[c]}")
                sel.append(f"CAST(coalesce(r.{dq(KEEP + c)}, false) AS UTINYINT) AS K{idx[c]}")
            else:
                sel.append(f"{self._val(src, dest, c, 'r.' + dq(c))} AS C{idx[c]}")
        sel += [f"CAST(coalesce(r.{dq(KEEP + c)}, false) AS UTINYINT) AS K{idx[c]}" for c in red.extra]
        sel += [f"r.{dq(FROM + k)} AS F{idx[k]}" for k in keys]
        on = " AND ".join(f"r.{dq(k)} = f.{dq(k)}" for k in keys)
        out = self._duck.execute(
            f"SELECT {', '.join(sel)}, s.__lsn AS __lsn, s.__ord AS __ord, CAST(f.__set AS UTINYINT) AS __set"
            f" FROM __wallaby_f AS f JOIN __wallaby_src AS s ON s.{SEQ_COL} = f.{SEQ_COL}"
            f" LEFT JOIN __wallaby_red AS r ON {on}").fetch_arrow_table()
        load = self._load_table(p, dest, keys)
        self._cmd(f"TRUNCATE TABLE {load}")
        self._client.insert_arrow(load.split(".", 1)[1].strip("`"), _clamp(out), database=self._dsn.database)
        qt = self._qt(p.dest)
        kept = [*red.toast, *red.extra]
        vals = []
        cols = [*names, *red.extra]
        for c in cols:
            if c in kept:
                vals.append(f"if(l.K{idx[c]} = 1 AND l.__set = 1, o.{qi(c)}, l.C{idx[c]})")
            else:
                vals.append(f"l.C{idx[c]}")
        inner_cols = ", ".join(qi(c) for c in [*keys, *kept])
        fkeys = ", ".join(f"assumeNotNull(F{idx[k]})" for k in keys)
        tkeys = ", ".join(qi(k) for k in keys)
        on = " AND ".join(f"o.{qi(k)} = l.F{idx[k]}" for k in keys)
        where = ""
        guard = self._guard(p, dest)
        if guard is not None:
            lkeys = ", ".join(f"l.C{idx[k]}" for k in keys)
            where = (f" WHERE ({lkeys}, bitShiftLeft(toUInt128(l.__lsn), 64) + l.__ord) NOT IN (SELECT {tkeys},"
                     f" {qi(VERSION)} FROM {qt} WHERE {qi(VERSION)} > {self._hw_version()})")
        self._cmd(
            f"INSERT INTO {qt} ({', '.join(qi(c) for c in cols)}, {qi(LSN)}, {qi(ORD)}, {qi(DELETED)})"
            f" SELECT {', '.join(vals)}, l.__lsn, l.__ord, 1 - l.__set FROM {load} AS l"
            f" LEFT JOIN (SELECT {inner_cols} FROM {qt} FINAL WHERE ({tkeys}) IN (SELECT {fkeys} FROM {load}"
            f" WHERE F{idx[keys[0]]} IS NOT NULL)) AS o ON {on}{where}",
            settings={"join_use_nulls": 1})

    def _hw_version(self) -> int:
        return (self._hw.stored.lsn << 64) + self._hw.stored.ordinal

    def _guard(self, p: _Pending, dest: DestTable) -> int | None:
        """The highest version the table held above the stored high-water when this writer met it, while the
        changes applied are at or below it (a replay: rows ClickHouse holds are not inserted again); else None."""
        if dest.guard is None:
            got = self._rows(f"SELECT max({qi(VERSION)}) FROM {self._qt(p.dest)}")
            dest.guard = int(got[0][0] or 0) if got else 0
        if dest.guard <= self._hw_version():
            return None
        first = min(i.first for i in p.items if isinstance(i, TableChanges))
        if ((first.lsn << 64) + first.ordinal) > dest.guard:
            dest.guard = 0
            return None
        return dest.guard

    def _load_table(self, p: _Pending, dest: DestTable, keys: tuple[str, ...]) -> str:
        if dest.load is not None:
            return dest.load
        h = hashlib.sha1(json.dumps([self.flow_id, self.name, *p.dest]).encode()).hexdigest()[:16]
        load = f"{qi(self._dsn.database)}.{qi('__wallaby_load_' + h)}"
        defs = []
        for i, (n, t) in enumerate(dest.columns.items()):
            defs.append(f"C{i} {nullable(bare(t)) if not t.startswith('Array(') else t}")
            defs.append(f"K{i} UInt8")
            if n in keys:
                defs.append(f"F{i} {nullable(bare(t))}")
        defs += ["__lsn UInt64", "__ord UInt64", "__set UInt8"]
        self._cmd(f"CREATE OR REPLACE TABLE {load} ({', '.join(defs)}) ENGINE = Memory")
        dest.load = load
        return load

    def _apply_keyless(self, p: _Pending, dest: DestTable, src: pa.Table, columns: dict[str, Column]) -> None:
        names = list(columns)
        ops = set(pc.unique(src.column(OP_COL)).to_pylist())
        has_before = src.schema.get_field_index(BEFORE_PREFIX + names[0]) >= 0
        if ops & {"update", "delete"} and not has_before:
            raise ApplyError("updates or deletes without a before image on a table without a replica-identity key;"
                             " set REPLICA IDENTITY FULL (or add a primary key) on the source table")

        def after(c: str) -> str:
            if has_before:
                return (f"CASE WHEN coalesce(list_contains({UNCHANGED_COL}, {dlit(c)}), false)"
                        f" THEN {dq(BEFORE_PREFIX + c)} ELSE {dq(c)} END")
            return dq(c)

        if self._plain(src, dest, columns) and not unchanged_names(src):  # nothing to compute: Arrow alone
            sign = pa.int8()
            adds = src.filter(pc.not_equal(src.column(OP_COL), OP_DELETE))
            parts = [pa.table({**{c: adds.column(c) for c in names}, LSN: adds.column("__lsn"),
                               ORD: adds.column("__ord"), SIGN: pa.array([1] * adds.num_rows, sign)})]
            if ops & {"update", "delete"}:
                dels = src.filter(pc.is_in(src.column(OP_COL), pa.array(["update", "delete"])))
                parts.append(pa.table({**{c: dels.column(BEFORE_PREFIX + c) for c in names},
                                       LSN: dels.column("__lsn"), ORD: dels.column("__ord"),
                                       SIGN: pa.array([-1] * dels.num_rows, sign)}))
            self._insert(p.dest[1], p.dest[0], pa.concat_tables(parts) if len(parts) > 1 else parts[0])
            return
        adds = ", ".join(f"{self._val(src, dest, c, after(c))} AS {dq(c)}" for c in names)
        sql = (f"SELECT {adds}, __lsn AS {dq(LSN)}, __ord AS {dq(ORD)}, CAST(1 AS TINYINT) AS {dq(SIGN)}"
               f" FROM __wallaby_src WHERE {OP_COL} <> 'delete'")
        if ops & {"update", "delete"}:
            dels = ", ".join(f"{self._val(src, dest, c, dq(BEFORE_PREFIX + c))} AS {dq(c)}" for c in names)
            sql += (f" UNION ALL SELECT {dels}, __lsn, __ord, CAST(-1 AS TINYINT) FROM __wallaby_src"
                    f" WHERE {OP_COL} IN ('update', 'delete')")
        self._insert(p.dest[1], p.dest[0], self._duck.execute(sql).fetch_arrow_table())

    def _apply_append(self, p: _Pending, dest: DestTable, src: pa.Table, columns: dict[str, Column]) -> None:
        names = list(columns)

        def value(c: str) -> str:
            if src.schema.get_field_index(BEFORE_PREFIX + c) >= 0:
                return f"CASE WHEN {OP_COL} = 'delete' THEN {dq(BEFORE_PREFIX + c)} ELSE {dq(c)} END"
            return dq(c)

        if self._plain(src, dest, columns):  # nothing to compute: Arrow alone (merge_pending keeps WAL order)
            deleted = pc.equal(src.column(OP_COL), OP_DELETE)
            cols = {}
            for c in names:
                b = BEFORE_PREFIX + c
                cols[c] = pc.if_else(deleted, src.column(b), src.column(c)) \
                    if src.schema.get_field_index(b) >= 0 else src.column(c)
            self._insert(p.dest[1], p.dest[0], pa.table({**cols, **{m: src.column(m) for m, _ in APPEND_COLS}}))
            return
        sel = ", ".join(f"{self._val(src, dest, c, value(c))} AS {dq(c)}" for c in names)
        out = self._duck.execute(f"SELECT {sel}, __op, __lsn, __ord, __ts FROM __wallaby_src"
                                 f" ORDER BY {SEQ_COL}").fetch_arrow_table()
        self._insert(p.dest[1], p.dest[0], out)


def _final_mentions(src: pa.Table, names: list[str], keys: tuple[str, ...]) -> pa.Table:
    """The rows a keyed table gets for ``src`` when every value is in it (``_arrow_only``): the epoch reduction in
    Arrow. Each change mentions keys (its new key with its values; a delete, and the old key of a key change, a
    tombstone); the last mention of every key (``__seq``) is its row, at the position of that change."""
    ops = src.column(OP_COL)
    has_before = src.schema.get_field_index(BEFORE_PREFIX + keys[0]) >= 0
    data = [c for c in names if c not in keys]

    def mentions(rows: pa.Table, key_of, tomb: pa.ChunkedArray) -> pa.Table:
        out = {k: key_of(rows, k) for k in keys}
        for c in data:
            v = rows.column(c)
            out[c] = pc.if_else(tomb, pa.nulls(len(v), v.type), v)
        out[LSN], out[ORD], out[SEQ_COL] = rows.column("__lsn"), rows.column("__ord"), rows.column(SEQ_COL)
        out[DELETED] = pc.cast(tomb, pa.uint8())
        return pa.table(out)

    def new_key(rows: pa.Table, k: str) -> pa.ChunkedArray:
        if not has_before:
            return rows.column(k)
        return pc.if_else(pc.equal(rows.column(OP_COL), OP_DELETE), rows.column(BEFORE_PREFIX + k), rows.column(k))

    parts = [mentions(src, new_key, pc.equal(ops, OP_DELETE))]
    if has_before:
        moved = pc.and_(pc.equal(ops, "update"), pc.is_valid(src.column(BEFORE_PREFIX + keys[0])))
        differs = None
        for k in keys:
            d = pc.fill_null(pc.not_equal(src.column(BEFORE_PREFIX + k), src.column(k)), True)
            differs = d if differs is None else pc.or_(differs, d)
        moved = pc.and_(moved, differs)
        if pc.any(moved).as_py():
            old = src.filter(moved)
            parts.append(mentions(old, lambda rows, k: rows.column(BEFORE_PREFIX + k),
                                  pa.chunked_array([pa.array([True] * old.num_rows, pa.bool_())])))
    allm = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    # the last mention of every key: sorted by key then __seq, the last row of each key's run
    order = pc.sort_indices(allm, sort_keys=[*((k, "ascending") for k in keys), (SEQ_COL, "ascending")])
    n = len(order)
    if n > 1:
        sorted_keys = [pc.take(allm.column(k), order) for k in keys]
        ends = None
        for col in sorted_keys:
            d = pc.not_equal(col.slice(1), col.slice(0, n - 1))
            ends = d if ends is None else pc.or_(ends, d)
        last = pa.concat_arrays([a for a in pc.fill_null(ends, True).chunks] + [pa.array([True])]) \
            if isinstance(ends, pa.ChunkedArray) else pa.concat_arrays([ends, pa.array([True])])
        order = pc.filter(order, last)
    return allm.take(order).select([*keys, *data, LSN, ORD, DELETED])


def _clamp(table: pa.Table) -> pa.Table:
    """Dates and timestamps outside what ClickHouse's Date32 / DateTime64 hold (and Postgres' -infinity /
    +infinity) on the nearest end of the range: 1900-01-01 and 2299-12-31 (23:59:59.999999)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_date32(f.type):
            ints, lo, hi = table.column(i).cast(pa.int32()), DATE_MIN, DATE_MAX
        elif pa.types.is_timestamp(f.type) and f.type.unit == "us" and f.name != "__ts":
            ints, lo, hi = table.column(i).cast(pa.int64()), TS_MIN, TS_MAX
        else:
            continue
        if ints.null_count == len(ints):
            continue
        mn, mx = pc.min_max(ints).values()
        if mn.as_py() >= lo and mx.as_py() <= hi:
            continue
        fixed = pc.max_element_wise(pc.min_element_wise(ints, pa.scalar(hi, ints.type), skip_nulls=False),
                                    pa.scalar(lo, ints.type), skip_nulls=False)
        table = table.set_column(i, f, fixed.cast(f.type))
    return table


__all__ = ["APPEND_COLS", "VIEW_SUFFIX", "ClickHouseWriter", "discard_position", "make_sink", "stored_position"]
