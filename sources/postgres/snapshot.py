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

import logging
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from sources.postgres.batcher import TableState
from sources.postgres.connection import connect, libpq_conninfo, quote_ident, quote_literal, server_name
from sources.postgres.pgoutput import Relation, RelationColumn
from sources.postgres.pgtypes import (
    DATE_NEG_INF,
    DATE_POS_INF,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    TS_NEG_INF,
    TS_POS_INF,
    decode_column,
)
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
from wallaby.core.errors import SourceError, redact_dsn

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


# Column types read in Postgres' binary format, straight into Arrow by the ADBC driver: for these the driver's Arrow
# values are the streaming path's bit for bit (tests/test_backfill.py's tricky table checks it), once ±infinity dates
# and timestamps are put back (:func:`_infinities`); json and jsonb come as the driver's extension types over the same
# text. Every other column is read as its type's output text (``textin(<typoutput>(col))``: the very function
# pgoutput calls, so the text is what the stream sends) and decoded by the streaming path's decoder. Measured (2M
# narrow rows, ADBC, chunks of 1024 blocks): timestamptz binary rather than as text 1.73 s against 2.32 s; numeric
# through the driver (its own decimal-to-string) 2.8-3.0 s, so numeric stays text.
# bool, bytea, int8, int2, int4, text, json, float4, float8, bpchar, varchar, date, time, timestamp, timestamptz, jsonb
NATIVE_OIDS = frozenset({16, 17, 20, 21, 23, 25, 114, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 3802})
# The driver moves dates and timestamps from Postgres' epoch (2000-01-01) to Unix's by adding these, wrapping
# around at the integer's end: Postgres' ±infinity (the integer's max and min) come out as these (far outside the
# range of a real value: Postgres' dates start in 4713 BC).
_PG_EPOCH_DAYS, _PG_EPOCH_US = 10_957, 946_684_800_000_000
_SHIFTED_INFINITIES = {
    pa.int32(): (INT32_MAX + _PG_EPOCH_DAYS - 2**32, INT32_MIN + _PG_EPOCH_DAYS, DATE_POS_INF, DATE_NEG_INF),
    pa.int64(): (INT64_MAX + _PG_EPOCH_US - 2**64, INT64_MIN + _PG_EPOCH_US, TS_POS_INF, TS_NEG_INF),
}


@dataclass
class Chunk:
    """What one read of a part gave: the rows (None: none in these blocks) and where the part goes on."""

    changes: TableChanges | None
    next_block: int
    done: bool


@dataclass(frozen=True)
class _Span:
    """The blocks one chunk reads: ``[first, stop)`` (``stop`` None: to the relation's end, the part's last)."""

    first: int
    stop: int | None


def _infinities(arr: pa.Array) -> pa.Array:
    """A date or timestamp column from the driver with ±infinity put back as the streaming path has them."""
    storage = pa.int32() if pa.types.is_date32(arr.type) else pa.int64()
    pos, neg, pos_inf, neg_inf = _SHIFTED_INFINITIES[storage]
    ints = arr.view(storage)
    low = pc.min(ints).as_py()
    if low is None or low > neg:  # the usual case: no infinity in the chunk
        return arr
    fixed = pc.if_else(pc.equal(ints, pos), pa.scalar(pos_inf, storage),
                       pc.if_else(pc.equal(ints, neg), pa.scalar(neg_inf, storage), ints))
    return fixed.view(arr.type)


def _constant(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    return pa.array([value], type_).take(np.zeros(n, dtype=np.int32))


class PartReader:
    """Reads one part, chunk by chunk (inside ``snapshot`` when given).

    The catalog (columns, types, blocks) is read once with psycopg; the rows with the ADBC PostgreSQL driver
    (``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` parsed into Arrow in C++, without the GIL). With ``pool``
    the next chunk is fetched and decoded in the pool while the current one is written (one chunk ahead, so a
    part holds at most two); without, each :meth:`read` fetches its own."""

    def __init__(self, dsn: str, part: Part, publication: str, *, snapshot: str | None, snapshot_lsn: int,
                 snapshot_ts: int, flow_id: str, next_block: int | None = None, chunk_blocks: int | None = None,
                 pool: Executor | None = None):
        self.part = part
        self.server = server_name(dsn)
        self.snapshot_lsn, self.snapshot_ts = snapshot_lsn, snapshot_ts
        self.chunk_blocks = chunk_blocks or CHUNK_BLOCKS
        self.ordinal_base = (part.index + 1) << SNAPSHOT_PART_SHIFT  # the part's rows: base + row number
        self.next_block = part.first_block if next_block is None else next_block
        self.pool = pool
        self._ahead: tuple[_Span, Future] | None = None
        app = f"wallaby-backfill:{flow_id}"
        conn = connect(dsn, application_name=app)
        try:
            self._begin(conn.execute, snapshot)
            resolver = TypeResolver(dsn, True, flow_id)
            try:
                relation = relation_of(conn, part.table, publication)
                self.state: TableState = resolver(relation, {}, None)
            finally:
                resolver.close()
            self.names = list(self.state.schema.column_names)
            # blocks beyond the plan's end are read once more, open-ended, before the last part is done
            self.blocks = max(relation_blocks(conn, part.table), part.first_block)
            outputs = dict(conn.execute(
                "SELECT a.attname, t.typoutput::regproc::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
                " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                (qualified_table(part.table),)).fetchall())
        finally:
            conn.close()
        self.native = [c.type_oid in NATIVE_OIDS and (ct.utf8_valid or ct.family != "text")
                       for c, ct in zip(relation.columns, self.state.types, strict=True)]
        cols = ", ".join(quote_ident(n) if nat else f"pg_catalog.textin({outputs[n]}({quote_ident(n)}))"
                         for n, nat in zip(self.names, self.native, strict=True))
        self.select = f"SELECT {cols} FROM {qualified_table(part.table)}"
        try:
            self.data = adbc.connect(libpq_conninfo(dsn, app), autocommit=True)
            self.cursor = self.data.cursor()
        except adbc.Error as exc:
            raise SourceError(f"backfill of {part.table}: could not connect: {redact_dsn(str(exc))}",
                              server=self.server) from None
        self._begin(self.cursor.execute, snapshot)

    @staticmethod
    def _begin(execute: Any, snapshot: str | None) -> None:
        execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if snapshot:
            execute(f"SET TRANSACTION SNAPSHOT {quote_literal(snapshot)}")

    def _span(self, first: int) -> _Span | None:
        """The chunk that starts at block ``first``; None when the part has no more."""
        end = self.part.end_block
        if end is not None and first >= end:
            return None
        if end is None and first >= self.blocks:  # the open end of the last part
            return _Span(first, None)
        return _Span(first, min(first + self.chunk_blocks, end if end is not None else first + self.chunk_blocks))

    def ready(self) -> bool:
        """Whether :meth:`read` would return without waiting for the server."""
        return self._ahead is None or self._ahead[1].done()

    def read(self, first_row: int = 1) -> Chunk:
        """The next chunk of the part; its rows are numbered from ``first_row`` within the part."""
        span = self._span(self.next_block)
        if span is None:
            return Chunk(None, self.next_block, True)
        if self._ahead is not None and self._ahead[0] == span:
            columns = self._ahead[1].result()
        else:
            columns = self._fetch(span)
        self._ahead = None
        done = span.stop is None or (self.part.end_block is not None and span.stop >= self.part.end_block)
        if not done:
            self.next_block = span.stop
            following = self._span(span.stop)
            if self.pool is not None and following is not None:
                self._ahead = (following, self.pool.submit(self._fetch, following))
        changes = self._changes(columns, first_row) if columns is not None else None
        return Chunk(changes, self.next_block, done)

    def _fetch(self, span: _Span) -> list[pa.Array] | None:
        """The decoded columns of the rows in ``span`` (None: no rows)."""
        where = f" WHERE ctid >= '({span.first},0)'::tid" + \
            (f" AND ctid < '({span.stop},0)'::tid" if span.stop is not None else "")
        try:
            self.cursor.execute(self.select + where)
            table = self.cursor.fetch_arrow_table()
        except adbc.Error as exc:
            raise SourceError(f"backfill of {self.part.table} ({self.part.key}): {str(exc).strip()}",
                              server=self.server) from None
        if table.num_rows == 0:
            return None
        columns = []
        for i, name in enumerate(self.names):
            raw = table.column(i).combine_chunks()
            if self.native[i]:
                ct = self.state.types[i]
                if isinstance(raw.type, pa.ExtensionType):  # json, jsonb: the text underneath
                    raw = raw.storage
                if pa.types.is_date32(raw.type) or pa.types.is_timestamp(raw.type):
                    raw = _infinities(raw)
                columns.append(raw if raw.type == ct.arrow_type else raw.cast(ct.arrow_type))
                continue
            try:
                columns.append(decode_column(self.state.types[i], raw.cast(pa.binary())))
            except (ValueError, pa.ArrowInvalid) as exc:
                raise SourceError(f"backfill of {self.part.table}.{name}: {exc}", server=self.server) from None
        return columns

    def _changes(self, columns: list[pa.Array], first_row: int) -> TableChanges:
        n = len(columns[0])
        fields = [pa.field(name, arr.type) for name, arr in zip(self.names, columns, strict=True)]
        first = self.ordinal_base + first_row
        arrays = [
            *columns,
            _constant(OP_READ, pa.string(), n),
            _constant(self.snapshot_lsn, pa.uint64(), n),
            pa.array(np.arange(first, first + n, dtype=np.uint64)),
            _constant(self.snapshot_ts, pa.timestamp("us", tz="UTC"), n),
            _constant(0, pa.uint32(), n),
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
        if self._ahead is not None:  # let a fetch in flight end before its connection goes
            self._ahead[1].cancel() or wait([self._ahead[1]])
            self._ahead = None
        for closing in (self.cursor.close, self.data.close):
            try:
                closing()
            except adbc.Error:
                pass
