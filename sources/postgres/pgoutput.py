"""pgoutput decoder, protocol versions 1-4. No I/O: bytes in, typed messages out.

Reference: PostgreSQL docs, "Logical Replication Message Formats". Messages
inside a streamed transaction (between Stream Start and Stream Stop, protocol
>= 2) carry the top-level xid before their body; :class:`Decoder` tracks that.

Tuple values stay raw: ``bytes`` of the text (or binary) representation,
``None`` for SQL NULL and :data:`UNCHANGED` for an unchanged TOASTed value.
Turning them into typed columns is ``sources.postgres.pgtypes``'s job, per batch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
PG_EPOCH_OFFSET_US = 946_684_800_000_000


class DecodeError(ValueError):
    """A message the decoder does not understand: names the message kind and the offset."""


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_STREAM_COMMIT = struct.Struct(">IBQQq")
_XLOGDATA = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")


def pg_ts_to_unix_us(ts: int) -> int:
    return ts + PG_EPOCH_OFFSET_US


# -- messages ----------------------------------------------------------------------


@dataclass(slots=True)
class Begin:
    final_lsn: int
    commit_ts: int  # µs since the Unix epoch
    xid: int


@dataclass(slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(slots=True)
class RelationColumn:
    name: str
    type_oid: int
    typmod: int
    key: bool


@dataclass(slots=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str
    columns: list[RelationColumn]
    xid: int | None = None


@dataclass(slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(slots=True)
class Insert:
    relid: int
    new: list
    xid: int | None = None


@dataclass(slots=True)
class Update:
    relid: int
    new: list
    old: list | None = None
    old_kind: str | None = None  # 'K' old key, 'O' old row, None
    xid: int | None = None


@dataclass(slots=True)
class Delete:
    relid: int
    old: list
    old_kind: str  # 'K' or 'O'
    xid: int | None = None


@dataclass(slots=True)
class Truncate:
    relids: list[int]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@dataclass(slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(slots=True)
class StreamStop:
    pass


@dataclass(slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(slots=True)
class StreamAbort:
    xid: int
    subxid: int
    abort_lsn: int | None = None
    abort_ts: int | None = None


@dataclass(slots=True)
class BeginPrepare:
    prepare_lsn: int
    end_lsn: int
    prepare_ts: int
    xid: int
    gid: str


@dataclass(slots=True)
class Prepare:
    kind: str  # 'P' prepare, 'K' commit prepared, 'r' rollback prepared, 'p' stream prepare
    flags: int
    lsn: int
    end_lsn: int
    ts: int
    xid: int
    gid: str
    extra: dict = field(default_factory=dict)


Message = (
    Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | LogicalMessage
    | StreamStart | StreamStop | StreamCommit | StreamAbort | BeginPrepare | Prepare
)


# -- primitives ----------------------------------------------------------------------


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode("utf-8", "surrogateescape"), end + 1


def read_tuple(buf: bytes, pos: int) -> tuple[list, int]:
    """Read TupleData at ``pos``: ``(values, next_pos)``. Hot path: keep it tight."""
    (n,) = _I16.unpack_from(buf, pos)
    pos += 2
    values: list = [None] * n
    unpack = _I32.unpack_from
    for i in range(n):
        kind = buf[pos]
        if kind == 116 or kind == 98:  # 't' text, 'b' binary
            (ln,) = unpack(buf, pos + 1)
            start = pos + 5
            pos = start + ln
            values[i] = buf[start:pos]
        elif kind == 110:  # 'n' null
            pos += 1
        elif kind == 117:  # 'u' unchanged toast
            values[i] = UNCHANGED
            pos += 1
        else:
            raise DecodeError(f"unknown tuple column kind {chr(kind)!r} at offset {pos}")
    return values, pos


# -- decoder -------------------------------------------------------------------------


class Decoder:
    """Decodes pgoutput message bodies (the payload of XLogData)."""

    __slots__ = ("in_stream", "proto_version")

    def __init__(self, proto_version: int = 1):
        self.proto_version = proto_version
        self.in_stream = False

    def decode(self, buf: bytes) -> Message:
        kind = buf[0]
        try:
            handler = _HANDLERS[kind]
        except KeyError:
            raise DecodeError(f"unknown pgoutput message kind {chr(kind)!r}") from None
        try:
            return handler(self, buf)
        except (struct.error, IndexError, ValueError) as exc:
            if isinstance(exc, DecodeError):
                raise
            raise DecodeError(f"malformed pgoutput message {chr(kind)!r} ({len(buf)} bytes): {exc}") from exc

    # Streamed-transaction messages carry the xid first.
    def _xid(self, buf: bytes) -> tuple[int | None, int]:
        if self.in_stream:
            return _U32.unpack_from(buf, 1)[0], 5
        return None, 1

    def _begin(self, buf: bytes) -> Begin:
        lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
        return Begin(lsn, pg_ts_to_unix_us(ts), xid)

    def _commit(self, buf: bytes) -> Commit:
        flags, lsn, end, ts = _COMMIT.unpack_from(buf, 1)
        return Commit(flags, lsn, end, pg_ts_to_unix_us(ts))

    def _origin(self, buf: bytes) -> Origin:
        (lsn,) = _U64.unpack_from(buf, 1)
        name, _ = _cstring(buf, 9)
        return Origin(lsn, name)

    def _relation(self, buf: bytes) -> Relation:
        xid, pos = self._xid(buf)
        (relid,) = _U32.unpack_from(buf, pos)
        namespace, pos = _cstring(buf, pos + 4)
        name, pos = _cstring(buf, pos)
        ident = chr(buf[pos])
        (ncols,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        cols = []
        for _ in range(ncols):
            flags = buf[pos]
            cname, pos = _cstring(buf, pos + 1)
            oid, typmod = struct.unpack_from(">Ii", buf, pos)
            pos += 8
            cols.append(RelationColumn(cname, oid, typmod, bool(flags & 1)))
        return Relation(relid, namespace or "pg_catalog", name, ident, cols, xid)

    def _type(self, buf: bytes) -> TypeInfo:
        xid, pos = self._xid(buf)
        (oid,) = _U32.unpack_from(buf, pos)
        namespace, pos = _cstring(buf, pos + 4)
        name, _ = _cstring(buf, pos)
        return TypeInfo(oid, namespace, name, xid)

    def _insert(self, buf: bytes) -> Insert:
        xid, pos = self._xid(buf)
        (relid,) = _U32.unpack_from(buf, pos)
        if buf[pos + 4] != 78:  # 'N'
            raise DecodeError(f"insert: expected 'N' at offset {pos + 4}")
        new, _ = read_tuple(buf, pos + 5)
        return Insert(relid, new, xid)

    def _update(self, buf: bytes) -> Update:
        xid, pos = self._xid(buf)
        (relid,) = _U32.unpack_from(buf, pos)
        pos += 4
        kind = buf[pos]
        old = old_kind = None
        if kind in (75, 79):  # 'K', 'O'
            old_kind = chr(kind)
            old, pos = read_tuple(buf, pos + 1)
            kind = buf[pos]
        if kind != 78:
            raise DecodeError(f"update: expected 'N' at offset {pos}")
        new, _ = read_tuple(buf, pos + 1)
        return Update(relid, new, old, old_kind, xid)

    def _delete(self, buf: bytes) -> Delete:
        xid, pos = self._xid(buf)
        (relid,) = _U32.unpack_from(buf, pos)
        kind = buf[pos + 4]
        if kind not in (75, 79):
            raise DecodeError(f"delete: expected 'K' or 'O' at offset {pos + 4}")
        old, _ = read_tuple(buf, pos + 5)
        return Delete(relid, old, chr(kind), xid)

    def _truncate(self, buf: bytes) -> Truncate:
        xid, pos = self._xid(buf)
        (n,) = _U32.unpack_from(buf, pos)
        opts = buf[pos + 4]
        relids = list(struct.unpack_from(f">{n}I", buf, pos + 5))
        return Truncate(relids, bool(opts & 1), bool(opts & 2), xid)

    def _message(self, buf: bytes) -> LogicalMessage:
        xid, pos = self._xid(buf)
        flags = buf[pos]
        (lsn,) = _U64.unpack_from(buf, pos + 1)
        prefix, pos = _cstring(buf, pos + 9)
        (ln,) = _U32.unpack_from(buf, pos)
        content = bytes(buf[pos + 4 : pos + 4 + ln])
        return LogicalMessage(bool(flags & 1), lsn, prefix, content, xid)

    def _stream_start(self, buf: bytes) -> StreamStart:
        (xid,) = _U32.unpack_from(buf, 1)
        self.in_stream = True
        return StreamStart(xid, buf[5] == 1)

    def _stream_stop(self, buf: bytes) -> StreamStop:
        self.in_stream = False
        return StreamStop()

    def _stream_commit(self, buf: bytes) -> StreamCommit:
        xid, flags, lsn, end, ts = _STREAM_COMMIT.unpack_from(buf, 1)
        return StreamCommit(xid, flags, lsn, end, pg_ts_to_unix_us(ts))

    def _stream_abort(self, buf: bytes) -> StreamAbort:
        xid, subxid = struct.unpack_from(">II", buf, 1)
        if len(buf) >= 25:  # protocol 4 with parallel streaming: abort LSN and time
            lsn, ts = struct.unpack_from(">Qq", buf, 9)
            return StreamAbort(xid, subxid, lsn, pg_ts_to_unix_us(ts))
        return StreamAbort(xid, subxid)

    def _begin_prepare(self, buf: bytes) -> BeginPrepare:
        lsn, end, ts, xid = struct.unpack_from(">QQqI", buf, 1)
        gid, _ = _cstring(buf, 29)
        return BeginPrepare(lsn, end, pg_ts_to_unix_us(ts), xid, gid)

    def _prepare(self, buf: bytes) -> Prepare:
        kind = chr(buf[0])
        flags = buf[1]
        if kind == "r":  # rollback prepared: prepare end lsn, rollback end lsn, prepare ts, rollback ts, xid
            lsn, end, pts, rts, xid = struct.unpack_from(">QQqqI", buf, 2)
            gid, _ = _cstring(buf, 38)
            return Prepare(kind, flags, lsn, end, pg_ts_to_unix_us(rts), xid, gid,
                           {"prepare_ts": pg_ts_to_unix_us(pts)})
        lsn, end, ts, xid = struct.unpack_from(">QQqI", buf, 2)
        gid, _ = _cstring(buf, 30)
        return Prepare(kind, flags, lsn, end, pg_ts_to_unix_us(ts), xid, gid)


_HANDLERS = {
    ord("B"): Decoder._begin,
    ord("C"): Decoder._commit,
    ord("O"): Decoder._origin,
    ord("R"): Decoder._relation,
    ord("Y"): Decoder._type,
    ord("I"): Decoder._insert,
    ord("U"): Decoder._update,
    ord("D"): Decoder._delete,
    ord("T"): Decoder._truncate,
    ord("M"): Decoder._message,
    ord("S"): Decoder._stream_start,
    ord("E"): Decoder._stream_stop,
    ord("c"): Decoder._stream_commit,
    ord("A"): Decoder._stream_abort,
    ord("b"): Decoder._begin_prepare,
    ord("P"): Decoder._prepare,
    ord("K"): Decoder._prepare,
    ord("r"): Decoder._prepare,
    ord("p"): Decoder._prepare,
}


# -- the replication stream's own framing (CopyData payloads) ----------------------------


@dataclass(slots=True)
class XLogData:
    start_lsn: int
    end_lsn: int
    send_time: int
    payload: bytes


@dataclass(slots=True)
class Keepalive:
    end_lsn: int
    send_time: int
    reply_requested: bool


def decode_copy_data(buf: bytes) -> XLogData | Keepalive:
    """Decode one CopyData payload of a START_REPLICATION stream ('w' or 'k')."""
    kind = buf[0]
    if kind == 119:  # 'w'
        start, end, ts = _XLOGDATA.unpack_from(buf, 1)
        return XLogData(start, end, ts, buf[25:])
    if kind == 107:  # 'k'
        end, ts, reply = _KEEPALIVE.unpack_from(buf, 1)
        return Keepalive(end, ts, reply == 1)
    raise DecodeError(f"unknown replication CopyData kind {chr(kind)!r}")


def standby_status(written: int, flushed: int, applied: int, now_pg_us: int, reply: bool = False) -> bytes:
    """A Standby Status Update ('r') message body."""
    return b"r" + struct.pack(">QQQqB", written, flushed, applied, now_pg_us, 1 if reply else 0)
