"""DDL capture: an event trigger that writes each DDL statement into the WAL as a logical message.

With ``capture_ddl=true`` the source installs (idempotently) a function
``<ddl_trigger_schema>.<ddl_trigger_name>_fn()`` and two event triggers,
``<ddl_trigger_name>`` (``ddl_command_end``) and ``<ddl_trigger_name>_drop``
(``sql_drop``). For every command they call
``pg_logical_emit_message(true, <ddl_message_prefix>, json)`` with the command
tag, object type and identity, schema and the statement text
(``current_query()``). The message is transactional: it reaches the stream
inside the DDL's transaction, in order with the data, and the batcher turns it
into a ``ddl`` event (``sources/batcher.py``).

Event triggers need a superuser (or, on RDS, ``rds_superuser``); without that
privilege the flow stops with one clear error before anything else is created.
"""

from __future__ import annotations

import logging

import psycopg

from sources.postgres.connection import quote_ident, quote_literal, server_name
from wallaby.core.errors import SourceError
from wallaby.state.shared_ddl import shared_ddl

log = logging.getLogger("wallaby.source")

_FUNCTION = """
CREATE OR REPLACE FUNCTION {schema}.{fn}() RETURNS event_trigger LANGUAGE plpgsql AS $wallaby$
DECLARE r record;
BEGIN
  IF TG_EVENT = 'sql_drop' THEN
    FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE original AND object_type IN ('table', 'schema')
    LOOP
      PERFORM pg_logical_emit_message(true, {prefix}, json_build_object(
        'command_tag', TG_TAG, 'object_type', r.object_type, 'schema', r.schema_name,
        'object_identity', r.object_identity, 'ddl', current_query())::text);
    END LOOP;
  ELSE
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
      IF r.command_tag NOT IN ('CREATE FUNCTION', 'CREATE EVENT TRIGGER', 'ALTER EVENT TRIGGER') THEN
        PERFORM pg_logical_emit_message(true, {prefix}, json_build_object(
          'command_tag', r.command_tag, 'object_type', r.object_type, 'schema', r.schema_name,
          'object_identity', r.object_identity, 'ddl', current_query())::text);
      END IF;
    END LOOP;
  END IF;
END $wallaby$
"""


def install_ddl_capture(conn: psycopg.Connection, opts, flow_id: str) -> bool:
    """Install the function and event triggers when missing. True when something was created."""
    server = server_name(opts.dsn)
    name, schema = opts.ddl_trigger_name, opts.ddl_trigger_schema
    fn = f"{name}_fn"
    existing = {r[0] for r in conn.execute("SELECT evtname FROM pg_event_trigger WHERE evtname IN (%s, %s)",
                                           (name, f"{name}_drop")).fetchall()}
    su = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if len(existing) == 2:
        return False
    if not (su and su[0]) and not conn.execute(
            "SELECT pg_has_role(current_user, 'rds_superuser', 'member') FROM pg_roles"
            " WHERE rolname = 'rds_superuser'").fetchone():
        raise SourceError(f"capture_ddl=true needs a superuser to create event triggers in {server}; connect as one"
                          f" once (wallaby installs {schema}.{fn} and the event trigger {name}), or set"
                          " capture_ddl=false", server=server)
    try:
        with shared_ddl(conn):  # flows starting at once on this database: one installs, the others find it
            existing = {r[0] for r in conn.execute("SELECT evtname FROM pg_event_trigger WHERE evtname IN (%s, %s)",
                                                   (name, f"{name}_drop")).fetchall()}
            if len(existing) == 2:
                return False
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            conn.execute(_FUNCTION.format(schema=quote_ident(schema), fn=quote_ident(fn),
                                          prefix=quote_literal(opts.ddl_message_prefix)))
            if name not in existing:
                conn.execute(f"CREATE EVENT TRIGGER {quote_ident(name)} ON ddl_command_end"
                             f" EXECUTE FUNCTION {quote_ident(schema)}.{quote_ident(fn)}()")
            if f"{name}_drop" not in existing:
                conn.execute(f"CREATE EVENT TRIGGER {quote_ident(name + '_drop')} ON sql_drop"
                             f" EXECUTE FUNCTION {quote_ident(schema)}.{quote_ident(fn)}()")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceError(f"capture_ddl=true: cannot create the event trigger in {server}: {exc}; connect as a"
                          " superuser once, or set capture_ddl=false", server=server) from None
    log.info("installed DDL capture (event trigger %s, prefix %s)", name, opts.ddl_message_prefix,
             extra={"flow": flow_id})
    return True
