"""Column-at-a-time parsing of pgoutput TupleData, for a whole run of rows at once.

Per row the batcher keeps only ``(message bytes, offset of its TupleData)``.
When a batch is taken, the messages are joined into one buffer and each column
is located for every row together with numpy (kind byte, big-endian length,
value start), column after column; the values become an Arrow ``binary_view``
array that points into the joined buffer (no copy of the values, no Python
object per value). Values up to 12 bytes are inlined in the view, as Arrow's
format requires.

This replaces a per-row, per-column Python loop (~0.25 µs a column) with a
few vector operations per column of the batch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")

KIND_NULL = 110  # 'n'
KIND_UNCHANGED = 117  # 'u'
KIND_TEXT = 116  # 't'
KIND_BINARY = 98  # 'b'

_ARANGE12 = np.arange(12)
_ARANGE4 = np.arange(4)
_ARANGE1_5 = np.arange(1, 5)
_PAD = bytes(16)


def skip_tuple(buf: bytes, pos: int) -> int:
    """Offset just past the TupleData at ``pos`` (used to find an update's new tuple)."""
    (n,) = _I16.unpack_from(buf, pos)
    pos += 2
    for _ in range(n):
        kind = buf[pos]
        if kind == KIND_TEXT or kind == KIND_BINARY:
            pos += 5 + _I32.unpack_from(buf, pos + 1)[0]
        else:
            pos += 1
    return pos


@dataclass
class ParsedColumns:
    """Per column: the raw values (binary_view, NULL where absent) and which rows were 'unchanged'."""

    values: list[pa.Array]
    unchanged: list[np.ndarray | None]  # bool per row, None when the column had none


def parse_tuples(images: list[tuple[bytes, int] | None], ncols: int) -> ParsedColumns:
    """Parse the TupleData of every row (None = the row has no such image: all NULL)."""
    n = len(images)
    present = np.fromiter((img is not None for img in images), dtype=bool, count=n)
    rows = [img for img in images if img is not None]
    m = len(rows)
    if m == 0:
        nulls = pa.nulls(n, pa.binary_view())
        return ParsedColumns([nulls] * ncols, [None] * ncols)
    payloads = [r[0] for r in rows]
    big = b"".join([*payloads, _PAD])  # the padding keeps every 4- and 12-byte gather below in bounds
    if len(big) >= 2**31:
        raise ValueError("a batch's row images exceed 2 GiB; lower batch_size")
    u8 = np.frombuffer(big, dtype=np.uint8)
    lens = np.fromiter(map(len, payloads), dtype=np.int64, count=m)
    base = np.cumsum(lens) - lens
    pos = base + np.fromiter((r[1] for r in rows), dtype=np.int64, count=m)

    counts = (u8[pos].astype(np.int64) << 8) | u8[pos + 1]
    if (counts != ncols).any():
        bad = int(counts[counts != ncols][0])
        raise ValueError(f"a row has {bad} columns, its Relation message {ncols}")
    pos = pos + 2
    big_buf = pa.py_buffer(big)
    all_present = bool(present.all())

    values: list[pa.Array] = []
    unchanged: list[np.ndarray | None] = []
    for _ in range(ncols):
        kind = u8[pos]
        has = (kind == KIND_TEXT) | (kind == KIND_BINARY)
        ln = np.where(has, u8[pos[:, None] + _ARANGE1_5].view(">i4").ravel(), 0)
        start = pos + 5
        pos = np.where(has, start + ln, pos + 1)

        views = np.zeros((m, 4), dtype=np.int32)
        vbytes = views.view(np.uint8).reshape(m, 16)
        views[:, 0] = ln
        short = ln <= 12
        n_short = int(np.count_nonzero(short))
        if n_short == m:  # ints, dates, flags, NULLs: every value inline, zero-padded
            vbytes[:, 4:16] = np.where(ln[:, None] > _ARANGE12, u8[start[:, None] + _ARANGE12], 0)
        elif n_short == 0:  # text, bytea, json: a 4-byte prefix and the value's offset in the joined buffer
            vbytes[:, 4:8] = u8[start[:, None] + _ARANGE4]
            views[:, 3] = start
        else:
            head = u8[start[:, None] + _ARANGE12]
            vbytes[short, 4:16] = np.where(ln[short, None] > _ARANGE12, head[short], 0)
            long_ = ~short
            vbytes[long_, 4:8] = head[long_, 0:4]
            views[long_, 3] = start[long_]
        valid = has
        if not all_present:
            full_valid = np.zeros(n, dtype=bool)
            full_valid[present] = valid
            full_views = np.zeros((n, 4), dtype=np.int32)
            full_views[present] = views
            views, valid = full_views, full_valid
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        values.append(pa.Array.from_buffers(pa.binary_view(), n, [bitmap, pa.py_buffer(views), big_buf]))
        u = kind == KIND_UNCHANGED
        if u.any():
            if not all_present:
                full_u = np.zeros(n, dtype=bool)
                full_u[present] = u
                u = full_u
            unchanged.append(u)
        else:
            unchanged.append(None)
    return ParsedColumns(values, unchanged)
