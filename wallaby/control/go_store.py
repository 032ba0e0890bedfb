"""Reading the Go WALlaby's flow store and checkpoints, read-only.

The Go build keeps them in the Postgres of its ``WALLABY_POSTGRES_DSN``, in tables of its search path (its
migrations ``internal/workflow/migrations`` and ``internal/checkpoint/migrations``):

- ``flows (id, name, source jsonb, destinations jsonb, state, created_at, updated_at)``, with ``wire_format``,
  ``parallelism`` (002) and ``config jsonb`` (003) added later;
- ``flow_state_events (id, flow_id, from_state, to_state, reason, created_at)``;
- ``checkpoints (flow_id, lsn text, metadata jsonb, updated_at)``: the LSN of the last change its runner delivered
  to every destination and acknowledged to the slot.

Everything is read in one read-only transaction: nothing is ever written to the Go build's database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from wallaby.core.errors import ConfigError, FieldProblem, redact_dsn


@dataclass(frozen=True)
class GoEvent:
    from_state: str | None
    to_state: str
    reason: str | None
    at: datetime | None


@dataclass(frozen=True)
class GoCheckpoint:
    lsn: str
    metadata: dict[str, Any]
    updated_at: datetime | None


@dataclass
class GoFlow:
    """One row of the Go build's ``flows``, with its state events (oldest first) and its checkpoint."""

    id: str
    name: str
    source: Any
    destinations: Any
    state: str
    wire_format: str | None = None
    parallelism: int | None = None
    config: Any = None
    events: list[GoEvent] = field(default_factory=list)
    checkpoint: GoCheckpoint | None = None


@dataclass
class GoStore:
    flows: list[GoFlow]
    has_checkpoints: bool  # the checkpoints table exists (the Go build may keep them in SQLite instead)


def _columns(conn: psycopg.Connection, table: str) -> set[str] | None:
    """The columns of ``table`` as the search path finds it, or None when there is none."""
    oid = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()[0]
    if oid is None:
        return None
    return {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
                                       " AND NOT attisdropped", (oid,)).fetchall()}


def read_go_store(dsn: str) -> GoStore:
    """The Go build's flows, their events and checkpoints. :class:`ConfigError` naming ``-dsn`` when the database
    cannot be reached or holds no Go flow store."""
    shown = redact_dsn(dsn)
    try:
        conn = psycopg.connect(dsn, application_name="wallaby-migrate-go")
    except psycopg.Error as exc:
        raise ConfigError("wallaby-admin migrate go-wallaby", [FieldProblem(
            "-dsn", f"cannot connect to the Go build's Postgres: {redact_dsn(str(exc).strip())}")]) from None
    with conn:
        conn.read_only = True  # the Go build's tables are only read
        try:
            return _read(conn, shown)
        except psycopg.Error as exc:
            raise ConfigError("wallaby-admin migrate go-wallaby", [FieldProblem(
                "-dsn", f"cannot read the Go build's flow store in {shown}: {redact_dsn(str(exc).strip())}")]) \
                from None


def _read(conn: psycopg.Connection, shown: str) -> GoStore:
    cols = _columns(conn, "flows")
    if cols is None or not {"id", "name", "source", "destinations", "state"} <= cols:
        found = "no table flows" if cols is None else f"a table flows with columns {', '.join(sorted(cols))}"
        raise ConfigError("wallaby-admin migrate go-wallaby", [FieldProblem(
            "-dsn", f"{shown} holds no Go WALlaby flow store ({found}): give the Postgres of the Go build's"
                    " WALLABY_POSTGRES_DSN (its flows, flow_state_events and checkpoints tables)")])
    optional = [c for c in ("wire_format", "parallelism", "config") if c in cols]
    select = ", ".join(["id", "name", "source", "destinations", "state", *optional])
    order = "created_at, id" if "created_at" in cols else "id"
    flows: list[GoFlow] = []
    for row in conn.execute(f"SELECT {select} FROM flows ORDER BY {order}").fetchall():
        extra = dict(zip(optional, row[5:], strict=True))
        flows.append(GoFlow(str(row[0]), str(row[1]), row[2], row[3], str(row[4]), extra.get("wire_format"),
                            extra.get("parallelism"), extra.get("config")))
    by_id = {f.id: f for f in flows}
    if _columns(conn, "flow_state_events") is not None:
        for fid, frm, to, reason, at in conn.execute(
                "SELECT flow_id, from_state, to_state, reason, created_at FROM flow_state_events ORDER BY id"):
            if fid in by_id:
                by_id[fid].events.append(GoEvent(frm, to, reason, at))
    has_checkpoints = _columns(conn, "checkpoints") is not None
    if has_checkpoints:
        for fid, lsn, metadata, at in conn.execute("SELECT flow_id, lsn, metadata, updated_at FROM checkpoints"):
            if fid in by_id and lsn:
                by_id[fid].checkpoint = GoCheckpoint(str(lsn), dict(metadata or {}), at)
    return GoStore(flows, has_checkpoints)
