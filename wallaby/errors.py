"""Errors shared by every part of wallaby.

- :class:`ConfigError` lists *every* problem of a flow spec or setting in one
  message (dlt-style: what was looked for, where, and what to do).
- Retryability is in the type: :class:`TransientError` / :class:`TerminalError`.
- :func:`redact_dsn` strips passwords from any text that could hold a DSN;
  every message that could show one goes through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class WallabyError(Exception):
    """Base of wallaby's own errors."""


class TransientError(WallabyError):
    """Worth retrying: a server away, a timeout, throttling."""


class TerminalError(WallabyError):
    """Retrying cannot help: bad settings, credentials, an incompatible change."""


@dataclass(frozen=True)
class FieldProblem:
    path: str  # e.g. source.options.slot, destinations[0].options.dsn, WALLABY_CHECKPOINT_DSN
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(TerminalError):
    """One or more bad fields, all listed in one message."""

    def __init__(self, what: str, problems: list[FieldProblem]):
        self.what = what
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{what} has {n} problem{'s' if n != 1 else ''}:"
        super().__init__(redact_dsn("\n".join([head, *(f"  - {p}" for p in self.problems)])))


class SourceError(WallabyError):
    """The source database refused or failed; names the server (host:port/db), never the password."""

    transient: bool = False

    def __init__(self, message: str, server: str | None = None):
        super().__init__(redact_dsn(message))
        self.server = server


# postgres://user:SECRET@host, postgresql://user:SECRET@host (also other URI schemes with userinfo)
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@\s/]*)(?P<at>@)")
# password=SECRET, password='SEC RET', password = "x" in key/value conninfo and option lists
_KV_PASSWORD = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|secret_key|session_token|token)\s*[=:]\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s,;&]+)",
    re.IGNORECASE,
)
# ?password=SECRET in a URI query string
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&\s]*)", re.IGNORECASE)

REDACTED = "***"


def redact_dsn(text: str) -> str:
    """``text`` with every password of a DSN (URI or key/value form) replaced by ``***``."""
    if not text:
        return text
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}{m['at']}", text)
    text = _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}", text)
