"""The source-state table (``state_schema``.``state_table``, default ``wallaby.source_state``): which flow owns
which slot, and the slot's identity.

A slot feeds one consumer: the row of a slot names the one flow that owns it,
and a second flow naming the slot is refused (both flow ids named). The row
also keeps the slot's identity (``slot_id``), set when wallaby creates the slot
(its consistent point and a random tag) or first adopts an existing one; Postgres
keeps no such thing itself, and it is what tells a slot dropped and created
again from the slot a position was read from (:mod:`wallaby.core.identity`).

Tables of earlier wallaby versions are upgraded in place (new columns added,
one owner per slot enforced once no slot has two rows). A table of the same
name with another layout (the Go WALlaby uses the same default names, with
``id``/``publication_name``/``state`` columns) is adopted when every column
wallaby needs can be mapped and every other required column has a default or
a known value; otherwise one error names ``state_table``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import psycopg

from sources.postgres.connection import quote_ident, server_name
from wallaby.core.changes import format_lsn
from wallaby.core.errors import TerminalSourceError

log = logging.getLogger("wallaby.source")


@dataclass(frozen=True)
class Layout:
    """How a source-state table names the columns wallaby uses."""

    flow: str  # the owning flow's id
    publication: str
    fixed: tuple[tuple[str, str], ...] = ()  # required columns of a foreign layout and the value wallaby writes


OURS = Layout("flow_id", "publication")
GO_WALLABY = Layout("id", "publication_name", (("state", "running"),))


@dataclass(frozen=True)
class SlotRow:
    flow_id: str
    slot_id: str | None


def _table(opts) -> str:
    return f"{quote_ident(opts.state_schema)}.{quote_ident(opts.state_table)}"


def _columns(conn: psycopg.Connection, opts) -> dict[str, tuple[bool, bool]] | None:
    """column -> (NOT NULL, has default) of the state table, or None when it does not exist."""
    rows = conn.execute(
        "SELECT a.attname, a.attnotnull, a.atthasdef FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0"
        " AND NOT a.attisdropped", (opts.state_schema, opts.state_table)).fetchall()
    return {r[0]: (bool(r[1]), bool(r[2])) for r in rows} or None


def _layout(cols: dict[str, tuple[bool, bool]], opts, server: str) -> Layout:
    for layout in (OURS, GO_WALLABY):
        needed = {layout.flow, "slot_name", layout.publication, *(c for c, _ in layout.fixed)}
        if not needed <= set(cols):
            continue
        known = needed | {"slot_id", "system_id", "created_at", "last_started_at", "confirmed_lsn", "updated_at"}
        blocking = sorted(c for c, (notnull, hasdef) in cols.items() if notnull and not hasdef and c not in known)
        if not blocking:
            return layout
    raise TerminalSourceError(
        f"state_table {opts.state_schema}.{opts.state_table} in {server} exists with columns"
        f" ({', '.join(sorted(cols))}) that wallaby cannot use: it needs flow_id (or id), slot_name and publication"
        " (or publication_name), and no other required column without a default. Set state_table (and state_schema)"
        " to a table of wallaby's own, or ensure_state=false", server=server)


def read_slot_rows(conn: psycopg.Connection, opts) -> list[SlotRow]:
    """The rows recorded for ``opts.slot`` (none: no table, or no row). Creates nothing."""
    cols = _columns(conn, opts)
    if cols is None or "slot_name" not in cols:
        return []
    layout = _layout(cols, opts, server_name(opts.dsn))
    slot_id = "slot_id" if "slot_id" in cols else "NULL"
    rows = conn.execute(f"SELECT {quote_ident(layout.flow)}, {slot_id} FROM {_table(opts)} WHERE slot_name = %s",
                        (opts.slot,)).fetchall()
    return [SlotRow(r[0], r[1]) for r in rows]


def slot_id_of(rows: list[SlotRow], flow_id: str) -> str | None:
    return next((r.slot_id for r in rows if r.flow_id == flow_id), None)


def owner_problem(rows: list[SlotRow], flow_id: str, opts) -> str | None:
    """Why ``flow_id`` may not use ``opts.slot`` (another flow owns it), or None."""
    other = next((r.flow_id for r in rows if r.flow_id != flow_id), None)
    if other is None:
        return None
    table = f"{opts.state_schema}.{opts.state_table}"
    return (f"replication slot {opts.slot!r} belongs to flow {other!r} (recorded in {table}); flow {flow_id!r}"
            " cannot read it too: a slot feeds one consumer, and two flows on one slot each lose what the other"
            f" confirms. Give this flow its own slot (source option slot), or clean up flow {other!r} first"
            f" (wallaby-admin flow cleanup -flow-id {other} -drop-source-state, or DELETE FROM {table}"
            f" WHERE slot_name = '{opts.slot}' once it is gone)")


def new_slot_id(consistent_point: int | None) -> str:
    """An identity for a slot wallaby just created (or adopts): unique per creation."""
    at = format_lsn(consistent_point) if consistent_point is not None else "adopted"
    return f"{uuid.uuid4().hex[:12]}@{at}"


def ensure_state_table(conn: psycopg.Connection, opts) -> Layout:
    """Create or upgrade the table (DDL: run it before the slot exists, so the DDL capture trigger's messages for
    it are not in the slot's stream)."""
    server = server_name(opts.dsn)
    schema, table = quote_ident(opts.state_schema), quote_ident(opts.state_table)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.{table} ("
        " flow_id text NOT NULL, slot_name text NOT NULL, publication text NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(), last_started_at timestamptz,"
        " confirmed_lsn pg_lsn, updated_at timestamptz NOT NULL DEFAULT now(),"
        " slot_id text, system_id text, PRIMARY KEY (flow_id, slot_name))"
    )
    cols = _columns(conn, opts) or {}
    layout = _layout(cols, opts, server)
    for col in ("slot_id", "system_id", "last_started_at", "updated_at"):
        if col not in cols:
            kind = "timestamptz" if col.endswith("_at") else "text"
            conn.execute(f"ALTER TABLE {schema}.{table} ADD COLUMN IF NOT EXISTS {quote_ident(col)} {kind}")
    _ensure_one_owner_index(conn, opts, server)
    return layout


def ensure_state(conn: psycopg.Connection, opts, flow_id: str, slot_id: str, system_id: str,
                 layout: Layout | None = None) -> None:
    """Record ``flow_id`` as the owner of ``opts.slot`` with ``slot_id`` (the table made first if needed)."""
    layout = layout or ensure_state_table(conn, opts)
    schema, table = quote_ident(opts.state_schema), quote_ident(opts.state_table)
    flow_col, pub_col = quote_ident(layout.flow), quote_ident(layout.publication)
    fixed_cols = "".join(f", {quote_ident(c)}" for c, _ in layout.fixed)
    fixed_vals = [v for _, v in layout.fixed]
    with conn.transaction():
        # one owner per slot: rows of other flows for this slot are what owner_problem refused; rows of this
        # flow for it are replaced by one
        conn.execute(f"DELETE FROM {schema}.{table} WHERE slot_name = %s AND {flow_col} = %s",
                     (opts.slot, opts.flow_id or flow_id))
        conn.execute(
            f"INSERT INTO {schema}.{table} ({flow_col}, slot_name, {pub_col}, slot_id, system_id, last_started_at,"
            f" updated_at{fixed_cols}) VALUES (%s, %s, %s, %s, %s, now(), now(){', %s' * len(fixed_vals)})",
            (opts.flow_id or flow_id, opts.slot, opts.publication, slot_id, system_id, *fixed_vals),
        )


def _ensure_one_owner_index(conn: psycopg.Connection, opts, server: str) -> None:
    """A unique index on slot_name, once the table has at most one row per slot (older versions allowed more)."""
    name = f"{opts.state_table}_one_owner_per_slot"
    exists = conn.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                          (opts.state_schema, name)).fetchone()
    if exists:
        return
    try:
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {quote_ident(name)} ON {_table(opts)} (slot_name)")
    except psycopg.errors.UniqueViolation:
        shared = conn.execute(f"SELECT slot_name FROM {_table(opts)} GROUP BY slot_name HAVING count(*) > 1"
                              " ORDER BY 1").fetchall()
        log.warning("%s.%s in %s records more than one flow for slot(s) %s (written by an earlier version);"
                    " each of those flows is refused until one of them is cleaned up", opts.state_schema,
                    opts.state_table, server, ", ".join(r[0] for r in shared))
