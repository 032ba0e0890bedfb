"""Metadata columns, soft deletes and append mode: a per-destination rewrite of each batch.

Destination options (USAGE.md "Destination Metadata + Append/Soft Delete"):

- ``meta_enabled``: every row gets ``meta_synced_at`` (timestamptz: when this
  wallaby wrote it), ``meta_deleted`` (bool: the change was a delete),
  ``meta_watermark`` (``watermark_source=timestamp``: the commit timestamp;
  ``lsn``: the commit LSN as ``pg_lsn`` text; ``-`` leaves it out) and
  ``meta_op`` (insert/update/delete). The columns join the table's schema, so
  materializing destinations create them like source columns.
- ``soft_delete``: a delete becomes an update of the same key that sets
  ``meta_deleted=true`` and keeps every other column (they are marked unchanged,
  which destinations keep as they are).
- ``append_mode``: every change becomes an insert of its row image (the before
  image for deletes) with the original op in ``meta_op``; the table has no key,
  so destinations keep every version.

``soft_delete`` and ``append_mode`` imply the metadata columns they need.
A metadata column named like a source column is an error naming both.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from wallaby.core.changes import (
    BEFORE_PREFIX,
    LSN_COL,
    OP_COL,
    OP_DELETE,
    OP_INSERT,
    OP_UPDATE,
    TS_COL,
    UNCHANGED_COL,
    ChangeBatch,
    Column,
    TableChanges,
    TableSchema,
)
from wallaby.core.errors import PermanentSinkError


class MetadataError(ValueError):
    pass


class MetadataRewriter:
    def __init__(self, options: Any):
        self.o = options
        self.enabled = bool(options.meta_enabled or options.soft_delete or options.append_mode)
        cols = [options.meta_synced_at, options.meta_deleted, options.meta_op]
        if options.watermark_column:
            cols.append(options.watermark_column)
        self.names = cols

    def columns(self) -> list[Column]:
        o = self.o
        out = [Column(o.meta_synced_at, 1184, "timestamptz", arrow_type=pa.timestamp("us", tz="UTC")),
               Column(o.meta_deleted, 16, "bool", arrow_type=pa.bool_()),
               Column(o.meta_op, 25, "text", arrow_type=pa.string())]
        if o.watermark_column:
            if o.watermark_source == "lsn":
                out.append(Column(o.watermark_column, 3220, "pg_lsn", arrow_type=pa.string()))
            else:
                out.append(Column(o.watermark_column, 1184, "timestamptz", arrow_type=pa.timestamp("us", tz="UTC")))
        return out

    def rewrite(self, batch: ChangeBatch) -> ChangeBatch:
        if not self.enabled:
            return batch
        segs = [self._segment(s) if isinstance(s, TableChanges) and len(s) else s for s in batch.segments]
        return replace(batch, segments=segs)  # its snapshot mark and caught_up kept

    def _schema(self, t: TableSchema) -> TableSchema:
        clash = sorted(set(self.names) & set(t.column_names))
        if clash:
            raise MetadataError(f"metadata column {clash[0]!r} is also a column of {t.qualified}; choose another"
                                f" name (meta_synced_at, meta_deleted, meta_watermark, meta_op)")
        cols = tuple(replace(c, key=False) for c in t.columns) if self.o.append_mode else t.columns
        return replace(t, columns=cols + tuple(self.columns()),
                       replica_identity="f" if self.o.append_mode else t.replica_identity)

    def _segment(self, seg: TableChanges) -> TableChanges:
        t, rows = seg.table, seg.rows
        n = rows.num_rows
        ops = rows.column(OP_COL)
        is_delete = pc.equal(ops, OP_DELETE)
        meta = self._meta_values(rows, n, is_delete, ops)
        if self.o.append_mode:
            rows = self._append(t, rows, is_delete)
        elif self.o.soft_delete and pc.any(is_delete).as_py():
            rows = self._soft(t, rows, is_delete)
        arrays = [rows.column(i) for i in range(rows.num_columns)]
        fields = list(rows.schema)
        at = len(t.columns)  # metadata columns go right after the table's columns
        for col, values in zip(self.columns(), meta, strict=True):
            arrays.insert(at, values)
            fields.insert(at, pa.field(col.name, col.arrow_type))
            at += 1
        if t.columns and BEFORE_PREFIX + t.columns[0].name in rows.schema.names:
            # keep __before.* aligned with the columns, holding the change's metadata too: a destination that
            # writes a delete as its before image (write_mode=append) writes the delete's metadata with it
            for col, values in zip(self.columns(), meta, strict=True):
                arrays.append(values)
                fields.append(pa.field(BEFORE_PREFIX + col.name, col.arrow_type))
        return TableChanges(self._schema(t), pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields)))

    def _meta_values(self, rows: pa.RecordBatch, n: int, is_delete: pa.Array, ops: pa.Array) -> list[pa.Array]:
        now = pa.array([int(time.time() * 1_000_000)] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        out = [now, is_delete.cast(pa.bool_()), ops.cast(pa.string())]
        if self.o.watermark_column:
            if self.o.watermark_source == "lsn":
                lsn = rows.column(LSN_COL).to_pylist()
                out.append(pa.array([f"{v >> 32:X}/{v & 0xFFFFFFFF:X}" for v in lsn], pa.string()))
            else:
                out.append(rows.column(TS_COL))
        return out

    def _before_image(self, t: TableSchema, rows: pa.RecordBatch, is_delete: pa.Array) -> list[pa.Array]:
        """Per column: the after value, or for deletes the before value (key, or the whole old row)."""
        out = []
        for c in t.columns:
            after = rows.column(c.name)
            b = BEFORE_PREFIX + c.name
            out.append(pc.if_else(is_delete, rows.column(b), after) if b in rows.schema.names else after)
        return out

    def _append(self, t: TableSchema, rows: pa.RecordBatch, is_delete: pa.Array) -> pa.RecordBatch:
        values = self._before_image(t, rows, is_delete)
        arrays = [*values, pa.array([OP_INSERT] * rows.num_rows, pa.string())]
        names = [*t.column_names, OP_COL]
        for name in rows.schema.names:
            if name not in names and not name.startswith(BEFORE_PREFIX):
                arrays.append(rows.column(name))
                names.append(name)
        out = pa.RecordBatch.from_arrays(arrays, names=names)
        return out.select([*t.column_names, *[n for n in rows.schema.names
                                             if n not in t.column_names and not n.startswith(BEFORE_PREFIX)]])

    def _soft(self, t: TableSchema, rows: pa.RecordBatch, is_delete: pa.Array) -> pa.RecordBatch:
        """Deletes -> updates of the key that keep the other columns (marked unchanged)."""
        values = self._before_image(t, rows, is_delete)
        keys = set(t.key_names)
        keep = [c.name for c in t.columns if c.name not in keys]
        values = [v if c.name in keys else pc.if_else(is_delete, pa.nulls(len(v), v.type), v)
                  for c, v in zip(t.columns, values, strict=True)]
        unchanged = rows.column(UNCHANGED_COL)
        unchanged = pc.if_else(is_delete, pa.array([keep] * rows.num_rows, pa.list_(pa.string())), unchanged)
        op = pc.if_else(is_delete, pa.scalar(OP_UPDATE), rows.column(OP_COL))
        replaced = {**dict(zip(t.column_names, values, strict=True)), OP_COL: op, UNCHANGED_COL: unchanged}
        arrays = [replaced.get(name, rows.column(name)) for name in rows.schema.names]
        return pa.RecordBatch.from_arrays(arrays, schema=rows.schema)


class MetadataWriter:
    """A destination's writer behind the rewrite (a :class:`sinks.base.Writer`; operators do not import sinks)."""

    def __init__(self, name: str, inner: Any, rewriter: MetadataRewriter):
        self.name, self.inner, self.rewriter = name, inner, rewriter
        self.WHOLE_BATCHES = getattr(inner, "WHOLE_BATCHES", False)  # the rewrite works on a batch of any size

    def write(self, batch: ChangeBatch) -> None:
        try:
            batch = self.rewriter.rewrite(batch)
        except MetadataError as exc:
            raise PermanentSinkError(self.name, str(exc)) from None
        self.inner.write(batch)

    def commit(self) -> Any:
        return self.inner.commit()

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


def with_metadata(name: str, options: Any, make_writer: Any) -> Any:
    """``make_writer`` wrapped when ``options`` ask for metadata columns, soft deletes or append mode."""
    rewriter = MetadataRewriter(options)
    if not rewriter.enabled:
        return make_writer
    return lambda state: MetadataWriter(name, make_writer(state), rewriter)
