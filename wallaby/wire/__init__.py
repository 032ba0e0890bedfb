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

from wallaby.core.changes import ChangeBatch, Position
from wallaby.core.options import WIRE_FORMATS
from wallaby.wire.formats import CONTENT_TYPES, DECODERS, ENCODERS, record_json
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


def encode(batch: ChangeBatch, fmt: str) -> list[WirePayload]:
    """One payload per segment of ``batch``, in WAL order."""
    return [encode_segment(segment_of(batch.flow_id, s), fmt) for s in batch.segments if len(s)]


def decode(data: bytes, fmt: str) -> WireSegment:
    return DECODERS[_check(fmt)](data)


__all__ = ["Record", "WireColumn", "WirePayload", "WireSegment", "decode", "encode", "encode_segment",
           "record_json", "segment_of"]
