"""A local Snowflake for tests: ``fakesnow`` in server mode, as a real HTTP server in a subprocess.

Use it by importing the fixture: ``from tests.snowserver import snowflake  # noqa: F401``. It yields a
:class:`SnowflakeServer` with the parameters ``snowflake.connector.connect`` needs (``protocol='http'`` to
``127.0.0.1:PORT``) and a ``connect(**overrides)`` helper. A server that cannot start fails the run with its
output; it is never skipped. The fixture's name shadows the ``snowflake`` package in a module that imports it: there,
import the connector as ``from snowflake.connector import ...`` or ``import snowflake.connector as sfc``.

The server runs in its own process (``python -m fakesnow -s``) so that its DuckDB state is not shared with the
test process. All sessions share one in-memory DuckDB there: a database or table made by one connection is seen by
the others, for the whole test session, so tests name their own databases. fakesnow checks no credential (any
user and password log in) and creates the database and schema named at login when they do not exist. Files PUT
to an internal stage are copied by the connector itself (the server answers PUT with stage type LOCAL_FS) into
``<tmp_dir>/fakesnow_bucket_*/<DATABASE>/<SCHEMA>/<STAGE>/``, which the server reads on COPY INTO; ``tmp_dir`` is
the server's own temporary directory, removed at the end of the session.

``network_timeout=1``: fakesnow answers a statement it cannot handle (its bugs, a DuckDB write conflict, a parse
error) with HTTP 500, which the connector retries, running the statement again, until ``network_timeout``; with 1s
it fails at once with ``InternalServerError``, as fakesnow's own ``fakesnow.server()`` parameters do.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.servers import free_port, log_tail, running

START_TIMEOUT = 60.0


def _answers(port: int) -> bool:
    """True once the server accepts a TCP connection (uvicorn listens only when the app is ready)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class SnowflakeServer:
    """Where the fake Snowflake listens, and how the real connector reaches it."""

    host: str
    port: int
    tmp_dir: str = ""
    protocol: str = "http"
    account: str = "fakesnow"
    user: str = "fake"
    password: str = "snow"
    database: str = "WALLABY"
    schema: str = "PUBLIC"
    # No out-of-band telemetry to the outside.
    session_parameters: dict[str, Any] = field(
        default_factory=lambda: {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False})
    network_timeout: int = 1  # no retries of a statement fakesnow answered with HTTP 500 (see above)

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"

    def params(self, **overrides: Any) -> dict[str, Any]:
        """The keyword arguments for ``snowflake.connector.connect``, with ``overrides`` applied."""
        params: dict[str, Any] = {
            "host": self.host, "port": self.port, "protocol": self.protocol, "account": self.account,
            "user": self.user, "password": self.password, "database": self.database, "schema": self.schema,
            "session_parameters": dict(self.session_parameters), "network_timeout": self.network_timeout,
        }
        params.update(overrides)
        return params

    def connect(self, **overrides: Any):
        """A ``snowflake.connector`` connection to this server (the real connector, over HTTP)."""
        import snowflake.connector as sfc  # here, not at the top: the fixture below is named ``snowflake``

        return sfc.connect(**self.params(**overrides))


@pytest.fixture(scope="session")
def snowflake() -> Iterator[SnowflakeServer]:
    """A fakesnow server running for the whole session."""
    port = free_port()
    tmp_dir = tempfile.mkdtemp(prefix="wallaby-fakesnow-")
    server = SnowflakeServer(host="127.0.0.1", port=port, tmp_dir=tmp_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWFLAKE_")}
    env["TMPDIR"] = tmp_dir  # fakesnow keeps internal stages under a mkdtemp() it never removes
    command = [sys.executable, "-m", "fakesnow", "-s", "--host", "127.0.0.1", "-p", str(port)]
    try:
        with running(f"fakesnow server on {server.url}", command, lambda: _answers(port), timeout=START_TIMEOUT,
                     env=env) as (_, log):
            try:
                with server.connect() as conn:
                    conn.cursor().execute("SELECT 1").fetchall()
            except Exception as exc:
                pytest.fail(f"fakesnow server on {server.url} answers but a connector query failed: {exc!r}\n"
                            f"{log_tail(log)}", pytrace=False)
            yield server
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
