"""Helpers to make flow specs and drive the source partition directly in tests."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psycopg

from sources.postgres.source import PostgresSource
from wallaby.core.changes import ChangeBatch, TableChanges
from wallaby.core.spec import FlowSpec, parse_flow


def flow_spec(dsn: str, *, flow_id: str = "t", slot: str = "wallaby_t", publication: str = "wallaby_t",
              duckdb_path: str | Path | None = None, source: dict | None = None,
              destination: dict | None = None) -> FlowSpec:
    data = {
        "id": flow_id,
        "name": flow_id,
        "source": {"name": "pg", "type": "postgres",
                   "options": {"dsn": dsn, "slot": slot, "publication": publication, "batch_timeout": "50ms",
                               **(source or {})}},
        "destinations": [{"name": "duck", "type": "duckdb",
                          "options": {"dsn": str(duckdb_path or ":memory:"), **(destination or {})}}],
    }
    return parse_flow(data, origin="test")


def drain(part, *, until_rows: int | None = None, timeout: float = 30, idle_polls: int | None = None
          ) -> list[ChangeBatch]:
    """Call next_batch until `until_rows` changes arrived (or `idle_polls` empty polls in a row)."""
    out: list[ChangeBatch] = []
    deadline = time.monotonic() + timeout
    rows = 0
    empty = 0
    while time.monotonic() < deadline:
        got = [b for _, b in part.next_batch()]
        out += got
        rows += sum(len(b) for b in got)
        if until_rows is not None and rows >= until_rows:
            return out
        empty = 0 if got else empty + 1
        if idle_polls is not None and empty >= idle_polls:
            return out
        time.sleep(0.005)
    if until_rows is not None:
        raise AssertionError(f"only {rows} of {until_rows} changes arrived in {timeout}s")
    return out


def rows_of(batches: list[ChangeBatch]) -> list[dict]:
    """Row changes as dicts (column values plus __op, __lsn, __ord), in order."""
    out = []
    for b in batches:
        for s in b.segments:
            if isinstance(s, TableChanges):
                out += s.rows.to_pylist()
    return out


def slot_confirmed(dsn: str, slot: str) -> int:
    from wallaby.core.changes import parse_lsn

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
    return parse_lsn(row[0])


def source_part(spec: FlowSpec, state=None, **kw):
    src = PostgresSource(spec.id, spec.source_options(), **kw)
    return src.build_part("source", src.list_parts()[0], state)


# -- flows run by wallaby-worker in a subprocess -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def worker_flow(tmp: Path, dsn: str, flow_id: str, tables: str | None, destination: dict, *, dest_type: str,
                dest_name: str = "dest", **source) -> Path:
    """A flow file ``tmp/<flow_id>.json``: ``tables`` of ``dsn`` (None: every table; slot and publication named
    after the flow) into one destination of ``dest_type`` with ``destination`` as its options."""
    slot = f"wallaby_{flow_id.replace('-', '_')}"
    tables_option = {} if tables is None else {"publication_tables": tables}
    flow = {"id": flow_id, "name": flow_id,
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": dsn, "slot": slot, "publication": slot, **tables_option,
                "batch_timeout": "50ms", "status_interval": "1s", **source}},
            "destinations": [{"name": dest_name, "type": dest_type, "options": destination}]}
    path = tmp / f"{flow_id}.json"
    path.write_text(json.dumps(flow))
    return path


def worker_env(tmp: Path, epoch: str = "300ms") -> dict[str, str]:
    """A worker's environment with its own checkpoint store and recovery directory under ``tmp``."""
    return {**os.environ, "WALLABY_CHECKPOINT_BACKEND": "sqlite", "WALLABY_CHECKPOINT_PATH": str(tmp / "c.db"),
            "WALLABY_RECOVERY_DIR": str(tmp / "recovery"), "WALLABY_EPOCH_INTERVAL": epoch, "PYTHONPATH": str(ROOT)}


def run_worker(tmp: Path, flow: Path, *, args: tuple[str, ...] = ("-max-empty-reads", "2"), epoch: str = "300ms",
               timeout: float = 180, status: int = 0) -> subprocess.CompletedProcess:
    """One ``wallaby-worker -flow-file flow`` run (by default until the slot is drained), ending with ``status``."""
    from tests import WORKER

    r = subprocess.run([*WORKER, "-flow-file", str(flow), *args], env=worker_env(tmp, epoch), capture_output=True,
                       text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == status, r.stderr[-4000:]
    return r


def pg_rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as c:
        return [tuple(r) for r in c.execute(sql).fetchall()]
