"""Hand-built change batches for tests: tables, row changes, events, positions.

Typical use::

    t = table("users", [col("id", "int4", key=True), col("name", "text")])
    s = Stream()
    b = s.batch(s.rows(t, ins(id=1, name="a"), upd({"id": 1, "name": "b"}), dele(id=1)))

``Stream`` hands out positions in WAL order: every ``rows``/``truncate`` call is
one transaction (a new commit LSN) unless ``same_tx=True``; ordinals count
from 1 inside it. ``upd(after, before=..., unchanged=[...])`` takes the before
image (old key, or the whole old row for REPLICA IDENTITY FULL) and the names
of unchanged TOAST columns (their after value is sent as NULL).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from wallaby.core.changes import (
    BEFORE_PREFIX,
    META_FIELDS,
    OP_DELETE,
    OP_INSERT,
    OP_MESSAGE,
    OP_READ,
    OP_TRUNCATE,
    OP_UPDATE,
    ChangeBatch,
    Column,
    Event,
    Position,
    TableChanges,
    TableSchema,
)

ARROW_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.uint32(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "money": pa.decimal128(19, 2),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "json": pa.string(),
    "jsonb": pa.string(),
    "uuid": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "interval": pa.month_day_nano_interval(),
}

TYPE_OIDS = {"bool": 16, "int2": 21, "int4": 23, "int8": 20, "text": 25, "numeric": 1700, "float8": 701}

_relids = itertools.count(16384)


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


def col(
    name: str,
    type_name: str = "int4",
    *,
    key: bool = False,
    arrow_type: pa.DataType | None = None,
    typmod: int = -1,
    base_type: str | None = None,
    extension: str | None = None,
    nullable: bool = True,
) -> Column:
    """A source column; the Arrow type defaults from ``type_name`` (text for unknown types)."""
    if arrow_type is None:
        if type_name == "numeric" and typmod >= 4:
            p, s = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
            arrow_type = pa.decimal128(p, s) if p <= 38 else pa.string()
        else:
            arrow_type = ARROW_TYPES.get(type_name, pa.string())
    return Column(
        name=name,
        type_oid=TYPE_OIDS.get(type_name, 0),
        type_name=type_name,
        typmod=typmod,
        key=key,
        arrow_type=arrow_type,
        base_type=base_type,
        extension=extension,
        nullable=nullable,
    )


def table(
    name: str,
    columns: list[Column],
    *,
    schema: str = "public",
    relid: int | None = None,
    version: int = 1,
    replica_identity: str = "d",
) -> TableSchema:
    return TableSchema(
        relid=relid if relid is not None else next(_relids),
        schema=schema,
        name=name,
        columns=tuple(columns),
        replica_identity=replica_identity,
        version=version,
    )


def evolve(t: TableSchema, columns: list[Column]) -> TableSchema:
    """The next schema version of ``t`` with new columns (same relid)."""
    return TableSchema(t.relid, t.schema, t.name, tuple(columns), t.replica_identity, t.version + 1)


@dataclass
class Change:
    op: str
    after: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    unchanged: list[str] | None = None
    position: Position | None = None  # assigned by Stream when None
    ts: int | None = None
    xid: int | None = None


def ins(**after: Any) -> Change:
    return Change(OP_INSERT, after=after)


def read(**after: Any) -> Change:
    return Change(OP_READ, after=after)


def upd(after: dict[str, Any], before: dict[str, Any] | None = None, unchanged: list[str] | None = None) -> Change:
    return Change(OP_UPDATE, after=after, before=before, unchanged=list(unchanged) if unchanged else None)


def dele(**before: Any) -> Change:
    return Change(OP_DELETE, before=before)


def table_changes(
    t: TableSchema, changes: list[Change], *, arrow_types: dict[str, pa.DataType] | None = None
) -> TableChanges:
    """A TableChanges segment from changes whose positions are set. ``arrow_types`` overrides per column."""
    arrow_types = arrow_types or {}
    names = t.column_names
    types = {c.name: arrow_types.get(c.name, c.arrow_type) for c in t.columns}
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []
    for n in names:
        values = [
            None if (ch.after is None or (ch.unchanged and n in ch.unchanged)) else ch.after.get(n) for ch in changes
        ]
        arrays.append(pa.array(values, types[n]))
        fields.append(pa.field(n, types[n]))
    meta = {
        "__op": [ch.op for ch in changes],
        "__lsn": [ch.position.lsn for ch in changes],
        "__ord": [ch.position.ordinal for ch in changes],
        "__ts": [ch.ts or 0 for ch in changes],
        "__xid": [ch.xid or 1 for ch in changes],
        "__unchanged": [ch.unchanged or None for ch in changes],
    }
    for f in META_FIELDS:
        if f.name == "__ts":
            arrays.append(pa.array(meta[f.name], pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(meta[f.name], f.type))
        fields.append(f)
    if any(ch.before is not None for ch in changes):
        for n in names:
            arrays.append(pa.array([None if ch.before is None else ch.before.get(n) for ch in changes], types[n]))
            fields.append(pa.field(BEFORE_PREFIX + n, types[n]))
    return TableChanges(t, pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields)))


@dataclass
class Stream:
    """Hands out WAL positions and builds segments and batches in order."""

    flow_id: str = "flow1"
    lsn: int = 0x1000000
    ordinal: int = 0
    ts: int = 1_700_000_000_000_000
    xid: int = 700
    last: Position = field(default_factory=lambda: Position(0, 0))

    def tx(self) -> None:
        self.lsn += 0x100
        self.ordinal = 0
        self.ts += 1000
        self.xid += 1

    def next(self) -> Position:
        self.ordinal += 1
        self.last = Position(self.lsn, self.ordinal)
        return self.last

    def rows(
        self,
        t: TableSchema,
        *changes: Change,
        same_tx: bool = False,
        arrow_types: dict[str, pa.DataType] | None = None,
    ) -> TableChanges:
        if not same_tx:
            self.tx()
        for ch in changes:
            if ch.position is None:
                ch.position = self.next()
            ch.ts = ch.ts or self.ts
            ch.xid = ch.xid or self.xid
        return table_changes(t, list(changes), arrow_types=arrow_types)

    def truncate(self, *tables: TableSchema, same_tx: bool = False) -> Event:
        if not same_tx:
            self.tx()
        return Event(OP_TRUNCATE, self.next(), self.ts, self.xid, tables=tuple(tables))

    def message(self, prefix: str = "p", content: bytes = b"") -> Event:
        self.tx()
        return Event(OP_MESSAGE, self.next(), self.ts, self.xid, payload={"prefix": prefix, "content": content})

    def event(self, op: str, *tables: TableSchema, **payload: Any) -> Event:
        self.tx()
        return Event(op, self.next(), self.ts, self.xid, tables=tuple(tables), payload=payload)

    def batch(self, *segments: TableChanges | Event) -> ChangeBatch:
        """A batch of the segments; its position is that of its last change (else the last one handed out)."""
        position = self.last
        if segments:
            position = max(s.last if isinstance(s, TableChanges) else s.position for s in segments)
        return ChangeBatch(self.flow_id, list(segments), position)


def parse_tuples(images: list[tuple[bytes, int] | None], ncols: int):
    """:func:`sources.postgres.tuples.parse_messages` of row images given as ``(message, offset of its TupleData)``
    per row, None for a row without the image (all NULL)."""
    import numpy as np

    from sources.postgres.tuples import parse_messages

    n = len(images)
    present = np.fromiter((img is not None for img in images), dtype=bool, count=n)
    rows = [img for img in images if img is not None]
    offsets = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    return parse_messages([r[0] for r in rows], offsets, ncols, n, None if present.all() else present)
