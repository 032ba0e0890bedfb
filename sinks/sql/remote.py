"""What the table engine's network destinations (Snowflake, Snowpipe, ClickHouse) share beyond
:class:`~sinks.sql.engine.TableEngine`: the epoch reduced in a private in-memory DuckDB (``_duck``, the source rows
registered as ``__wallaby_src`` per apply), and a server away or busy failing the epoch as a
:class:`TransientSinkError` (the worker exits 75 and is started again, which replays the epoch) rather than a
permanent one: the dialect's :meth:`RemoteTableEngine._error_message` says which of its errors are (``_transient``)."""

from __future__ import annotations

import duckdb

from sinks.base import PermanentSinkError, TransientSinkError
from sinks.sql.engine import TableEngine, _Pending


class RemoteTableEngine(TableEngine):
    """A :class:`TableEngine` whose destination is a server: subclasses call :meth:`_open_reduction` when they
    connect and :meth:`_close_reduction` when they close, and implement :meth:`_server_error` and :meth:`_clean`."""

    _duck: duckdb.DuckDBPyConnection | None = None
    _transient = False

    def _open_reduction(self) -> None:
        self._duck = duckdb.connect(config={"threads": 1})
        self._duck.execute("SET TimeZone = 'UTC'")

    def _close_reduction(self) -> None:
        duck, self._duck = self._duck, None
        if duck is not None:
            duck.close()

    def _clean(self, exc: BaseException | str) -> str:
        """An error's text as it may be shown: the dialect masks its password."""
        return str(exc)

    def _server_error(self, exc: Exception) -> bool | None:
        """Whether ``exc`` is the server's error: True when it is away or busy (transient), False when it refused,
        None when it is not the server's."""
        return None

    def _error_message(self, p: _Pending | None, exc: Exception) -> str | None:
        transient = self._server_error(exc)
        if transient is not None:
            self._transient = transient
            return self._clean(exc)
        if isinstance(exc, duckdb.Error):
            return f"cannot reduce the epoch's changes: {self._clean(exc)}"
        return None

    def _fail(self, where, message, held=None):
        transient, self._transient = self._transient, False
        try:
            super()._fail(where, message, held)
        except PermanentSinkError:
            if transient and held is None:
                raise TransientSinkError(self.name, self._where(where) + message) from None
            raise

    def _after_apply(self) -> None:
        if self._duck is not None:
            try:
                self._duck.unregister("__wallaby_src")
            except duckdb.Error:
                pass


__all__ = ["RemoteTableEngine"]
