"""The avro and proto encoders build their payloads a column at a time from the segment's Arrow rows: their bytes
must be exactly those of the record-at-a-time encoders they replaced (kept below as the references), for every
type of the tricky table (batches from the real source), edge values, NULLs, unchanged TOAST, key changes and
full before images, deletes, loads, composite and key-less tables, empty segments and events. (An Avro file
carries a random sync marker: files are compared with it zeroed.)"""

from __future__ import annotations

import io
import random
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.builders import Stream, col, dele, ins, read, table, upd
from tests.test_tricky_table import tricky  # noqa: F401 - fixture
from tests.test_wire_formats import tricky_batches  # noqa: F401 - fixture
from tests.test_wire_json import EDGE_DAYS, EDGE_F, EDGE_TIME, EDGE_US, SEGMENTS, realistic_segment
from wallaby.core.changes import ChangeBatch, TableChanges
from wallaby.wire import decode, encode
from wallaby.wire.avrofmt import encode_avro_records
from wallaby.wire.formats import HEADER_KEY, _avro_names, avro_schema, encode_avro, encode_proto, header_of
from wallaby.wire.model import WireColumn, WireSegment, segment_of, type_text
from wallaby.wire.protofmt import encode_proto_records
from wallaby.wire.values import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, US_PER_DAY

# -- the references: the encoders as they were (one Record per change, converted value by value) --------


def _ref_avro_value(v: Any, t: pa.DataType) -> Any:
    if v is None:
        return None
    if pa.types.is_interval(t):
        return {"months": v[0], "days": v[1], "nanoseconds": v[2]}
    if pa.types.is_list(t):
        return [_ref_avro_value(x, t.value_type) for x in v]
    return v


def ref_encode_avro(seg: WireSegment) -> bytes:
    import fastavro

    schema = avro_schema(seg)
    names = _avro_names(seg.columns)
    key_names = [n for n, c in zip(names, seg.columns, strict=True) if c.key]
    key_cols = [c for c in seg.columns if c.key]

    def row(values: list[Any] | None, cols: list[WireColumn], ns: list[str]) -> dict[str, Any] | None:
        if values is None:
            return None
        return {n: _ref_avro_value(v, c.arrow_type) for n, c, v in zip(ns, cols, values, strict=True)}

    records = [{"op": r.op, "lsn": r.lsn, "ordinal": r.ordinal, "commit_ts": r.commit_ts, "xid": r.xid,
                "key": row(r.key, key_cols, key_names), "before": row(r.before, seg.columns, names),
                "after": row(r.after, seg.columns, names), "unchanged": r.unchanged} for r in seg.records]
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records, metadata={HEADER_KEY: orjson.dumps(
        header_of(seg)).decode()}, codec="null")
    return buf.getvalue()


def _ref_pb_value(v: Any, t: pa.DataType):
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
        return d.Value(list_value=d.ValueList(values=[_ref_pb_value(x, t.value_type) for x in v]))
    return d.Value(string_value=v)


def ref_encode_proto(seg: WireSegment) -> bytes:
    from wallaby.v1 import data_pb2 as d

    cols, keys = seg.columns, [c for c in seg.columns if c.key]

    def vals(values: list[Any] | None, cs: list[WireColumn]) -> list:
        return [] if values is None else [_ref_pb_value(v, c.arrow_type) for c, v in zip(cs, values, strict=True)]

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


# -- comparing -----------------------------------------------------------------------------------------

def _unsynced(data: bytes) -> bytes:
    """An Avro file with its (random) sync marker zeroed: the file ends with it, header and blocks alike."""
    return data.replace(data[-16:], bytes(16))


def _avro_records_path(seg: WireSegment) -> bytes:
    return encode_avro_records(seg, {HEADER_KEY: orjson.dumps(header_of(seg)).decode()})


FORMATS = {  # new encoder, its record path, the reference, normalization
    "avro": (encode_avro, _avro_records_path, ref_encode_avro, _unsynced),
    "proto": (encode_proto, encode_proto_records, ref_encode_proto, lambda b: b),
}


def _outcome(encoder: Any, seg: WireSegment, norm: Any) -> Any:
    """The normalized bytes, or the error (type and message) the encoder raised."""
    try:
        return norm(encoder(seg))
    except Exception as e:  # compared with the reference's
        return type(e), str(e)


def assert_same(make: Any, fmt: str, fast: bool = True) -> Any:
    """``make()`` gives a fresh WireSegment: the new encoder writes the reference's bytes (or raises its error)
    from the rows (without building records, when ``fast``) and from the records."""
    new, records_path, ref, norm = FORMATS[fmt]
    expected = _outcome(ref, make(), norm)
    seg = make()
    lazy = not seg.is_event and "records" not in seg.__dict__
    assert _outcome(new, seg, norm) == expected
    if lazy and fast:
        assert "records" not in seg.__dict__  # encoded from the rows, no records built
    seg = make()
    _ = seg.records  # records built: the per-record path
    assert _outcome(new, seg, norm) == expected
    assert _outcome(records_path, make(), norm) == expected
    return expected


# -- hand-built segments -------------------------------------------------------------------------------

def _extra_segments() -> dict[str, TableChanges]:
    rnd = random.Random(3)
    s = Stream()
    wide = table("wide", [col("id", "int8", key=True), col("big", "text"), col("by", "bytea")])
    loads = table("loads", [col("k", "uuid", key=True), col("ts", "timestamptz", key=True), col("v", "float4")])
    return {
        # records larger than an Avro block, and blocks of a few records
        "big_values": s.rows(wide, *[ins(id=i, big="é" * rnd.choice([10, 9000, 20000]), by=bytes(rnd.randrange(9000)))
                                     for i in range(40)]),
        "loads": s.rows(loads, *[read(k=f"k{i}", ts=rnd.choice(EDGE_US), v=rnd.choice(EDGE_F)) for i in range(50)]),
        "deletes_only": s.rows(loads, *[dele(k=f"k{i}", ts=i) for i in range(5)], dele()),
        "unchanged_only": s.rows(wide, *[upd({"id": i}, unchanged=["big", "by"][: i % 3]) for i in range(9)]),
        "zero_positions": TableChanges(wide, _zeroed(s.rows(wide, ins(id=0, big="", by=b""), ins(id=1)).rows)),
    }


def _zeroed(rows: pa.RecordBatch) -> pa.RecordBatch:
    """Positions, times and xids of 0 (proto3 leaves zero fields out)."""
    cols = {name: rows.column(name) for name in rows.schema.names}
    n = rows.num_rows
    for name in ("__lsn", "__ord", "__ts", "__xid"):
        cols[name] = pa.array([0] * n, pa.int64()).cast(rows.schema.field(name).type)
    return pa.RecordBatch.from_arrays(list(cols.values()), schema=rows.schema)


ALL = {**SEGMENTS, **_extra_segments()}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", list(ALL))
def test_same_bytes_as_the_record_encoder(name, fmt):
    seg = ALL[name]
    # exotic has types (large_binary) the record path writes (proto) or rejects (avro) as it did
    assert_same(lambda: segment_of("flow1", seg), fmt, fast=name != "exotic")
    if len(seg) and name != "exotic":
        payload = encode(ChangeBatch("flow1", [seg], seg.last), fmt)[0].data
        back = decode(payload, fmt)
        assert len(back.records) == len(seg)
        assert_same(lambda: decode(payload, fmt), fmt)  # decoded payloads (records, no rows) encode the same


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_events_and_empty_segments(fmt):
    s = Stream()
    t = table("t", [col("id", key=True)])
    for ev in (s.truncate(t), s.truncate(t, table("u", [])), s.message("p", b"\x00bin"),
               s.event("ddl", t, sql="ALTER TABLE t ADD c int", n=1)):
        assert_same(lambda e=ev: segment_of("flow1", e), fmt)
    assert_same(lambda: WireSegment("f", "public.t", 1, "d", [WireColumn("id", "int4", pa.int32(), True)]), fmt)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_tricky_table_same_bytes(tricky_batches, fmt):  # noqa: F811
    n = 0
    for batch in tricky_batches:
        for s in batch.segments:
            if len(s):
                data = assert_same(lambda s=s, f=batch.flow_id: segment_of(f, s), fmt)
                assert not isinstance(data, tuple)
                payload = encode(ChangeBatch(batch.flow_id, [s], batch.position), fmt)[0].data
                assert_same(lambda p=payload: decode(p, fmt), fmt)
                n += 1
    assert n >= 4


def test_uint64_past_int64_is_still_rejected_by_avro():
    t = table("u", [col("id", "int8", key=True), col("v", "xid8", arrow_type=pa.uint64())])
    seg = Stream().rows(t, ins(id=1, v=2**64 - 1))
    error = assert_same(lambda: segment_of("f", seg), "avro", fast=False)
    assert isinstance(error, tuple) and error[0] is ValueError
    assert not isinstance(assert_same(lambda: segment_of("f", seg), "proto"), tuple)


# -- one column type at a time ---------------------------------------------------------------------------

def _column_segments(t: pa.DataType, values: list[Any], key: bool) -> list[TableChanges]:
    """Inserts, updates with a whole before image and with an old key, deletes and loads of ``values`` in a
    column of type ``t`` (a key column when ``key``), whole and sliced."""
    tbl = table("h", [col("id", "int8", key=True), col("v", "x", arrow_type=t, key=key)])
    changes = []
    for i, v in enumerate(values):
        k = i % 5
        if k == 0:
            changes.append(ins(id=i, v=v))
        elif k == 1:
            changes.append(upd({"id": i, "v": v}, before={"id": i, "v": values[i - 1]}))
        elif k == 2:
            changes.append(dele(id=i, v=v))
        elif k == 3:
            changes.append(upd({"id": i, "v": v}, before={"id": -i}))
        else:
            changes.append(read(id=i, v=v))
    seg = Stream().rows(tbl, *changes)
    out = [seg, Stream().rows(tbl, *[ins(id=i, v=v) for i, v in enumerate(values)])]
    if len(seg) > 2:
        out.append(TableChanges(tbl, seg.rows.slice(1, len(seg) - 2)))
    return out


def _column_case(t: pa.DataType, values: list[Any], key: bool = False) -> None:
    for seg in _column_segments(t, values, key):
        for fmt in FORMATS:
            data = assert_same(lambda s=seg: segment_of("f", s), fmt)
            assert not isinstance(data, tuple), data


def _with_nulls(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.one_of(st.none(), values), max_size=12)


@given(_with_nulls(st.integers(INT64_MIN, INT64_MAX)), st.booleans())
def test_int64_columns(values, key):
    _column_case(pa.int64(), values, key)


@given(st.sampled_from([(pa.int8(), 8, True), (pa.int16(), 16, True), (pa.int32(), 32, True), (pa.uint8(), 8, False),
                        (pa.uint16(), 16, False), (pa.uint32(), 32, False), (pa.uint64(), 63, False)]), st.data())
def test_integer_columns(spec, data):
    t, bits, signed = spec
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    _column_case(t, data.draw(_with_nulls(st.integers(lo, hi))))


@given(_with_nulls(st.booleans()))
def test_bool_columns(values):
    _column_case(pa.bool_(), values)


@given(_with_nulls(st.floats(width=32)), _with_nulls(st.one_of(st.floats(), st.sampled_from(EDGE_F))))
def test_float_columns(f32, f64):
    _column_case(pa.float32(), f32)
    _column_case(pa.float64(), f64)


@given(st.integers(1, 76), st.data())
def test_decimal_columns(p, data):
    s = data.draw(st.integers(0, p))
    t = pa.decimal128(p, s) if p <= 38 else pa.decimal256(p, s)
    digits = st.integers(0, p).flatmap(lambda d: st.integers(-(10**d) + 1, 10**d - 1))
    edges = st.sampled_from([v for v in (0, 1, -1, 127, 128, -128, -129, 255, 256, 2**63 - 1, -(2**63) + 1, 2**63,
                                         -(2**63), 2**64, -(2**55), 2**55 - 1) if abs(v) < 10**p])
    _column_case(t, data.draw(_with_nulls(st.one_of(digits, edges).map(lambda c: Decimal(c).scaleb(-s)))),
                 data.draw(st.booleans()))


@given(_with_nulls(st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from(EDGE_US))),
       st.sampled_from([None, "UTC"]), st.booleans())
def test_timestamp_columns(values, tz, key):
    _column_case(pa.timestamp("us", tz=tz), values, key)


@given(_with_nulls(st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from(EDGE_DAYS))),
       _with_nulls(st.one_of(st.integers(0, US_PER_DAY), st.sampled_from(EDGE_TIME))))
def test_date_and_time_columns(days, times):
    _column_case(pa.date32(), days)
    _column_case(pa.time64("us"), times)


@given(_with_nulls(st.text()), _with_nulls(st.binary()), st.booleans())
def test_text_and_bytea_columns(texts, blobs, key):
    _column_case(pa.string(), texts, key)
    _column_case(pa.large_string(), texts)
    _column_case(pa.binary(), blobs, key)


@given(_with_nulls(st.tuples(st.integers(INT32_MIN, INT32_MAX), st.integers(INT32_MIN, INT32_MAX),
                             st.integers(INT64_MIN, INT64_MAX))))
def test_interval_columns(values):
    _column_case(pa.month_day_nano_interval(), values)


@given(_with_nulls(st.lists(st.one_of(st.none(), st.integers(INT32_MIN, INT32_MAX)), max_size=4)),
       _with_nulls(st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=4)),
       _with_nulls(st.lists(st.one_of(st.none(), st.sampled_from(EDGE_US)), max_size=4)))
def test_list_columns(ints, texts, stamps):
    _column_case(pa.list_(pa.int32()), ints)
    _column_case(pa.list_(pa.string()), texts)
    _column_case(pa.list_(pa.timestamp("us", tz="UTC")), stamps)


@given(_with_nulls(st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), st.integers(INT64_MIN, INT64_MAX)),
                                                         max_size=3)), max_size=3)),
       _with_nulls(st.lists(st.one_of(st.none(), st.floats()), max_size=4)),
       _with_nulls(st.lists(st.one_of(st.none(), st.binary(max_size=5)), max_size=4)))
def test_nested_list_columns(nested, floats, blobs):
    _column_case(pa.list_(pa.list_(pa.int64())), nested)
    _column_case(pa.list_(pa.float64()), floats)
    _column_case(pa.list_(pa.binary()), blobs)


def test_null_lists_over_items():
    """NULL list rows whose offsets still span items (Arrow allows it): those items are no one's."""
    t = pa.list_(pa.int32())
    seg = _column_segments(t, [[1], [2], [3], [4], [5], [6]], key=False)[0]
    rows = seg.rows
    i = rows.schema.get_field_index("v")
    nulled = pa.ListArray.from_arrays(pa.array([0, 1, 3, 3, 5, 6, 8], pa.int32()), pa.array(range(8), pa.int32()),
                                      mask=pa.array([False, True, False, True, False, False]))
    rows = rows.set_column(i, rows.schema.field(i), nulled)
    for part in (TableChanges(seg.table, rows), TableChanges(seg.table, rows.slice(1, 4))):
        for fmt in FORMATS:
            assert not isinstance(assert_same(lambda p=part: segment_of("f", p), fmt), tuple)


def test_other_columns():
    _column_case(pa.null(), [None, None, None])
    _column_case(pa.string_view(), ["a", None, "é", ""])
    _column_case(pa.list_(pa.list_(pa.decimal128(10, 3))), [[[Decimal("1.500")], None], None, []])
    _column_case(pa.list_(pa.month_day_nano_interval()), [[(1, 2, 3), None], None])
    _column_case(pa.timestamp("us", tz="America/New_York"), [0, None, INT64_MAX])
    _column_case(pa.time64("ns"), [0, None, 86_400_000_000_000])
    _column_case(pa.decimal128(38, 0), [Decimal(10**37), Decimal(-(10**37)), None, Decimal(0)])
    _column_case(pa.float32(), [float("nan"), -0.0, float("inf"), None, 1e-45])
    _column_case(pa.int64(), [], key=True)


# -- a realistic segment (the benchmark's: speed is measured, not asserted here) --------------------------

def test_large_segment_matches_the_record_encoders():
    seg = realistic_segment()
    for fmt, (new, _, ref, norm) in FORMATS.items():
        assert norm(new(segment_of("f", seg))) == norm(ref(segment_of("f", seg))), fmt
