"""Postgres -> DuckDB end to end: the worker CLI, bytewax.run, random workloads, kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.flows import flow_spec, slot_confirmed

ROOT = Path(__file__).resolve().parent.parent
WORKER = str(Path(sys.executable).parent / "wallaby-worker")


def write_flow(tmp_path: Path, dsn: str, duck: Path, **source) -> Path:
    flow = {
        "id": "e2e", "name": "e2e",
        "source": {"name": "pg", "type": "postgres", "options": {
            "dsn": dsn, "slot": "wallaby_e2e", "publication": "wallaby_e2e", "publication_tables": "public.items",
            "batch_timeout": "50ms", "status_interval": "1s", **source}},
        "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": str(duck)}}],
    }
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(flow))
    return path


def worker_env(tmp_path: Path) -> dict:
    return {**os.environ, "WALLABY_CHECKPOINT_BACKEND": "sqlite",
            "WALLABY_CHECKPOINT_PATH": str(tmp_path / "checkpoints.db"), "WALLABY_EPOCH_INTERVAL": "300ms",
            "PYTHONPATH": str(ROOT)}


def pg_table(dsn: str, table: str = "items") -> list[tuple]:
    with psycopg.connect(dsn) as c:
        return [tuple(r) for r in c.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()]


def duck_table(path: Path, table: str = "items") -> list[tuple]:
    """The DuckDB table's rows; [] when no change ever reached it (no file or no table yet)."""
    if not path.exists():
        return []
    with duckdb.connect(str(path), read_only=True) as d:
        if not d.execute("SELECT 1 FROM duckdb_tables() WHERE schema_name = 'public' AND table_name = ?",
                         [table]).fetchall():
            return []
        return [tuple(r) for r in d.execute(f"SELECT * FROM public.{table} ORDER BY 1").fetchall()]


def duck_high_water(path: Path) -> int:
    with duckdb.connect(str(path), read_only=True) as d:
        tables = {r[0] for r in d.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        name = next(t for t in tables if "state" in t)
        row = d.execute(f'SELECT max(lsn) FROM "{name}"').fetchone()
    return int(row[0] or 0)


@pytest.fixture
def items(pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price numeric(10,2),"
                  " at timestamptz)")
    return pgdb


def sql(dsn: str, *stmts) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in stmts:
            c.execute(s)


def test_worker_cli_catches_up_and_checkpoints(items, tmp_path):
    duck = tmp_path / "w.duckdb"
    flow = write_flow(tmp_path, items, duck)
    sql(items, "INSERT INTO items SELECT g, 'n' || g, g, g / 3.0, now() FROM generate_series(1, 500) g")
    # First run creates the slot: changes before it are not streamed (a backfill copies them).
    r = subprocess.run([WORKER, "-flow-file", str(flow), "-max-empty-reads", "2"], env=worker_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    sql(items, "DELETE FROM items",
        "INSERT INTO items SELECT g, 'n' || g, g, g / 3.0, now() FROM generate_series(1, 500) g",
        "UPDATE items SET qty = qty * 10, name = 'é🦘' WHERE id % 3 = 0", "DELETE FROM items WHERE id % 5 = 0")
    r = subprocess.run([WORKER, "-flow-file", str(flow), "-max-empty-reads", "2"], env=worker_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert duck_table(duck) == pg_table(items)
    out = subprocess.run([sys.executable, "-c",
                          "from wallaby.state.checkpoints import open_store; "
                          "print([c.as_dict() for c in open_store().list()])"],
                         env=worker_env(tmp_path), capture_output=True, text=True, check=True).stdout
    assert "'flow_id': 'e2e'" in out and "wallaby_e2e" in out
    assert slot_confirmed(items, "wallaby_e2e") <= max(duck_high_water(duck), slot_confirmed(items, "wallaby_e2e"))


def test_bad_spec_exits_2_with_every_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "source": {"name": "pg", "type": "postgres", "options": {
        "dsn": "postgresql://u:hunter2@h/db", "slott": "s", "batch_size": "ten"}},
        "destinations": [{"name": "d", "type": "duckdb", "options": {}}]}))
    r = subprocess.run([WORKER, "-flow-file", str(bad)], env=worker_env(tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert "slott" in r.stderr and "did you mean 'slot'" in r.stderr and "batch_size" in r.stderr
    assert "dsn" in r.stderr and "hunter2" not in r.stderr


def test_bytewax_run_module_with_recovery(items, tmp_path):
    duck = tmp_path / "r.duckdb"
    flow = write_flow(tmp_path, items, duck)
    rdir = tmp_path / "recovery"
    rdir.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(rdir), "1"], check=True, cwd=ROOT,
                   env=worker_env(tmp_path))
    env = {**worker_env(tmp_path), "WALLABY_FLOW_FILE": str(flow), "WALLABY_MAX_EMPTY_READS": "3"}
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.flow:flow", "-r", str(rdir), "-s", "1", "-b", "0"]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=120, capture_output=True)
    sql(items, "INSERT INTO items SELECT g, 'r', g, 1.5, now() FROM generate_series(1, 50) g")
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=120, capture_output=True)
    sql(items, "UPDATE items SET qty = -qty WHERE id < 10")
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=120, capture_output=True)
    assert duck_table(duck) == pg_table(items)


# -- random workloads (hypothesis) ---------------------------------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["insert", "update", "delete", "truncate", "commit"]), st.integers(1, 12),
              st.integers(-1000, 1000)),
    min_size=1, max_size=60,
)


def _apply(conn: psycopg.Connection, ops) -> None:
    cur = conn.cursor()
    for op, key, val in ops:
        if op == "insert":
            cur.execute("INSERT INTO items VALUES (%s, %s, %s, %s, now()) ON CONFLICT (id) DO UPDATE"
                        " SET qty = EXCLUDED.qty", (key, f"v{val}", val, val / 7))
        elif op == "update":
            cur.execute("UPDATE items SET qty = %s, name = %s WHERE id = %s", (val, f"u{val}", key))
        elif op == "delete":
            cur.execute("DELETE FROM items WHERE id = %s", (key,))
        elif op == "truncate" and val % 5 == 0:
            cur.execute("TRUNCATE items")
        elif op == "commit":
            conn.commit()
    conn.commit()


@given(rounds=st.lists(OPS, min_size=1, max_size=3))
def test_random_workloads_end_equal(pg, rounds, tmp_path_factory):
    from bytewax.testing import run_main

    from dataflows.flow import build_flow

    name = f"h{random.getrandbits(40):x}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    dsn = pg.dsn(name)
    try:
        sql(dsn, "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price numeric(10,2), at timestamptz)")
        duck = tmp_path_factory.mktemp("prop") / "p.duckdb"
        spec = flow_spec(dsn, duckdb_path=duck, source={"publication_tables": "public.items", "batch_size": "7"})
        from sources.postgres.setup import prepare_source

        prepare_source(spec.source_options(), spec.id)
        for ops in rounds:
            with psycopg.connect(dsn) as conn:
                _apply(conn, ops)
            flow = build_flow(spec, max_empty_reads=2)
            run_main(flow, epoch_interval=timedelta(milliseconds=100))
        assert duck_table(duck) == pg_table(dsn)
    finally:
        from tests.conftest import _drop_database

        _drop_database(pg.dsn(), name)


# -- kill -9 -----------------------------------------------------------------------------------


def committed_before(dsn: str, audit_slot: str, lsn: int) -> list[int]:
    """Commit LSNs of the transactions (touching the publication) whose commit ended at or before `lsn`."""
    from sources.postgres.pgoutput import Commit, Decoder

    with psycopg.connect(dsn) as c:
        rows = c.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
                         " 'proto_version', '1', 'publication_names', 'wallaby_e2e')", (audit_slot,)).fetchall()
    dec = Decoder(1)
    commits = [m for m in (dec.decode(bytes(r[0])) for r in rows) if isinstance(m, Commit)]
    return [m.commit_lsn for m in commits if m.end_lsn <= lsn]


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(items, tmp_path):
    duck = tmp_path / "k.duckdb"
    flow = write_flow(tmp_path, items, duck, batch_size="50")
    env = worker_env(tmp_path)
    subprocess.run([WORKER, "-flow-file", str(flow), "-max-empty-reads", "1"], env=env, check=True, timeout=120,
                   capture_output=True)
    sql(items, "SELECT pg_create_logical_replication_slot('audit', 'pgoutput')")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        rnd = random.Random(7)
        with psycopg.connect(items, autocommit=True) as c:
            i = 0
            while not stop.is_set():
                i += 1
                with c.transaction():
                    c.execute("INSERT INTO items VALUES (%s, 'w', %s, 1, now())", (i, i))
                    if i > 5:
                        c.execute("UPDATE items SET qty = qty + 1 WHERE id = %s", (rnd.randint(1, i - 1),))
                    if i % 7 == 0:
                        c.execute("DELETE FROM items WHERE id = %s", (rnd.randint(1, i),))
                written[0] = i
                time.sleep(0.002)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    rnd = random.Random(42)
    try:
        for _ in range(10):
            p = subprocess.Popen([WORKER, "-flow-file", str(flow)], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(1.0, 4.0))
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            if duck.exists():
                # The slot never passed what DuckDB holds: every transaction whose commit the slot
                # confirmed is at or below DuckDB's high-water position.
                confirmed = slot_confirmed(items, "wallaby_e2e")
                hw = duck_high_water(duck)
                late = [lsn for lsn in committed_before(items, "audit", confirmed) if lsn > hw]
                assert not late, f"slot confirmed past DuckDB: {late[:3]}"
    finally:
        stop.set()
        t.join(timeout=10)
    r = subprocess.run([WORKER, "-flow-file", str(flow), "-max-empty-reads", "3"], env=env, timeout=300,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert written[0] > 100
    assert duck_table(duck) == pg_table(items)


def test_settings_not_built_yet_are_refused_not_ignored(tmp_path):
    bad = tmp_path / "later.json"
    bad.write_text(json.dumps({"name": "m", "source": {"name": "pg", "type": "postgres", "options": {
        "dsn": "postgresql://u@127.0.0.1:1/db", "slot": "s", "publication": "p"}},
        "destinations": [{"name": "d", "type": "duckdb", "options": {"dsn": "x.duckdb", "soft_delete": "true"}},
                         {"name": "c", "type": "clickhouse", "options": {"dsn": "clickhouse://h:8123/db",
                                                                         "batch_resolution": "append"}}]}))
    r = subprocess.run([WORKER, "-flow-file", str(bad)], env=worker_env(tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert "destinations[1].options.batch_resolution" in r.stderr and "not built in this version" in r.stderr
    assert "destinations[0]" not in r.stderr  # soft_delete is built
