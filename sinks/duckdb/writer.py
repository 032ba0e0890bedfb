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
    caught up; an epoch may then become visible in parts. When the source has
    caught up (a batch cut with nothing more waiting, ``flush()``), what is taken
    is committed the same way and the file let go of (``release_file``), so a
    quiet stream shows within a batch rather than an epoch; under a backlog no
    batch is caught up and epochs stay whole. On start the writer reads the stored
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
    ``INSERT ... SELECT``; under one integer key whose values are all above the
    highest the table may hold (an upper bound the writer keeps), not even the
    delete (``_keys_absent``: ids that only grow, an ETL load). Delete+insert beats ``UPDATE`` (DuckDB updates of
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
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sinks.base import PermanentSinkError, TransientSinkError, WriterSink, source_json
from sinks.duckdb.apply import APPEND_COLS, DestTable, apply_append, apply_keyed, apply_keyless, q
from sinks.duckdb.options import DuckDBDestinationOptions as DuckDBOptions
from sinks.duckdb.types import canonical_type, duckdb_type, widens
from sinks.retry import Steps, retry
from sinks.sql.engine import ApplyError, RetypeError, TableEngine, _Pending, fill_value, staging_dest, target_dest
from sinks.sql.merge import fix_infinity, merge_pending
from sinks.sql.reduce import lit
from wallaby.core.changes import (
    LSN_COL,
    OP_COL,
    OP_READ,
    ORD_COL,
    Column,
    Position,
    TableChanges,
)
from wallaby.core.identity import SourceCheck, SourceIdentity
from wallaby.core.settings import on_import as settings_on_import

log = logging.getLogger("wallaby.sinks.duckdb")
_T = TypeVar("_T")

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
# wallaby/runtime.py; 200k wide changes 850-920 -> 429 MB and 13.8k -> 19k changes/s. The COMMIT itself briefly
# needs memory in proportion to the transaction (a worker's RSS sampled every 10 ms: its peaks were during COMMIT):
# 200k wide changes, 7 runs each, peak RSS 392-446 MB at 32 MiB, 368-391 MB at 16 MiB, no slower (a run took 15.2
# s at 32 MiB, 14.3 s at 16, whole process); 1M narrow changes 363-372 vs 362-374 MB and 3.23 vs 3.26 s (3 runs
# each, 32 vs 16 MiB).
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
# Closing the file folds DuckDB's log into it (a checkpoint: every column compressed), on DuckDB's threads. After a
# catch-up (more than FOLD_WIDE_BYTES of changes since the file was last closed) the close runs on every core: the
# worker waits for it, and the source and the walsender are idle then (the stream caught up, or the worker stops).
# Measured (1M narrow rows in the log, 2 cores): the close took 0.98-1.06 s on one thread, 0.63-0.68 s on two.
# Only with the default of one thread (WALLABY_DUCKDB_THREADS set to more keeps its own).
FOLD_WIDE_BYTES = 16 << 20
FOLD_THREADS = os.cpu_count() or 1
# A DuckDB file is open in one process at a time. When a flow's worker is replaced (restart, takeover), the new one
# waits this long for the old one to let go of the file.
DUCKDB_LOCK_WAIT = _SETTINGS.duckdb_lock_wait
# release_file: closing the file checkpoints it (DuckDB folds its log into the table file, compressing every column),
# which DUCKDB_CHECKPOINT_THRESHOLD otherwise puts off. Cheap after a steady epoch, heavy after a catch-up's. Measured
# (make bench, 300k changes, 2 s epochs, letting go after every epoch): ~200-byte rows 0.99x the rate of holding the
# file, ~5 KB rows 0.28x (3,010 vs 10,628 changes/s). So an epoch that took more than RELEASE_BUSY_BYTES of changes
# (a catch-up) keeps the file, unless it was held RELEASE_MAX_HOLD seconds: readers wait at most that long.
RELEASE_BUSY_BYTES = 16 << 20
RELEASE_MAX_HOLD = 30.0
# Once let go of, the file is not opened again for this long: with a flush at every quiet moment of a steady stream
# (every few ms) the writer opened it again at once and a reader polling it rarely got in. Measured (make bench
# latency group, DuckDB, a reader polling every 20 ms, p99 commit to visible; two runs each, 2 cores): no gap 365-375
# ms at 1k changes/s and 376-378 at 10k/s; 30 ms 225-275 and 268-321; 60 ms 289 and 310. Again with the file
# attached (_AttachedFile), 10k/s, two runs each: 15 ms 251-288, 20 ms 204-231, 30 ms 172-177.
RELEASE_GAP = 0.03
_UNKNOWN = object()  # no bound known for a table's keys (DuckDBWriter._keys_absent)
# DuckDB stores a table in row groups of this many rows. A transaction that appends rows writes them to the file in
# row groups of their own (its last one partial); a checkpoint then merges runs of partial row groups (vacuum),
# rewriting every row group after the first partial one. A transaction committed early (max_tx_bytes) at an
# arbitrary count of rows left one small partial row group each. Measured (1M narrow inserts into one table, 2
# cores): 32MB transactions of ~143k rows: inserts 2.11 s and a close (checkpoint) of 0.74 s that doubled the file
# (77 -> 151 MB) before compacting; transactions of 2 x 122,880 rows: 2.05 s and 0.04 s. So a transaction of
# inserts into one table past max_tx_bytes is committed at the last row group boundary its rows passed (the rows
# after it begin the next transaction), or held until the next boundary while a row group's worth of its rows
# costs at most ROW_GROUP_HOLD times max_tx_bytes (64 MiB at the default: rows of up to ~500 bytes; ~200-byte rows
# take ~27MB a row group; ~5 KB rows ~600MB: those commit at max_tx_bytes as before).
ROW_GROUP_ROWS = 122_880
ROW_GROUP_HOLD = 4
# The waits while another process holds the file: 5 ms growing by 1.3x to 2 s (5, 11, 20, 31, 45, 64, 88 ms in all).
# A reader's open-read-close takes a few ms; with a first wait of 0.1 s, a reader polling every 20 ms put the
# writer's reopen (after each flush) 0.1 s behind, and doubling from 10 ms still overshot a reader's few ms by up to
# as much again. Measured (make bench latency, DuckDB, 10k changes/s, default epoch, 2 runs each): p50/p99 179-206
# / 317-343 ms with 10 ms doubling, 170-176 / 273-274 ms with these.
_LOCK_STEPS = Steps(0.005, 1.3, 2.0)


def _connect(dsn: str, config: dict) -> duckdb.DuckDBPyConnection:
    """A connection to ``dsn``, waiting up to :data:`DUCKDB_LOCK_WAIT` (:data:`_LOCK_STEPS`) while another process
    holds the file's lock."""
    return _waiting_for_lock(dsn, lambda: duckdb.connect(dsn, config=config))


def _held_elsewhere(exc: BaseException) -> bool:
    """Whether DuckDB refused a file because another process holds its lock, or another database of this process
    has it attached (a writer's :class:`_AttachedFile` against a ``duckdb.connect`` of the same file)."""
    return (isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()) or (
        isinstance(exc, duckdb.BinderException) and "file handle conflict" in str(exc).lower())


def _waiting_for_lock(dsn: str, open_file: Callable[[], _T]) -> _T:
    """``open_file()``, tried again while another process holds ``dsn`` (:func:`_held_elsewhere`), up to
    :data:`DUCKDB_LOCK_WAIT`."""
    return retry(open_file, policy=_LOCK_STEPS, retryable=_held_elsewhere,
                 deadline=DUCKDB_LOCK_WAIT,
                 on_retry=lambda exc, attempt, delay: attempt == 1 and log.info(
                     "DuckDB %s is held by another process; waiting", _safe_dsn(dsn)))


# The catalogs an in-memory DuckDB has of its own: a file attached under one of these names gets another alias.
_BUILTIN_CATALOGS = frozenset({"memory", "system", "temp", "main"})


class _AttachedFile:
    """A DuckDB file held by attaching it to an in-memory database (``release_file``): letting go of the file is
    ``DETACH`` (which checkpoints it and drops its lock, as closing the last connection does), opening it again
    ``ATTACH``. The in-memory database, its settings and its loaded extensions stay. Measured (a 236k-row file,
    600-row commits, 2 cores, medians of 20): ``duckdb.connect`` 9.0 ms and close 6.7 ms, against ATTACH 0.7 ms and
    DETACH 4.8 ms: most of a connect is building a database instance (an in-memory connect alone takes 8-9 ms).

    One per file and process (:meth:`of`), as ``duckdb.connect`` shares one database per file within a process:
    DuckDB lets one database of a process attach a file. Each writer of the file holds a connection of its own
    (:meth:`hold`, a cursor with the file as its default catalog); the file is detached when the last one lets go
    (:meth:`let_go`). The catalog is named as ``duckdb.connect`` names it (the file's stem), so
    ``current_database()`` is the same either way."""

    _lock = threading.Lock()
    _files: dict[str, _AttachedFile] = {}

    def __init__(self, path: str, config: dict):
        self.path = path
        stem = Path(path).stem or "db"
        self.alias = stem if stem.lower() not in _BUILTIN_CATALOGS else f"{stem}_file"
        # an in-memory database spills to ./.tmp by default; a file connection spills beside its file
        self.base = duckdb.connect(":memory:", config={**config, "temp_directory": f"{path}.tmp"})
        self.users = 0  # writers of the file (of())
        self.holders = 0  # connections holding it attached (hold())
        self.attached = False  # (a DETACH that failed leaves it attached: the next hold() uses it as it is)

    @classmethod
    def of(cls, path: str, config: dict) -> _AttachedFile:
        """The process's attachable ``path`` (made on first use); :meth:`done` when the writer is closed."""
        with cls._lock:
            file = cls._files.get(path)
            if file is None:
                file = cls._files[path] = cls(path, config)
            file.users += 1
            return file

    def hold(self) -> duckdb.DuckDBPyConnection:
        """A connection with the file attached (waiting while another process holds it) as its default catalog."""
        with self._lock:
            if not self.attached:
                _waiting_for_lock(self.path, lambda: self.base.execute(f"ATTACH {lit(self.path)} AS {q(self.alias)}"))
                self.attached = True
            self.holders += 1
        con = self.base.cursor()
        con.execute(f"USE {q(self.alias)}")
        return con

    def let_go(self, con: duckdb.DuckDBPyConnection, fold_threads: int = 0) -> None:
        """Close ``con`` (a transaction it holds open is rolled back); the last holder detaches the file, which
        checkpoints it with ``fold_threads`` threads when given."""
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # no transaction open
        con.close()
        with self._lock:
            self.holders -= 1
            if self.holders:
                return
            if fold_threads:
                self.base.execute(f"SET threads = {fold_threads}")
            try:
                self.base.execute(f"DETACH {q(self.alias)}")
                self.attached = False
            finally:
                if fold_threads:
                    self.base.execute(f"SET threads = {DUCKDB_THREADS or 'DEFAULT'}")

    def done(self) -> None:
        """A writer of the file is closed (after letting go): the last one closes the in-memory database."""
        with self._lock:
            self.users -= 1
            if self.users == 0 and self._files.get(self.path) is self:
                del self._files[self.path]
                self.base.close()


STATE_TABLE = "main.__wallaby_state"
META_TABLE = "main.__wallaby_meta"


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
        con.execute(f"DELETE FROM {STATE_TABLE} WHERE {_state_row(flow_id, name)}")
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
        row = con.execute(f"SELECT lsn, ordinal, {source} FROM {STATE_TABLE} WHERE {_state_row(flow_id, name)}"
                          ).fetchone()
    except duckdb.Error:
        return None
    finally:
        con.close()
    if row is None:
        return None
    return Position(int(row[0]), int(row[1])), SourceIdentity.from_json(row[2]), f"DuckDB {_safe_dsn(dsn)}"


# --------------------------------------------------------------------------- helpers


def _state_row(flow_id: str, name: str) -> str:
    """The WHERE clause of a destination's row in the state table, with literals, not parameters: DuckDB's client
    imports pandas (when installed) to bind the first parameter of a process, ~0.4 s of every worker's start-up
    (a run with nothing to read took 1.3-2 s, a third of it that import)."""
    return f"flow_id = {lit(flow_id)} AND destination = {lit(name)}"


def _safe_dsn(dsn: str) -> str:
    """The DSN if it is a plain file path (or :memory:), else a redacted marker."""
    if dsn == ":memory:" or (re.fullmatch(r"[\w./\\ ~+-]+", dsn) and not dsn.startswith(("md:", "motherduck:"))):
        return dsn
    return "<redacted dsn>"


# --------------------------------------------------------------------------- writer


class DuckDBWriter(TableEngine):
    """Applies change batches to DuckDB; one transaction per epoch, or per quiet moment of the stream (see the
    module docstring)."""

    # flush(): commit (and let go of the file) whenever the source has caught up, not only at an epoch's end
    FLUSH_WHEN_CAUGHT_UP = True
    # a transaction of inserts past max_tx_bytes is committed at a row group's end (ROW_GROUP_ROWS)
    ALIGNS_ROW_GROUPS = True

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
        self.options = options
        self.name = name
        self._dsn_shown = _safe_dsn(options.dsn)
        # release_file: the file is let go between epochs (readers get in); reopened when the writer needs it
        self._release = bool(getattr(options, "release_file", False)) and options.dsn != ":memory:"
        self._released = False
        self._held_since = time.monotonic()  # when the file was last opened
        self._let_go_at = 0.0  # when the file was last let go of
        self._closed_at_bytes = 0  # the engine's _taken_bytes when the file was last closed (_close_file)
        self._key_max: dict[tuple[str, str], Any] = {}  # dest -> an upper bound of its integer keys (_keys_absent)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._file: _AttachedFile | None = None  # release_file: the file, attached to an in-memory database
        # dest -> the rows the open transaction appended to it (inserts only; absent: not counted), and whether the
        # last apply asked to hold the transaction open past max_tx_bytes (ROW_GROUP_ROWS)
        self._tx_rows: dict[tuple[str, str], int | None] = {}
        self._held_for_row_group = False
        super().__init__(name, flow_id, options, resume_state, source=source, max_buffer_rows=max_buffer_rows,
                         max_buffer_bytes=max_buffer_bytes, max_tx_bytes=max_tx_bytes,
                         where=f"DuckDB {self._dsn_shown} (destination {name!r})")

    def _open_state(self) -> tuple[int, int, str | None] | None:
        try:
            self._con = self._open_connection()
            self._con.execute(
                f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (flow_id VARCHAR NOT NULL, destination VARCHAR NOT NULL,"
                " lsn UBIGINT NOT NULL, ordinal UBIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL, source VARCHAR)"
            )
            self._con.execute(f"ALTER TABLE {STATE_TABLE} ADD COLUMN IF NOT EXISTS source VARCHAR")  # older files
            if self.options.meta_table_enabled:
                self._con.execute(
                    f"CREATE TABLE IF NOT EXISTS {META_TABLE} (flow_id VARCHAR NOT NULL, source_schema VARCHAR,"
                    " source_table VARCHAR, dest_schema VARCHAR, dest_table VARCHAR, schema_version INTEGER,"
                    " write_mode VARCHAR, columns_json JSON, updated_at TIMESTAMPTZ)"
                )
            return self._con.execute(
                f"SELECT lsn, ordinal, source FROM {STATE_TABLE} WHERE {_state_row(self.flow_id, self.name)}"
            ).fetchone()
        except duckdb.Error as exc:
            raise PermanentSinkError(self.name, f"cannot open DuckDB {self._dsn_shown}: {self._clean(exc)}") from None

    def _forget_state(self) -> None:
        self._con.execute(f"DELETE FROM {STATE_TABLE} WHERE {_state_row(self.flow_id, self.name)}")

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
        if self._release and not dsn.startswith(("md:", "motherduck:")):
            if self._file is None:
                self._file = _AttachedFile.of(str(Path(dsn).expanduser().resolve()), config)
            return self._file.hold()
        return _connect(dsn, config)

    def _acquire(self) -> None:
        """Open the file again after :meth:`_let_go` (``release_file``), before anything touches it."""
        if not self._released:
            return
        gap = self._let_go_at + RELEASE_GAP - time.monotonic()
        if gap > 0:  # a reader polling the file gets a turn between two flushes (see RELEASE_GAP)
            time.sleep(gap)
        try:
            self._con = self._open_connection()
        except duckdb.Error as exc:
            if _held_elsewhere(exc):
                # a reader held the file past WALLABY_DUCKDB_LOCK_WAIT: busy, not broken (exit 75, restarted)
                raise TransientSinkError(
                    self.name, f"DuckDB {self._dsn_shown} is held by another process past WALLABY_DUCKDB_LOCK_WAIT"
                    f" ({DUCKDB_LOCK_WAIT:g} s); readers should keep their connections short: {self._clean(exc)}"
                ) from None
            raise PermanentSinkError(self.name, f"cannot open DuckDB {self._dsn_shown} again: {self._clean(exc)}") \
                from None
        self._released = False
        self._held_since = time.monotonic()

    def _let_go(self) -> None:
        """``release_file``: close the file once an epoch is committed, so other processes can open it (even read
        only, DuckDB lets one process at a time hold a file); not after a busy epoch (a catch-up) unless the file
        was held :data:`RELEASE_MAX_HOLD` s. What the writer knows of its tables stays: only this writer changes
        them."""
        if not self._release or self._tx or self._pending or self._con is None:
            return
        now = time.monotonic()
        if self._epoch_bytes > RELEASE_BUSY_BYTES and now - self._held_since < RELEASE_MAX_HOLD:
            return  # catching up: a checkpoint per epoch would cost more than the epoch (RELEASE_BUSY_BYTES)
        self._close_file(self._con)
        self._con = None  # type: ignore[assignment]
        self._released = True
        self._let_go_at = now

    def _close_file(self, con: duckdb.DuckDBPyConnection) -> None:
        """Close ``con`` (an open transaction is rolled back): DuckDB checkpoints the file, on every core after a
        catch-up (:data:`FOLD_WIDE_BYTES`)."""
        taken = getattr(self, "_taken_bytes", 0)  # (a writer whose set-up failed half-way has none)
        fold = DUCKDB_THREADS == 1 < FOLD_THREADS and taken - self._closed_at_bytes > FOLD_WIDE_BYTES
        self._closed_at_bytes = taken
        try:
            if self._file is not None:  # release_file: the file is attached to an in-memory database
                self._file.let_go(con, FOLD_THREADS if fold else 0)
                return
            if fold:
                con.execute(f"SET threads = {FOLD_THREADS}")
        except duckdb.Error:
            pass
        try:
            con.close()
        except duckdb.Error:
            pass

    # ------------------------------------------------------------------ public

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The writer's DuckDB connection (for inspection; do not write through it mid-epoch)."""
        self._acquire()
        return self._con

    def _commit_at(self, mark: Position) -> None:
        """Commit the open transaction with the high-water ``mark``: every change at or below it is applied, none
        above it (the epoch's end; or :attr:`_applied_upto` when a DDL must start a new transaction)."""
        if mark > self._hw.stored:
            self._begin()
            self._run(None, f"DELETE FROM {STATE_TABLE} WHERE {_state_row(self.flow_id, self.name)}")
            source = source_json(self.source)
            source = "NULL" if source is None else lit(source)
            self._run(None, f"INSERT INTO {STATE_TABLE} VALUES ({lit(self.flow_id)}, {lit(self.name)},"
                            f" {int(mark.lsn)}, {int(mark.ordinal)}, now(), {source})")
        if self._tx:
            self._run(None, "COMMIT")
            self._tx = False
            self._tx_bytes = 0
            self._dml_tables.clear()
            self._hw.stored = max(self._hw.stored, mark)

    def flush(self) -> None:
        """The stream is quiet: commit what is taken with its high-water and, with ``release_file``, let go of the
        file (unless the epoch is a catch-up's, as at an epoch's end), so readers see it now. A replay after a crash
        skips it by the high-water, as it skips an epoch's."""
        if not self.FLUSH_WHEN_CAUGHT_UP:
            return
        self._check_usable()
        self._commit_all()
        self._let_go()

    def close(self) -> None:
        self._released = False
        con = getattr(self, "_con", None)
        if con is not None:
            self._close_file(con)  # an open transaction is rolled back
            self._con = None  # type: ignore[assignment]
        file, self._file = getattr(self, "_file", None), None
        if file is not None:
            file.done()

    # ------------------------------------------------------------------ buffering

    # ------------------------------------------------------------------ transaction plumbing

    def _usable(self) -> bool:
        return self._con is not None or self._released

    def _rollback(self) -> None:
        try:
            self._con.execute("ROLLBACK")
        except duckdb.Error:
            pass

    def _where(self, where: str | None) -> str:
        return f"DuckDB {self._dsn_shown}, table {where}: " if where else f"DuckDB {self._dsn_shown}: "

    def _error_message(self, p: _Pending, exc: Exception) -> str | None:
        if isinstance(exc, duckdb.ConversionException):
            return self._conversion_message(p, self._clean(exc))
        if isinstance(exc, duckdb.Error):
            return self._clean(exc)
        return None

    def _after_apply(self) -> None:
        try:
            self._con.unregister("__wallaby_src")
        except duckdb.Error:
            pass

    def _clean(self, exc: BaseException) -> str:
        text = str(exc)
        if self._dsn_shown != self.options.dsn:
            text = text.replace(self.options.dsn, self._dsn_shown)
        return text

    def _begin(self) -> None:
        if not self._tx:
            self._run(None, "BEGIN TRANSACTION")
            self._tx = True
            self._tx_rows.clear()

    def _run(self, where: str | None, sql: str, params: list[Any] | None = None) -> duckdb.DuckDBPyConnection:
        try:
            return self._con.execute(sql, params) if params is not None else self._con.execute(sql)
        except duckdb.Error as exc:
            self._fail(where, self._clean(exc))

    # ------------------------------------------------------------------ apply

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
        cut = self._row_group_cut(p, src)
        if cut:  # the transaction ends at a row group's end (ROW_GROUP_ROWS); the rest of src begins the next
            self._apply_src(p, qt, src.slice(0, cut), columns, dest)
            self._commit_at(Position(src.column(LSN_COL)[cut - 1].as_py(), src.column(ORD_COL)[cut - 1].as_py()))
            src = src.slice(cut)
            if src.num_rows == 0:
                return
            self._begin()
            self._dml_tables.add(p.dest)
            self._tx_rows[p.dest] = src.num_rows
        self._apply_src(p, qt, src, columns, dest)

    def _row_group_cut(self, p: _Pending, src: pa.Table) -> int:
        """How many of ``src``'s rows end the open transaction at a row group's end (0: none), and whether the
        engine holds the transaction open past ``max_tx_bytes`` (:data:`ROW_GROUP_ROWS`). Counts the rows the
        transaction appends to each table."""
        self._held_for_row_group = False
        before = self._tx_rows.get(p.dest, 0)
        inserts = self.ALIGNS_ROW_GROUPS and before is not None and not p.truncate and not p.staging and \
            pc.all(pc.equal(src.column(OP_COL), "insert")).as_py()
        self._tx_rows[p.dest] = before + src.num_rows if inserts else None
        tables, applying = self._applying
        tx_bytes = self._tx_bytes + applying  # the engine adds this apply's bytes once it is applied
        if not inserts or tables != 1 or tx_bytes < self.max_tx_bytes:
            return 0  # (rows of another table in this apply may sit before the cut: it would not be a high-water)
        total = before + src.num_rows
        boundary = total - total % ROW_GROUP_ROWS
        if boundary > before:
            self._held_for_row_group = True  # the rows after the boundary stay in the next transaction
            return boundary - before
        self._held_for_row_group = (boundary + ROW_GROUP_ROWS) * tx_bytes / total <= \
            ROW_GROUP_HOLD * self.max_tx_bytes
        return 0

    def _commits_early(self) -> bool:
        held, self._held_for_row_group = self._held_for_row_group, False  # (asked once per apply)
        return not held

    def _apply_src(self, p: _Pending, qt: str, src: pa.Table, columns: dict[str, Column], dest: DestTable) -> None:
        """Apply ``src`` (the rows of :func:`merge_pending`) to table ``qt`` by the table's mode."""
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
                        self._still_fresh(p, qt, src), self._keys_absent(p, qt, src, table.key_names))
        else:
            apply_keyless(self._con, qt, src, columns, dest)

    def _keys_absent(self, p: _Pending, qt: str, src: pa.Table, keys: tuple[str, ...]) -> bool:
        """Whether ``src`` is inserts only under one integer key, all above the highest key the target may hold: then
        no insert can meet its key, and the apply skips the delete that makes an insert an upsert (an ETL load or
        an append-mostly table: ids that only grow). The writer keeps an upper bound of the target's keys per table
        (read once with ``max()``, raised by each such epoch, forgotten at anything else: reads, updates, deletes,
        truncates, a schema change), so a bound too high only costs the delete, never a duplicate key."""
        bound = self._key_max.pop(p.dest, _UNKNOWN)  # forgotten unless this epoch keeps it
        if len(keys) != 1 or p.truncate or not pa.types.is_integer(src.column(keys[0]).type) or \
                not pc.all(pc.equal(src.column(OP_COL), "insert")).as_py():
            return False
        lo_hi = pc.min_max(src.column(keys[0]))
        lo, hi = lo_hi["min"].as_py(), lo_hi["max"].as_py()
        if bound is _UNKNOWN:
            bound = self._con.execute(f"SELECT max({q(keys[0])}) FROM {qt}").fetchone()[0]
        if bound is not None and not isinstance(bound, int):  # the key is mapped to a non-integer type
            return False
        self._key_max[p.dest] = hi if bound is None else max(bound, hi)
        return bound is None or lo > bound

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
            fills += self._reappeared(p, columns, dest.columns)
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
                        self._widen_column(p, qt, name, have, want, c)
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
        """Columns added at the source with a constant default, or dropped and added again: the rows the table
        holds (every row older than the columns, applied before them) get the values Postgres reads for them
        (``fill_value``)."""
        values = pa.table({f"v{i}": fix_infinity(pa.chunked_array([fill_value(c)])) for i, c in enumerate(columns)})
        sets = ", ".join(f"{q(c.name)} = (SELECT CAST(v{i} AS {duckdb_type(c, self._mappings)}) FROM __wallaby_missing)"
                         for i, c in enumerate(columns))
        self._con.register("__wallaby_missing", values)
        try:
            self._con.execute(f"UPDATE {qt} SET {sets}")
        finally:
            self._con.unregister("__wallaby_missing")
        log.info("destination %r: %s: rows older than %s given the values Postgres reads for them (the columns'"
                 " defaults, else NULL)", self.name, qt, ", ".join(c.name for c in columns),
                 extra={"flow": self.flow_id})

    def _widen_column(self, p: _Pending, qt: str, name: str, have: str, want: str, c: Column) -> None:
        """The source widened a column (``widens``): follow it in place."""
        self._con.execute(f"ALTER TABLE {qt} ALTER {q(name)} SET DATA TYPE {want}")
        log.info("destination %r: %s.%s widened from %s to %s", self.name, qt, name, have, want,
                 extra={"flow": self.flow_id})

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
