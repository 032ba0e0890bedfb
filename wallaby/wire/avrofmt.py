"""The avro format's schema and encoder (an Avro object container file, codec null), built a column at a time.

:func:`encode_avro` writes a segment that still has its Arrow rows without a
:class:`Record` or a dict per change: each column becomes, at once, the Avro
binary encoding of every row's ``["null", T]`` union (numpy varints, Arrow
kernels), each change's record is joined from those bytes and the records are
cut into blocks where fastavro's writer cuts them (a block ends with the record
that brings it to 16,000 bytes). fastavro writes the header (and draws the sync
marker), so the file is the one :func:`encode_avro_records` (fastavro, record by
record) writes, byte for byte but for that random marker. Decimals whose
unscaled values pass 64 bits are encoded one by one by fastavro itself; column
types whose values fastavro may reject (or that this path does not know) take
the record path whole, which raises as it did.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pyarrow as pa

from wallaby.core.changes import BEFORE_PREFIX, LSN_COL, ORD_COL, TS_COL, UNCHANGED_COL, XID_COL
from wallaby.wire.model import WireColumn, WireSegment, canonical, plain_type
from wallaby.wire.protofmt import (
    BYTES,
    Piece,
    Shape,
    as_bytes,
    choose,
    column_of,
    const,
    data_of,
    fixed,
    from_lengths,
    interval_parts,
    join,
    list_parts,
    numbers,
    offsets_of,
    per_list,
    prefixed,
    rows_only,
    valued,
    varint,
    varints,
    zigzag,
)

_AVRO_NAME = re.compile(r"[^A-Za-z0-9_]")
SYNC_INTERVAL = 1000 * 16  # fastavro.writer's default: 1000 sync markers' worth of bytes per block
INT64_MAX = 2**63 - 1


# -- schema ------------------------------------------------------------------------------------------

def _avro_names(cols: list[WireColumn]) -> list[str]:
    """Valid, unique Avro field names for the columns (the real names are in the header)."""
    out: list[str] = []
    for c in cols:
        name = _AVRO_NAME.sub("_", c.name) or "_"
        if name[0].isdigit():
            name = "_" + name
        base, i = name, 2
        while name in out:
            name, i = f"{base}_{i}", i + 1
        out.append(name)
    return out


def _avro_type(t: pa.DataType, defined: set[str]) -> Any:
    t = plain_type(t)
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "int" if t.bit_width <= 16 or (t.bit_width == 32 and pa.types.is_signed_integer(t)) else "long"
    if pa.types.is_float32(t):
        return "float"
    if pa.types.is_floating(t):
        return "double"
    if pa.types.is_decimal(t):
        return {"type": "bytes", "logicalType": "decimal", "precision": t.precision, "scale": t.scale}
    if pa.types.is_binary(t):
        return "bytes"
    if pa.types.is_timestamp(t):
        return {"type": "long", "logicalType": "timestamp-micros" if t.tz else "local-timestamp-micros"}
    if pa.types.is_date32(t):
        return {"type": "int", "logicalType": "date"}
    if pa.types.is_time64(t):
        return {"type": "long", "logicalType": "time-micros"}
    if pa.types.is_interval(t):
        if "Interval" in defined:
            return "Interval"
        defined.add("Interval")
        return {"type": "record", "name": "Interval", "fields": [{"name": "months", "type": "int"},
                                                                {"name": "days", "type": "int"},
                                                                {"name": "nanoseconds", "type": "long"}]}
    if pa.types.is_list(t):
        return {"type": "array", "items": ["null", _avro_type(t.value_type, defined)]}
    return "string"


def avro_schema(seg: WireSegment) -> dict[str, Any]:
    """The Avro schema of a segment: derived from its table, so it changes with the table's schema version."""
    defined: set[str] = set()
    names = _avro_names(seg.columns)
    row_fields = [{"name": n, "type": ["null", _avro_type(c.arrow_type, defined)], "default": None}
                  for n, c in zip(names, seg.columns, strict=True)]
    key_fields = [f for f, c in zip(row_fields, seg.columns, strict=True) if c.key]
    space = "wallaby." + ".".join(_AVRO_NAME.sub("_", p) or "_" for p in (seg.table or "event").split("."))
    row = {"type": "record", "name": "Row", "fields": row_fields}
    key = {"type": "record", "name": "Key", "fields": [{**f, "type": f["type"]} for f in key_fields]}
    return {"type": "record", "name": f"Change_v{seg.schema_version}", "namespace": space, "fields": [
        {"name": "op", "type": "string"}, {"name": "lsn", "type": "long"}, {"name": "ordinal", "type": "long"},
        {"name": "commit_ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "xid", "type": "long"},
        {"name": "key", "type": ["null", key], "default": None},
        {"name": "before", "type": ["null", row], "default": None},
        {"name": "after", "type": ["null", "Row"], "default": None},
        {"name": "unchanged", "type": {"type": "array", "items": "string"}, "default": []}]}


def _avro_value(v: Any, t: pa.DataType) -> Any:
    if v is None:
        return None
    if pa.types.is_interval(t):
        return {"months": v[0], "days": v[1], "nanoseconds": v[2]}
    if pa.types.is_list(t):
        return [_avro_value(x, t.value_type) for x in v]
    return v


# -- a column at a time ------------------------------------------------------------------------------

_BYTE_LIMITS = np.array([1 << (8 * k - 1) for k in range(1, 8)], np.uint64)  # magnitudes needing one more byte
_COLS10 = np.arange(10)


def _each(arr: pa.Array, t: pa.DataType) -> pa.Array:
    """Value by value, by fastavro: what it writes for the ``["null", T]`` field in a record."""
    import fastavro

    schema = fastavro.parse_schema(["null", _avro_type(t, set())])
    out = []
    for v in canonical(arr):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, _avro_value(v, t))
        out.append(buf.getvalue())
    return pa.array(out, BYTES)


def _decimals(arr: pa.Array) -> pa.Array | None:
    """fastavro's bytes for decimals whose unscaled values fit in int64 (big-endian two's complement in
    ``(bit_length(|v|) + 8) // 8`` bytes); None when one does not."""
    t = arr.type
    if t.byte_width not in (16, 32):
        return None
    n, words = len(arr), t.byte_width // 8
    raw = np.frombuffer(arr.buffers()[1], "<i8", count=(arr.offset + n) * words).reshape(-1, words)[arr.offset:]
    lo = raw[:, 0].copy()
    fits = (raw[:, 1:] == (lo >> np.int64(63))[:, None]).all(axis=1) & (lo != np.iinfo(np.int64).min)
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        lo[~valid] = 0
        fits |= ~valid
    if not fits.all():
        return None
    nbytes = np.searchsorted(_BYTE_LIMITS, np.abs(lo).view(np.uint64), side="right") + 1
    mat = np.empty((n, 10), np.uint8)
    mat[:, 0] = 2  # the union's branch 1
    mat[:, 1] = 2 * nbytes  # the length, zigzagged
    mat[:, 2:] = lo.astype(">i8").view(np.uint8).reshape(n, 8)
    return from_lengths(nbytes + 2, mat[(_COLS10 < 2) | ((10 - nbytes)[:, None] <= _COLS10)])


def avro_column(arr: pa.Array, t: pa.DataType) -> pa.Array | None:
    """Per row, the encoding of the value as a ``["null", T]`` union; None when fastavro may reject a value."""
    if pa.types.is_null(t):
        return pa.repeat(const(b"\x00"), len(arr))
    col: pa.Array | None
    if pa.types.is_boolean(t):
        col = varints(numbers(arr, np.uint64), b"\x02")
    elif pa.types.is_integer(t):
        if t == pa.uint64():
            u = numbers(arr, np.uint64)
            if len(u) and int(u.max()) > INT64_MAX:  # not an Avro long: the record path raises as it did
                return None
        col = varints(zigzag(numbers(arr, np.int64)), b"\x02")
    elif pa.types.is_float32(t):  # a Python float (the value as double) written as a C float
        col = fixed(numbers(arr, np.float64).astype(np.float32).astype("<f4").view(np.uint8).reshape(-1, 4), b"\x02")
    elif pa.types.is_float64(t):
        col = fixed(numbers(arr, np.float64).astype("<f8", copy=False).view(np.uint8).reshape(-1, 8), b"\x02")
    elif pa.types.is_decimal(t):
        col = _decimals(arr)
        if col is None:
            return _each(arr, t)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        col = prefixed(as_bytes(arr), b"\x02", zz=True)
    elif pa.types.is_timestamp(t) or pa.types.is_date32(t) or pa.types.is_time64(t):
        col = varints(zigzag(numbers(arr.cast(pa.int32() if pa.types.is_date32(t) else pa.int64()), np.int64)),
                      b"\x02")
    elif pa.types.is_interval(t):
        iv = interval_parts(arr)
        col = join(b"\x02", *(varints(zigzag(iv[name])) for name in ("months", "days", "nanoseconds")))
    elif pa.types.is_list(t):  # an array: one block of all the items (when there are any), then 0
        items, offsets = list_parts(arr)
        values = avro_column(items, t.value_type)
        if values is None:
            return None
        counts = np.diff(offsets)
        col = join(b"\x02", varints(zigzag(counts), omit_zero=True), per_list(offsets, values), b"\x00")
    else:
        return None
    return valued(arr, col, b"\x00")


def _longs(arr: pa.Array) -> pa.Array | None:
    v = numbers(arr, np.uint64 if pa.types.is_unsigned_integer(arr.type) else np.int64)
    if v.dtype == np.uint64 and len(v) and int(v.max()) > INT64_MAX:
        return None
    return varints(zigzag(v))


def _unchanged(rows: pa.RecordBatch) -> Piece:
    arr = rows.column(UNCHANGED_COL)
    if arr.null_count == len(arr):
        return b"\x00"
    out = []
    for names in arr.to_pylist():
        parts = [varint(2 * len(names))] if names else []
        for name in names or ():
            b = name.encode()
            parts += (varint(2 * len(b)), b)
        parts.append(b"\x00")
        out.append(b"".join(parts))
    return pa.array(out, BYTES)


def avro_records(cols: list[WireColumn], rows: pa.RecordBatch, has_before: bool) -> pa.Array | None:
    """Each change's Avro record (a byte column), straight from a segment's rows; None when the record path
    must write them."""
    after = [avro_column(a, c.arrow_type) if (a := column_of(rows, c.name, c.arrow_type)) is not None else None
             for c in cols]
    before = [avro_column(a, c.arrow_type) if (a := column_of(rows, BEFORE_PREFIX + c.name, c.arrow_type))
              is not None else None for c in cols] if has_before else []
    meta = [_longs(rows.column(LSN_COL)), _longs(rows.column(ORD_COL)),
            _longs(rows.column(TS_COL).cast(pa.int64())), _longs(rows.column(XID_COL))]
    if any(v is None for v in (*after, *before, *meta)):
        return None
    shape = Shape(rows, cols, has_before)
    fields: list[Piece] = [prefixed(shape.ops.cast(BYTES), zz=True), *meta]
    fields.append(choose(shape.no_key, b"\x00", join(b"\x02", *shape.keys(after, before)))
                  if shape.key_idx else b"\x00")
    fields.append(b"\x00" if shape.present is None else
                  choose(shape.present, join(b"\x02", *before), b"\x00"))
    fields.append(choose(shape.deleted, b"\x00", join(b"\x02", *after)))
    fields.append(_unchanged(rows))
    return join(*fields)


def _container(header: bytes, records: pa.Array) -> bytes:
    """The file: fastavro's header (which ends with the sync marker), then the records in blocks."""
    sync = header[-16:]
    n = len(records)
    off = offsets_of(records)
    off = off - off[0]
    data = data_of(records)
    out: list[Any] = [header]
    start = 0
    while start < n:
        end = min(int(np.searchsorted(off, off[start] + SYNC_INTERVAL, side="left")), n)
        size = int(off[end] - off[start])
        out += (varint(2 * (end - start)), varint(2 * size), data[int(off[start]):int(off[end])], sync)
        start = end
    return b"".join(out)


def encode_avro_records(seg: WireSegment, metadata: dict[str, str]) -> bytes:
    """The file written by fastavro, record by record, from the segment's records."""
    import fastavro

    schema = avro_schema(seg)
    names = _avro_names(seg.columns)
    key_names = [n for n, c in zip(names, seg.columns, strict=True) if c.key]
    key_cols = [c for c in seg.columns if c.key]

    def row(values: list[Any] | None, cols: list[WireColumn], ns: list[str]) -> dict[str, Any] | None:
        if values is None:
            return None
        return {n: _avro_value(v, c.arrow_type) for n, c, v in zip(ns, cols, values, strict=True)}

    records = [{"op": r.op, "lsn": r.lsn, "ordinal": r.ordinal, "commit_ts": r.commit_ts, "xid": r.xid,
                "key": row(r.key, key_cols, key_names), "before": row(r.before, seg.columns, names),
                "after": row(r.after, seg.columns, names), "unchanged": r.unchanged} for r in seg.records]
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records, metadata=metadata, codec="null")
    return buf.getvalue()


def encode_avro(seg: WireSegment, metadata: dict[str, str]) -> bytes:
    """The segment as an Avro file whose metadata holds ``metadata`` (the wire header)."""
    if rows_only(seg):
        assert seg._rows is not None
        records = avro_records(seg.columns, seg._rows, seg.has_before)
        if records is not None:
            import fastavro

            buf = io.BytesIO()
            fastavro.writer(buf, fastavro.parse_schema(avro_schema(seg)), [], metadata=metadata, codec="null")
            return _container(buf.getvalue(), records)
    return encode_avro_records(seg, metadata)


__all__ = ["avro_schema", "encode_avro", "encode_avro_records"]
