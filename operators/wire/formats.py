"""The five wire formats: arrow (IPC stream), parquet, json (orjson), avro (fastavro OCF), proto (wallaby.v1).

Each has ``encode(seg: WireSegment) -> bytes`` and ``decode(data) -> WireSegment``.
The header (see :mod:`operators.wire.model`) travels as Arrow schema metadata
(``wallaby.header``) in arrow and parquet, as the ``header`` object in json,
as the ``wallaby.header`` file metadata in avro (whose schema is derived from
the table and so evolves with it), and as fields of ``wallaby.v1.RecordBatch``
in proto (proto/wallaby/v1/data.proto documents that message).
"""

from __future__ import annotations

import io
import re
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

from operators.wire.jsonfmt import json_records, record_json
from operators.wire.model import (
    Record,
    WireColumn,
    WireSegment,
    canonical,
    normalized,
    parse_type,
    plain_type,
    segment_of,
    storage_type,
    type_text,
)
from operators.wire.values import from_json, timestamp_value
from wallaby.changes import (
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
    return orjson.dumps({"header": header_of(seg), "records": json_records(seg)})


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

_AVRO_NAME = re.compile(r"[^A-Za-z0-9_]")
_STRIPPED_LOGICAL = ("timestamp-micros", "local-timestamp-micros", "date", "time-micros")


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
    fastavro.writer(buf, fastavro.parse_schema(schema), records, metadata={HEADER_KEY: orjson.dumps(
        header_of(seg)).decode()}, codec="null")
    return buf.getvalue()


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

def _pb_value(v: Any, t: pa.DataType):
    from wallaby.v1 import data_pb2 as d

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


def encode_proto(seg: WireSegment) -> bytes:
    from wallaby.v1 import data_pb2 as d

    cols, keys = seg.columns, [c for c in seg.columns if c.key]

    def vals(values: list[Any] | None, cs: list[WireColumn]) -> list:
        return [] if values is None else [_pb_value(v, c.arrow_type) for c, v in zip(cs, values, strict=True)]

    msg = d.RecordBatch(
        flow_id=seg.flow_id, table=seg.table, schema_version=seg.schema_version, replica_identity=seg.replica_identity,
        columns=[d.ColumnInfo(name=c.name, pg_type=c.pg_type, arrow_type=type_text(c.arrow_type), key=c.key)
                 for c in cols],
        records=[d.Record(op=r.op, lsn=r.lsn, ordinal=r.ordinal, commit_ts_micros=r.commit_ts, xid=r.xid,
                          key=vals(r.key, keys), has_before=r.before is not None, before=vals(r.before, cols),
                          has_after=r.after is not None, after=vals(r.after, cols), unchanged=r.unchanged)
                 for r in seg.records],
        tables=seg.tables, event_json=orjson.dumps(seg.event_payload).decode() if seg.is_event else "",
        has_before=seg.has_before)
    return msg.SerializeToString()


def decode_proto(data: bytes) -> WireSegment:
    from wallaby.v1 import data_pb2 as d

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
