"""Every wire format round-trips every type of the tricky table exactly (batches from the real source), plus
updates, deletes with before images, unchanged TOAST, REPLICA IDENTITY FULL and events."""

from __future__ import annotations

import datetime as dt

import psycopg
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.flows import drain, flow_spec, source_part
from tests.test_tricky_table import ROW1, ROW2, ROW3, insert, tricky  # noqa: F401 - fixture
from wallaby.core.changes import Event, TableChanges
from wallaby.core.options import WIRE_FORMATS
from wallaby.wire import decode, encode
from wallaby.wire.model import normalized
from wallaby.wire.values import civil_from_days, days_from_civil, from_json, to_json


@pytest.fixture
def tricky_batches(tricky):  # noqa: F811
    spec = flow_spec(tricky, source={"publication_tables": "public.tricky,public.composite,public.nokey"})
    part = source_part(spec)
    try:
        drain(part, idle_polls=3)  # slot created; nothing yet
        with psycopg.connect(tricky, autocommit=True) as c:
            for row in (ROW1, ROW2, ROW3):
                insert(c, row)
            c.execute("UPDATE tricky SET i4 = 5 WHERE id = 1")  # big stays unchanged (TOAST)
            c.execute("INSERT INTO composite VALUES (1, 'a', 'x'), (2, 'b', 'y')")
            c.execute("UPDATE composite SET b = 'z' WHERE a = 1")  # key change: before image
            c.execute("DELETE FROM composite WHERE a = 2")
            c.execute("INSERT INTO nokey VALUES (1, 'p'), (1, 'p')")
            c.execute("UPDATE nokey SET b = 'q' WHERE ctid = (SELECT min(ctid) FROM nokey)")
            c.execute("DELETE FROM nokey")
            c.execute("TRUNCATE composite")
        batches = drain(part, until_rows=14, timeout=60)
    finally:
        part.close()
    return batches


def _same(a: pa.Array, b: pa.Array) -> bool:
    """Equal value for value (NaN equals NaN, as it must for a round trip)."""
    if a.equals(b):
        return True
    if pa.types.is_floating(a.type) and a.type == b.type:
        def key(v):
            return "nan" if v is not None and v != v else v
        return [key(v) for v in a.to_pylist()] == [key(v) for v in b.to_pylist()]
    return False


@pytest.mark.parametrize("fmt", WIRE_FORMATS)
def test_every_segment_round_trips(tricky_batches, fmt):
    segments = [s for b in tricky_batches for s in b.segments]
    assert any(isinstance(s, Event) for s in segments)
    assert {s.table.name for s in segments if isinstance(s, TableChanges)} == {"tricky", "composite", "nokey"}
    seen_before = seen_unchanged = False
    for batch in tricky_batches:
        payloads = encode(batch, fmt)
        assert len(payloads) == len([s for s in batch.segments if len(s)])
        for payload, seg in zip(payloads, [s for s in batch.segments if len(s)], strict=True):
            back = decode(payload.data, fmt)
            assert back.flow_id == batch.flow_id
            if isinstance(seg, Event):
                assert back.is_event and back.records[0].op == seg.op
                assert (back.records[0].lsn, back.records[0].ordinal) == (seg.position.lsn, seg.position.ordinal)
                assert back.tables == [t.qualified for t in seg.tables]
                continue
            assert back.table == seg.table.qualified and back.schema_version == seg.table.version
            expected = normalized(seg.rows)
            assert back.rows.schema == expected.schema, fmt
            for name in expected.schema.names:
                assert _same(back.rows.column(name), expected.column(name)), (fmt, name)
            assert [c.key for c in back.columns] == [c.key for c in seg.table.columns]
            seen_before |= back.has_before
            seen_unchanged |= any(r.unchanged for r in back.records)
            # The record view: key, before and after per change.
            for r in back.records:
                if r.op == "delete":
                    assert r.after is None and r.before is not None
                if back.table == "public.composite" and r.op == "update":
                    assert r.key == [1, "a"] and r.after[:2] == [1, "z"]  # key is the row's old key
    assert seen_before and seen_unchanged


def test_json_payload_is_readable(tricky_batches):
    import orjson

    tricky_seg = next(s for b in tricky_batches for s in b.segments
                      if isinstance(s, TableChanges) and s.table.name == "tricky")
    doc = orjson.loads(encode(type(tricky_batches[0])("f", [tricky_seg], tricky_seg.last), "json")[0].data)
    first = doc["records"][0]
    assert first["table"] == "public.tricky" and first["op"] == "insert" and first["key"] == {"id": 1}
    after = first["after"]
    assert after["n_small"] == "-12345678.1234" and after["n_free"] == "NaN"
    assert after["d"] == "-0043-03-15" and after["ts"] == "infinity" and after["tm"] == "24:00:00.000000"
    assert after["tstz"] == "2024-03-10T07:30:00.123456Z"
    assert after["ia"] == [1, None, 3] and after["m2"] == [[1, 2], [3, None]]
    assert doc["header"]["columns"][0] == {"name": "id", "pg_type": "int4", "arrow_type": "int32", "key": True}


def test_avro_schema_follows_the_table(tricky_batches):
    import fastavro

    seg = next(s for b in tricky_batches for s in b.segments if isinstance(s, TableChanges))
    batch = type(tricky_batches[0])("f", [seg], seg.last)
    reader = fastavro.reader(__import__("io").BytesIO(encode(batch, "avro")[0].data))
    schema = reader.writer_schema
    assert schema["name"].endswith(f"Change_v{seg.table.version}")
    row = next(f for f in schema["fields"] if f["name"] == "before")["type"][1]
    assert [f["name"] for f in row["fields"]] == list(seg.table.column_names)
    # A plain Avro reader gets the records, temporal values as its date types (those cannot hold the
    # tricky table's BC dates and infinities: wallaby's decoder reads them as integers).
    composite = next(s for b in tricky_batches for s in b.segments
                     if isinstance(s, TableChanges) and s.table.name == "composite")
    data = encode(type(tricky_batches[0])("f", [composite], composite.last), "avro")[0].data
    assert [r["op"] for r in fastavro.reader(__import__("io").BytesIO(data))][:2] == ["insert", "insert"]


@given(st.integers(min_value=-(2**31) + 1, max_value=2**31 - 2))
def test_civil_dates_round_trip(days):
    y, m, d = civil_from_days(days)
    assert days_from_civil(y, m, d) == days
    if 1 <= y <= 9999:
        assert dt.date(y, m, d) == dt.date(1970, 1, 1) + dt.timedelta(days=days)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_json_timestamps_round_trip(us):
    t = pa.timestamp("us", tz="UTC")
    assert from_json(to_json(us, t), t) == us
