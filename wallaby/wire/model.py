"""The wire model shared by every format: a segment's header and its records, in exact canonical values.

A payload carries one segment of a :class:`~wallaby.core.changes.ChangeBatch`: the
row changes of one table (one schema version) or one event. Every format
carries the same things:

- header: flow id, table (``schema.table``), schema version, replica identity,
  the columns (name, Postgres type, Arrow type, key flag), whether the segment
  has before images;
- per change: op, position (commit LSN, ordinal), commit timestamp, xid, key,
  before, after, unchanged TOAST columns.

Canonical values (what the text formats write, each in its own syntax): an
Arrow column is first cast to its *storage* type, so temporal values are plain
integers (timestamps: µs since 1970, dates: days, times: µs since midnight)
and Postgres' whole range (BC, years past 9999, the ±infinity sentinels) stays
exact; decimals are ``Decimal``; intervals ``(months, days, nanoseconds)``;
bytea ``bytes``; lists nest. :func:`rows_from_records` is the inverse: it
rebuilds the segment's Arrow rows bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from wallaby.core.changes import (
    BEFORE_PREFIX,
    LSN_COL,
    META_FIELDS,
    OP_COL,
    ORD_COL,
    TS_COL,
    UNCHANGED_COL,
    XID_COL,
    Column,
    Event,
    Position,
    TableChanges,
    TableSchema,
)


@dataclass(frozen=True)
class WireColumn:
    name: str
    pg_type: str
    arrow_type: pa.DataType
    key: bool = False


@dataclass
class Record:
    """One change, values canonical (see the module docstring); key/before/after are per-column lists."""

    op: str
    lsn: int
    ordinal: int
    commit_ts: int  # µs since 1970, UTC
    xid: int
    key: list[Any] | None = None
    before: list[Any] | None = None
    after: list[Any] | None = None
    unchanged: list[str] = field(default_factory=list)


@dataclass
class WireSegment:
    """A decoded payload: a table's row changes (``rows`` in the change model's layout) or an event."""

    flow_id: str
    table: str
    schema_version: int = 0
    replica_identity: str = "d"
    columns: list[WireColumn] = field(default_factory=list)
    has_before: bool = False
    records: list[Record] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # events: the tables they name
    event_payload: dict[str, Any] | None = None  # events only
    _rows: pa.RecordBatch | None = None

    def __getattr__(self, name: str) -> Any:
        # ``records`` of a segment built from rows is computed on first use (see segment_of)
        lazy = self.__dict__.get("_lazy_records")
        if name == "records" and lazy is not None:
            self.__dict__["records"] = value = lazy()
            self.__dict__["_lazy_records"] = None
            return value
        raise AttributeError(name)

    @property
    def is_event(self) -> bool:
        return self.event_payload is not None

    @property
    def rows(self) -> pa.RecordBatch:
        if self._rows is None:
            self._rows = rows_from_records(self.columns, self.records, self.has_before)
        return self._rows

    def table_schema(self) -> TableSchema:
        schema, _, name = self.table.rpartition(".")
        return TableSchema(0, schema or "public", name, tuple(
            Column(c.name, 0, c.pg_type, key=c.key, arrow_type=c.arrow_type) for c in self.columns),
            self.replica_identity, self.schema_version or 1)

    def to_segment(self) -> TableChanges | Event:
        """Back into the change model (what a receiving wallaby applies)."""

        if self.is_event:
            r = self.records[0]
            tables = []
            for qualified in self.tables:
                schema, _, name = qualified.rpartition(".")
                tables.append(TableSchema(0, schema or "public", name, ()))
            return Event(r.op, Position(r.lsn, r.ordinal), r.commit_ts, r.xid, tuple(tables),
                         dict(self.event_payload or {}))
        return TableChanges(self.table_schema(), self.rows)


# -- Arrow types ---------------------------------------------------------------------------------

_VIEWS = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}


def plain_type(t: pa.DataType) -> pa.DataType:
    """The type with view types replaced by their plain forms (every format and file can hold those)."""
    if t in _VIEWS:
        return _VIEWS[t]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(plain_type(t.value_type))
    return t


def storage_type(t: pa.DataType) -> pa.DataType:
    """Temporal types as their integer storage, recursively."""
    t = plain_type(t)
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return pa.int64()
    if pa.types.is_date32(t):
        return pa.int32()
    if pa.types.is_list(t):
        return pa.list_(storage_type(t.value_type))
    return t


def canonical(arr: pa.Array) -> list[Any]:
    """A column's values in canonical form."""
    arr = arr.cast(plain_type(arr.type)) if plain_type(arr.type) != arr.type else arr
    st = storage_type(arr.type)
    values = (arr.cast(st) if st != arr.type else arr).to_pylist()
    if pa.types.is_interval(st):
        return [None if v is None else (v.months, v.days, v.nanoseconds) for v in values]
    return values


def from_canonical(values: list[Any], t: pa.DataType) -> pa.Array:
    """The inverse of :func:`canonical`."""
    t = plain_type(t)
    st = storage_type(t)
    arr = pa.array(values, type=st)
    return arr.cast(t) if st != t else arr


_TYPE_RE = re.compile(r"^(decimal128|decimal256)\((\d+), (-?\d+)\)$")
_SIMPLE = {str(t): t for t in (
    pa.null(), pa.bool_(), pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(),
    pa.uint64(), pa.float32(), pa.float64(), pa.string(), pa.binary(), pa.large_string(), pa.large_binary(),
    pa.date32(), pa.time64("us"), pa.timestamp("us"), pa.timestamp("us", tz="UTC"), pa.month_day_nano_interval())}


def type_text(t: pa.DataType) -> str:
    return str(plain_type(t))


def parse_type(text: str) -> pa.DataType:
    """The inverse of :func:`type_text` for the types the source produces."""
    text = text.strip()
    if text in _SIMPLE:
        return _SIMPLE[text]
    if m := _TYPE_RE.match(text):
        ctor = pa.decimal128 if m.group(1) == "decimal128" else pa.decimal256
        return ctor(int(m.group(2)), int(m.group(3)))
    if text.startswith("list<") and text.endswith(">"):
        inner = text[5:-1]
        name, _, item = inner.partition(": ")
        return pa.list_(pa.field(name, parse_type(item)))
    raise ValueError(f"unsupported Arrow type in a wire payload: {text!r}")


# -- segment -> records ----------------------------------------------------------------------------

def columns_of(table: TableSchema, rows: pa.RecordBatch) -> list[WireColumn]:
    return [WireColumn(c.name, c.type_name, plain_type(rows.schema.field(c.name).type), c.key)
            for c in table.columns]


def segment_of(flow_id: str, seg: TableChanges | Event) -> WireSegment:
    """The wire view of one change-model segment."""
    if isinstance(seg, Event):
        payload = {k: v for k, v in seg.payload.items() if _jsonable(v)}
        return WireSegment(flow_id, seg.tables[0].qualified if len(seg.tables) == 1 else "",
                           records=[Record(seg.op, seg.position.lsn, seg.position.ordinal, seg.commit_ts, seg.xid)],
                           tables=[t.qualified for t in seg.tables], event_payload=payload)
    t, rows = seg.table, seg.rows
    cols = columns_of(t, rows)
    out = WireSegment(flow_id, t.qualified, t.version, t.replica_identity, cols, seg.has_before, [], _rows=rows)
    # Records (Python values per change) are built only when asked for: the arrow and parquet formats
    # encode the rows as they are.
    del out.records
    out.__dict__["_lazy_records"] = lambda: records_of(cols, rows, seg.has_before)
    return out


def records_of(cols: list[WireColumn], rows: pa.RecordBatch, has_before: bool) -> list[Record]:
    """The changes of a segment's rows as records (canonical values)."""
    after = [canonical(rows.column(c.name)) for c in cols]
    before = [canonical(rows.column(BEFORE_PREFIX + c.name)) for c in cols] if has_before else []
    ops = rows.column(OP_COL).to_pylist()
    lsns = rows.column(LSN_COL).to_pylist()
    ords = rows.column(ORD_COL).to_pylist()
    tss = rows.column(TS_COL).cast(pa.int64()).to_pylist()
    xids = rows.column(XID_COL).to_pylist()
    unchanged = rows.column(UNCHANGED_COL).to_pylist()
    key_idx = [i for i, c in enumerate(cols) if c.key]
    records = []
    for r in range(rows.num_rows):
        op = ops[r]
        b = [col[r] for col in before] if has_before else None
        if b is not None and all(v is None for v in b):
            b = None
        a = None if op == "delete" else [col[r] for col in after]
        source = a if a is not None else b
        key = [source[i] for i in key_idx] if source is not None and key_idx else None
        if op == "update" and b is not None and key_idx:
            key = [b[i] for i in key_idx]  # the row the update changes (its key may change)
        records.append(Record(op, lsns[r], ords[r], tss[r], xids[r], key, b, a, unchanged[r] or []))
    return records


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool | list | dict)


def rows_from_records(columns: list[WireColumn], records: list[Record], has_before: bool) -> pa.RecordBatch:
    """A segment's rows (change-model layout) from its records."""
    n = len(columns)
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []
    for i, c in enumerate(columns):
        arrays.append(from_canonical([None if r.after is None else r.after[i] for r in records], c.arrow_type))
        fields.append(pa.field(c.name, plain_type(c.arrow_type)))
    meta = {
        OP_COL: pa.array([r.op for r in records], pa.string()),
        LSN_COL: pa.array([r.lsn for r in records], pa.uint64()),
        ORD_COL: pa.array([r.ordinal for r in records], pa.uint64()),
        TS_COL: pa.array([r.commit_ts for r in records], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        XID_COL: pa.array([r.xid for r in records], pa.uint32()),
        UNCHANGED_COL: pa.array([r.unchanged or None for r in records], pa.list_(pa.string())),
    }
    for f in META_FIELDS:
        arrays.append(meta[f.name])
        fields.append(f)
    if has_before:
        for i, c in enumerate(columns):
            arrays.append(from_canonical([None if r.before is None else r.before[i] for r in records], c.arrow_type))
            fields.append(pa.field(BEFORE_PREFIX + c.name, plain_type(c.arrow_type)))
    assert all(len(a) == len(records) for a in arrays) and n == len(columns)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def normalized(rows: pa.RecordBatch) -> pa.RecordBatch:
    """``rows`` with view types replaced by plain ones (what a decoded payload holds)."""
    if all(plain_type(f.type) == f.type for f in rows.schema):
        return rows
    schema = pa.schema([pa.field(f.name, plain_type(f.type), f.nullable) for f in rows.schema])
    return pa.RecordBatch.from_arrays([c.cast(plain_type(c.type)) for c in rows.columns], schema=schema)


def row_keys(seg: TableChanges) -> list[Any]:
    """Each change's key values (canonical, as the wire records have them), from the key columns only: the old
    key for deletes and for updates that carry one."""
    rows, n = seg.rows, len(seg)
    names = list(seg.table.key_names)
    if not names:
        return [None] * n
    after = [canonical(rows.column(k)) for k in names]
    before = [canonical(rows.column(BEFORE_PREFIX + k)) for k in names] if seg.has_before else None
    ops = rows.column(OP_COL).to_pylist()
    out = []
    for r in range(n):
        old = before is not None and (ops[r] == "delete" or any(col[r] is not None for col in before))
        out.append([col[r] for col in (before if old else after)])
    return out
