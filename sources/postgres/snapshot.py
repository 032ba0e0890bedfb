"""Backfill reads: what a table holds in one snapshot, as change batches of op ``read``.

A table is split into *parts*: ranges of its heap blocks (``ctid``), read with TID range scans (Postgres 14+), so K
parts of a table read each block once in total, whatever the table's keys (a modulo over a hashed column would scan
the whole table once per part). A part is read in chunks of :data:`CHUNK_BLOCKS` blocks; the block a part has reached
is its resume point.

With a partition column (``partition_column``), a table's parts are ranges of that column's values instead
(:func:`plan_key_parts`: split points from ``pg_stats``, else from a block sample, never a sort of the table), each
read by keyset pagination in key order (:data:`CHUNK_ROWS` rows a chunk, ties broken by ``(tableoid, ctid)``), plus
one part, by blocks, for the rows whose column is NULL when it may hold any. The last key read is the resume point.

Values come out exactly as the streaming path gives them: a chunk is one ``SELECT`` of the published columns read by
DuckDB's postgres extension (:mod:`sources.postgres.pgscan`: binary COPY into Arrow) on a connection with the
walsender's session settings (:data:`~sources.postgres.pgtypes.SESSION_SETTINGS`). The types the extension gives
exactly as the stream does come as they are (:data:`~sources.postgres.pgscan.NATIVE_OIDS`); every other column as
its type's output text, the same text pgoutput sends, decoded by the streaming path's own decoder
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

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from sources.postgres.batcher import TableState
from sources.postgres.connection import connect, libpq_conninfo, quote_ident, quote_literal, server_name
from sources.postgres.pgoutput import Relation, RelationColumn
from sources.postgres.pgscan import NATIVE_OIDS, NEG_INFINITY, PostgresScan, ScanError
from sources.postgres.pgtypes import (
    DATE_NEG_INF,
    TS_NEG_INF,
    decode_column,
    utf8_guaranteed,
)
from sources.postgres.resolver import TypeResolver
from sources.postgres.setup import qualified_table, split_table
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
# Rows one chunk of a key-range part reads (WALLABY_BACKFILL_CHUNK_ROWS); 0: CHUNK_BLOCKS blocks' worth, by the
# table's rows per block in pg_class (ROWS_PER_BLOCK when the table was never vacuumed or analyzed), so a chunk weighs
# about what a block-range chunk does.
CHUNK_ROWS = settings.on_import().backfill_chunk_rows
ROWS_PER_BLOCK = 60
# Heap blocks a key-range plan samples (TABLESAMPLE SYSTEM) when pg_stats has nothing for the column: measured on
# 2M rows (42k blocks, 332 MB), the quantiles of a 1000-block sample took 26 ms (uuid) to 130 ms (text, collated
# sort), against 1 s for the same quantiles over the whole table and 0.2 s for min/max without an index.
SAMPLE_BLOCKS = 1000


@dataclass(frozen=True)
class Part:
    """Blocks ``[first_block, end_block)`` of a table (``end_block`` None: to the relation's end); with ``column``,
    the rows whose ``column`` is in ``[lo, hi)`` instead (``lo``/``hi`` the type's text, None: unbounded), or with
    ``nulls`` the rows whose ``column`` is NULL (read by blocks, ``[first_block, end_block)``). A plan file or state
    written before key ranges has none of these fields: block ranges."""

    table: str  # schema.name
    index: int  # from 0
    count: int
    first_block: int = 0
    end_block: int | None = None
    column: str | None = None
    lo: str | None = None
    hi: str | None = None
    nulls: bool = False

    @property
    def by_key(self) -> bool:
        """Whether the part is a range of ``column``'s values (read in key order; its position a key)."""
        return self.column is not None and not self.nulls

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


def sql_literal(value: str) -> str:
    """``value`` as an SQL string constant, whatever ``standard_conforming_strings`` says (``E'...'``)."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class KeyColumn:
    """The column a table's key-range parts split on, as the catalog has it."""

    name: str
    type: str  # format_type without typmod: what a key's text is cast back to (``timestamp with time zone``)
    not_null: bool  # attnotnull: no part for NULLs
    orderable: bool  # a btree ordering (ORDER BY works): else the column cannot be split
    unique: bool  # a valid unique index on the column alone (same collation): no tie-break, resumed strictly after
    indexed: bool  # a btree index leads with it: a chunk is an index range scan, else a scan of the table
    collation: str | None  # the column's collation (``"pg_catalog"."C"``), for ordering split points as it does

    @property
    def ident(self) -> str:
        return quote_ident(self.name)

    def value(self, text: str) -> str:
        """A key's text as a value of the column's type, in SQL."""
        return f"{sql_literal(text)}::{self.type}"

    def ordered(self, expr: str) -> str:
        """``expr`` (of the column's type) as the column orders it."""
        return f"{expr} COLLATE {self.collation}" if self.collation else expr


def key_column(conn: psycopg.Connection, table: str, column: str) -> KeyColumn | None:
    """``column`` of ``table`` (its exact name) as a partition column; None when the table has no such column."""
    qt = qualified_table(table)
    row = conn.execute(
        "SELECT format_type(a.atttypid, NULL), a.attnotnull,"
        " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid"
        "   AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL AND i.indexprs IS NULL"
        "   AND i.indcollation[0] = a.attcollation)"
        " AND (c.relkind = 'p' OR NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhparent = c.oid)),"
        " EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am"
        "   ON am.oid = ic.relam WHERE i.indrelid = c.oid AND am.amname = 'btree' AND i.indkey[0] = a.attnum"
        "   AND i.indpred IS NULL),"
        " (SELECT quote_ident(n.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co"
        "   JOIN pg_namespace n ON n.oid = co.collnamespace WHERE co.oid = a.attcollation)"
        " FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
        " WHERE c.oid = %s::regclass AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (qt, column)).fetchone()
    if row is None:
        return None
    type_, not_null, unique, indexed, collation = row
    try:
        with conn.transaction():  # no btree ordering (json, point, xml...): "could not identify an ordering operator"
            conn.execute(f"SELECT 1 FROM {qt} WHERE false ORDER BY {quote_ident(column)} LIMIT 0")
        orderable = True
    except psycopg.errors.UndefinedFunction:
        orderable = False
    except psycopg.Error as exc:  # no SELECT on the table, ...
        raise SourceError(f"backfill of {table}: cannot read it in the order of {column!r}: {str(exc).strip()}",
                          server=server_name(conn.info.dsn)) from None
    return KeyColumn(column, type_, bool(not_null), orderable, bool(unique), bool(indexed), collation)


def split_points(conn: psycopg.Connection, table: str, key: KeyColumn, count: int) -> tuple[list[str], str]:
    """At most ``count - 1`` values of ``key`` that split ``table`` in ``count`` ranges of about equal rows, in the
    column's order, and where they came from. Never a sort of the table: the column's statistics (``pg_stats``: its
    histogram bounds and most common values, weighted by their frequencies) when ANALYZE left some, else the
    quantiles of a sample of about :data:`SAMPLE_BLOCKS` heap blocks (``TABLESAMPLE SYSTEM``)."""
    if count <= 1:
        return [], "one part"
    weighted: list[tuple[str, float]] = []
    schema, name = split_table(table)
    try:
        with conn.transaction():
            weighted = [(v, float(w)) for v, w in conn.execute(
                f"WITH s AS (SELECT histogram_bounds::text::{key.type}[] AS h,"
                f" most_common_vals::text::{key.type}[] AS m, most_common_freqs AS f, null_frac AS nf FROM pg_stats"
                " WHERE schemaname = %s AND tablename = %s AND attname = %s ORDER BY inherited DESC LIMIT 1),"
                " p AS (SELECT b.v, CASE WHEN b.i = 1 THEN 0 ELSE greatest(1 - s.nf - coalesce((SELECT sum(x)"
                " FROM unnest(s.f) x), 0), 0) / (cardinality(s.h) - 1) END AS w"
                " FROM s, unnest(s.h) WITH ORDINALITY b(v, i) WHERE cardinality(s.h) > 1"
                " UNION ALL SELECT m.v, m.w FROM s, unnest(s.m, s.f) m(v, w))"
                f" SELECT p.v::text AS point, p.w FROM p ORDER BY {key.ordered('p.v')}",  # p.v: not the text
                (schema, name, key.name)).fetchall()]
    except psycopg.Error:  # statistics of a type that does not come back from text: sample instead
        weighted = []
    if weighted:
        total = sum(w for _, w in weighted)
        if total <= 0:
            weighted, total = [(v, 1.0) for v, _ in weighted], float(len(weighted))
        points, cum, j = [], 0.0, 1
        for v, w in weighted:
            cum += w
            while j < count and cum >= total * j / count:
                points.append(v)
                j += 1
        return ordered_points(conn, key, points), "pg_stats"
    blocks = relation_blocks(conn, table)
    pct = min(100.0, 100.0 * SAMPLE_BLOCKS / max(blocks, 1))
    fractions = [j / count for j in range(1, count)]
    row = conn.execute(f"SELECT (percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY {key.ident}))::text[]"
                       f" FROM {qualified_table(table)} TABLESAMPLE SYSTEM ({pct:.6f}) WHERE {key.ident} IS NOT NULL",
                       (fractions,)).fetchone()
    return ordered_points(conn, key, [p for p in (row[0] or []) if p is not None]), f"a sample of {pct:.3g}%"


def ordered_points(conn: psycopg.Connection, key: KeyColumn, points: list[str]) -> list[str]:
    """``points`` distinct and in the column's order (its type's comparison, its collation): ranges between them
    are then disjoint and cover every value."""
    if not points:
        return []
    rows = conn.execute(f"SELECT DISTINCT ON (s.v) s.v::text AS point FROM (SELECT {key.ordered(f'x::{key.type}')}"
                        " AS v FROM unnest(%s::text[]) x) s ORDER BY s.v", (points,)).fetchall()
    return [r[0] for r in rows]


def plan_key_parts(conn: psycopg.Connection, table: str, count: int, key: KeyColumn) -> tuple[list[Part], str]:
    """``count`` ranges of ``key``'s values (fewer when the statistics have fewer distinct split points): the first
    from the lowest value, the last to the highest; then, when the column may hold NULL, one more part for the rows
    where it is NULL (read by heap blocks). With where the split points came from (:func:`split_points`)."""
    points, method = split_points(conn, table, key, max(1, count))
    bounds: list[str | None] = [None, *points, None]
    ranges = len(bounds) - 1
    total = ranges + (0 if key.not_null else 1)
    parts = [Part(table, i, total, column=key.name, lo=bounds[i], hi=bounds[i + 1]) for i in range(ranges)]
    if not key.not_null:
        parts.append(Part(table, ranges, total, column=key.name, nulls=True))
    return parts, method


def publication_tables(conn: psycopg.Connection, publication: str) -> list[str]:
    """The tables a publication publishes (``schema.name``), sorted."""
    rows = conn.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s"
                        " ORDER BY 1, 2", (publication,)).fetchall()
    return [f"{s}.{t}" for s, t in rows]


class TableDroppedError(SourceError):
    """The table of a part is not there any more (dropped, or dropped and created again, since the backfill's
    snapshot or its plan): the part has nothing to read."""

    def __init__(self, table: str, server: str | None = None):
        super().__init__(f"table {table} does not exist any more (dropped during the backfill)", server=server)
        self.table = table


def relation_of(conn: psycopg.Connection, table: str, publication: str) -> Relation:
    """The Relation message pgoutput would send for ``table`` under ``publication``: its published columns in
    attribute order, key flags as the replica identity sets them.

    :class:`TableDroppedError` when the table is gone: not in the transaction's snapshot, or no longer in the
    catalog (``to_regclass`` sees the latest catalog, not the snapshot: a table dropped after a consistent
    backfill's snapshot is still in ``pg_class`` as the snapshot sees it), or another table by that name now."""
    schema, name = split_table(table)
    row = conn.execute("SELECT c.oid, c.relreplident, to_regclass(%s)::oid FROM pg_namespace n"
                       " LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %s WHERE n.nspname = %s",
                       (qualified_table(table), name, schema)).fetchone()
    if row is None or row[0] is None or row[2] is None or int(row[0]) != int(row[2]):
        raise TableDroppedError(table)
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


# Column types read in Postgres' binary format (pgscan.NATIVE_OIDS): the reader's Arrow values are the streaming
# path's bit for bit (tests/test_backfill.py's tricky table checks it), once -infinity dates and timestamps are put
# back (:func:`_infinities`). Every other column is read as its type's output text (``textin(<typoutput>(col))``:
# the very function pgoutput calls, so the text is what the stream sends) and decoded by the streaming path's
# decoder. Measured (2M narrow rows, the ADBC driver then, chunks of 1024 blocks): timestamptz binary rather than as
# text 1.73 s against 2.32 s; numeric through the driver (its own decimal-to-string) 2.8-3.0 s, so numeric stays text.


@dataclass
class Chunk:
    """What one read of a part gave: the rows (None: none in these blocks) and where the part goes on (a block; for
    a key-range part also the last key read)."""

    changes: TableChanges | None
    next_block: int
    done: bool
    next_key: str | None = None


@dataclass(frozen=True)
class _Span:
    """The blocks one chunk reads: ``[first, stop)`` (``stop`` None: to the relation's end, the part's last)."""

    first: int
    stop: int | None


@dataclass(frozen=True)
class _After:
    """Where the next chunk of a key-range part starts: after ``key``, and for a column that is not unique after the
    row ``row`` (``(tableoid, ctid)``) among that key's rows; or at ``key`` itself (``inclusive``: a resumed part,
    whose rows of that key may be read again). ``key`` None: the range's start."""

    key: str | None
    row: tuple[int, str] | None = None
    inclusive: bool = False


class _BlockRanges:
    """A part of heap blocks, read ``chunk`` blocks at a time by TID range scans; its position is the next block.
    ``only``: a condition the rows must meet too (the NULL part of a key-range plan: ``col IS NULL``)."""

    extra = ""  # what the select adds after the table's columns: nothing

    def __init__(self, part: Part, blocks: int, chunk: int, only: str | None = None):
        self.part, self.blocks, self.chunk, self.only = part, blocks, chunk, only

    def span(self, first: int) -> _Span | None:
        """The chunk that starts at block ``first``; None when the part has no more."""
        end = self.part.end_block
        if end is not None and first >= end:
            return None
        if end is None and first >= self.blocks:  # the open end of the last part
            return _Span(first, None)
        return _Span(first, min(first + self.chunk, end if end is not None else first + self.chunk))

    def where(self, span: _Span) -> str:
        return (f" WHERE ctid >= '({span.first},0)'::tid"
                + (f" AND ctid < '({span.stop},0)'::tid" if span.stop is not None else "")
                + (f" AND {self.only}" if self.only else ""))

    def after(self, span: _Span, table: pa.Table) -> tuple[int | None, bool]:
        """Where the part goes on after ``span`` (its rows in ``table``), and whether it is done."""
        done = span.stop is None or (self.part.end_block is not None and span.stop >= self.part.end_block)
        return span.stop, done


class _KeyRange:
    """A part of the values ``[lo, hi)`` of a column, read ``rows`` rows at a time in key order (keyset
    pagination: ``WHERE col > <last> ORDER BY col LIMIT rows``, through an index on the column when there is one).
    A column that is not unique is ordered by ``(col, tableoid, ctid)``, so the rows of one key are split between
    chunks without one read twice or left out within the snapshot. Its position is the last key read (:class:`_After`);
    a chunk of fewer than ``rows`` rows is the range's last."""

    def __init__(self, part: Part, key: KeyColumn, rows: int, key_text: str):
        self.part, self.key, self.rows = part, key, rows
        # The key (its type's output text) and, when not unique, the row's place: the columns after the table's.
        # Qualified names below: ORDER BY takes a bare name for an output column first (a ``ctid::text`` output is
        # named ctid, and sorting by its text would disagree with the WHERE's tid order).
        qt = qualified_table(part.table)
        self.col, self.oid, self.tid = f"{qt}.{key.ident}", f"{qt}.tableoid", f"{qt}.ctid"
        self.extra = f", {key_text} AS wallaby_key" + (
            "" if key.unique else f", {self.oid}::text AS wallaby_tableoid, {self.tid}::text AS wallaby_ctid")

    def span(self, after: _After) -> _After:
        return after

    def where(self, after: _After) -> str:
        k, col = self.key, self.col
        conds = [f"{col} IS NOT NULL"]
        if self.part.lo is not None:
            conds.append(f"{col} >= {k.value(self.part.lo)}")
        if self.part.hi is not None:
            conds.append(f"{col} < {k.value(self.part.hi)}")
        if after.key is not None:
            if after.row is not None:
                conds.append(f"({col}, {self.oid}, {self.tid}) > ({k.value(after.key)}, {int(after.row[0])}::oid,"
                             f" {sql_literal(after.row[1])}::tid)")
            else:
                conds.append(f"{col} {'>=' if after.inclusive else '>'} {k.value(after.key)}")
        order = col if k.unique else f"{col}, {self.oid}, {self.tid}"
        return f" WHERE {' AND '.join(conds)} ORDER BY {order} LIMIT {self.rows}"

    def after(self, after: _After, table: pa.Table) -> tuple[_After, bool]:
        n = table.num_rows
        if n == 0:
            return after, True
        first = table.num_columns - (1 if self.key.unique else 3)  # the extra columns
        last = _After(table.column(first)[n - 1].as_py(),
                      None if self.key.unique else (int(table.column(first + 1)[n - 1].as_py()),
                                                    table.column(first + 2)[n - 1].as_py()))
        return last, n < self.rows


def _infinities(arr: pa.Array) -> pa.Array:
    """A date or timestamp column from the reader with -infinity put back as the streaming path has it (infinity
    comes as the integer's maximum already: :data:`DATE_POS_INF`, :data:`TS_POS_INF`)."""
    storage = pa.int32() if pa.types.is_date32(arr.type) else pa.int64()
    neg = NEG_INFINITY[storage]
    ints = arr.view(storage)
    low = pc.min(ints).as_py()
    if low is None or low > neg:  # the usual case: no -infinity in the chunk
        return arr
    neg_inf = DATE_NEG_INF if storage == pa.int32() else TS_NEG_INF
    return pc.if_else(pc.equal(ints, neg), pa.scalar(neg_inf, storage), ints).view(arr.type)


def _constant(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    # pa.repeat: 0.25 ms for 80k strings, where taking index 0 80k times took 29 ms
    return pa.repeat(pa.scalar(value, type_), n)


class PartReader:
    """Reads one part, chunk by chunk (inside ``snapshot`` when given).

    The catalog (columns, types, blocks) is read once with psycopg; the rows with DuckDB's postgres extension
    (:class:`~sources.postgres.pgscan.PostgresScan`: ``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` parsed into
    DuckDB vectors in C++, without the GIL, handed on as Arrow). With ``pool``
    the next chunk is fetched and decoded in the pool while the current one is written (one chunk ahead, so a
    part holds at most two); without, each :meth:`read` fetches its own.

    A part of blocks (:class:`_BlockRanges`) and a key-range part (:class:`_KeyRange`) share everything (the select
    list, the decoding, the read-ahead) but the ``WHERE``/``ORDER BY`` of a chunk and the position: the next block
    (:attr:`next_block`), or the last key read (:attr:`next_key`, the type's text; :meth:`seek` resumes after it)."""

    next_key: str | None = None  # a key-range part's last key read (None: none yet)

    def __init__(self, dsn: str, part: Part, publication: str, *, snapshot: str | None, snapshot_lsn: int,
                 snapshot_ts: int, flow_id: str, next_block: int | None = None, chunk_blocks: int | None = None,
                 pool: Executor | None = None, next_key: str | None = None, chunk_rows: int | None = None):
        self.part = part
        self.server = server_name(dsn)
        self.snapshot_lsn, self.snapshot_ts = snapshot_lsn, snapshot_ts
        self.chunk_blocks = chunk_blocks or CHUNK_BLOCKS
        self.ordinal_base = (part.index + 1) << SNAPSHOT_PART_SHIFT  # the part's rows: base + row number
        self.next_block = part.first_block if next_block is None else next_block
        self.pool = pool
        self._ahead: tuple[Any, Future] | None = None
        self._finished = False
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
            self._range: _BlockRanges | _KeyRange = self._plan_range(conn, outputs, chunk_rows)
        finally:
            conn.close()
        self._pos: Any = self.next_block
        if isinstance(self._range, _KeyRange):
            self._pos = _After(None)
            if next_key is not None:
                self.seek(next_key)
        try:
            self.scan = PostgresScan(libpq_conninfo(dsn, app), snapshot)
        except ScanError as exc:
            raise SourceError(f"backfill of {part.table}: could not read: {exc}", server=self.server) from None
        try:
            self._hold_table()
            # text needs no second UTF-8 check when the server guarantees it (a UTF8 database talking UTF8)
            enc = self.scan.fetch("SELECT current_setting('server_encoding') AS s,"
                                  " current_setting('client_encoding') AS c").to_pylist()[0]
            utf8 = utf8_guaranteed(enc["s"], enc["c"])
        except BaseException:
            self.close()
            raise
        self.native = [c.type_oid in NATIVE_OIDS and (utf8 or ct.family != "text")
                       for c, ct in zip(relation.columns, self.state.types, strict=True)]
        cols = ", ".join(quote_ident(n) if nat else f"pg_catalog.textsend({self._text_of(outputs[n], n)})"
                         f" AS {quote_ident(n)}" for n, nat in zip(self.names, self.native, strict=True))
        self.select = f"SELECT {cols}{self._range.extra} FROM {qualified_table(part.table)}"

    def _hold_table(self) -> None:
        """Lock the part's table in the reader's transaction now (ACCESS SHARE, what its reads take anyway), so a
        DROP TABLE from then on waits for the part's end; :class:`TableDroppedError` when it was dropped meanwhile."""
        try:
            self.scan.execute(f"LOCK TABLE {qualified_table(self.part.table)} IN ACCESS SHARE MODE")
        except ScanError as exc:
            if exc.missing_relation:
                raise TableDroppedError(self.part.table, server=self.server) from None
            raise SourceError(f"backfill of {self.part.table} ({self.part.key}): {exc}", server=self.server) \
                from None

    @staticmethod
    def _text_of(output: str, column: str) -> str:
        """A column as its type's output text (what pgoutput sends)."""
        return f"pg_catalog.textin({output}({quote_ident(column)}))"

    def _plan_range(self, conn: psycopg.Connection, outputs: dict[str, str],
                    chunk_rows: int | None) -> _BlockRanges | _KeyRange:
        """How this part's chunks are cut (the catalog as the snapshot has it)."""
        part = self.part
        if part.column is None:
            return _BlockRanges(part, self.blocks, self.chunk_blocks)
        key = key_column(conn, part.table, part.column)
        if key is None or not key.orderable:
            raise SourceError(f"backfill of {part.table} ({part.key}): partition column {part.column!r}"
                              f" {'does not exist any more' if key is None else 'has no btree ordering'}",
                              server=self.server)
        if part.nulls:
            only = f"{key.ident} IS NULL"
            blocks = _BlockRanges(part, self.blocks, self.chunk_blocks, only)
            if not conn.execute(f"SELECT EXISTS (SELECT 1 FROM {qualified_table(part.table)} WHERE {only})"
                                ).fetchone()[0]:
                self._finished = True  # no NULL in the snapshot: no pass over the heap for them
            return blocks
        return _KeyRange(part, key, chunk_rows or CHUNK_ROWS or self._rows_per_chunk(conn),
                         self._text_of(outputs[key.name], key.name))

    def _rows_per_chunk(self, conn: psycopg.Connection) -> int:
        """About :attr:`chunk_blocks` blocks' worth of the table's rows (pg_class's counts, over its leaves)."""
        qt = qualified_table(self.part.table)
        tuples, pages = conn.execute(
            "SELECT sum(c.reltuples) FILTER (WHERE c.reltuples > 0), sum(c.relpages) FILTER (WHERE c.reltuples > 0)"
            " FROM pg_class c WHERE c.oid = %s::regclass"
            " OR c.oid IN (SELECT relid FROM pg_partition_tree(%s::regclass) WHERE isleaf)", (qt, qt)).fetchone()
        per = float(tuples) / float(pages) if tuples and pages else ROWS_PER_BLOCK
        return max(1, int(self.chunk_blocks * per))

    def seek(self, key: str) -> None:
        """Go on after ``key``, the last key a killed run committed (a key-range part): in a new snapshot, so the
        rows of that very key are read again unless the column is unique."""
        self.next_key = key
        rng = getattr(self, "_range", None)
        self._pos = _After(key, None, not (isinstance(rng, _KeyRange) and rng.key.unique))

    @staticmethod
    def _begin(execute: Any, snapshot: str | None) -> None:
        execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if snapshot:
            execute(f"SET TRANSACTION SNAPSHOT {quote_literal(snapshot)}")

    def ready(self) -> bool:
        """Whether :meth:`read` would return without waiting for the server."""
        return self._ahead is None or self._ahead[1].done()

    def read(self, first_row: int = 1) -> Chunk:
        """The next chunk of the part; its rows are numbered from ``first_row`` within the part."""
        span = None if self._finished else self._range.span(self._pos)
        if span is None:
            self._finished = True
            return Chunk(None, self.next_block, True, self.next_key)
        if self._ahead is not None and self._ahead[0] == span:
            columns, following, done = self._ahead[1].result()
        else:
            columns, following, done = self._fetch(span)
        self._ahead = None
        self._finished = done
        if not done:
            self._pos = following
            if isinstance(following, _After):
                self.next_key = following.key
            else:
                self.next_block = following
            ahead = self._range.span(following)
            if self.pool is not None and ahead is not None:
                self._ahead = (ahead, self.pool.submit(self._fetch, ahead))
        changes = self._changes(columns, first_row) if columns is not None else None
        return Chunk(changes, self.next_block, done, self.next_key)

    def _fetch(self, span: Any) -> tuple[list[pa.Array] | None, Any, bool]:
        """The decoded columns of the rows of ``span`` (None: no rows), where the part goes on after them and
        whether it is done."""
        try:
            table = self.scan.fetch(self.select + self._range.where(span))
        except ScanError as exc:
            raise SourceError(f"backfill of {self.part.table} ({self.part.key}): {exc}", server=self.server) \
                from None
        following, done = self._range.after(span, table)
        if table.num_rows == 0:
            return None, following, done
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
        return columns, following, done

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

    def next_batch(self, flow_id: str, mark_key: str, rows_before: int, *, consistent: bool = True,
                   by_key: bool = False) -> tuple[ChangeBatch, Chunk, int]:
        """The next chunk as a batch of ``read`` rows (numbered after ``rows_before``) with its snapshot mark
        (``mark_key``; a key-range part's mark has its last key), the chunk and the rows it holds."""
        chunk = self.read(rows_before + 1)
        rows = len(chunk.changes) if chunk.changes is not None else 0
        mark = SnapshotMark(mark_key, chunk.next_block, chunk.done, rows_before + rows, consistent,
                            next_key=chunk.next_key if by_key else None)
        return self.batch(flow_id, chunk.changes if rows else None, mark), chunk, rows

    def batch(self, flow_id: str, changes: TableChanges | None, mark: SnapshotMark) -> ChangeBatch:
        """A chunk's batch (no segments for a chunk without rows: the mark still tells the destinations' progress);
        its position is the part's last row read."""
        return ChangeBatch(flow_id, [changes] if changes is not None else [],
                           Position(self.snapshot_lsn, self.ordinal_base + mark.rows), snapshot=mark)

    def close(self) -> None:
        if self._ahead is not None:  # let a fetch in flight end before its connection goes
            self._ahead[1].cancel() or wait([self._ahead[1]])
            self._ahead = None
        self.scan.close()
