"""The source's heartbeat (source option ``heartbeat``): a little WAL in the source database while a slot is idle.

A slot moves on only as far as its client confirms, and a client confirms what the server reported as read. When
the published tables are quiet the walsender still reads the WAL other tables and databases write, and its
answers to the status updates wallaby asks for every ``status_interval`` report how far: the slot follows. The
heartbeat is for what that does not cover: a database whose own WAL is quiet for long stretches (a managed
server's maintenance, WAL written only by other databases on old servers) and destinations or monitors that want a
sign of life from the flow. While no change has come for ``heartbeat_interval`` (10s) the source's partition writes:

- ``message``: ``pg_logical_emit_message(false, 'wallaby_heartbeat', '<slot>')``: a non-transactional logical
  message; the source reads it like any WAL and passes nothing on (only transactional messages reach the
  destinations);
- ``table``: an upsert of the slot's row in ``heartbeat_table`` (default ``wallaby.heartbeat``: ``slot_name``,
  ``flow_id``, ``beat_at``; created when missing). Not in the flow's publication, it is WAL only; put it in the
  publication and its rows reach the destinations as changes (a heartbeat topic, as Debezium's).

A run-once worker (``-max-empty-reads``) does not beat: its WAL would never let the stream go quiet. A beat that
fails (permissions, a lost connection) is logged, naming the flow, and tried again at the next interval; it never
stops the flow.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from sources.postgres.connection import connect, quote_ident
from wallaby.core.errors import SourceError
from wallaby.state.shared_ddl import shared_ddl

log = logging.getLogger("wallaby.source")

MESSAGE_PREFIX = "wallaby_heartbeat"


class Heartbeat:
    """Beats for one slot (module docstring): :meth:`maybe` is called from the partition's poll loop."""

    def __init__(self, opts: Any, flow_id: str):
        self.opts = opts
        self.flow_id = flow_id
        self.mode = opts.heartbeat
        self.interval = opts.heartbeat_interval
        self.last = time.monotonic()
        self.beats = 0
        self.failures = 0
        self._conn: psycopg.Connection | None = None
        self._table_ready = False

    def maybe(self, idle_since: float, now: float | None = None) -> bool:
        """Beat when nothing has come (and no beat was written) for ``interval``; True when it beat."""
        now = time.monotonic() if now is None else now
        if now - max(idle_since, self.last) < self.interval:
            return False
        self.last = now
        try:
            self._beat()
        except (psycopg.Error, SourceError) as exc:
            self.failures += 1
            self.close()
            log.warning("source %s: heartbeat (%s) failed, trying again in %.0fs: %s", self.opts.slot, self.mode,
                        self.interval, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                        extra={"flow": self.flow_id})
            return False
        self.beats += 1
        if self.beats == 1:
            log.info("source %s: heartbeat (%s) every %gs while idle", self.opts.slot, self.mode, self.interval,
                     extra={"flow": self.flow_id})
        return True

    def _beat(self) -> None:
        if self._conn is None:
            self._conn = connect(self.opts.dsn, application_name=f"wallaby-heartbeat:{self.flow_id}")
        if self.mode == "message":
            self._conn.execute("SELECT pg_logical_emit_message(false, %s, %s)", (MESSAGE_PREFIX, self.opts.slot))
            return
        schema, _, name = self.opts.heartbeat_table.partition(".")
        table = f"{quote_ident(schema)}.{quote_ident(name)}"
        if not self._table_ready:
            with shared_ddl(self._conn):
                self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
                self._conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (slot_name text PRIMARY KEY,"
                                   " flow_id text NOT NULL, beat_at timestamptz NOT NULL)")
            self._table_ready = True
        self._conn.execute(f"INSERT INTO {table} (slot_name, flow_id, beat_at) VALUES (%s, %s, now())"
                           " ON CONFLICT (slot_name) DO UPDATE SET flow_id = EXCLUDED.flow_id, beat_at = now()",
                           (self.opts.slot, self.flow_id))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None
