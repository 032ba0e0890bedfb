"""Where a backfill keeps its plan and each destination's committed progress: ``snapshot_state_backend``.

- ``postgres`` (the default): a table in the source database, ``snapshot_state_schema``.``snapshot_state_table``
  (``wallaby.snapshot_state``), created when first needed. One row per (flow, table, part, destination): the
  plan rows have destination ``''`` (a key-range part's column, its range and whether it is the part of the
  column's NULLs too); a destination's row holds the block its part goes on from (a key-range part: the last key it
  read, ``next_key``), the rows it has and whether it is done, as of the destination's last commit. A table made by
  an earlier version gets the key-range columns added when first used.
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
from wallaby.core.errors import SourceError, TerminalSourceError
from wallaby.state.shared_ddl import shared_ddl


@dataclass(frozen=True)
class PartProgress:
    next_block: int
    rows: int
    done: bool
    next_key: str | None = None  # a key-range part: the last key read (the column type's text)


@dataclass
class StoredBackfill:
    """A flow's backfill as the store has it: the plan, each destination's progress per part, whether finished."""

    parts: list[Part]
    progress: dict[str, dict[str, PartProgress]] = field(default_factory=dict)  # destination -> part key -> it
    finished: bool = False

    def resume_point(self, part: Part, destinations: list[str]) -> PartProgress | None:
        """Where ``part`` goes on for all of ``destinations``: the least of their progress (None: one of them has
        nothing recorded, so the part starts from its first block). A key-range part's keys are not compared here
        (their order is the column type's): its rows read are, which grow with every chunk but its last."""
        points = [self.progress.get(d, {}).get(part.key) for d in destinations]
        if not points or any(p is None for p in points):
            return None
        return min(points, key=lambda p: (p.done, p.next_block, p.rows))


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
            updated = doc.setdefault("part_updated_at", {})  # part -> when a destination last recorded it (status)
            for m in marks:
                by_part[m.part] = asdict(PartProgress(m.next_block, m.rows, m.done, m.next_key))
                updated[m.part] = time.time()
            self._write(data)

    def finish(self, flow_id: str) -> None:
        with self.lock:
            data = self._read()
            if flow_id in data:
                data[flow_id]["finished"] = True
                data[flow_id]["finished_at"] = time.time()
                self._write(data)


# The columns of key-range parts (partition_column), added to a state table an earlier version made.
KEY_RANGE_COLUMNS = {"partition_column": "text", "range_lo": "text", "range_hi": "text",
                     "null_part": "boolean NOT NULL DEFAULT false", "next_key": "text"}


# The columns wallaby's state table has had from its first version (KEY_RANGE_COLUMNS are added when missing).
OWN_COLUMNS = frozenset({"flow_id", "table_name", "part_index", "part_count", "first_block", "end_block",
                         "destination", "next_block", "rows", "done"})


class PostgresSnapshotState:
    """``snapshot_state_backend=postgres``: a table in the source database (created when first needed)."""

    def __init__(self, dsn: str, schema: str, table: str):
        self.dsn = dsn
        self.qt = f"{quote_ident(schema)}.{quote_ident(table)}"
        self.schema = schema
        self._ready = False
        self._key_columns = False  # KEY_RANGE_COLUMNS known to be there (checked once, before the first write)
        self.lock = threading.Lock()

    def _conn(self) -> psycopg.Connection:
        conn = connect(self.dsn, application_name="wallaby-backfill-state")
        if not self._ready:
            try:
                with shared_ddl(conn):  # the parts of a backfill start at once
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {self.qt} (flow_id text NOT NULL,"
                                 " table_name text NOT NULL, part_index int NOT NULL, part_count int NOT NULL,"
                                 " first_block bigint NOT NULL, end_block bigint, destination text NOT NULL,"
                                 " next_block bigint, rows bigint, done boolean NOT NULL DEFAULT false,"
                                 " updated_at timestamptz NOT NULL DEFAULT now(),"
                                 + "".join(f" {c} {t}," for c, t in KEY_RANGE_COLUMNS.items())
                                 + " PRIMARY KEY (flow_id, table_name, part_index, destination))")
            except psycopg.Error as exc:
                conn.close()
                raise SourceError(f"cannot create the backfill's state table {self.qt}: {exc}"
                                  " (grant CREATE on the schema, or set snapshot_state_backend=file|none)",
                                  server=server_name(self.dsn)) from None
            have = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                                               " AND attnum > 0 AND NOT attisdropped", (self.qt,)).fetchall()}
            lacking = sorted(OWN_COLUMNS - have)
            if lacking:  # another program's table of the same name (the Go WALlaby's has this default name)
                conn.close()
                raise TerminalSourceError(
                    f"the backfill's state table {self.qt} exists with other columns (it lacks"
                    f" {', '.join(lacking)}: another program's, e.g. the Go WALlaby's); set the source option"
                    f" snapshot_state_table to another name (e.g. wallaby_snapshot_state)",
                    server=server_name(self.dsn))
            self._ready = True
        return conn

    def _with_key_columns(self, conn: psycopg.Connection) -> None:
        """Add :data:`KEY_RANGE_COLUMNS` to a table an earlier version made (before this store's first write)."""
        if self._key_columns:
            return
        have = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                                           " AND attnum > 0 AND NOT attisdropped", (self.qt,)).fetchall()}
        missing = [c for c in KEY_RANGE_COLUMNS if c not in have]
        if missing:
            try:
                conn.execute(f"ALTER TABLE {self.qt} "
                             + ", ".join(f"ADD COLUMN IF NOT EXISTS {c} {KEY_RANGE_COLUMNS[c]}" for c in missing))
            except psycopg.Error as exc:
                raise SourceError(f"cannot add the key-range columns ({', '.join(missing)}) to the backfill's state"
                                  f" table {self.qt}: {exc} (its owner can; or set snapshot_state_backend=file|none)",
                                  server=server_name(self.dsn)) from None
        self._key_columns = True

    def load(self, flow_id: str) -> StoredBackfill | None:
        with self.lock, self._conn() as conn:  # as rows of JSON: a table an earlier version made lacks some columns
            rows = [r for (r,) in conn.execute(f"SELECT to_jsonb(s) FROM {self.qt} s WHERE flow_id = %s"
                                               " ORDER BY table_name, part_index", (flow_id,)).fetchall()]
        if not rows:
            return None
        stored = StoredBackfill([])
        for r in rows:
            if r["table_name"] == "" and r["destination"] == "":
                stored.finished = bool(r["done"])  # the run's own row
            elif r["destination"] == "":
                stored.parts.append(Part(r["table_name"], r["part_index"], r["part_count"], r["first_block"],
                                         r["end_block"], r.get("partition_column"), r.get("range_lo"),
                                         r.get("range_hi"), bool(r.get("null_part"))))
        for r in rows:
            if r["destination"] != "" and r["table_name"] != "":
                key = Part(r["table_name"], r["part_index"], r["part_count"]).key
                stored.progress.setdefault(r["destination"], {})[key] = PartProgress(
                    int(r["next_block"]), int(r["rows"]), bool(r["done"]), r.get("next_key"))
        return stored

    def start(self, flow_id: str, parts: list[Part]) -> None:
        with self.lock, self._conn() as conn:
            self._with_key_columns(conn)
            with conn.transaction():
                conn.execute(f"DELETE FROM {self.qt} WHERE flow_id = %s", (flow_id,))
                conn.execute(f"INSERT INTO {self.qt} (flow_id, table_name, part_index, part_count, first_block,"
                             " destination) VALUES (%s, '', -1, 0, 0, '')", (flow_id,))
                with conn.cursor() as cur:
                    cur.executemany(f"INSERT INTO {self.qt} (flow_id, table_name, part_index, part_count,"
                                    " first_block, end_block, destination, next_block, rows, partition_column,"
                                    " range_lo, range_hi, null_part)"
                                    " VALUES (%s, %s, %s, %s, %s, %s, '', %s, 0, %s, %s, %s, %s)",
                                    [(flow_id, p.table, p.index, p.count, p.first_block, p.end_block, p.first_block,
                                      p.column, p.lo, p.hi, p.nulls) for p in parts])

    def record(self, flow_id: str, destination: str, marks: list[SnapshotMark]) -> None:
        if not marks:
            return
        with self.lock, self._conn() as conn:
            self._with_key_columns(conn)
            with conn.transaction():
                plan = {Part(t, i, c, f, e).key: (t, i, c, f, e) for t, i, c, f, e in conn.execute(
                    f"SELECT table_name, part_index, part_count, first_block, end_block FROM {self.qt}"
                    " WHERE flow_id = %s AND destination = '' AND table_name <> ''", (flow_id,)).fetchall()}
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {self.qt} (flow_id, table_name, part_index, part_count, first_block, end_block,"
                        " destination, next_block, rows, done, next_key)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (flow_id, table_name, part_index, destination) DO UPDATE SET"
                        " next_block = excluded.next_block, rows = excluded.rows, done = excluded.done,"
                        " next_key = excluded.next_key, updated_at = now()",
                        [(flow_id, *plan[m.part], destination, m.next_block, m.rows, m.done, m.next_key)
                         for m in marks if m.part in plan])

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


# -- a backfill's state as wallaby-admin backfill status shows it (read only) ------------------------------------------

@dataclass
class BackfillTimes:
    """When a stored backfill was planned and finished, and when each table's progress was last recorded (seconds
    since the epoch; None or absent: not stored, e.g. a state file written before these times were kept)."""

    started_at: float | None = None
    finished_at: float | None = None
    updated_at: dict[str, float] = field(default_factory=dict)  # table -> last recorded progress, any destination


def _table_of(part_key: str) -> str:
    return part_key.rsplit("#", 1)[0]


def read_backfill(state: SnapshotState, flow_id: str) -> tuple[StoredBackfill | None, BackfillTimes]:
    """The flow's stored backfill and its times, read without creating anything (no schema, table or file):
    ``(None, BackfillTimes())`` when nothing is stored, a Postgres store whose table does not exist included."""
    if isinstance(state, FileSnapshotState):
        stored = state.load(flow_id)
        with state.lock:
            doc = state._read().get(flow_id) or {}
        updated: dict[str, float] = {}
        for key, at in (doc.get("part_updated_at") or {}).items():
            updated[_table_of(key)] = max(updated.get(_table_of(key), 0.0), float(at))
        return stored, BackfillTimes(doc.get("started_at"), doc.get("finished_at") if doc.get("finished") else None,
                                     updated)
    if not isinstance(state, PostgresSnapshotState):
        return None, BackfillTimes()
    try:
        with connect(state.dsn, application_name="wallaby-backfill-state") as conn:
            if conn.execute("SELECT to_regclass(%s)", (state.qt,)).fetchone()[0] is None:
                return None, BackfillTimes()
            rows = conn.execute(f"SELECT table_name, destination = '', bool_or(done), extract(epoch FROM"
                                " min(updated_at))::float8, extract(epoch FROM max(updated_at))::float8"
                                f" FROM {state.qt} WHERE flow_id = %s GROUP BY 1, 2", (flow_id,)).fetchall()
        state._ready = True  # the table exists: load() creates nothing
        stored = state.load(flow_id)
    except psycopg.Error as exc:
        raise SourceError(f"cannot read the backfill's state table {state.qt}: {exc}"
                          " (grant SELECT on it to the flow's user)", server=server_name(state.dsn)) from None
    times = BackfillTimes()
    for table, plan, done, first, last in rows:
        if table == "" and plan:  # the run's own row: updated when the backfill finished
            times.finished_at = last if done else None
        elif plan:  # the plan's rows: written when the backfill was planned
            times.started_at = first if times.started_at is None else min(times.started_at, first)
        else:
            times.updated_at[table] = last
    return stored, times
