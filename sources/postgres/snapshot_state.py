"""Where a backfill keeps its plan and each destination's committed progress: ``snapshot_state_backend``.

- ``postgres`` (the default): a table in the source database, ``snapshot_state_schema``.``snapshot_state_table``
  (``wallaby.snapshot_state``), created when first needed. One row per (flow, table, part, destination): the
  plan rows have destination ``''``; a destination's row holds the block its part goes on from, the rows it has
  and whether it is done, as of the destination's last commit.
- ``file``: the same in a JSON file (``snapshot_state_path``), replaced atomically.
- ``none``: nothing kept; a backfill resumes only from its bytewax recovery store.

A destination's progress is recorded right after that destination committed (the backfill wraps each writer:
dataflows/backfill.py), so it never runs ahead of what the destination holds. A later run without the recovery
store (another machine, ``bytewax.run`` without ``-r``) resumes each part from the least progress of the flow's
destinations; a run after a finished backfill plans a new one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import psycopg

from sources.postgres.connection import connect, quote_ident, server_name
from sources.postgres.snapshot import Part
from wallaby.core.changes import SnapshotMark
from wallaby.core.errors import SourceError


@dataclass(frozen=True)
class PartProgress:
    next_block: int
    rows: int
    done: bool


@dataclass
class StoredBackfill:
    """A flow's backfill as the store has it: the plan, each destination's progress per part, whether finished."""

    parts: list[Part]
    progress: dict[str, dict[str, PartProgress]] = field(default_factory=dict)  # destination -> part key -> it
    finished: bool = False

    def resume_point(self, part: Part, destinations: list[str]) -> PartProgress | None:
        """Where ``part`` goes on for all of ``destinations``: the least of their progress (None: one of them has
        nothing recorded, so the part starts from its first block)."""
        points = [self.progress.get(d, {}).get(part.key) for d in destinations]
        if not points or any(p is None for p in points):
            return None
        return min(points, key=lambda p: (p.done, p.next_block))


class SnapshotState(Protocol):
    def load(self, flow_id: str) -> StoredBackfill | None: ...
    def start(self, flow_id: str, parts: list[Part]) -> None: ...
    def record(self, flow_id: str, destination: str, marks: list[SnapshotMark]) -> None: ...
    def finish(self, flow_id: str) -> None: ...


class NoSnapshotState:
    """``snapshot_state_backend=none``: nothing kept."""

    def load(self, flow_id: str) -> StoredBackfill | None:
        return None

    def start(self, flow_id: str, parts: list[Part]) -> None:
        pass

    def record(self, flow_id: str, destination: str, marks: list[SnapshotMark]) -> None:
        pass

    def finish(self, flow_id: str) -> None:
        pass


class FileSnapshotState:
    """``snapshot_state_backend=file``: one JSON document per file, every flow's backfill in it."""

    def __init__(self, path: str):
        self.path = Path(path).expanduser()
        self.lock = threading.Lock()

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SourceError(f"snapshot_state_path {str(self.path)!r} cannot be read as the backfill's state: {exc}"
                              " (remove it to start the backfill over)") from None

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def load(self, flow_id: str) -> StoredBackfill | None:
        with self.lock:
            doc = self._read().get(flow_id)
        if doc is None:
            return None
        return StoredBackfill([Part(**p) for p in doc["parts"]],
                              {d: {k: PartProgress(**v) for k, v in by_part.items()}
                               for d, by_part in doc.get("progress", {}).items()},
                              bool(doc.get("finished")))

    def start(self, flow_id: str, parts: list[Part]) -> None:
        with self.lock:
            data = self._read()
            data[flow_id] = {"parts": [asdict(p) for p in parts], "progress": {}, "finished": False,
                             "started_at": time.time()}
            self._write(data)

    def record(self, flow_id: str, destination: str, marks: list[SnapshotMark]) -> None:
        with self.lock:
            data = self._read()
            doc = data.get(flow_id)
            if doc is None:
                return
            by_part = doc.setdefault("progress", {}).setdefault(destination, {})
            for m in marks:
                by_part[m.part] = asdict(PartProgress(m.next_block, m.rows, m.done))
            self._write(data)

    def finish(self, flow_id: str) -> None:
        with self.lock:
            data = self._read()
            if flow_id in data:
                data[flow_id]["finished"] = True
                data[flow_id]["finished_at"] = time.time()
                self._write(data)


class PostgresSnapshotState:
    """``snapshot_state_backend=postgres``: a table in the source database (created when first needed)."""

    def __init__(self, dsn: str, schema: str, table: str):
        self.dsn = dsn
        self.qt = f"{quote_ident(schema)}.{quote_ident(table)}"
        self.schema = schema
        self._ready = False
        self.lock = threading.Lock()

    def _conn(self) -> psycopg.Connection:
        conn = connect(self.dsn, application_name="wallaby-backfill-state")
        if not self._ready:
            try:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.qt} (flow_id text NOT NULL, table_name text NOT NULL,"
                             " part_index int NOT NULL, part_count int NOT NULL, first_block bigint NOT NULL,"
                             " end_block bigint, destination text NOT NULL, next_block bigint, rows bigint,"
                             " done boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now(),"
                             " PRIMARY KEY (flow_id, table_name, part_index, destination))")
            except psycopg.Error as exc:
                conn.close()
                raise SourceError(f"cannot create the backfill's state table {self.qt}: {exc}"
                                  " (grant CREATE on the schema, or set snapshot_state_backend=file|none)",
                                  server=server_name(self.dsn)) from None
            self._ready = True
        return conn

    def load(self, flow_id: str) -> StoredBackfill | None:
        with self.lock, self._conn() as conn:
            rows = conn.execute(f"SELECT table_name, part_index, part_count, first_block, end_block, destination,"
                                f" next_block, rows, done FROM {self.qt} WHERE flow_id = %s"
                                " ORDER BY table_name, part_index", (flow_id,)).fetchall()
        if not rows:
            return None
        stored = StoredBackfill([])
        for table, index, count, first, end, dest, _next, _rows, done in rows:
            if table == "" and dest == "":
                stored.finished = bool(done)  # the run's own row
            elif dest == "":
                stored.parts.append(Part(table, index, count, first, end))
        for table, index, count, first, end, dest, nxt, nrows, done in rows:
            if dest != "" and table != "":
                key = Part(table, index, count, first, end).key
                stored.progress.setdefault(dest, {})[key] = PartProgress(int(nxt), int(nrows), bool(done))
        return stored

    def start(self, flow_id: str, parts: list[Part]) -> None:
        with self.lock, self._conn() as conn, conn.transaction():
            conn.execute(f"DELETE FROM {self.qt} WHERE flow_id = %s", (flow_id,))
            conn.execute(f"INSERT INTO {self.qt} (flow_id, table_name, part_index, part_count, first_block,"
                         " destination) VALUES (%s, '', -1, 0, 0, '')", (flow_id,))
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {self.qt} (flow_id, table_name, part_index, part_count, first_block,"
                                " end_block, destination, next_block, rows) VALUES (%s, %s, %s, %s, %s, %s, '', %s, 0)",
                                [(flow_id, p.table, p.index, p.count, p.first_block, p.end_block, p.first_block)
                                 for p in parts])

    def record(self, flow_id: str, destination: str, marks: list[SnapshotMark]) -> None:
        if not marks:
            return
        with self.lock, self._conn() as conn, conn.transaction():
            plan = {Part(t, i, c, f, e).key: (t, i, c, f, e) for t, i, c, f, e in conn.execute(
                f"SELECT table_name, part_index, part_count, first_block, end_block FROM {self.qt}"
                " WHERE flow_id = %s AND destination = '' AND table_name <> ''", (flow_id,)).fetchall()}
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {self.qt} (flow_id, table_name, part_index, part_count, first_block, end_block,"
                    " destination, next_block, rows, done) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (flow_id, table_name, part_index, destination) DO UPDATE SET"
                    " next_block = excluded.next_block, rows = excluded.rows, done = excluded.done, updated_at = now()",
                    [(flow_id, *plan[m.part], destination, m.next_block, m.rows, m.done) for m in marks
                     if m.part in plan])

    def finish(self, flow_id: str) -> None:
        with self.lock, self._conn() as conn:
            conn.execute(f"UPDATE {self.qt} SET done = true, updated_at = now() WHERE flow_id = %s"
                         " AND table_name = '' AND destination = ''", (flow_id,))


def open_snapshot_state(opts) -> SnapshotState:
    """The store the source options name (``snapshot_state_backend`` and its options)."""
    if opts.snapshot_state_backend == "none":
        return NoSnapshotState()
    if opts.snapshot_state_backend == "file":
        return FileSnapshotState(opts.snapshot_state_path)
    return PostgresSnapshotState(opts.dsn, opts.snapshot_state_schema, opts.snapshot_state_table)

