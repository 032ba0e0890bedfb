"""The change model: what travels from the source through operators to sinks.

A bytewax item is a :class:`ChangeBatch`, never a single row. A batch holds an
ordered list of *segments*: :class:`TableChanges` (a run of row changes of one
table, as one Arrow record batch) and :class:`Event` (truncate, ddl, logical
message). Order inside a batch is the order of the WAL; per-table order is
what sinks must keep.

Row segments are Arrow record batches with these columns:

- the *after* image: one column per table column, under the column's own name
  (NULL for deletes, and for unchanged TOAST values, see ``__unchanged``);
- ``__op`` (string): ``insert``, ``update``, ``delete`` or ``read`` (a backfill snapshot's row);
- ``__lsn`` (uint64): commit LSN of the transaction;
- ``__ord`` (uint64): ordinal of the change inside its transaction (from 1);
- ``__ts`` (timestamp[us, UTC]): commit timestamp;
- ``__xid`` (uint32): transaction id;
- ``__unchanged`` (list<string>): names of unchanged TOASTed columns, NULL when
  none (the value in the after column is then NULL and means "keep");
- ``__before.<col>`` for every table column, only when some row of the segment
  carries a before image (old key for updates that change it and for deletes
  with the default replica identity; the whole old row with REPLICA IDENTITY
  FULL). All NULL for rows without one.
- ``__wal`` (binary), only when a destination needs raw pgoutput
  (``payload_mode=wal``): each change's Insert/Update/Delete message as the
  walsender sent it.

``(__lsn, __ord)`` is a change's position: a total order within a slot,
stable across restarts, because pgoutput's BEGIN names the final commit LSN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

OP_INSERT = "insert"
OP_UPDATE = "update"
OP_DELETE = "delete"
OP_TRUNCATE = "truncate"
OP_DDL = "ddl"
OP_READ = "read"  # a row of a backfill snapshot (Debezium's "r"): an insert that may meet its key already there
OP_MESSAGE = "message"

OP_COL = "__op"
LSN_COL = "__lsn"
ORD_COL = "__ord"
TS_COL = "__ts"
XID_COL = "__xid"
UNCHANGED_COL = "__unchanged"
BEFORE_PREFIX = "__before."
WAL_COL = "__wal"  # the change's raw pgoutput message (binary); only when a destination asks for it
META_COLS = (OP_COL, LSN_COL, ORD_COL, TS_COL, XID_COL, UNCHANGED_COL)

META_FIELDS = (
    pa.field(OP_COL, pa.string(), nullable=False),
    pa.field(LSN_COL, pa.uint64(), nullable=False),
    pa.field(ORD_COL, pa.uint64(), nullable=False),
    pa.field(TS_COL, pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field(XID_COL, pa.uint32(), nullable=False),
    pa.field(UNCHANGED_COL, pa.list_(pa.string()), nullable=True),
)


def format_lsn(lsn: int) -> str:
    """Postgres text form of an LSN: ``16/B374D848``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Parse ``X/Y`` (hex halves) into an integer LSN; ValueError names the bad text."""
    try:
        hi, lo = text.strip().split("/")
        value = (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        raise ValueError(f"{text!r} is not an LSN; expected the form X/Y in hex, e.g. 0/16B6C50") from None
    if not 0 <= value < 1 << 64 or int(lo, 16) > 0xFFFFFFFF:
        raise ValueError(f"{text!r} is out of range for an LSN")
    return value


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """Where a change sits in the slot: commit LSN of its transaction, then ordinal."""

    lsn: int
    ordinal: int = 0

    def __str__(self) -> str:
        return f"{format_lsn(self.lsn)}#{self.ordinal}"

    def to_state(self) -> list[int]:
        return [self.lsn, self.ordinal]

    @classmethod
    def from_state(cls, state: Any) -> Position:
        lsn, ordinal = state
        return cls(int(lsn), int(ordinal))


ZERO = Position(0, 0)


@dataclass(frozen=True, slots=True)
class Column:
    """A table column as the source knows it."""

    name: str
    type_oid: int
    type_name: str  # resolved name: int4, numeric, _text, geometry, ...
    typmod: int = -1
    key: bool = False  # part of the replica identity
    arrow_type: pa.DataType = field(default_factory=pa.string)
    # Base type name for domains, element type for arrays, extension name for
    # extension types; sinks use these for their type maps.
    base_type: str | None = None
    extension: str | None = None
    nullable: bool = True
    # What the table's existing rows hold for a column added with a constant default (Postgres keeps it in the
    # catalog, pg_attribute.attmissingval, and rewrites no row, so no change carries it): one value of
    # ``arrow_type``; None when the column has none. A destination that adds the column fills its rows with it.
    missing: pa.Array | None = field(default=None, compare=False)
    # The catalog shows a default (or a generation expression) for it and no missing value: had it been added to a
    # table with rows, Postgres wrote its values into them (a volatile default, a stored generated column), a rewrite.
    default_in_rows: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class TableSchema:
    """One version of a table's shape, as announced by a pgoutput Relation message."""

    relid: int
    schema: str
    name: str
    columns: tuple[Column, ...]
    replica_identity: str = "d"  # d(efault) n(othing) f(ull) i(ndex)
    version: int = 1
    # The table's storage (pg_relation_filenode) when this shape was first seen; None when unknown. A shape change
    # whose storage changed too was a rewrite (ALTER ... TYPE, a volatile default): Postgres changed stored values
    # that no change carries (sources/postgres/batcher.py). Kept with the flow's shapes across restarts.
    filenode: int | None = field(default=None, compare=False)
    # True when the catalog had already moved past this shape when its storage was read (a worker behind the DDL):
    # the storage read may be that of a rewrite after the shape, so the next shape change counts as one.
    storage_after: bool = field(default=False, compare=False)
    # How many dropped columns the catalog keeps for the table (pg_attribute.attisdropped) when this shape was read;
    # None when unknown. With the same columns and other storage, one more means a column dropped and one of the
    # same name and type added again (storage_moved, for shapes kept without attnums).
    dropped: int | None = field(default=None, compare=False)
    # Each column's number in the catalog (pg_attribute.attnum) when this shape was read, in column order (0: the
    # column was gone by then); None when unknown. A column dropped and one of its name added again has a new
    # number (readded).
    attnums: tuple[int, ...] | None = field(default=None, compare=False)

    def readded(self, before: TableSchema) -> list[str]:
        """The columns of this shape that ``before`` has under the same name with another catalog number: dropped
        and added again since, so every row older than the new one reads its missing value or NULL (or what its
        volatile default wrote), whatever the dropped one held, and no change in the stream says so. Both numbers
        are read when the shapes are resolved: a column dropped and added again after ``before`` was read and
        before the next change of the table (the worker behind both) shows nothing (docs/ddl.md)."""
        if self.attnums is None or before.attnums is None or (
                self.attnums == before.attnums and self.column_names == before.column_names):
            return []
        old = dict(zip(before.column_names, before.attnums, strict=True))
        return [n for n, a in zip(self.column_names, self.attnums, strict=True) if old.get(n, a) not in (a, 0) and a]

    def storage_moved(self, before: TableSchema) -> bool:
        """The same columns as ``before``, but a column dropped and one of the same name and type added again: by
        catalog number (:meth:`readded`); else, for shapes kept without numbers, a table whose storage changed and
        that dropped a column since, as a volatile default of such a column writes into the rows (a rewrite nothing
        in the stream shows). A VACUUM FULL, CLUSTER or TRUNCATE changes the storage alone, and is not one."""
        if self.readded(before):
            return True
        return (before.filenode is not None and self.filenode is not None and before.filenode != self.filenode
                and before.dropped is not None and self.dropped is not None and self.dropped > before.dropped)

    def rewritten_since(self, before: TableSchema) -> bool:
        """Whether stored values may have changed between ``before`` and this shape with no change to say so: a
        column was dropped and added again under its name (:meth:`readded`); or the storage (both known) differs;
        or it was read for ``before`` only after a later DDL (the same storage then proves nothing) and a column
        added since holds a default Postgres wrote into the rows."""
        if self.readded(before):
            return True
        if before.filenode is None or self.filenode is None:
            return False
        if before.filenode != self.filenode:
            return True
        old = set(before.column_names)
        return before.storage_after and any(c.default_in_rows for c in self.columns if c.name not in old)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.key)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def same_shape(self, other: TableSchema) -> bool:
        """True when columns (names, types, keys) are equal, ignoring the version number."""
        return (
            self.schema == other.schema
            and self.name == other.name
            and self.replica_identity == other.replica_identity
            and [(c.name, c.type_oid, c.typmod, c.key) for c in self.columns]
            == [(c.name, c.type_oid, c.typmod, c.key) for c in other.columns]
        )


@dataclass(slots=True)
class TableChanges:
    """A run of row changes of one table (one schema version), in WAL order."""

    table: TableSchema
    rows: pa.RecordBatch
    # The Arrow data these rows stand for when they are a slice of a larger batch (ChangeBatch.split: a slice
    # shares its parent's buffers, whose whole size get_total_buffer_size would count for every slice); None: the
    # rows' own buffers.
    size: int | None = None

    def __len__(self) -> int:
        return self.rows.num_rows

    def buffer_size(self) -> int:
        """The bytes of Arrow data these rows hold (``size``, else their buffers: ``nbytes`` walks the columns in
        Python, ~30x slower, and this is asked per batch)."""
        return self.size if self.size is not None else self.rows.get_total_buffer_size()

    @property
    def first(self) -> Position:
        return Position(self.rows.column(LSN_COL)[0].as_py(), self.rows.column(ORD_COL)[0].as_py())

    @property
    def last(self) -> Position:
        n = self.rows.num_rows - 1
        return Position(self.rows.column(LSN_COL)[n].as_py(), self.rows.column(ORD_COL)[n].as_py())

    @property
    def has_before(self) -> bool:
        if not self.table.columns:
            return False
        return self.rows.schema.get_field_index(BEFORE_PREFIX + self.table.columns[0].name) >= 0

    def after(self) -> pa.RecordBatch:
        """Only the table's columns (the after image)."""
        return self.rows.select(list(self.table.column_names))

    def since(self, pos: Position) -> TableChanges | None:
        """The changes strictly after ``pos`` (what a sink holding everything up to ``pos`` still needs)."""
        if not len(self) or self.last <= pos:
            return None
        if self.first > pos:
            return self
        import pyarrow.compute as pc

        lsn, ordn = self.rows.column(LSN_COL), self.rows.column(ORD_COL)
        later = pc.or_(pc.greater(lsn, pa.scalar(pos.lsn, pa.uint64())),
                       pc.and_(pc.equal(lsn, pa.scalar(pos.lsn, pa.uint64())),
                               pc.greater(ordn, pa.scalar(pos.ordinal, pa.uint64()))))
        return TableChanges(self.table, self.rows.filter(later))


@dataclass(slots=True)
class Event:
    """A change that is not a row: truncate, ddl, or a logical message."""

    op: str
    position: Position
    commit_ts: int  # microseconds since the Unix epoch, UTC
    xid: int
    tables: tuple[TableSchema, ...] = ()
    payload: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return 1


Segment = TableChanges | Event


@dataclass(frozen=True, slots=True)
class SnapshotMark:
    """Where a backfill's part stood after the chunk a batch carries: the part (``public.users#2/4``), the heap
    block it goes on from, whether it is done, and the rows it has read. A destination's progress is the last mark it
    committed (sources/postgres/snapshot_state.py). ``consistent``: every part of the backfill reads one snapshot,
    so each row is read once (False: each part its own snapshot, and a row moved between parts can come twice).
    ``next_key``: a part of a key range (``partition_column``) goes on after this key (the column type's text; None:
    from the range's start), its ``next_block`` then stays its first."""

    part: str
    next_block: int
    done: bool
    rows: int
    consistent: bool = True
    next_key: str | None = None


# A backfill row's ordinal: (its part's number << SNAPSHOT_PART_SHIFT) | its row number within the part, so every
# row of a backfill has its own position (lsn = the snapshot's) and a re-read chunk gets the same positions again.
SNAPSHOT_PART_SHIFT = 40


@dataclass(slots=True)
class ChangeBatch:
    """What one bytewax item carries: ordered segments of one flow's changes.

    ``position`` is the position of the last change in the batch (what a sink
    records as its high-water mark once the batch is durable). A ``snapshot``
    batch holds rows of a backfill (op ``read``, at the snapshot's LSN; its
    mark says how far the part is): it is outside the stream's order, so no
    high-water skips it or moves for it. ``caught_up``: the source had read all the server had sent when it cut
    this batch (nothing more was waiting): a destination that can make what it holds visible between epochs does so
    then (:meth:`sinks.base.Writer.flush`), so latency is not the epoch's length while a backlog still fills epochs.
    """

    flow_id: str
    segments: list[Segment]
    position: Position
    snapshot: SnapshotMark | None = None
    caught_up: bool = False

    def __len__(self) -> int:
        return sum(len(s) for s in self.segments)

    def since(self, pos: Position) -> ChangeBatch | None:
        """The batch without the changes at or before ``pos``; None when nothing is left (a replay)."""
        if self.position <= pos:
            return None
        kept: list[Segment] = []
        for s in self.segments:
            if isinstance(s, TableChanges):
                later = s.since(pos)
                if later is not None:
                    kept.append(later)
            elif s.position > pos:
                kept.append(s)
        return ChangeBatch(self.flow_id, kept, self.position, self.snapshot, self.caught_up)

    def split(self, max_changes: int) -> list[ChangeBatch]:
        """This batch as batches of at most ``max_changes`` changes each, cut by position: every change of one comes
        before every change of the next in the WAL (a batch's runs are per table, so rows of two tables written
        in turns interleave across its segments; a destination skips what is at or below the high-water of the
        batches it took, so a later batch must hold nothing before an earlier one's position). Each is at the
        position of its last change; the last keeps this batch's position and ``caught_up``. Runs of rows are
        sliced (the slices share the Arrow data; each slice's ``size`` is its share). A backfill's batch (with a
        snapshot mark) is not split."""
        if max_changes <= 0 or self.snapshot is not None or len(self) <= max_changes:
            return [self]
        import numpy as np

        lsns, ords = [], []
        for seg in self.segments:
            if isinstance(seg, Event):
                lsns.append(np.array([seg.position.lsn], np.uint64))
                ords.append(np.array([seg.position.ordinal], np.uint64))
            else:
                lsns.append(seg.rows.column(LSN_COL).to_numpy())
                ords.append(seg.rows.column(ORD_COL).to_numpy())
        # one sortable key per change: the rank of its LSN among the batch's (few: commit LSNs), then its ordinal
        if max(int(o.max()) for o in ords) >> 32:  # an ordinal past 2^32 (never in a stream): no key of 64 bits
            return [self]
        distinct = np.unique(np.concatenate(lsns))
        keys = [np.searchsorted(distinct, lsn).astype(np.int64) << 32 | o.astype(np.int64)
                for lsn, o in zip(lsns, ords, strict=True)]
        every = np.sort(np.concatenate(keys))
        cuts = every[max_changes - 1::max_changes]
        if len(cuts) and cuts[-1] == every[-1]:
            cuts = cuts[:-1]  # the last batch ends at the end
        bounds = [np.searchsorted(k, cuts, side="right") for k in keys]  # per segment: its rows up to each cut
        out: list[ChangeBatch] = []
        for i in range(len(cuts) + 1):
            segs: list[Segment] = []
            for seg, b in zip(self.segments, bounds, strict=True):
                lo = int(b[i - 1]) if i else 0
                hi = int(b[i]) if i < len(cuts) else len(seg)
                if hi <= lo:
                    continue
                if isinstance(seg, Event) or (lo == 0 and hi == len(seg)):
                    segs.append(seg)
                else:
                    segs.append(TableChanges(seg.table, seg.rows.slice(lo, hi - lo),
                                             seg.buffer_size() * (hi - lo) // len(seg)))
            if i < len(cuts):
                k = int(cuts[i])
                pos = Position(int(distinct[k >> 32]), k & 0xFFFFFFFF)
                out.append(ChangeBatch(self.flow_id, segs, pos))
            else:
                out.append(ChangeBatch(self.flow_id, segs, self.position, caught_up=self.caught_up))
        return out

    def tables(self) -> list[TableSchema]:
        seen: dict[tuple[int, int], TableSchema] = {}
        for s in self.segments:
            for t in (s.table,) if isinstance(s, TableChanges) else s.tables:
                seen.setdefault((t.relid, t.version), t)
        return list(seen.values())
