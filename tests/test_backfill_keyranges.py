"""Backfill parts as key ranges (``partition_column`` / ``wallaby-worker -partition-column``) against a real Postgres.

- each of bigint, uuid, text and timestamptz, in 1 and 3 ranges (split points from a sample, then from pg_stats),
  reads every row once within one snapshot: NULLs (their own part), duplicate values (a run of one value longer
  than a chunk), a unique column, quotes and backslashes in text keys, ±infinity;
- the worker backfills by key ranges into DuckDB (a table without the column falls back to block ranges), and
  ``bytewax.run dataflows.backfill:flow`` takes the source option;
- kill -9 at random moments, and a run without the recovery store (snapshot state, postgres and file), resume
  unfinished key-range parts after their last committed key;
- a column missing from the tables, or of a type without a btree ordering, is refused before anything is created.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import uuid
from collections import Counter
from itertools import pairwise
from pathlib import Path

import duckdb
import psycopg
import pytest

from dataflows.backfill import PLAN_FILE, _load_plan
from sources.postgres.snapshot import Part, PartReader, key_column, plan_key_parts
from sources.postgres.snapshot_state import FileSnapshotState, PostgresSnapshotState
from tests import WORKER
from tests.killkit import kill_at_random, kill_when
from wallaby.core.changes import SnapshotMark

ROOT = Path(__file__).resolve().parent.parent

# column type -> the key of row g (SQL over g = 1..N): duplicates (rows 1..300 share one value, longer than a chunk),
# NULLs (every 37th row) and the odd values of the type
N = 3000
KEYS = {
    "bigint": "CASE WHEN g <= 300 THEN 42 WHEN g % 37 = 0 THEN NULL WHEN g % 101 = 0 THEN -g"
              " ELSE (g % 700) * 1000003 END",
    "uuid": "CASE WHEN g <= 300 THEN '00000000-0000-0000-0000-00000000002a'::uuid WHEN g % 37 = 0 THEN NULL"
            " ELSE md5((g % 900)::text)::uuid END",
    "text": "CASE WHEN g <= 300 THEN 'same' WHEN g % 37 = 0 THEN NULL WHEN g % 97 = 0 THEN 'it''s a \\ back'"
            " WHEN g % 89 = 0 THEN '' ELSE chr(65 + g % 26) || (g % 300)::text || ' é' END",
    "timestamptz": "CASE WHEN g <= 300 THEN '2024-03-01 12:00:00+01'::timestamptz WHEN g % 37 = 0 THEN NULL"
                   " WHEN g = 1001 THEN 'infinity' WHEN g = 1002 THEN '-infinity'"
                   " ELSE '2024-01-01 00:00:00+00'::timestamptz + (g % 500) * interval '61.5 seconds' END",
}


def _table(dsn: str, type_: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, k {type_}, v text)")
        conn.execute(f"INSERT INTO t SELECT g, {KEYS[type_]}, repeat('v', g % 40) FROM generate_series(1, {N}) g")
        conn.execute("CREATE INDEX ON t (k)")
        conn.execute("CREATE PUBLICATION p FOR TABLE t")


def _exported(dsn: str) -> tuple[psycopg.Connection, str]:
    """A transaction holding an exported snapshot (every part reads in it)."""
    conn = psycopg.connect(dsn)
    name = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # opens the transaction (autocommit off)
    return conn, name


def _read_parts(dsn: str, parts: list[Part], snapshot: str | None, chunk_rows: int) -> tuple[list[int], dict]:
    """Every id the parts read (in order), and per part the chunks it took and the rows it read."""
    ids: list[int] = []
    chunks: dict[str, tuple[int, int]] = {}
    for part in parts:
        before = len(ids)
        reader = PartReader(dsn, part, "p", snapshot=snapshot, snapshot_lsn=1, snapshot_ts=0, flow_id="kr",
                            chunk_rows=chunk_rows)
        try:
            n = 0
            while True:
                chunk = reader.read()
                n += 1
                if chunk.changes is not None:
                    ids += chunk.changes.rows.column("id").to_pylist()
                if chunk.done:
                    break
        finally:
            reader.close()
        chunks[part.key] = (n, len(ids) - before)
    return ids, chunks


def _plan(dsn: str, column: str, count: int) -> tuple[list[Part], str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        key = key_column(conn, "public.t", column)
        assert key is not None and key.orderable
        return plan_key_parts(conn, "public.t", count, key)


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("type_", list(KEYS))
def test_key_ranges_read_every_row_once(pgdb, type_, count):
    """K ranges of a column of each type, plus the NULLs' part, read every row once in one snapshot: planned from a
    sample (no statistics yet), then again from pg_stats after ANALYZE."""
    _table(pgdb, type_)
    with psycopg.connect(pgdb) as conn:
        nulls = conn.execute("SELECT count(*) FROM t WHERE k IS NULL").fetchone()[0]
    assert nulls > 0
    for analyzed in (False, True):
        if analyzed:
            with psycopg.connect(pgdb, autocommit=True) as conn:
                conn.execute("ANALYZE t")
        parts, method = _plan(pgdb, "k", count)
        assert method.startswith("one part" if count == 1 else "pg_stats" if analyzed else "a sample"), method
        ranges = [p for p in parts if not p.nulls]
        assert len(ranges) == count and [p.nulls for p in parts] == [False] * count + [True]
        assert ranges[0].lo is None and ranges[-1].hi is None
        assert all(a.hi == b.lo for a, b in pairwise(ranges))  # adjacent, no gap
        assert {p.count for p in parts} == {count + 1}
        holder, snap = _exported(pgdb)
        try:
            ids, chunks = _read_parts(pgdb, parts, snap, chunk_rows=97)
        finally:
            holder.close()
        assert sorted(ids) == list(range(1, N + 1)), (type_, count, analyzed, Counter(ids).most_common(3))
        assert sum(n for n, _ in chunks.values()) > N // 97  # read in chunks of 97 rows, not all at once
        assert chunks[parts[-1].key][1] == nulls  # the NULLs, in their own part
        if count > 1:  # the ranges share the rows out, not all of them into one
            assert max(chunks[p.key][1] for p in ranges) < 0.8 * (N - nulls), chunks


def test_nulls_only_in_their_part_and_a_not_null_column_has_none(pgdb):
    _table(pgdb, "bigint")
    parts, _ = _plan(pgdb, "k", 3)
    null_part = parts[-1]
    assert null_part.nulls
    ids, _ = _read_parts(pgdb, [null_part], None, chunk_rows=50)
    assert sorted(ids) == [g for g in range(1, N + 1) if g % 37 == 0 and g > 300]
    with psycopg.connect(pgdb, autocommit=True) as conn:  # a nullable column without NULLs: its part reads nothing
        conn.execute("UPDATE t SET k = 7 WHERE k IS NULL")
    ids, chunks = _read_parts(pgdb, [null_part], None, chunk_rows=50)
    assert ids == [] and chunks == {null_part.key: (1, 0)}
    parts, _ = _plan(pgdb, "id", 3)  # the primary key: NOT NULL (no NULLs' part) and unique (no tie-break)
    assert len(parts) == 3 and not any(p.nulls for p in parts)
    with psycopg.connect(pgdb, autocommit=True) as conn:
        key = key_column(conn, "public.t", "id")
        assert key is not None and key.unique and key.not_null and key.indexed
    ids, _ = _read_parts(pgdb, parts, None, chunk_rows=61)
    assert sorted(ids) == list(range(1, N + 1))


def test_one_snapshot_holds_while_keys_move(pgdb):
    """Writers change the partition column (rows move between ranges and blocks) while the parts read: in the
    exported snapshot every row is read once, with the values it had."""
    _table(pgdb, "bigint")
    parts, _ = _plan(pgdb, "k", 3)
    holder, snap = _exported(pgdb)
    stop = threading.Event()

    def write() -> None:
        rnd = random.Random(3)
        with psycopg.connect(pgdb, autocommit=True) as conn:
            while not stop.is_set():
                g = rnd.randint(1, N)
                conn.execute("UPDATE t SET k = %s WHERE id = %s", (rnd.choice([None, -5, 42, 10**12, g]), g))
                if rnd.random() < 0.1:
                    conn.execute("DELETE FROM t WHERE id = %s", (rnd.randint(1, N),))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        ids, _ = _read_parts(pgdb, parts, snap, chunk_rows=53)
    finally:
        stop.set()
        writer.join()
        holder.close()
    assert sorted(ids) == list(range(1, N + 1))


def test_resume_after_a_key_rereads_only_that_key(pgdb):
    """A resumed part (a new snapshot) goes on from its last key: a non-unique column reads that key's rows again
    (none other), a unique one starts strictly after it."""
    _table(pgdb, "bigint")
    parts, _ = _plan(pgdb, "k", 1)
    part = parts[0]
    reader = PartReader(pgdb, part, "p", snapshot=None, snapshot_lsn=1, snapshot_ts=0, flow_id="kr", chunk_rows=100)
    try:
        first = reader.read()
        second = reader.read()
        last = reader.next_key
    finally:
        reader.close()
    assert not first.done and not second.done and second.next_key == last == "42"  # inside the run of 300 rows
    read_before = first.changes.rows.column("id").to_pylist() + second.changes.rows.column("id").to_pylist()
    reader = PartReader(pgdb, part, "p", snapshot=None, snapshot_lsn=1, snapshot_ts=0, flow_id="kr", chunk_rows=100,
                        next_key=last)
    try:
        rest = []
        while True:
            chunk = reader.read()
            if chunk.changes is not None:
                rest += chunk.changes.rows.column("id").to_pylist()
            if chunk.done:
                break
    finally:
        reader.close()
    with psycopg.connect(pgdb) as conn:
        of_key = {r[0] for r in conn.execute("SELECT id FROM t WHERE k = 42").fetchall()}
        not_null = {r[0] for r in conn.execute("SELECT id FROM t WHERE k IS NOT NULL").fetchall()}
    twice = set(read_before) & set(rest)
    assert twice and twice <= of_key  # only rows of the last key come again
    assert set(read_before) | set(rest) == not_null
    # unique: strictly after
    parts, _ = _plan(pgdb, "id", 1)
    reader = PartReader(pgdb, parts[0], "p", snapshot=None, snapshot_lsn=1, snapshot_ts=0, flow_id="kr",
                        chunk_rows=501, next_key="2500")
    try:
        chunk = reader.read()
    finally:
        reader.close()
    assert chunk.done and chunk.changes.rows.column("id").to_pylist() == list(range(2501, N + 1))


def test_old_plans_and_states_load_and_the_state_table_grows_the_key_columns(pgdb, tmp_path):
    """A plan file and a state written before key ranges load as block ranges; a state table made by the earlier
    version gets the key-range columns when first written, and keeps a key-range plan and its next key."""
    (tmp_path / PLAN_FILE).write_text(json.dumps([{"table": "public.a", "index": 0, "count": 2, "first_block": 0,
                                                   "end_block": 5}]))
    assert _load_plan(tmp_path) == [Part("public.a", 0, 2, 0, 5)]
    old = tmp_path / "state.json"
    old.write_text(json.dumps({"f": {"parts": [{"table": "public.a", "index": 0, "count": 1, "first_block": 0,
                                                "end_block": None}],
                                     "progress": {"d": {"public.a#1/1": {"next_block": 3, "rows": 9,
                                                                         "done": False}}}}}))
    stored = FileSnapshotState(str(old)).load("f")
    assert stored is not None and stored.parts == [Part("public.a", 0, 1)]
    assert stored.progress["d"]["public.a#1/1"].next_key is None
    with psycopg.connect(pgdb, autocommit=True) as conn:  # the table as the version before key ranges made it
        conn.execute("CREATE SCHEMA wallaby")
        conn.execute("CREATE TABLE wallaby.snapshot_state (flow_id text NOT NULL, table_name text NOT NULL,"
                     " part_index int NOT NULL, part_count int NOT NULL, first_block bigint NOT NULL,"
                     " end_block bigint, destination text NOT NULL, next_block bigint, rows bigint,"
                     " done boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now(),"
                     " PRIMARY KEY (flow_id, table_name, part_index, destination))")
        conn.execute("INSERT INTO wallaby.snapshot_state VALUES ('old', 'public.a', 0, 1, 0, NULL, '', 0, 0, false)")
    store = PostgresSnapshotState(pgdb, "wallaby", "snapshot_state")
    assert store.load("old").parts == [Part("public.a", 0, 1, 0, None)]  # read before any column was added
    parts = [Part("public.t", 0, 3, column="k", hi="it's \\"), Part("public.t", 1, 3, column="k", lo="it's \\"),
             Part("public.t", 2, 3, column="k", nulls=True)]
    for state in (store, FileSnapshotState(str(tmp_path / "new.json"))):
        state.start("kr", parts)
        state.record("kr", "duck", [SnapshotMark(parts[0].key, 0, False, 10, next_key="a'b"),
                                    SnapshotMark(parts[2].key, 17, False, 3)])
        got = state.load("kr")
        assert got is not None and got.parts == parts
        assert got.progress["duck"][parts[0].key].next_key == "a'b"
        assert got.progress["duck"][parts[2].key].next_block == 17
        point = got.resume_point(parts[0], ["duck"])
        assert point is not None and (point.rows, point.next_key) == (10, "a'b")
    assert dataclasses.asdict(parts[1])["lo"] == "it's \\"


# -- through wallaby-worker --------------------------------------------------------------------------------------


def _setup(dsn: str, rows: int = 20000) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY, k uuid, grp bigint, note text)")
        conn.execute(f"INSERT INTO acct SELECT g, CASE WHEN g % 53 = 0 THEN NULL ELSE md5((g % 5000)::text)::uuid"
                     f" END, g / 7, repeat('n', g % 50) FROM generate_series(1, {rows}) g")
        conn.execute("CREATE INDEX ON acct (k)")
        conn.execute("CREATE INDEX ON acct (grp)")
        conn.execute("CREATE TABLE keyless_t (a int, b text)")  # no column k: block ranges
        conn.execute("INSERT INTO keyless_t SELECT g, 'b' FROM generate_series(1, 3000) g")


def _flow(tmp_path: Path, dsn: str, **source: str) -> tuple[Path, str, str]:
    """The test's own flow: its id, slot and publication, its DuckDB file."""
    tag = uuid.uuid4().hex[:8]
    flow_id, slot = f"kr{tag}", f"wallaby_kr_{tag}"
    flow = {"id": flow_id, "name": flow_id,
            "source": {"name": "pg", "type": "postgres",
                       "options": {"dsn": dsn, "slot": slot, "publication": slot,
                                   "publication_tables": "public.acct,public.keyless_t", "batch_timeout": "50ms",
                                   **source}},
            "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": str(tmp_path / "kr.duckdb")}}]}
    path = tmp_path / "kr.json"
    path.write_text(json.dumps(flow))
    return path, flow_id, slot


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "store.db"), WALLABY_RECOVERY_DIR=str(tmp_path / "recovery"),
               WALLABY_EPOCH_INTERVAL="300ms", **extra)
    return env


def _worker(tmp_path: Path, flow: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WORKER, "-flow-file", str(flow), *args], env=_env(tmp_path, **env), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _same(dsn: str, duck_path: Path, table: str = "acct", cols: str = "id, k::text, grp, note") -> None:
    with psycopg.connect(dsn) as conn:
        want = conn.execute(f"SELECT {cols} FROM {table} ORDER BY 1").fetchall()
    with duckdb.connect(str(duck_path), read_only=True) as d:
        got = d.execute(f"SELECT {cols} FROM public.{table} ORDER BY 1").fetchall()
    assert len(got) == len(want) and got == want


def test_worker_backfills_by_key_ranges(pgdb, tmp_path):
    """-partition-column k -partition-count 3: acct in 3 ranges of k plus its NULLs' part, every row once; keyless_t
    has no k and is read by block ranges (a warning says so)."""
    _setup(pgdb)
    flow, flow_id, _slot = _flow(tmp_path, pgdb)
    out = _worker(tmp_path, flow, "-mode", "backfill", "-partition-column", "k", "-partition-count", "3",
                  "-snapshot-workers", "2", WALLABY_BACKFILL_CHUNK_ROWS="700")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "public.acct: 3 ranges of k" in out.stderr and "rows where k is NULL" in out.stderr, out.stderr[-3000:]
    assert "public.keyless_t: no column 'k': its 3 parts are ranges of heap blocks" in out.stderr
    assert "in 7 parts from snapshot" in out.stderr  # 3 + 1 of acct, 3 of keyless_t
    _same(pgdb, tmp_path / "kr.duckdb")
    _same(pgdb, tmp_path / "kr.duckdb", "keyless_t", "a, b")
    with psycopg.connect(pgdb) as conn:  # the plan the state store kept: key ranges for acct
        kept = conn.execute("SELECT table_name, partition_column, null_part FROM wallaby.snapshot_state"
                            " WHERE flow_id = %s AND destination = '' AND table_name <> '' ORDER BY 1, part_index",
                            (flow_id,)).fetchall()
    assert kept == [("public.acct", "k", False)] * 3 + [("public.acct", "k", True)] + [("public.keyless_t", None,
                                                                                        False)] * 3


def test_bytewax_run_takes_the_source_option(pgdb, tmp_path):
    """python -m bytewax.run dataflows.backfill:flow: partition_column from the flow's source options."""
    _setup(pgdb, rows=5000)
    flow, flow_id, _slot = _flow(tmp_path, pgdb, partition_column="grp", partition_count="2")
    env = _env(tmp_path, WALLABY_FLOW_FILE=str(flow), WALLABY_BACKFILL_TABLES="public.acct",
               WALLABY_BACKFILL_CHUNK_ROWS="300")
    out = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.backfill:flow"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    _same(pgdb, tmp_path / "kr.duckdb")
    with psycopg.connect(pgdb) as conn:
        kept = conn.execute("SELECT partition_column, null_part FROM wallaby.snapshot_state WHERE flow_id = %s"
                            " AND destination = '' AND table_name <> '' ORDER BY part_index", (flow_id,)).fetchall()
    assert kept == [("grp", False), ("grp", False), ("grp", True)]


def _nothing_created(dsn: str, slot: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()[0] \
            == 0
        assert conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (slot,)).fetchone()[0] == 0
        assert conn.execute("SELECT to_regnamespace('wallaby')").fetchone()[0] is None
    assert not (tmp_path / "kr.duckdb").exists()


def test_a_missing_or_unsortable_column_is_refused_before_anything_is_created(pgdb, tmp_path):
    _setup(pgdb, rows=100)
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("ALTER TABLE acct ADD COLUMN doc json")
    flow, _flow_id, slot = _flow(tmp_path, pgdb)
    out = _worker(tmp_path, flow, "-mode", "backfill", "-tables", "public.acct", "-partition-column", "grpp")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "-partition-column: table public.acct has no column 'grpp'; did you mean 'grp'?" in out.stderr
    _nothing_created(pgdb, slot, tmp_path)
    out = _worker(tmp_path, flow, "-mode", "backfill", "-partition-column", "doc")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "public.acct.doc is of type json, which has no btree ordering" in out.stderr
    _nothing_created(pgdb, slot, tmp_path)
    flow, _flow_id, slot = _flow(tmp_path, pgdb, partition_column="nope")  # the source option: named as such
    out = _worker(tmp_path, flow, "-mode", "backfill")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "source.options.partition_column: none of the tables to backfill has a column 'nope'" \
        " (public.acct, public.keyless_t)" in out.stderr
    _nothing_created(pgdb, slot, tmp_path)


def _key_committed(dsn: str, flow_id: str) -> bool:
    """Whether a destination of ``flow_id`` recorded a committed key of an unfinished part (the postgres snapshot
    state)."""
    with psycopg.connect(dsn) as conn:
        try:
            return conn.execute("SELECT count(*) FROM wallaby.snapshot_state WHERE flow_id = %s"
                                " AND destination <> '' AND next_key IS NOT NULL AND NOT done",
                                (flow_id,)).fetchone()[0] > 0
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            return False


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_key_ranges_and_holds_every_row_once(pgdb, tmp_path):
    """A key-range backfill (a non-unique column: runs of 7 rows split between chunks) killed -9 once as soon as a
    destination committed a key, then four times at random moments, then run to its end: every row once in the
    keyed target; the runs after a kill resume. (The first kill is not left to chance: a backfill that ends before
    its random moment resumes nothing.)"""
    _setup(pgdb, rows=150000)
    flow, flow_id, _slot = _flow(tmp_path, pgdb)
    env = _env(tmp_path, WALLABY_BACKFILL_CHUNK_ROWS="1000")
    cmd = [*WORKER, "-flow-file", str(flow), "-mode", "backfill", "-tables", "public.acct", "-partition-column", "grp",
           "-partition-count", "3"]

    def committed_a_key() -> bool:
        return _key_committed(pgdb, flow_id)

    kill_when(cmd, env, ROOT, tmp_path / "first.log", committed_a_key)
    assert committed_a_key(), (tmp_path / "first.log").read_text()[-3000:]
    logs = [(tmp_path / "first.log").read_text()]
    # planned: the reading starts; killed somewhere in it
    logs += kill_at_random(cmd, env, ROOT, tmp_path, runs=4, started="parts from snapshot", window=(0.3, 2.5), seed=5)
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    text = "\n".join([*logs, out.stderr])
    assert "3 ranges of grp" in logs[0]
    assert "resuming an unfinished backfill" in text
    assert "resuming at key" in text, text[-3000:]
    _same(pgdb, tmp_path / "kr.duckdb")


@pytest.mark.parametrize("backend", ["postgres", "file"])
def test_snapshot_state_resumes_key_ranges_without_the_recovery_store(pgdb, tmp_path, backend):
    """Killed once a destination committed some chunks, then run on a machine without its recovery store: the
    key-range parts go on after the last key each committed (from the snapshot state), and every row arrives."""
    _setup(pgdb, rows=120000)
    extra = {"snapshot_state_backend": backend}
    if backend == "file":
        extra["snapshot_state_path"] = str(tmp_path / "state.json")
    flow, flow_id, _slot = _flow(tmp_path, pgdb, partition_column="k", partition_count="2", **extra)
    env = _env(tmp_path, WALLABY_BACKFILL_CHUNK_ROWS="500")
    cmd = [*WORKER, "-flow-file", str(flow), "-mode", "backfill", "-tables", "public.acct"]

    def recorded() -> bool:  # a key was committed and recorded
        if backend == "file":
            try:
                progress = json.loads((tmp_path / "state.json").read_text())[flow_id]["progress"]
            except (OSError, ValueError, KeyError):
                return False
            return any(p.get("next_key") and not p["done"] for d in progress.values() for p in d.values())
        return _key_committed(pgdb, flow_id)

    kill_when(cmd, env, ROOT, tmp_path / "run.log", recorded)
    assert recorded(), (tmp_path / "run.log").read_text()[-3000:]
    shutil.rmtree(tmp_path / "recovery")
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "parts from the snapshot state" in out.stderr and "resuming at key" in out.stderr, out.stderr[-3000:]
    _same(pgdb, tmp_path / "kr.duckdb")
