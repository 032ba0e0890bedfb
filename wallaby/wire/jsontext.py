"""The json format's text, written a column at a time by Arrow's string kernels.

:func:`json_text` gives the bytes ``orjson.dumps(json_records(seg))`` gives, written from the segment's Arrow
rows without a Python object per change or per value; :func:`row_texts` gives each change's text on its own
(the Kafka writer cuts its messages from them: :func:`wallaby.wire.encode_cut`).

Each column becomes the *parts* of its values' JSON texts: one Arrow string array, with constant text around it
when that is the same for every row (a column without NULLs whose values all need quotes: ``"`` before and
after). A change's object is the list of its parts and the constant texts between them
(``{"table":"public.t","op":"``), joined row by row by ``binary_join_element_wise`` in one call; the changes
are the joined array's one data buffer. Only an object that is ``null`` for some rows (the after image of a
delete, a missing before image or key) is joined on its own first.

A value's text is an Arrow kernel's where the kernel writes what orjson writes for ``to_json``'s value:
integers, booleans, strings (``\\`` and ``"`` escaped; a string with a control character goes through orjson),
decimals, and timestamps, dates and times of years 1-9999. Floats go through orjson as one list (Arrow's
shortest round-trip texts use exponents at other magnitudes), the rest (binary, intervals, arrays, edge values)
one value at a time through ``to_json`` and orjson. :func:`wallaby.wire.jsonfmt.rows_json` with orjson is the
oracle (tests/test_wire_json.py).

Measured by ``encode_json`` on 10k narrow changes (bigint key, int, numeric, two texts, timestamptz; half
inserts, half updates without before images): 2.27 us a change through objects and orjson, 0.66 us here, of
which ~0.35 us is the one join (~9 ns a part a row) and ~0.2 us the columns' texts. The cost is mostly per
call below ~5k changes (0.96 us a change in segments of 2,000, 1.8 us in segments of 500: a few dozen Arrow
kernels of ~10 us each), so a segment is best encoded whole and cut after.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from wallaby.core.changes import BEFORE_PREFIX, LSN_COL, OP_COL, ORD_COL, TS_COL, UNCHANGED_COL, XID_COL
from wallaby.wire.jsonfmt import (
    _DAY_HI,
    _DAY_LO,
    _US_HI,
    _US_LO,
    _rows_only,
    json_column,
    json_records,
    timestamp_raw,
)
from wallaby.wire.model import WireColumn, WireSegment, plain_type
from wallaby.wire.values import US_PER_DAY

# A join's output is one string array (32-bit offsets): a segment's changes are joined in runs of rows whose
# text stays well below 2 GiB (a value's text is at most ~6 times its bytes: a control character as \u0000).
_TEXT_BUDGET = 1 << 30

Parts = list  # of str (the same text in every row) and pa.StringArray (a text per row, never null)


def _orjson_texts(values: list) -> pa.Array:
    """JSON texts of Python values (None as null), as a string array."""
    return pa.array([b"null" if v is None else orjson.dumps(v) for v in values], pa.binary()).cast(pa.string())


def _text_of(parts: Parts, n: int) -> pa.Array:
    """Each of ``n`` rows' parts concatenated: one string array."""
    args: list = []
    for p in parts:
        if isinstance(p, str) and args and isinstance(args[-1], str):
            args[-1] += p
        else:
            args.append(p)
    if len(args) == 1:
        return pa.array([args[0]] * n, pa.string()) if isinstance(args[0], str) else args[0]
    return pc.binary_join_element_wise(*[pa.scalar(a) if isinstance(a, str) else a for a in args], "")


def _or_null(cond: pa.Array, parts: Parts, n: int) -> Parts:
    """The parts where ``cond`` (no NULLs) holds, ``null`` elsewhere."""
    if cond.true_count == n:
        return parts
    if cond.true_count == 0:
        return ["null"]
    return [pc.if_else(cond, _text_of(parts, n), pa.scalar("null"))]


def _with_patches(texts: pa.Array, bad: pa.Array, arr: pa.Array, t: pa.DataType) -> pa.Array:
    """``texts`` (NULL as ``null``) with the rows where ``bad`` holds written by to_json and orjson instead."""
    texts = _null_as_null(texts)
    bad = bad.fill_null(False)
    if not pc.any(bad).as_py():
        return texts
    fixed = _orjson_texts(json_column(arr.filter(bad), t))
    return pc.replace_with_mask(texts, bad, fixed)  # the patches replace the masked rows in order


def _null_as_null(texts: pa.Array) -> pa.Array:
    return texts.fill_null("null") if texts.null_count else texts


def _quoted(raw: pa.Array, bad: pa.Array | None, arr: pa.Array, t: pa.DataType) -> Parts:
    """Parts of values whose texts are ``raw`` in quotes, but where ``bad`` holds (to_json's) or NULL (null)."""
    if raw.null_count == 0 and bad is None:
        return ['"', raw, '"']
    texts = pc.binary_join_element_wise(pa.scalar('"'), raw, pa.scalar('"'), "")
    return [_null_as_null(texts) if bad is None else _with_patches(texts, bad, arr, t)]


def _strings(arr: pa.Array, t: pa.DataType) -> Parts:
    if arr.type != pa.string():
        arr = arr.cast(pa.string())
    data = np.frombuffer(data_of(arr)[0], np.uint8)  # one scan of the bytes: most columns need no escapes
    control, quote, backslash = bool((data < 0x20).any()), bool((data == 0x22).any()), bool((data == 0x5C).any())
    raw = arr
    if backslash:
        raw = pc.replace_substring(raw, "\\", "\\\\")
    if quote:
        raw = pc.replace_substring(raw, '"', '\\"')
    bad = pc.match_substring_regex(arr, r"[\x00-\x1f]") if control else None
    return _quoted(raw, bad, arr, t)


def _floats(arr: pa.Array, t: pa.DataType) -> Parts:
    """orjson's texts of the finite values (one dumps of the whole list, cut at its commas), to_json's of the
    others ("NaN", "Infinity")."""
    finite = pc.is_finite(arr)
    values = pc.if_else(finite, arr, pa.scalar(None, arr.type)).cast(pa.float64()).to_pylist()
    text = orjson.dumps(values)[1:-1]  # numbers and nulls hold no comma
    texts = pc.list_flatten(pc.split_pattern(pa.array([text.decode()]), ","))
    return [_with_patches(texts, pc.invert(finite), arr, t)]


def _ranged(arr: pa.Array, storage: pa.Array, lo: int, hi: int, t: pa.DataType,
            render: Callable[[pa.Array], pa.Array], suffix: str = "") -> Parts:
    """Parts of values rendered by the Arrow kernel ``render`` (then ``suffix``) in [lo, hi), by to_json outside."""
    least, most = pc.min_max(storage).values()
    if least.is_valid and (least.as_py() < lo or most.as_py() >= hi):
        bad = pc.or_(pc.less(storage, lo), pc.greater_equal(storage, hi))
        raw = render(pc.if_else(bad, pa.scalar(None, arr.type), arr))
        texts = pc.binary_join_element_wise(pa.scalar('"'), raw, pa.scalar(suffix + '"'), "")
        return [_with_patches(texts, bad, arr, t)]
    raw = render(arr)
    if raw.null_count:
        return [_null_as_null(pc.binary_join_element_wise(pa.scalar('"'), raw, pa.scalar(suffix + '"'), ""))]
    return ['"', raw, suffix + '"']


def value_parts(arr: pa.Array, t: pa.DataType) -> Parts:
    """The parts of ``[orjson.dumps(to_json(v, t)) for v in canonical(arr)]`` (None as ``null``)."""
    if plain_type(arr.type) != arr.type:
        arr = arr.cast(plain_type(arr.type))
    n = len(arr)
    if arr.null_count == n and arr.type == t:
        return ["null"]
    if arr.type != t:
        return [_orjson_texts(json_column(arr, t))]
    if pa.types.is_integer(t):
        return [_null_as_null(arr.cast(pa.string()))]
    if pa.types.is_boolean(t):
        return [_null_as_null(pc.if_else(arr, pa.scalar("true"), pa.scalar("false")))]
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _strings(arr, t)
    if pa.types.is_floating(t):
        return _floats(arr, t)
    if pa.types.is_decimal(t):  # Arrow writes decimals as str(Decimal) does, exponents included ("0E-8")
        return _quoted(arr.cast(pa.string()), None, arr, t)
    if pa.types.is_timestamp(t) and t.unit == "us" and t.tz in (None, "UTC"):
        return _ranged(arr, arr.view(pa.int64()), _US_LO, _US_HI, t, timestamp_raw, "Z" if t.tz else "")
    if pa.types.is_date32(t):
        return _ranged(arr, arr.view(pa.int32()), _DAY_LO, _DAY_HI, t, lambda a: a.cast(pa.string()))
    if pa.types.is_time64(t) and t.unit == "us":
        return _ranged(arr, arr.view(pa.int64()), 0, US_PER_DAY, t, lambda a: a.cast(pa.string()))
    return [_orjson_texts(json_column(arr, t))]


def value_texts(arr: pa.Array, t: pa.DataType) -> pa.Array:
    """``[orjson.dumps(to_json(v, t)) for v in canonical(arr)]`` (None as ``null``) as a string array."""
    return _text_of(value_parts(arr, t), len(arr))


_HEX = np.frombuffer(b"0123456789ABCDEF", np.uint8)
_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


def _hex_digits(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper-case hex digits of uint32 values: (an (n, 8) array of digit bytes with leading zeros, how many
    leading digits each value's text leaves out)."""
    nibbles = (values[:, None] >> _SHIFTS) & 0xF
    nonzero = nibbles != 0
    return _HEX[nibbles], np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 7)


def lsn_texts(lsns: pa.Array) -> pa.Array:
    """``format_lsn(lsn)`` of each LSN (``16/B374D848``) as a string array, by numpy."""
    v = lsns.to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
    n = len(v)
    if n == 0:
        return pa.array([], pa.string())
    hi = (v >> np.uint64(32)).astype(np.uint32)
    lo_d, lo_skip = _hex_digits((v & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    if hi.min() == hi.max() and lo_skip.min() == lo_skip.max():
        # a segment's usual case: one high half, low halves of one length: texts of one width
        head = np.frombuffer(f"{int(hi[0]):X}/".encode(), np.uint8)
        width = len(head) + 8 - int(lo_skip[0])
        chars = np.empty((n, width), np.uint8)
        chars[:, :len(head)] = head
        chars[:, len(head):] = lo_d[:, int(lo_skip[0]):]
        offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars))
    hi_d, hi_skip = _hex_digits(hi)
    chars = np.hstack([hi_d, np.full((n, 1), ord("/"), np.uint8), lo_d])  # 8 digits '/' 8 digits
    keep = np.ones(chars.shape, bool)
    cols = np.arange(8)
    keep[:, :8] = cols >= hi_skip[:, None]
    keep[:, 9:] = cols >= lo_skip[:, None]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(17 - hi_skip - lo_skip, out=offsets[1:])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars[keep]))


def _commit_ts_parts(arr: pa.Array) -> Parts:
    """The commit timestamps' parts: each distinct time rendered once (a transaction's changes share it)."""
    enc = pc.dictionary_encode(arr)
    return [pc.take(value_texts(enc.dictionary, arr.type), enc.indices)]


def _object(names: list[str], parts: list[Parts]) -> Parts:
    """``{"a":<a>,"b":<b>}``'s parts from the columns' (at least one)."""
    out: Parts = []
    for i, (name, p) in enumerate(zip(names, parts, strict=True)):
        out += [("{" if i == 0 else ",") + name + ":", *p]
    return [*out, "}"]


def _unchanged_parts(arr: pa.Array) -> Parts:
    """``orjson.dumps(v or [])`` per row: ``[]`` but where a change names unchanged TOAST columns."""
    if len(arr.flatten()) == 0:  # the usual case: no change names any
        return ["[]"]
    named = pc.fill_null(pc.greater(pc.list_value_length(arr), 0), False)
    texts = pa.array(["[]"] * len(arr), pa.string())
    return [pc.replace_with_mask(texts, named, _orjson_texts(arr.filter(named).to_pylist()))]


def _record_texts(cols: list[WireColumn], rows: pa.RecordBatch, has_before: bool, table: str) -> pa.Array:
    """Each change's JSON object followed by a comma, as a string array."""
    n = rows.num_rows
    names = [orjson.dumps(c.name).decode() for c in cols]
    op_arr = rows.column(OP_COL)
    deleted = pc.equal(op_arr, "delete")
    after_parts = [value_parts(rows.column(c.name), c.arrow_type) for c in cols]
    after = _or_null(pc.invert(deleted), _object(names, after_parts) if cols else ["{}"], n)
    present = old = None
    before_parts: list[Parts] = []
    before: Parts = ["null"]
    if has_before and cols:
        before_arrs = [rows.column(BEFORE_PREFIX + c.name) for c in cols]
        before_parts = [value_parts(a, c.arrow_type) for a, c in zip(before_arrs, cols, strict=True)]
        present = functools.reduce(pc.or_, [a.is_valid() for a in before_arrs])  # an image, not all NULLs
        before = _or_null(present, _object(names, before_parts), n)
        # the old key: deletes', and that of updates which carry a before image (the key may change)
        old = pc.and_(present, pc.or_(deleted, pc.equal(op_arr, "update")))
    key_idx = [i for i, c in enumerate(cols) if c.key]
    key: Parts = ["null"]
    if key_idx:
        if old is None or old.true_count == 0:
            key_parts = [after_parts[i] for i in key_idx]
        else:
            key_parts = [[pc.if_else(old, _text_of(before_parts[i], n), _text_of(after_parts[i], n))]
                         for i in key_idx]
        no_key = deleted if present is None else pc.and_(deleted, pc.invert(present))
        key = _or_null(pc.invert(no_key), _object([names[i] for i in key_idx], key_parts), n)
    return _text_of([
        '{"table":' + orjson.dumps(table).decode() + ',"op":"', op_arr, '","lsn":"', lsn_texts(rows.column(LSN_COL)),
        '","ordinal":', rows.column(ORD_COL).cast(pa.string()), ',"commit_ts":', *_commit_ts_parts(rows.column(TS_COL)),
        ',"xid":', rows.column(XID_COL).cast(pa.string()), ',"key":', *key, ',"before":', *before,
        ',"after":', *after, ',"unchanged":', *_unchanged_parts(rows.column(UNCHANGED_COL)), "},"], n)


def data_of(texts: pa.Array) -> tuple[memoryview, np.ndarray]:
    """A string array's data and each value's offset into it (the first 0) and the end."""
    offsets = np.frombuffer(texts.buffers()[1], np.int32, len(texts) + 1, texts.offset * 4)
    data = texts.buffers()[2]  # None when every value is empty
    return memoryview(b"" if data is None else data)[offsets[0]:offsets[-1]], offsets - offsets[0]


def row_texts(seg: WireSegment) -> list[pa.Array] | None:
    """Each change's JSON object followed by a comma, as string arrays of consecutive runs of rows (one but for
    segments of ~1 GiB of text); None when the segment's records have been built (an event, a decoded payload)."""
    if not _rows_only(seg):
        return None
    rows = seg._rows
    assert rows is not None
    n = rows.num_rows
    if n == 0:
        return []
    per_row = rows.nbytes // n * 6 + 32 * len(seg.columns) * (3 if seg.has_before else 2) + 256
    step = max(1, _TEXT_BUDGET // per_row)
    return [_record_texts(seg.columns, rows.slice(i, step), seg.has_before, seg.table) for i in range(0, n, step)]


def json_text(seg: WireSegment, head: bytes = b"", tail: bytes = b"") -> bytes:
    """``head + orjson.dumps(json_records(seg)) + tail``, the changes written from the segment's Arrow rows when
    its records have not been built."""
    runs = row_texts(seg)
    if runs is None:
        return b"".join([head, orjson.dumps(json_records(seg)), tail])
    if not runs:
        return head + b"[]" + tail
    data = [data_of(texts)[0] for texts in runs]
    return b"".join([head, b"[", *data[:-1], data[-1][:-1], b"]", tail])  # one copy, the last comma dropped
