"""Preparing a source database: validation, publication, slot and source-state table.

``prepare_source`` checks everything first and only then creates anything, so
a bad setting (``wal_level``, a missing publication with
``ensure_publication=false``, a table that does not exist) leaves the database
as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from sources.postgres.connection import connect, quote_ident, quote_literal, server_name, simple_query
from sources.postgres.ddl_capture import install_ddl_capture
from sources.postgres.rds_iam import register
from sources.postgres.source_state import (
    ensure_state,
    ensure_state_table,
    new_slot_id,
    owner_problem,
    read_slot_rows,
    slot_id_of,
)
from wallaby.core.changes import parse_lsn
from wallaby.core.errors import SourceError, TerminalSourceError, TransientSourceError, is_transient

log = logging.getLogger("wallaby.source")


@dataclass
class SourcePlan:
    """What ``prepare_source`` found and did."""

    server_version: int
    proto_version: int
    slot_created: bool = False
    publication_created: bool = False
    confirmed_flush: int | None = None
    restart_lsn: int | None = None
    slot_id: str | None = None  # the slot's identity (source-state table); None with ensure_state=false
    snapshot: ExportedSnapshot | None = None  # prepare_source(export=True) and the slot was created now


def proto_version_for(server_version: int) -> int:
    """Highest pgoutput protocol the server speaks: 4 from PG16, 3 on 15, 2 on 14, else 1."""
    if server_version >= 160000:
        return 4
    if server_version >= 150000:
        return 3
    if server_version >= 140000:
        return 2
    return 1


def _lsn(text: str | None) -> int | None:
    if not text:
        return None

    return parse_lsn(text)


def split_table(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return (schema or "public").strip('"'), table.strip('"')


def validate_replication(conn: psycopg.Connection, server: str) -> None:
    settings = dict(
        conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('wal_level', 'max_replication_slots', 'max_wal_senders')"
        ).fetchall()
    )
    problems = []
    if settings.get("wal_level") != "logical":
        problems.append(
            f"wal_level is '{settings.get('wal_level')}', logical replication needs 'logical'"
            " (ALTER SYSTEM SET wal_level = logical; then restart Postgres; on RDS set"
            " rds.logical_replication=1 in the parameter group)"
        )
    if int(settings.get("max_replication_slots", "0")) < 1:
        problems.append("max_replication_slots is 0; set it to at least 1 (needs a restart)")
    if int(settings.get("max_wal_senders", "0")) < 1:
        problems.append("max_wal_senders is 0; set it to at least 1 (needs a restart)")
    if problems:
        raise SourceError(f"source Postgres {server} is not ready for logical replication: " + "; ".join(problems),
                          server=server)


def _missing_tables(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    missing = []
    for t in tables:
        schema, name = split_table(t)
        row = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, name),
        ).fetchone()
        if row is None:
            missing.append(f"{schema}.{name}")
    return missing


def _publication_tables(conn: psycopg.Connection, publication: str) -> set[str]:
    rows = conn.execute(
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
    ).fetchall()
    return {r[0] for r in rows}


def _schema_tables(conn: psycopg.Connection, schemas: list[str]) -> list[str]:
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1",
        (schemas,),
    ).fetchall()
    return [r[0] for r in rows]


def qualified_table(t: str) -> str:
    schema, name = split_table(t)
    return f"{quote_ident(schema)}.{quote_ident(name)}"


# How long a worker waits for another one preparing the same slot (the same flow started twice at once).
SETUP_LOCK_WAIT = "60s"


def _setup_lock(conn: psycopg.Connection, slot: str, server: str) -> None:
    """Serialize the set-up of one slot: a second worker of the flow waits here, then finds everything made."""
    conn.execute(f"SET lock_timeout = '{SETUP_LOCK_WAIT}'")
    try:
        conn.execute("SELECT pg_advisory_lock(hashtextextended('wallaby-setup:' || %s, 0))", (slot,))
    except psycopg.errors.LockNotAvailable:
        raise TransientSourceError(f"another worker has been preparing replication slot {slot!r} in {server} for"
                                   f" over {SETUP_LOCK_WAIT}; is the same flow running twice?", server=server) from None
    finally:
        conn.execute("RESET lock_timeout")


def prepare_source(opts, flow_id: str, system_id: str | None = None, *, export: bool = False) -> SourcePlan:
    """Validate, then create what is missing (publication, slot, state table). The set-up of a slot is serialized
    (a session advisory lock), so the same flow started twice at once does not race on the publication.
    ``system_id``: the server's, when the caller has read it already (else it is asked for). ``export``: a slot
    created now is created with an exported snapshot (``plan.snapshot``, for a backfill)."""
    if getattr(opts, "aws_rds_iam", False):
        register(opts, flow_id)
    server = server_name(opts.dsn)
    with connect(opts.dsn, application_name=f"wallaby-setup:{flow_id}") as conn:
        _setup_lock(conn, opts.slot, server)  # released when the connection closes
        return _prepare(conn, opts, flow_id, server, system_id, export)


def _prepare(conn: psycopg.Connection, opts, flow_id: str, server: str, system_id: str | None,
             export: bool = False) -> SourcePlan:
    version = conn.info.server_version
    if opts.validate_replication:
        validate_replication(conn, server)

    # -- checks (nothing created yet) ------------------------------------------------
    tables = list(opts.publication_tables or [])
    if opts.publication_schemas:
        tables += _schema_tables(conn, list(opts.publication_schemas))
    missing = _missing_tables(conn, list(opts.publication_tables or []))
    if missing:
        raise SourceError(
            f"publication_tables names tables that do not exist in {server}: {', '.join(missing)}", server=server
        )
    pub_exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (opts.publication,)).fetchone()
    if not pub_exists and not opts.ensure_publication:
        raise SourceError(
            f"publication {opts.publication!r} does not exist in {server}; create it"
            f" (CREATE PUBLICATION {opts.publication} FOR TABLE ...) or set ensure_publication=true",
            server=server,
        )
    slot = conn.execute(
        "SELECT plugin, database, confirmed_flush_lsn::text, restart_lsn::text, wal_status"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (opts.slot,),
    ).fetchone()
    dbname = conn.info.dbname
    if slot is None and not opts.create_slot:
        raise SourceError(
            f"replication slot {opts.slot!r} does not exist in {server}; create it"
            f" (SELECT pg_create_logical_replication_slot('{opts.slot}', 'pgoutput')) or set create_slot=true",
            server=server,
        )
    if slot is not None:
        plugin, database, _, _, wal_status = slot
        if plugin != "pgoutput":
            raise SourceError(f"replication slot {opts.slot!r} uses plugin {plugin!r}; wallaby needs 'pgoutput'"
                              " (use another slot name)", server=server)
        if database != dbname:
            raise SourceError(f"replication slot {opts.slot!r} belongs to database {database!r}, not {dbname!r}",
                              server=server)
        if wal_status == "lost":
            raise SourceError(f"replication slot {opts.slot!r} has lost required WAL (wal_status=lost);"
                              " drop and recreate it, then backfill", server=server)
    owner = opts.flow_id or flow_id
    rows = read_slot_rows(conn, opts) if opts.ensure_state else []
    if problem := owner_problem(rows, owner, opts):
        raise TerminalSourceError(problem, server=server)
    plan = SourcePlan(server_version=version, proto_version=proto_version_for(version))

    # -- creation ---------------------------------------------------------------------
    if opts.capture_ddl:  # first: it is the one step that needs a superuser, and it checks that up front

        install_ddl_capture(conn, opts, flow_id)
    if not pub_exists:
        if opts.publication_schemas and version >= 150000:
            # the schemas themselves, so a table created in them later is published too
            target = "FOR TABLES IN SCHEMA " + ", ".join(quote_ident(x) for x in opts.publication_schemas)
            listed = [t for t in (opts.publication_tables or [])
                      if split_table(t)[0] not in set(opts.publication_schemas)]
            if listed:
                target += ", TABLE " + ", ".join(qualified_table(t) for t in listed)
        elif tables:
            target = "FOR TABLE " + ", ".join(qualified_table(t) for t in tables)
        else:
            target = "FOR ALL TABLES"
        target += publication_with(conn, tables, version)
        conn.execute(f"CREATE PUBLICATION {quote_ident(opts.publication)} {target}")
        plan.publication_created = True
        log.info("created publication %s (%s)", opts.publication, target, extra={"flow": flow_id})
    elif opts.sync_publication and tables:
        sync_publication(conn, opts.publication, tables, opts.sync_publication_mode, flow_id)

    for note in publication_notes(conn, opts.publication, version):
        log.warning("publication %s: %s", opts.publication, note, extra={"flow": flow_id})
    layout = ensure_state_table(conn, opts) if opts.ensure_state else None  # DDL: before the slot exists
    if slot is None:
        exported: list[ExportedSnapshot] | None = [] if export else None
        consistent = create_slot(opts.dsn, opts.slot, flow_id, exported)
        plan.slot_created = consistent is not None
        plan.snapshot = exported[0] if exported else None
        plan.slot_id = new_slot_id(consistent)
    else:
        plan.slot_id = slot_id_of(rows, owner) or new_slot_id(None)
    if opts.ensure_state:
        ensure_state(conn, opts, flow_id, plan.slot_id, system_id or _system_id(opts.dsn), layout)
    else:
        plan.slot_id = None  # nowhere to keep it: the slot's identity is unknown
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (opts.slot,),
    ).fetchone()
    plan.confirmed_flush, plan.restart_lsn = _lsn(row[0]), _lsn(row[1])
    return plan


def publication_with(conn: psycopg.Connection, tables: list[str], version: int) -> str:
    """The ``WITH (...)`` of a publication wallaby creates: a partitioned table is published as itself, its
    partitions' changes under its name (``publish_via_partition_root``: one destination table, partitions attached
    later included, a row moved between partitions an update); on Postgres 18+ stored generated columns are
    published too (``publish_generated_columns``), so destinations get every column a query of the table shows."""
    opts = []
    partitioned = conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'p'"
        + (" AND n.nspname || '.' || c.relname = ANY(%s)" if tables else "") + " LIMIT 1",
        ([".".join(split_table(t)) for t in tables],) if tables else ()).fetchone()
    if partitioned:
        opts.append("publish_via_partition_root = true")
    if version >= 180000:
        opts.append("publish_generated_columns = stored")
    return f" WITH ({', '.join(opts)})" if opts else ""


def publication_notes(conn: psycopg.Connection, publication: str, version: int) -> list[str]:
    """What an existing publication leaves out or splits, said at start: partitions published as themselves (the
    source maps each to its root table, :meth:`sources.postgres.resolver.TypeResolver.catalog_facts`), stored
    generated columns it does not publish (absent in the destinations)."""
    notes = []
    row = conn.execute("SELECT pubviaroot" + (", pubgencols::text" if version >= 180000 else ", NULL")
                       + " FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    if row is None:
        return notes
    via_root, gencols = row
    published = "SELECT c.oid FROM pg_publication_tables p JOIN pg_namespace n ON n.nspname = p.schemaname" \
                " JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename WHERE p.pubname = %s"
    if not via_root:
        parts = conn.execute(
            f"SELECT c.oid::regclass::text, pg_partition_root(c.oid)::regclass::text FROM pg_class c"
            f" WHERE c.oid IN ({published}) AND c.relispartition ORDER BY 1", (publication,)).fetchall()
        if parts:
            notes.append("publishes partitions as themselves (publish_via_partition_root is false): their changes"
                         " land in their root tables (" + ", ".join(f"{p} -> {r}" for p, r in parts[:10])
                         + (", ..." if len(parts) > 10 else "") + "); ALTER PUBLICATION ... SET"
                         " (publish_via_partition_root = true) publishes them so")
    if gencols != "s":
        generated = conn.execute(
            f"SELECT a.attrelid::regclass::text || '.' || a.attname FROM pg_attribute a WHERE a.attrelid IN"
            f" ({published}) AND a.attgenerated = 's' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1",
            (publication,)).fetchall()
        if generated:
            how = ("ALTER PUBLICATION ... SET (publish_generated_columns = stored) publishes them"
                   if version >= 180000 else "Postgres 18+ can publish them (publish_generated_columns)")
            notes.append("does not publish the stored generated columns " + ", ".join(g for (g,) in generated[:10])
                         + (", ..." if len(generated) > 10 else "") + f": they are absent in the destinations; {how}")
    return notes


def _system_id(dsn: str) -> str:
    with connect(dsn, replication=True) as rconn:
        return str(simple_query(rconn, "IDENTIFY_SYSTEM")[0][0])


def publication_columns(conn: psycopg.Connection, opts) -> dict[str, set[str]]:
    """The column names of every table the flow publishes: the publication's (when it exists), plus
    ``publication_tables`` and the tables of ``publication_schemas``."""
    tables = set(_publication_tables(conn, opts.publication))
    tables |= {".".join(split_table(t)) for t in (opts.publication_tables or [])}
    if opts.publication_schemas:
        tables |= set(_schema_tables(conn, list(opts.publication_schemas)))
    out: dict[str, set[str]] = {}
    for t in sorted(tables):
        rows = conn.execute("SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
                            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
                            " AND a.attnum > 0 AND NOT a.attisdropped", split_table(t)).fetchall()
        out[t] = {r[0] for r in rows}
    return out


def unknown_type_keys(conn: psycopg.Connection, keys: list[str]) -> list[str]:
    """The type_mappings keys the source does not know: a type name or ``schema.type`` (``to_regtype``),
    ``ext:<extension>.<type>`` / ``ext:<extension>`` (an installed extension)."""
    unknown = []
    for key in keys:
        if key.startswith("ext:"):
            ext = key[4:].split(".", 1)[0]
            if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = %s", (ext,)).fetchone():
                unknown.append(key)
        elif conn.execute("SELECT to_regtype(%s)", (key,)).fetchone()[0] is None:
            unknown.append(key)
    return unknown


def sync_publication(conn: psycopg.Connection, publication: str, tables: list[str], mode: str, flow_id: str) -> None:
    """Add the listed tables to the publication; with mode 'sync' also drop the ones not listed."""
    current = _publication_tables(conn, publication)
    wanted = {".".join(split_table(t)) for t in tables}
    for t in sorted(wanted - current):
        conn.execute(f"ALTER PUBLICATION {quote_ident(publication)} ADD TABLE {qualified_table(t)}")
        log.info("publication %s: added %s", publication, t, extra={"flow": flow_id})
    if mode == "sync":
        for t in sorted(current - wanted):
            conn.execute(f"ALTER PUBLICATION {quote_ident(publication)} DROP TABLE {qualified_table(t)}")
            log.info("publication %s: dropped %s", publication, t, extra={"flow": flow_id})


@dataclass
class ExportedSnapshot:
    """The snapshot a slot was created with (``SNAPSHOT 'export'``): the database exactly as of the slot's
    consistent point. It can be imported (``SET TRANSACTION SNAPSHOT``) while ``conn``, the replication connection
    that created the slot, stays open and idle: :meth:`close` it once every reader has imported it."""

    name: str
    lsn: int
    conn: psycopg.Connection

    def close(self) -> None:
        self.conn.close()


def create_slot(dsn: str, slot: str, flow_id: str, export: list[ExportedSnapshot] | None = None,
                temporary: bool = False) -> int | None:
    """Create the slot; its consistent point (None: it was created meanwhile by someone else). With ``export`` (a
    list), the slot is created with an exported snapshot, appended to it with the connection that holds it open.
    ``temporary``: the slot goes with that connection (only its snapshot and consistent point are wanted)."""
    rconn = connect(dsn, replication=True, application_name=f"wallaby-setup:{flow_id}")
    mode = "export" if export is not None else "nothing"
    kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
    try:
        rows = simple_query(rconn, f"CREATE_REPLICATION_SLOT {quote_ident(slot)} {kind} pgoutput (SNAPSHOT '{mode}')")
    except psycopg.errors.DuplicateObject:
        rconn.close()
        return None
    except psycopg.Error as exc:
        rconn.close()
        kind = TransientSourceError if is_transient(exc) else TerminalSourceError
        raise kind(f"could not create replication slot {slot!r} in {server_name(dsn)}: {exc}",
                   server=server_name(dsn), sqlstate=getattr(exc, "sqlstate", None)) from None
    consistent = _lsn(rows[0][1]) if rows else None
    log.info("created replication slot %s (consistent point %s%s)", slot, rows[0][1] if rows else "?",
             f", snapshot {rows[0][2]}" if export is not None and rows else "", extra={"flow": flow_id})
    if export is not None and rows and rows[0][2] and consistent is not None:
        export.append(ExportedSnapshot(rows[0][2], consistent, rconn))
    else:
        rconn.close()
    return consistent


__all__ = ["SourcePlan", "prepare_source", "proto_version_for", "quote_literal", "validate_replication"]
