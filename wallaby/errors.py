"""Errors shared across wallaby.

Retryability lives in the type, not in the message (dlt's
``TerminalException`` / ``TransientException`` idea): an error is
:class:`TerminalError` when retrying cannot help, :class:`TransientError` when
it may (mix one into a concrete error class). Driver errors are mapped once
into one or the other where they are caught; everything above only asks
``isinstance``. :func:`grpc_status_name` is
the one place that maps these types to gRPC status codes.

No message built here may carry a secret: every text that could contain a
connection string goes through :func:`redact_dsn`.
"""

from __future__ import annotations

import re
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


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is marked retryable (by type or by its ``transient`` flag)."""
    return isinstance(exc, TransientError) or bool(getattr(exc, "transient", False))


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
    if isinstance(exc, TerminalError | SourceError):
        return "FAILED_PRECONDITION"
    return "INTERNAL"

