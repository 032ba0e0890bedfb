"""The START_REPLICATION stream: a thin, non-blocking layer over libpq's COPY BOTH.

psycopg 3 has no replication API; we speak the walsender protocol with the
connection's ``pgconn``: ``get_copy_data(async_=1)`` for what has arrived,
``consume_input`` only when the socket is readable, ``put_copy_data`` +
``flush`` for standby status updates. Nothing here ever blocks waiting for the
server, so bytewax's ``next_batch`` can call :meth:`ReplicationStream.read`.
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
from wallaby.core.changes import format_lsn
from wallaby.core.errors import SourceError

log = logging.getLogger("wallaby.source")

# Upper bound of CopyData messages one read() returns: keeps a single
# next_batch call short (~10-20 ms) so bytewax can interleave epochs and sinks.
READ_CHUNK = 20_000


class StreamClosed(Exception):
    """The server ended the COPY (walsender gone, shutdown). Reconnect and resume."""


def now_pg_us() -> int:
    return int(time.time() * 1_000_000) - PG_EPOCH_OFFSET_US


class ReplicationStream:
    def __init__(self, dsn: str, slot: str, publication: str, proto_version: int, start_lsn: int,
                 flow_id: str, messages: bool = True):
        self.dsn = dsn
        self.server = server_name(dsn)
        self.slot = slot
        self.conn = connect(dsn, replication=True, application_name=f"wallaby:{flow_id}")
        self.pgconn = self.conn.pgconn
        opts = [f"proto_version {quote_literal(str(proto_version))}",
                f"publication_names {quote_literal(quote_ident(publication))}"]
        if messages:
            opts.append("messages 'true'")
        if proto_version >= 2:
            opts.append("streaming 'off'")  # the server spills big transactions; we never hold them whole
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

    def send_status(self, written: int, flushed: int, applied: int, reply: bool = False) -> None:
        try:
            self.pgconn.put_copy_data(standby_status(written, flushed, applied, now_pg_us(), reply))
            self.pgconn.flush()
        except psycopg.OperationalError as exc:
            raise StreamClosed(f"lost the replication connection to {self.server}: {exc}") from None

    def wait_readable(self, timeout: float) -> bool:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass
