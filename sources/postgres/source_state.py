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
name with another layout is adopted when every column wallaby needs can be
mapped and every other required column has a default or a known value;
otherwise one error names ``state_table``.

The Go WALlaby's table (same default name, ``wallaby.source_state``, with
``id``/``source_name``/``publication_name``/``state``/``options``/``last_lsn``
columns) is shared with it, so a database that ran the Go build works with
wallaby, and the Go build keeps working on it (a rollback, or Go flows and
wallaby flows side by side):

- wallaby adds its nullable columns (``slot_id``, ``system_id``,
  ``last_started_at``), which the Go build never names;
- a row the Go build wrote (no ``slot_id``) is its record of a slot, keyed by
  its source-state id (the flow id, or the source's name, or the slot), not a
  claim by another wallaby flow: a wallaby flow taking over that slot (after
  ``wallaby-admin migrate go-wallaby``) is not refused by it, and leaves it as it
  is (a warning when it says the Go worker is ``running``: two consumers of one
  slot each lose what the other confirms);
- one owner per slot is enforced among wallaby's rows only (a unique index on
  ``slot_name`` where ``slot_id`` is set), so the Go build's upserts never meet it;
- ``id`` being the table's key, a wallaby flow's row replaces a Go row of the
  same id (the Go build upserts it again by that id if it runs again), and a
  flow of several slots keys its other slots' rows ``<flow id>#<slot>``.

:func:`delete_state` forgets a flow's rows in either layout (the Go build's rows
are left alone).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import psycopg

from sources.postgres.connection import quote_ident, server_name
from wallaby.core.changes import format_lsn
from wallaby.core.errors import TerminalSourceError
from wallaby.state.shared_ddl import shared_ddl

log = logging.getLogger("wallaby.source")


@dataclass(frozen=True)
class Layout:
    """How a source-state table names the columns wallaby uses."""

    flow: str  # the owning flow's id
    publication: str
    fixed: tuple[tuple[str, str], ...] = ()  # required columns of a foreign layout and the value wallaby writes
    shared: bool = False  # another program (the Go WALlaby) writes rows too: its rows (no slot_id) claim nothing


OURS = Layout("flow_id", "publication")
GO_WALLABY = Layout("id", "publication_name", (("state", "running"),), shared=True)


@dataclass(frozen=True)
class SlotRow:
    flow_id: str
    slot_id: str | None
    foreign: bool = False  # written by the Go WALlaby (its source-state id in flow_id): not a wallaby owner
    state: str | None = None  # the Go WALlaby's state of it (running, stopped, dropped), when foreign


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
    state = "state::text" if layout.shared and "state" in cols else "NULL"
    rows = conn.execute(f"SELECT {quote_ident(layout.flow)}, {slot_id}, {state} FROM {_table(opts)}"
                        " WHERE slot_name = %s", (opts.slot,)).fetchall()
    suffix = f"{SLOT_KEY_SEP}{opts.slot}"
    return [SlotRow(r[0].removesuffix(suffix) if r[1] is not None else r[0], r[1],
                    foreign=layout.shared and r[1] is None, state=r[2]) for r in rows]


def slot_id_of(rows: list[SlotRow], flow_id: str) -> str | None:
    return next((r.slot_id for r in rows if r.flow_id == flow_id), None)


def owner_problem(rows: list[SlotRow], flow_id: str, opts) -> str | None:
    """Why ``flow_id`` may not use ``opts.slot`` (another wallaby flow owns it), or None. Rows of the Go WALlaby
    are no claim (see the module's docstring)."""
    other = next((r.flow_id for r in rows if r.flow_id != flow_id and not r.foreign), None)
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
    it are not in the slot's stream). Under the database's lock for wallaby's DDL: flows that start at once create
    it once."""
    server = server_name(opts.dsn)
    schema, table = quote_ident(opts.state_schema), quote_ident(opts.state_table)
    with shared_ddl(conn):
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
        _ensure_one_owner_index(conn, opts, server, layout)
    return layout


def ensure_state(conn: psycopg.Connection, opts, flow_id: str, slot_id: str, system_id: str,
                 layout: Layout | None = None) -> None:
    """Record ``flow_id`` as the owner of ``opts.slot`` with ``slot_id`` (the table made first if needed)."""
    layout = layout or ensure_state_table(conn, opts)
    schema, table = quote_ident(opts.state_schema), quote_ident(opts.state_table)
    flow_col, pub_col = quote_ident(layout.flow), quote_ident(layout.publication)
    fixed_cols = "".join(f", {quote_ident(c)}" for c, _ in layout.fixed)
    fixed_vals = [v for _, v in layout.fixed]
    owner = opts.flow_id or flow_id
    with conn.transaction():
        if layout.shared:
            key = _shared_key(conn, opts, layout, owner)
            _note_go_rows(conn, opts, layout, key)
            # the flow column is the table's key: this flow's row for the slot, or a Go row of the same id
            conn.execute(f"DELETE FROM {schema}.{table} WHERE {flow_col} = %s", (key,))
        else:
            # one owner per slot: rows of other flows for this slot are what owner_problem refused; rows of this
            # flow for it are replaced by one
            key = owner
            conn.execute(f"DELETE FROM {schema}.{table} WHERE slot_name = %s AND {flow_col} = %s", (opts.slot, key))
        conn.execute(
            f"INSERT INTO {schema}.{table} ({flow_col}, slot_name, {pub_col}, slot_id, system_id, last_started_at,"
            f" updated_at{fixed_cols}) VALUES (%s, %s, %s, %s, %s, now(), now(){', %s' * len(fixed_vals)})",
            (key, opts.slot, opts.publication, slot_id, system_id, *fixed_vals),
        )


def delete_state(conn: psycopg.Connection, opts, flow_id: str) -> int:
    """Forget every slot ``flow_id`` owns (its rows; in a table shared with the Go WALlaby, the Go build's own
    rows are left alone). The number of rows deleted; 0 when there is no table."""
    cols = _columns(conn, opts)
    if cols is None:
        return 0
    layout = _layout(cols, opts, server_name(opts.dsn))
    flow_col = quote_ident(layout.flow)
    if layout.shared:
        sql = (f"DELETE FROM {_table(opts)} WHERE slot_id IS NOT NULL AND ({flow_col} = %s"
               f" OR starts_with({flow_col}, %s))")
        params: tuple = (flow_id, flow_id + SLOT_KEY_SEP)
    else:
        sql, params = f"DELETE FROM {_table(opts)} WHERE {flow_col} = %s", (flow_id,)
    return conn.execute(sql, params).rowcount


# In a table keyed by the flow column (the Go WALlaby's), a flow of several slots keys the rows of its other slots
# ``<flow id>#<slot>`` ('#' is in no flow id).
SLOT_KEY_SEP = "#"


def _shared_key(conn: psycopg.Connection, opts, layout: Layout, owner: str) -> str:
    """The key of ``owner``'s row for ``opts.slot`` in a table keyed by the flow column: the one it has, else the
    flow id, unless a wallaby row of the flow id holds another slot (a flow of several slots)."""
    col = quote_ident(layout.flow)
    mine = f"{owner}{SLOT_KEY_SEP}{opts.slot}"
    rows = dict(conn.execute(f"SELECT {col}, slot_name FROM {_table(opts)} WHERE slot_id IS NOT NULL"
                             f" AND {col} IN (%s, %s)", (owner, mine)).fetchall())
    if rows.get(owner) == opts.slot or mine in rows:
        return owner if rows.get(owner) == opts.slot else mine
    return mine if owner in rows else owner


def _note_go_rows(conn: psycopg.Connection, opts, layout: Layout, owner: str) -> None:
    """Log the Go WALlaby's rows this flow takes over (its row for the slot, another slot's row of this key)."""
    rows = conn.execute(
        f"SELECT {quote_ident(layout.flow)}, slot_name, state::text, last_lsn::text FROM {_table(opts)}"
        f" WHERE slot_id IS NULL AND (slot_name = %s OR {quote_ident(layout.flow)} = %s)", (opts.slot, owner)
    ).fetchall() if {"state", "last_lsn"} <= set(_columns(conn, opts) or {}) else []
    table = f"{opts.state_schema}.{opts.state_table}"
    for go_id, slot, state, last_lsn in rows:
        if slot != opts.slot:
            log.warning("flow %s: %s had a row of the Go WALlaby with id %r for slot %r; it is replaced by this"
                        " flow's row for slot %r (the id is the table's key)", owner, table, go_id, slot, opts.slot,
                        extra={"flow": owner})
        elif state == "running":
            log.warning("flow %s: taking over replication slot %r, which the Go WALlaby's row %r in %s says is"
                        " running (last acknowledged %s): make sure its worker is stopped; two consumers of one"
                        " slot each lose what the other confirms", owner, slot, go_id, table, last_lsn or "never",
                        extra={"flow": owner})
        else:
            log.info("flow %s: taking over replication slot %r from the Go WALlaby (its row %r in %s: %s, last"
                     " acknowledged %s)", owner, slot, go_id, table, state, last_lsn or "never",
                     extra={"flow": owner})


def _ensure_one_owner_index(conn: psycopg.Connection, opts, server: str, layout: Layout = OURS) -> None:
    """A unique index on slot_name, once the table has at most one row per slot (older versions allowed more).
    In a table shared with the Go WALlaby, over wallaby's rows only (``slot_id`` set); an index over every row
    (made there by an earlier version) is replaced, since it fails the Go build's upserts."""
    name = f"{opts.state_table}_one_owner_per_slot"
    partial = " WHERE slot_id IS NOT NULL" if layout.shared else ""
    found = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                         (opts.state_schema, name)).fetchone()
    if found and (not partial or "WHERE" in found[0].upper()):
        return
    if found:
        conn.execute(f"DROP INDEX IF EXISTS {quote_ident(opts.state_schema)}.{quote_ident(name)}")
    try:
        with conn.transaction():  # a savepoint: the caller's transaction goes on without the index
            conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {quote_ident(name)} ON {_table(opts)}"
                         f" (slot_name){partial}")
    except psycopg.errors.UniqueViolation:
        shared = conn.execute(f"SELECT slot_name FROM {_table(opts)}{partial} GROUP BY slot_name"
                              " HAVING count(*) > 1 ORDER BY 1").fetchall()
        log.warning("%s.%s in %s records more than one flow for slot(s) %s (written by an earlier version);"
                    " each of those flows is refused until one of them is cleaned up", opts.state_schema,
                    opts.state_table, server, ", ".join(r[0] for r in shared))
