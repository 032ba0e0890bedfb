"""Backfill reads: what a table holds in one snapshot, as change batches of op ``read``.

A table is split into *parts*: ranges of its heap blocks (``ctid``), read with TID range scans (Postgres 14+), so K
parts of a table read each block once in total, whatever the table's keys (a modulo over a hashed column would scan
the whole table once per part). A part is read in chunks of :data:`CHUNK_BLOCKS` blocks; the block a part has reached
is its resume point.

Values come out exactly as the streaming path gives them: a chunk is read with ``COPY (SELECT <published columns>
...) TO STDOUT (FORMAT csv)`` on a connection with the walsender's session settings
(:data:`~sources.postgres.pgtypes.SESSION_SETTINGS`), so every value is the type's text output, the same text
pgoutput sends; pyarrow's CSV reader splits it into one binary column per table column (an unquoted empty field is
NULL, ``""`` the empty string), and each column is decoded by the streaming path's own decoder
(:func:`sources.postgres.pgtypes.decode_column`) for the column type the streaming path resolves
(:class:`~sources.postgres.source.TypeResolver` over a Relation built from the catalog, with the publication's
column list). tests/test_backfill.py feeds the tricky-type table through both paths and compares.

Consistency: every part reads inside one snapshot when one is given (``SET TRANSACTION SNAPSHOT``: an exported one,
from ``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`` or ``pg_export_snapshot()``), so a backfill is one point in
time; without one each part reads its own.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from sources.postgres.batcher import TableState
from sources.postgres.connection import connect, quote_ident, quote_literal, server_name
from sources.postgres.pgoutput import Relation, RelationColumn
from sources.postgres.pgtypes import decode_column
from sources.postgres.setup import qualified_table, split_table
from sources.postgres.source import TypeResolver
from wallaby.core import settings
from wallaby.core.changes import (
    META_FIELDS,
    OP_READ,
    SNAPSHOT_PART_SHIFT,
    ChangeBatch,
    Position,
    SnapshotMark,
    TableChanges,
)
from wallaby.core.errors import SourceError

log = logging.getLogger("wallaby.backfill")

# Heap blocks one chunk reads (8 KB blocks: 8 MB of heap, ~60k narrow rows). A chunk is one COPY and one batch:
# big enough that the per-statement cost vanishes, small enough that a resumed part re-reads little and a batch
# stays far below the worker's memory budget. WALLABY_BACKFILL_CHUNK_BLOCKS sets it.
CHUNK_BLOCKS = settings.on_import().backfill_chunk_blocks


@dataclass(frozen=True)
class Part:
    """Blocks ``[first_block, end_block)`` of a table (``end_block`` None: to the relation's end)."""

    table: str  # schema.name
    index: int  # from 0
    count: int
    first_block: int
    end_block: int | None

    @property
    def key(self) -> str:
        """The part's name (a bytewax partition key): ``public.users#2/4``."""
        return f"{self.table}#{self.index + 1}/{self.count}"


def relation_blocks(conn: psycopg.Connection, table: str) -> int:
    """The table's heap size in blocks (a partitioned table: its largest leaf's, whose ctids the ranges cover)."""
    row = conn.execute(
        "SELECT (greatest(pg_relation_size(r.oid), coalesce((SELECT max(pg_relation_size(t.relid))"
        " FROM pg_partition_tree(r.oid) t WHERE t.isleaf), 0)) + b.bs - 1) / b.bs"
        " FROM (SELECT %s::regclass AS oid) r, (SELECT current_setting('block_size')::bigint AS bs) b",
        (qualified_table(table),)).fetchone()
    return int(row[0] or 0)


def plan_parts(conn: psycopg.Connection, table: str, count: int) -> list[Part]:
    """``count`` parts of equal block ranges; the last is open-ended (rows a snapshot sees are in blocks that
    exist when the plan is made after the snapshot is taken, but the open end costs nothing)."""
    blocks = relation_blocks(conn, table)
    count = max(1, count)
    per = max(1, -(-blocks // count))
    parts = []
    for i in range(count):
        first = min(i * per, blocks)
        end = None if i == count - 1 else min((i + 1) * per, blocks)
        parts.append(Part(table, i, count, first, end))
    return parts


def publication_tables(conn: psycopg.Connection, publication: str) -> list[str]:
    """The tables a publication publishes (``schema.name``), sorted."""
    rows = conn.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s"
                        " ORDER BY 1, 2", (publication,)).fetchall()
    return [f"{s}.{t}" for s, t in rows]


def relation_of(conn: psycopg.Connection, table: str, publication: str) -> Relation:
    """The Relation message pgoutput would send for ``table`` under ``publication``: its published columns in
    attribute order, key flags as the replica identity sets them."""
    schema, name = split_table(table)
    row = conn.execute("SELECT c.oid, c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
    if row is None:
        raise SourceError(f"table {table} does not exist (dropped during the backfill?)")
    relid, ident = int(row[0]), row[1]
    pub = conn.execute("SELECT attnames FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s"
                       " AND tablename = %s", (publication, schema, name)).fetchone()
    published = set(pub[0]) if pub is not None and pub[0] is not None else None
    keys: set[str] = set()
    if ident in ("d", "i"):
        krow = conn.execute(
            "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND "
            + ("i.indisprimary" if ident == "d" else "i.indisreplident"), (relid,)).fetchone()
        keys = set(krow[0] or []) if krow else set()
    cols = conn.execute("SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
                        " AND NOT attisdropped ORDER BY attnum", (relid,)).fetchall()
    columns = [RelationColumn(n, int(oid), int(mod), ident == "f" or n in keys) for n, oid, mod in cols
               if published is None or n in published]
    return Relation(relid, schema, name, ident, columns)


@dataclass
class Chunk:
    """What one read of a part gave: the rows (None: none in these blocks) and where the part goes on."""

    changes: TableChanges | None
    next_block: int
    done: bool


class PartReader:
    """Reads one part, chunk by chunk, on its own connection (inside ``snapshot`` when given)."""

    def __init__(self, dsn: str, part: Part, publication: str, *, snapshot: str | None, snapshot_lsn: int,
                 snapshot_ts: int, flow_id: str, next_block: int | None = None, chunk_blocks: int | None = None):
        self.part = part
        self.server = server_name(dsn)
        self.snapshot_lsn, self.snapshot_ts = snapshot_lsn, snapshot_ts
        self.chunk_blocks = chunk_blocks or CHUNK_BLOCKS
        self.ordinal_base = (part.index + 1) << SNAPSHOT_PART_SHIFT  # the part's rows: base + row number
        self.next_block = part.first_block if next_block is None else next_block
        self.conn = connect(dsn, application_name=f"wallaby-backfill:{flow_id}")
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if snapshot:
            self.conn.execute(f"SET TRANSACTION SNAPSHOT {quote_literal(snapshot)}")
        resolver = TypeResolver(dsn, True, flow_id)
        try:
            self.state: TableState = resolver(relation_of(self.conn, part.table, publication), {}, None)
        finally:
            resolver.close()
        self.names = list(self.state.schema.column_names)
        # blocks beyond the plan's end are read once more, open-ended, before the last part is done
        self.blocks = max(relation_blocks(self.conn, part.table), part.first_block)
        cols = ", ".join(quote_ident(n) for n in self.names)
        self.select = f"SELECT {cols} FROM {qualified_table(part.table)}"

    def read(self, first_row: int = 1) -> Chunk:
        """The next chunk of the part; its rows are numbered from ``first_row`` within the part."""
        part, first = self.part, self.next_block
        end = part.end_block
        if end is not None and first >= end:
            return Chunk(None, first, True)
        last = end is None and first >= self.blocks  # the open end of the last part
        stop = None if last else min(first + self.chunk_blocks, end if end is not None else first + self.chunk_blocks)
        where = f" WHERE ctid >= '({first},0)'::tid" + (f" AND ctid < '({stop},0)'::tid" if stop is not None else "")
        data = self._copy(self.select + where)
        changes = self._changes(data, first_row) if data else None
        if last:
            return Chunk(changes, first, True)
        self.next_block = stop
        return Chunk(changes, stop, end is not None and stop >= end)

    def _copy(self, select: str) -> bytes:
        buf = bytearray()
        try:
            with self.conn.cursor().copy(f"COPY ({select}) TO STDOUT (FORMAT csv)") as copy:
                for block in copy:
                    buf += block
        except psycopg.Error as exc:
            raise SourceError(f"backfill of {self.part.table} ({self.part.key}): {exc}".strip(),
                              server=self.server) from None
        return bytes(buf)

    def _changes(self, data: bytes, first_row: int) -> TableChanges:
        names = self.names
        table = pacsv.read_csv(
            io.BytesIO(data),
            # one block for the whole chunk: a row (a TOASTed value can be up to 1 GB) never straddles two blocks
            read_options=pacsv.ReadOptions(column_names=[f"c{i}" for i in range(len(names))], use_threads=False,
                                           block_size=len(data) + 1),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={f"c{i}": pa.binary() for i in range(len(names))},
                                                 strings_can_be_null=True, quoted_strings_can_be_null=False,
                                                 null_values=[""]),
        )
        n = table.num_rows
        arrays: list[Any] = []
        fields = []
        for i, name in enumerate(names):
            try:
                arr = decode_column(self.state.types[i], table.column(i).combine_chunks())
            except (ValueError, pa.ArrowInvalid) as exc:
                raise SourceError(f"backfill of {self.part.table}.{name}: {exc}", server=self.server) from None
            arrays.append(arr)
            fields.append(pa.field(name, arr.type))
        arrays += [
            pa.array([OP_READ] * n, pa.string()),
            pa.array([self.snapshot_lsn] * n, pa.uint64()),
            pa.array(range(self.ordinal_base + first_row, self.ordinal_base + first_row + n), pa.uint64()),
            pa.array([self.snapshot_ts] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            pa.array([0] * n, pa.uint32()),
            pa.nulls(n, pa.list_(pa.string())),
        ]
        fields += list(META_FIELDS)
        return TableChanges(self.state.schema, pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields)))

    def batch(self, flow_id: str, changes: TableChanges | None, mark: SnapshotMark) -> ChangeBatch:
        """A chunk's batch (no segments for a chunk without rows: the mark still tells the destinations' progress);
        its position is the part's last row read."""
        return ChangeBatch(flow_id, [changes] if changes is not None else [],
                           Position(self.snapshot_lsn, self.ordinal_base + mark.rows), snapshot=mark)

    def close(self) -> None:
        try:
            self.conn.close()
        except psycopg.Error:
            pass
