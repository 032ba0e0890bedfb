"""Helpers to make flow specs and drive the source partition directly in tests."""

from __future__ import annotations

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
