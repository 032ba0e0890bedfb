"""DuckDB destination: apply a flow's changes to tables in a DuckDB file.

Options are :class:`DuckDBOptions` (spec/USAGE.md, "DuckDB Destination"); the
bytewax sink is :func:`duckdb_sink`, the writer :class:`DuckDBWriter`.

Tables
    A source table ``schema.name`` lands in ``<schema option or schema>.<table
    option or name>``; schema and table are created on first sight with the
    types of :mod:`sinks.duckdb_types` (plus ``type_mappings``). Setting
    ``table`` sends *every* source table to that one table: only sensible for a
    flow with one source table. Columns a later source schema version adds are
    added with ``ALTER TABLE ADD COLUMN``; columns dropped at the source stay in
    DuckDB (rows inserted afterwards hold NULL there, updated rows keep their
    value). A column whose source type changes keeps its DuckDB type; values
    are cast to it, and a value that does not fit is an error. No primary key is
    declared: DuckDB's ART index makes the set-based delete+insert below several
    times slower, so rows are matched on the replica-identity key instead.

Delivery (exactly once)
    ``write()`` buffers the epoch's row segments per destination table (a
    truncate drops what was buffered before it for that table: the table is
    emptied first). ``commit()`` opens one DuckDB transaction, applies every
    table's buffered changes with a handful of set-based statements, upserts
    the high-water position into ``main.__wallaby_state`` and commits. When the
    buffer passes ``max_buffer_rows`` / ``max_buffer_bytes`` it is applied early
    inside the still-open transaction, and once a transaction holds
    ``max_tx_bytes`` of changes it is committed early (with the high-water
    position of what it holds), so memory stays bounded while a backlog is
    caught up; an epoch may then become visible in parts. On start the writer reads the stored
    high-water and skips every change at or below it (a replay after a crash
    between the DuckDB commit and bytewax's recovery commit).

Apply, ``write_mode=target``, tables with a key (replica identity default/index)
    The epoch's segments of a table become one Arrow table ``src`` (registered
    with the connection, never turned into rows) with a ``__seq`` column (WAL
    order). Each change *mentions* keys: inserts/updates the new key (a "set"),
    deletes the old key (an "unset"), an update that changes the key also
    unsets its old key. The final state of a key is decided by its last
    mention, so::

        CREATE TEMP TABLE f AS SELECT k, max(__seq), arg_max(__set, __seq) FROM mentions GROUP BY k;
        DELETE FROM target USING f WHERE target.k = f.k;            -- every touched key
        INSERT INTO target SELECT src.* FROM src JOIN f USING (__seq) WHERE f.__set;

    An epoch of inserts only skips the reduction (its keys are unique):
    ``DELETE ... USING src`` (an insert of a present key upserts) and a plain
    ``INSERT ... SELECT``. Delete+insert beats ``UPDATE`` (DuckDB updates of
    VARCHAR columns are ~5x slower) and ``MERGE``. Unchanged TOAST values (``__unchanged``) and
    target-only columns (dropped at the source) are resolved before the
    delete: per row identity, ``arg_max({'v': col}, __seq) FILTER (WHERE col
    was sent)`` finds the latest sent value in the epoch, else the value stored
    in the target under the identity's original key (a ``LEFT JOIN`` captured
    in a temp table). When keys change inside the epoch, row identities are
    followed across keys by parent pointers (the latest earlier "set" of the
    update's old key) collapsed with pointer jumping (log2 of the chain length
    ``UPDATE`` statements).

Apply, REPLICA IDENTITY FULL or no key
    Rows are a multiset. Each insert adds its row, each delete removes its
    before image, an update does both (unchanged TOAST values are taken from
    the before image). The net count per distinct row (``GROUP BY`` all
    columns ``HAVING sum(w) <> 0``) is applied: surplus copies inserted,
    missing ones deleted by ``rowid`` from the rows matching ``IS NOT DISTINCT
    FROM`` on every column (``row_number() OVER (PARTITION BY group ORDER BY
    rowid) <= n``). Since every delete in the WAL removes an existing row, the
    order inside the epoch does not change the result.

Apply, ``write_mode=append``
    Every change is one row: the table's columns (the before image for
    deletes) plus ``__op``, ``__lsn``, ``__ord``, ``__ts``; a truncate is a row
    with ``__op='truncate'`` and NULL columns. Unchanged TOAST values are NULL
    (add the TOAST rehydration operator to fill them).

Types: every value is ``CAST`` to its DuckDB column type in SQL. Postgres
``-infinity`` dates/timestamps (INT32_MIN days / INT64_MIN µs in Arrow) become
DuckDB's ``-infinity`` (MIN + 1); ``+infinity`` is the same bit pattern in both.
Inside arrays they are not translated.

Events: truncate empties the table (target mode); ddl and logical messages are
ignored by this sink. Errors are :class:`~sinks.base.PermanentSinkError`
naming the destination and table; the DSN is shown only when it is a plain path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sinks.base import PermanentSinkError, Writer, WriterSink
from sinks.duckdb_types import duckdb_type
from wallaby.changes import (
    BEFORE_PREFIX,
    LSN_COL,
    OP_COL,
    OP_DDL,
    OP_DELETE,
    OP_MESSAGE,
    OP_TRUNCATE,
    OP_UPDATE,
    ORD_COL,
    TS_COL,
    UNCHANGED_COL,
    ZERO,
    ChangeBatch,
    Column,
    Event,
    Position,
    TableChanges,
    TableSchema,
)

log = logging.getLogger("wallaby.sinks.duckdb")

# DuckDB's own memory cap for file databases (it spills to its .tmp directory beyond it for most
# operations; DuckDB's default is 80% of RAM). Measured with the benchmark (one worker catching up
# 1M narrow changes, batches of at most 8 MiB from the source, transactions of at most
# DUCKDB_MAX_TX_BYTES): peak RSS 358 MB with 64MB, 408 MB with 128MB, same rate; wide (~5 KB)
# rows: 429 MB with 64MB (they needed more than 64MB when a batch was 10000 rows of any size).
# Raise it with WALLABY_DUCKDB_MEMORY_LIMIT for very large values or many tables per epoch.
DUCKDB_MEMORY_LIMIT = os.environ.get("WALLABY_DUCKDB_MEMORY_LIMIT", "64MB")
# Changes applied in one DuckDB transaction before it is committed, even mid-epoch. DuckDB holds a
# transaction's new rows in memory until COMMIT; an epoch of a catching-up worker can be hundreds of
# MB. Committing early is safe: the high-water position is stored in the same transaction, so a replay
# after a crash skips what was committed (the slot is still confirmed only at the epoch's snapshot).
# Measured (1M narrow changes): peak RSS 413 -> 358 MB with the allocator settings of
# wallaby/runtime.py; 200k wide changes 850-920 -> 429 MB and 13.8k -> 19k changes/s.
# WALLABY_DUCKDB_MAX_TX_BYTES sets it (0: one transaction per epoch).
DUCKDB_MAX_TX_BYTES = int(os.environ.get("WALLABY_DUCKDB_MAX_TX_BYTES", str(32 << 20)) or 0) or (1 << 62)
# DuckDB checkpoints (rewrites its log into the table file, compressing every column) when the log
# passes checkpoint_threshold, default 16MB: an epoch of wide rows writes more than that, so every
# commit checkpointed and wrote the data twice. Measured (100k ~5 KB rows): COMMIT was 85-90% of the
# sink's time; with 1GB the catch-up took 10.7-11.4 s instead of 16.4-36.7 s. DuckDB still
# checkpoints at 1GB of log and when the worker stops. WALLABY_DUCKDB_CHECKPOINT_THRESHOLD sets it.
DUCKDB_CHECKPOINT_THRESHOLD = os.environ.get("WALLABY_DUCKDB_CHECKPOINT_THRESHOLD", "1GB")
# DuckDB's worker threads. One by default: the apply is a few set-based statements per epoch,
# each thread keeps its own buffers, and the worker's other core belongs to the walsender and
# the source. Measured (`make bench`, narrow, 500k backlog): 1 thread 115k changes/s at 390 MB
# peak RSS; DuckDB's default (one per core) ~98k/s at ~515 MB. 0 = DuckDB's default.
DUCKDB_THREADS = int(os.environ.get("WALLABY_DUCKDB_THREADS", "1") or 0)
# A DuckDB file is open in one process at a time. When a flow's worker is replaced (restart, takeover), the new one
# waits this long for the old one to let go of the file.
DUCKDB_LOCK_WAIT = float(os.environ.get("WALLABY_DUCKDB_LOCK_WAIT", "60") or 0)


def _connect(dsn: str, config: dict) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + DUCKDB_LOCK_WAIT
    delay = 0.1
    while True:
        try:
            return duckdb.connect(dsn, config=config)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() + delay > deadline:
                raise
            log.info("DuckDB %s is held by another process; waiting", _safe_dsn(dsn))
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

STATE_TABLE = "main.__wallaby_state"
META_TABLE = "main.__wallaby_meta"
APPEND_COLS = (("__op", "VARCHAR"), ("__lsn", "UBIGINT"), ("__ord", "UBIGINT"), ("__ts", "TIMESTAMPTZ"))
SEQ_COL = "__seq"

_INT32_MIN = -(2**31)
_INT64_MIN = -(2**63)


# --------------------------------------------------------------------------- options


def _parse_mapping_text(text: str) -> dict[str, str]:
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        value = json.loads(text)
    else:
        try:
            import yaml  # type: ignore[import-untyped]

            value = yaml.safe_load(text)
        except ImportError:  # flat "key: value" lines, the only YAML shape a type map needs
            value = {}
            for raw in text.splitlines():
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                key, sep, val = line.rpartition(":")
                if not sep or not key.strip() or not val.strip():
                    raise ValueError(f"cannot read line {raw!r}; expected 'postgres_type: DUCKDB_TYPE'") from None
                value[key.strip().strip("'\"")] = val.strip().strip("'\"")
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("expected a map of postgres type -> DuckDB type (strings)")
    return value


class DuckDBOptions(BaseModel):
    """Options of a DuckDB destination (spec/USAGE.md, "DuckDB Destination")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dsn: str = Field(min_length=1, description="DuckDB file path (parent directories are created) or ':memory:'")
    schema_name: str | None = Field(
        default=None, alias="schema", min_length=1, description="DuckDB schema; default: the source table's schema"
    )
    table: str | None = Field(
        default=None,
        min_length=1,
        description="DuckDB table; default: the source table's name. When set, every source table of the flow "
        "lands in this one table: only sensible with a single source table.",
    )
    write_mode: Literal["target", "append"] = "target"
    batch_mode: Literal["target", "staging"] = "target"
    batch_resolution: Literal["none", "append", "replace"] = "none"
    staging_schema: str | None = None
    staging_table: str | None = None
    staging_suffix: str = "_staging"
    meta_table_enabled: bool = True
    drop_columns: bool = Field(
        default=False,
        description="drop a DuckDB column when its source column is dropped (after the changes that still carried"
        " it); default: keep it, later rows get NULL",
    )
    type_mappings: dict[str, str] | None = Field(
        default=None, description="postgres type -> DuckDB type overrides (a map, or JSON / YAML text)"
    )
    type_mappings_file: str | None = Field(default=None, description="path of a JSON or YAML type map")

    @field_validator("schema_name", "table", "staging_schema", "staging_table", "type_mappings_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # options arrive as a map<string,string>; an empty value means "not set"
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("type_mappings", mode="before")
    @classmethod
    def _mappings_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _parse_mapping_text(value)
        return value

    @field_validator("type_mappings_file")
    @classmethod
    def _mappings_file_readable(cls, value: str | None) -> str | None:
        if value is not None:
            path = Path(value)
            if not path.is_file():
                raise ValueError(f"type_mappings_file {value!r} is not a readable file")
            _parse_mapping_text(path.read_text())
        return value

    @model_validator(mode="after")
    def _no_staging_yet(self) -> DuckDBOptions:
        if self.batch_mode == "staging":
            raise ValueError(
                "batch_mode='staging' is not supported by the DuckDB destination yet: staging loads land with the "
                "backfill feature; use batch_mode='target' (the default)"
            )
        return self

    def mappings(self) -> dict[str, str]:
        """The type overrides: the file's map, then ``type_mappings`` on top."""
        out: dict[str, str] = {}
        if self.type_mappings_file:
            out.update(_parse_mapping_text(Path(self.type_mappings_file).read_text()))
        out.update(self.type_mappings or {})
        return out


def duckdb_sink(name: str, flow_id: str, options: DuckDBOptions) -> WriterSink:
    """A bytewax sink writing ``flow_id``'s changes to DuckDB as destination ``name``."""
    return WriterSink(name, lambda resume_state: DuckDBWriter(name, flow_id, options, resume_state))


def make_sink(name: str, flow_id: str, options: Any) -> WriterSink:
    """The destination of a flow spec (``wallaby.destination_options.DuckDBDestinationOptions``)."""
    # The flow spec validated every USAGE.md option; the sink takes the ones it applies itself
    # (the metadata options belong to operators, refused by dataflows.flow.check_buildable until they exist).
    fields = set(DuckDBOptions.model_fields) | {"schema"}
    raw = {k: v for k, v in options.model_dump(by_alias=True, exclude_unset=True).items() if k in fields}
    return duckdb_sink(name, flow_id, DuckDBOptions.model_validate(raw))


# --------------------------------------------------------------------------- helpers


# DuckDB reports some types under another name than the one we create them with.
_TYPE_ALIASES = (("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"), ("TIMETZ", "TIME WITH TIME ZONE"), ("REAL", "FLOAT"))


def _canonical(type_sql: str) -> str:
    out = type_sql.upper().replace(" ", "")
    for alias, name in _TYPE_ALIASES:
        out = re.sub(rf"\b{alias}\b", name.replace(" ", ""), out)
    return out


_INT_RANK = {"TINYINT": 1, "SMALLINT": 2, "INTEGER": 3, "BIGINT": 4, "HUGEINT": 5}
_DECIMAL = re.compile(r"DECIMAL\((\d+),(\d+)\)")


def widens(have: str, want: str) -> bool:
    """True when every value of DuckDB type ``have`` fits ``want`` (a source type change DuckDB can follow in
    place: int2 -> int4 -> int8, float4 -> float8, numeric(p,s) to more digits, varchar(n) -> text, ...)."""
    h, w = _canonical(have), _canonical(want)
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


def q(ident: str) -> str:
    """Quote a DuckDB identifier."""
    return '"' + ident.replace('"', '""') + '"'


def lit(text: str) -> str:
    """A DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


def _safe_dsn(dsn: str) -> str:
    """The DSN if it is a plain file path (or :memory:), else a redacted marker."""
    if dsn == ":memory:" or (re.fullmatch(r"[\w./\\ ~+-]+", dsn) and not dsn.startswith(("md:", "motherduck:"))):
        return dsn
    return "<redacted dsn>"


_SEQ_CACHE: list[pa.Array] = [pa.array([], pa.int64())]
_SEQ_LOCK = threading.Lock()


def _seq(n: int) -> pa.Array:
    """0..n-1 as int64, sliced from a cached array (building it per apply costs ~0.2 s per million)."""
    with _SEQ_LOCK:
        have = _SEQ_CACHE[0]
        if len(have) < n:
            have = pa.array(range(max(n, 2 * len(have), 1 << 16)), pa.int64())
            _SEQ_CACHE[0] = have
    return have.slice(0, n)


def _fix_infinity(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    """Postgres -infinity (INT32_MIN days / INT64_MIN µs) -> DuckDB's -infinity (MIN + 1)."""
    t = arr.type
    if pa.types.is_date32(t):
        ints, sentinel = arr.cast(pa.int32()), _INT32_MIN
    elif pa.types.is_timestamp(t):
        ints, sentinel = arr.cast(pa.int64()), _INT64_MIN
    else:
        return arr
    if ints.null_count == len(ints) or pc.min(ints).as_py() != sentinel:
        return arr
    fixed = pc.if_else(pc.equal(ints, pa.scalar(sentinel, ints.type)), pa.scalar(sentinel + 1, ints.type), ints)
    return fixed.cast(t)


@dataclass(slots=True)
class _TruncateMark:
    """A truncate inside an append-mode buffer (becomes one ``__op='truncate'`` row)."""

    position: Position
    commit_ts: int
    xid: int


@dataclass(slots=True)
class _Pending:
    dest: tuple[str, str]
    table: TableSchema  # latest version seen
    truncate: bool = False  # target mode: empty the table before applying items
    items: list[TableChanges | _TruncateMark] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # drop_columns: source columns to drop after the apply


@dataclass(slots=True)
class _DestTable:
    columns: dict[str, str]  # name -> DuckDB type, in table order


class _ApplyError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- writer


class DuckDBWriter(Writer):
    """Applies change batches to DuckDB; one transaction per epoch (see the module docstring)."""

    def __init__(
        self,
        name: str,
        flow_id: str,
        options: DuckDBOptions,
        resume_state: Any = None,
        *,
        max_buffer_rows: int = 200_000,
        max_buffer_bytes: int = 16 << 20,
        max_tx_bytes: int = DUCKDB_MAX_TX_BYTES,
    ):
        if not isinstance(options, DuckDBOptions):
            options = DuckDBOptions.model_validate(options)
        self.name = name
        self.flow_id = flow_id
        self.options = options
        self.max_buffer_rows = max_buffer_rows
        self.max_buffer_bytes = max_buffer_bytes
        self._append = options.write_mode == "append"
        self._mappings = options.mappings()
        self._dsn_shown = _safe_dsn(options.dsn)
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._tx = False
        self._tx_bytes = 0  # changes applied in the open transaction
        self.max_tx_bytes = max_tx_bytes
        self._tables: dict[tuple[str, str], _DestTable] = {}
        self._meta_seen: dict[tuple[str, str, str, str], tuple[int, str]] = {}
        self._source_cols: dict[tuple[str, str], list[str]] = {}  # dest -> source columns of the last apply
        self._warned: set[tuple[tuple[str, str], str, str]] = set()
        self._failed: str | None = None
        self.stats = {"applied_rows": 0, "skipped_rows": 0, "applies": 0}

        dsn = options.dsn
        if dsn != ":memory:" and not dsn.startswith(("md:", "motherduck:")):
            try:
                Path(dsn).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PermanentSinkError(name, f"cannot create the directory of {self._dsn_shown}: {exc}") from None
        try:
            # A file database spills to its .tmp directory past the cap; an in-memory one cannot, so no cap.
            config = {} if dsn == ":memory:" else {"memory_limit": DUCKDB_MEMORY_LIMIT,
                                                   "checkpoint_threshold": DUCKDB_CHECKPOINT_THRESHOLD}
            if DUCKDB_THREADS:
                config["threads"] = DUCKDB_THREADS
            self._con = _connect(dsn, config)
            self._con.execute(
                f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (flow_id VARCHAR NOT NULL, destination VARCHAR NOT NULL,"
                " lsn UBIGINT NOT NULL, ordinal UBIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL)"
            )
            if options.meta_table_enabled:
                self._con.execute(
                    f"CREATE TABLE IF NOT EXISTS {META_TABLE} (flow_id VARCHAR NOT NULL, source_schema VARCHAR,"
                    " source_table VARCHAR, dest_schema VARCHAR, dest_table VARCHAR, schema_version INTEGER,"
                    " write_mode VARCHAR, columns_json JSON, updated_at TIMESTAMPTZ)"
                )
            row = self._con.execute(
                f"SELECT lsn, ordinal FROM {STATE_TABLE} WHERE flow_id = ? AND destination = ?", [flow_id, name]
            ).fetchone()
        except duckdb.Error as exc:
            raise PermanentSinkError(name, f"cannot open DuckDB {self._dsn_shown}: {self._clean(exc)}") from None
        self._stored = Position(int(row[0]), int(row[1])) if row else ZERO
        self._high = self._stored  # everything at or below is in DuckDB (or buffered for this epoch)
        if resume_state and row is None:
            log.info(
                "destination %r: bytewax resume state %s but no high-water in DuckDB; applying what comes",
                name,
                resume_state,
            )

    # ------------------------------------------------------------------ public

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The writer's DuckDB connection (for inspection; do not write through it mid-epoch)."""
        return self._con

    @property
    def high_water(self) -> Position:
        """The position of the last change this writer has taken (committed or buffered)."""
        return self._high

    def write(self, batch: ChangeBatch) -> None:
        self._check_usable()
        hw = self._high
        if batch.position <= hw:  # a replay: everything in it is already applied (or buffered)
            self.stats["skipped_rows"] += len(batch)
            return
        for seg in batch.segments:
            if isinstance(seg, TableChanges):
                self._take_rows(seg, hw)
            elif seg.position > hw:
                self._take_event(seg)
        self._high = batch.position
        if self._buffered_rows >= self.max_buffer_rows or self._buffered_bytes >= self.max_buffer_bytes:
            applied = self._buffered_bytes
            self._apply_pending()
            self._tx_bytes += applied
            if self._tx_bytes >= self.max_tx_bytes:
                self.commit()

    def commit(self) -> dict[str, int] | None:
        self._check_usable()
        if self._pending:
            self._apply_pending()
        if self._high > self._stored:
            self._begin()
            where = "flow_id = ? AND destination = ?"
            self._run(None, f"DELETE FROM {STATE_TABLE} WHERE {where}", [self.flow_id, self.name])
            self._run(
                None,
                f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?, now())",
                [self.flow_id, self.name, self._high.lsn, self._high.ordinal],
            )
        if self._tx:
            self._run(None, "COMMIT")
            self._tx = False
            self._tx_bytes = 0
            self._stored = self._high
        if self._stored == ZERO:
            return None
        return {"lsn": self._stored.lsn, "ordinal": self._stored.ordinal}

    def close(self) -> None:
        con = getattr(self, "_con", None)
        if con is not None:
            try:
                con.close()  # an open transaction is rolled back
            except duckdb.Error:
                pass
            self._con = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ buffering

    def _dest(self, table: TableSchema) -> tuple[str, str]:
        return (self.options.schema_name or table.schema, self.options.table or table.name)

    def _pending_for(self, table: TableSchema) -> _Pending:
        dest = self._dest(table)
        p = self._pending.get(dest)
        if p is None:
            p = self._pending[dest] = _Pending(dest, table)
        elif table.version >= p.table.version or table.relid != p.table.relid:
            p.table = table
        return p

    def _take_rows(self, seg: TableChanges, hw: Position) -> None:
        n = len(seg)
        if n == 0:
            return
        if hw > ZERO:
            later = seg.since(hw)
            self.stats["skipped_rows"] += n - (len(later) if later is not None else 0)
            if later is None:
                return
            seg, n = later, len(later)
        p = self._pending_for(seg.table)
        p.items.append(seg)
        self._buffered_rows += n
        self._buffered_bytes += seg.rows.nbytes

    def _take_event(self, ev: Event) -> None:
        if ev.op == OP_TRUNCATE:
            for table in ev.tables:
                p = self._pending_for(table)
                if self._append:
                    p.items.append(_TruncateMark(ev.position, ev.commit_ts, ev.xid))
                else:
                    for i in p.items:
                        if isinstance(i, TableChanges):
                            self._buffered_rows -= len(i)
                            self._buffered_bytes -= i.rows.nbytes
                    p.items.clear()
                    p.truncate = True
        elif ev.op in (OP_DDL, OP_MESSAGE):
            log.debug("destination %r ignores %s at %s", self.name, ev.op, ev.position)
        else:
            log.warning("destination %r: unknown event %r at %s ignored", self.name, ev.op, ev.position)

    # ------------------------------------------------------------------ transaction plumbing

    def _check_usable(self) -> None:
        if self._failed:
            raise PermanentSinkError(self.name, f"writer failed earlier and must be restarted: {self._failed}")
        if self._con is None:
            raise PermanentSinkError(self.name, "writer is closed")

    def _clean(self, exc: BaseException) -> str:
        text = str(exc)
        if self._dsn_shown != self.options.dsn:
            text = text.replace(self.options.dsn, self._dsn_shown)
        return text

    def _begin(self) -> None:
        if not self._tx:
            self._run(None, "BEGIN TRANSACTION")
            self._tx = True

    def _run(self, where: str | None, sql: str, params: list[Any] | None = None) -> duckdb.DuckDBPyConnection:
        try:
            return self._con.execute(sql, params) if params is not None else self._con.execute(sql)
        except duckdb.Error as exc:
            self._fail(where, self._clean(exc))

    def _fail(self, where: str | None, message: str) -> NoReturn:
        self._failed = message
        if self._tx:
            try:
                self._con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            self._tx = False
        self._tables.clear()
        self._source_cols.clear()
        self._meta_seen.clear()
        self._pending.clear()
        prefix = f"table {where}: " if where else ""
        raise PermanentSinkError(self.name, prefix + message) from None

    # ------------------------------------------------------------------ apply

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, {}
        self._buffered_rows = self._buffered_bytes = 0
        if not pending:
            return
        self._begin()
        for p in pending.values():
            where = f"{p.dest[0]}.{p.dest[1]}"
            try:
                self._apply_table(p)
            except _ApplyError as exc:
                self._fail(where, exc.message)
            except duckdb.ConversionException as exc:
                self._fail(where, self._conversion_message(p, self._clean(exc)))
            except duckdb.Error as exc:
                self._fail(where, self._clean(exc))
            except pa.ArrowException as exc:
                self._fail(where, f"cannot combine the epoch's batches: {exc}")
            finally:
                try:
                    self._con.unregister("__wallaby_src")
                except duckdb.Error:
                    pass
        self.stats["applies"] += 1

    def _conversion_message(self, p: _Pending, detail: str) -> str:
        dest = self._tables.get(p.dest)
        suspects = []
        if dest is not None:
            for item in p.items:
                if not isinstance(item, TableChanges):
                    continue
                for f in item.rows.schema:
                    dtype = dest.columns.get(f.name, "")
                    if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and dtype.startswith(
                        ("DECIMAL", "INTEGER", "BIGINT", "SMALLINT", "DOUBLE", "REAL", "DATE", "TIME")
                    ):
                        suspects.append(
                            (
                                f.name,
                                dtype,
                                item.table.column(f.name).type_name if f.name in item.table.column_names else "?",
                            )
                        )
        if suspects:
            name, dtype, pg = sorted(set(suspects))[0]
            return (
                f"column {name!r} is {dtype} in DuckDB but the source sent text values for it that {dtype} cannot hold "
                f"(numeric 'NaN' / 'Infinity' arrive as text); the epoch was rolled back. Map the Postgres type to "
                f'VARCHAR with the destination option type_mappings, e.g. {{"{pg}": "VARCHAR"}}, and alter or recreate '
                f"the DuckDB column (ALTER TABLE ... ALTER {name} TYPE VARCHAR). DuckDB said: {detail}"
            )
        return f"a value does not fit its DuckDB column type (map the type with type_mappings): {detail}"

    def _apply_table(self, p: _Pending) -> None:
        self._apply_rows(p)
        if p.gone:
            self._drop_gone(p)
        self._source_cols[p.dest] = [c.name for c in p.table.columns]

    def _apply_rows(self, p: _Pending) -> None:
        segs = [i for i in p.items if isinstance(i, TableChanges)]
        columns = self._columns_of(p.table, segs)
        dest = self._ensure_table(p, columns)
        qt = f"{q(p.dest[0])}.{q(p.dest[1])}"
        if p.truncate:
            self._con.execute(f"DELETE FROM {qt}")
        if not p.items:
            return
        src = self._merge(p, columns)
        if src.num_rows == 0:
            return
        self._con.register("__wallaby_src", src)
        self.stats["applied_rows"] += src.num_rows
        table = p.table
        if self._append:
            self._apply_append(qt, src, columns, dest)
        elif table.replica_identity != "f" and table.key_names:
            self._apply_keyed(qt, src, columns, dest, table.key_names)
        else:
            self._apply_keyless(qt, src, columns, dest)

    def _drop_gone(self, p: _Pending) -> None:
        """drop_columns: drop the columns the source dropped, once the changes that still carried them are in."""
        qt = f"{q(p.dest[0])}.{q(p.dest[1])}"
        for name in p.gone:
            self._con.execute(f"ALTER TABLE {qt} DROP COLUMN IF EXISTS {q(name)}")
            log.info("destination %r: %s.%s dropped (dropped at the source; drop_columns=true)", self.name, qt,
                     name, extra={"flow": self.flow_id})
        dest = self._load_dest(p.dest)
        assert dest is not None
        self._tables[p.dest] = dest

    def _previous_source_columns(self, p: _Pending) -> list[str] | None:
        """The source columns of the table's last applied shape: this writer's, else the meta table's."""
        known = self._source_cols.get(p.dest)
        if known is not None or not self.options.meta_table_enabled:
            return known
        row = self._con.execute(
            f"SELECT columns_json FROM {META_TABLE} WHERE flow_id = ? AND source_schema = ? AND source_table = ?"
            " AND dest_schema = ? AND dest_table = ?", [self.flow_id, p.table.schema, p.table.name, *p.dest],
        ).fetchone()
        return [c["name"] for c in json.loads(row[0])] if row else None

    # -- tables and schema evolution

    @staticmethod
    def _columns_of(latest: TableSchema, segs: list[TableChanges]) -> dict[str, Column]:
        cols: dict[str, Column] = {}
        for s in segs:
            for c in s.table.columns:
                cols[c.name] = c
        for c in latest.columns:  # the latest definition wins
            cols[c.name] = c
        return cols

    def _load_dest(self, dest: tuple[str, str]) -> _DestTable | None:
        rows = self._con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database()"
            " AND schema_name = ? AND table_name = ? ORDER BY column_index",
            list(dest),
        ).fetchall()
        return _DestTable(dict(rows)) if rows else None

    def _ensure_table(self, p: _Pending, columns: dict[str, Column]) -> _DestTable:
        dest = self._tables.get(p.dest)
        if dest is None:
            dest = self._load_dest(p.dest)
        qt = f"{q(p.dest[0])}.{q(p.dest[1])}"
        changed = False
        if dest is None:
            if self._append:
                clash = [c for c in columns if c in dict(APPEND_COLS)]
                if clash:
                    raise _ApplyError(
                        f"source columns {clash} clash with append mode's columns {[c for c, _ in APPEND_COLS]}"
                    )
            defs = [(name, duckdb_type(c, self._mappings)) for name, c in columns.items()]
            if self._append:
                defs += list(APPEND_COLS)
            body = ", ".join(f"{q(n)} {t}" for n, t in defs)
            self._con.execute(f"CREATE SCHEMA IF NOT EXISTS {q(p.dest[0])}")
            self._con.execute(f"CREATE TABLE {qt} ({body})")
            dest = self._load_dest(p.dest)
            assert dest is not None
            changed = True
            previous = list(columns)  # the shapes the table was just created from
        else:
            previous = (self._previous_source_columns(p) or []) if self.options.drop_columns else []
            for name, c in columns.items():
                if name not in dest.columns:
                    self._con.execute(f"ALTER TABLE {qt} ADD COLUMN {q(name)} {duckdb_type(c, self._mappings)}")
                    changed = True
                else:
                    want = duckdb_type(c, self._mappings)
                    have = dest.columns[name]
                    if widens(have, want):  # the source widened the column: follow it
                        self._con.execute(f"ALTER TABLE {qt} ALTER {q(name)} SET DATA TYPE {want}")
                        log.info("destination %r: %s.%s widened from %s to %s", self.name, qt, name, have, want,
                                 extra={"flow": self.flow_id})
                        changed = True
                    elif _canonical(want) != _canonical(have) and (p.dest, name, want) not in self._warned:
                        self._warned.add((p.dest, name, want))
                        log.warning(
                            "destination %r: %s.%s is %s in DuckDB, the source type now maps to %s; values are cast",
                            self.name,
                            qt,
                            name,
                            have,
                            want,
                        )
            if changed:
                dest = self._load_dest(p.dest)
                assert dest is not None
        if self.options.drop_columns:  # source columns the latest shape lacks go after the apply
            now = {c.name for c in p.table.columns}
            p.gone = [c for c in previous if c not in now and c in dest.columns]
        self._tables[p.dest] = dest
        if self.options.meta_table_enabled:
            self._record_meta(p, columns, dest, changed)
        return dest

    def _record_meta(self, p: _Pending, columns: dict[str, Column], dest: _DestTable, changed: bool) -> None:
        t = p.table
        key = (t.schema, t.name, p.dest[0], p.dest[1])
        cols_json = json.dumps(
            [
                {
                    "name": c.name,
                    "pg_type": c.type_name,
                    "duckdb_type": dest.columns.get(c.name),
                    "key": c.key,
                    "nullable": c.nullable,
                }
                for c in t.columns
            ]
        )
        if not changed and self._meta_seen.get(key) == (t.version, cols_json):
            return
        where = "flow_id = ? AND source_schema = ? AND source_table = ? AND dest_schema = ? AND dest_table = ?"
        args = [self.flow_id, *key]
        row = self._con.execute(f"SELECT schema_version, columns_json FROM {META_TABLE} WHERE {where}", args).fetchone()
        if row is None or changed or row[0] != t.version or json.loads(row[1]) != json.loads(cols_json):
            self._con.execute(f"DELETE FROM {META_TABLE} WHERE {where}", args)
            self._con.execute(
                f"INSERT INTO {META_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
                [*args, t.version, self.options.write_mode, cols_json],
            )
        self._meta_seen[key] = (t.version, cols_json)

    # -- merging the epoch's segments into one Arrow table

    def _merge(self, p: _Pending, columns: dict[str, Column]) -> pa.Table:
        """One Arrow table: after columns, meta columns, the needed before columns, ``__seq``."""
        keyed = not self._append and p.table.replica_identity != "f" and bool(p.table.key_names)
        names = list(columns)
        segs = [i for i in p.items if isinstance(i, TableChanges)]
        has_before = any(s.has_before for s in segs)
        before_names = list(p.table.key_names) if keyed else names
        # column types: equal everywhere, or text wins (numeric NaN batches), or Arrow's permissive promotion
        types: dict[str, pa.DataType] = {}
        for name in names:
            seen = {s.rows.schema.field(name).type for s in segs if s.rows.schema.get_field_index(name) >= 0}
            if not seen:
                types[name] = columns[name].arrow_type
            elif len(seen) == 1:
                types[name] = seen.pop()
            elif any(pa.types.is_string(t) or pa.types.is_large_string(t) for t in seen):
                types[name] = pa.string()
            else:
                try:
                    types[name] = (
                        pa.unify_schemas([pa.schema([pa.field(name, t)]) for t in seen], promote_options="permissive")
                        .field(name)
                        .type
                    )
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    types[name] = pa.string()
        fields = [pa.field(n, types[n]) for n in names]
        fields += [
            pa.field(OP_COL, pa.string()),
            pa.field(LSN_COL, pa.uint64()),
            pa.field(ORD_COL, pa.uint64()),
            pa.field(TS_COL, pa.timestamp("us", tz="UTC")),
            pa.field(UNCHANGED_COL, pa.list_(pa.string())),
        ]
        if has_before:
            fields += [pa.field(BEFORE_PREFIX + n, types[n]) for n in before_names]
        schema = pa.schema(fields)
        batches: list[pa.RecordBatch] = []
        for item in p.items:
            if isinstance(item, _TruncateMark):
                arrays = [pa.nulls(1, f.type) for f in schema]
                arrays[schema.get_field_index(OP_COL)] = pa.array([OP_TRUNCATE])
                arrays[schema.get_field_index(LSN_COL)] = pa.array([item.position.lsn], pa.uint64())
                arrays[schema.get_field_index(ORD_COL)] = pa.array([item.position.ordinal], pa.uint64())
                arrays[schema.get_field_index(TS_COL)] = pa.array([item.commit_ts], pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")
                )
                batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
                continue
            rb = item.rows
            if rb.num_rows == 0:
                continue
            n = rb.num_rows
            missing = []
            arrays = []
            for f in schema:
                i = rb.schema.get_field_index(f.name)
                if i < 0:
                    if f.name in columns:
                        missing.append(f.name)
                    arrays.append(pa.nulls(n, f.type))
                    continue
                a = rb.column(i)
                if a.type != f.type:
                    try:
                        a = a.cast(f.type)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise _ApplyError(
                            f"column {f.name!r}: cannot combine types {a.type} and {f.type}: {exc}"
                        ) from None
                arrays.append(a)
            if missing and keyed:
                # a column this segment's schema version lacks is "unchanged" for its updates
                ui = schema.get_field_index(UNCHANGED_COL)
                ops = arrays[schema.get_field_index(OP_COL)].to_pylist()
                old = arrays[ui].to_pylist()
                arrays[ui] = pa.array(
                    [(u or []) + missing if op == OP_UPDATE else u for op, u in zip(ops, old, strict=True)],
                    pa.list_(pa.string()),
                )
            batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
        tbl = pa.Table.from_batches(batches, schema=schema)
        for i, f in enumerate(tbl.schema):
            if pa.types.is_date32(f.type) or pa.types.is_timestamp(f.type):
                if f.name in (TS_COL,):
                    continue
                fixed = _fix_infinity(tbl.column(i))
                if fixed is not tbl.column(i):
                    tbl = tbl.set_column(i, f, fixed)
        return tbl.append_column(SEQ_COL, _seq(tbl.num_rows))

    # -- target mode, keyed

    def _apply_keyed(
        self, qt: str, src: pa.Table, columns: dict[str, Column], dest: _DestTable, keys: tuple[str, ...]
    ) -> None:
        con = self._con
        T = dest.columns
        for k in keys:
            if k not in columns:
                raise _ApplyError(f"key column {k!r} is missing from the changes")
        names = list(columns)
        has_before = src.schema.get_field_index(BEFORE_PREFIX + keys[0]) >= 0
        unchanged = self._unchanged_names(src) & set(names)
        extra = [c for c in T if c not in columns]

        def unch(c: str, rel: str = "") -> str:
            return f"coalesce(list_contains({rel}{UNCHANGED_COL}, {lit(c)}), false)"

        def before(c: str, rel: str = "") -> str:
            return f"{rel}{q(BEFORE_PREFIX + c)}"

        def newkey(k: str, rel: str = "") -> str:  # the key after the change
            if k in unchanged and has_before:
                return f"CASE WHEN {unch(k, rel)} THEN {before(k, rel)} ELSE {rel}{q(k)} END"
            return f"{rel}{q(k)}"

        def oldkey(k: str, rel: str = "") -> str:  # the key before the change (updates, deletes)
            if has_before:
                return f"CASE WHEN {before(keys[0], rel)} IS NOT NULL THEN {before(k, rel)} ELSE {newkey(k, rel)} END"
            return newkey(k, rel)

        def cast(expr: str, c: str) -> str:
            return f"CAST({expr} AS {T[c]})"

        key_list = ", ".join(q(k) for k in keys)
        if set(pc.unique(src.column(OP_COL)).to_pylist()) == {"insert"}:
            # only inserts: keys are unique within the epoch (a second insert needs a delete in between)
            match_s = " AND ".join(f"t.{q(k)} = {cast('s.' + q(k), k)}" for k in keys)
            con.execute(f"DELETE FROM {qt} AS t USING __wallaby_src AS s WHERE {match_s}")  # an insert upserts
            sel = ", ".join(cast(q(c), c) for c in names)
            con.execute(f"INSERT INTO {qt} ({', '.join(q(c) for c in names)}) SELECT {sel} FROM __wallaby_src")
            return
        key_change = False
        if (
            has_before
            and pc.any(
                pc.and_(pc.equal(src.column(OP_COL), "update"), pc.is_valid(src.column(BEFORE_PREFIX + keys[0])))
            ).as_py()
        ):
            differs = " OR ".join(f"{before(k)} IS DISTINCT FROM {newkey(k)}" for k in keys)
            key_change = bool(
                con.execute(
                    f"SELECT count(*) FROM __wallaby_src WHERE {OP_COL} = 'update' AND {before(keys[0])} IS NOT NULL"
                    f" AND ({differs})"
                ).fetchone()[0]
            )

        # 1. the final mention of every touched key
        mention = ", ".join(
            f"{cast(f'CASE WHEN {OP_COL} = {lit(OP_DELETE)} THEN {oldkey(k)} ELSE {newkey(k)} END', k)} AS {q(k)}"
            for k in keys
        )
        mentions = f"SELECT {SEQ_COL}, {OP_COL} <> 'delete' AS __set, {mention} FROM __wallaby_src"
        if key_change:
            olds = ", ".join(f"{cast(oldkey(k), k)} AS {q(k)}" for k in keys)
            differs = " OR ".join(f"{before(k)} IS DISTINCT FROM {newkey(k)}" for k in keys)
            mentions += (
                f" UNION ALL SELECT {SEQ_COL}, false, {olds} FROM __wallaby_src WHERE {OP_COL} = 'update'"
                f" AND {before(keys[0])} IS NOT NULL AND ({differs})"
            )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE __wallaby_f AS SELECT {key_list}, max({SEQ_COL}) AS {SEQ_COL},"
            f" arg_max(__set, {SEQ_COL}) AS __set FROM ({mentions}) GROUP BY {key_list}"
        )
        match_f = " AND ".join(f"t.{q(k)} = f.{q(k)}" for k in keys)
        resolve = bool(unchanged - set(keys)) or bool(extra)

        if not resolve:
            con.execute(f"DELETE FROM {qt} AS t USING __wallaby_f AS f WHERE {match_f}")
            sel = ", ".join(cast(newkey(c, "s.") if c in keys else f"s.{q(c)}", c) for c in names)
            con.execute(
                f"INSERT INTO {qt} ({', '.join(q(c) for c in names)}) SELECT {sel} FROM __wallaby_src AS s"
                f" JOIN __wallaby_f AS f ON f.{SEQ_COL} = s.{SEQ_COL} WHERE f.__set"
            )
            con.execute("DROP TABLE __wallaby_f")
            return

        # 2. resolve unchanged TOAST values and target-only columns per row identity
        toast = [c for c in names if c in unchanged and c not in keys]
        aggs = [f"bool_or(s.{OP_COL} IN ('insert', 'load')) AS __ins"]
        aggs += [
            f"arg_max({{'v': s.{q(c)}}}, s.{SEQ_COL}) FILTER (WHERE NOT {unch(c, 's.')}) AS {q('__r.' + c)}"
            for c in toast
        ]
        if key_change:
            # parent of an update = latest earlier "set" of its old key; collapse chains by pointer jumping
            sets = ", ".join(f"{cast(newkey(k), k)} AS {q(k)}" for k in keys)
            olds = ", ".join(f"{cast(oldkey(k), k)} AS {q(k)}" for k in keys)
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE __wallaby_c AS
                WITH mm AS (
                    SELECT {SEQ_COL}, 1 AS __kind, {sets} FROM __wallaby_src WHERE {OP_COL} <> 'delete'
                    UNION ALL
                    SELECT {SEQ_COL}, 0 AS __kind, {olds} FROM __wallaby_src WHERE {OP_COL} = 'update'
                ), pp AS (
                    SELECT {SEQ_COL}, __kind, max(CASE WHEN __kind = 1 THEN {SEQ_COL} END) OVER (
                        PARTITION BY {key_list} ORDER BY {SEQ_COL}, __kind
                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS __prev
                    FROM mm
                )
                SELECT {SEQ_COL}, coalesce(__prev, {SEQ_COL}) AS __anc FROM pp WHERE __kind = 0
                UNION ALL
                SELECT {SEQ_COL}, {SEQ_COL} FROM __wallaby_src WHERE {OP_COL} IN ('insert', 'load')"""
            )
            for _ in range(64):
                moved = con.execute(
                    f"UPDATE __wallaby_c SET __anc = p.__anc FROM __wallaby_c AS p"
                    f" WHERE __wallaby_c.__anc = p.{SEQ_COL} AND p.__anc <> p.{SEQ_COL}"
                ).fetchone()[0]
                if not moved:
                    break
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE __wallaby_r AS SELECT c.__anc, {', '.join(aggs)}"
                f" FROM __wallaby_src AS s JOIN __wallaby_c AS c ON c.{SEQ_COL} = s.{SEQ_COL} GROUP BY c.__anc"
            )
            rootkey = " AND ".join(f"t.{q(k)} = {cast(oldkey(k, 'rs.'), k)}" for k in keys)
            joins = (
                f" JOIN __wallaby_c AS c ON c.{SEQ_COL} = f.{SEQ_COL}"
                f" JOIN __wallaby_r AS r ON r.__anc = c.__anc"
                f" JOIN __wallaby_src AS rs ON rs.{SEQ_COL} = c.__anc"
                f" LEFT JOIN {qt} AS t ON {rootkey}"
            )
        else:
            newkeys = ", ".join(f"{cast(newkey(k, 's.'), k)} AS {q(k)}" for k in keys)
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE __wallaby_r AS SELECT {newkeys}, {', '.join(aggs)}"
                f" FROM __wallaby_src AS s WHERE s.{OP_COL} <> 'delete' GROUP BY ALL"
            )
            match_r = " AND ".join(f"r.{q(k)} = f.{q(k)}" for k in keys)
            joins = f" JOIN __wallaby_r AS r ON {match_r} LEFT JOIN {qt} AS t ON {match_f}"
        sel = []
        for c in names:
            if c in keys:
                sel.append(f"{cast(newkey(c, 's.'), c)} AS {q(c)}")
            elif c in toast:
                rc = f"r.{q('__r.' + c)}"
                sel.append(
                    f"CASE WHEN {rc} IS NOT NULL THEN {cast(rc + '.v', c)} WHEN NOT r.__ins THEN t.{q(c)} END AS {q(c)}"
                )
            else:
                sel.append(f"{cast('s.' + q(c), c)} AS {q(c)}")
        # (the target row only counts when the identity did not start with an insert in this epoch; a
        # condition on r.__ins inside the LEFT JOIN would turn DuckDB's hash join into a nested loop)
        sel += [f"CASE WHEN NOT r.__ins THEN t.{q(c)} END AS {q(c)}" for c in extra]
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE __wallaby_fin AS SELECT {', '.join(sel)} FROM __wallaby_f AS f"
            f" JOIN __wallaby_src AS s ON s.{SEQ_COL} = f.{SEQ_COL}{joins} WHERE f.__set"
        )
        con.execute(f"DELETE FROM {qt} AS t USING __wallaby_f AS f WHERE {match_f}")
        all_cols = ", ".join(q(c) for c in [*names, *extra])
        con.execute(f"INSERT INTO {qt} ({all_cols}) SELECT {all_cols} FROM __wallaby_fin")
        for tmp in ("__wallaby_f", "__wallaby_r", "__wallaby_fin", "__wallaby_c"):
            con.execute(f"DROP TABLE IF EXISTS {tmp}")

    @staticmethod
    def _unchanged_names(src: pa.Table) -> set[str]:
        col = src.column(UNCHANGED_COL)
        if col.null_count == len(col):
            return set()
        flat = pc.list_flatten(col)
        return {v for v in pc.unique(flat).to_pylist() if v is not None}

    # -- target mode, REPLICA IDENTITY FULL / no key

    def _apply_keyless(self, qt: str, src: pa.Table, columns: dict[str, Column], dest: _DestTable) -> None:
        con = self._con
        T = dest.columns
        names = list(columns)
        has_before = src.schema.get_field_index(BEFORE_PREFIX + names[0]) >= 0
        unchanged = self._unchanged_names(src) & set(names)
        cols = ", ".join(q(c) for c in names)

        def cast(expr: str, c: str) -> str:
            return f"CAST({expr} AS {T[c]})"

        ops = set(pc.unique(src.column(OP_COL)).to_pylist())
        if ops <= {"insert", "load"}:
            sel = ", ".join(cast(q(c), c) for c in names)
            con.execute(f"INSERT INTO {qt} ({cols}) SELECT {sel} FROM __wallaby_src")
            return
        if not has_before:
            raise _ApplyError(
                "updates or deletes without a before image on a table without a replica-identity key; set "
                "REPLICA IDENTITY FULL (or add a primary key) on the source table"
            )

        def after(c: str) -> str:
            if c in unchanged:
                return (
                    f"CASE WHEN coalesce(list_contains({UNCHANGED_COL}, {lit(c)}), false)"
                    f" THEN {q(BEFORE_PREFIX + c)} ELSE {q(c)} END"
                )
            return q(c)

        adds = ", ".join(f"{cast(after(c), c)} AS {q(c)}" for c in names)
        dels = ", ".join(f"{cast(q(BEFORE_PREFIX + c), c)} AS {q(c)}" for c in names)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE __wallaby_d AS
            SELECT {cols}, sum(__w)::BIGINT AS __n FROM (
                SELECT {adds}, 1 AS __w FROM __wallaby_src WHERE {OP_COL} <> 'delete'
                UNION ALL
                SELECT {dels}, -1 AS __w FROM __wallaby_src WHERE {OP_COL} IN ('update', 'delete')
            ) GROUP BY {cols} HAVING sum(__w) <> 0"""
        )
        match = " AND ".join(f"t.{q(c)} IS NOT DISTINCT FROM d.{q(c)}" for c in names)
        con.execute(
            f"""DELETE FROM {qt} WHERE rowid IN (
                SELECT __rid FROM (
                    SELECT t.rowid AS __rid, d.__n, row_number() OVER (PARTITION BY d.__g ORDER BY t.rowid) AS __rn
                    FROM {qt} AS t JOIN (SELECT *, row_number() OVER () AS __g FROM __wallaby_d WHERE __n < 0) AS d
                    ON {match}
                ) WHERE __rn <= -__n)"""
        )
        con.execute(
            f"INSERT INTO {qt} ({cols}) SELECT {cols} FROM"
            f" (SELECT {cols}, unnest(range(__n)) FROM __wallaby_d WHERE __n > 0)"
        )
        con.execute("DROP TABLE __wallaby_d")

    # -- append mode

    def _apply_append(self, qt: str, src: pa.Table, columns: dict[str, Column], dest: _DestTable) -> None:
        T = dest.columns
        names = list(columns)

        def value(c: str) -> str:
            if src.schema.get_field_index(BEFORE_PREFIX + c) >= 0:
                return f"CASE WHEN {OP_COL} = 'delete' THEN {q(BEFORE_PREFIX + c)} ELSE {q(c)} END"
            return q(c)

        meta = [c for c, _ in APPEND_COLS]
        sel = ", ".join([*(f"CAST({value(c)} AS {T[c]})" for c in names), *(q(c) for c in meta)])
        cols = ", ".join(q(c) for c in [*names, *meta])
        self._con.execute(f"INSERT INTO {qt} ({cols}) SELECT {sel} FROM __wallaby_src ORDER BY {SEQ_COL}")


__all__ = ["DuckDBOptions", "DuckDBWriter", "duckdb_sink"]
