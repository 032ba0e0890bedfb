"""The proto format's encoder (``wallaby.v1.RecordBatch``), built a column at a time, and the byte-column
helpers the avro encoder shares.

:func:`encode_proto` writes a segment that still has its Arrow rows without a
:class:`Record` or a protobuf message per change: each column becomes, at once,
the serialized ``Value`` of every row (numpy varints, Arrow kernels), each
change's ``Record`` is joined from those bytes (``binary_join_element_wise``)
and the records are spliced between the serialized header fields. The bytes
are those protobuf gives for the message built value by value (fields in
number order, proto3 defaults omitted, oneof members always written), which
:func:`encode_proto_records` still builds for decoded segments, events and
column types without a column path (large_binary, float16, ...).

A *byte column* is a ``large_binary`` array without nulls: the bytes each row
contributes to some encoding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from wallaby.core.changes import BEFORE_PREFIX, LSN_COL, OP_COL, ORD_COL, TS_COL, UNCHANGED_COL, XID_COL
from wallaby.v1 import data_pb2 as d
from wallaby.wire.model import WireColumn, WireSegment, plain_type, type_text

# -- byte columns ------------------------------------------------------------------------------------

BYTES = pa.large_binary()
_POW7 = np.array([1 << (7 * k) for k in range(1, 10)], np.uint64)  # a varint has one more byte past each
_SHIFT7 = np.arange(10, dtype=np.uint64) * np.uint64(7)

Piece = pa.Array | pa.Scalar | bytes


@functools.lru_cache(maxsize=256)
def const(b: bytes) -> pa.Scalar:
    return pa.scalar(b, BYTES)


def _arg(p: Piece) -> pa.Array | pa.Scalar:
    return const(p) if isinstance(p, bytes) else p


def from_lengths(lens: np.ndarray, data: np.ndarray) -> pa.Array:
    """The byte column whose rows are consecutive runs of ``data``, ``lens[i]`` bytes each."""
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    return pa.Array.from_buffers(BYTES, len(lens), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _spliced(head: np.ndarray, lens: np.ndarray, body: np.ndarray) -> pa.Array:
    """Per row: its ``head`` bytes (same for all), then the first ``lens[i] - len(head)`` bytes of ``body[i]``."""
    n, t = len(lens), len(head)
    mat = np.empty((n, t + body.shape[1]), np.uint8)
    mat[:, :t] = head
    mat[:, t:] = body
    return from_lengths(lens, mat[np.arange(mat.shape[1]) < lens[:, None]])


def varints(u: np.ndarray, tag: bytes = b"", omit_zero: bool = False) -> pa.Array:
    """Per value of ``u`` (uint64): ``tag``, then its base-128 varint; nothing at all for 0 when ``omit_zero``."""
    n = len(u)
    nb = np.searchsorted(_POW7, u, side="right") + 1
    g = int(nb.max()) if n else 1
    body = (u[:, None] >> _SHIFT7[:g]) & np.uint64(0x7F)
    body |= (np.arange(g) < (nb - 1)[:, None]).astype(np.uint64) << np.uint64(7)
    lens = nb + len(tag)
    if omit_zero:
        lens[u == 0] = 0
    return _spliced(np.frombuffer(tag, np.uint8), lens, body.astype(np.uint8))


def zigzag(v: np.ndarray) -> np.ndarray:
    """Avro's zigzag mapping of int64 values, as uint64."""
    v = v.astype(np.int64, copy=False)
    return ((v << np.int64(1)) ^ (v >> np.int64(63))).view(np.uint64)


def fixed(raw: np.ndarray, tag: bytes = b"") -> pa.Array:
    """Per row of ``raw`` (n by width, uint8): ``tag`` then that row's bytes."""
    n, w = raw.shape
    return _spliced(np.frombuffer(tag, np.uint8), np.full(n, len(tag) + w, np.int64), raw)


def lengths(col: pa.Array) -> np.ndarray:
    return pc.binary_length(col).to_numpy().astype(np.int64, copy=False)


def prefixed(col: pa.Array, tag: bytes = b"", zz: bool = False) -> pa.Array:
    """Per row: ``tag``, the varint of its length (zigzagged for Avro), its bytes."""
    lens = lengths(col)
    return join(varints(zigzag(lens) if zz else lens.view(np.uint64), tag), col)


def join(*pieces: Piece) -> pa.Array:
    """Per row, the concatenation of the pieces' bytes (byte columns, or constant bytes)."""
    args = [_arg(p) for p in pieces]
    if len(args) == 1 and isinstance(args[0], pa.Array):
        return args[0]
    return pc.binary_join_element_wise(*args, const(b""))


def choose(mask: pa.Array, yes: Piece, no: Piece) -> pa.Array:
    return pc.if_else(mask, _arg(yes), _arg(no))


def valued(arr: pa.Array, col: pa.Array, null: bytes) -> pa.Array:
    """``col`` with ``null`` in the rows where ``arr`` is NULL."""
    return col if not arr.null_count else choose(arr.is_valid(), col, null)


def as_bytes(arr: pa.Array) -> pa.Array:
    """A string or binary column as a byte column (NULL as empty)."""
    out = arr.cast(BYTES)
    return out.fill_null(const(b"")) if out.null_count else out


def numbers(arr: pa.Array, dtype: Any) -> np.ndarray:
    """The values as a numpy array of ``dtype`` (NULL as 0)."""
    if arr.null_count:
        arr = arr.fill_null(False if pa.types.is_boolean(arr.type) else 0)
    return arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


_INTERVAL = np.dtype([("months", "<i4"), ("days", "<i4"), ("nanoseconds", "<i8")])


def interval_parts(arr: pa.Array) -> np.ndarray:
    """The month-day-nano values as a numpy record array (garbage where NULL)."""
    return np.frombuffer(arr.buffers()[1], _INTERVAL, count=arr.offset + len(arr))[arr.offset:]


def list_parts(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A list column's items (those of its rows, NULL rows' included) and the rows' offsets into them."""
    offsets = arr.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    return arr.values.slice(int(arr.offsets[0].as_py()), int(offsets[-1])), offsets


def per_list(offsets: np.ndarray, items: pa.Array) -> pa.Array:
    """Per row, its items' bytes (``items[offsets[i]:offsets[i + 1]]``) joined."""
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), items)
    return pc.binary_join(lists, const(b""))


def offsets_of(col: pa.Array) -> np.ndarray:
    return np.frombuffer(col.buffers()[1], np.int64, count=len(col) + 1, offset=col.offset * 8)


def data_of(col: pa.Array) -> pa.Buffer | bytes:
    """The byte column's bytes, row after row (a view of its buffer)."""
    off = offsets_of(col)
    buf = col.buffers()[2]
    if buf is None or off[-1] == off[0]:
        return b""
    return buf.slice(int(off[0]), int(off[-1] - off[0]))


def varint(v: int) -> bytes:
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def rows_only(seg: WireSegment) -> bool:
    """The segment still has its Arrow rows and its records were not built (the column-at-a-time path)."""
    return not seg.is_event and seg._rows is not None and seg.__dict__.get("_lazy_records") is not None


def column_of(rows: pa.RecordBatch, name: str, t: pa.DataType) -> pa.Array | None:
    """The rows' column ``name`` in its plain type; None unless that is the column's declared type ``t``."""
    arr = rows.column(name)
    if plain_type(arr.type) != arr.type:
        arr = arr.cast(plain_type(arr.type))
    return arr if arr.type == t else None


class Shape:
    """Which changes have an after image, a before image and a key, and where each key comes from, as
    :func:`wallaby.wire.model.records_of` decides (masks over the rows)."""

    def __init__(self, rows: pa.RecordBatch, cols: list[WireColumn], has_before: bool) -> None:
        self.ops = rows.column(OP_COL)
        self.deleted = pc.equal(self.ops, "delete")
        self.present: pa.Array | None = None  # a before image (not all NULL)
        self.old: pa.Array | None = None  # the key from the before image
        if has_before and cols:
            valid = [rows.column(BEFORE_PREFIX + c.name).is_valid() for c in cols]
            self.present = functools.reduce(pc.or_, valid)
            self.old = pc.and_(self.present, pc.or_(self.deleted, pc.equal(self.ops, "update")))
        self.no_key = (self.deleted if self.present is None
                       else pc.and_(self.deleted, pc.invert(self.present)))
        self.key_idx = [i for i, c in enumerate(cols) if c.key]

    def keys(self, after: list[pa.Array], before: list[pa.Array]) -> list[pa.Array]:
        """The key columns' byte columns, from the before image where the key is the old one."""
        if self.old is None:
            return [after[i] for i in self.key_idx]
        return [choose(self.old, before[i], after[i]) for i in self.key_idx]


def interleaved(tag: bytes, cols: Sequence[pa.Array]) -> list[Piece]:
    return [x for c in cols for x in (tag, c)]


# -- proto values ------------------------------------------------------------------------------------

_NULL = b"\x08\x01"  # Value{null_value: true}


def _pb_value(v: Any, t: pa.DataType):
    if v is None:
        return d.Value(null_value=True)
    if pa.types.is_boolean(t):
        return d.Value(bool_value=v)
    if pa.types.is_unsigned_integer(t):
        return d.Value(uint_value=v)
    if pa.types.is_integer(t):
        return d.Value(int_value=v)
    if pa.types.is_floating(t):
        return d.Value(double_value=v)
    if pa.types.is_decimal(t):
        return d.Value(decimal_value=str(v))
    if pa.types.is_binary(t):
        return d.Value(bytes_value=v)
    if pa.types.is_timestamp(t):
        return d.Value(timestamp_micros=v)
    if pa.types.is_date32(t):
        return d.Value(date_days=v)
    if pa.types.is_time64(t):
        return d.Value(time_micros=v)
    if pa.types.is_interval(t):
        return d.Value(interval_value=d.Interval(months=v[0], days=v[1], nanoseconds=v[2]))
    if pa.types.is_list(t):
        return d.Value(list_value=d.ValueList(values=[_pb_value(x, t.value_type) for x in v]))
    return d.Value(string_value=v)


def _pb_values(arr: pa.Array, t: pa.DataType) -> pa.Array | None:
    """The serialized ``Value`` of each row; None for types without a column path."""
    if pa.types.is_null(t):
        return pa.repeat(const(_NULL), len(arr))
    if pa.types.is_boolean(t):
        col = varints(numbers(arr, np.uint64), b"\x10")
    elif pa.types.is_integer(t):
        unsigned = pa.types.is_unsigned_integer(t)
        col = varints(numbers(arr, np.uint64 if unsigned else np.int64).view(np.uint64),
                      b"\x20" if unsigned else b"\x18")
    elif pa.types.is_float32(t) or pa.types.is_float64(t):
        col = fixed(numbers(arr, np.float64).astype("<f8", copy=False).view(np.uint8).reshape(-1, 8), b"\x29")
    elif pa.types.is_decimal(t):
        col = prefixed(as_bytes(arr.cast(pa.string())), b"\x42")  # Arrow's text is str(Decimal)'s
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        col = prefixed(as_bytes(arr), b"\x32")
    elif pa.types.is_binary(t):
        col = prefixed(as_bytes(arr), b"\x3a")
    elif pa.types.is_timestamp(t) or pa.types.is_date32(t) or pa.types.is_time64(t):
        tag = b"\x48" if pa.types.is_timestamp(t) else b"\x50" if pa.types.is_date32(t) else b"\x58"
        storage = arr.cast(pa.int32() if pa.types.is_date32(t) else pa.int64())
        col = varints(numbers(storage, np.int64).view(np.uint64), tag)
    elif pa.types.is_interval(t):
        iv = interval_parts(arr)
        fields = [varints(iv[name].astype(np.int64).view(np.uint64), tag, omit_zero=True)
                  for name, tag in (("months", b"\x08"), ("days", b"\x10"), ("nanoseconds", b"\x18"))]
        col = prefixed(join(*fields), b"\x62")
    elif pa.types.is_list(t):
        items, offsets = list_parts(arr)
        values = _pb_values(items, t.value_type)
        if values is None:
            return None
        col = prefixed(per_list(offsets, prefixed(values, b"\x0a")), b"\x6a")
    else:
        return None
    return valued(arr, col, _NULL)


def _unchanged_pb(rows: pa.RecordBatch) -> pa.Array | None:
    arr = rows.column(UNCHANGED_COL)
    if arr.null_count == len(arr):
        return None
    out = []
    for names in arr.to_pylist():
        parts = []
        for name in names or ():
            b = name.encode()
            parts += (b"\x5a", varint(len(b)), b)
        out.append(b"".join(parts))
    return pa.array(out, BYTES)


def proto_records(cols: list[WireColumn], rows: pa.RecordBatch, has_before: bool) -> pa.Buffer | bytes | None:
    """The serialized ``records`` field (6) of a RecordBatch, straight from a segment's rows; None when a
    column's type has no column path."""
    after = [_pb_values(a, c.arrow_type) if (a := column_of(rows, c.name, c.arrow_type)) is not None else None
             for c in cols]
    before = [_pb_values(a, c.arrow_type) if (a := column_of(rows, BEFORE_PREFIX + c.name, c.arrow_type))
              is not None else None for c in cols] if has_before else []
    if any(v is None for v in (*after, *before)):
        return None
    after_lv = [prefixed(v) for v in after]
    before_lv = [prefixed(v) for v in before]
    shape = Shape(rows, cols, has_before)
    fields: list[Piece] = [
        prefixed(as_bytes(shape.ops), b"\x0a"),
        varints(numbers(rows.column(LSN_COL), np.uint64), b"\x10", omit_zero=True),
        varints(numbers(rows.column(ORD_COL), np.uint64), b"\x18", omit_zero=True),
        varints(numbers(rows.column(TS_COL).cast(pa.int64()), np.int64).view(np.uint64), b"\x20", omit_zero=True),
        varints(numbers(rows.column(XID_COL), np.uint64), b"\x28", omit_zero=True),
    ]
    if any(o == "" for o in pc.unique(shape.ops).to_pylist()):  # proto3 omits empty strings
        fields[0] = choose(pc.equal(shape.ops, ""), b"", fields[0])
    if shape.key_idx:
        fields.append(choose(shape.no_key, b"", join(*interleaved(b"\x32", shape.keys(after_lv, before_lv)))))
    if shape.present is not None:
        fields.append(choose(shape.present, join(b"\x38\x01", *interleaved(b"\x42", before_lv)), b""))
    fields.append(choose(shape.deleted, b"", join(b"\x48\x01", *interleaved(b"\x52", after_lv))))
    unchanged = _unchanged_pb(rows)
    if unchanged is not None:
        fields.append(unchanged)
    return data_of(prefixed(join(*fields), b"\x32"))


def encode_proto_records(seg: WireSegment) -> bytes:
    """The RecordBatch built message by message from the segment's records."""

    cols, keys = seg.columns, [c for c in seg.columns if c.key]

    def vals(values: list[Any] | None, cs: list[WireColumn]) -> list:
        return [] if values is None else [_pb_value(v, c.arrow_type) for c, v in zip(cs, values, strict=True)]

    msg = d.RecordBatch(
        flow_id=seg.flow_id, table=seg.table, schema_version=seg.schema_version, replica_identity=seg.replica_identity,
        columns=_column_infos(cols),
        records=[d.Record(op=r.op, lsn=r.lsn, ordinal=r.ordinal, commit_ts_micros=r.commit_ts, xid=r.xid,
                          key=vals(r.key, keys), has_before=r.before is not None, before=vals(r.before, cols),
                          has_after=r.after is not None, after=vals(r.after, cols), unchanged=r.unchanged)
                 for r in seg.records],
        tables=seg.tables, event_json=orjson.dumps(seg.event_payload).decode() if seg.is_event else "",
        has_before=seg.has_before)
    return msg.SerializeToString()


def _column_infos(cols: list[WireColumn]) -> list:
    return [d.ColumnInfo(name=c.name, pg_type=c.pg_type, arrow_type=type_text(c.arrow_type), key=c.key)
            for c in cols]


def encode_proto(seg: WireSegment) -> bytes:
    if rows_only(seg):
        assert seg._rows is not None
        records = proto_records(seg.columns, seg._rows, seg.has_before)
        if records is not None:
            # The fields before and after ``records`` (6), serialized in field order around it.
            head = d.RecordBatch(flow_id=seg.flow_id, table=seg.table, schema_version=seg.schema_version,
                                 replica_identity=seg.replica_identity, columns=_column_infos(seg.columns))
            tail = d.RecordBatch(tables=seg.tables, has_before=seg.has_before)
            return b"".join((head.SerializeToString(), records, tail.SerializeToString()))
    return encode_proto_records(seg)


__all__ = ["encode_proto", "encode_proto_records", "proto_records"]
