"""The json format's change objects (also HTTP's and gRPC's record_json payloads), built a column at a time.

A change is ``{"table", "op", "lsn", "ordinal", "commit_ts", "xid", "key",
"before", "after", "unchanged"}`` with values as :func:`wallaby.wire.values.to_json`
gives them. :func:`json_records` builds a segment's changes straight from its
Arrow rows when it still has them (no :class:`Record` per change): each column
is converted at once (Arrow kernels for decimals and temporal types, one list
comprehension otherwise), then each change's objects are zipped from the
column lists. Values an Arrow kernel cannot render as ``to_json`` does (BC and
far-future dates, ±infinity, 24:00:00, NaN) go through ``to_json`` one by
one, so the text is the same either way.
"""

from __future__ import annotations

import binascii
import functools
import math
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from wallaby.core.changes import BEFORE_PREFIX, LSN_COL, OP_COL, ORD_COL, TS_COL, UNCHANGED_COL, XID_COL, format_lsn
from wallaby.wire.model import Record, WireColumn, WireSegment, canonical, plain_type
from wallaby.wire.values import INT32_MAX, US_PER_DAY, days_from_civil, timestamp_text, to_json

# Years 1-9999: what Arrow's formatting writes exactly as to_json does (4 digits, no sign).
_DAY_LO, _DAY_HI = days_from_civil(1, 1, 1), days_from_civil(10000, 1, 1)
_US_LO, _US_HI = _DAY_LO * US_PER_DAY, _DAY_HI * US_PER_DAY
assert _DAY_HI < INT32_MAX


# -- one value at a time (records) -------------------------------------------------------------------

def _passes_as_is(t: pa.DataType) -> bool:
    """Types whose canonical values are already JSON values (no per-value conversion)."""
    return pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_null(t)


def _float_json(v: float) -> Any:
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity"


def _b64(v: bytes) -> str:
    return binascii.b2a_base64(v, newline=False).decode()


def value_converter(t: pa.DataType) -> Callable[[Any], Any] | None:
    """None when values of type ``t`` are JSON as they are, else a function equal to ``to_json(v, t)`` for a
    non-null ``v``."""
    if _passes_as_is(t):
        return None
    if pa.types.is_floating(t):
        return _float_json
    if pa.types.is_decimal(t):
        return str
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return _b64
    return functools.partial(_to_json_of, t)


def _to_json_of(t: pa.DataType, v: Any) -> Any:
    return to_json(v, t)


_CONVERTERS: dict[int, tuple[pa.DataType, Callable[[Any], Any] | None]] = {}


def _converter(t: pa.DataType) -> Callable[[Any], Any] | None:
    """value_converter(t), remembered by the type object's identity (hashing an Arrow type is slow); the entry
    holds the type, so its id is not reused while it is there."""
    hit = _CONVERTERS.get(id(t))
    if hit is not None and hit[0] is t:
        return hit[1]
    if len(_CONVERTERS) >= 1024:
        _CONVERTERS.clear()
    f = _CONVERTERS[id(t)] = (t, value_converter(t))
    return f[1]


def _converters(cols: list[WireColumn]) -> list:
    """Per column: None when its values are JSON as they are, else the function converting them."""
    return [_converter(c.arrow_type) for c in cols]


def _named(values: list[Any] | None, cols: list[WireColumn], conv: list | None = None) -> dict[str, Any] | None:
    if values is None:
        return None
    conv = conv if conv is not None else _converters(cols)
    return {c.name: v if f is None or v is None else f(v) for c, f, v in zip(cols, conv, values, strict=True)}


def record_json(r: Record, cols: list[WireColumn], table: str, _prepared: tuple | None = None) -> dict[str, Any]:
    """One change as a JSON object (the json format's records, and HTTP's record_json payloads)."""
    keys, conv, key_conv = _prepared or ([c for c in cols if c.key], _converters(cols), None)
    if key_conv is None:
        key_conv = _converters(keys)
    return {"table": table, "op": r.op, "lsn": _lsn_text(r.lsn), "ordinal": r.ordinal,
            "commit_ts": _ts_text(r.commit_ts), "xid": r.xid,
            "key": _named(r.key, keys, key_conv), "before": _named(r.before, cols, conv),
            "after": _named(r.after, cols, conv), "unchanged": r.unchanged}


@functools.lru_cache(maxsize=4096)
def _ts_text(us: int) -> str:  # commit timestamps repeat across a transaction's changes
    return timestamp_text(us)


@functools.lru_cache(maxsize=4096)
def _lsn_text(lsn: int) -> str:
    return format_lsn(lsn)


# -- a column at a time (rows) -----------------------------------------------------------------------

def _all_as_is(t: pa.DataType) -> bool:
    return _passes_as_is(t) or (pa.types.is_list(t) and _all_as_is(t.value_type))


def _slow(arr: pa.Array, t: pa.DataType) -> list[Any]:
    return [None if v is None else to_json(v, t) for v in canonical(arr)]


def _patched(texts: list[Any], storage: pa.Array, bad: pa.Array, t: pa.DataType) -> list[Any]:
    """``texts`` with the values where ``bad`` holds converted by to_json instead."""
    idx = pc.indices_nonzero(bad.fill_null(False))
    for i, v in zip(idx.to_pylist(), storage.take(idx).to_pylist(), strict=True):
        texts[i] = None if v is None else to_json(v, t)
    return texts


def _ranged(arr: pa.Array, storage: pa.Array, lo: int, hi: int, t: pa.DataType,
            render: Callable[[pa.Array], pa.Array]) -> list[Any]:
    """Values in [lo, hi) rendered by the Arrow kernel ``render``, the others by to_json."""
    bad = pc.or_(pc.less(storage, lo), pc.greater_equal(storage, hi))
    if not pc.any(bad).as_py():
        return render(arr).to_pylist()
    return _patched(render(pc.if_else(bad, pa.scalar(None, arr.type), arr)).to_pylist(), storage, bad, t)


def timestamp_raw(arr: pa.Array) -> pa.Array:
    """Microsecond timestamps (naive or UTC) as UTC wall time: "2024-03-10T07:30:00.123456" (a cast without a
    time zone is much faster than strftime)."""
    return pc.binary_replace_slice(arr.view(pa.timestamp("us")).cast(pa.string()), start=10, stop=11,
                                   replacement="T")


def _timestamp_text(arr: pa.Array, t: pa.DataType) -> pa.Array:
    text = timestamp_raw(arr)
    return pc.binary_join_element_wise(text, pa.scalar("Z"), "") if t.tz else text


def json_column(arr: pa.Array, t: pa.DataType) -> list[Any]:
    """``[to_json(v, t) for v in canonical(arr)]`` (None stays None), computed for the whole column at once."""
    if plain_type(arr.type) != arr.type:
        arr = arr.cast(plain_type(arr.type))
    if arr.type != t or arr.null_count == len(arr):
        return _slow(arr, t) if arr.type != t else [None] * len(arr)
    if _all_as_is(t):
        return arr.to_pylist()
    if pa.types.is_floating(t):
        values = arr.to_pylist()
        if pc.all(pc.is_finite(arr)).as_py():
            return values
        return [None if v is None else _float_json(v) for v in values]
    if pa.types.is_decimal(t):  # Arrow writes decimals as str(Decimal) does, exponents included ("0E-8")
        return arr.cast(pa.string()).to_pylist()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return [None if v is None else _b64(v) for v in arr.to_pylist()]
    if pa.types.is_timestamp(t) and t.unit == "us" and t.tz in (None, "UTC"):
        return _ranged(arr, arr.cast(pa.int64()), _US_LO, _US_HI, t, functools.partial(_timestamp_text, t=t))
    if pa.types.is_date32(t):
        return _ranged(arr, arr.cast(pa.int32()), _DAY_LO, _DAY_HI, t, lambda a: a.cast(pa.string()))
    if pa.types.is_time64(t) and t.unit == "us":
        return _ranged(arr, arr.cast(pa.int64()), 0, US_PER_DAY, t, lambda a: a.cast(pa.string()))
    if pa.types.is_interval(t):
        return [None if v is None else {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
                for v in arr.to_pylist()]
    return _slow(arr, t)


def _cached_texts(values: list[int], text: Callable[[int], str]) -> list[str]:
    """``[text(v) for v in values]``, each distinct value converted once (commit times and LSNs repeat)."""
    memo: dict[int, str] = {}
    out = []
    for v in values:
        s = memo.get(v)
        if s is None:
            s = memo[v] = text(v)
        out.append(s)
    return out


def rows_json(cols: list[WireColumn], rows: pa.RecordBatch, has_before: bool, table: str) -> list[dict[str, Any]]:
    """The JSON objects of a segment's changes, straight from its rows: what :func:`record_json` gives for each
    record :func:`wallaby.wire.model.records_of` builds."""
    n = rows.num_rows
    names = [c.name for c in cols]
    op_arr = rows.column(OP_COL)
    deleted_arr = pc.equal(op_arr, "delete")
    deleted = deleted_arr.to_pylist()
    after_cols = [json_column(rows.column(c.name), c.arrow_type) for c in cols]
    # (zip's strict is moot below: every tuple zipped from the column lists has one value per column)
    afters = [None if d else dict(zip(names, a, strict=False))
              for d, a in zip(deleted, zip(*after_cols, strict=True) if cols else [()] * n, strict=True)]
    present = old = None
    before_cols: list[list[Any]] = []
    befores: list[dict[str, Any] | None]
    if has_before and cols:
        before_arrs = [rows.column(BEFORE_PREFIX + c.name) for c in cols]
        before_cols = [json_column(a, c.arrow_type) for a, c in zip(before_arrs, cols, strict=True)]
        present = functools.reduce(pc.or_, [a.is_valid() for a in before_arrs])  # an image, not all NULLs
        befores = [dict(zip(names, b, strict=False)) if p else None
                   for p, b in zip(present.to_pylist(), zip(*before_cols, strict=True), strict=True)]
        # the old key: deletes', and that of updates which carry a before image (the key may change)
        old = pc.and_(present, pc.or_(deleted_arr, pc.equal(op_arr, "update"))).to_pylist()
    else:
        befores = [None] * n
    key_idx = [i for i, c in enumerate(cols) if c.key]
    if not key_idx:
        keys: list[Any] = [None] * n
    else:
        key_cols = [after_cols[i] if old is None else
                    [b if o else a for o, a, b in zip(old, after_cols[i], before_cols[i], strict=True)]
                    for i in key_idx]
        no_key = deleted if present is None else pc.and_(deleted_arr, pc.invert(present)).to_pylist()
        if len(key_idx) == 1:
            name = names[key_idx[0]]
            keys = [None if x else {name: v} for x, v in zip(no_key, key_cols[0], strict=True)]
        else:
            key_names = [names[i] for i in key_idx]
            keys = [None if x else dict(zip(key_names, kv, strict=False))
                    for x, kv in zip(no_key, zip(*key_cols, strict=True), strict=True)]
    lsns = _cached_texts(rows.column(LSN_COL).to_pylist(), _lsn_text)
    tss = _cached_texts(rows.column(TS_COL).cast(pa.int64()).to_pylist(), _ts_text)
    return [{"table": table, "op": op, "lsn": lsn, "ordinal": ordinal, "commit_ts": ts, "xid": xid, "key": key,
             "before": b, "after": a, "unchanged": unch or []}
            for op, lsn, ordinal, ts, xid, key, b, a, unch in zip(
                op_arr.to_pylist(), lsns, rows.column(ORD_COL).to_pylist(), tss, rows.column(XID_COL).to_pylist(),
                keys, befores, afters, rows.column(UNCHANGED_COL).to_pylist(), strict=True)]


def _rows_only(seg: WireSegment) -> bool:
    return not seg.is_event and seg._rows is not None and seg.__dict__.get("_lazy_records") is not None


def first_json_record(seg: WireSegment) -> dict[str, Any]:
    """The JSON object of the segment's first change, without building the others."""
    if _rows_only(seg):
        assert seg._rows is not None
        return rows_json(seg.columns, seg._rows.slice(0, 1), seg.has_before, seg.table)[0]
    return record_json(seg.records[0], seg.columns, seg.table)


def json_records(seg: WireSegment) -> list[dict[str, Any]]:
    """The JSON object of each change of ``seg`` (``record_json`` of each record), from its Arrow rows when its
    records have not been built."""
    if _rows_only(seg):
        assert seg._rows is not None
        return rows_json(seg.columns, seg._rows, seg.has_before, seg.table)
    keys = [c for c in seg.columns if c.key]
    prepared = (keys, _converters(seg.columns), _converters(keys))
    return [record_json(r, seg.columns, seg.table, prepared) for r in seg.records]
