"""Backfill (dataflows/backfill.py, sources/postgres/snapshot.py) against a real Postgres and DuckDB.

- the snapshot path gives exactly the values the streaming path gives (the tricky-type table through both);
- parts split a table by heap blocks and read every row once in total;
- ``wallaby-worker -mode backfill`` then streaming ends equal to the source while the table is written all along.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sources.postgres.snapshot import PartReader, plan_parts, relation_blocks
from tests import WORKER
from tests.flows import drain, flow_spec, source_part
from tests.http_receiver import receiver  # noqa: F401 - fixture
from tests.kafka_broker import consume_all, kafka_broker  # noqa: F401 - fixture
from tests.killkit import kill_at_random, kill_when
from tests.test_tricky_table import (
    ROW1,
    ROW2,
    ROW3,
    insert,
    tricky,  # noqa: F401 - fixture
)
from wallaby.core.changes import OP_READ, TableChanges
from wallaby.wire import decode

ROOT = Path(__file__).resolve().parent.parent


def _read_all(dsn: str, table: str, publication: str, count: int, **kw) -> list[TableChanges]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        parts = plan_parts(conn, table, count)
    out = []
    for part in parts:
        reader = PartReader(dsn, part, publication, snapshot=None, snapshot_lsn=1, snapshot_ts=0, flow_id="t", **kw)
        try:
            while True:
                chunk = reader.read()
                if chunk.changes is not None:
                    out.append(chunk.changes)
                if chunk.done:
                    break
        finally:
            reader.close()
    return out


def _by_id(t: pa.Table) -> pa.Table:
    return t.take(pc.sort_indices(t.column("id")))


def test_snapshot_values_equal_the_streaming_path(tricky):  # noqa: F811 - the fixture
    """Every type of the tricky table, row for row: the snapshot's Arrow values and types are the stream's."""
    spec = flow_spec(tricky, source={"publication_tables": "public.tricky"})
    part = source_part(spec)  # creates the publication and slot
    try:
        with psycopg.connect(tricky, autocommit=True) as conn:
            for row in (ROW1, ROW2, ROW3):
                insert(conn, row)
        streamed = [s for b in drain(part, until_rows=3) for s in b.segments if isinstance(s, TableChanges)]
    finally:
        part.close()
    snap = _read_all(tricky, "public.tricky", "wallaby_t", 1)
    assert sum(len(s) for s in snap) == 3
    assert snap[0].table.same_shape(streamed[0].table)
    want = _by_id(pa.Table.from_batches([s.after() for s in streamed]))
    got = _by_id(pa.Table.from_batches([s.after() for s in snap]))
    for name in want.column_names:
        a, b = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        assert a.type == b.type, name
        if pa.types.is_floating(a.type):  # NaN != NaN: compare where they are, then the rest
            assert pc.is_nan(a).equals(pc.is_nan(b)), name
            a, b = pc.if_else(pc.is_nan(a), 0.0, a), pc.if_else(pc.is_nan(b), 0.0, b)
        assert a.equals(b), (name, a, b)
    assert set(snap[0].rows.column("__op").to_pylist()) == {OP_READ}


@pytest.mark.parametrize("count", [1, 3, 7])
def test_parts_read_every_row_once(pgdb, count):
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, repeat('x', g % 200) FROM generate_series(1, 20000) g")
        conn.execute("DELETE FROM t WHERE id % 7 = 0")
        conn.execute("CREATE PUBLICATION p FOR TABLE t")
        conn.execute("CREATE TABLE empty_t (id int PRIMARY KEY)")
        conn.execute("ALTER PUBLICATION p ADD TABLE empty_t")
    with psycopg.connect(pgdb, autocommit=True) as conn:
        parts = plan_parts(conn, "public.t", count)
        blocks = relation_blocks(conn, "public.t")
    assert blocks > 100 and [p.first_block for p in parts] == sorted({p.first_block for p in parts})
    assert all(p.end_block is not None and p.end_block > p.first_block for p in parts[:-1])
    chunks = _read_all(pgdb, "public.t", "p", count, chunk_blocks=16)
    assert len(chunks) >= blocks // 16  # read in chunks of 16 blocks, not all at once
    ids = [i for s in chunks for i in s.rows.column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == 20000 - 20000 // 7
    assert _read_all(pgdb, "public.empty_t", "p", count) == []


def _flow(tmp_path: Path, dsn: str, duck_path: Path) -> Path:
    flow = {"id": "bf", "name": "bf",
            "source": {"name": "pg", "type": "postgres",
                       "options": {"dsn": dsn, "slot": "wallaby_bf", "publication": "wallaby_bf",
                                   "publication_tables": "public.acct,public.keyless_t", "batch_timeout": "50ms"}},
            "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": str(duck_path)}}]}
    path = tmp_path / "bf.json"
    path.write_text(json.dumps(flow))
    return path


def _env(tmp_path: Path) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "store.db"), WALLABY_RECOVERY_DIR=str(tmp_path / "recovery"),
               WALLABY_EPOCH_INTERVAL="300ms")
    return env


def _worker(tmp_path: Path, flow: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WORKER, "-flow-file", str(flow), *extra], env=_env(tmp_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_backfill_then_stream_ends_equal_under_writes(pgdb, tmp_path):
    """Rows that exist before the flow does arrive by the backfill; writes all through it arrive by the stream;
    the end is the source, row for row."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL, note text)")
        conn.execute("INSERT INTO acct SELECT g, g * 10, 'n' || g FROM generate_series(1, 30000) g")
        conn.execute("CREATE TABLE keyless_t (a int, b text)")
        conn.execute("INSERT INTO keyless_t SELECT g, 'k' FROM generate_series(1, 100) g")
    duck_path = tmp_path / "bf.duckdb"
    flow = _flow(tmp_path, pgdb, duck_path)
    stop = threading.Event()

    def write() -> None:
        rnd = random.Random(7)
        with psycopg.connect(pgdb, autocommit=True) as conn:
            next_id = 30001
            while not stop.is_set():
                k = rnd.randint(1, next_id - 1)
                what = rnd.random()
                if what < 0.5:
                    conn.execute("UPDATE acct SET bal = bal + 1, note = %s WHERE id = %s", (f"u{rnd.random()}", k))
                elif what < 0.7:
                    conn.execute("DELETE FROM acct WHERE id = %s", (k,))
                else:
                    conn.execute("INSERT INTO acct VALUES (%s, 0, 'new')", (next_id,))
                    next_id += 1
                time.sleep(0.001)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        out = _worker(tmp_path, flow, "-mode", "backfill", "-tables", "public.acct", "-partition-count", "3",
                      "-snapshot-workers", "2")
    finally:
        time.sleep(0.5)
        stop.set()
        writer.join()
    assert out.returncode == 0, out.stderr[-4000:]
    assert "backfill done" in out.stderr
    assert not (tmp_path / "recovery" / "bf.backfill").exists()  # finished: the next backfill starts over
    with duckdb.connect(str(duck_path), read_only=True) as d:  # the rows that were there came by the backfill
        assert d.execute("SELECT count(*) FROM public.acct WHERE id <= 30000").fetchone()[0] > 25000
    out = _worker(tmp_path, flow, "-max-empty-reads", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    with psycopg.connect(pgdb) as conn:
        want = conn.execute("SELECT id, bal, note FROM acct ORDER BY id").fetchall()
    with duckdb.connect(str(duck_path), read_only=True) as d:
        got = d.execute("SELECT id, bal, note FROM public.acct ORDER BY id").fetchall()
    assert got == want
    with duckdb.connect(str(duck_path), read_only=True) as d:  # keyless_t was not asked for
        assert d.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'keyless_t'"
                         ).fetchone()[0] == 0


def test_backfill_refuses_what_it_cannot_do(pgdb, tmp_path):
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE keyless_t (a int)")
        conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
    flow = _flow(tmp_path, pgdb, tmp_path / "x.duckdb")
    out = _worker(tmp_path, flow, "-mode", "backfill", "-tables", "public.other")
    assert out.returncode == 2, out.stderr
    assert "public.other is not in the flow's publication" in out.stderr
    out = _worker(tmp_path, flow, "-mode", "backfill", "-partition-column", "nope")  # in none of the tables
    assert out.returncode == 2 and "-partition-column" in out.stderr
    out = _worker(tmp_path, flow, "-tables", "public.acct")
    assert out.returncode == 2 and "-tables: applies to -mode backfill" in out.stderr


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_and_holds_every_row_once(pgdb, tmp_path):
    """A backfill killed -9 five times at random moments, then run to its end: every row once, nothing lost;
    the runs after a kill resume the parts (finished ones are not read again)."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL, note text)")
        conn.execute("INSERT INTO acct SELECT g, g * 10, repeat('n', g % 50) FROM generate_series(1, 300000) g")
        conn.execute("CREATE TABLE keyless_t (a int)")
    duck_path = tmp_path / "bf.duckdb"
    flow = _flow(tmp_path, pgdb, duck_path)
    env = {**_env(tmp_path), "WALLABY_BACKFILL_CHUNK_BLOCKS": "16"}
    cmd = [*WORKER, "-flow-file", str(flow), "-mode", "backfill", "-tables", "public.acct", "-partition-count", "3"]
    # planned: the reading starts; killed somewhere in it
    logs = kill_at_random(cmd, env, ROOT, tmp_path, runs=5, started="in 3 parts from snapshot", window=(0.2, 2.0),
                          seed=11)
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert any("resuming an unfinished backfill" in text for text in [*logs[1:], out.stderr])
    with psycopg.connect(pgdb) as conn:
        want = conn.execute("SELECT id, bal, note FROM acct ORDER BY id").fetchall()
    with duckdb.connect(str(duck_path), read_only=True) as d:
        got = d.execute("SELECT id, bal, note FROM public.acct ORDER BY id").fetchall()
    assert len(got) == len(want) and got == want


def _acct_flow(tmp_path: Path, dsn: str, duck_path: Path, rows: int, note: str, **options) -> Path:
    """``acct`` with ``rows`` rows (``note`` the SQL of their note) and an empty ``keyless_t``, and the flow file
    of :func:`_flow` with ``options`` added to its DuckDB destination's."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL, note text)")
        conn.execute(f"INSERT INTO acct SELECT g, g, {note} FROM generate_series(1, {rows}) g")
        conn.execute("CREATE TABLE keyless_t (a int)")
    flow = _flow(tmp_path, dsn, duck_path)
    data = json.loads(flow.read_text())
    data["destinations"][0]["options"].update(options)
    flow.write_text(json.dumps(data))
    return flow


def test_backfill_into_staging_resolved_by_the_worker(pgdb, tmp_path):
    """batch_mode=staging: the backfill lands in public.acct_staging, not in the target; -resolve-staging replaces
    the target with it."""
    duck_path = tmp_path / "st.duckdb"
    flow = _acct_flow(tmp_path, pgdb, duck_path, 5000, "'x'", batch_mode="staging", batch_resolution="replace")
    out = _worker(tmp_path, flow, "-mode", "backfill", "-tables", "public.acct")
    assert out.returncode == 0, out.stderr[-4000:]
    with duckdb.connect(str(duck_path), read_only=True) as d:
        assert d.execute("SELECT count(*) FROM public.acct_staging").fetchone()[0] == 5000
        assert d.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'acct'").fetchone()[0] \
            == 0
    out = _worker(tmp_path, flow, "-resolve-staging", "-tables", "public.acct")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resolved into public.acct (replace, 5000 rows)" in out.stderr
    with psycopg.connect(pgdb) as conn:
        want = conn.execute("SELECT id, bal, note FROM acct ORDER BY id").fetchall()
    with duckdb.connect(str(duck_path), read_only=True) as d:
        assert d.execute("SELECT id, bal, note FROM public.acct ORDER BY id").fetchall() == want
        assert d.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'acct_staging'"
                         ).fetchone()[0] == 0


def test_backfill_with_metadata_columns_holds_every_row_of_every_part(pgdb, tmp_path):
    """Metadata columns (meta_enabled) rewrite each batch on its way to DuckDB; a backfill's batches keep their
    snapshot marks through it: without them a later part's rows counted as stream changes at or below the
    high-water an earlier part's had moved, and were skipped (rows lost), and the meta columns say `read`."""
    duck_path = tmp_path / "meta.duckdb"
    flow = _acct_flow(tmp_path, pgdb, duck_path, 20000, "repeat('x', 200)", meta_enabled=True)
    # small chunks (16 blocks): the parts' batches interleave, a later part's before an earlier part's next
    out = subprocess.run([*WORKER, "-flow-file", str(flow), "-mode", "backfill", "-tables", "public.acct",
                          "-partition-count", "4", "-snapshot-workers", "4"],
                         env={**_env(tmp_path), "WALLABY_BACKFILL_CHUNK_BLOCKS": "16"}, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    with duckdb.connect(str(duck_path), read_only=True) as d:
        assert d.execute("SELECT count(*), count(DISTINCT id) FROM public.acct").fetchone() == (20000, 20000)
        assert d.execute("SELECT DISTINCT __ds_op FROM public.acct").fetchall() == [("read",)]


@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_backfill_into_kafka_then_stream(pgdb, tmp_path, kafka_broker, fmt):  # noqa: F811 - the fixture
    """Into Kafka: every row once as op read, keyed like streamed changes, then the stream's changes after them."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL, note text)")
        conn.execute("INSERT INTO acct SELECT g, g, 'x' FROM generate_series(1, 3000) g")
        conn.execute("CREATE TABLE keyless_t (a int)")
    flow = _flow(tmp_path, pgdb, tmp_path / "unused.duckdb")
    topic = f"bf-{fmt}-{uuid.uuid4().hex[:6]}"
    data = json.loads(flow.read_text())
    data["destinations"] = [{"name": "bus", "type": "kafka",
                             "options": {"brokers": kafka_broker.bootstrap, "topic": topic, "format": fmt}}]
    flow.write_text(json.dumps(data))
    out = _worker(tmp_path, flow, "-mode", "backfill", "-partition-count", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("UPDATE acct SET bal = -1 WHERE id <= 10")
    out = _worker(tmp_path, flow, "-max-empty-reads", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    records = []
    for m in consume_all(kafka_broker.bootstrap, topic, timeout=60):
        seg = decode(m.value, dict(m.headers)["wallaby-format"].decode())
        records += [(seg.table, r.op, r.key[0], r.after[1], m.partition) for r in seg.records]  # (id), (id, bal, note)
    reads = [r for r in records if r[1] == OP_READ]
    assert sorted(r[2] for r in reads) == list(range(1, 3001))
    updates = [r for r in records if r[1] == "update"]
    assert sorted(r[2] for r in updates) == list(range(1, 11)) and {r[3] for r in updates} == {-1}
    partition_of = {r[2]: r[4] for r in reads}
    assert all(partition_of[r[2]] == r[4] for r in updates)  # one key, one partition: the update follows its read


def test_a_slot_created_by_the_backfill_meets_it_exactly(pgdb, tmp_path):
    """The backfill creates the slot with its exported snapshot: a keyless table inserted into all through the
    backfill ends with every row exactly once (no change both read and streamed)."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE keyless_t (a int, b text)")
        conn.execute("INSERT INTO keyless_t SELECT g, 'old' FROM generate_series(1, 20000) g")
    duck_path = tmp_path / "k.duckdb"
    flow = _flow(tmp_path, pgdb, duck_path)
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(pgdb, autocommit=True) as conn:
            n = 100000
            while not stop.is_set():
                conn.execute("INSERT INTO keyless_t VALUES (%s, 'new')", (n,))
                n += 1
                time.sleep(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        out = _worker(tmp_path, flow, "-mode", "backfill", "-tables", "public.keyless_t")
    finally:
        stop.set()
        writer.join()
    assert out.returncode == 0, out.stderr[-4000:]
    assert "snapshot 0" in out.stderr  # the slot was created with its snapshot ("created replication slot ...")
    out = _worker(tmp_path, flow, "-max-empty-reads", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    with psycopg.connect(pgdb) as conn:
        want = conn.execute("SELECT a, b FROM keyless_t ORDER BY a").fetchall()
    with duckdb.connect(str(duck_path), read_only=True) as d:
        got = d.execute("SELECT a, b FROM public.keyless_t ORDER BY a").fetchall()
    assert got == want


def test_backfill_into_http_delivers_every_chunk_with_its_own_key(pgdb, tmp_path, receiver):  # noqa: F811
    """Many chunks of a keyless table over HTTP: every row arrives, each request with an idempotency key of its own
    (a backfill row's position is its own, so chunks are not taken for retries of one another)."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE keyless_t (a int, b text)")
        conn.execute("INSERT INTO keyless_t SELECT g, repeat('b', 100) FROM generate_series(1, 20000) g")
    flow = _flow(tmp_path, pgdb, tmp_path / "unused.duckdb")
    data = json.loads(flow.read_text())
    data["destinations"] = [{"name": "hook", "type": "http", "options": {"url": receiver.url(), "format": "json"}}]
    flow.write_text(json.dumps(data))
    env = {**_env(tmp_path), "WALLABY_BACKFILL_CHUNK_BLOCKS": "8"}
    out = subprocess.run([*WORKER, "-flow-file", str(flow), "-mode", "backfill", "-tables", "public.keyless_t",
                          "-partition-count", "2"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    delivered = receiver.delivered()
    keys = [r.headers.get("idempotency-key") for r in delivered]
    assert len(delivered) > 10 and None not in keys and len(set(keys)) == len(keys), out.stderr[-3000:]
    rows = [rec for r in delivered for rec in json.loads(r.body)["records"]]
    assert {rec["op"] for rec in rows} == {OP_READ}
    assert sorted(rec["after"]["a"] for rec in rows) == list(range(1, 20001))


@pytest.mark.parametrize("backend", ["postgres", "file"])
def test_snapshot_state_resumes_without_the_recovery_store(pgdb, tmp_path, backend):
    """Killed mid-way, then run again on a machine without its recovery store (removed here): the parts go on from
    the snapshot state store (each destination's committed progress), and every row arrives."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL, note text)")
        conn.execute("INSERT INTO acct SELECT g, g, repeat('n', g % 50) FROM generate_series(1, 300000) g")
        conn.execute("CREATE TABLE keyless_t (a int)")
    duck_path = tmp_path / "ss.duckdb"
    flow = _flow(tmp_path, pgdb, duck_path)
    data = json.loads(flow.read_text())
    data["source"]["options"].update(snapshot_state_backend=backend,
                                     **({"snapshot_state_path": str(tmp_path / "state.json")} if backend == "file"
                                        else {}))
    flow.write_text(json.dumps(data))
    env = {**_env(tmp_path), "WALLABY_BACKFILL_CHUNK_BLOCKS": "16"}
    cmd = [*WORKER, "-flow-file", str(flow), "-mode", "backfill", "-tables", "public.acct", "-partition-count", "2"]
    def recorded() -> bool:  # a destination's progress is in the store: it committed a part of the backfill
        if backend == "file":
            try:
                return bool(json.loads((tmp_path / "state.json").read_text())["bf"]["progress"])
            except (OSError, ValueError, KeyError):
                return False
        with psycopg.connect(pgdb) as conn:
            try:
                return conn.execute("SELECT count(*) FROM wallaby.snapshot_state WHERE flow_id = 'bf'"
                                    " AND destination <> ''").fetchone()[0] > 0
            except psycopg.errors.UndefinedTable:
                return False

    kill_when(cmd, env, ROOT, tmp_path / "run.log", recorded)
    shutil.rmtree(tmp_path / "recovery")
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "parts from the snapshot state" in out.stderr, out.stderr[-3000:]
    with psycopg.connect(pgdb) as conn:
        want = conn.execute("SELECT id, bal, note FROM acct ORDER BY id").fetchall()
    with duckdb.connect(str(duck_path), read_only=True) as d:
        assert d.execute("SELECT id, bal, note FROM public.acct ORDER BY id").fetchall() == want
    # finished: the state says so, and the next backfill plans anew (nothing resumed)
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "resuming" not in out.stderr, out.stderr[-3000:]
