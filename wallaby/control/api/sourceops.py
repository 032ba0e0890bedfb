"""Slot and publication management on a flow's source database (the FlowService slot/publication calls)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from sources.postgres.connection import connect, quote_ident, server_name
from sources.postgres.setup import _publication_tables, _schema_tables, qualified_table, split_table, sync_publication
from sources.postgres.source_state import delete_state
from wallaby.core.errors import ConfigError, FieldProblem, IllegalStateError, NotFoundError, SourceError


@dataclass
class SlotInfo:
    slot_name: str
    plugin: str
    slot_type: str
    database: str
    active: bool
    active_pid: int | None
    temporary: bool
    wal_status: str
    restart_lsn: str
    confirmed_flush_lsn: str


def _conn(dsn: str, flow_id: str) -> psycopg.Connection:
    return connect(dsn, application_name=f"wallaby-api:{flow_id}")


def list_slots(dsn: str, flow_id: str = "", slot: str | None = None) -> list[SlotInfo]:
    sql = ("SELECT slot_name, coalesce(plugin, ''), slot_type, coalesce(database, ''), active, active_pid, temporary,"
           " coalesce(wal_status, ''), coalesce(restart_lsn::text, ''), coalesce(confirmed_flush_lsn::text, '')"
           " FROM pg_replication_slots")
    with _conn(dsn, flow_id) as conn:
        rows = conn.execute(sql + (" WHERE slot_name = %s" if slot else "") + " ORDER BY slot_name",
                            (slot,) if slot else ()).fetchall()
    return [SlotInfo(*r) for r in rows]


def get_slot(dsn: str, slot: str, flow_id: str = "") -> SlotInfo:
    found = list_slots(dsn, flow_id, slot)
    if not found:
        raise NotFoundError(f"no replication slot {slot!r} in {server_name(dsn)}")
    return found[0]


def drop_slot(dsn: str, slot: str, if_exists: bool, flow_id: str = "") -> tuple[bool, bool]:
    """(found, dropped). An active slot is not dropped: stop the flow first."""
    with _conn(dsn, flow_id) as conn:
        row = conn.execute("SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
        if row is None:
            if if_exists:
                return False, False
            raise NotFoundError(f"no replication slot {slot!r} in {server_name(dsn)} (if_exists=true ignores this)")
        if row[0]:
            raise IllegalStateError(f"replication slot {slot!r} is in use by process {row[1]}; stop its flow first")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return True, True


def publication_tables(dsn: str, publication: str, flow_id: str = "") -> list[str]:
    with _conn(dsn, flow_id) as conn:
        _require_publication(conn, dsn, publication)
        return sorted(_publication_tables(conn, publication))


def _require_publication(conn: psycopg.Connection, dsn: str, publication: str) -> None:
    if not conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone():
        raise NotFoundError(f"no publication {publication!r} in {server_name(dsn)}")


def _normalize(conn: psycopg.Connection, dsn: str, tables: list[str], field: str = "tables") -> list[str]:
    """schema.table names of tables that exist; a ConfigError naming every one that does not."""
    names = [".".join(split_table(t.strip())) for t in tables if t.strip()]
    missing = [t for t in names if conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", split_table(t)).fetchone() is None]
    if missing:
        raise ConfigError("publication tables", [FieldProblem(
            field, f"no such table in {server_name(dsn)}: {', '.join(missing)}")])
    return names


def add_tables(dsn: str, publication: str, tables: list[str], flow_id: str = "") -> list[str]:
    with _conn(dsn, flow_id) as conn:
        _require_publication(conn, dsn, publication)
        sync_publication(conn, publication, _normalize(conn, dsn, tables), "add", flow_id)
        return sorted(_publication_tables(conn, publication))


def drop_tables(dsn: str, publication: str, tables: list[str], flow_id: str = "") -> list[str]:
    with _conn(dsn, flow_id) as conn:
        _require_publication(conn, dsn, publication)
        current = _publication_tables(conn, publication)
        for t in [".".join(split_table(t.strip())) for t in tables if t.strip()]:
            if t in current:
                conn.execute(f"ALTER PUBLICATION {quote_ident(publication)} DROP TABLE {qualified_table(t)}")
        return sorted(_publication_tables(conn, publication))


def sync_tables(dsn: str, publication: str, tables: list[str], schemas: list[str], mode: str,
                flow_id: str = "") -> tuple[list[str], list[str]]:
    """Add ``tables`` and the tables of ``schemas``; with mode ``sync`` drop the others. (added, removed)."""
    if mode not in ("add", "sync"):
        raise ConfigError("publication sync", [FieldProblem("mode", f"expected 'add' or 'sync', got {mode!r}")])
    with _conn(dsn, flow_id) as conn:
        _require_publication(conn, dsn, publication)
        wanted = _normalize(conn, dsn, tables) + (_schema_tables(conn, schemas) if schemas else [])
        if not wanted and mode == "sync":
            raise ConfigError("publication sync", [FieldProblem(
                "tables", "mode 'sync' with no tables or schemas would empty the publication; name what to keep")])
        before = _publication_tables(conn, publication)
        sync_publication(conn, publication, wanted, mode, flow_id)
        after = _publication_tables(conn, publication)
    return sorted(after - before), sorted(before - after)


def scrape_tables(dsn: str, publication: str, schemas: list[str], apply: bool,
                  flow_id: str = "") -> tuple[list[str], list[str], bool]:
    """The tables of ``schemas`` and those of them not in the publication; ``apply`` adds those."""
    if not schemas:
        raise ConfigError("publication scrape", [FieldProblem("schemas", "name at least one schema")])
    with _conn(dsn, flow_id) as conn:
        _require_publication(conn, dsn, publication)
        found = _schema_tables(conn, schemas)
        missing = sorted(set(found) - _publication_tables(conn, publication))
        if apply and missing:
            sync_publication(conn, publication, missing, "add", flow_id)
    return found, missing, bool(apply and missing)


def cleanup(opts, flow_id: str, *, slot: bool, publication: bool, state: bool) -> list[str]:
    """Drop what a flow created on its source. What was done, as words."""
    done: list[str] = []
    views = opts.slot_views()  # a flow of several slots (source option slots): each slot and publication
    if slot:
        for view in views:
            found, _ = drop_slot(view.dsn, view.slot, True, flow_id)
            if found:
                done.append(f"dropped slot {view.slot}")
    with _conn(opts.dsn, flow_id) as conn:
        for view in views:
            if publication and conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                                            (view.publication,)).fetchone():
                conn.execute(f"DROP PUBLICATION {quote_ident(view.publication)}")
                done.append(f"dropped publication {view.publication}")
        if state:
            try:  # the flow's rows only (in a table shared with the Go WALlaby, its rows stay)
                if delete_state(conn, opts, opts.flow_id or flow_id):
                    done.append("cleared source state")
            except psycopg.Error as exc:
                raise SourceError(f"cannot clear the source state of flow {flow_id!r}: {exc}",
                                  server=server_name(opts.dsn)) from None
    return done
