"""The table engine every table-materializing destination shares (DuckDB, DuckLake; the warehouses next): what is
not the destination's SQL.

:class:`TableEngine` is a :class:`~sinks.base.Writer` that

- buffers an epoch's changes per destination table (``_Pending``): a truncate drops what was buffered before it for
  that table; a column that changes its source type, or appears with a value for older rows, cuts the table's
  changes there (:func:`_cut_before`: old and new types never meet in one Arrow table); read rows go to staging
  tables with ``batch_mode=staging`` (:func:`staging_dest`), the rest to the target (:func:`target_dest`);
- applies them when the buffer passes ``max_buffer_rows`` / ``max_buffer_bytes`` (inside the open transaction) and
  at the epoch's ``commit()``, committing early once a transaction holds ``max_tx_bytes``, so memory stays bounded;
- keeps the exactly-once contract: the high-water (``sinks.base.HighWater``, judged against the source identity) is
  stored by the destination in the same transaction as the rows (:meth:`_commit_at`), and on start every change at
  or below it is skipped (a replay); read rows of a backfill are outside the stream's order and never skipped;
- turns every failure into one error naming the destination and table (``PermanentSinkError``), and a type change
  the destination cannot express (``RetypeError``) into ``SchemaChangeError``, which the worker holds at the DDL
  gate.

A destination subclasses it with its dialect: :meth:`_open_state` (connect, create its state table, read the
stored high-water), :meth:`_begin` / :meth:`_commit_at` / :meth:`_rollback`, :meth:`_apply_rows` (tables, schema
evolution, the rows: the shared :func:`sinks.sql.merge.merge_pending` and :mod:`sinks.sql.reduce`),
:meth:`_where`, and optionally :meth:`_before_rows`, :meth:`_needs_ddl`, :meth:`_error_message`, :meth:`_meta_columns`,
:meth:`_acquire` / :meth:`_let_go` (a connection held only while needed), :meth:`_usable`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc

from sinks.base import HighWater, PermanentSinkError, SchemaChangeError, Writer
from sinks.sql.merge import TruncateMark
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

log = logging.getLogger("wallaby.sinks")


class ApplyError(Exception):
    """The changes of a table cannot be applied (a clash with the destination's table); the writer fails the epoch
    with it, naming the destination and table."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class RetypeError(ApplyError):
    """A column's values do not convert to the type the source changed it to."""

    def __init__(self, message: str, column: str):
        super().__init__(message)
        self.column = column


def target_dest(options: TableWriterOptions, schema: str, name: str) -> tuple[str, str]:
    """The destination table (schema, name) a source table ``schema.name`` lands in (the ``schema`` and ``table``
    options)."""
    return (options.schema_name or schema, options.table or name)


def staging_dest(options: TableWriterOptions, target: tuple[str, str]) -> tuple[str, str]:
    """The staging table of the target table ``target`` (``batch_mode=staging``): ``staging_schema`` (else the
    target's schema) . ``staging_table`` (else the target's name + ``staging_suffix``)."""
    return (options.staging_schema or target[0], options.staging_table or target[1] + options.staging_suffix)



def _cut_before(before: TableSchema, after: TableSchema) -> bool:
    """Whether the changes of schema version ``after`` must be applied apart from those of ``before``: a column of
    both changed its source type (name or typmod), or one appeared (its older rows read its missing value,
    ``Column.missing``, or NULL: a destination that kept a dropped column of that name sets it, :meth:`TableEngine.
    _reappeared`, and the rows of ``before`` must be in the table then)."""
    if before.relid != after.relid or before.version == after.version:
        return False
    old = {c.name: (c.type_name, c.typmod) for c in before.columns}
    return any(c.name not in old or (c.type_name, c.typmod) != old[c.name] for c in after.columns)


def fill_value(c: Column) -> pa.Array:
    """What the rows older than column ``c`` read for it at the source: its missing value, else NULL (one value)."""
    return c.missing if c.missing is not None and len(c.missing) else pa.nulls(1, c.arrow_type)


@dataclass(slots=True)
class _Pending:
    dest: tuple[str, str]
    table: TableSchema  # latest version seen
    truncate: bool = False  # target mode: empty the table before applying items
    items: list[TableChanges | TruncateMark] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # drop_columns: source columns to drop after the apply
    staging: bool = False  # a staging table (batch_mode=staging): read rows appended as they are
    # columns added with a missing value, or added again after a drop (_reappeared): set in the older rows
    fills: list[Column] = field(default_factory=list)


class TableEngine(Writer):
    """Buffers, applies and commits a flow's changes into tables (see the module docstring); a destination brings
    its dialect by overriding the hooks."""

    WHOLE_BATCHES = True  # buffered by table: a batch's size is no unit here

    def __init__(self, name: str, flow_id: str, options: TableWriterOptions, resume_state: Any = None, *,
                 source: SourceCheck | None = None, max_buffer_rows: int, max_buffer_bytes: int, max_tx_bytes: int,
                 where: str):
        self.name = name
        self.flow_id = flow_id
        self.options = options
        self.source = source  # the flow's source: the high-water's identity is judged against it, and stored
        self.max_buffer_rows = max_buffer_rows
        self.max_buffer_bytes = max_buffer_bytes
        self.max_tx_bytes = max_tx_bytes
        self._append = options.write_mode == "append"
        self._staging = options.batch_mode == "staging"
        self._staged_for: dict[tuple[str, str], tuple[str, str]] = {}  # staging table -> its target table
        self._mappings = options.mappings()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._tx = False
        self._tx_bytes = 0  # changes applied in the open transaction
        self._applying = (0, 0)  # the tables and bytes of the buffer being applied (_apply_pending)
        self._epoch_bytes = 0  # changes taken since the last epoch's end (the Arrow size buffered)
        self._taken_bytes = 0  # changes taken since the writer began (the Arrow size buffered)
        self._tables: dict[tuple[str, str], Any] = {}  # dest -> what the destination's table is (its columns)
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

        row = self._open_state()
        # taken: everything at or below is in the destination (or buffered for this epoch); stored: committed
        self._hw = HighWater.judged(source, name, Position(int(row[0]), int(row[1])) if row else ZERO,
                                    SourceIdentity.from_json(row[2]) if row else None, where)
        self._applied_upto = self._hw.stored
        if row is not None and self._hw.stored == ZERO:  # discarded by a reset: gone for good, even if nothing comes
            self._forget_state()
        self._let_go()
        if resume_state and row is None:
            log.info("destination %r: bytewax resume state %s but no high-water stored; applying what comes",
                     name, resume_state)

    # ------------------------------------------------------------------ the dialect's hooks

    def _open_state(self) -> tuple[int, int, str | None] | None:
        """Connect, create what the writer keeps in the destination (its state table), and read the stored
        high-water of this flow and destination: (lsn, ordinal, source identity JSON), None when there is none."""
        raise NotImplementedError

    def _forget_state(self) -> None:
        """Delete this flow and destination's stored high-water (a reset discarded it)."""
        raise NotImplementedError

    def _begin(self) -> None:
        """Open a transaction unless one is open (``self._tx``)."""
        raise NotImplementedError

    def _commit_at(self, mark: Position) -> None:
        """Store the high-water ``mark`` in the open transaction (when above what is stored) and commit it: every
        change at or below it is applied, none above it; then ``self._tx`` False, ``self._tx_bytes`` 0, and
        ``self._hw.stored`` raised to ``mark``."""
        raise NotImplementedError

    def _rollback(self) -> None:
        """Roll back the open transaction (a failure; errors ignored)."""
        raise NotImplementedError

    def _apply_rows(self, p: _Pending) -> None:
        """Apply one table's pending changes: its table created or evolved, a truncate, the rows."""
        raise NotImplementedError

    def _where(self, where: str | None) -> str:
        """The prefix of an error: what was written where (never a secret)."""
        raise NotImplementedError

    def _needs_ddl(self, p: _Pending) -> bool:
        """Whether applying ``p`` must start in a new transaction (DuckDB alters no table it changed rows of)."""
        return False

    def _error_message(self, p: _Pending, exc: Exception) -> str | None:
        """The message of a driver error raised while applying ``p``; None: not the destination's, re-raise."""
        return None

    def _after_apply(self) -> None:
        """After each table's apply, failed or not (release what it registered)."""

    def _meta_columns(self, p: _Pending) -> list[dict] | None:
        """The columns the meta table recorded for the table's last applied shape (None: none recorded)."""
        return None

    def _acquire(self) -> None:
        """Before the destination is touched (a connection let go between epochs is opened again)."""

    def _let_go(self) -> None:
        """Once an epoch is committed (let go of what others may want between epochs)."""

    def _usable(self) -> bool:
        """Whether the writer can still write (not closed)."""
        return True

    # ------------------------------------------------------------------ public

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
            if self._tx_bytes >= self.max_tx_bytes and self._commits_early():
                self._commit_all()  # not an epoch's end: the destination is not let go of
                # The transaction's buffers are freed: hand their heap pages back now, not only at the
                # epoch's end. Measured (300k wide changes): peak RSS 382-408 -> 356-371 MB, same rate.
                release_memory()

    def _commits_early(self) -> bool:
        """Hook: whether a transaction past ``max_tx_bytes`` is committed now (DuckDB holds it to a row group's
        end, or committed it there while applying)."""
        return True

    def commit(self) -> dict[str, int] | None:
        """The epoch's end: everything taken applied and committed with its high-water; then :meth:`_let_go`."""
        self._check_usable()
        self._commit_all()
        self._let_go()
        self._epoch_bytes = 0
        stored = self._hw.stored
        if stored == ZERO:
            return None
        return {"lsn": stored.lsn, "ordinal": stored.ordinal}

    def _commit_all(self) -> None:
        if self._pending:
            self._apply_pending()
        if self._hw.taken > self._hw.stored or self._tx:
            self._acquire()
            self._commit_at(self._hw.taken)

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
            # follows the new shape at the next apply (in a new transaction when the destination needs one:
            # _apply_pending, committed at the last change taken before this one, so a replay skips exactly what was
            # applied).
            p.table = last.table  # the shape of what is applied now (_pending_for moved it on already)
            self._apply_pending()
            p = self._pending_for(seg.table, p.staging)
        p.items.append(seg)
        size = seg.buffer_size()
        self._buffered_rows += len(seg)
        self._buffered_bytes += size
        self._epoch_bytes += size
        self._taken_bytes += size

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
                            self._buffered_bytes -= i.buffer_size()
                    p.items.clear()
                    p.truncate = True
        elif ev.op in (OP_DDL, OP_MESSAGE):
            log.debug("destination %r ignores %s at %s", self.name, ev.op, ev.position)
        else:
            log.warning("destination %r: unknown event %r at %s ignored", self.name, ev.op, ev.position)

    # ------------------------------------------------------------------ apply

    def _check_usable(self) -> None:
        if self._failed:
            raise PermanentSinkError(self.name, f"writer failed earlier and must be restarted: {self._failed}")
        if not self._usable():
            raise PermanentSinkError(self.name, "writer is closed")

    def _fail(self, where: str | None, message: str, held: tuple[str, str, Position] | None = None) -> NoReturn:
        """Roll back, forget what is cached, raise. ``held``: (source table, column, first change) of a schema
        change the destination cannot express (the worker holds the flow there)."""
        self._failed = message
        if self._tx:
            self._rollback()
            self._tx = False
        self._tables.clear()
        self._source_cols.clear()
        self._fresh.clear()
        self._dml_tables.clear()
        self._meta_seen.clear()
        self._pending.clear()
        prefix = self._where(where)
        if held is not None:
            raise SchemaChangeError(self.name, prefix + message, *held) from None
        raise PermanentSinkError(self.name, prefix + message) from None

    def _apply_pending(self) -> None:
        if not self._pending:
            return
        self._acquire()
        self._before_rows(list(self._pending.values()))
        pending, self._pending = self._pending, {}
        self._applying = (len(pending), self._buffered_bytes)  # tables and bytes of this apply
        self._buffered_rows = self._buffered_bytes = 0
        if self._tx and any(self._needs_ddl(p) for p in pending.values()):
            # the destination alters no table the same transaction changed rows of (DuckDB): what is applied so far
            # is committed first (exactly: nothing of these pending changes is applied yet)
            self._commit_at(self._applied_upto)
        self._begin()
        for p in pending.values():
            try:
                with self._failing(p):
                    self._apply_table(p)
            finally:
                self._after_apply()
        self.stats["applies"] += 1
        self._applied_upto = max(self._hw.taken, self._taken_in_batch or ZERO)

    def _before_rows(self, pending: list[_Pending]) -> None:
        """Hook: what a destination does for the pending tables before any of their rows (Snowflake runs all their
        DDL first, each statement committing); :meth:`_failing` turns its errors into the writer's."""

    @contextmanager
    def _failing(self, p: _Pending) -> Iterator[None]:
        """Every failure applying ``p`` as the writer's one error naming the destination table (a type change the
        destination cannot express: held at the DDL gate)."""
        where = f"{p.dest[0]}.{p.dest[1]}"
        try:
            yield
        except RetypeError as exc:
            first = next(i.first for i in p.items if isinstance(i, TableChanges))
            self._fail(where, exc.message, held=(p.table.qualified, exc.column, first))
        except (ApplyError, ReduceError) as exc:
            self._fail(where, exc.message)
        except pa.ArrowException as exc:
            self._fail(where, f"cannot combine the epoch's batches: {exc}")
        except Exception as exc:
            message = self._error_message(p, exc)
            if message is None:
                raise
            self._fail(where, message)

    def _apply_table(self, p: _Pending) -> None:
        self._apply_rows(p)
        self._source_cols[p.dest] = [c.name for c in p.table.columns]
        for c in p.table.columns:
            self._applied_types[(p.dest, c.name)] = c.type_name

    def _reappeared(self, p: _Pending, columns: dict[str, Column], dest_columns: Any) -> list[Column]:
        """The columns of ``columns`` the destination table has and the table's last applied source shape lacked:
        dropped at the source and added again under the same name (a destination keeps a dropped column unless
        ``drop_columns``). Postgres reads the new column's missing value, or NULL, in every row older than it,
        whatever the dropped one held, so the destination sets it in the rows it holds (``_Pending.fills``). None
        of them when the last shape is unknown (a new writer with ``meta_table_enabled=false``)."""
        previous = self._previous_source_columns(p)
        if previous is None:
            return []
        back = [c for name, c in columns.items() if name in dest_columns and name not in previous]
        for c in back:
            log.info("destination %r: %s.%s was dropped and added again at the source: the rows it holds get what"
                     " Postgres reads for them (%s)", self.name, *p.dest, c.name,
                     "its default" if c.missing is not None else "NULL", extra={"flow": self.flow_id})
        return back

    def _previous_source_columns(self, p: _Pending) -> list[str] | None:
        """The source columns of the table's last applied shape: this writer's, else the meta table's."""
        known = self._source_cols.get(p.dest)
        if known is not None:
            return known
        meta = self._meta_columns(p)
        return [c["name"] for c in meta] if meta is not None else None

    @staticmethod
    def _columns_of(latest: TableSchema, segs: list[TableChanges]) -> dict[str, Column]:
        cols: dict[str, Column] = {}
        for s in segs:
            for c in s.table.columns:
                cols[c.name] = c
        for c in latest.columns:  # the latest definition wins
            cols[c.name] = c
        return cols


__all__ = ["ApplyError", "RetypeError", "TableEngine", "fill_value", "staging_dest", "target_dest"]
