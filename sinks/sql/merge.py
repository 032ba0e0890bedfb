"""An epoch's buffered segments of one table merged into the one Arrow table the epoch reduction reads
(:mod:`sinks.sql.reduce`): one schema (the latest shape, older segments cast to it), ``__seq`` in WAL order."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sinks.sql.reduce import SEQ_COL, ReduceError
from sources.postgres.pgtypes import DATE_NEG_INF, TS_NEG_INF
from wallaby.core.changes import (
    BEFORE_PREFIX,
    LSN_COL,
    OP_COL,
    OP_TRUNCATE,
    OP_UPDATE,
    ORD_COL,
    TS_COL,
    UNCHANGED_COL,
    Column,
    Position,
    TableChanges,
    TableSchema,
)

# Built from a numpy buffer, not with pa.array: pyarrow imports pandas (when installed) the first time pa.array is
# called, ~0.4 s of a worker's start-up, which a catch-up run with nothing to read paid in full.
_SEQ_CACHE: list[pa.Array] = [pa.Array.from_buffers(pa.int64(), 0, [None, pa.py_buffer(np.empty(0, np.int64))])]
_SEQ_LOCK = threading.Lock()


def _seq(n: int) -> pa.Array:
    """0..n-1 as int64, sliced from a cached array (building it per apply costs ~0.2 s per million)."""
    with _SEQ_LOCK:
        have = _SEQ_CACHE[0]
        if len(have) < n:
            size = max(n, 2 * len(have), 1 << 16)
            have = pa.Array.from_buffers(pa.int64(), size, [None, pa.py_buffer(np.arange(size, dtype=np.int64))])
            _SEQ_CACHE[0] = have
    return have.slice(0, n)


def fix_infinity(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    """Postgres -infinity (the source's DATE_NEG_INF days / TS_NEG_INF µs) -> DuckDB's -infinity (MIN + 1)."""
    t = arr.type
    if pa.types.is_date32(t):
        ints, sentinel = arr.cast(pa.int32()), DATE_NEG_INF
    elif pa.types.is_timestamp(t):
        ints, sentinel = arr.cast(pa.int64()), TS_NEG_INF
    else:
        return arr
    if ints.null_count == len(ints) or pc.min(ints).as_py() != sentinel:
        return arr
    fixed = pc.if_else(pc.equal(ints, pa.scalar(sentinel, ints.type)), pa.scalar(sentinel + 1, ints.type), ints)
    return fixed.cast(t)


@dataclass(slots=True)
class TruncateMark:
    """A truncate inside an append-mode buffer (becomes one ``__op='truncate'`` row)."""

    position: Position
    commit_ts: int
    xid: int


def merge_pending(table: TableSchema, items: list[TableChanges | TruncateMark], columns: dict[str, Column],
                  append: bool, duckdb_infinity: bool = True) -> pa.Table:
    """One Arrow table: after columns, meta columns, the needed before columns, ``__seq``. ``duckdb_infinity``:
    dates and timestamps at Postgres' -infinity become DuckDB's (:func:`fix_infinity`; DuckDB and DuckLake)."""
    keyed = not append and table.replica_identity != "f" and bool(table.key_names)
    names = list(columns)
    segs = [i for i in items if isinstance(i, TableChanges)]
    has_before = any(s.has_before for s in segs)
    before_names = list(table.key_names) if keyed else names
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
    for item in items:
        if isinstance(item, TruncateMark):
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
                    raise ReduceError(
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
    for i, f in enumerate(tbl.schema if duckdb_infinity else ()):
        if pa.types.is_date32(f.type) or pa.types.is_timestamp(f.type):
            if f.name in (TS_COL,):
                continue
            fixed = fix_infinity(tbl.column(i))
            if fixed is not tbl.column(i):
                tbl = tbl.set_column(i, f, fixed)
    return tbl.append_column(SEQ_COL, _seq(tbl.num_rows))
