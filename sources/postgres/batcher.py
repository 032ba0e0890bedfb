"""From pgoutput messages to Arrow-backed ChangeBatches. No I/O.

Rows are kept as their raw messages, grouped into *runs* (one table, one
schema version, contiguous in WAL order per table), a run's rows column by
column: its after images' messages, each row's ordinal, and only where they
change, its transactions (commit LSN, time, xid) and the rows that are not
plain inserts. A run becomes one Arrow record batch when the batch is taken:
the messages are parsed column at a time (``sources.postgres.tuples``) and each
column is decoded by ``sources.postgres.pgtypes`` in one call.

Positions: BEGIN names the transaction's final commit LSN; every change inside
gets the next ordinal (from 1). Changes at or below ``skip_to`` (the last
position emitted before a restart) are dropped, so a resumed stream emits each
change exactly once.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sources.postgres import pgbinary, pgtypes
from sources.postgres.pgoutput import (
    Begin,
    Commit,
    DecodeError,
    Decoder,
    LogicalMessage,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfo,
)
from sources.postgres.tuples import parse_messages, skip_tuple
from wallaby.core import settings
from wallaby.core.changes import (
    BEFORE_PREFIX,
    META_FIELDS,
    OP_DDL,
    OP_DELETE,
    OP_INSERT,
    OP_MESSAGE,
    OP_TRUNCATE,
    OP_UPDATE,
    WAL_COL,
    ZERO,
    ChangeBatch,
    Event,
    Position,
    TableChanges,
    TableSchema,
)

log = logging.getLogger("wallaby.source")

_U32 = struct.Struct(">I")

# A batch is taken at ``batch_size`` changes or once its row messages reach this many bytes,
# whichever comes first: wide rows (or big TOASTed values) would otherwise make one batch of
# batch_size rows hundreds of MB, held several times over (messages, parsed buffer, decoded
# columns, a batch queued ahead). 3 MiB is ~13k narrow rows (batch_size decides there) or
# ~600 rows of 5 KB. Measured (`make bench`, 1M wide changes into DuckDB): peak RSS 521 -> 414 MB
# from 8 to 4 MiB at the same rate; 200k: 465 -> 407 MB (2 MiB: 368 MB, but the source alone slows).
# 300k wide changes, 3 runs each: 357-382 MB at 4 MiB, 348-360 MB at 3 MiB.
# WALLABY_SOURCE_BATCH_BYTES overrides it.
MAX_BATCH_BYTES = settings.on_import().source_batch_bytes
# While the stream has a backlog, the batcher gathers up to GATHER_ROWS changes (or batch_size when larger; at most
# MAX_BATCH_BYTES of messages) before it decodes them at once, then hands them over whole (ReplicationProtocol._take):
# parsing and decoding cost a fixed part per call and per column, which at the default batch_size of 100 was most of
# the reader's time (bench, bulk group; issue 18's notes). A stream that is caught up hands over what it holds at
# once, as before. Cut into batches of batch_size here, each batch crossed bytewax and the destination's writer on its
# own: measured (bulk group, 1M inserts into DuckDB, 2 runs each) 94k rows/s cut against 118k whole; the fanout cuts
# them only for destinations whose unit a batch is (sinks/fanout.py). A gather of 16 x batch_size (1,600 changes at
# the default) still left the default 0.76x of batch_size 10,000 (bulk group, 4 alternating runs: 128k against 169k
# rows/s); GATHER_ROWS for every batch_size gave 166-172k against 162-164k.
GATHER_ROWS = 10_000


@dataclass
class TableState:
    """What the batcher knows of a relation: its schema and each column's decoder."""

    schema: TableSchema
    types: list[pgtypes.ColumnType]
    # (type oid, binary values) -> their text, through the server: for values pgoutput sent in binary (source
    # option binary) of a type sources/postgres/pgbinary.py has no decoder for; None: no server to ask
    recv_text: Callable[[int, pa.Array], pa.Array] | None = None


def ddl_payload(content: bytes) -> dict:
    """A captured DDL message (JSON from the event trigger) as a ddl event's payload."""
    import orjson

    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {"kind": "statement", "ddl": content.decode("utf-8", "replace"), "table": ""}
    data.setdefault("kind", "statement")
    data.setdefault("table", data.get("object_identity") or "")
    return data


def describe_drift(p: dict) -> str:
    parts = [f"added {', '.join(p['added'])}" if p["added"] else "",
             f"dropped {', '.join(p['dropped'])}" if p["dropped"] else "",
             f"retyped {', '.join(p['retyped'])}" if p["retyped"] else "",
             f"dropped and added again {', '.join(p['readded'])}" if p.get("readded") else ""]
    same = "its storage (the same columns)" if p.get("storage_only") else "replica identity or keys"
    text = f"schema drift of {p['table']}: " + ("; ".join(x for x in parts if x) or same)
    if p.get("rewritten"):
        text += (f"; the table was rewritten (its stored values changed without row changes): plan: resync"
                 f" {p['table']} (wallaby-worker -mode backfill -tables {p['table']})")
    return text


# Resolves a Relation message (and the Type messages seen so far) to a TableState.
Resolver = Callable[[Relation, dict[int, TypeInfo], TableState | None], TableState]


_INSERT_AT = 6  # where an Insert message's TupleData starts: 'I', the relation's oid, 'N'
_OP_CODE = {OP_UPDATE: 1, OP_DELETE: 2}  # an op's index in _ops()


@functools.cache
def _ops() -> pa.Array:
    """The ops by code (built at first use: pyarrow's first pa.array imports pandas, ~0.2 s of a worker's start-up
    that a catch-up run with nothing to read does not need)."""
    return pa.array([OP_INSERT, OP_UPDATE, OP_DELETE], pa.string())


@dataclass(slots=True)
class _Run:
    """Rows of one table version, column by column. Per row: ``ords`` (its ordinal) and, unless it is a delete, its
    after image's message in ``after`` (the TupleData at _INSERT_AT). Only where they differ from that: ``ops``
    (row, op code) of the rows that are not inserts, ``after_at`` (index in ``after``, offset) of the images at
    another offset, ``before`` (row, message, offset) of the old images; ``txns`` (first row, commit LSN, commit
    time, xid) where a transaction's rows start. Per-row tuples transposed at take time were a fifth of the
    reader's time (1M narrow changes, source alone)."""

    state: TableState
    ords: list = field(default_factory=list)
    after: list = field(default_factory=list)
    after_at: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    before: list = field(default_factory=list)
    txns: list = field(default_factory=list)
    txn_lsn: int = -1  # the commit LSN of the last entry of txns


class Batcher:
    def __init__(self, flow_id: str, batch_size: int, resolve: Resolver, skip_to: Position = ZERO,
                 proto_version: int = 1, ddl_prefix: str | None = None,
                 known: dict[int, TableSchema] | None = None, drift: bool = True, keep_wal: bool = False,
                 leave_out: Callable[[str, str], bool] | None = None):
        self.flow_id = flow_id
        # (schema, table) -> whether its changes are left out (wallaby's own tables: sources/postgres/own_tables.py);
        # the relids it said so of
        self.leave_out = leave_out
        self.left_out: set[int] = set()
        self.ddl_prefix = ddl_prefix  # logical messages with this prefix are captured DDL (sources/ddl_capture.py)
        # Last shape seen of each relation, kept by the caller across reconnects: a Relation message that
        # differs from it is schema drift.
        self.known: dict[int, TableSchema] = known if known is not None else {}
        self.drift = drift  # off when an event trigger captures the DDL itself
        self.keep_wal = keep_wal  # add each change's raw pgoutput message (the __wal column)
        self.current_raw = b""
        self.gather = max(batch_size, GATHER_ROWS)  # rows a take may hold
        self.resolve = resolve
        self.skip_to = skip_to
        self.decoder = Decoder(proto_version)
        self.tables: dict[int, TableState] = {}
        self.types: dict[int, TypeInfo] = {}
        self.segments: list[_Run | Event] = []
        self.open_runs: dict[int, _Run] = {}
        self.rows = 0  # changes held, not yet taken
        self.bytes = 0  # size of the messages of the changes held
        self.max_bytes = MAX_BATCH_BYTES
        # transaction context
        self.in_txn = False
        self.lsn = 0
        self.ordinal = 0
        self.commit_ts = 0
        self.xid = 0
        self.skipping = False
        self.skip_ordinal = 0
        self.last_commit_end = 0  # end LSN of the last COMMIT seen
        # position of the last change held or taken (kept as ints: no object per row)
        self.last_lsn, self.last_ordinal = skip_to.lsn, skip_to.ordinal

    # -- feeding ------------------------------------------------------------------------
    def feed(self, payload: bytes) -> None:
        if payload[0] == 73 and not self.decoder.in_stream:  # 'I': the hot path, no message object
            self.ordinal += 1
            if self.skipping or self.ordinal <= self.skip_ordinal:
                return
            relid = _U32.unpack_from(payload, 1)[0]
            run = self.open_runs.get(relid) or self._run_for(relid)
            if run is None:  # a table left out
                return
            if run.txn_lsn != self.lsn:
                run.txns.append((len(run.ords), self.lsn, self.commit_ts, self.xid))
                run.txn_lsn = self.lsn
            run.ords.append(self.ordinal)
            run.after.append(payload)
            self.rows += 1
            self.bytes += len(payload)
            self.last_lsn = self.lsn
            self.last_ordinal = self.ordinal
            return
        kind = payload[0]
        if kind == 85 or kind == 68 or kind == 73:  # 'U', 'D', 'I' (in a stream)
            self._row(payload)
            return
        self.current_raw = payload  # for events that keep their raw message (keep_wal)
        msg = self.decoder.decode(payload)
        t = type(msg)
        if t is Begin:
            self.in_txn = True
            self.lsn, self.commit_ts, self.xid = msg.final_lsn, msg.commit_ts, msg.xid
            self.ordinal = 0
            skip = self.skip_to
            self.skipping = msg.final_lsn < skip.lsn
            self.skip_ordinal = skip.ordinal if msg.final_lsn == skip.lsn else 0
        elif t is Commit:
            self.in_txn = False
            self.skipping = False
            self.last_commit_end = msg.end_lsn
        elif t is Relation:
            self._relation(msg)
        elif t is TypeInfo:
            self.types[msg.oid] = msg
        elif t is Truncate:
            self._truncate(msg)
        elif t is LogicalMessage:
            self._message(msg)
        elif t is Origin:
            pass
        elif t in (StreamStart, StreamStop, StreamCommit, StreamAbort):
            # We start replication with streaming off; a server that streams anyway is a bug to report.
            raise RuntimeError(f"unexpected streamed-transaction message {t.__name__}: streaming is off")

    def _next_ordinal(self) -> bool:
        """Advance the ordinal; False when this change was already emitted before a restart."""
        self.ordinal += 1
        return not self.skipping and self.ordinal > self.skip_ordinal

    def _relation(self, msg: Relation) -> None:
        if self.leave_out is not None and self.leave_out(msg.namespace, msg.name):
            if msg.relid not in self.left_out:
                log.info("%s.%s is wallaby's own: its changes are left out (name it in publication_tables to carry"
                         " it)", msg.namespace, msg.name, extra={"flow": self.flow_id})
            self.left_out.add(msg.relid)
            self.tables.pop(msg.relid, None)
            self.open_runs.pop(msg.relid, None)
            return
        self.left_out.discard(msg.relid)
        old = self.tables.get(msg.relid)
        state = self.resolve(msg, self.types, old)
        if old is not None and old.schema.same_shape(state.schema) and not state.schema.storage_moved(old.schema):
            return
        self.tables[msg.relid] = state
        self.open_runs.pop(msg.relid, None)  # a new shape starts a new run
        before = self.known.get(msg.relid)
        if before is not None and before.same_shape(state.schema) and not state.schema.storage_moved(before):
            return  # a shape keeps the storage it was first seen with: a rewrite while no worker ran shows later
        self.known[msg.relid] = state.schema
        if before is None:
            return
        if state.schema.rewritten_since(before) and not self.skipping:
            log.warning("%s changed shape and was rewritten at the source (ALTER ... TYPE, a volatile default): the"
                        " rows destinations already hold keep their old values (a cast of them) where Postgres"
                        " computed new ones; resync it: wallaby-worker -mode backfill -tables %s",
                        state.schema.qualified, state.schema.qualified, extra={"flow": self.flow_id})
        if self.drift:
            self._drift(before, state.schema)

    def _drift(self, before: TableSchema, after: TableSchema) -> None:
        """A ``ddl`` event for a changed relation. It takes no ordinal (a Relation message is not a change and is
        sent again after any reconnect), so it shares the position of the change before it."""
        old = {c.name: c for c in before.columns}
        new = {c.name: c for c in after.columns}
        payload = {
            "kind": "drift", "table": after.qualified,
            "added": [n for n in new if n not in old], "dropped": [n for n in old if n not in new],
            "retyped": [n for n in new if n in old and (new[n].type_name, new[n].typmod)
                        != (old[n].type_name, old[n].typmod)],
            "readded": after.readded(before), "ddl": "",
        }
        # Stored values may have changed with no row change: any retype (a USING expression can stand behind any
        # ALTER ... TYPE; known from the shapes alone, so a worker catching up finds it too), or the table's storage
        # changed since the shape before (a rewrite: a volatile default, also while no worker ran, the shapes being
        # kept with the flow's state; the storage is read as it is now, so the rewrite may come later in the WAL
        # than this drift: the source reads the table again once the stream has passed where it stands now)
        payload["rewritten"] = bool(payload["retyped"] or after.rewritten_since(before))
        if before.same_shape(after):  # a column dropped and added again alike (storage_moved): nothing to decide on
            # but reading the table again
            payload["storage_only"] = True
        payload["ddl"] = describe_drift(payload)
        if self.skipping:
            return
        pos = Position(self.lsn, self.ordinal)
        self.segments.append(Event(OP_DDL, pos, self.commit_ts, self.xid, (after,), payload))
        self.rows += 1

    def _run_for(self, relid: int) -> _Run | None:
        """The open run of ``relid``'s changes (one started when none is open); None for a table left out."""
        run = self.open_runs.get(relid)
        if run is None:
            if relid in self.left_out:
                return None
            state = self.tables.get(relid)
            if state is None:
                raise RuntimeError(f"change for relation {relid} before its Relation message")
            run = _Run(state)
            self.open_runs[relid] = run
            self.segments.append(run)
        return run

    def _add(self, relid: int, op: str, payload: bytes, after_at: int | None, before_at: int | None) -> None:
        """A row of ``op`` from ``payload``: its after image at ``after_at`` (None: a delete has none), its before
        image at ``before_at`` (None: none sent)."""
        run = self.open_runs.get(relid)
        if run is None:
            run = self._run_for(relid)
            if run is None:  # a table left out
                return
        i = len(run.ords)
        if run.txn_lsn != self.lsn:
            run.txns.append((i, self.lsn, self.commit_ts, self.xid))
            run.txn_lsn = self.lsn
        run.ords.append(self.ordinal)
        if op is not OP_INSERT:
            run.ops.append((i, _OP_CODE[op]))
        if after_at is not None:
            if after_at != _INSERT_AT:
                run.after_at.append((len(run.after), after_at))
            run.after.append(payload)
        if before_at is not None:
            run.before.append((i, payload, before_at))
        self.rows += 1
        self.last_lsn = self.lsn
        self.last_ordinal = self.ordinal

    def _row(self, payload: bytes) -> None:
        """An update or delete (or an insert inside a stream): keep the raw images, parsed per batch."""
        if not self._next_ordinal():
            return
        self.bytes += len(payload)
        kind = payload[0]
        pos = 5 if self.decoder.in_stream else 1
        relid = _U32.unpack_from(payload, pos)[0]
        pos += 4
        tag = payload[pos]
        old = None
        if tag == 75 or tag == 79:  # 'K' old key, 'O' old row
            old = pos + 1
            if kind == 68:  # 'D'
                self._add(relid, OP_DELETE, payload, None, old)
                return
            pos = skip_tuple(payload, pos + 1)
            tag = payload[pos]
        if tag != 78:  # 'N'
            raise DecodeError(f"{chr(kind)}: expected a new tuple at offset {pos}")
        self._add(relid, OP_UPDATE if kind == 85 else OP_INSERT, payload, pos + 1, old)

    def _event(self, op: str, relids: list[int], payload: dict) -> None:
        if not self._next_ordinal():
            return
        for r in relids:
            self.open_runs.pop(r, None)
        tables = tuple(self.tables[r].schema for r in relids if r in self.tables)
        pos = Position(self.lsn, self.ordinal)
        if self.keep_wal:
            payload = {**payload, "wal": bytes(self.current_raw)}
        self.segments.append(Event(op, pos, self.commit_ts, self.xid, tables, payload))
        self.rows += 1
        self.last_lsn, self.last_ordinal = pos.lsn, pos.ordinal

    def _truncate(self, msg: Truncate) -> None:
        relids = [r for r in msg.relids if r not in self.left_out]
        if not relids:  # only tables left out: the change counts (its ordinal), nothing is carried
            self._next_ordinal()
            return
        self._event(OP_TRUNCATE, relids, {"cascade": msg.cascade, "restart_identity": msg.restart_identity})

    def _message(self, msg: LogicalMessage) -> None:
        if not msg.transactional:
            return  # non-transactional messages have no place in the commit order
        if self.ddl_prefix is not None and msg.prefix == self.ddl_prefix:
            self._event(OP_DDL, [], ddl_payload(msg.content))
            return
        self._event(OP_MESSAGE, [], {"prefix": msg.prefix, "content": msg.content})

    # -- taking ---------------------------------------------------------------------------
    def full(self) -> bool:
        """Whether to take what is held now, in the middle of what the server sent (GATHER_ROWS)."""
        return self.rows >= self.gather or self.bytes >= self.max_bytes

    def take(self) -> ChangeBatch | None:
        """Everything held, as one ChangeBatch (None when nothing is held)."""
        if not self.rows:
            return None
        segments = [s if isinstance(s, Event) else _build(s, self.keep_wal)
                    for s in self.segments if isinstance(s, Event) or s.ords]
        batch = ChangeBatch(self.flow_id, segments, Position(self.last_lsn, self.last_ordinal))
        self.segments = []
        self.open_runs = {}
        self.rows = 0
        self.bytes = 0
        return batch


def _build(run: _Run, keep_wal: bool = False) -> TableChanges:
    state = run.state
    cols = state.schema.columns
    ncols = len(cols)
    n = len(run.ords)
    codes = np.zeros(n, dtype=np.int8)
    if run.ops:
        at, code = zip(*run.ops, strict=True)
        codes[list(at)] = code
    deleted = codes == _OP_CODE[OP_DELETE]
    after_at: int | np.ndarray = _INSERT_AT
    if run.after_at:
        after_at = np.full(len(run.after), _INSERT_AT, dtype=np.int64)
        at, off = zip(*run.after_at, strict=True)
        after_at[list(at)] = off
    after = parse_messages(run.after, after_at, ncols, n, ~deleted if deleted.any() else None)

    unchanged: list | None = None
    for i, mask in enumerate(after.unchanged):
        if mask is None:
            continue
        if unchanged is None:
            unchanged = [None] * n
        name = cols[i].name
        for r in np.flatnonzero(mask).tolist():
            if unchanged[r] is None:
                unchanged[r] = [name]
            else:
                unchanged[r].append(name)

    arrays: list[pa.Array] = [_decode(after.values[i], state.types[i], state.schema, i, after.binary[i], state)
                              for i in range(ncols)]
    fields = [pa.field(cols[i].name, arrays[i].type) for i in range(ncols)]
    first, lsns, ts, xids = zip(*run.txns, strict=True)
    per_txn = np.diff(np.array([*first, n], dtype=np.int64))
    arrays += [
        _ops().take(pa.array(codes)),
        pa.array(np.repeat(np.array(lsns, dtype=np.uint64), per_txn)),
        pa.array(run.ords, pa.uint64()),
        pa.array(np.repeat(np.array(ts, dtype=np.int64), per_txn)).cast(pa.timestamp("us", tz="UTC")),
        pa.array(np.repeat(np.array(xids, dtype=np.uint32), per_txn)),
        pa.array(unchanged if unchanged is not None else [None] * n, pa.list_(pa.string())),
    ]
    fields += list(META_FIELDS)
    if run.before:
        rows, msgs, offs = zip(*run.before, strict=True)
        had = np.zeros(n, dtype=bool)
        had[list(rows)] = True
        before = parse_messages(list(msgs), np.array(offs, dtype=np.int64), ncols, n, None if had.all() else had)
        for i in range(ncols):
            arr = _decode(before.values[i], state.types[i], state.schema, i, before.binary[i], state)
            arrays.append(arr)
            fields.append(pa.field(BEFORE_PREFIX + cols[i].name, arr.type))
    if keep_wal:  # the message a row came from (a row's images are in one)
        wal: list = [None] * n
        for i, msg in zip(np.flatnonzero(~deleted).tolist(), run.after, strict=True):
            wal[i] = msg
        for i, msg, _ in run.before:
            wal[i] = msg
        arrays.append(pa.array(wal, pa.binary()))
        fields.append(pa.field(WAL_COL, pa.binary()))
    return TableChanges(state.schema, pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields)))


def _decode(raw: pa.Array, ctype: pgtypes.ColumnType, table: TableSchema, i: int, binary: bool | np.ndarray = False,
            state: TableState | None = None) -> pa.Array:
    try:
        if binary is False:
            return pgtypes.decode_column(ctype, raw)
        recv = state.recv_text if state is not None else None
        oid = table.columns[i].type_oid
        return pgbinary.decode_values(ctype, raw, binary, None if recv is None else lambda v: recv(oid, v))
    except (ValueError, pa.ArrowInvalid) as exc:
        raise DecodeError(f"{table.qualified}.{table.columns[i].name} ({ctype.type_name}): {exc}") from exc
