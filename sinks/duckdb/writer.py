"""DuckDB destination: apply a flow's changes to tables in a DuckDB file.

Options are :class:`DuckDBOptions` (spec/USAGE.md, "DuckDB Destination": the flow spec's own model,
``sinks.duckdb.options.DuckDBDestinationOptions``); the bytewax sink is
:func:`duckdb_sink`, the writer :class:`DuckDBWriter`.

Tables
    A source table ``schema.name`` lands in ``<schema option or schema>.<table
    option or name>``; schema and table are created on first sight with the
    types of :mod:`sinks.duckdb.types` (plus ``type_mappings``). Setting
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

Code: the options are in sinks/duckdb/options.py; the merge of an epoch's segments into one Arrow table
(sinks/sql/merge.py) and the epoch reduction (sinks/sql/reduce.py) are shared by every table-materializing
destination; DuckDB's apply SQL is in sinks/duckdb/apply.py, type mapping and widening in sinks/duckdb/types.py;
this module is the writer (buffering, transactions, tables, schema evolution).

Types: every value is ``CAST`` to its DuckDB column type in SQL. Postgres
``-infinity`` dates/timestamps (INT32_MIN days / INT64_MIN µs in Arrow) become
DuckDB's ``-infinity`` (MIN + 1); ``+infinity`` is the same bit pattern in both.
Inside arrays they are not translated.

Staging (``batch_mode=staging``, backfill loads)
    Rows of op ``read`` (a backfill snapshot, ``wallaby.core.changes.OP_READ``) go to the target table's
    staging table instead of the target: ``<staging_schema or the target's schema>.<staging_table or the
    target table's name + staging_suffix>`` (:func:`staging_dest`). A staging table gets the target's
    columns (same type mapping and schema evolution; in ``write_mode=append`` the append columns too), is
    created when first needed and is append-only: rows as read, no key matching. ``staging_table`` is one
    literal name, so it holds the rows of one target table: a flow whose reads land in two target tables with
    it set fails, naming ``staging_table`` (set ``table`` too, or leave ``staging_table`` unset). Streaming
    changes (insert, update, delete, truncate) go to the target in every ``batch_mode``; a truncate does not
    touch the staging table. :mod:`sinks.duckdb.staging` resolves staged rows into the targets
    (``batch_resolution``). The high-water is the same as without staging: staged rows are committed in the
    same transactions as everything else.

Events: truncate empties the table (target mode); ddl and logical messages are
ignored by this sink. Errors are :class:`~sinks.base.PermanentSinkError`
naming the destination and table; the DSN is shown only when it is a plain path.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sinks.base import HighWater, PermanentSinkError, SchemaChangeError, Writer, WriterSink, source_json
from sinks.duckdb.apply import (
    APPEND_COLS,
    ApplyError,
    DestTable,
    RetypeError,
    apply_append,
    apply_keyed,
    apply_keyless,
    q,
)
from sinks.duckdb.options import DuckDBDestinationOptions as DuckDBOptions
from sinks.duckdb.types import canonical_type, duckdb_type, widens
from sinks.retry import Steps, retry
from sinks.sql.merge import TruncateMark, fix_infinity, merge_pending
from sinks.sql.options import TableWriterOptions
from sinks.sql.reduce import ReduceError
from wallaby.core.changes import (
    OP_COL,
    OP_DDL,
    OP_MESSAGE,
    OP_READ,
    OP_TRUNCATE,
    ZERO,
    ChangeBatch,
    Column,
    Event,
    Position,
    TableChanges,
    TableSchema,
)
from wallaby.core.identity import SourceCheck, SourceIdentity
from wallaby.core.runtime import release_memory
from wallaby.core.settings import on_import as settings_on_import

log = logging.getLogger("wallaby.sinks.duckdb")

_SETTINGS = settings_on_import()  # every WALLABY_* variable, parsed by wallaby/settings.py

# DuckDB's own memory cap for file databases (it spills to its .tmp directory beyond it for most
# operations; DuckDB's default is 80% of RAM). Measured with the benchmark (one worker catching up
# 1M narrow changes, batches of at most 8 MiB from the source, transactions of at most
# DUCKDB_MAX_TX_BYTES): peak RSS 358 MB with 64MB, 408 MB with 128MB, same rate; wide (~5 KB)
# rows: 429 MB with 64MB (they needed more than 64MB when a batch was 10000 rows of any size).
# Raise it with WALLABY_DUCKDB_MEMORY_LIMIT for very large values or many tables per epoch.
DUCKDB_MEMORY_LIMIT = f"{_SETTINGS.duckdb_memory_limit}B"
# Changes applied in one DuckDB transaction before it is committed, even mid-epoch. DuckDB holds a
# transaction's new rows in memory until COMMIT; an epoch of a catching-up worker can be hundreds of
# MB. Committing early is safe: the high-water position is stored in the same transaction, so a replay
# after a crash skips what was committed (the slot is still confirmed only at the epoch's snapshot).
# Measured (1M narrow changes): peak RSS 413 -> 358 MB with the allocator settings of
# wallaby/runtime.py; 200k wide changes 850-920 -> 429 MB and 13.8k -> 19k changes/s.
# WALLABY_DUCKDB_MAX_TX_BYTES sets it (0: one transaction per epoch).
DUCKDB_MAX_TX_BYTES = _SETTINGS.duckdb_max_tx_bytes or (1 << 62)
# Changes buffered (as Arrow) before they are applied inside the open transaction. Measured (300k
# wide changes into DuckDB, 3 runs each): peak RSS 357-382 MB at 16MB, 356-361 MB at 8MB.
# WALLABY_DUCKDB_BUFFER_BYTES sets it.
DUCKDB_BUFFER_BYTES = _SETTINGS.duckdb_buffer_bytes or (8 << 20)
# DuckDB checkpoints (rewrites its log into the table file, compressing every column) when the log
# passes checkpoint_threshold, default 16MB: an epoch of wide rows writes more than that, so every
# commit checkpointed and wrote the data twice. Measured (100k ~5 KB rows): COMMIT was 85-90% of the
# sink's time; with 1GB the catch-up took 10.7-11.4 s instead of 16.4-36.7 s. DuckDB still
# checkpoints at 1GB of log and when the worker stops. WALLABY_DUCKDB_CHECKPOINT_THRESHOLD sets it.
DUCKDB_CHECKPOINT_THRESHOLD = f"{_SETTINGS.duckdb_checkpoint_threshold}B"
# DuckDB's worker threads. One by default: the apply is a few set-based statements per epoch,
# each thread keeps its own buffers, and the worker's other core belongs to the walsender and
# the source. Measured (`make bench`, narrow, 500k backlog): 1 thread 115k changes/s at 390 MB
# peak RSS; DuckDB's default (one per core) ~98k/s at ~515 MB. 0 = DuckDB's default.
DUCKDB_THREADS = _SETTINGS.duckdb_threads
# A DuckDB file is open in one process at a time. When a flow's worker is replaced (restart, takeover), the new one
# waits this long for the old one to let go of the file.
DUCKDB_LOCK_WAIT = _SETTINGS.duckdb_lock_wait
_LOCK_STEPS = Steps(0.1, 2.0, 2.0)  # the waits while the file is held: 0.1 s doubling to 2 s


def _connect(dsn: str, config: dict) -> duckdb.DuckDBPyConnection:
    """A connection to ``dsn``, waiting up to :data:`DUCKDB_LOCK_WAIT` (0.1 s doubling to 2 s) while another process
    holds the file's lock."""
    return retry(lambda: duckdb.connect(dsn, config=config), policy=_LOCK_STEPS,
                 retryable=lambda exc: isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower(),
                 deadline=DUCKDB_LOCK_WAIT,
                 on_retry=lambda exc, attempt, delay: log.info("DuckDB %s is held by another process; waiting",
                                                               _safe_dsn(dsn)))


STATE_TABLE = "main.__wallaby_state"
META_TABLE = "main.__wallaby_meta"


def target_dest(options: TableWriterOptions, schema: str, name: str) -> tuple[str, str]:
    """The DuckDB table (schema, name) a source table ``schema.name`` lands in (the ``schema`` and ``table``
    options)."""
    return (options.schema_name or schema, options.table or name)


def staging_dest(options: TableWriterOptions, target: tuple[str, str]) -> tuple[str, str]:
    """The staging table of the target table ``target`` (``batch_mode=staging``): ``staging_schema`` (else the
    target's schema) . ``staging_table`` (else the target's name + ``staging_suffix``)."""
    return (options.staging_schema or target[0], options.staging_table or target[1] + options.staging_suffix)


def duckdb_sink(name: str, flow_id: str, options: DuckDBOptions, source: SourceCheck | None = None) -> WriterSink:
    """A bytewax sink writing ``flow_id``'s changes to DuckDB as destination ``name``."""
    return WriterSink(name, lambda resume_state: DuckDBWriter(name, flow_id, options, resume_state, source=source))


def make_sink(name: str, flow_id: str, options: DuckDBOptions, source: SourceCheck | None = None) -> WriterSink:
    """The destination of a flow spec: its validated :class:`DuckDBOptions` (the metadata options are applied by
    operators.metadata; ``batch_mode=staging`` sends read rows to staging tables, see the module docstring)."""
    return duckdb_sink(name, flow_id, options, source)


def discard_position(name: str, flow_id: str, options: DuckDBOptions) -> None:
    """Forget the high-water destination ``name`` holds for ``flow_id`` (a reset asked for by the user)."""
    con = _connect(str(Path(options.dsn).expanduser()), {})
    try:
        con.execute(f"DELETE FROM {STATE_TABLE} WHERE flow_id = ? AND destination = ?", [flow_id, name])
    finally:
        con.close()


def stored_position(name: str, flow_id: str,
                    options: DuckDBOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    """The high-water destination ``name`` holds for ``flow_id``, the source it came from and where it is, read
    without creating or locking anything (None: no file, no state, or the file is in use: the writer checks at open)."""
    dsn = options.dsn
    if dsn == ":memory:" or dsn.startswith(("md:", "motherduck:")) or not Path(dsn).expanduser().exists():
        return None
    try:
        con = duckdb.connect(str(Path(dsn).expanduser()), read_only=True)
    except duckdb.Error:
        return None
    try:
        cols = {r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main'"
                                          " AND table_name = '__wallaby_state'").fetchall()}
        if not cols:
            return None
        source = "source" if "source" in cols else "NULL"
        row = con.execute(f"SELECT lsn, ordinal, {source} FROM {STATE_TABLE} WHERE flow_id = ? AND destination = ?",
                          [flow_id, name]).fetchone()
    except duckdb.Error:
        return None
    finally:
        con.close()
    if row is None:
        return None
    return Position(int(row[0]), int(row[1])), SourceIdentity.from_json(row[2]), f"DuckDB {_safe_dsn(dsn)}"


# --------------------------------------------------------------------------- helpers


def _safe_dsn(dsn: str) -> str:
    """The DSN if it is a plain file path (or :memory:), else a redacted marker."""
    if dsn == ":memory:" or (re.fullmatch(r"[\w./\\ ~+-]+", dsn) and not dsn.startswith(("md:", "motherduck:"))):
        return dsn
    return "<redacted dsn>"


def _cut_before(before: TableSchema, after: TableSchema) -> bool:
    """Whether the changes of schema version ``after`` must be applied apart from those of ``before``: a column of
    both changed its source type (name or typmod), or one appeared with a missing value (``Column.missing``)."""
    if before.relid != after.relid or before.version == after.version:
        return False
    old = {c.name: (c.type_name, c.typmod) for c in before.columns}
    return any((c.type_name, c.typmod) != old[c.name] if c.name in old else c.missing is not None
               for c in after.columns)


@dataclass(slots=True)
class _Pending:
    dest: tuple[str, str]
    table: TableSchema  # latest version seen
    truncate: bool = False  # target mode: empty the table before applying items
    items: list[TableChanges | TruncateMark] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # drop_columns: source columns to drop after the apply
    staging: bool = False  # a staging table (batch_mode=staging): read rows appended as they are
    fills: list[Column] = field(default_factory=list)  # columns added with a missing value: fill the older rows


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
        source: SourceCheck | None = None,
        max_buffer_rows: int = 200_000,
        max_buffer_bytes: int = DUCKDB_BUFFER_BYTES,
        max_tx_bytes: int = DUCKDB_MAX_TX_BYTES,
    ):
        if not isinstance(options, DuckDBOptions):
            options = DuckDBOptions.model_validate(options)
        self.name = name
        self.flow_id = flow_id
        self.options = options
        self.source = source  # the flow's source: the high-water's identity is judged against it, and stored
        self.max_buffer_rows = max_buffer_rows
        self.max_buffer_bytes = max_buffer_bytes
        self._append = options.write_mode == "append"
        self._staging = options.batch_mode == "staging"
        self._staged_for: dict[tuple[str, str], tuple[str, str]] = {}  # staging table -> its target table
        self._mappings = options.mappings()
        self._dsn_shown = _safe_dsn(options.dsn)
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._tx = False
        self._tx_bytes = 0  # changes applied in the open transaction
        self.max_tx_bytes = max_tx_bytes
        self._tables: dict[tuple[str, str], DestTable] = {}
        self._meta_seen: dict[tuple[str, str, str, str], tuple[int, str]] = {}
        self._source_cols: dict[tuple[str, str], list[str]] = {}  # dest -> source columns of the last apply
        # dest -> whether every row in it came from this writer's reads (a backfill's snapshot reads each row once):
        # decided at the writer's first apply to it (empty, and read rows come first), lost at anything else
        self._fresh: dict[tuple[str, str], bool] = {}
        self._reads_once = True  # every read row so far came from one snapshot (SnapshotMark.consistent)
        self._taken_in_batch: Position | None = None  # inside write(): the last position taken of its batch
        self._applied_upto = ZERO  # every change at or below it is applied (committed or in the open transaction)
        self._dml_tables: set[tuple[str, str]] = set()  # tables the open transaction wrote rows to
        self._warned: set[tuple[tuple[str, str], str, str]] = set()
        # (dest, column) -> the source type (pg type name) of the column as last applied (this writer's, or the
        # meta table's when the writer first meets the table): a change from it is a source type change
        self._applied_types: dict[tuple[tuple[str, str], str], str] = {}
        self._failed: str | None = None
        self.stats = {"applied_rows": 0, "skipped_rows": 0, "applies": 0}

        # release_file: the file is let go between epochs (readers get in); reopened when the writer needs it
        self._release = bool(getattr(options, "release_file", False)) and options.dsn != ":memory:"
        self._released = False
        try:
            self._con = self._open_connection()
            self._con.execute(
                f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (flow_id VARCHAR NOT NULL, destination VARCHAR NOT NULL,"
                " lsn UBIGINT NOT NULL, ordinal UBIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL, source VARCHAR)"
            )
            self._con.execute(f"ALTER TABLE {STATE_TABLE} ADD COLUMN IF NOT EXISTS source VARCHAR")  # older files
            if options.meta_table_enabled:
                self._con.execute(
                    f"CREATE TABLE IF NOT EXISTS {META_TABLE} (flow_id VARCHAR NOT NULL, source_schema VARCHAR,"
                    " source_table VARCHAR, dest_schema VARCHAR, dest_table VARCHAR, schema_version INTEGER,"
                    " write_mode VARCHAR, columns_json JSON, updated_at TIMESTAMPTZ)"
                )
            row = self._con.execute(
                f"SELECT lsn, ordinal, source FROM {STATE_TABLE} WHERE flow_id = ? AND destination = ?",
                [flow_id, name]).fetchone()
        except duckdb.Error as exc:
            raise PermanentSinkError(name, f"cannot open DuckDB {self._dsn_shown}: {self._clean(exc)}") from None
        # taken: everything at or below is in DuckDB (or buffered for this epoch); stored: committed
        self._hw = HighWater.judged(source, name, Position(int(row[0]), int(row[1])) if row else ZERO,
                                    SourceIdentity.from_json(row[2]) if row else None,
                                    f"DuckDB {self._dsn_shown} (destination {name!r})")
        self._applied_upto = self._hw.stored
        if row is not None and self._hw.stored == ZERO:  # discarded by a reset: gone for good, even if nothing comes
            self._con.execute(f"DELETE FROM {STATE_TABLE} WHERE flow_id = ? AND destination = ?", [flow_id, name])
        self._let_go()
        if resume_state and row is None:
            log.info(
                "destination %r: bytewax resume state %s but no high-water in DuckDB; applying what comes",
                name,
                resume_state,
            )

    # ------------------------------------------------------------------ the connection

    def _open_connection(self) -> duckdb.DuckDBPyConnection:
        """A connection to the database the writer writes (a subclass opens another kind: DuckLake attaches its
        catalog). Waits while another process holds the file (:func:`_connect`)."""
        dsn = self.options.dsn
        if dsn != ":memory:" and not dsn.startswith(("md:", "motherduck:")):
            try:
                Path(dsn).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PermanentSinkError(self.name, f"cannot create the directory of {self._dsn_shown}: {exc}") \
                    from None
        # A file database spills to its .tmp directory past the cap; an in-memory one cannot, so no cap.
        config = {} if dsn == ":memory:" else {"memory_limit": DUCKDB_MEMORY_LIMIT,
                                               "checkpoint_threshold": DUCKDB_CHECKPOINT_THRESHOLD}
        if DUCKDB_THREADS:
            config["threads"] = DUCKDB_THREADS
        return _connect(dsn, config)

    def _acquire(self) -> None:
        """Open the file again after :meth:`_let_go` (``release_file``), before anything touches it."""
        if not self._released:
            return
        try:
            self._con = self._open_connection()
        except duckdb.Error as exc:
            raise PermanentSinkError(self.name, f"cannot open DuckDB {self._dsn_shown} again: {self._clean(exc)}") \
                from None
        self._released = False

    def _let_go(self) -> None:
        """``release_file``: close the file once an epoch is committed, so other processes can open it (even read
        only, DuckDB lets one process at a time hold a file). What the writer knows of its tables stays: only
        this writer changes them."""
        if not self._release or self._tx or self._pending or self._con is None:
            return
        try:
            self._con.close()
        except duckdb.Error:
            pass
        self._con = None  # type: ignore[assignment]
        self._released = True

    # ------------------------------------------------------------------ public

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The writer's DuckDB connection (for inspection; do not write through it mid-epoch)."""
        self._acquire()
        return self._con

    @property
    def high_water(self) -> Position:
        """The position of the last change this writer has taken (committed or buffered)."""
        return self._hw.taken

    def write(self, batch: ChangeBatch) -> None:
        self._check_usable()
        hw = ZERO if batch.snapshot else self._hw.taken  # a backfill's rows are outside the stream's order
        if batch.snapshot is not None and not batch.snapshot.consistent:
            self._reads_once = False
        if self._hw.replayed(batch):  # a replay: everything in it is already applied (or buffered)
            self.stats["skipped_rows"] += len(batch)
            return
        self._taken_in_batch = None if batch.snapshot else hw
        for seg in batch.segments:
            if isinstance(seg, TableChanges):
                self._take_rows(seg, hw)
                if self._taken_in_batch is not None and len(seg):
                    self._taken_in_batch = max(self._taken_in_batch, seg.last)
            elif seg.position > hw:
                self._take_event(seg)
                if self._taken_in_batch is not None:
                    self._taken_in_batch = max(self._taken_in_batch, seg.position)
        self._taken_in_batch = None
        if not batch.snapshot:
            self._hw.advance(batch.position)
        if self._buffered_rows >= self.max_buffer_rows or self._buffered_bytes >= self.max_buffer_bytes:
            applied = self._buffered_bytes
            self._apply_pending()
            self._tx_bytes += applied
            if self._tx_bytes >= self.max_tx_bytes:
                self.commit()
                # The transaction's buffers are freed: hand their heap pages back now, not only at the
                # epoch's end. Measured (300k wide changes): peak RSS 382-408 -> 356-371 MB, same rate.
                release_memory()

    def commit(self) -> dict[str, int] | None:
        self._check_usable()
        if self._pending:
            self._apply_pending()
        if self._hw.taken > self._hw.stored or self._tx:
            self._acquire()
            self._commit_at(self._hw.taken)
        self._let_go()
        stored = self._hw.stored
        if stored == ZERO:
            return None
        return {"lsn": stored.lsn, "ordinal": stored.ordinal}

    def _commit_at(self, mark: Position) -> None:
        """Commit the open transaction with the high-water ``mark``: every change at or below it is applied, none
        above it (the epoch's end; or :attr:`_applied_upto` when a DDL must start a new transaction)."""
        if mark > self._hw.stored:
            self._begin()
            where = "flow_id = ? AND destination = ?"
            self._run(None, f"DELETE FROM {STATE_TABLE} WHERE {where}", [self.flow_id, self.name])
            self._run(None, f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?, now(), ?)",
                      [self.flow_id, self.name, mark.lsn, mark.ordinal, source_json(self.source)])
        if self._tx:
            self._run(None, "COMMIT")
            self._tx = False
            self._tx_bytes = 0
            self._dml_tables.clear()
            self._hw.stored = max(self._hw.stored, mark)

    def close(self) -> None:
        self._released = False
        con = getattr(self, "_con", None)
        if con is not None:
            try:
                con.close()  # an open transaction is rolled back
            except duckdb.Error:
                pass
            self._con = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ buffering

    def _dest(self, table: TableSchema) -> tuple[str, str]:
        return target_dest(self.options, table.schema, table.name)

    def _pending_for(self, table: TableSchema, staging: bool = False) -> _Pending:
        dest = self._dest(table)
        if staging:
            dest = self._staging_for(table, dest)
        p = self._pending.get(dest)
        if p is None:
            p = self._pending[dest] = _Pending(dest, table, staging=staging)
        elif p.staging != staging:
            self._fail(f"{dest[0]}.{dest[1]}", "the table is both the target of a source table and a staging table"
                                               " (staging_schema / staging_table / staging_suffix); rename one")
        elif table.version >= p.table.version or table.relid != p.table.relid:
            p.table = table
        return p

    def _staging_for(self, table: TableSchema, target: tuple[str, str]) -> tuple[str, str]:
        """The staging table of ``target``; a staging table holds the rows of one target table."""
        dest = staging_dest(self.options, target)
        where = f"{dest[0]}.{dest[1]}"
        if dest == target:
            self._fail(where, "the staging table of this target table is the target table itself; set"
                              " staging_schema, staging_table or staging_suffix so that they differ")
        other = self._staged_for.setdefault(dest, target)
        if other != target:
            self._fail(where, f"staging_table={self.options.staging_table!r} would hold the read rows of two target"
                              f" tables ({other[0]}.{other[1]} and {target[0]}.{target[1]}): staging_table names"
                              " the staging table of a flow with one target table; leave it unset (each target"
                              " gets <name><staging_suffix>) or set table")
        return dest

    @staticmethod
    def _split_reads(seg: TableChanges) -> tuple[TableChanges | None, TableChanges | None]:
        """(the read rows of ``seg``, its other rows), either None when empty."""
        ops = seg.rows.column(OP_COL)
        reads = pc.equal(ops, OP_READ)
        n = pc.sum(reads).as_py() or 0
        if n == 0:
            return None, seg
        if n == len(seg):
            return seg, None
        return (TableChanges(seg.table, seg.rows.filter(reads)),
                TableChanges(seg.table, seg.rows.filter(pc.invert(reads))))

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
        if self._staging:  # read rows (a backfill) go to the staging table, the rest to the target
            reads, rest = self._split_reads(seg)
            if reads is not None:
                self._buffer(self._pending_for(reads.table, staging=True), reads)
            if rest is not None:
                self._buffer(self._pending_for(rest.table), rest)
            return
        self._buffer(self._pending_for(seg.table), seg)

    def _buffer(self, p: _Pending, seg: TableChanges) -> None:
        last = next((i for i in reversed(p.items) if isinstance(i, TableChanges)), None)
        if last is not None and _cut_before(last.table, seg.table):
            # A column changed type, or appeared with a value for the rows before it, inside the epoch: what came
            # before is applied now, so old and new types never meet in one Arrow table (numeric(8,2) and bigint do
            # not combine) and the rows older than a new column are in the table when it is filled; the table
            # follows the new shape at the next apply (in a new transaction when DuckDB needs one: _apply_pending,
            # committed at the last change taken before this one, so a replay skips exactly what was applied).
            p.table = last.table  # the shape of what is applied now (_pending_for moved it on already)
            self._apply_pending()
            p = self._pending_for(seg.table, p.staging)
        p.items.append(seg)
        self._buffered_rows += len(seg)
        self._buffered_bytes += seg.rows.nbytes

    def _take_event(self, ev: Event) -> None:
        if ev.op == OP_TRUNCATE:
            for table in ev.tables:
                p = self._pending_for(table)
                if self._append:
                    p.items.append(TruncateMark(ev.position, ev.commit_ts, ev.xid))
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
        if self._con is None and not self._released:
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

    def _fail(self, where: str | None, message: str, held: tuple[str, str, Position] | None = None) -> NoReturn:
        """Roll back, forget what is cached, raise. ``held``: (source table, column, first change) of a schema
        change DuckDB cannot express (the worker holds the flow there)."""
        self._failed = message
        if self._tx:
            try:
                self._con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            self._tx = False
        self._tables.clear()
        self._source_cols.clear()
        self._fresh.clear()
        self._dml_tables.clear()
        self._meta_seen.clear()
        self._pending.clear()
        prefix = f"DuckDB {self._dsn_shown}, table {where}: " if where else f"DuckDB {self._dsn_shown}: "
        if held is not None:
            raise SchemaChangeError(self.name, prefix + message, *held) from None
        raise PermanentSinkError(self.name, prefix + message) from None

    # ------------------------------------------------------------------ apply

    def _apply_pending(self) -> None:
        if not self._pending:
            return
        self._acquire()
        pending, self._pending = self._pending, {}
        self._buffered_rows = self._buffered_bytes = 0
        if self._tx and any(self._needs_ddl(p) for p in pending.values()):
            # DuckDB refuses to commit an ALTER of a table the same transaction deleted from or updated: what is
            # applied so far is committed first (exactly: nothing of these pending changes is applied yet)
            self._commit_at(self._applied_upto)
        self._begin()
        for p in pending.values():
            where = f"{p.dest[0]}.{p.dest[1]}"
            try:
                self._apply_table(p)
            except RetypeError as exc:
                first = next(i.first for i in p.items if isinstance(i, TableChanges))
                self._fail(where, exc.message, held=(p.table.qualified, exc.column, first))
            except (ApplyError, ReduceError) as exc:
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
        self._applied_upto = max(self._hw.taken, self._taken_in_batch or ZERO)

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

    def _needs_ddl(self, p: _Pending) -> bool:
        """Whether applying ``p`` alters a table the open transaction wrote rows to (a column to add, retype,
        widen or drop)."""
        if p.dest not in self._dml_tables:
            return False
        dest = self._tables.get(p.dest) or self._load_dest(p.dest)
        if dest is None:
            return False
        columns = self._columns_of(p.table, [i for i in p.items if isinstance(i, TableChanges)])
        for name, c in columns.items():
            have = dest.columns.get(name)
            if have is None or canonical_type(duckdb_type(c, self._mappings)) != canonical_type(have):
                return True
        if self.options.drop_columns:
            now = {c.name for c in p.table.columns}
            return any(c not in now and c in dest.columns for c in self._previous_source_columns(p) or [])
        return False

    def _apply_table(self, p: _Pending) -> None:
        self._apply_rows(p)
        self._source_cols[p.dest] = [c.name for c in p.table.columns]
        for c in p.table.columns:
            self._applied_types[(p.dest, c.name)] = c.type_name

    def _apply_rows(self, p: _Pending) -> None:
        segs = [i for i in p.items if isinstance(i, TableChanges)]
        columns = self._columns_of(p.table, segs)
        dest = self._ensure_table(p, columns)
        if p.gone:  # before the rows (DuckDB alters no table after rows were deleted in the transaction)
            dest = self._drop_gone(p)
            columns = {n: c for n, c in columns.items() if n not in p.gone}
        qt = f"{q(p.dest[0])}.{q(p.dest[1])}"
        if p.fills:
            self._dml_tables.add(p.dest)
            self._fill_missing(qt, p.fills)
        if p.truncate or p.items:
            self._dml_tables.add(p.dest)
        if p.truncate:
            self._con.execute(f"DELETE FROM {qt}")
        if not p.items:
            return
        src = merge_pending(p.table, p.items, columns, self._append)
        if src.num_rows == 0:
            return
        self._con.register("__wallaby_src", src)
        self.stats["applied_rows"] += src.num_rows
        table = p.table
        keyed = not self._append and not p.staging and table.replica_identity != "f" and bool(table.key_names)
        if not keyed:
            self._fresh[p.dest] = False
        if self._append:
            apply_append(self._con, qt, src, columns, dest)
        elif p.staging:  # read rows only: appended as they are (apply_keyless inserts when nothing else is there)
            apply_keyless(self._con, qt, src, columns, dest)
        elif table.replica_identity != "f" and table.key_names:
            apply_keyed(self._con, qt, src, columns, dest, table.key_names, self._reads_once,
                        self._still_fresh(p, qt, src))
        else:
            apply_keyless(self._con, qt, src, columns, dest)

    def _still_fresh(self, p: _Pending, qt: str, src: pa.Table) -> bool:
        """Whether the target holds only rows of this writer's reads and ``src`` holds only reads: then no read
        row can meet its key in the target (a snapshot reads each row once; a resumed backfill is a new writer
        that finds the table not empty), and the apply skips matching keys, which cost more than the insert
        (measured, 2M narrow rows into a new file in chunks of ~60k rows: 34% against 28% of the writer's thread)."""
        reads = self._reads_once and bool(pc.all(pc.equal(src.column(OP_COL), OP_READ)).as_py()) and not p.truncate
        fresh = self._fresh.get(p.dest)
        if fresh is None:
            fresh = reads and self._con.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {qt})").fetchone()[0]
        self._fresh[p.dest] = fresh = bool(fresh and reads)
        return fresh

    def _drop_gone(self, p: _Pending) -> DestTable:
        """drop_columns: drop the columns the source dropped (before the epoch's rows are applied: the values the
        older of them still carry for those columns would go with the columns anyway)."""
        qt = f"{q(p.dest[0])}.{q(p.dest[1])}"
        for name in p.gone:
            self._con.execute(f"ALTER TABLE {qt} DROP COLUMN IF EXISTS {q(name)}")
            log.info("destination %r: %s.%s dropped (dropped at the source; drop_columns=true)", self.name, qt,
                     name, extra={"flow": self.flow_id})
        dest = self._load_dest(p.dest)
        assert dest is not None
        self._tables[p.dest] = dest
        return dest

    def _previous_source_columns(self, p: _Pending) -> list[str] | None:
        """The source columns of the table's last applied shape: this writer's, else the meta table's."""
        known = self._source_cols.get(p.dest)
        if known is not None:
            return known
        meta = self._meta_columns(p)
        return [c["name"] for c in meta] if meta is not None else None

    def _meta_columns(self, p: _Pending) -> list[dict] | None:
        """The columns the meta table recorded for the table's last applied shape (None: none recorded)."""
        if not self.options.meta_table_enabled:
            return None
        row = self._con.execute(
            f"SELECT columns_json FROM {META_TABLE} WHERE flow_id = ? AND source_schema = ? AND source_table = ?"
            " AND dest_schema = ? AND dest_table = ?", [self.flow_id, p.table.schema, p.table.name, *p.dest],
        ).fetchone()
        return json.loads(row[0]) if row else None

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

    def _load_dest(self, dest: tuple[str, str]) -> DestTable | None:
        rows = self._con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database()"
            " AND schema_name = ? AND table_name = ? ORDER BY column_index",
            list(dest),
        ).fetchall()
        return DestTable(dict(rows)) if rows else None

    def _ensure_table(self, p: _Pending, columns: dict[str, Column]) -> DestTable:
        dest = self._tables.get(p.dest)
        if dest is None:
            dest = self._load_dest(p.dest)
        qt = f"{q(p.dest[0])}.{q(p.dest[1])}"
        changed = False
        fills: list[Column] = []
        if dest is None:
            if self._append:
                clash = [c for c in columns if c in dict(APPEND_COLS)]
                if clash:
                    raise ApplyError(
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
            if p.dest not in self._source_cols:  # the writer's first apply to the table: the types as recorded
                for c in self._meta_columns(p) or []:
                    self._applied_types.setdefault((p.dest, c["name"]), c.get("pg_type"))
            for name, c in columns.items():
                if name not in dest.columns:
                    self._con.execute(f"ALTER TABLE {qt} ADD COLUMN {q(name)} {duckdb_type(c, self._mappings)}")
                    if c.missing is not None:
                        fills.append(c)
                    changed = True
                else:
                    want = duckdb_type(c, self._mappings)
                    have = dest.columns[name]
                    before = self._applied_types.get((p.dest, name))
                    if widens(have, want):  # the source widened the column: follow it
                        self._con.execute(f"ALTER TABLE {qt} ALTER {q(name)} SET DATA TYPE {want}")
                        log.info("destination %r: %s.%s widened from %s to %s", self.name, qt, name, have, want,
                                 extra={"flow": self.flow_id})
                        changed = True
                    elif canonical_type(want) != canonical_type(have) and before is not None and before != c.type_name:
                        self._retype_column(qt, name, have, want, before, c.type_name)
                        changed = True
                    elif canonical_type(want) != canonical_type(have) and (p.dest, name, want) not in self._warned:
                        self._warned.add((p.dest, name, want))
                        log.warning(
                            "destination %r: %s.%s is %s in DuckDB, the source type now maps to %s; values are cast",
                            self.name,
                            qt,
                            name,
                            have,
                            want,
                        )
            p.fills = fills  # filled after every ALTER (DuckDB alters no table updated in the transaction)
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

    def _fill_missing(self, qt: str, columns: list[Column]) -> None:
        """Columns added at the source with a constant default: the rows the table holds (every row older than
        the columns, applied before them) get the values Postgres reads for them (``Column.missing``)."""
        values = pa.table({f"v{i}": fix_infinity(pa.chunked_array([c.missing])) for i, c in enumerate(columns)})
        sets = ", ".join(f"{q(c.name)} = (SELECT CAST(v{i} AS {duckdb_type(c, self._mappings)}) FROM __wallaby_missing)"
                         for i, c in enumerate(columns))
        self._con.register("__wallaby_missing", values)
        try:
            self._con.execute(f"UPDATE {qt} SET {sets}")
        finally:
            self._con.unregister("__wallaby_missing")
        log.info("destination %r: %s: rows older than %s given the values Postgres reads for them (the columns'"
                 " defaults)", self.name, qt, ", ".join(c.name for c in columns), extra={"flow": self.flow_id})

    def _retype_column(self, qt: str, name: str, have: str, want: str, old_pg: str, new_pg: str) -> None:
        """The source changed a column's type (``old_pg`` -> ``new_pg``) to one its DuckDB type does not widen to:
        rebuild the column as the new type, DuckDB casting the values it holds (what Postgres does for a plain
        ``ALTER ... TYPE``; a ``USING`` expression that computes other values rewrites the table at the source,
        which the stream does not carry). A value DuckDB cannot cast fails the epoch with the column, both types
        and what to do."""
        try:
            self._con.execute(f"ALTER TABLE {qt} ALTER {q(name)} SET DATA TYPE {want}")
        except duckdb.Error as exc:
            raise RetypeError(
                f"column {name!r} changed type at the source from {old_pg} to {new_pg}; DuckDB cannot convert the"
                f" values it holds from {have} to {want} ({self._clean(exc).splitlines()[0]}). Map {new_pg} to a"
                f" type both fit with the destination option type_mappings, or drop the DuckDB table and backfill"
                f" it", name) from None
        log.warning("destination %r: %s.%s rebuilt from %s to %s (the source changed it from %s to %s; values"
                    " cast by DuckDB)", self.name, qt, name, have, want, old_pg, new_pg, extra={"flow": self.flow_id})

    def _record_meta(self, p: _Pending, columns: dict[str, Column], dest: DestTable, changed: bool) -> None:
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


__all__ = ["DuckDBOptions", "DuckDBWriter", "duckdb_sink", "staging_dest", "target_dest"]
