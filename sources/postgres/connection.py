"""Connecting to the source Postgres: plain and replication connections, error mapping.

Every failure to connect becomes one :class:`SourceError` naming the server
(host:port/db, never the password) and what to do. Errors are classified by
SQLSTATE, never by message text.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import conninfo, pq

from sources.postgres.pgtypes import SESSION_SETTINGS, libpq_options
from sources.postgres.rds_iam import password_for
from wallaby.core.errors import TRANSIENT_SQLSTATES as TRANSIENT_SQLSTATES
from wallaby.core.errors import SourceError, TerminalSourceError, TransientSourceError, redact_dsn
from wallaby.core.errors import is_transient as is_transient  # the one classifier, by SQLSTATE for psycopg errors
from wallaby.core.sqltext import sql_string as quote_literal  # noqa: F401 - a string literal, imported from here

log = logging.getLogger("wallaby.source")


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


def _host_port(dsn: str) -> tuple[str, str, str]:
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "localhost", "5432", ""
    return (params.get("host") or params.get("hostaddr") or "localhost", params.get("port") or "5432",
            params.get("dbname") or params.get("user") or "")


# Maintenance databases asked about the flow's database when connecting to it failed.
_MAINTENANCE_DBS = ("postgres", "template1")


def _catalog_state(dsn: str, exc: BaseException) -> str | None:
    """The SQLSTATE a failed connection would have carried, from the server's catalog.

    libpq reports no SQLSTATE for a failure while connecting (psycopg's ``sqlstate`` is None for a missing
    database, a refused password and a refused socket alike), and its message text is no contract. So, when the
    connection failed without one, connect to a maintenance database of the same server as the same user and
    ask ``pg_database``: a database that is not there is 3D000 (invalid_catalog_name), one that takes no
    connections 55000, one this user may not connect to 42501. None when that cannot be told (the server is
    unreachable, refuses this user everywhere, or the database looks fine: then the error is what it was)."""
    if getattr(exc, "sqlstate", None) is not None or not isinstance(exc, psycopg.OperationalError):
        return None
    try:
        params = _params(dsn, False, "wallaby-setup")
    except Exception:
        return None
    target = params.get("dbname") or params.get("user")
    if not target or target in _MAINTENANCE_DBS:
        return None
    for db in _MAINTENANCE_DBS:
        probe = {**params, "dbname": db, "connect_timeout": "2"}
        probe.pop("replication", None)
        try:
            with psycopg.connect(autocommit=True, **probe) as conn:
                row = conn.execute("SELECT datallowconn, has_database_privilege(datname, 'CONNECT')"
                                   " FROM pg_database WHERE datname = %s", (target,)).fetchone()
        except psycopg.Error:
            continue
        if row is None:
            return "3D000"
        if not row[0]:
            return "55000"
        return None if row[1] else "42501"
    return None


def connect_error(dsn: str, exc: Exception, what: str = "connect to") -> SourceError:
    """Turn a psycopg connection error into one clear message, transient or terminal by SQLSTATE (for a failure
    while connecting, which carries none, by the server's catalog: :func:`_catalog_state`)."""
    server = server_name(dsn)
    state = getattr(exc, "sqlstate", None) or _catalog_state(dsn, exc)
    text = redact_dsn(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    pgconn = getattr(exc, "pgconn", None)
    if state == "3D000":
        host, port, db = _host_port(dsn)
        return TerminalSourceError(f"could not {what} source Postgres {server}: database {db!r} does not exist on"
                                   f" {host}:{port} (check the database name in the source dsn, or create it)",
                                   server=server, sqlstate=state)
    if state == "28P01":
        hint = "check the user and password in the source dsn"
    elif state is None and getattr(pgconn, "used_password", False):
        hint = "the server refused after the password was sent: check the user and password in the source dsn"
    elif state is None and getattr(pgconn, "needs_password", False):
        hint = "the server asks for a password and the source dsn gives none"
        state = "28P01"  # no password to retry with
    elif state == "28000":
        hint = "the server refused this user/host (pg_hba.conf); allow it, for replication too"
    elif state == "55000":
        hint = "the database does not accept connections (datallowconn is false)"
    elif state == "42501":
        hint = ("the user may not connect to this database (GRANT CONNECT) or needs the REPLICATION attribute"
                " (ALTER ROLE ... REPLICATION) or rds_replication")
    elif state is None:
        hint = "check that the server is running and reachable at that host and port"
    else:
        hint = "see the server's message above"
    message = f"could not {what} source Postgres {server}: {text} ({hint})"
    if state is not None and state != getattr(exc, "sqlstate", None):
        transient = state in TRANSIENT_SQLSTATES  # a state found out above, not the driver's
    else:
        transient = is_transient(exc)
    err_cls = TransientSourceError if transient else TerminalSourceError
    return err_cls(message, server=server, sqlstate=state)


def _params(dsn: str, replication: bool, application_name: str) -> dict:
    params = conninfo.conninfo_to_dict(dsn)
    extra = libpq_options(SESSION_SETTINGS)
    params["options"] = f"{params['options']} {extra}" if params.get("options") else extra
    params.setdefault("application_name", application_name)
    params.setdefault("connect_timeout", "10")
    if replication:
        params["replication"] = "database"

    token = password_for(dsn)
    if token is not None:
        params["password"] = token
    return params


def libpq_conninfo(dsn: str, application_name: str = "wallaby") -> str:
    """The libpq connection string :func:`connect` would use (session settings, application name, timeout, an
    IAM token as the password): for clients that take one, like DuckDB's postgres extension the backfill reads with."""
    return conninfo.make_conninfo(**_params(dsn, False, application_name))


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


