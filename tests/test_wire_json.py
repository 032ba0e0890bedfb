"""The json encoder builds its changes a column at a time from the segment's Arrow rows: its bytes must be exactly
those of the record-at-a-time encoder it replaced (kept below as the reference), for every type of the tricky
table (batches from the real source), edge values (BC, years past 9999, ±infinity, 24:00:00, NaN, decimal
exponents), NULLs, unchanged TOAST, updates with before images, deletes, events and empty segments."""

from __future__ import annotations

import functools
import random
from decimal import Context, Decimal
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.builders import Stream, col, dele, ins, numeric_typmod, read, table, table_changes, upd
from tests.test_tricky_table import tricky  # noqa: F401 - fixture
from tests.test_wire_formats import tricky_batches  # noqa: F401 - fixture
from wallaby.core.changes import LSN_COL, ChangeBatch, TableChanges, format_lsn
from wallaby.wire import decode, encode, encode_cut, jsontext, record_json
from wallaby.wire.formats import encode_json, header_of
from wallaby.wire.jsonfmt import json_column, json_records
from wallaby.wire.jsontext import lsn_texts, value_texts
from wallaby.wire.model import Record, WireColumn, WireSegment, canonical, normalized, segment_of
from wallaby.wire.values import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, US_PER_DAY, timestamp_text, to_json

# -- the reference: the json encoder as it was (one Record per change, to_json per value) -------------


def _ref_converters(cols: list[WireColumn]) -> list:
    return [None if (pa.types.is_integer(c.arrow_type) or pa.types.is_boolean(c.arrow_type)
                     or pa.types.is_string(c.arrow_type) or pa.types.is_null(c.arrow_type)) else c.arrow_type
            for c in cols]


def _ref_named(values: list[Any] | None, cols: list[WireColumn], conv: list | None = None) -> dict[str, Any] | None:
    if values is None:
        return None
    conv = conv if conv is not None else _ref_converters(cols)
    return {c.name: v if t is None or v is None else to_json(v, t) for c, t, v in zip(cols, conv, values, strict=True)}


def ref_record_json(r: Record, cols: list[WireColumn], table: str, _prepared: tuple | None = None) -> dict[str, Any]:
    keys, conv, key_conv = _prepared or ([c for c in cols if c.key], _ref_converters(cols), None)
    if key_conv is None:
        key_conv = _ref_converters(keys)
    return {"table": table, "op": r.op, "lsn": _ref_lsn_text(r.lsn), "ordinal": r.ordinal,
            "commit_ts": _ref_ts_text(r.commit_ts), "xid": r.xid,
            "key": _ref_named(r.key, keys, key_conv), "before": _ref_named(r.before, cols, conv),
            "after": _ref_named(r.after, cols, conv), "unchanged": r.unchanged}


@functools.lru_cache(maxsize=4096)
def _ref_ts_text(us: int) -> str:
    return timestamp_text(us)


@functools.lru_cache(maxsize=4096)
def _ref_lsn_text(lsn: int) -> str:
    return format_lsn(lsn)


def ref_encode_json(seg: WireSegment) -> bytes:
    keys = [c for c in seg.columns if c.key]
    prepared = (keys, _ref_converters(seg.columns), _ref_converters(keys))
    records = [ref_record_json(r, seg.columns, seg.table, prepared) for r in seg.records]
    return orjson.dumps({"header": header_of(seg), "records": records})


def assert_same(make: Any) -> bytes:
    """``make()`` gives a fresh WireSegment: the new encoder (rows and records paths) writes the reference's
    bytes, and record_json / json_records give the reference's objects."""
    expected = ref_encode_json(make())
    seg = make()
    lazy = not seg.is_event and "records" not in seg.__dict__
    assert encode_json(seg) == expected
    if lazy:
        assert "records" not in seg.__dict__  # encoded from the rows, no records built
    seg = make()
    objs = [ref_record_json(r, seg.columns, seg.table) for r in seg.records]
    assert [record_json(r, seg.columns, seg.table) for r in seg.records] == objs
    assert json_records(seg) == objs  # records built: the per-record path
    assert encode_json(seg) == expected
    if lazy:
        assert json_records(make()) == objs
    return expected


# -- hand-built segments -------------------------------------------------------------------------------

TS_US = pa.timestamp("us")
TSTZ = pa.timestamp("us", tz="UTC")
IV = pa.month_day_nano_interval()
EDGE_US = [INT64_MAX, INT64_MIN, 0, -1, 1, -62135596800000000, -62135596800000001, 253402300799999999,
           253402300800000000, -62167219200000000 - 43 * 365 * US_PER_DAY, 1710055800123456, 951782400000000]
EDGE_DAYS = [INT32_MAX, INT32_MIN, 0, -1, -719162, -719163, 2932896, 2932897, -735000, 19792, 11016]
EDGE_TIME = [0, 1, US_PER_DAY - 1, US_PER_DAY, 45296789012]
EDGE_F = [0.0, -0.0, 0.1, 5e-324, 1.7976931348623157e308, float("nan"), float("inf"), float("-inf"), -2.5]

EVERY = table("every", [
    col("id", "int8", key=True), col("b", "bool"), col("i2", "int2"), col("i4", "int4"), col("o", "oid"),
    col("f4", "float4"), col("f8", "float8"), col("n", "numeric", typmod=numeric_typmod(12, 2)),
    col("n18", "numeric", typmod=numeric_typmod(38, 18)), col("n0", "numeric", typmod=numeric_typmod(10, 0)),
    col("nt", "numeric"), col("mon", "money"), col("t", "text"), col("big", "text"), col("by", "bytea"),
    col("d", "date"), col("tm", "time"), col("ts", "timestamp"), col("tstz", "timestamptz"), col("iv", "interval"),
    col("ia", "_int4", arrow_type=pa.list_(pa.int32())), col("ta", "_text", arrow_type=pa.list_(pa.string())),
    col("m2", "_int4", arrow_type=pa.list_(pa.list_(pa.int32()))),
    col("fa", "_float8", arrow_type=pa.list_(pa.float64())), col("tsa", "_timestamptz", arrow_type=pa.list_(TSTZ)),
    col("da", "_date", arrow_type=pa.list_(pa.date32())), col("iva", "_interval", arrow_type=pa.list_(IV)),
    col("na", "_numeric", arrow_type=pa.list_(pa.decimal128(10, 3))),
    col("sv", "text", arrow_type=pa.string_view()), col("ls", "text", arrow_type=pa.large_string()),
    col("d256", "numeric", arrow_type=pa.decimal256(60, 20)), col("nul", "unknown", arrow_type=pa.null()),
])
# Types the source never produces (and the decoders do not read): the encoder still writes them as before.
EXOTIC = table("exotic", [
    col("id", "int8", key=True), col("tsny", "timestamptz", arrow_type=pa.timestamp("us", tz="America/New_York")),
    col("tsms", "timestamp", arrow_type=pa.timestamp("ms")), col("lb", "bytea", arrow_type=pa.large_binary()),
    col("ts", "timestamp"),
])


def _dec(rnd: random.Random, p: int, s: int) -> Decimal:
    digits = rnd.choice([0, 1, rnd.randint(1, p)])
    return Decimal(rnd.randint(-(10**digits) + 1, 10**digits - 1)).scaleb(-s)


def every_row(rnd: random.Random, i: int, nulls: float = 0.2) -> dict[str, Any]:
    """A row of EVERY: edge values at random, some NULL."""
    pick = rnd.choice
    row = {
        "id": i, "b": pick([True, False]), "i2": pick([-32768, 0, 32767]), "i4": rnd.randint(-(2**31), 2**31 - 1),
        "o": pick([0, 2**32 - 1]), "f4": pick(EDGE_F), "f8": pick([*EDGE_F, rnd.random()]),
        "n": _dec(rnd, 12, 2), "n18": _dec(rnd, 38, 18), "n0": _dec(rnd, 10, 0),
        "nt": pick(["NaN", "1e-40", "-Infinity", "123.456"]), "mon": _dec(rnd, 19, 2),
        "t": pick(["", "é \x00\x01 \"q\" \\ 🦘 \u2028", "plain"]), "big": "x" * rnd.randint(0, 50),
        "by": pick([b"", bytes(range(256)), b"\x00"]),
        "d": pick([*EDGE_DAYS, rnd.randint(-800_000, 3_000_000)]), "tm": pick(EDGE_TIME),
        "ts": pick([*EDGE_US, rnd.randint(-(2**62), 2**62)]),
        "tstz": pick([*EDGE_US, rnd.randint(-(10**17), 10**17)]),
        "iv": pick([(1, -2, 3_000_000_000), (INT32_MAX, INT32_MAX, INT64_MAX), (0, 0, 0)]),
        "ia": pick([[], [1, None, 3], None]), "ta": pick([[], ["a,b", None, "NULL"]]),
        "m2": pick([[], [[1, 2], [3, None]]]), "fa": pick([[], [float("nan"), 1.5, None, float("-inf")]]),
        "tsa": pick([[], [INT64_MAX, 0, None, -62135596800000001]]), "da": pick([[INT32_MIN, 0, None]]),
        "iva": pick([[(1, 2, 3), None]]), "na": pick([[Decimal("1.500"), None, Decimal("0.000")]]),
        "sv": pick(["view", ""]), "ls": pick(["large", ""]), "d256": _dec(rnd, 60, 20),
        "nul": None,
    }
    return {k: (None if k != "id" and rnd.random() < nulls else v) for k, v in row.items()}


def every_changes(rnd: random.Random, n: int) -> list:
    changes = []
    for i in range(n):
        row = every_row(rnd, i)
        kind = rnd.randrange(8)
        if kind == 0:
            changes.append(upd(row, unchanged=["big", "by"]))  # unchanged TOAST: NULL after values
        elif kind == 1:
            changes.append(upd(row, before={"id": i + 10_000}))  # key change: old key only
        elif kind == 2:
            changes.append(upd(row, before=every_row(rnd, i, nulls=0.5)))  # REPLICA IDENTITY FULL
        elif kind == 3:
            changes.append(dele(id=i))
        elif kind == 4:
            changes.append(dele(**every_row(rnd, i)))
        elif kind == 5:
            changes.append(dele())  # no before image at all
        elif kind == 6:
            changes.append(read(**row))
        else:
            changes.append(ins(**row))
    return changes


def _segments() -> dict[str, TableChanges]:
    rnd = random.Random(7)
    s = Stream()
    comp = table("comp", [col("a", "int4", key=True), col("b", "text", key=True), col("v", "timestamptz")])
    nokey = table("nokey", [col("a", "int4"), col("b", "float8")], replica_identity="f")
    nocols = table("nocols", [])
    every = s.rows(EVERY, *every_changes(rnd, 400))
    return {
        "every": every,
        "every_sliced": TableChanges(EVERY, every.rows.slice(37, 200)),
        "inserts_only": s.rows(EVERY, *[ins(**every_row(rnd, i)) for i in range(50)]),
        "all_null": s.rows(EVERY, ins(id=1), ins(id=2)),
        "updates_no_before": s.rows(EVERY, *[upd(every_row(rnd, i)) for i in range(20)]),
        "composite": s.rows(comp, ins(a=1, b="a", v=0), ins(a=2, b="b", v=INT64_MAX),
                            upd({"a": 1, "b": "z", "v": 5}, before={"a": 1, "b": "a"}),
                            upd({"a": 2, "b": "b", "v": None}), dele(a=2, b="b")),
        "nokey": s.rows(nokey, ins(a=1, b=0.5), upd({"a": 1, "b": float("nan")}, before={"a": 1, "b": 0.5}),
                        dele(a=1, b=float("nan")), dele(a=None, b=None)),
        "nocols": s.rows(nocols, ins(), ins()),
        "nokey_all_null": s.rows(nokey, ins(a=None, b=None), dele(a=None, b=None)),  # objects of constants only
        "empty": table_changes(EVERY, []),
        "exotic": s.rows(EXOTIC, *[upd({"id": i, "tsny": rnd.choice(EDGE_US[2:]), "tsms": rnd.choice([0, -1, 10**12]),
                                        "lb": rnd.choice([b"", b"\x00"]), "ts": rnd.choice(EDGE_US)},
                                       before={"id": i + 1}) for i in range(30)]),
    }


SEGMENTS = _segments()


@pytest.mark.parametrize("name", list(SEGMENTS))
def test_same_bytes_as_the_record_encoder(name):
    seg = SEGMENTS[name]
    data = assert_same(lambda: segment_of("flow1", seg))
    assert len(orjson.loads(data)["records"]) == len(seg)
    # Decoded payloads (records, no rows) encode the same again.
    if len(seg) and name != "exotic":
        for fmt in ("json", "arrow"):
            payload = encode(ChangeBatch("flow1", [seg], seg.last), fmt)[0].data
            assert_same(lambda p=payload, f=fmt: decode(p, f))
        assert encode_json(decode(data, "json")) == data


def test_events_and_empty_segments():
    s = Stream()
    t = table("t", [col("id", key=True)])
    for ev in (s.truncate(t), s.truncate(t, table("u", [])), s.message("p", b"\x00bin"),
               s.event("ddl", t, sql="ALTER TABLE t ADD c int", n=1)):
        data = assert_same(lambda e=ev: segment_of("flow1", e))
        assert orjson.loads(data)["records"][0]["op"] == ev.op
    assert_same(lambda: WireSegment("f", "public.t", 1, "d", [WireColumn("id", "int4", pa.int32(), True)]))


def test_tricky_table_same_bytes(tricky_batches):  # noqa: F811
    n = 0
    for batch in tricky_batches:
        for s in batch.segments:
            if len(s):
                data = assert_same(lambda s=s, f=batch.flow_id: segment_of(f, s))
                assert encode_json(decode(data, "json")) == data
                n += 1
    assert n >= 4


# -- one column at a time against to_json one value at a time ------------------------------------------

def _column_case(t: pa.DataType, values: list[Any], arr: pa.Array | None = None) -> None:
    """json_column gives to_json's values, value_texts orjson's texts of them (the json format's bytes)."""
    arr = pa.array(values, type=t) if arr is None else arr
    expected = [None if v is None else to_json(v, t) for v in canonical(arr)]
    texts = [orjson.dumps(v).decode() for v in expected]
    assert orjson.dumps(json_column(arr, t)) == orjson.dumps(expected)
    assert value_texts(arr, t).to_pylist() == texts
    if len(arr) > 2:  # an offset into the buffers
        part = arr.slice(1, len(arr) - 2)
        assert orjson.dumps(json_column(part, t)) == orjson.dumps(expected[1:-1])
        assert value_texts(part, t).to_pylist() == texts[1:-1]


def _with_nulls(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.one_of(st.none(), values), max_size=30)


@given(_with_nulls(st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from(EDGE_US),
                             st.integers(-62135596800000000 - 10**12, 253402300800000000 + 10**12))), st.booleans())
def test_timestamp_columns(values, tz):
    _column_case(TSTZ if tz else TS_US, values)


@given(_with_nulls(st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from(EDGE_DAYS),
                             st.integers(-720_000, 2_940_000))))
def test_date_columns(values):
    _column_case(pa.date32(), values)


@given(_with_nulls(st.one_of(st.integers(0, US_PER_DAY), st.sampled_from(EDGE_TIME))))
def test_time_columns(values):
    _column_case(pa.time64("us"), values)


@given(st.integers(1, 76), st.data())
def test_decimal_columns(p, data):
    s = data.draw(st.integers(0, p))
    t = pa.decimal128(p, s) if p <= 38 else pa.decimal256(p, s)
    digits = st.integers(0, p).flatmap(lambda d: st.integers(-(10**d) + 1, 10**d - 1))
    # exact: scaleb rounds to the context's precision (28 digits by default), which made a 52-digit value 10**52
    exact = Context(prec=100)
    _column_case(t, data.draw(_with_nulls(digits.map(lambda c: Decimal(c).scaleb(-s, context=exact)))))


@given(_with_nulls(st.floats(width=32)), _with_nulls(st.floats()))
def test_float_columns(f32, f64):
    _column_case(pa.float32(), f32)
    _column_case(pa.float64(), f64)


# JSON's escapes and what needs none: quotes, backslashes, control characters, DEL, non-ASCII, U+2028
_TEXT = st.text(st.one_of(st.sampled_from('"\\\x00\x1f\x7f\n\t/é🦘\u2028'), st.characters(codec="utf-8")))


@given(_with_nulls(_TEXT))
def test_string_columns(values):
    _column_case(pa.string(), values)
    _column_case(pa.large_string(), values)
    _column_case(pa.string(), values, pa.array(values, pa.string_view()))


@given(_with_nulls(st.integers(INT64_MIN, INT64_MAX)), _with_nulls(st.integers(0, 2**64 - 1)),
       _with_nulls(st.booleans()))
def test_integer_and_boolean_columns(i64, u64, flags):
    _column_case(pa.int64(), i64)
    _column_case(pa.uint64(), u64)
    _column_case(pa.int16(), [None if v is None else v % 32768 for v in i64])
    _column_case(pa.bool_(), flags)


@given(st.lists(st.integers(0, 2**64 - 1), max_size=40), st.integers(0, 2**32 - 1), st.data())
def test_lsn_texts(lsns, hi, data):
    # any LSNs, and a segment's usual ones: one high half, low halves of one number of hex digits
    digits = data.draw(st.integers(1, 8))
    lows = data.draw(st.lists(st.integers(0 if digits == 1 else 16 ** (digits - 1), 16**digits - 1), max_size=40))
    for values in (lsns, [hi << 32 | lo for lo in lows]):
        arr = pa.array(values, pa.uint64())
        assert lsn_texts(arr).to_pylist() == [format_lsn(v) for v in values]
        if len(arr) > 2:
            assert lsn_texts(arr.slice(1, len(arr) - 2)).to_pylist() == [format_lsn(v) for v in values[1:-1]]


def test_json_text_joins_a_segment_in_runs(monkeypatch):
    """A segment's text is joined in runs of rows that keep each join's array below 2 GiB: any run length gives
    the same bytes."""
    seg = SEGMENTS["every"]
    expected = ref_encode_json(segment_of("flow1", seg))
    for budget in (1, 20_000, 10**6):
        monkeypatch.setattr(jsontext, "_TEXT_BUDGET", budget)
        assert encode_json(segment_of("flow1", seg)) == expected


def test_other_columns():
    _column_case(IV, [(1, 2, 3), None, (INT32_MIN, INT32_MIN, INT64_MIN)])
    _column_case(pa.binary(), [b"", None, bytes(range(256))])
    _column_case(pa.large_binary(), [b"x", None])
    _column_case(pa.list_(TSTZ), [[0, None, INT64_MAX], None, []])
    _column_case(pa.list_(pa.list_(pa.int32())), [[[1], [None]], None, []])
    _column_case(pa.timestamp("us", tz="Europe/Paris"), [0, None, INT64_MIN])
    _column_case(pa.null(), [None, None])
    _column_case(pa.string(), [])


# -- a realistic segment (the benchmark's: speed is measured by `make bench`, not asserted here) ---------

def realistic_segment() -> TableChanges:
    """10,000 changes of a narrow table, 80% inserts and 20% updates with a before-key image."""
    t = table("orders", [col("id", "int8", key=True), col("qty", "int4"),
                         col("price", "numeric", typmod=numeric_typmod(12, 2)), col("name", "text"),
                         col("note", "text"), col("at", "timestamptz")])
    rnd = random.Random(1)
    changes = []
    for i in range(10_000):
        row = {"id": i, "qty": rnd.randint(0, 1000), "price": Decimal(rnd.randint(-10**9, 10**9)) / 100,
               "name": f"name {rnd.random()}", "note": "some note é" * rnd.randint(0, 3),
               "at": 1_700_000_000_000_000 + rnd.randint(0, 10**12)}
        changes.append(upd(row, before={"id": i + 1}) if i % 5 == 4 else ins(**row))
    return Stream().rows(t, *changes)


def test_large_segment_matches_the_record_encoder():
    seg = realistic_segment()
    assert encode_json(segment_of("f", seg)) == ref_encode_json(segment_of("f", seg))



# -- cut after encoding (the Kafka writer's payloads) -----------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["every", "every_sliced", "composite", "nokey", "nocols", "updates_no_before"]),
       st.integers(1, 20_000), st.integers(0, 3), st.integers(1, 3), st.randoms(use_true_random=False))
def test_encode_cut_gives_full_payloads_of_every_change(name, limit, budget_pow, ngroups, rnd):
    """For each group of rows (the Kafka writer's partitions), the payloads of encode_cut are the json encodings
    of runs of the group's changes, each at most ``limit`` bytes unless one change alone is more, and as full as
    it can be: the next change would not have fit (a payload also ends where a run of text does: runs are
    ~1 GiB). Together they hold each of the group's changes once, in order (also when the segment's text is
    joined in several runs)."""
    # the source gives no view types (Arrow cannot take from string_view columns; the other tests have them)
    seg = TableChanges(SEGMENTS[name].table, normalized(SEGMENTS[name].rows))
    assign = np.array([rnd.randrange(ngroups) for _ in range(len(seg))], dtype=np.int64)
    groups = [np.flatnonzero(assign == g) for g in np.unique(assign).tolist()]
    saved = jsontext._TEXT_BUDGET
    jsontext._TEXT_BUDGET = [saved, 1, 30_000, 200_000][budget_pow]
    try:
        cut = encode_cut("flow1", seg, "json", limit, groups if len(groups) > 1 else None)
    finally:
        jsontext._TEXT_BUDGET = saved
    assert cut is not None and len(cut) == len(groups)
    for idx, payloads in zip(groups, cut, strict=True):
        rows = seg.rows.take(pa.array(idx))
        assert sum(p.rows for p in payloads) == len(idx)
        start = 0
        for p in payloads:
            part = TableChanges(seg.table, rows.slice(start, p.rows))
            assert p.data == ref_encode_json(segment_of("flow1", part))
            assert (p.first, p.last) == (part.first, part.last)
            assert p.segment.rows.column(LSN_COL).equals(part.rows.column(LSN_COL))
            assert len(p.data) <= limit or p.rows == 1
            if start + p.rows < len(idx) and budget_pow == 0:  # one change more would not have fit
                more = TableChanges(seg.table, rows.slice(start, p.rows + 1))
                assert len(ref_encode_json(segment_of("flow1", more))) > limit
            start += p.rows
    assert encode_cut("flow1", seg, "arrow", limit) is None


@pytest.mark.parametrize("k", [1, 2, 7, 50])
def test_encode_cut_fills_a_payload_to_the_byte(k):
    """A limit of exactly the size of the first k changes' payload gives k changes in the first payload; one byte
    less gives k - 1 (or 1: one change alone)."""
    seg = SEGMENTS["every"]
    size = len(ref_encode_json(segment_of("flow1", TableChanges(seg.table, seg.rows.slice(0, k)))))
    assert encode_cut("flow1", seg, "json", size)[0][0].rows == k  # type: ignore[index]
    assert encode_cut("flow1", seg, "json", size - 1)[0][0].rows == max(1, k - 1)  # type: ignore[index]
