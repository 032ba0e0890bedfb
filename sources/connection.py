"""Connecting to the source Postgres: plain and replication connections, error mapping.

Every failure to connect becomes one :class:`SourceError` naming the server
(host:port/db, never the password) and what to do. Errors are classified by
SQLSTATE, never by message text.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import conninfo, pq

from sources.pgtypes import SESSION_SETTINGS, libpq_options
from wallaby.errors import SourceError, redact_dsn

log = logging.getLogger("wallaby.source")

# SQLSTATEs that mean "the server went away or is restarting; try again".
TRANSIENT_SQLSTATES = {
    "57P01",  # admin_shutdown (pg_terminate_backend, fast shutdown)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovery)
    "08000", "08003", "08006", "08001", "08004",  # connection exceptions
    "55006",  # object_in_use: the slot is still held by a walsender that is going away
    "53300",  # too_many_connections
    "40001",  # serialization failure
}


def server_name(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, for messages (never the password)."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return redact_dsn(dsn)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    db = params.get("dbname") or params.get("user") or ""
    return f"{host}:{port}/{db}"


def is_transient(exc: BaseException) -> bool:
    """True for errors that a reconnect can cure."""
    if isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None:
        return True  # lost connection, refused, timeout: libpq gives no SQLSTATE
    return getattr(exc, "sqlstate", None) in TRANSIENT_SQLSTATES


def connect_error(dsn: str, exc: Exception, what: str = "connect to") -> SourceError:
    """Turn a psycopg connection error into one clear message."""
    server = server_name(dsn)
    state = getattr(exc, "sqlstate", None)
    text = redact_dsn(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if state == "28P01" or "password authentication failed" in text:
        hint = "check the user and password in the source dsn"
    elif state == "28000":
        hint = "the server refused this user/host (pg_hba.conf); allow it, for replication too"
    elif state == "3D000":
        hint = "the database in the source dsn does not exist"
    elif state == "42501":
        hint = "the user needs the REPLICATION attribute (ALTER ROLE ... REPLICATION) or rds_replication"
    elif state is None:
        hint = "check that the server is running and reachable at that host and port"
    else:
        hint = "see the server's message above"
    err = SourceError(f"could not {what} source Postgres {server}: {text} ({hint})", server=server)
    err.transient = is_transient(exc)
    return err


def _params(dsn: str, replication: bool, application_name: str) -> dict:
    params = conninfo.conninfo_to_dict(dsn)
    extra = libpq_options(SESSION_SETTINGS)
    params["options"] = f"{params['options']} {extra}" if params.get("options") else extra
    params.setdefault("application_name", application_name)
    params.setdefault("connect_timeout", "10")
    if replication:
        params["replication"] = "database"
    from sources.rds_iam import password_for

    token = password_for(dsn)
    if token is not None:
        params["password"] = token
    return params


def connect(dsn: str, *, replication: bool = False, application_name: str = "wallaby") -> psycopg.Connection:
    """Open an autocommit connection (a walsender one with ``replication=True``)."""
    try:
        return psycopg.connect(autocommit=True, **_params(dsn, replication, application_name))
    except psycopg.Error as exc:
        raise connect_error(dsn, exc) from None


def simple_query(conn: psycopg.Connection, sql: str) -> list[tuple[str | None, ...]]:
    """Run a replication command (simple query protocol); rows as text tuples."""
    res = conn.pgconn.exec_(sql.encode())
    if res.status == pq.ExecStatus.FATAL_ERROR:
        raise psycopg.errors.lookup(res.error_field(pq.DiagnosticField.SQLSTATE).decode())(
            res.error_message.decode(errors="replace").strip()
        )
    rows = []
    for r in range(res.ntuples):
        rows.append(tuple(None if (v := res.get_value(r, c)) is None else v.decode() for c in range(res.nfields)))
    return rows


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
