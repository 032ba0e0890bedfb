"""Metadata columns, soft deletes and append mode, end to end into DuckDB."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta

import duckdb
import psycopg
import pytest
from bytewax.testing import run_main

from dataflows.flow import build_flow
from sinks.base import PermanentSinkError
from tests import WORKER
from tests.flows import flow_spec


def _run(spec) -> None:
    run_main(build_flow(spec, max_empty_reads=2), epoch_interval=timedelta(milliseconds=200))


def _rows(path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as d:
        d.execute("SET TimeZone = 'UTC'")
        return [tuple(r) for r in d.execute(sql).fetchall()]


@pytest.fixture
def orders(pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text, big text)")
    return pgdb


def _changes(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO orders VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'c', 'z')")
        c.execute("UPDATE orders SET note = 'a2' WHERE id = 1")
        c.execute("DELETE FROM orders WHERE id = 2")


def test_meta_columns_and_soft_delete(orders, tmp_path):
    path = tmp_path / "m.duckdb"
    spec = flow_spec(orders, duckdb_path=path, source={"publication_tables": "public.orders"},
                     destination={"meta_enabled": "true", "soft_delete": "true", "watermark_source": "lsn"})
    _run(spec)
    started = dt.datetime.now(dt.UTC)
    _changes(orders)
    _run(spec)
    rows = _rows(path, "SELECT id, note, big, __ds_is_deleted, __ds_op, __ds_watermark, __ds_synced_at"
                       " FROM public.orders ORDER BY id")
    assert [r[:5] for r in rows] == [(1, "a2", "x", False, "update"), (2, "b", "y", True, "delete"),
                                     (3, "c", "z", False, "insert")]
    assert all("/" in r[5] for r in rows)  # the commit LSN
    assert all(r[6] >= started - timedelta(seconds=5) for r in rows)


def test_append_mode_keeps_every_version(orders, tmp_path):
    path = tmp_path / "a.duckdb"
    spec = flow_spec(orders, duckdb_path=path, source={"publication_tables": "public.orders"},
                     destination={"append_mode": "true"})
    _run(spec)
    _changes(orders)
    _run(spec)
    rows = _rows(path, "SELECT id, note, __ds_op, __ds_is_deleted FROM public.orders ORDER BY id, __ds_watermark,"
                       " __ds_op DESC")
    assert rows == [(1, "a", "insert", False), (1, "a2", "update", False), (2, "b", "insert", False),
                    (2, None, "delete", True), (3, "c", "insert", False)]


def test_meta_column_colliding_with_a_source_column(orders, tmp_path):
    with psycopg.connect(orders, autocommit=True) as c:
        c.execute("ALTER TABLE orders ADD COLUMN __ds_op text")
    spec = flow_spec(orders, duckdb_path=tmp_path / "c.duckdb", source={"publication_tables": "public.orders"},
                     destination={"meta_enabled": "true"})
    _run(spec)
    with psycopg.connect(orders, autocommit=True) as c:
        c.execute("INSERT INTO orders VALUES (1, 'a', 'x', 'y')")
    with pytest.raises(Exception) as err:
        _run(spec)
    cause = err.value
    while cause is not None and not isinstance(cause, PermanentSinkError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None and "'__ds_op' is also a column of public.orders" in str(cause)


def test_custom_metadata_names_and_no_watermark(orders, tmp_path):
    path = tmp_path / "n.duckdb"
    spec = flow_spec(orders, duckdb_path=path, source={"publication_tables": "public.orders"},
                     destination={"meta_enabled": "true", "meta_synced_at": "synced", "meta_deleted": "gone",
                                  "meta_op": "op", "meta_watermark": "-"})
    _run(spec)
    _changes(orders)
    _run(spec)
    with duckdb.connect(str(path), read_only=True) as d:
        cols = [r[0] for r in d.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'orders'"
                                        " ORDER BY column_index").fetchall()]
        rows = d.execute("SELECT id, gone, op FROM public.orders ORDER BY id").fetchall()
    assert cols == ["id", "note", "big", "synced", "gone", "op"]
    assert rows == [(1, False, "update"), (3, False, "insert")]  # no soft_delete: the delete removed row 2


def test_collision_is_refused_before_the_flow_starts(orders, tmp_path):
    import json
    import os
    import subprocess

    from tests.apiserver import ROOT, flow_file

    with psycopg.connect(orders, autocommit=True) as c:
        c.execute("ALTER TABLE orders ADD COLUMN __ds_op text")
    path = flow_file(tmp_path, orders, "clash", duck=tmp_path / "c.duckdb")
    data = json.loads(path.read_text())
    data["destinations"][0]["options"]["soft_delete"] = "true"
    path.write_text(json.dumps(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env["WALLABY_CHECKPOINT_PATH"] = str(tmp_path / "s.db")
    out = subprocess.run([*WORKER, "-flow-file", str(path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "'__ds_op' is also a column of public.orders" in out.stderr
    with psycopg.connect(orders, autocommit=True) as c:  # nothing was created
        assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'clash_slot'").fetchone()[0] == 0


def test_meta_columns_of_a_delete_in_an_append_destination(orders, tmp_path):
    """write_mode=append writes a delete as its before image: the delete's metadata columns come with it."""
    path = tmp_path / "w.duckdb"
    spec = flow_spec(orders, duckdb_path=path, source={"publication_tables": "public.orders"},
                     destination={"meta_enabled": "true", "write_mode": "append"})
    _run(spec)
    _changes(orders)
    _run(spec)
    rows = _rows(path, "SELECT id, __op, __ds_op, __ds_is_deleted, __ds_synced_at IS NOT NULL, __ds_watermark IS NOT"
                       " NULL FROM public.orders WHERE __op = 'delete'")
    assert rows == [(2, "delete", "delete", True, True, True)]


def test_the_rewrite_keeps_a_batch_s_snapshot_mark_and_caught_up():
    """A backfill's batch keeps its snapshot mark through the metadata rewrite (without it a destination took the
    snapshot's rows as stream changes: judged against its high-water and moving it), and a stream's batch keeps
    ``caught_up`` (the destinations' flush)."""
    from operators.metadata import MetadataRewriter
    from sinks.duckdb.options import DuckDBDestinationOptions
    from wallaby.core.changes import ChangeBatch, Position, SnapshotMark

    rewriter = MetadataRewriter(DuckDBDestinationOptions(dsn=":memory:", meta_enabled=True))
    mark = SnapshotMark("public.t:0", 10, False, 5)
    out = rewriter.rewrite(ChangeBatch("f", [], Position(100, 7), snapshot=mark))
    assert out.snapshot == mark
    assert rewriter.rewrite(ChangeBatch("f", [], Position(100, 7), caught_up=True)).caught_up
