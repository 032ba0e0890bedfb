"""The five wire formats: arrow (IPC stream), parquet, json (orjson), avro (fastavro OCF), proto (wallaby.v1).

Each has ``encode(seg: WireSegment) -> bytes`` and ``decode(data) -> WireSegment``.
The header (see :mod:`wallaby.wire.model`) travels as Arrow schema metadata
(``wallaby.header``) in arrow and parquet, as the ``header`` object in json,
as the ``wallaby.header`` file metadata in avro (whose schema is derived from
the table and so evolves with it), and as fields of ``wallaby.v1.RecordBatch``
in proto (proto/wallaby/v1/data.proto documents that message).
"""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

from wallaby.core.changes import (
    BEFORE_PREFIX,
    LSN_COL,
    META_FIELDS,
    OP_COL,
    ORD_COL,
    TS_COL,
    XID_COL,
    TableChanges,
    parse_lsn,
)
from wallaby.v1 import data_pb2 as d
from wallaby.wire import avrofmt
from wallaby.wire.avrofmt import _avro_names, avro_schema
from wallaby.wire.jsonfmt import record_json
from wallaby.wire.jsontext import json_text
from wallaby.wire.model import (
    Record,
    WireColumn,
    WireSegment,
    canonical,
    normalized,
    parse_type,
    segment_of,
    storage_type,
    type_text,
)
from wallaby.wire.protofmt import encode_proto
from wallaby.wire.values import from_json, timestamp_value

HEADER_KEY = "wallaby.header"


# -- header ------------------------------------------------------------------------------------------

def header_of(seg: WireSegment) -> dict[str, Any]:
    h: dict[str, Any] = {"flow_id": seg.flow_id, "table": seg.table}
    if seg.is_event:
        h.update(tables=seg.tables, event=seg.event_payload)
    else:
        h.update(schema_version=seg.schema_version, replica_identity=seg.replica_identity, has_before=seg.has_before,
                 columns=[{"name": c.name, "pg_type": c.pg_type, "arrow_type": type_text(c.arrow_type), "key": c.key}
                          for c in seg.columns])
    return h


def segment_from_header(h: dict[str, Any], records: list[Record] | None = None) -> WireSegment:
    if "event" in h:
        return WireSegment(h["flow_id"], h["table"], records=records or [], tables=list(h.get("tables", [])),
                           event_payload=h["event"] or {})
    cols = [WireColumn(c["name"], c["pg_type"], parse_type(c["arrow_type"]), bool(c["key"])) for c in h["columns"]]
    return WireSegment(h["flow_id"], h["table"], int(h["schema_version"]), h["replica_identity"], cols,
                       bool(h["has_before"]), records or [])


# -- arrow / parquet ---------------------------------------------------------------------------------

def _event_rows(seg: WireSegment) -> pa.RecordBatch:
    r = seg.records[0]
    arrays = [pa.array([r.op]), pa.array([r.lsn], pa.uint64()), pa.array([r.ordinal], pa.uint64()),
              pa.array([r.commit_ts], pa.int64()).cast(pa.timestamp("us", tz="UTC")), pa.array([r.xid], pa.uint32()),
              pa.array([None], pa.list_(pa.string()))]
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(list(META_FIELDS)))


def _arrow_table(seg: WireSegment) -> pa.Table:
    rows = _event_rows(seg) if seg.is_event else normalized(seg.rows)
    meta = {HEADER_KEY: orjson.dumps(header_of(seg))}
    return pa.Table.from_batches([rows]).replace_schema_metadata(meta)


def _from_arrow_table(table: pa.Table) -> WireSegment:
    meta = table.schema.metadata or {}
    if HEADER_KEY.encode() not in meta:
        raise ValueError("not a wallaby payload: the Arrow schema has no wallaby.header metadata")
    h = orjson.loads(meta[HEADER_KEY.encode()])
    table = table.replace_schema_metadata(None).combine_chunks()
    batch = table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
    if "event" in h:
        r = Record(batch.column(OP_COL)[0].as_py(), batch.column(LSN_COL)[0].as_py(), batch.column(ORD_COL)[0].as_py(),
                   batch.column(TS_COL).cast(pa.int64())[0].as_py(), batch.column(XID_COL)[0].as_py())
        return segment_from_header(h, [r])
    shell = segment_from_header(h)
    seg = segment_of(shell.flow_id, TableChanges(shell.table_schema(), batch))
    seg.has_before = shell.has_before
    return seg


def encode_arrow(seg: WireSegment) -> bytes:
    table = _arrow_table(seg)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_arrow(data: bytes) -> WireSegment:
    return _from_arrow_table(pa.ipc.open_stream(pa.py_buffer(data)).read_all())


_INTERVAL_STRUCT = pa.struct([("months", pa.int32()), ("days", pa.int32()), ("nanoseconds", pa.int64())])


def _intervals_out(arr: pa.Array) -> pa.Array:
    """Parquet has no month-day-nano interval: such values travel as struct<months, days, nanoseconds>."""
    if pa.types.is_interval(arr.type):
        return pa.array([None if v is None else {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
                         for v in arr.to_pylist()], _INTERVAL_STRUCT)
    if pa.types.is_list(arr.type) and _has_interval(arr.type):
        return pa.ListArray.from_arrays(arr.offsets, _intervals_out(arr.flatten()), mask=arr.is_null())
    return arr


def _intervals_in(arr: pa.Array, t: pa.DataType) -> pa.Array:
    if pa.types.is_interval(t):
        return pa.array([None if v is None else (v["months"], v["days"], v["nanoseconds"]) for v in arr.to_pylist()],
                        t)
    if pa.types.is_list(t) and _has_interval(t):
        return pa.ListArray.from_arrays(arr.offsets, _intervals_in(arr.flatten(), t.value_type), mask=arr.is_null())
    return arr


def _has_interval(t: pa.DataType) -> bool:
    return pa.types.is_interval(t) or (pa.types.is_list(t) and _has_interval(t.value_type))


def encode_parquet(seg: WireSegment) -> bytes:
    import pyarrow.parquet as pq

    table = _arrow_table(seg)
    if any(_has_interval(f.type) for f in table.schema):
        cols = [_intervals_out(c.combine_chunks()) for c in table.columns]
        table = pa.Table.from_arrays(cols, names=table.schema.names).replace_schema_metadata(table.schema.metadata)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def decode_parquet(data: bytes) -> WireSegment:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    h = orjson.loads((table.schema.metadata or {}).get(HEADER_KEY.encode(), b"{}"))
    # Parquet names list items "element" and has no interval type: back to the header's Arrow types.
    wanted = {f.name: f.type for f in META_FIELDS}
    for c in h.get("columns", []):
        t = parse_type(c["arrow_type"])
        wanted[c["name"]] = wanted[BEFORE_PREFIX + c["name"]] = t
    meta_names = {f.name for f in META_FIELDS if not f.nullable}
    cols, fields = [], []
    for name, col in zip(table.schema.names, table.columns, strict=True):
        t = wanted.get(name, col.type)
        if _has_interval(t) and not _has_interval(col.type):
            col = _intervals_in(col.combine_chunks(), t)
        cols.append(col)
        fields.append(pa.field(name, t, nullable=name not in meta_names))
    schema = pa.schema([pa.field(f.name, c.type, f.nullable) for f, c in zip(fields, cols, strict=True)])
    table = pa.Table.from_arrays(cols, schema=schema).cast(pa.schema(fields)).replace_schema_metadata(
        table.schema.metadata)
    return _from_arrow_table(table)


# -- json --------------------------------------------------------------------------------------------

def _unnamed(obj: dict[str, Any] | None, cols: list[WireColumn]) -> list[Any] | None:
    if obj is None:
        return None
    return [from_json(obj.get(c.name), c.arrow_type) for c in cols]


def encode_json(seg: WireSegment) -> bytes:
    return json_text(seg, b'{"header":' + orjson.dumps(header_of(seg)) + b',"records":', b"}")


def decode_json(data: bytes) -> WireSegment:
    doc = orjson.loads(data)
    seg = segment_from_header(doc["header"])
    cols, keys = seg.columns, [c for c in seg.columns if c.key]
    seg.records = [Record(o["op"], parse_lsn(o["lsn"]), o["ordinal"], timestamp_value(o["commit_ts"]), o["xid"],
                          _unnamed(o.get("key"), keys), _unnamed(o.get("before"), cols),
                          _unnamed(o.get("after"), cols), list(o.get("unchanged") or []))
                   for o in doc["records"]]
    return seg


# -- avro --------------------------------------------------------------------------------------------

_STRIPPED_LOGICAL = ("timestamp-micros", "local-timestamp-micros", "date", "time-micros")


def _from_avro(v: Any, t: pa.DataType) -> Any:
    if v is None:
        return None
    if pa.types.is_interval(t):
        return (v["months"], v["days"], v["nanoseconds"])
    if pa.types.is_list(t):
        return [_from_avro(x, t.value_type) for x in v]
    if pa.types.is_decimal(t) and not isinstance(v, Decimal):
        return Decimal(v)
    return v


def _strip_logical(schema: Any) -> Any:
    """The schema without temporal logical types: our decoder reads µs/days as integers (exact for ±infinity)."""
    if isinstance(schema, dict):
        if schema.get("logicalType") in _STRIPPED_LOGICAL:
            return schema["type"]
        return {k: _strip_logical(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_strip_logical(x) for x in schema]
    return schema


def encode_avro(seg: WireSegment) -> bytes:
    return avrofmt.encode_avro(seg, {HEADER_KEY: orjson.dumps(header_of(seg)).decode()})


def decode_avro(data: bytes) -> WireSegment:
    import fastavro

    head = fastavro.reader(io.BytesIO(data))
    h = orjson.loads(head.metadata[HEADER_KEY])
    seg = segment_from_header(h)
    # Temporal logical types would become datetime objects, which cannot hold BC dates, years past 9999 or
    # ±infinity: read each block with the same schema minus those logical types (the encoding is the same).
    plain = fastavro.parse_schema(_strip_logical(head.writer_schema))

    def raw_records():
        for block in fastavro.block_reader(io.BytesIO(data)):
            for _ in range(block.num_records):
                yield fastavro.schemaless_reader(block.bytes_, plain, None)

    reader = raw_records()
    names = _avro_names(seg.columns)
    key_cols = [c for c in seg.columns if c.key]
    key_names = [n for n, c in zip(names, seg.columns, strict=True) if c.key]

    def values(obj: dict[str, Any] | None, cols: list[WireColumn], ns: list[str]) -> list[Any] | None:
        if obj is None:
            return None
        return [_from_avro(obj[n], c.arrow_type) for n, c in zip(ns, cols, strict=True)]

    seg.records = [Record(o["op"], o["lsn"], o["ordinal"], o["commit_ts"], o["xid"],
                          values(o["key"], key_cols, key_names), values(o["before"], seg.columns, names),
                          values(o["after"], seg.columns, names), list(o["unchanged"])) for o in reader]
    return seg


# -- proto -------------------------------------------------------------------------------------------

def _from_pb(pv, t: pa.DataType) -> Any:
    kind = pv.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "decimal_value":
        return Decimal(pv.decimal_value)
    if kind == "interval_value":
        return (pv.interval_value.months, pv.interval_value.days, pv.interval_value.nanoseconds)
    if kind == "list_value":
        return [_from_pb(x, t.value_type) for x in pv.list_value.values]
    value = getattr(pv, kind)
    if kind == "double_value" and pa.types.is_float32(t):
        return value  # float32 values are exact doubles
    return value


def decode_proto(data: bytes) -> WireSegment:
    msg = d.RecordBatch.FromString(data)
    cols = [WireColumn(c.name, c.pg_type, parse_type(c.arrow_type), c.key) for c in msg.columns]
    keys = [c for c in cols if c.key]
    seg = WireSegment(msg.flow_id, msg.table, msg.schema_version, msg.replica_identity or "d", cols, msg.has_before,
                      tables=list(msg.tables), event_payload=orjson.loads(msg.event_json) if msg.event_json else None)

    def vals(values, cs: list[WireColumn]) -> list[Any]:
        return [_from_pb(v, c.arrow_type) for c, v in zip(cs, values, strict=True)]

    seg.records = [Record(r.op, r.lsn, r.ordinal, r.commit_ts_micros, r.xid, vals(r.key, keys) if keys and r.key
                          else None, vals(r.before, cols) if r.has_before else None,
                          vals(r.after, cols) if r.has_after else None, list(r.unchanged)) for r in msg.records]
    return seg


ENCODERS = {"arrow": encode_arrow, "parquet": encode_parquet, "json": encode_json, "avro": encode_avro,
            "proto": encode_proto}
DECODERS = {"arrow": decode_arrow, "parquet": decode_parquet, "json": decode_json, "avro": decode_avro,
            "proto": decode_proto}
CONTENT_TYPES = {"arrow": "application/vnd.apache.arrow.stream", "parquet": "application/vnd.apache.parquet",
                 "json": "application/json", "avro": "application/avro", "proto": "application/x-protobuf"}

__all__ = ["CONTENT_TYPES", "DECODERS", "ENCODERS", "avro_schema", "canonical", "record_json", "storage_type"]
