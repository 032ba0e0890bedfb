"""The checkpoint store: the confirmed position of each flow, readable by tools.

It lives in wallaby's own database (:mod:`wallaby.sqldb`: SQLite or Postgres,
chosen by ``WALLABY_CHECKPOINT_BACKEND`` / ``_PATH`` / ``_DSN`` and
``WALLABY_POSTGRES_DSN``), beside the flow store.

A row per (flow, slot): the LSN the slot was confirmed to (``confirmed_lsn``,
everything before it is durable in every destination) and the position of the
last change emitted when it was written. A worker fenced by a newer generation
of its flow cannot write one (:meth:`Checkpoints.put` with ``generation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wallaby.changes import Position, format_lsn
from wallaby.errors import FencedError
from wallaby.sqldb import PostgresDatabase, SQLDatabase, SQLiteDatabase, default_sqlite_path, open_database


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
    def put(self, cp: Checkpoint, generation: int | None = None) -> None: ...
    def list(self, flow_id: str | None = None) -> list[Checkpoint]: ...
    def close(self) -> None: ...


MIGRATIONS = [
    "CREATE TABLE IF NOT EXISTS wallaby_checkpoints ("
    " flow_id TEXT NOT NULL, slot TEXT NOT NULL, confirmed_lsn BIGINT NOT NULL,"
    " position_lsn BIGINT NOT NULL, position_ordinal BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (flow_id, slot))",
]
_SQL_UPSERT = (
    "INSERT INTO wallaby_checkpoints VALUES (?, ?, ?, ?, ?, ?)"
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


class Checkpoints:
    """The checkpoint store over a :class:`~wallaby.sqldb.SQLDatabase`."""

    def __init__(self, db: SQLDatabase, own_db: bool = True):
        self.db = db
        self._own_db = own_db
        self._flows = None
        db.migrate("checkpoints", MIGRATIONS)

    def get(self, flow_id: str, slot: str) -> Checkpoint | None:
        rows = self.db.run(_SQL_SELECT + " WHERE flow_id = ? AND slot = ?", (flow_id, slot))
        return _row(rows[0]) if rows else None

    def put(self, cp: Checkpoint, generation: int | None = None) -> None:
        """Write ``cp``; with ``generation``, only while that is still the flow's generation in the flow store
        (else :class:`~wallaby.errors.FencedError`, nothing written)."""
        params = (cp.flow_id, cp.slot, _s(cp.confirmed_lsn), _s(cp.position.lsn), cp.position.ordinal, cp.updated_at)
        if generation is None:
            self.db.run(_SQL_UPSERT, params)
            return
        with self.db.transaction():
            self.flows().check_generation(cp.flow_id, generation, lock=True)
            self.db.run(_SQL_UPSERT, params)

    def flows(self):
        """The flow store in the same database (for the generation fence)."""
        if self._flows is None:
            from wallaby.flowstore import FlowStore

            self._flows = FlowStore(self.db, own_db=False)
        return self._flows

    def list(self, flow_id: str | None = None) -> list[Checkpoint]:
        if flow_id is None:
            rows = self.db.run(_SQL_SELECT + " ORDER BY flow_id, slot")
        else:
            rows = self.db.run(_SQL_SELECT + " WHERE flow_id = ? ORDER BY slot", (flow_id,))
        return [_row(r) for r in rows]

    def delete(self, flow_id: str) -> int:
        return len(self.db.run("DELETE FROM wallaby_checkpoints WHERE flow_id = ? RETURNING slot", (flow_id,)))

    def close(self) -> None:
        if self._own_db:
            self.db.close()


class SQLiteCheckpoints(Checkpoints):
    def __init__(self, path: str | Path):
        db = SQLiteDatabase(path)
        self.path = db.path
        super().__init__(db)


class PostgresCheckpoints(Checkpoints):
    def __init__(self, dsn: str):
        super().__init__(PostgresDatabase(dsn, "wallaby-checkpoints"))


def open_store(env: dict[str, str] | None = None) -> Checkpoints:
    """The checkpoint store the environment names."""
    return Checkpoints(open_database(env, "wallaby-checkpoints"))


__all__ = ["Checkpoint", "CheckpointStore", "Checkpoints", "FencedError", "PostgresCheckpoints", "SQLiteCheckpoints",
           "default_sqlite_path", "open_store"]
