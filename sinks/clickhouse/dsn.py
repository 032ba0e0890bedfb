"""The ClickHouse destination's ``dsn``: ``http[s]://user[:password]@host[:port][/database][?name=value&...]``
(``clickhouse://`` is ``http://``, ``clickhouses://`` is ``https://``), the HTTP interface that clickhouse-connect
speaks (port 8123, 8443 with TLS, by default).

``/database`` names where the writer keeps its state and meta tables (default ``wallaby``); the target tables go to
the ``database`` / ``schema`` option, else the source table's schema. Query parameters the driver knows
(``connect_timeout``, ``send_receive_timeout``, ``verify``, ``compress``, ``ca_cert``, ``client_name``) go to it;
every other one is a ClickHouse setting of the session (``?max_insert_threads=4``). The password never appears in
an error (:attr:`ClickHouseDsn.shown`, :meth:`ClickHouseDsn.clean`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

SCHEMES = {"http": False, "https": True, "clickhouse": False, "clickhouses": True}
DRIVER_PARAMS = {"connect_timeout": float, "send_receive_timeout": float, "verify": "bool", "compress": str,
                 "ca_cert": str, "client_name": str, "secure": "bool"}
DEFAULT_STATE_DATABASE = "wallaby"


class DsnError(ValueError):
    """The dsn cannot be used (the message never holds the password)."""


@dataclass(frozen=True, slots=True)
class ClickHouseDsn:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    secure: bool
    database: str
    driver: dict[str, Any]
    settings: dict[str, str]

    @property
    def shown(self) -> str:
        """The dsn without its password: ``user@host:port``."""
        return f"{self.user}@{self.host}:{self.port}"

    def clean(self, text: str) -> str:
        """``text`` with the password (plain or URL-quoted) masked."""
        if self.password:
            for form in {self.password, quote(self.password, safe=""), quote(self.password)}:
                text = text.replace(form, "***")
        return text

    def client_kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "username": self.user, "password": self.password,
                "secure": self.secure, "settings": dict(self.settings), **self.driver}


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise DsnError(f"parameter {name} must be true or false, not {value!r}")


def parse_dsn(dsn: str) -> ClickHouseDsn:
    """Parse ``dsn`` (see the module docstring), or raise :class:`DsnError` saying what is wrong."""
    text = (dsn or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        password = ""
        if "@" in text and ":" in text.split("@", 1)[0].split("//", 1)[-1]:
            password = text.split("@", 1)[0].split("//", 1)[-1].split(":", 1)[1]
        message = str(exc).replace(password, "***") if password else str(exc)
        raise DsnError(f"not a URL ({message}); expected http://user:password@host:8123[/database]") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise DsnError(f"scheme {parts.scheme + '://' if parts.scheme else '(none)'} is not one of"
                       f" {', '.join(s + '://' for s in SCHEMES)} (the ClickHouse HTTP interface, e.g."
                       " http://user:password@host:8123)")
    if not parts.hostname:
        raise DsnError("the dsn names no host (http://user:password@host:8123)")
    secure = SCHEMES[scheme]
    path = unquote(parts.path.strip("/"))
    if "/" in path:
        raise DsnError("the path holds one name, the database of the writer's state and meta tables")
    driver: dict[str, Any] = {}
    settings: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = DRIVER_PARAMS.get(key)
        if kind is None:
            settings[key] = value
        elif kind == "bool":
            driver[key] = _bool(key, value)
        elif kind is float:
            try:
                driver[key] = float(value)
            except ValueError:
                raise DsnError(f"parameter {key} must be a number of seconds, not {value!r}") from None
        else:
            driver[key] = value
    if "secure" in driver:
        secure = driver.pop("secure")
    return ClickHouseDsn(host=parts.hostname, port=port or (8443 if secure else 8123),
                         user=unquote(parts.username or "default"), password=unquote(parts.password or ""),
                         secure=secure, database=path or DEFAULT_STATE_DATABASE, driver=driver, settings=settings)


__all__ = ["DEFAULT_STATE_DATABASE", "ClickHouseDsn", "DsnError", "parse_dsn"]
