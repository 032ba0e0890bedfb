"""The checkpoint store: the confirmed position of each flow, readable by tools.

It lives in wallaby's own database (:mod:`wallaby.state.sqldb`: SQLite or Postgres,
chosen by ``WALLABY_CHECKPOINT_BACKEND`` / ``_PATH`` / ``_DSN`` and
``WALLABY_POSTGRES_DSN``), beside the flow store.

A row per (flow, slot): the LSN the slot was confirmed to (``confirmed_lsn``,
everything before it is durable in every destination), the position of the
last change emitted when it was written, and the source it was read from
(``source``, a :class:`~wallaby.core.identity.SourceIdentity` as JSON; empty in rows
of earlier versions). The row is written *before* the slot is confirmed to the
server, so for the flow's own slot ``confirmed_lsn`` is never behind the slot's
``confirmed_flush_lsn``: a slot confirmed further was advanced by someone else.
A worker fenced by a newer generation of its flow cannot write one
(:meth:`Checkpoints.put` with ``generation``).

``wallaby_position_resets`` holds the resets asked for with ``wallaby-admin
checkpoint reset`` (a flow's positions, or one destination's): the next worker
of the flow discards those stored positions and clears the request once its
first epoch is confirmed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wallaby.core.changes import Position, format_lsn
from wallaby.core.errors import FencedError
from wallaby.core.identity import SourceIdentity
from wallaby.state.flowstore import FlowStore
from wallaby.state.sqldb import PostgresDatabase, SQLDatabase, SQLiteDatabase, default_sqlite_path, open_database


@dataclass(frozen=True)
class Checkpoint:
    flow_id: str
    slot: str
    confirmed_lsn: int
    position: Position
    updated_at: float
    source: SourceIdentity | None = None  # None: written by an earlier version

    def as_dict(self) -> dict:
        return {
            "flow_id": self.flow_id,
            "slot": self.slot,
            "confirmed_lsn": format_lsn(self.confirmed_lsn),
            "position": str(self.position),
            "updated_at": self.updated_at,
            "source": self.source.describe() if self.source else "",
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
    "ALTER TABLE wallaby_checkpoints ADD COLUMN source TEXT",
    "CREATE TABLE IF NOT EXISTS wallaby_position_resets ("
    " flow_id TEXT NOT NULL, destination TEXT NOT NULL, requested_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (flow_id, destination))",
]
_SQL_UPSERT = (
    "INSERT INTO wallaby_checkpoints (flow_id, slot, confirmed_lsn, position_lsn, position_ordinal, updated_at,"
    " source) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (flow_id, slot) DO UPDATE SET confirmed_lsn = excluded.confirmed_lsn,"
    " position_lsn = excluded.position_lsn, position_ordinal = excluded.position_ordinal,"
    " updated_at = excluded.updated_at, source = excluded.source"
)
_SQL_SELECT = ("SELECT flow_id, slot, confirmed_lsn, position_lsn, position_ordinal, updated_at, source"
               " FROM wallaby_checkpoints")
ALL = "*"  # a reset of every stored position of a flow (not one destination's)


def _row(r) -> Checkpoint:
    # LSNs are unsigned 64-bit; stored as signed BIGINT.
    def u(v: int) -> int:
        return v & 0xFFFFFFFFFFFFFFFF

    return Checkpoint(r[0], r[1], u(r[2]), Position(u(r[3]), r[4]), r[5], SourceIdentity.from_json(r[6]))


def _s(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class Checkpoints:
    """The checkpoint store over a :class:`~wallaby.state.sqldb.SQLDatabase`."""

    def __init__(self, db: SQLDatabase, own_db: bool = True):
        self.db = db
        self._own_db = own_db
        self._flows: FlowStore | None = None
        self._resets_read: dict[str, float] = {}  # flow -> when resets() read its requests
        db.migrate("checkpoints", MIGRATIONS)

    def get(self, flow_id: str, slot: str) -> Checkpoint | None:
        rows = self.db.run(_SQL_SELECT + " WHERE flow_id = ? AND slot = ?", (flow_id, slot))
        return _row(rows[0]) if rows else None

    def put(self, cp: Checkpoint, generation: int | None = None) -> None:
        """Write ``cp``; with ``generation``, only while that is still the flow's generation in the flow store
        (else :class:`~wallaby.core.errors.FencedError`, nothing written)."""
        params = (cp.flow_id, cp.slot, _s(cp.confirmed_lsn), _s(cp.position.lsn), cp.position.ordinal, cp.updated_at,
                  cp.source.to_json() if cp.source else None)
        if generation is None:
            self.db.run(_SQL_UPSERT, params)
            return
        with self.db.transaction():
            self.flow_store.check_generation(cp.flow_id, generation, lock=True)
            self.db.run(_SQL_UPSERT, params)

    @property
    def flow_store(self) -> FlowStore:
        """The flow store in the same database: the generation fence of :meth:`put`, and the flows and DDL events
        the API server and a flow's DDL gate read (made on first use, so a store only of checkpoints has no flow
        tables)."""
        if self._flows is None:
            self._flows = FlowStore(self.db, own_db=False)
        return self._flows

    def list(self, flow_id: str | None = None) -> list[Checkpoint]:
        if flow_id is None:
            rows = self.db.run(_SQL_SELECT + " ORDER BY flow_id, slot")
        else:
            rows = self.db.run(_SQL_SELECT + " WHERE flow_id = ? ORDER BY slot", (flow_id,))
        return [_row(r) for r in rows]

    def delete(self, flow_id: str) -> int:
        self.db.run("DELETE FROM wallaby_position_resets WHERE flow_id = ?", (flow_id,))
        return len(self.db.run("DELETE FROM wallaby_checkpoints WHERE flow_id = ? RETURNING slot", (flow_id,)))

    # -- resets asked for (wallaby-admin checkpoint reset) ---------------------------------------------------
    def request_reset(self, flow_id: str, destination: str | None = None) -> None:
        """Ask the flow's next worker to discard its stored positions: every one (``destination`` None: the
        checkpoint, the recovery store and every destination's high-water), or one destination's high-water."""
        self.db.run("INSERT INTO wallaby_position_resets VALUES (?, ?, ?) ON CONFLICT (flow_id, destination)"
                    " DO UPDATE SET requested_at = excluded.requested_at", (flow_id, destination or ALL, time.time()))

    def resets(self, flow_id: str) -> frozenset[str]:
        """The resets waiting for the flow's next worker: destination names, ``"*"`` for all."""
        self._resets_read[flow_id] = time.time()
        return frozenset(r[0] for r in self.db.run(
            "SELECT destination FROM wallaby_position_resets WHERE flow_id = ?", (flow_id,)))

    def clear_resets(self, flow_id: str, done: frozenset[str]) -> None:
        """The resets ``done`` (as :meth:`resets` read them) took effect; one asked for since stays."""
        read = self._resets_read.get(flow_id, time.time())
        for dest in done:
            self.db.run("DELETE FROM wallaby_position_resets WHERE flow_id = ? AND destination = ?"
                        " AND requested_at <= ?", (flow_id, dest, read))

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
