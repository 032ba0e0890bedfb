"""Wire formats: how change batches travel to streaming destinations and between wallaby instances.

``encode(batch, fmt)`` gives one :class:`WirePayload` per segment of the batch
(the row changes of one table, or one event), in order; ``decode(data, fmt)``
gives back a :class:`~wallaby.wire.model.WireSegment` whose ``rows`` equal the
segment's Arrow rows and whose ``records`` are its changes (table, op, key,
before, after, unchanged, position, commit timestamp, schema version).
Formats: ``arrow`` (IPC stream), ``parquet``, ``json``, ``avro``, ``proto``
(:mod:`wallaby.wire.formats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa

from wallaby.core.changes import LSN_COL, ORD_COL, ChangeBatch, Position, TableChanges
from wallaby.core.options import WIRE_FORMATS
from wallaby.wire.formats import CONTENT_TYPES, DECODERS, ENCODERS, header_of, record_json
from wallaby.wire.jsontext import data_of, row_texts
from wallaby.wire.model import Record, WireColumn, WireSegment, segment_of


@dataclass(frozen=True)
class WirePayload:
    format: str
    table: str  # schema.table; "" for an event without one
    data: bytes
    rows: int
    first: Position
    last: Position
    segment: WireSegment

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def _check(fmt: str) -> str:
    if fmt not in ENCODERS:
        raise ValueError(f"unknown wire format {fmt!r}; expected one of {', '.join(WIRE_FORMATS)}")
    return fmt


def encode_segment(seg: WireSegment, fmt: str) -> WirePayload:
    data = ENCODERS[_check(fmt)](seg)
    if seg.is_event or seg._rows is None:
        first, last = seg.records[0], seg.records[-1]
        return WirePayload(fmt, seg.table, data, len(seg.records), Position(first.lsn, first.ordinal),
                           Position(last.lsn, last.ordinal), seg)
    rows = seg._rows  # positions straight from the rows: no records needed for arrow/parquet
    lsn, ordn = rows.column("__lsn"), rows.column("__ord")
    n = rows.num_rows
    return WirePayload(fmt, seg.table, data, n, Position(lsn[0].as_py(), ordn[0].as_py()),
                       Position(lsn[n - 1].as_py(), ordn[n - 1].as_py()), seg)


def encode_cut(flow_id: str, seg: TableChanges, fmt: str, limit: int,
               groups: list[np.ndarray] | None = None) -> list[list[WirePayload]] | None:
    """For each group of ``seg``'s changes (row indices in order; None: one group of them all), its changes in
    payloads of at most ``limit`` bytes, each holding as many changes as fit (one change alone may be more), cut
    from one encoding of the whole segment. None for a format that cannot be cut after encoding (all but json):
    encode runs of rows instead. The encoding's cost is mostly per call (a few dozen Arrow kernels), so one
    call for the segment costs about a third of one per group of three."""
    if _check(fmt) != "json" or not len(seg):
        return None
    wire = segment_of(flow_id, seg)
    runs = row_texts(wire)
    assert runs is not None  # a segment_of(TableChanges) holds its rows
    head = b'{"header":' + orjson.dumps(header_of(wire)) + b',"records":['
    room = limit - len(head) - len(b"]}") + 1  # a run of rows' texts ends with a comma the payload leaves out
    if groups is None:
        return [_cut(flow_id, seg, fmt, wire.table, head, room, runs)]
    texts = runs[0] if len(runs) == 1 else pa.chunked_array(runs)
    out = []
    for idx in groups:
        part = TableChanges(seg.table, seg.rows.take(idx))
        taken = texts.take(idx)
        chunks = taken.chunks if isinstance(taken, pa.ChunkedArray) else [taken]
        out.append(_cut(flow_id, part, fmt, wire.table, head, room, [c for c in chunks if len(c)]))
    return out


def _cut(flow_id: str, seg: TableChanges, fmt: str, table: str, head: bytes, room: int,
         runs: list[pa.Array]) -> list[WirePayload]:
    """Payloads of ``seg``'s changes from their texts (``runs``: string arrays of consecutive rows, each text
    followed by a comma), each as full as ``room`` (the bytes its texts may take, the last comma's included)
    allows."""
    lsns = seg.rows.column(LSN_COL).to_numpy()
    ords = seg.rows.column(ORD_COL).to_numpy()
    out: list[WirePayload] = []
    base = 0  # the first row of the current run
    for texts in runs:
        data, offsets = data_of(texts)
        i, n = 0, len(texts)
        while i < n:
            j = max(i + 1, int(np.searchsorted(offsets, offsets[i] + room, side="right")) - 1)
            a, b = base + i, base + j - 1
            out.append(WirePayload(fmt, table, b"".join([head, data[offsets[i]:offsets[j] - 1], b"]}"]), j - i,
                                   Position(int(lsns[a]), int(ords[a])), Position(int(lsns[b]), int(ords[b])),
                                   segment_of(flow_id, TableChanges(seg.table, seg.rows.slice(a, j - i)))))
            i = j
        base += n
    return out


def encode(batch: ChangeBatch, fmt: str) -> list[WirePayload]:
    """One payload per segment of ``batch``, in WAL order."""
    return [encode_segment(segment_of(batch.flow_id, s), fmt) for s in batch.segments if len(s)]


def decode(data: bytes, fmt: str) -> WireSegment:
    return DECODERS[_check(fmt)](data)


__all__ = ["Record", "WireColumn", "WirePayload", "WireSegment", "decode", "encode", "encode_cut", "encode_segment",
           "record_json", "segment_of"]
