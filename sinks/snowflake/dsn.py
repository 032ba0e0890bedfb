"""The Snowflake destination's ``dsn``: the gosnowflake form, turned into ``snowflake.connector.connect`` arguments.

``user[:password]@account[/database[/schema]][?param=value&...]`` (user and password percent-encoded when they hold
``@ : / ? &``). Every ``param`` the connector knows is passed to ``snowflake.connector.connect`` under its own name
(``warehouse``, ``role``, ``host``, ``port``, ``protocol``, ``authenticator``, ``private_key_file``,
``login_timeout``, ...), any other is a session parameter (as in gosnowflake; the writer sorts them); numbers
and ``true`` / ``false`` become ints and booleans. ``account`` may also be ``host:port`` (then ``account`` is a
param). No import of the connector here: the plugin validates DSNs without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from wallaby.core.errors import redact_dsn

_INTS = {"port", "login_timeout", "network_timeout", "socket_timeout", "client_session_keep_alive_heartbeat_frequency",
         "max_connection_pool", "client_prefetch_threads"}
_SECRETS = {"password", "passcode", "token", "private_key_file_pwd", "oauth_client_secret"}


class DsnError(ValueError):
    """The DSN cannot be used (the message never holds the password)."""


@dataclass(frozen=True)
class SnowflakeDsn:
    kwargs: dict[str, Any] = field(default_factory=dict)  # for snowflake.connector.connect
    secrets: tuple[str, ...] = ()  # the values to mask in any message

    @property
    def shown(self) -> str:
        """The DSN without secrets nor params: ``user@account/database/schema``."""
        k = self.kwargs
        where = k.get("account") or k.get("host") or "?"
        path = "/".join(x for x in (k.get("database"), k.get("schema")) if x)
        return f"{k.get('user', '')}@{where}" + (f"/{path}" if path else "")

    def clean(self, text: str) -> str:
        """``text`` with every secret of the DSN masked."""
        for s in self.secrets:
            if len(s) >= 3:  # (a shorter one would mask letters of every word, and shows nothing of its own)
                text = text.replace(s, "***")
        return redact_dsn(text)


def _value(key: str, v: str) -> Any:
    if key in _INTS and re.fullmatch(r"\d+", v):
        return int(v)
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def parse_dsn(dsn: str) -> SnowflakeDsn:
    """The connect arguments of ``dsn``, or :class:`DsnError` saying what is wrong (never with the password)."""
    text = (dsn or "").strip()
    if text.lower().startswith("snowflake://"):
        text = text[len("snowflake://"):]
    base, _, query = text.partition("?")
    at = base.rfind("@")
    if at <= 0:
        raise DsnError("the dsn must look like user[:password]@account[/database[/schema]][?param=value&...]"
                       " (no user@ found)")
    userinfo, rest = base[:at], base[at + 1:]
    user, has_pw, password = userinfo.partition(":")
    user, password = unquote(user), unquote(password)
    secrets = [password] if has_pw else []
    parts = rest.split("/")
    account = unquote(parts[0])
    if not user:
        raise DsnError("the dsn names no user (user[:password]@account/...)")
    if len(parts) > 3 or any(not p for p in parts[1:]):
        raise DsnError("the dsn's path must be /database or /database/schema after the account")
    kwargs: dict[str, Any] = {"user": user}
    if has_pw:
        kwargs["password"] = password
    if ":" in account:  # host:port
        host, _, port = account.partition(":")
        if not re.fullmatch(r"\d+", port):
            raise DsnError(f"the dsn's account {host}:<port> has a port that is not a number")
        kwargs["host"], kwargs["port"] = host, int(port)
    elif account:
        kwargs["account"] = account
    if len(parts) > 1:
        kwargs["database"] = unquote(parts[1])
    if len(parts) > 2:
        kwargs["schema"] = unquote(parts[2])
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DsnError("the dsn's parameters after '?' must be param=value pairs joined by '&'") from None
    for key, v in pairs:
        key = key.strip().lower()
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise DsnError(f"the dsn has a parameter {key!r} that is not a name")
        if key in _SECRETS:
            secrets.append(v)
        if key in _INTS and not re.fullmatch(r"\d+", v):
            raise DsnError(f"the dsn's parameter {key} must be a number")
        kwargs[key] = _value(key, v)
    if "account" not in kwargs:
        raise DsnError("the dsn names no account (user@account/... or ?account=...)")
    if "database" not in kwargs:
        raise DsnError("the dsn names no database (user@account/database[/schema]); the destination's tables, state"
                       " and meta tables live in it")
    return SnowflakeDsn(kwargs, tuple(s for s in secrets if s))


__all__ = ["DsnError", "SnowflakeDsn", "parse_dsn"]
