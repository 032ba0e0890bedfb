"""Backfill edge cases against a real Postgres and DuckDB: the destination ends equal to the source.

- a composite primary key (three columns of different types) in three parts, then streaming with updates that change
  one key column;
- tables without a primary key: replica identity default (keyless) and REPLICA IDENTITY FULL, duplicate rows
  included;
- an empty table (one part and four) and a table whose rows were all deleted (blocks, no live rows);
- a table dropped during the backfill: dropped before its part starts, the part ends with 0 rows and a warning
  naming the table, the other tables complete and the worker exits 0; a part that has started holds the table
  (ACCESS SHARE), so a DROP waits for the part to end.

Each test has its own flow id, slot, publication, checkpoint store, recovery store and files (``tmp_path``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
import psycopg
import pytest

from sources.postgres.snapshot import PartReader, TableDroppedError, plan_parts, relation_blocks, relation_of
from sources.postgres.snapshot_source import SnapshotSource
from tests import WORKER
from wallaby.core.errors import SourceError

ROOT = Path(__file__).resolve().parent.parent


def _flow(tmp_path: Path, dsn: str, name: str, tables: list[str], **source: str) -> Path:
    """A flow file of its own: flow id, slot and publication ``name``, into ``<tmp>/<name>.duckdb``."""
    flow = {"id": name, "name": name,
            "source": {"name": "pg", "type": "postgres",
                       "options": {"dsn": dsn, "slot": f"wallaby_{name}", "publication": f"wallaby_{name}",
                                   "publication_tables": ",".join(tables), "batch_timeout": "50ms", **source}},
            "destinations": [{"name": "duck", "type": "duckdb",
                              "options": {"dsn": str(tmp_path / f"{name}.duckdb")}}]}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(flow))
    return path


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "store.db"), WALLABY_RECOVERY_DIR=str(tmp_path / "recovery"),
               WALLABY_EPOCH_INTERVAL="300ms", **extra)
    return env


def _worker(tmp_path: Path, flow: Path, *args: str, env: dict | None = None,
            cmd: tuple[str, ...] = WORKER) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, "-flow-file", str(flow), *args], env=env or _env(tmp_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _source(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def _duck(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as d:
        return d.execute(sql).fetchall()


def _duck_table(path: Path, table: str) -> bool:
    schema, name = table.split(".")
    return bool(_duck(path, f"SELECT count(*) FROM information_schema.tables WHERE table_schema = '{schema}'"
                            f" AND table_name = '{name}'")[0][0])


# -- composite primary key ----------------------------------------------------------------------------------------

def test_composite_key_in_three_parts_then_a_key_column_changes(pgdb, tmp_path):
    """(region text, id bigint, day date) as the key, 3 parts read in small chunks; then updates that move rows to
    another key (one key column changed), updates of values, deletes and inserts, streamed: equal to the source."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE ck (region text, id bigint, day date, qty int NOT NULL, note text,"
                     " PRIMARY KEY (region, id, day))")
        conn.execute("INSERT INTO ck SELECT (ARRAY['eu', 'us', 'apac'])[g % 3 + 1], g / 3, date '2024-01-01' + g % 7,"
                     " g, repeat('n', g % 90) FROM generate_series(1, 20000) g")
        blocks = relation_blocks(conn, "public.ck")
    assert blocks >= 30  # several chunks in each of the three parts
    flow = _flow(tmp_path, pgdb, "ck", ["public.ck"])
    duck = tmp_path / "ck.duckdb"
    out = _worker(tmp_path, flow, "-mode", "backfill", "-partition-count", "3", "-snapshot-workers", "2",
                  env=_env(tmp_path, WALLABY_BACKFILL_CHUNK_BLOCKS="4"))
    assert out.returncode == 0, out.stderr[-4000:]
    assert "in 3 parts" in out.stderr and "backfill done" in out.stderr
    query = "SELECT region, id, day, qty, note FROM {} ORDER BY region, id, day"
    want = _source(pgdb, query.format("ck"))
    assert len(want) == 20000 and _duck(duck, query.format("public.ck")) == want

    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("UPDATE ck SET id = id + 100000 WHERE id % 50 = 0")  # a key column changes: another row's key
        conn.execute("UPDATE ck SET region = 'latam' WHERE region = 'eu' AND id % 70 = 1")
        conn.execute("UPDATE ck SET day = day + 30, qty = -qty WHERE region = 'us' AND id % 90 = 2")
        conn.execute("UPDATE ck SET note = 'changed' WHERE id % 11 = 3")
        conn.execute("DELETE FROM ck WHERE id % 13 = 4")
        conn.execute("INSERT INTO ck VALUES ('eu', -1, '2020-02-29', 1, 'new'), ('us', -1, '2020-02-29', 2, NULL)")
    out = _worker(tmp_path, flow, "-max-empty-reads", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    want = _source(pgdb, query.format("ck"))
    assert _duck(duck, query.format("public.ck")) == want


# -- no primary key -----------------------------------------------------------------------------------------------

def test_tables_without_a_primary_key(pgdb, tmp_path):
    """Replica identity default without a key (keyless: every row appended) and REPLICA IDENTITY FULL (every column
    is the key), both with rows that are exact duplicates and NULLs: the destination holds the same multiset."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE nokey (a int, b text, c double precision)")
        conn.execute("INSERT INTO nokey SELECT g % 500, CASE WHEN g % 9 = 0 THEN NULL ELSE 'b' || g % 40 END,"
                     " g % 3 / 2.0 FROM generate_series(1, 12000) g")
        conn.execute("CREATE TABLE fullid (a int, b text)")
        conn.execute("ALTER TABLE fullid REPLICA IDENTITY FULL")
        conn.execute("INSERT INTO fullid SELECT g % 700, repeat('f', g % 30) FROM generate_series(1, 9000) g")
        conn.execute("INSERT INTO fullid VALUES (NULL, NULL), (NULL, NULL), (1, NULL)")
        assert conn.execute("SELECT relreplident FROM pg_class WHERE relname = 'nokey'").fetchone()[0] == "d"
        idents = {t: relation_of(conn, f"public.{t}", "") for t in ("nokey", "fullid")}
    assert not any(c.key for c in idents["nokey"].columns) and all(c.key for c in idents["fullid"].columns)
    flow = _flow(tmp_path, pgdb, "nk", ["public.nokey", "public.fullid"])
    duck = tmp_path / "nk.duckdb"
    out = _worker(tmp_path, flow, "-mode", "backfill", "-partition-count", "3",
                  env=_env(tmp_path, WALLABY_BACKFILL_CHUNK_BLOCKS="8"))
    assert out.returncode == 0, out.stderr[-4000:]
    for table, cols in (("nokey", "a, b, c"), ("fullid", "a, b")):
        want = Counter(_source(pgdb, f"SELECT {cols} FROM {table}"))
        got = Counter(_duck(duck, f"SELECT {cols} FROM public.{table}"))
        assert got == want, table
        assert max(want.values()) > 1  # duplicates were there, and each arrived as many times


# -- empty tables -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 4])
def test_empty_table_and_table_whose_rows_were_all_deleted(pgdb, tmp_path, count):
    """An empty table (no blocks) and one whose rows were all deleted (blocks, no live rows), in ``count`` parts:
    the backfill ends (exit 0, every part done with 0 rows) and the destination holds no row of them; a row
    inserted afterwards streams in as for any table."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE empty_t (id int PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE gone_rows (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO gone_rows SELECT g, repeat('v', 100) FROM generate_series(1, 5000) g")
        conn.execute("DELETE FROM gone_rows")
        assert relation_blocks(conn, "public.empty_t") == 0
        assert relation_blocks(conn, "public.gone_rows") > 20  # the blocks stay (no vacuum has truncated them)
    name = f"em{count}"
    flow = _flow(tmp_path, pgdb, name, ["public.empty_t", "public.gone_rows"])
    duck = tmp_path / f"{name}.duckdb"
    out = _worker(tmp_path, flow, "-mode", "backfill", "-partition-count", str(count),
                  env=_env(tmp_path, WALLABY_BACKFILL_CHUNK_BLOCKS="4"))
    assert out.returncode == 0, out.stderr[-4000:]
    assert "backfill done" in out.stderr
    for table in ("empty_t", "gone_rows"):
        assert f"backfill public.{table}: 0 rows" in out.stderr and f"{count} of {count} parts done" in out.stderr
        assert out.stderr.count(f"backfill public.{table}#") == count  # each part: "read 0 rows"
        assert not _duck_table(duck, f"public.{table}")  # nothing written: no table until its first row streams in

    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("INSERT INTO empty_t VALUES (1, 'a'), (2, 'b')")
        conn.execute("INSERT INTO gone_rows VALUES (7, 'x')")
    out = _worker(tmp_path, flow, "-max-empty-reads", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    for table in ("empty_t", "gone_rows"):
        assert _duck(duck, f"SELECT id, v FROM public.{table} ORDER BY id") == \
            _source(pgdb, f"SELECT id, v FROM {table} ORDER BY id")


# -- a table dropped during the backfill --------------------------------------------------------------------------

# wallaby-worker with one hook: the SQL in DROP_SQL runs after the backfill's snapshot is taken and its parts are
# planned, right before the dataflow reads anything (the table is in the plan and in the snapshot, gone from the
# catalog): "dropped during the backfill, before its part started", without a race.
DROP_AFTER_PLANNING = """
import os, sys
import psycopg
import wallaby.control.worker as worker

run = worker._run_dataflow

def dropping_first(*args, **kwargs):
    with psycopg.connect(os.environ["DROP_DSN"], autocommit=True) as conn:
        conn.execute(os.environ["DROP_SQL"])
    return run(*args, **kwargs)

worker._run_dataflow = dropping_first
sys.exit(worker.main(sys.argv[1:]))
"""


def test_table_dropped_before_its_part_starts_ends_with_zero_rows(pgdb, tmp_path):
    """Two tables planned and in the snapshot; the second is dropped before any part is read: its parts end with
    0 rows and a warning naming it, the first table arrives whole, the worker exits 0 and the backfill is finished
    (the snapshot state says so)."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE keep_t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO keep_t SELECT g, repeat('k', g % 60) FROM generate_series(1, 20000) g")
        conn.execute("CREATE TABLE drop_t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO drop_t SELECT g, 'd' FROM generate_series(1, 3000) g")
    state = tmp_path / "state.json"
    flow = _flow(tmp_path, pgdb, "dr", ["public.keep_t", "public.drop_t"], snapshot_state_backend="file",
                 snapshot_state_path=str(state))
    duck = tmp_path / "dr.duckdb"
    env = _env(tmp_path, WALLABY_BACKFILL_CHUNK_BLOCKS="8", DROP_DSN=pgdb, DROP_SQL="DROP TABLE drop_t")
    out = _worker(tmp_path, flow, "-mode", "backfill", "-partition-count", "2", "-snapshot-workers", "1", env=env,
                  cmd=(sys.executable, "-c", DROP_AFTER_PLANNING))
    assert out.returncode == 0, out.stderr[-4000:]
    assert "backfill of 2 tables in 4 parts" in out.stderr  # drop_t was planned
    for key in ("public.drop_t#1/2", "public.drop_t#2/2"):
        assert f"backfill {key}: table public.drop_t does not exist any more (dropped during the backfill): the" \
               " part ends with 0 rows" in out.stderr, out.stderr[-4000:]
    assert "backfill done" in out.stderr
    assert _source(pgdb, "SELECT to_regclass('public.drop_t')") == [(None,)]
    query = "SELECT id, v FROM {} ORDER BY id"
    assert _duck(duck, query.format("public.keep_t")) == _source(pgdb, query.format("keep_t"))
    assert not _duck_table(duck, "public.drop_t")
    stored = json.loads(state.read_text())["dr"]
    assert stored["finished"]
    progress = stored["progress"]["duck"]
    assert {k: (v["rows"], v["done"]) for k, v in progress.items() if k.startswith("public.drop_t")} == \
        {"public.drop_t#1/2": (0, True), "public.drop_t#2/2": (0, True)}


def _partition(dsn: str, part, publication: str, snapshot: str | None = None):
    src = SnapshotSource("edge", dsn, publication, [part], snapshot=snapshot, snapshot_lsn=1, snapshot_ts=0)
    return src.build_part("snapshot", part.key, None)


def test_part_of_a_table_gone_from_the_snapshot_reads_nothing(pgdb, caplog):
    """Dropped before the snapshot (not in it at all) or after it (in it, gone from the catalog): relation_of says
    TableDroppedError, and the part gives one batch of no rows whose mark says done, then ends; a warning names
    the table."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE gone (id int PRIMARY KEY); CREATE TABLE later (id int PRIMARY KEY)")
        conn.execute("INSERT INTO gone SELECT generate_series(1, 100); INSERT INTO later SELECT generate_series(1, 9)")
        conn.execute("CREATE PUBLICATION p FOR TABLE gone, later")
        gone_part = plan_parts(conn, "public.gone", 1)[0]
        later_part = plan_parts(conn, "public.later", 2)[1]
        conn.execute("DROP TABLE gone")
        with pytest.raises(TableDroppedError, match="public.gone does not exist any more"):
            relation_of(conn, "public.gone", "p")
    holder = psycopg.connect(pgdb)
    try:  # a snapshot that still has `later`; dropped after it: in pg_class as the snapshot sees it, not in the catalog
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = holder.execute("SELECT pg_export_snapshot()").fetchone()[0]
        with psycopg.connect(pgdb, autocommit=True) as conn:
            conn.execute("DROP TABLE later")
        caplog.set_level(logging.WARNING, logger="wallaby.backfill")
        for part, snap in ((gone_part, None), (later_part, snapshot)):
            partition = _partition(pgdb, part, "p", snap)
            try:
                [(flow_id, batch)] = partition.next_batch()
                assert flow_id == "edge" and batch.segments == [] and len(batch) == 0
                mark = batch.snapshot
                assert (mark.part, mark.rows, mark.done) == (part.key, 0, True)
                assert partition.snapshot() == {"next": part.first_block, "done": True, "rows": 0}
                with pytest.raises(StopIteration):
                    partition.next_batch()
            finally:
                partition.close()
            assert any(part.key in r.getMessage() and f"table {part.table} does not exist any more" in r.getMessage()
                       for r in caplog.records if r.levelno == logging.WARNING)
    finally:
        holder.close()


def test_a_started_part_holds_its_table_against_drop(pgdb):
    """Once a part has started (its reader open, before and after its first chunk), DROP TABLE waits for it
    (here: gives up at its lock_timeout); when the part has ended, the DROP goes through."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE held (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO held SELECT g, repeat('h', 200) FROM generate_series(1, 3000) g")
        conn.execute("CREATE PUBLICATION p FOR TABLE held")
        part = plan_parts(conn, "public.held", 1)[0]
    partition = _partition(pgdb, part, "p")

    def try_drop() -> bool:
        with psycopg.connect(pgdb, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '200ms'")
            try:
                conn.execute("DROP TABLE held")
                return True
            except psycopg.errors.LockNotAvailable:
                return False

    try:
        assert partition._open()  # the reader is open, nothing read yet: the table is held already
        assert not try_drop()
        partition.reader.chunk_blocks = 4
        [(_, batch)] = partition.next_batch()  # a first chunk read, more to come
        assert len(batch) > 0 and not batch.snapshot.done
        assert not try_drop()
    finally:
        partition.close()
    assert try_drop()


def test_part_reader_of_a_dropped_table_does_not_open(pgdb):
    """PartReader itself (the lowest piece) refuses a table that is gone with TableDroppedError, a SourceError; so it
    does a table dropped and created again under the same name after the snapshot (another table than the one the
    snapshot has)."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int); CREATE TABLE again (id int); INSERT INTO again VALUES (1)")
        conn.execute("CREATE PUBLICATION p FOR TABLE t, again")
        part = plan_parts(conn, "public.t", 1)[0]
        again = plan_parts(conn, "public.again", 1)[0]
        conn.execute("DROP TABLE t")
    with pytest.raises(TableDroppedError) as err:
        PartReader(pgdb, part, "p", snapshot=None, snapshot_lsn=1, snapshot_ts=0, flow_id="edge")
    assert err.value.table == "public.t" and isinstance(err.value, SourceError)
    with psycopg.connect(pgdb) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = holder.execute("SELECT pg_export_snapshot()").fetchone()[0]
        with psycopg.connect(pgdb, autocommit=True) as conn:
            conn.execute("DROP TABLE again; CREATE TABLE again (id int); INSERT INTO again VALUES (2)")
        with pytest.raises(TableDroppedError, match="public.again"):
            PartReader(pgdb, again, "p", snapshot=snapshot, snapshot_lsn=1, snapshot_ts=0, flow_id="edge")
        reader = PartReader(pgdb, again, "p", snapshot=None, snapshot_lsn=1, snapshot_ts=0, flow_id="edge")
        try:  # without that snapshot, the table of that name now is the one read
            assert reader.read().changes.rows.column("id").to_pylist() == [2]
        finally:
            reader.close()
