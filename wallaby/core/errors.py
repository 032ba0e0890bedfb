"""Errors shared across wallaby.

Retryability lives in the type, not in the message (dlt's
``TerminalException`` / ``TransientException`` idea): an error is
:class:`TerminalError` when retrying cannot help, :class:`TransientError` when
it may (mix one into a concrete error class). Driver errors are mapped once
into one or the other where they are caught; everything above only asks
``isinstance`` (or :func:`is_transient`, the one place that also classifies a driver
error that was not mapped: psycopg by SQLSTATE, network ``OSError`` values by type
and errno). :func:`grpc_status_name` is the one place that maps these types to
gRPC status codes, :func:`exit_status` the one place that maps them to a
worker's exit status (``EXIT_*``).

Destinations raise :class:`TransientSinkError` (connection lost, broker
unavailable, 5xx, throttled, timeouts) or :class:`PermanentSinkError`
(configuration, credentials, permissions, 4xx, schema), each naming the
destination and what it tried where (brokers, bucket and endpoint, URL, path,
a DSN through :func:`redact_dsn`). ``sinks.base`` re-exports them.

No message built here may carry a secret: every text that could contain a
connection string goes through :func:`redact_dsn`.
"""

from __future__ import annotations

import errno
import re
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass

MASK = "***"

# scheme://user:password@host... (any scheme: postgres, postgresql, clickhouse, ...).
# The password runs lazily up to the '@' that ends the authority, i.e. the '@'
# followed by host characters and no further '@' (possessive, so no backtracking
# can pick an earlier '@'): an unencoded '@' inside a password is masked too.
_URI_PASSWORD = re.compile(
    r"""(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'"]*:)(?P<pw>[^\s'"]*?)(?=@[^\s@/?#'"]*+(?!@))"""
)
# user:password@account/db without a scheme (Snowflake's Go DSN). Only at the
# start of the text or after a blank, quote, '=' or '(' so that ordinary prose
# is left alone; never right before '//' (that is a URI, handled above).
_BARE_USERINFO = re.compile(
    r"""(?:^|(?<=[\s'"=(]))(?P<pre>[A-Za-z0-9_.\-]+:)(?!//)(?P<pw>[^\s'"]*?)(?=@[^\s@/?#'"]*+(?!@))"""
)
# ?password=... / &password=... in a URI query: the value ends at '&' or '#'.
_QUERY_PASSWORD = re.compile(
    r"""(?P<pre>[?&](?:(?:ssl)?password|(?:oauth_)?client_secret)=)(?P<pw>[^&#\s'"]*)""", re.IGNORECASE
)
# password=... in libpq key/value conninfo (also password: x, secret_key=x, token=x in
# option lists): a quoted value (unterminated: masked to the end) or an unquoted
# one up to the next blank (a quote right before that blank is kept).
_KV_PASSWORD = re.compile(
    r"""(?P<pre>(?<![\w.?&/:\-])"""
    r"""(?:(?:ssl)?password|passwd|pwd|secret_key|session_token|api_key|(?:oauth_)?client_secret)\s*[=:]\s*"""
    r"""|(?<![\w.?&/:\-])token\s*=\s*)"""
    r"""(?P<pw>'(?:\\.|[^'\\])*(?:'|$)|"(?:\\.|[^"\\])*(?:"|$)|(?:\\.|[^\s\\])+?(?=['"]?(?:\s|$)))""",
    re.IGNORECASE,
)
# 'password': 'x' / "secret_key": "x" in dict-like text (reprs, JSON).
_MAPPING_SECRET = re.compile(
    r"""(?P<pre>(?P<q1>['"])(?:[a-z_]*password|secret_key|session_token|access_key|token)(?P=q1)\s*:\s*)"""
    r"""(?P<pw>(?P<q2>['"])(?:\\.|(?!(?P=q2)).)*(?P=q2))""",
    re.IGNORECASE,
)


def _mask(match: re.Match[str]) -> str:
    return match.group("pre") + MASK


def redact_dsn(text: str) -> str:
    """Mask every password inside ``text``: libpq URIs, key/value conninfo, ``?password=``.

    Works on whole messages, not only on a bare DSN: ``"cannot connect to
    postgres://u:SECRET@h/db"`` becomes ``"cannot connect to postgres://u:***@h/db"``;
    ``"host=h password='a b'"`` becomes ``"host=h password=***"``. Text without
    a password comes back unchanged.
    """
    if not text:
        return text
    text = _URI_PASSWORD.sub(_mask, text)
    text = _BARE_USERINFO.sub(_mask, text)
    text = _QUERY_PASSWORD.sub(_mask, text)
    text = _KV_PASSWORD.sub(_mask, text)
    text = _MAPPING_SECRET.sub(lambda m: m.group("pre") + m.group("q2") + MASK + m.group("q2"), text)
    return text


class WallabyError(Exception):
    """Base of every error wallaby raises on purpose."""


class TransientError(WallabyError):
    """Mixin: worth retrying (server away, timeout, throttled). ``retry_after`` in seconds if known."""

    retry_after: float | None = None


class TerminalError(WallabyError):
    """Mixin: retrying cannot help (bad settings, credentials, an incompatible change)."""


@dataclass(frozen=True)
class FieldProblem:
    """One thing wrong: where (``source.options.slot``, ``WALLABY_CHECKPOINT_DSN``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(TerminalError):
    """A configuration is invalid. Lists *every* problem found, not only the first.

    ``ConfigError("flow 'orders'", problems)`` reads::

        flow 'orders' has 2 problems:
          - source.options.slott: unknown option; did you mean 'slot'?
          - destinations[0].options.dsn: required option missing

    ``what``, paths and messages are redacted (:func:`redact_dsn`) when the
    error is built, so neither ``str(err)`` nor ``err.problems`` holds a password.
    """

    def __init__(self, what: str, problems: Iterable[FieldProblem]):
        self.what = redact_dsn(what)
        self.problems: list[FieldProblem] = [
            FieldProblem(redact_dsn(p.path), redact_dsn(p.message)) for p in problems
        ]
        n = len(self.problems)
        head = f"{self.what} has {n} problem{'' if n == 1 else 's'}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))

    @classmethod
    def single(cls, what: str, path: str, message: str) -> ConfigError:
        return cls(what, [FieldProblem(path, message)])


class SourceError(WallabyError):
    """The source database refused or failed; ``server`` names it (host:port/db), never a password.

    ``transient`` says whether retrying may help; code that maps a driver error
    sets it (or raises :class:`TransientSourceError` / :class:`TerminalSourceError`).
    """

    transient: bool = False

    def __init__(self, message: str, server: str | None = None, sqlstate: str | None = None):
        super().__init__(redact_dsn(message))
        self.server = redact_dsn(server) if server else server
        self.sqlstate = sqlstate


class TerminalSourceError(SourceError, TerminalError):
    """The source failed in a way retrying cannot fix (missing privilege, slot lost its WAL)."""


class TransientSourceError(SourceError, TransientError):
    """The source failed in a way that may pass (connection lost, server restarting, slot busy)."""

    transient = True

    def __init__(self, message: str, server: str | None = None, sqlstate: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message, server, sqlstate)
        self.retry_after = retry_after


class SinkError(WallabyError):
    """A destination failed. ``destination`` names it; the message says what was tried where (brokers, bucket and
    endpoint, URL, path, a redacted DSN) and never carries a secret. Raise one of the two kinds below: a plain
    ``SinkError`` counts as permanent."""

    transient: bool = False

    def __init__(self, destination: str, message: str):
        super().__init__(redact_dsn(f"destination {destination!r}: {message}"))
        self.destination = destination


class TransientSinkError(SinkError, TransientError):
    """Worth retrying: the destination is away or busy (connection lost, broker unavailable, 5xx, 429, timeouts).
    ``retry_after`` seconds if the server said."""

    transient = True

    def __init__(self, destination: str, message: str, retry_after: float | None = None):
        super().__init__(destination, message)
        self.retry_after = retry_after


class PermanentSinkError(SinkError, TerminalError):
    """Retrying cannot help: configuration, credentials, permissions, a 4xx answer, an incompatible schema, a
    rejected payload."""


class SchemaChangeError(PermanentSinkError):
    """A schema change at the source the destination cannot express (a column's values do not convert to its new
    type). ``table`` is the source table, ``column`` the column, ``position`` the first change with the new shape:
    the worker holds the flow at that change through the DDL gate (``sources.postgres.ddl_gate.hold_schema_change``)
    instead of failing every restart."""

    def __init__(self, destination: str, message: str, table: str, column: str, position: object):
        super().__init__(destination, message)
        self.table, self.column, self.position = table, column, position


class SchemaChangeHeld(TransientError):
    """The worker stopped at a schema change a destination cannot express and left its DDL event pending: a worker
    started again holds before it until someone decides (exit 75: restarting is right, it waits)."""


# SQLSTATEs that mean "the server went away, is restarting or is busy; try again" (source and Postgres
# destinations alike; sources.postgres.connection re-exports it).
TRANSIENT_SQLSTATES = frozenset({
    "57P01",  # admin_shutdown (pg_terminate_backend, fast shutdown)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovery)
    "08000", "08003", "08006", "08001", "08004",  # connection exceptions
    "55006",  # object_in_use: the slot is still held by a walsender that is going away
    "53300",  # too_many_connections
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
})

# errno values of a network that is away (refused, reset, unreachable, timed out); a DNS failure only when the
# resolver says "try again".
_NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
                             errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EHOSTUNREACH,
                             errno.EHOSTDOWN})


def is_transient(exc: BaseException) -> bool:
    """True when retrying may help. Our errors say so by type (:class:`TransientError`) or by their ``transient``
    flag. A driver error nobody mapped is judged by its kind, never by its text: a psycopg error by its SQLSTATE
    (:data:`TRANSIENT_SQLSTATES`; an ``OperationalError`` without one is a lost or refused connection: libpq gives
    none), an ``OSError`` by type and errno (connection refused or reset, unreachable, timed out; a DNS failure
    only when the resolver said "try again"). Anything else is not."""
    if isinstance(exc, TransientError) or getattr(exc, "transient", False) is True:
        return True
    if isinstance(exc, WallabyError):
        return False
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return state in TRANSIENT_SQLSTATES
    psycopg = sys.modules.get("psycopg")  # not loaded: exc cannot be one of its errors
    if psycopg is not None and isinstance(exc, psycopg.Error):
        return isinstance(exc, psycopg.OperationalError)
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


class LocalStoreError(WallabyError):
    """A store of the worker's own on its local disk (the bytewax recovery store, the spool) failed. ``transient``
    when the cause may pass by itself or by an operator's hand without touching the flow (a full disk)."""

    def __init__(self, message: str, path: str, transient: bool):
        super().__init__(redact_dsn(message))
        self.path = path
        self.transient = transient


class FencedError(WallabyError):
    """A newer worker generation of this flow took over: this worker must stop before it advances the slot or
    writes a checkpoint."""

    def __init__(self, flow_id: str, mine: int, current: int | None):
        now = "the flow was deleted" if current is None else f"the flow is at generation {current}"
        super().__init__(f"flow {flow_id!r}: this worker (generation {mine}) was fenced off: {now};"
                         " stopping without advancing the slot")
        self.flow_id, self.mine, self.current = flow_id, mine, current


class NotFoundError(TerminalError):
    """No flow / DDL event / slot of that id."""


class AlreadyExistsError(TerminalError):
    """A flow of that id exists already."""


class IllegalStateError(TerminalError):
    """The change is not allowed in the current state (start a running flow, approve a rejected DDL)."""


# Exit status of a worker (wallaby-worker) by the error that ended it (see exit_status); the API server restarts a
# worker only after EXIT_TRANSIENT or a death by signal.
EXIT_OK = 0  # a clean stop (SIGTERM, -max-empty-reads)
EXIT_PERMANENT = 1  # retrying cannot help: the flow fails
EXIT_CONFIG = 2  # a bad flow spec or flag
EXIT_FENCED = 3  # a newer worker of the flow took over
EXIT_TRANSIENT = 75  # retrying may help (EX_TEMPFAIL of sysexits.h)


def exit_status(exc: BaseException) -> int:
    """The exit status of a worker ended by ``exc`` (the root cause, not a runtime's wrapper of it): fenced 3,
    ConfigError 2, transient (:func:`is_transient`) 75, anything else 1 (an error of unknown kind is not retried:
    a bug or a refusal repeats, a lost network shows as a transient driver error)."""
    if isinstance(exc, FencedError):
        return EXIT_FENCED
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if is_transient(exc):
        return EXIT_TRANSIENT
    return EXIT_PERMANENT


def grpc_status_name(exc: BaseException) -> str:
    """The gRPC status code name an API call failing with ``exc`` returns (the one place this is decided)."""
    if isinstance(exc, NotFoundError):
        return "NOT_FOUND"
    if isinstance(exc, AlreadyExistsError):
        return "ALREADY_EXISTS"
    if isinstance(exc, IllegalStateError | FencedError):
        return "FAILED_PRECONDITION"
    if isinstance(exc, ConfigError):
        return "INVALID_ARGUMENT"
    if is_transient(exc):
        return "UNAVAILABLE"
    if isinstance(exc, TerminalError | SourceError | SinkError):
        return "FAILED_PRECONDITION"
    return "INTERNAL"

