"""The checkpoint store: the confirmed position of each flow, readable by tools.

Backends: SQLite (a file) and Postgres. Chosen by the environment:

- ``WALLABY_CHECKPOINT_BACKEND``: ``sqlite`` or ``postgres``. Default: ``postgres``
  when ``WALLABY_POSTGRES_DSN`` is set, else ``sqlite``.
- ``WALLABY_CHECKPOINT_PATH``: the SQLite file (default ``~/.wallaby/checkpoints.db``).
- ``WALLABY_CHECKPOINT_DSN``: overrides the full DSN (a ``sqlite:///path`` or
  ``file:`` URI for SQLite, a Postgres DSN for Postgres).

A row per (flow, slot): the LSN the slot was confirmed to (``confirmed_lsn``,
everything before it is durable in every destination) and the position of the
last change emitted when it was written.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wallaby.changes import Position, format_lsn
from wallaby.errors import ConfigError, FieldProblem, redact_dsn


@dataclass(frozen=True)
class Checkpoint:
    flow_id: str
    slot: str
    confirmed_lsn: int
    position: Position
    updated_at: float

    def as_dict(self) -> dict:
        return {
            "flow_id": self.flow_id,
            "slot": self.slot,
            "confirmed_lsn": format_lsn(self.confirmed_lsn),
            "position": str(self.position),
            "updated_at": self.updated_at,
        }


class CheckpointStore(Protocol):
    def get(self, flow_id: str, slot: str) -> Checkpoint | None: ...
    def put(self, cp: Checkpoint) -> None: ...
    def list(self, flow_id: str | None = None) -> list[Checkpoint]: ...
    def close(self) -> None: ...


_SQL_CREATE = (
    "CREATE TABLE IF NOT EXISTS wallaby_checkpoints ("
    " flow_id TEXT NOT NULL, slot TEXT NOT NULL, confirmed_lsn BIGINT NOT NULL,"
    " position_lsn BIGINT NOT NULL, position_ordinal BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (flow_id, slot))"
)
_SQL_UPSERT = (
    "INSERT INTO wallaby_checkpoints VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
    " ON CONFLICT (flow_id, slot) DO UPDATE SET confirmed_lsn = excluded.confirmed_lsn,"
    " position_lsn = excluded.position_lsn, position_ordinal = excluded.position_ordinal,"
    " updated_at = excluded.updated_at"
)
_SQL_SELECT = "SELECT flow_id, slot, confirmed_lsn, position_lsn, position_ordinal, updated_at FROM wallaby_checkpoints"


def _row(r) -> Checkpoint:
    # LSNs are unsigned 64-bit; stored as signed BIGINT.
    def u(v: int) -> int:
        return v & 0xFFFFFFFFFFFFFFFF

    return Checkpoint(r[0], r[1], u(r[2]), Position(u(r[3]), r[4]), r[5])


def _s(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class _SQLCheckpoints:
    """The queries, shared by both backends; a backend supplies `_run` and its placeholder."""

    placeholder = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _run(self, sql: str, params: tuple = ()) -> list:
        raise NotImplementedError

    def _where(self, *cols: str) -> str:
        return " WHERE " + " AND ".join(f"{c} = {self.placeholder}" for c in cols)

    def get(self, flow_id: str, slot: str) -> Checkpoint | None:
        with self._lock:
            rows = self._run(_SQL_SELECT + self._where("flow_id", "slot"), (flow_id, slot))
        return _row(rows[0]) if rows else None

    def put(self, cp: Checkpoint) -> None:
        with self._lock:
            self._run(
                _SQL_UPSERT.format(p=self.placeholder),
                (cp.flow_id, cp.slot, _s(cp.confirmed_lsn), _s(cp.position.lsn), cp.position.ordinal, cp.updated_at),
            )

    def list(self, flow_id: str | None = None) -> list[Checkpoint]:
        with self._lock:
            if flow_id is None:
                rows = self._run(_SQL_SELECT + " ORDER BY flow_id, slot")
            else:
                rows = self._run(_SQL_SELECT + self._where("flow_id") + " ORDER BY slot", (flow_id,))
        return [_row(r) for r in rows]


class SQLiteCheckpoints(_SQLCheckpoints):
    def __init__(self, path: str | Path):
        super().__init__()
        self.path = str(path)
        if self.path != ":memory:" and not self.path.startswith("file:"):
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.path = str(Path(self.path).expanduser())
        self._conn = sqlite3.connect(self.path, uri=self.path.startswith("file:"), check_same_thread=False,
                                     timeout=30, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SQL_CREATE)

    def _run(self, sql: str, params: tuple = ()) -> list:
        return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self._conn.close()


class PostgresCheckpoints(_SQLCheckpoints):
    placeholder = "%s"

    def __init__(self, dsn: str):
        import psycopg

        super().__init__()
        try:
            self._conn = psycopg.connect(dsn, autocommit=True, application_name="wallaby-checkpoints")
        except psycopg.Error as exc:
            problem = f"cannot connect to the checkpoint Postgres: {redact_dsn(str(exc))}"
            raise ConfigError("checkpoint store", [FieldProblem("WALLABY_CHECKPOINT_DSN", problem)]) from None
        self._conn.execute(_SQL_CREATE)

    def _run(self, sql: str, params: tuple = ()) -> list:
        cur = self._conn.execute(sql, params)
        return cur.fetchall() if cur.description else []

    def close(self) -> None:
        self._conn.close()


def default_sqlite_path() -> Path:
    return Path(os.environ.get("WALLABY_CHECKPOINT_PATH", "~/.wallaby/checkpoints.db")).expanduser()


def open_store(env: dict[str, str] | None = None) -> CheckpointStore:
    """The checkpoint store the environment names."""
    env = dict(os.environ if env is None else env)
    backend = env.get("WALLABY_CHECKPOINT_BACKEND", "").strip().lower()
    if not backend:
        backend = "postgres" if env.get("WALLABY_POSTGRES_DSN") else "sqlite"
    dsn = env.get("WALLABY_CHECKPOINT_DSN", "").strip()
    if backend == "sqlite":
        if dsn:
            path = dsn.removeprefix("sqlite://").removeprefix("sqlite:") if dsn.startswith("sqlite:") else dsn
            return SQLiteCheckpoints(path)
        return SQLiteCheckpoints(env.get("WALLABY_CHECKPOINT_PATH") or default_sqlite_path())
    if backend == "postgres":
        dsn = dsn or env.get("WALLABY_POSTGRES_DSN", "")
        if not dsn:
            raise ConfigError("checkpoint store", [FieldProblem(
                "WALLABY_CHECKPOINT_DSN", "the postgres checkpoint backend needs WALLABY_CHECKPOINT_DSN"
                " or WALLABY_POSTGRES_DSN")])
        return PostgresCheckpoints(dsn)
    raise ConfigError("checkpoint store", [FieldProblem(
        "WALLABY_CHECKPOINT_BACKEND", f"unknown backend {backend!r}; use 'sqlite' or 'postgres'")])

