"""The START_REPLICATION stream: a thin, non-blocking layer over libpq's COPY BOTH.

psycopg 3 has no replication API; we speak the walsender protocol with the
connection's ``pgconn``: ``get_copy_data(async_=1)`` for what has arrived,
``consume_input`` only when the socket is readable, ``put_copy_data`` +
``flush`` for standby status updates. Reading never blocks waiting for the
server; sending waits for the socket only while libpq cannot take or push out a
status update, and at most :data:`SEND_TIMEOUT`.

This is the only place that touches the socket: what to send and when is decided
by the I/O-free :mod:`sources.postgres.protocol`, and the reader thread
(:mod:`sources.postgres.reader`) carries its decisions out through this class.
"""

from __future__ import annotations

import logging
import select
import time

import psycopg
from psycopg import pq

from sources.postgres.connection import connect, connect_error, quote_ident, quote_literal, server_name
from sources.postgres.pgoutput import PG_EPOCH_OFFSET_US, standby_status
from sources.postgres.pgtypes import utf8_guaranteed
from sources.postgres.resolver import binary_blockers
from wallaby.core.changes import format_lsn
from wallaby.core.errors import SourceError, TerminalSourceError

log = logging.getLogger("wallaby.source")

# Upper bound of CopyData messages one read() returns: keeps a single
# next_batch call short (~10-20 ms) so bytewax can interleave epochs and sinks.
READ_CHUNK = 20_000
# How long send_status waits for libpq to take and push out one status update (34 bytes) while
# the socket takes nothing. Not measured: a socket that accepts no bytes for this long is a
# connection gone (the walsender reads replies even while it waits to write), and well inside
# wal_sender_timeout (60s by default), after which the server gives up on us anyway. The cure is a
# reconnect (StreamClosed), not a longer wait: the reader reads nothing while it waits here.
SEND_TIMEOUT = 10.0


# pgoutput takes the option ``binary`` from Postgres 14 (values in their types' send format, kind 'b').
BINARY_MIN_SERVER = 140000


def binary_choice(mode: str, server_version: int, blockers: list[str] | None, server: str = "") -> tuple[bool, str]:
    """(on, why) for the source option ``binary``: ``true``, ``false``, or ``auto`` (on when the server is 14 or
    later and ``blockers``, the published column types pgbinary does not decode, is empty).

    ``true`` on a server before 14 is a TerminalSourceError naming the option."""
    major = server_version // 10000
    if mode == "false":
        return False, "off (binary=false)"
    if server_version < BINARY_MIN_SERVER:
        if mode == "true":
            raise TerminalSourceError(f"the source option binary=true needs Postgres 14 or later (pgoutput's binary"
                                      f" option); {server or 'the server'} runs Postgres {major}: set binary=auto or"
                                      " binary=false", server=server)
        return False, f"off (Postgres {major} sends text only; binary needs 14 or later)"
    if mode == "true":
        return True, "on (binary=true)"
    if blockers:
        return False, ("off: published columns have types without a binary decoder (" + ", ".join(blockers[:10])
                       + (", ..." if len(blockers) > 10 else "") + "); binary=true would send those through the"
                       " server per batch")
    return True, "on (every published column's type decodes from binary)"


def binary_mode(option: str, keep_wal: bool, resolve_types: bool = True) -> str:
    """The source option ``binary`` as the stream asks for it: ``auto`` stays off when a destination takes the raw
    pgoutput messages (HTTP ``payload_mode=wal``), whose receivers read text values, and with ``resolve_types``
    off (custom types are then unknown to the decoders: each batch of them would go through the server);
    ``true`` is as asked."""
    return "false" if option == "auto" and (keep_wal or not resolve_types) else option


class StreamClosed(Exception):
    """The server ended the COPY (walsender gone, shutdown). Reconnect and resume."""


def now_pg_us() -> int:
    return int(time.time() * 1_000_000) - PG_EPOCH_OFFSET_US


class ReplicationStream:
    def __init__(self, dsn: str, slot: str, publication: str, proto_version: int, start_lsn: int,
                 flow_id: str, messages: bool = True, binary: str = "false"):
        self.dsn = dsn
        self.slot = slot
        self.server = server_name(dsn)
        self.send_timeout = SEND_TIMEOUT
        self.conn: psycopg.Connection | None = connect(dsn, replication=True, application_name=f"wallaby:{flow_id}")
        self.pgconn = self.conn.pgconn
        opts = [f"proto_version {quote_literal(str(proto_version))}",
                f"publication_names {quote_literal(quote_ident(publication))}"]
        if messages:
            opts.append("messages 'true'")
        if proto_version >= 2:
            opts.append("streaming 'off'")  # the server spills big transactions; we never hold them whole
        try:
            self.binary = self._binary(binary, publication, flow_id)
        except BaseException:
            self.close()
            raise
        if self.binary:
            opts.append("binary 'true'")  # values in their types' send format (sources/postgres/pgbinary.py)
        cmd = f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_lsn(start_lsn)} ({', '.join(opts)})"
        self.pgconn.send_query(cmd.encode())
        res = self.pgconn.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            sqlstate = res.error_field(pq.DiagnosticField.SQLSTATE) if res is not None else None
            message = (res.error_message.decode(errors="replace").strip() if res is not None else "no result")
            self.close()
            exc_cls = psycopg.errors.lookup(sqlstate.decode()) if sqlstate else psycopg.OperationalError
            exc = exc_cls(message)
            if sqlstate and sqlstate.decode() == "42704":  # undefined_object: slot or publication missing
                raise SourceError(f"cannot start replication from {self.server}: {message}", server=self.server)
            raise connect_error(dsn, exc, what="start replication on") from None
        self.sock = self.pgconn.socket
        enc = [self.pgconn.parameter_status(k) for k in (b"server_encoding", b"client_encoding")]
        self.utf8_valid = utf8_guaranteed(*(e.decode() if e else None for e in enc))

    def _binary(self, mode: str, publication: str, flow_id: str) -> bool:
        """Whether to ask for binary values (the source option ``binary``); ``auto`` asks the catalog."""
        version = self.pgconn.server_version
        blockers = None
        if mode == "auto" and version >= BINARY_MIN_SERVER:
            try:
                with connect(self.dsn, application_name=f"wallaby-types:{flow_id}") as conn:
                    blockers = binary_blockers(conn, [publication])
            except psycopg.Error as exc:
                raise connect_error(self.dsn, exc, what="read the published column types on") from None
        on, why = binary_choice(mode, version, blockers, self.server)
        log.info("source %s: binary=%s: %s", self.slot, mode, why, extra={"flow": flow_id})
        return on

    def read(self, limit: int = READ_CHUNK) -> list[memoryview]:
        """Every CopyData payload that has arrived, up to ``limit``. Never blocks.

        libpq keeps its socket non-blocking, so ``consume_input`` reads only what is there;
        we call it when libpq's buffer holds no complete message, and stop when a read
        brought nothing new.
        """
        out: list[memoryview] = []
        get = self.pgconn.get_copy_data
        consumed = False
        while len(out) < limit:
            n, data = get(1)
            if n > 0:
                out.append(data)
                consumed = False
                continue
            if n == 0:
                if consumed:
                    break
                self._consume()
                consumed = True
                continue
            if n == -1:
                res = self.pgconn.get_result()
                msg = res.error_message.decode(errors="replace").strip() if res is not None else ""
                raise StreamClosed(f"replication stream from {self.server} ended{': ' + msg if msg else ''}")
            raise StreamClosed(f"replication stream from {self.server} failed: "
                               f"{self.pgconn.get_error_message().strip()}")
        return out

    def _consume(self) -> None:
        try:
            self.pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise StreamClosed(f"lost the replication connection to {self.server}: {exc}") from None

    @classmethod
    def over(cls, pgconn: pq.abc.PGconn, server: str) -> ReplicationStream:
        """A stream over a ``pgconn`` already in COPY BOTH, with no connection of its own to close.

        What tests use to drive libpq's return codes through :meth:`send_status` without a server."""
        self = cls.__new__(cls)
        self.dsn = self.slot = ""
        self.server = server
        self.send_timeout = SEND_TIMEOUT
        self.conn = None
        self.pgconn = pgconn
        self.sock = pgconn.socket
        self.utf8_valid = False
        self.binary = False
        return self

    def send_status(self, written: int, flushed: int, applied: int, reply: bool = False) -> None:
        """Send one Standby Status Update and flush it out; :class:`StreamClosed` when libpq cannot.

        libpq's socket is non-blocking: ``put_copy_data`` returns 1 when the message is queued, 0 when its
        output buffer is full (wait until the socket is writable, then try again), -1 on error; ``flush``
        returns 0 when everything is sent, 1 when data remains (wait writable, flush again), -1 on error
        (psycopg raises OperationalError for the -1s). The waiting is bounded by ``send_timeout``.
        """
        pgconn = self.pgconn
        msg = standby_status(written, flushed, applied, now_pg_us(), reply)
        deadline: float | None = None
        try:
            while (rv := pgconn.put_copy_data(msg)) != 1:
                if rv < 0:
                    raise StreamClosed(self._send_failed(pgconn.get_error_message()))
                deadline = self._wait_writable(deadline, "queue")
            while (rv := pgconn.flush()) != 0:
                if rv < 0:
                    raise StreamClosed(self._send_failed(pgconn.get_error_message()))
                deadline = self._wait_writable(deadline, "flush")
        except psycopg.OperationalError as exc:
            raise StreamClosed(f"lost the replication connection to {self.server}: {exc}") from None

    def _send_failed(self, why: str) -> str:
        why = why.strip()
        return f"cannot send a status update to {self.server}{': ' + why if why else ''}"

    def _wait_writable(self, deadline: float | None, what: str) -> float:
        """Wait until the socket takes data again, or raise StreamClosed once ``send_timeout`` has passed."""
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.send_timeout
        if now >= deadline:
            raise StreamClosed(self._send_failed(f"libpq could not {what} it for {self.send_timeout:g}s"
                                                 " (the connection takes no data)"))
        select.select([], [self.sock], [], deadline - now)
        return deadline

    def wait_readable(self, timeout: float) -> bool:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def close(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.close()
        except Exception:
            pass
