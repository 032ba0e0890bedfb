"""Schema changes that materializing destinations must follow (issue 15): a column's type changing at the source,
inside one epoch and across epochs, across a writer restart, and the one clear error when the destination cannot
hold the values it has under the new type."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from sinks.base import PermanentSinkError
from sinks.duckdb.writer import DuckDBOptions, DuckDBWriter
from tests import WORKER
from tests.apiserver import current_lsn, wait_streaming
from tests.builders import Stream, col, evolve, ins, numeric_typmod, table, upd
from tests.chserver import clickhouse  # noqa: F401 - fixture
from tests.flows import drain, flow_spec, rows_of, run_worker, source_part, worker_env, worker_flow
from tests.killkit import kill_at_random
from tests.snowserver import snowflake  # noqa: F401 - fixture
from wallaby.core.changes import TableChanges, parse_lsn
from wallaby.state.checkpoints import open_store

FLOW = "schema-flow"
ROOT = Path(__file__).resolve().parent.parent


def _writer(path: Path, **opts) -> DuckDBWriter:
    return DuckDBWriter("duck", FLOW, DuckDBOptions(dsn=str(path), **opts))


def _rows(path: Path, qualified: str = "public.t") -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as c:
        return [tuple(r) for r in c.execute(f"SELECT * FROM {qualified} ORDER BY ALL").fetchall()]


def _type(path: Path, column: str, name: str = "t") -> str:
    with duckdb.connect(str(path), read_only=True) as c:
        return c.execute("SELECT data_type FROM duckdb_columns() WHERE table_name = ? AND column_name = ?",
                         [name, column]).fetchone()[0]


def _numeric_then_bigint():
    t1 = table("t", [col("id", "int4", key=True), col("n", "numeric", typmod=numeric_typmod(8, 2))])
    t2 = evolve(t1, [col("id", "int4", key=True), col("n", "int8")])
    return t1, t2


def test_a_type_change_inside_one_epoch_applies_both_sides(tmp_path):
    """numeric(8,2) -> bigint with changes before and after it in one epoch: the writer used to fail with
    'cannot combine types int64 and decimal128' on every restart (the flow stuck for good)."""
    path = tmp_path / "d.duckdb"
    t1, t2 = _numeric_then_bigint()
    s = Stream(FLOW)
    w = _writer(path)
    w.write(s.batch(s.rows(t1, ins(id=1, n=Decimal("1.50")), ins(id=2, n=Decimal("2.25")))))
    w.write(s.batch(s.rows(t2, ins(id=3, n=300), upd({"id": 1, "n": 150}))))
    w.commit()
    w.close()
    assert _type(path, "n") == "BIGINT"
    # row 2 was cast by DuckDB (what a plain ALTER ... TYPE bigint gives in Postgres: 2.25 rounds to 2)
    assert _rows(path) == [(1, 150), (2, 2), (3, 300)]


def test_a_type_change_across_epochs_and_a_writer_restart(tmp_path):
    """The epoch after the change goes to a new writer (a restart): it learns the old source type from the meta
    table and rebuilds the column rather than casting new values into the old type."""
    path = tmp_path / "d.duckdb"
    t1, t2 = _numeric_then_bigint()
    s = Stream(FLOW)
    w = _writer(path)
    w.write(s.batch(s.rows(t1, ins(id=1, n=Decimal("1.50")))))
    w.commit()
    w.close()
    w = _writer(path)
    w.write(s.batch(s.rows(t2, ins(id=2, n=12_345_678_901))))  # does not fit DECIMAL(8,2)
    w.commit()
    w.close()
    assert _type(path, "n") == "BIGINT"
    assert _rows(path) == [(1, 2), (2, 12_345_678_901)]


def test_a_replay_after_the_mid_epoch_commit_applies_each_change_once(tmp_path):
    """The writer commits what came before a type change (DuckDB cannot commit the ALTER in the transaction that
    deleted from the table); killed after that commit, the replayed batch skips exactly what was committed: a keyless
    table (every insert a row) holds each row once."""
    path = tmp_path / "d.duckdb"
    t1 = table("t", [col("id", "int4"), col("n", "numeric", typmod=numeric_typmod(8, 2))], replica_identity="f")
    t2 = evolve(t1, [col("id", "int4"), col("n", "int8")])
    s = Stream(FLOW)
    batch = s.batch(s.rows(t1, ins(id=1, n=Decimal("1.50"))), s.rows(t2, ins(id=2, n=7)))
    w = _writer(path)
    w.write(batch)  # the first segment is committed inside write
    w.close()  # killed before the epoch's commit
    w = _writer(path)
    w.write(batch)
    w.commit()
    w.close()
    assert _rows(path) == [(1, 2), (2, 7)]


def test_text_to_integer_casts_what_the_destination_holds(tmp_path):
    path = tmp_path / "d.duckdb"
    t1 = table("t", [col("id", "int4", key=True), col("v", "text")])
    t2 = evolve(t1, [col("id", "int4", key=True), col("v", "int4")])
    s = Stream(FLOW)
    w = _writer(path)
    w.write(s.batch(s.rows(t1, ins(id=1, v="7"))))
    w.write(s.batch(s.rows(t2, ins(id=2, v=8))))
    w.commit()
    w.close()
    assert _type(path, "v") == "INTEGER"
    assert _rows(path) == [(1, 7), (2, 8)]


def test_a_change_the_destination_cannot_express_is_one_clear_error(tmp_path):
    """text -> int where DuckDB holds a value no integer can be (Postgres took it with a USING expression): one
    error naming the table, the column and both types, and the epoch rolled back (the first row stays as it was)."""
    path = tmp_path / "d.duckdb"
    t1 = table("t", [col("id", "int4", key=True), col("v", "text")])
    t2 = evolve(t1, [col("id", "int4", key=True), col("v", "int4")])
    s = Stream(FLOW)
    w = _writer(path)
    w.write(s.batch(s.rows(t1, ins(id=1, v="seven"))))
    w.commit()
    w.write(s.batch(s.rows(t2, ins(id=2, v=8))))
    with pytest.raises(PermanentSinkError) as err:
        w.commit()
    w.close()
    msg = str(err.value)
    assert "public.t" in msg and "'v'" in msg and "text" in msg and "int4" in msg and "type_mappings" in msg
    assert _rows(path) == [(1, "seven")]


# -- partitioned tables and generated columns at the source (real Postgres) ---------------------------------------

PARTITIONED = (
    "CREATE TABLE ev (id int, at date NOT NULL, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);"
    "CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
    "CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');"
)


def _tables_and_ops(batches) -> list[tuple[str, str, int]]:
    """(table, op, id) per change; a delete's id from its old key."""
    out = []
    for b in batches:
        for s in b.segments:
            if isinstance(s, TableChanges):
                for r in s.rows.to_pylist():
                    out.append(((r["__lsn"], r["__ord"]), f"{s.table.schema}.{s.table.name}", r["__op"],
                                r["id"] if r["id"] is not None else r["__before.id"]))
    return [x[1:] for x in sorted(out)]  # in WAL order


def _write_partitions(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO ev VALUES (1, '2024-05-01', 'a'), (2, '2025-05-01', 'b')")
        conn.execute("UPDATE ev SET at = '2025-06-01' WHERE id = 1")  # moves the row to another partition
        conn.execute("CREATE TABLE ev_2026 (id int, at date NOT NULL, v text, PRIMARY KEY (id, at))")
        conn.execute("ALTER TABLE ev ATTACH PARTITION ev_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        conn.execute("INSERT INTO ev VALUES (3, '2026-02-01', 'c')")


def test_a_partitioned_table_is_one_table_under_its_roots_name(pgdb):
    """publication_tables names the partitioned root: the publication wallaby creates publishes via the root, so every
    partition's changes, a partition attached later and a row moved between partitions land in public.ev (a move is a
    delete and an insert in the WAL, under the root's name)."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute(PARTITIONED)
    spec = flow_spec(pgdb, source={"publication_tables": "public.ev"})
    part = source_part(spec)
    try:
        with psycopg.connect(pgdb) as conn:
            assert conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = 'wallaby_t'").fetchone()[0]
        _write_partitions(pgdb)
        got = _tables_and_ops(drain(part, until_rows=5))
    finally:
        part.close()
    assert got == [("public.ev", "insert", 1), ("public.ev", "insert", 2), ("public.ev", "delete", 1),
                   ("public.ev", "insert", 1), ("public.ev", "insert", 3)]


def test_partitions_of_an_existing_publication_land_in_their_root(pgdb, caplog):
    """An existing publication without publish_via_partition_root sends each partition as itself: the source maps
    them to the root's name and says so at start."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute(PARTITIONED)
        conn.execute("CREATE PUBLICATION mine FOR TABLE ev")
    spec = flow_spec(pgdb, publication="mine", source={"ensure_publication": False})
    with caplog.at_level(logging.WARNING, logger="wallaby"):
        part = source_part(spec)
    try:
        _write_partitions(pgdb)
        got = _tables_and_ops(drain(part, until_rows=5))
    finally:
        part.close()
    notes = [r.getMessage() for r in caplog.records if "publish_via_partition_root" in r.getMessage()]
    assert notes and "ev_2024 -> ev" in notes[0]
    assert {t for t, _, _ in got} == {"public.ev"}
    assert [(op, i) for _, op, i in got] == [("insert", 1), ("insert", 2), ("delete", 1), ("insert", 1),
                                            ("insert", 3)]


def test_stored_generated_columns_are_published_or_named_at_start(pgdb, caplog):
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE g (id int PRIMARY KEY, n int, twice int GENERATED ALWAYS AS (n * 2) STORED)")
        conn.execute("CREATE PUBLICATION old_pub FOR TABLE g")
    spec = flow_spec(pgdb, source={"publication_tables": "public.g"})
    part = source_part(spec)
    try:
        with psycopg.connect(pgdb, autocommit=True) as conn:
            conn.execute("INSERT INTO g (id, n) VALUES (1, 21)")
        rows = rows_of(drain(part, until_rows=1))
    finally:
        part.close()
    assert rows[0]["twice"] == 42
    # an existing publication that does not publish them: named at start, absent in the changes
    spec = flow_spec(pgdb, flow_id="t2", slot="wallaby_t2", publication="old_pub", source={"ensure_publication": False})
    with caplog.at_level(logging.WARNING, logger="wallaby"):
        part = source_part(spec)
    try:
        with psycopg.connect(pgdb, autocommit=True) as conn:
            conn.execute("INSERT INTO g (id, n) VALUES (2, 5)")
        rows = rows_of(drain(part, until_rows=1))
    finally:
        part.close()
    assert "twice" not in rows[0]
    assert any("stored generated columns g.twice" in r.getMessage() for r in caplog.records)


# -- end to end: the worker streaming into DuckDB ------------------------------------------------------------------


def _worker_env(tmp_path: Path, epoch: str = "5s") -> dict[str, str]:
    return worker_env(tmp_path, epoch)


def _worker_flow(tmp_path: Path, dsn: str, duck: Path, destination: dict | None = None, **source) -> Path:
    """Flow ``sc`` (file ``tmp_path/sc.json``) into the DuckDB file ``duck``."""
    return worker_flow(tmp_path, dsn, "sc", source.pop("publication_tables", None),
                       {"dsn": str(duck), **(destination or {})}, dest_type="duckdb", dest_name="duck", **source)


def _run_worker(tmp_path: Path, dsn: str, duck: Path, *, epoch: str = "5s", destination: dict | None = None,
                args: tuple[str, ...] = ("-max-empty-reads", "2"), status: int = 0,
                **source) -> subprocess.CompletedProcess:
    """One ``wallaby-worker`` run of flow ``sc`` into ``duck`` (by default until the slot is drained), ending with
    exit ``status``."""
    return run_worker(tmp_path, _worker_flow(tmp_path, dsn, duck, destination, **source), args=args, epoch=epoch,
                      timeout=120, status=status)


def test_a_change_the_destination_cannot_express_holds_the_flow_at_the_gate(pgdb, tmp_path):
    """text -> int USING length(v) where DuckDB holds 'seven': the worker stops once (exit 75) with the error naming
    the table, the column and both types, and leaves the drift event pending; a worker started again holds before
    the change instead of failing again, writing nothing after it; the user drops the DuckDB table and approves:
    the stream reads the rewritten table again and DuckDB ends equal to Postgres."""
    duck = tmp_path / "d.duckdb"
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.t")
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t VALUES (1, 'seven')")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.t")
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("ALTER TABLE t ALTER COLUMN v TYPE int USING length(v)")
        c.execute("INSERT INTO t VALUES (2, 8)")
    first = _run_worker(tmp_path, pgdb, duck, publication_tables="public.t", status=75).stderr
    flows = open_store(_worker_env(tmp_path)).flow_store
    (event,) = [e for e in flows.list_ddl(flow_id="sc") if e.status == "pending"]
    line = first.strip().splitlines()[-1]
    assert line.startswith("wallaby-worker: destination 'duck'") and "'v'" in line and "text" in line, line
    assert "int4" in line and f"DDL event {event.id} (public.t) is pending" in line, line
    assert f"wallaby-admin ddl approve -id {event.id}" in line and json.loads(event.plan_json)["retyped"] == ["v"]

    path = _worker_flow(tmp_path, pgdb, duck, publication_tables="public.t")
    log = tmp_path / "held.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*WORKER, "-flow-file", str(path)], env=_worker_env(tmp_path), stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while b"holding at" not in log.read_bytes() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()[-3000:]  # held, not failed again
            assert b"holding at" in log.read_bytes()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _rows(duck) == [(1, "seven")]  # nothing after the held change

    with duckdb.connect(str(duck)) as d:
        d.execute("DROP TABLE public.t")
    flows.set_ddl_status(event.id, "approved")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.t")
    assert _rows(duck) == _pg(pgdb, "SELECT * FROM t ORDER BY id") == [(1, 5), (2, 8)]


def test_a_partitioned_table_is_backfilled_through_its_root_then_streamed(pgdb, tmp_path):
    """A backfill of a partitioned table reads every partition through the root into one DuckDB table (block ranges
    and key ranges), and the stream after it lands there too."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(PARTITIONED)
        c.execute("INSERT INTO ev SELECT g, date '2024-01-01' + (g %% 700), 'v' || g FROM generate_series(10, %s) g",
                  (3000,))
    for extra in ((), ("-partition-column", "id")):
        duck = tmp_path / f"bf{len(extra)}.duckdb"
        _run_worker(tmp_path, pgdb, duck, args=("-mode", "backfill", "-partition-count", "3", *extra),
                    publication_tables="public.ev")
        with duckdb.connect(str(duck), read_only=True) as d:
            got = [tuple(r) for r in d.execute('SELECT id, "at", v FROM public.ev ORDER BY id, "at"').fetchall()]
            names = {r[0] for r in d.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert got == _pg(pgdb, "SELECT id, at, v FROM ev ORDER BY id, at"), extra
        assert not {"ev_2024", "ev_2025"} & names
    _write_partitions(pgdb)
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.ev")
    with duckdb.connect(str(duck), read_only=True) as d:
        got = [tuple(r) for r in d.execute('SELECT id, "at", v FROM public.ev ORDER BY id, "at"').fetchall()]
    assert got == _pg(pgdb, "SELECT id, at, v FROM ev ORDER BY id, at")


def _pg(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as c:
        return [tuple(r) for r in c.execute(query).fetchall()]


def test_streamed_schema_changes_end_equal_in_duckdb(pgdb, tmp_path):
    """Rows, then in one epoch (5 s): columns added with constant defaults (t), a column retyped numeric(8,2) ->
    bigint with changes before and after it (u), rows moved between partitions and a partition attached (ev):
    DuckDB ends equal to Postgres on every column. (The retype is in its own table: it rewrites the table, which
    makes Postgres store the defaults in the rows and forget them in the catalog, a rewrite the stream does not
    carry.)"""
    duck = tmp_path / "d.duckdb"
    tables = "public.t,public.u,public.ev"
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, n int)")
        c.execute("CREATE TABLE u (id int PRIMARY KEY, n numeric(8,2))")
        c.execute(PARTITIONED)
    _run_worker(tmp_path, pgdb, duck, publication_tables=tables)  # creates the slot
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 20) g")
        c.execute("INSERT INTO u SELECT g, g / 4.0 FROM generate_series(1, 20) g")
    _run_worker(tmp_path, pgdb, duck, publication_tables=tables)  # rows in DuckDB before the DDL
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t VALUES (21, 21)")
        c.execute("ALTER TABLE t ADD COLUMN d text DEFAULT 'dflt', ADD COLUMN k int NOT NULL DEFAULT 7,"
                  " ADD COLUMN z date DEFAULT '-infinity'")
        c.execute("UPDATE t SET n = 0 WHERE id = 2")
        c.execute("INSERT INTO t VALUES (22, 22, 'x', 1, '2024-01-01')")
        c.execute("INSERT INTO u VALUES (21, 5.5)")
        c.execute("UPDATE u SET n = 9.75 WHERE id = 2")
        c.execute("ALTER TABLE u ALTER COLUMN n TYPE bigint")
        c.execute("INSERT INTO u VALUES (22, 12345678901)")
        c.execute("UPDATE u SET n = n + 1 WHERE id = 3")
    _write_partitions(pgdb)
    _run_worker(tmp_path, pgdb, duck, publication_tables=tables)
    with duckdb.connect(str(duck), read_only=True) as d:
        t = [tuple(r) for r in d.execute("SELECT id, n, d, k, z::text FROM public.t ORDER BY id").fetchall()]
        u = [tuple(r) for r in d.execute("SELECT id, n FROM public.u ORDER BY id").fetchall()]
        ev = [tuple(r) for r in d.execute('SELECT id, "at", v FROM public.ev ORDER BY id, "at"').fetchall()]
        names = {r[0] for r in d.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert t == _pg(pgdb, "SELECT id, n, d, k, z::text FROM t ORDER BY id")
    assert u == _pg(pgdb, "SELECT id, n FROM u ORDER BY id")
    assert ev == _pg(pgdb, "SELECT id, at, v FROM ev ORDER BY id, at")
    assert not {"ev_2024", "ev_2025", "ev_2026"} & names


def test_the_rest_of_the_ddl_map_ends_equal_in_duckdb(pgdb, tmp_path):
    """RENAME COLUMN, SET DEFAULT, DROP COLUMN, REPLICA IDENTITY FULL, a primary key added to a keyless table, a new
    table in a schema publication, RENAME TABLE and DROP TABLE: DuckDB ends with what docs/ddl.md says."""
    duck = tmp_path / "d.duckdb"

    def run() -> None:
        _run_worker(tmp_path, pgdb, duck, epoch="1s", destination={"drop_columns": True}, publication_schemas="app")

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE SCHEMA app")
        c.execute("CREATE TABLE app.a (id int PRIMARY KEY, x text, y int)")
        c.execute("CREATE TABLE app.k (id int, v text)")  # keyless
        c.execute("CREATE TABLE app.gone (id int PRIMARY KEY)")
    run()
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO app.a SELECT g, 'x' || g, g FROM generate_series(1, 5) g")
        c.execute("INSERT INTO app.k VALUES (1, 'a'), (2, 'b')")
        c.execute("INSERT INTO app.gone VALUES (1)")
    run()
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("ALTER TABLE app.a RENAME COLUMN x TO x2")
        c.execute("ALTER TABLE app.a ALTER COLUMN y SET DEFAULT 99")
        c.execute("UPDATE app.a SET x2 = 'renamed' WHERE id = 1")
        c.execute("INSERT INTO app.a (id, x2) VALUES (6, 'six')")
        c.execute("ALTER TABLE app.a DROP COLUMN y")
        c.execute("UPDATE app.a SET x2 = 'after drop' WHERE id = 2")
        c.execute("ALTER TABLE app.k REPLICA IDENTITY FULL")
        c.execute("UPDATE app.k SET v = 'a2' WHERE id = 1")
        c.execute("ALTER TABLE app.k ADD PRIMARY KEY (id)")
        c.execute("UPDATE app.k SET v = 'b2' WHERE id = 2")
        c.execute("DELETE FROM app.k WHERE id = 1")
        c.execute("CREATE TABLE app.fresh (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO app.fresh VALUES (1, 'new table')")
        c.execute("DROP TABLE app.gone")
    run()
    with duckdb.connect(str(duck), read_only=True) as d:
        a = [tuple(r) for r in d.execute("SELECT * FROM app.a ORDER BY id").fetchall()]
        a_cols = [r[0] for r in d.execute("SELECT column_name FROM duckdb_columns() WHERE schema_name = 'app'"
                                          " AND table_name = 'a' ORDER BY column_index").fetchall()]
        k = [tuple(r) for r in d.execute("SELECT id, v FROM app.k ORDER BY id").fetchall()]
        fresh = [tuple(r) for r in d.execute("SELECT * FROM app.fresh").fetchall()]
        tables = {r[0] for r in d.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'app'")
                  .fetchall()}
    # a rename is a drop and an add (drop_columns=true: the old name goes); rows not changed since keep NULL there
    assert a_cols == ["id", "x2"]
    assert a == [(1, "renamed"), (2, "after drop"), (3, None), (4, None), (5, None), (6, "six")]
    assert k == _pg(pgdb, "SELECT id, v FROM app.k ORDER BY id")
    assert fresh == [(1, "new table")]
    assert "gone" in tables  # DROP TABLE leaves the destination table (docs/ddl.md)


def test_a_rewrite_is_said_with_its_plan_and_a_constant_default_is_not_one(pgdb, caplog):
    """ALTER ... TYPE ... USING rewrites the table: the drift event says so with the plan "resync public.t" (what
    the DDL gate holds and `ddl list` shows) and a warning names the command to run; a constant default rewrites
    nothing and says nothing of the kind."""
    with psycopg.connect(pgdb, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, n numeric(8,2))")
    spec = flow_spec(pgdb, source={"publication_tables": "public.t"})
    part = source_part(spec)
    try:
        with psycopg.connect(pgdb, autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES (1, 1.5)")
        drain(part, until_rows=1)
        with psycopg.connect(pgdb, autocommit=True) as conn:
            conn.execute("ALTER TABLE t ADD COLUMN d text DEFAULT 'x'")
            conn.execute("INSERT INTO t VALUES (2, 2.5, 'y')")
        first = drain(part, until_rows=2)
        with caplog.at_level(logging.WARNING, logger="wallaby"):
            with psycopg.connect(pgdb, autocommit=True) as conn:
                conn.execute("ALTER TABLE t ALTER COLUMN n TYPE bigint USING (n * 100)::bigint")
                conn.execute("INSERT INTO t VALUES (3, 300, 'z')")
            second = drain(part, until_rows=2)
    finally:
        part.close()

    def drifts(batches):
        return [s.payload for b in batches for s in b.segments if not isinstance(s, TableChanges) and s.op == "ddl"]

    assert [d["rewritten"] for d in drifts(first)] == [False]
    (d,) = drifts(second)
    assert d["rewritten"] and d["retyped"] == ["n"] and "plan: resync public.t" in d["ddl"]
    assert any("resync it: wallaby-worker -mode backfill -tables public.t" in r.getMessage() for r in caplog.records)


def test_a_rewritten_keyed_table_is_read_again_in_the_stream(pgdb, tmp_path):
    """ALTER ... TYPE ... USING computes new values for every row and the WAL carries none: the source reads the
    table again after the DDL (keyed: upserts), also for a worker that catches up after the fact, and DuckDB ends
    equal, with the changes after the DDL on top. The same for a column added with a volatile default while no
    worker ran (the table's storage is kept with the flow's shapes)."""
    duck = tmp_path / "d.duckdb"
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, n numeric(8,2))")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.t")
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t SELECT g, g / 4.0 FROM generate_series(1, 500) g")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.t")
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("UPDATE t SET n = 0.5 WHERE id = 1")
        c.execute("ALTER TABLE t ALTER COLUMN n TYPE bigint USING (n * 100)::bigint")
        c.execute("INSERT INTO t VALUES (501, 7)")
        c.execute("DELETE FROM t WHERE id = 2")
        c.execute("UPDATE t SET n = n + 1 WHERE id = 3")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.t")
    with duckdb.connect(str(duck), read_only=True) as d:
        got = [tuple(r) for r in d.execute("SELECT id, n FROM public.t ORDER BY id").fetchall()]
    assert got == _pg(pgdb, "SELECT id, n FROM t ORDER BY id")
    with psycopg.connect(pgdb, autocommit=True) as c:  # a volatile default: each row its own value, no row change
        c.execute("ALTER TABLE t ADD COLUMN r int DEFAULT (random() * 1000)::int")
        c.execute("INSERT INTO t (id, n) VALUES (502, 8)")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.t")
    with duckdb.connect(str(duck), read_only=True) as d:
        got = [tuple(r) for r in d.execute("SELECT id, n, r FROM public.t ORDER BY id").fetchall()]
    assert got == _pg(pgdb, "SELECT id, n, r FROM t ORDER BY id")


def test_a_rewritten_keyless_table_is_replaced_as_of_an_exact_snapshot(pgdb, tmp_path):
    """A table without a key (REPLICA IDENTITY FULL, duplicate rows) rewritten by ALTER ... TYPE ... USING while no
    worker ran, with changes after the DDL: the source replaces it in DuckDB (a truncate, then its rows read as of
    a temporary slot's exported snapshot) and skips the stream's changes of it committed before that snapshot; the
    changes after it apply on top. DuckDB ends equal to Postgres as a multiset, no row twice."""
    duck = tmp_path / "d.duckdb"
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE k (a int, n numeric(8,2))")
        c.execute("ALTER TABLE k REPLICA IDENTITY FULL")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.k")
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO k SELECT g % 50, (g % 7) / 4.0 FROM generate_series(1, 400) g")  # duplicates
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.k")
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("UPDATE k SET n = 9.25 WHERE a = 1")
        c.execute("ALTER TABLE k ALTER COLUMN n TYPE bigint USING (n * 100)::bigint")
        c.execute("INSERT INTO k VALUES (1000, 1), (1000, 1)")
        for i in range(3):  # more than one drain of the stream: some of it comes after the table is read again
            c.execute("INSERT INTO k SELECT 2000 + g %% 5, %s FROM generate_series(1, 600) g", (i,))
        c.execute("DELETE FROM k WHERE a = 2")
        c.execute("UPDATE k SET n = n + 1 WHERE a = 3")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.k")
    query = "SELECT a, n, count(*) FROM {} GROUP BY a, n ORDER BY a, n"
    with duckdb.connect(str(duck), read_only=True) as d:
        got = [tuple(r) for r in d.execute(query.format("public.k")).fetchall()]
    assert got == _pg(pgdb, query.format("k"))
    with psycopg.connect(pgdb, autocommit=True) as c:  # the stream after the replace
        c.execute("INSERT INTO k VALUES (1000, 1)")
        c.execute("DELETE FROM k WHERE a = 4")
    _run_worker(tmp_path, pgdb, duck, publication_tables="public.k")
    with duckdb.connect(str(duck), read_only=True) as d:
        got = [tuple(r) for r in d.execute(query.format("public.k")).fetchall()]
    assert got == _pg(pgdb, query.format("k"))
    with psycopg.connect(pgdb, autocommit=True) as c:  # the temporary slot went with its connection
        assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE temporary").fetchone() == (0,)


def _warehouse_schema_changes(pgdb: str, run) -> None:
    """Tables t (keyed) and k (keyless), a worker ``run()`` after each step: rows; a constant default and a widened
    column; then, while no worker runs, a volatile default and USING rewrites of both tables, changes after them
    and a dropped column; then two columns dropped and added again under their names (with a constant default,
    and with none), a change between."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, n int, s varchar(5))")
        c.execute("CREATE TABLE k (a int, b text)")
        c.execute("ALTER TABLE k REPLICA IDENTITY FULL")
    run()
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t SELECT g, g * 3, 's' || g % 10 FROM generate_series(1, 300) g")
        c.execute("INSERT INTO k SELECT g % 20, 'b' || g % 3 FROM generate_series(1, 200) g")
        c.execute("ALTER TABLE t ADD COLUMN d text DEFAULT 'dflt'")
        c.execute("INSERT INTO t (id, n, s) VALUES (301, 1, 'x')")
        c.execute("ALTER TABLE t ALTER COLUMN s TYPE varchar(20)")
    run()
    with psycopg.connect(pgdb, autocommit=True) as c:  # while no worker runs
        c.execute("UPDATE t SET n = 5 WHERE id < 10")
        c.execute("ALTER TABLE t ADD COLUMN r int DEFAULT (random() * 1000)::int")
        c.execute("ALTER TABLE t ALTER COLUMN n TYPE bigint USING n * 100")
        c.execute("ALTER TABLE k ALTER COLUMN a TYPE bigint USING a * 10")
        c.execute("INSERT INTO t (id, n, s) VALUES (302, 2, 'y')")
        c.execute("INSERT INTO k VALUES (5, 'new'), (5, 'new')")
        c.execute("DELETE FROM k WHERE a = 30")
        c.execute("ALTER TABLE t DROP COLUMN s")
        c.execute("UPDATE t SET d = 'u' WHERE id % 7 = 0")
    run()
    with psycopg.connect(pgdb, autocommit=True) as c:  # columns dropped and added again under their names
        c.execute("ALTER TABLE t DROP COLUMN d")
        c.execute("UPDATE t SET n = n + 1 WHERE id = 1")
        c.execute("ALTER TABLE t ADD COLUMN d text DEFAULT 'again'")  # every row reads 'again', 'u' or 'dflt' before
        c.execute("ALTER TABLE t DROP COLUMN r")
        c.execute("UPDATE t SET n = n + 1 WHERE id = 2")
        c.execute("ALTER TABLE t ADD COLUMN r int")  # every row reads NULL
        c.execute("INSERT INTO t (id, n) VALUES (303, 3)")
    run()


def test_schema_changes_end_equal_in_ducklake(pgdb, tmp_path):
    """The same schema changes into DuckLake (a sqlite catalog): a constant default, a volatile default and an
    ALTER ... TYPE ... USING to a type DuckLake promotes to (rewrites: the keyed table read again, the keyless one
    replaced), a widened and a dropped column, with changes before and after each, some made while no worker ran:
    the lake ends equal (a type DuckLake cannot promote to holds the flow: tests/test_sink_ducklake.py)."""
    from sinks.ducklake.options import DuckLakeDestinationOptions
    from tests.test_sink_ducklake import read_lake

    lake = {"dsn": str(tmp_path / "lake.duckdb"), "catalog": f"sqlite:{tmp_path / 'cat.sqlite'}",
            "data_path": str(tmp_path / "data")}
    opts = DuckLakeDestinationOptions.model_validate(lake)
    path = _worker_flow(tmp_path, pgdb, tmp_path / "unused.duckdb", publication_tables="public.t,public.k")
    flow = json.loads(path.read_text())
    flow["destinations"] = [{"name": "lake", "type": "ducklake", "options": lake}]
    path.write_text(json.dumps(flow))

    _warehouse_schema_changes(pgdb, lambda: run_worker(tmp_path, path, epoch="5s"))
    got_t = read_lake(opts, "SELECT id, n, d, r FROM public.t ORDER BY id")
    assert got_t == _pg(pgdb, "SELECT id, n, d, r FROM t ORDER BY id")
    query = "SELECT a, b, count(*) FROM {} GROUP BY a, b ORDER BY a, b"
    assert read_lake(opts, query.format("public.k")) == _pg(pgdb, query.format("k"))


def test_schema_changes_end_equal_in_snowflake(pgdb, tmp_path, snowflake):  # noqa: F811
    """The same schema changes into Snowflake (the fakesnow server, through the real connector): a constant and a
    volatile default, ALTER ... TYPE ... USING (the keyed table read again, the keyless one replaced), a widened and
    a dropped column, some while no worker ran: Snowflake ends equal on every Postgres column."""
    from tests.test_sink_snowflake import _name, dsn_of, rows

    database = _name()
    path = worker_flow(tmp_path, pgdb, "sc", "public.t,public.k", {"dsn": dsn_of(snowflake, database)},
                       dest_type="snowflake", dest_name="snow")

    _warehouse_schema_changes(pgdb, lambda: run_worker(tmp_path, path))
    got_t = rows(snowflake, database, 'SELECT "id", "n", "d", "r" FROM "public"."t" ORDER BY "id"')
    assert got_t == _pg(pgdb, "SELECT id, n, d, r FROM t ORDER BY id")
    query = 'SELECT "a", "b", count(*) FROM "public"."k" GROUP BY "a", "b" ORDER BY "a", "b"'
    assert rows(snowflake, database, query) == _pg(pgdb, query.replace('"public"."k"', "k").replace('"', ""))


def test_schema_changes_end_equal_in_clickhouse(pgdb, tmp_path, clickhouse):  # noqa: F811
    """The same schema changes into ClickHouse (the chdb test server), read through the writer's __current views:
    ClickHouse ends equal on every Postgres column."""
    from tests.test_sink_clickhouse import Dbs, _name

    dbs = Dbs(clickhouse, _name("tgt"), _name("state"))
    path = worker_flow(tmp_path, pgdb, "sc", "public.t,public.k", {"dsn": dbs.dsn(), "database": dbs.target},
                       dest_type="clickhouse", dest_name="ch")
    _warehouse_schema_changes(pgdb, lambda: run_worker(tmp_path, path))
    assert dbs.table("t", "id, n, d, r", "id") == _pg(pgdb, "SELECT id, n, d, r FROM t ORDER BY id")
    query = "SELECT a, b, count(*) FROM {} GROUP BY a, b ORDER BY a, b"
    assert dbs.rows(query.format(f"`{dbs.target}`.`k__current`")) == _pg(pgdb, query.format("k"))


# -- random histories of changes and schema changes, the worker killed -9 -------------------------------------------

STEPS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["insert", "update", "delete", "key"]), st.integers(1, 15), st.integers(-99, 99)),
    st.tuples(st.sampled_from(["add_default", "add_null", "add_volatile", "drop", "retype", "truncate"]), st.just(0),
              st.integers(0, 9)),
), min_size=3, max_size=25)


def _history(conn: psycopg.Connection, steps, cols: list[str], v_type: list[str]) -> None:
    """Run ``steps`` on table h (id, v, and the columns in ``cols``), each its own transaction."""
    for op, key, val in steps:
        if op == "insert":
            conn.execute("INSERT INTO h (id, v) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                         (key, val))
        elif op == "update":
            extra = "".join(f", {c} = {c} || 'u'" for c in cols if c.startswith("d"))
            conn.execute(f"UPDATE h SET v = %s{extra} WHERE id = %s", (val, key))
        elif op == "delete":
            conn.execute("DELETE FROM h WHERE id = %s", (key,))
        elif op == "key":
            conn.execute("UPDATE h SET id = id + 100 WHERE id = %s AND NOT EXISTS (SELECT 1 FROM h WHERE id = %s)",
                         (key, key + 100))
        elif op == "add_default":
            name = f"d{len(cols)}"
            conn.execute(f"ALTER TABLE h ADD COLUMN {name} text DEFAULT 'x{val}'")
            cols.append(name)
        elif op == "add_null":
            name = f"n{len(cols)}"
            conn.execute(f"ALTER TABLE h ADD COLUMN {name} int")
            cols.append(name)
        elif op == "add_volatile":  # Postgres rewrites the table, a value per row, no row change in the WAL
            name = f"r{len(cols)}"
            conn.execute(f"ALTER TABLE h ADD COLUMN {name} int DEFAULT (random() * 1000)::int")
            cols.append(name)
        elif op == "drop" and cols:
            conn.execute(f"ALTER TABLE h DROP COLUMN {cols.pop()}")
            # a change in the shape without it: the worker runs after the round, so a column of this name added
            # again next would otherwise look as it did, numbered as now (the limit in docs/ddl.md; the column
            # numbers cover it for a worker that met the first shape:
            # test_a_column_dropped_and_added_again_alike_with_no_change_between)
            conn.execute("UPDATE h SET v = v WHERE id = (SELECT min(id) FROM h)")
        elif op == "retype" and len(v_type) < 3:
            nxt = {1: ("bigint", "v::bigint"), 2: ("numeric(14,2)", "v * 1.5")}[len(v_type)]
            conn.execute(f"ALTER TABLE h ALTER COLUMN v TYPE {nxt[0]} USING {nxt[1]}")
            v_type.append(nxt[0])
        elif op == "truncate" and val == 0:
            conn.execute("TRUNCATE h")
        conn.commit()
    # a change after the last DDL: the stream announces a table's shape with its next change (a DDL with no change
    # after it is not in the WAL at all; docs/ddl.md)
    conn.execute("INSERT INTO h (id, v) VALUES (1000, 1) ON CONFLICT (id) DO UPDATE SET v = h.v + 1")
    conn.commit()


# no shrinking: an example runs the worker several times (a failure prints the example as it was found)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(rounds=st.lists(STEPS, min_size=2, max_size=3), seed=st.integers(0, 1000))
# found by this test: a column with a constant default dropped, then one of its name added with another (a change
# between): the destination kept the dropped one and its values
@example(rounds=[
    [('delete', 2, -47), ('add_null', 0, 8), ('insert', 10, 0), ('truncate', 0, 1), ('retype', 0, 1),
     ('add_default', 0, 8), ('key', 10, -91), ('update', 10, 63), ('delete', 6, 46), ('add_default', 0, 5),
     ('update', 15, -50), ('add_default', 0, 2), ('key', 10, -9)],
    [('add_volatile', 0, 0), ('drop', 0, 4), ('add_default', 0, 3), ('add_volatile', 0, 5), ('insert', 10, -38),
     ('retype', 0, 7), ('add_null', 0, 8), ('add_default', 0, 7), ('add_default', 0, 8), ('truncate', 0, 9),
     ('drop', 0, 5), ('retype', 0, 5), ('update', 12, 16), ('retype', 0, 2), ('truncate', 0, 8),
     ('delete', 2, -58), ('add_volatile', 0, 2), ('delete', 12, -88), ('update', 12, -84), ('add_null', 0, 7),
     ('delete', 2, -12), ('add_null', 0, 2), ('delete', 11, -61)],
    [('update', 6, 13), ('add_default', 0, 9), ('insert', 14, -94), ('insert', 2, 66), ('drop', 0, 7),
     ('delete', 2, 4), ('delete', 8, 80), ('key', 15, -51), ('update', 8, -45), ('retype', 0, 1), ('insert', 14, 14),
     ('delete', 6, -59), ('add_null', 0, 8), ('drop', 0, 4), ('add_default', 0, 6)],
], seed=31)
# found by this test: a drop before volatile defaults, all while no worker ran (the storage change was seen at the
# drop and the table read again too early)
@example(rounds=[
    [('add_default', 0, 2), ('drop', 0, 4), ('insert', 4, -41), ('insert', 14, -59), ('insert', 4, -53),
     ('retype', 0, 1), ('delete', 7, -66), ('delete', 10, -40)],
    [('update', 7, 11), ('insert', 11, -49), ('add_default', 0, 8), ('key', 1, -33), ('drop', 0, 6),
     ('insert', 12, 4), ('truncate', 0, 8), ('insert', 13, 38), ('delete', 4, -66), ('add_null', 0, 6),
     ('add_null', 0, 2), ('add_null', 0, 2), ('add_volatile', 0, 2), ('add_volatile', 0, 1),
     ('truncate', 0, 6), ('delete', 3, -83), ('delete', 11, 54), ('insert', 3, 62), ('add_null', 0, 7),
     ('drop', 0, 5), ('delete', 10, 88)],
    [('drop', 0, 0), ('insert', 2, 77), ('update', 7, 83), ('drop', 0, 4), ('drop', 0, 2), ('insert', 4, 28),
     ('add_default', 0, 7), ('key', 3, 72), ('add_default', 0, 3), ('truncate', 0, 5), ('drop', 0, 9),
     ('delete', 14, -3), ('add_volatile', 0, 5), ('insert', 12, 5), ('insert', 8, 67), ('delete', 11, -26),
     ('add_default', 0, 9), ('add_volatile', 0, 8), ('key', 4, -34), ('delete', 15, -11),
     ('add_default', 0, 4)],
], seed=18)
def test_random_histories_with_schema_changes_end_equal(pg, rounds, seed, tmp_path_factory):
    """DML mixed with columns added (constant default, volatile default or none), dropped, retyped (widened, and
    USING an expression that computes new values), truncates; the worker killed -9 at a random moment of each round
    and run again: DuckDB ends equal to Postgres on every Postgres column."""
    tmp = tmp_path_factory.mktemp("hist")
    name = f"h{random.getrandbits(40):x}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    dsn = pg.dsn(name)
    duck = tmp / "h.duckdb"
    cols: list[str] = []
    v_type = ["int"]
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE h (id int PRIMARY KEY, v int)")
        _run_worker(tmp, dsn, duck, epoch="300ms", publication_tables="public.h")  # the slot
        flow_path = tmp / "sc.json"
        env = worker_env(tmp, "300ms")
        for i, steps in enumerate(rounds):
            with psycopg.connect(dsn) as conn:
                _history(conn, steps, cols, v_type)
            logs = tmp / f"round{i}"
            logs.mkdir()
            kill_at_random([*WORKER, "-flow-file", str(flow_path)], env, Path(__file__).resolve().parent.parent,
                           logs, runs=1, started="streaming from", window=(0.05, 1.0), seed=seed + i)
            _run_worker(tmp, dsn, duck, epoch="300ms", publication_tables="public.h")
        names = ["id", "v", *cols]
        want = _pg(dsn, f"SELECT {', '.join(names)} FROM h ORDER BY id")
        with duckdb.connect(str(duck), read_only=True) as d:
            have = {r[0] for r in d.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'h'")
                    .fetchall()}
            if not have:  # nothing ever reached DuckDB
                assert want == []
                return
            got = [tuple(r) for r in d.execute(f"SELECT {', '.join(names)} FROM public.h ORDER BY id").fetchall()]
        assert got == want, (rounds, cols, v_type)
    finally:
        from tests.conftest import _drop_database

        _drop_database(pg.dsn(), name)


def test_a_reread_needs_every_destination_to_take_reads_into_its_targets():
    from dataflows.buildable import takes_reads

    dsn = "postgresql://u@127.0.0.1:1/db"
    assert takes_reads(flow_spec(dsn))
    assert not takes_reads(flow_spec(dsn, destination={"batch_mode": "staging"}))  # reads would wait in staging


# -- the same histories through the DDL gate ------------------------------------------------------------------------

def _gated_worker(tmp: Path, flow_path: Path, log) -> subprocess.Popen:
    env = {**_worker_env(tmp, "300ms"), "WALLABY_DDL_POLL": "0.3"}
    return subprocess.Popen([*WORKER, "-flow-file", str(flow_path)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(steps=STEPS, seed=st.integers(0, 1000))
# found by this test: the worker first saw the table's shape after a volatile default had rewritten it (the storage it
# read was already the rewritten one), and a run that stopped by SIGTERM left the reread to the next run
@example(steps=[('retype', 0, 3), ('retype', 0, 6), ('insert', 3, -80), ('add_volatile', 0, 1), ('retype', 0, 5)],
         seed=296)
def test_random_histories_through_the_ddl_gate_hold_until_decided(pg, steps, seed, tmp_path_factory):
    """gate=true, auto_approve=false: each schema change of a random history of DML and DDL (the same steps as
    above) holds the flow until it is decided; while it is held nothing at or after it is confirmed (the checkpoint
    stays before the DDL's transaction), also across a kill -9 of the held worker; decided (approved, or
    approved-and-applied), the flow goes on, and DuckDB ends equal to Postgres on every Postgres column."""
    tmp = tmp_path_factory.mktemp("gated")
    name = f"g{random.getrandbits(40):x}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    dsn = pg.dsn(name)
    duck = tmp / "g.duckdb"
    flow_path = _worker_flow(tmp, dsn, duck, publication_tables="public.h")
    flow = json.loads(flow_path.read_text())
    flow["config"] = {"ddl": {"gate": True, "auto_approve": False, "auto_apply": True}}
    flow_path.write_text(json.dumps(flow))
    store = open_store(_worker_env(tmp))
    rng = random.Random(seed)
    cols: list[str] = []
    v_type = ["int"]
    log = open(tmp / "worker.log", "ab")  # noqa: SIM115 - closed below
    worker = None
    held = 0
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE h (id int PRIMARY KEY, v int)")
        worker = _gated_worker(tmp, flow_path, log)
        wait_streaming(dsn, "wallaby_sc")
        with psycopg.connect(dsn) as conn:
            _history(conn, steps, cols, v_type)
        target = current_lsn(dsn)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert worker.poll() is None, (tmp / "worker.log").read_text()[-3000:]
            pending = store.flow_store.list_ddl("pending", "sc")
            if pending:
                event = pending[0]
                held += 1
                time.sleep(0.8)  # epochs go on while it is held
                cp = store.get("sc", "wallaby_sc")
                assert cp is None or cp.confirmed_lsn <= parse_lsn(event.lsn), (event, cp)
                if rng.random() < 0.3:  # the held worker killed: the next one holds at the same record
                    worker.kill()
                    worker.wait(30)
                    worker = _gated_worker(tmp, flow_path, log)
                    time.sleep(1.5)
                    now_pending = store.flow_store.list_ddl("pending", "sc")
                    assert [e.id for e in now_pending] == [event.id], [(e.id, e.position, e.ddl) for e in now_pending]
                store.flow_store.set_ddl_status(event.id, rng.choice(["approved", "applied"]))
                continue
            cp = store.get("sc", "wallaby_sc")
            if cp is not None and cp.confirmed_lsn >= target:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the flow did not catch up: " + (tmp / "worker.log").read_text()[-3000:])
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, (tmp / "worker.log").read_text()[-3000:]
        # a table still to be read again (rewritten) is read by the next run, which stops only once it is
        _run_worker(tmp, dsn, duck, epoch="300ms", publication_tables="public.h")
        events = store.flow_store.list_ddl(flow_id="sc")
        assert all(e.status in ("approved", "applied") for e in events) and len(events) == held
        names = ["id", "v", *cols]
        want = _pg(dsn, f"SELECT {', '.join(names)} FROM h ORDER BY id")
        got = [tuple(r) for r in duckdb.connect(str(duck), read_only=True).execute(
            f"SELECT {', '.join(names)} FROM public.h ORDER BY id").fetchall()]
        assert got == want, (steps, cols, v_type)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(30)
        log.close()
        store.close()
        from tests.conftest import _drop_database

        _drop_database(pg.dsn(), name)


# -- whether the storage read for a shape can be trusted ------------------------------------------------------------

def test_a_column_back_under_its_name_is_told_by_its_number():
    """``readded``: a column of both shapes with another catalog number was dropped and added again; a column gone
    from the catalog when a shape was read (number 0) and a renamed one (a new name, its old number) are not."""
    from wallaby.core.changes import Column, TableSchema

    def shape(names: str, nums: tuple[int, ...] | None) -> TableSchema:
        return TableSchema(1, "public", "h", tuple(Column(n, 23, "int4") for n in names.split()), attnums=nums)

    before = shape("id v d", (1, 2, 3))
    assert shape("id v d", (1, 2, 5)).readded(before) == ["d"]
    assert shape("id v d", (1, 2, 5)).storage_moved(before) and shape("id v d", (1, 2, 5)).rewritten_since(before)
    assert shape("id v d", (1, 2, 3)).readded(before) == []
    assert shape("id v d", (1, 2, 0)).readded(before) == []  # d was gone when this shape was read
    assert shape("id v e", (1, 2, 3)).readded(before) == []  # renamed
    assert shape("id v d", None).readded(before) == [] and before.readded(shape("id v d", None)) == []


def test_a_shape_read_after_later_ddl_counts_its_next_change_as_a_rewrite():
    """The storage is read as it is now: when the catalog is already past the message's shape (a column of it gone or
    retyped, or a plain column added after its last), a rewrite between the shape and the read cannot be ruled out,
    so the next shape change counts as one; columns a publication leaves out (a column list, generated ones) do not
    make the catalog look ahead."""
    from sources.postgres.pgoutput import Relation, RelationColumn
    from sources.postgres.resolver import catalog_moved_on
    from wallaby.core.changes import Column, TableSchema

    rel = Relation(1, "public", "h", "d",
                   [RelationColumn("id", 23, -1, True), RelationColumn("v", 1700, 917510, False)])
    same = [["id", 23, -1, False, False], ["v", 1700, 917510, False, False]]
    assert not catalog_moved_on(rel, same)
    assert catalog_moved_on(rel, [*same, ["r0", 23, -1, False, True]])  # a column added since
    assert not catalog_moved_on(rel, [*same, ["g", 23, -1, True, True]])  # a generated column not published
    assert not catalog_moved_on(rel, [same[0], ["hidden", 25, -1, False, False], same[1]])  # left out by a column list
    assert catalog_moved_on(rel, [same[0], ["v", 20, -1, False, False]])  # retyped since
    assert catalog_moved_on(rel, [same[0]])  # dropped since

    cols = (Column("id", 23, "int4", -1, True),)
    one = TableSchema(1, "public", "h", cols, filenode=7)
    wider = TableSchema(1, "public", "h", (*cols, Column("r0", 23, "int4", -1)), version=2, filenode=7)
    assert not wider.rewritten_since(one)
    assert TableSchema(1, "public", "h", cols, filenode=8).rewritten_since(one)
    late = TableSchema(1, "public", "h", cols, filenode=7, storage_after=True)
    assert not wider.rewritten_since(late)  # read only after a later DDL that added a column with a constant default
    volatile = TableSchema(1, "public", "h", (*cols, Column("r0", 23, "int4", -1, default_in_rows=True)), version=2,
                           filenode=7)
    assert volatile.rewritten_since(late)  # ... or one whose default Postgres wrote into the rows: maybe rewritten
    assert not volatile.rewritten_since(one)  # the same storage, read before: no rewrite
    assert not wider.rewritten_since(TableSchema(1, "public", "h", cols))  # storage unknown (types not resolved)


# -- a rewrite a destination cannot take again -----------------------------------------------------------------------

def test_a_rewrite_holds_a_flow_whose_destination_cannot_read_the_table_again(pgdb, tmp_path):
    """A pgstream destination keeps exactly-once by stream position, so it cannot take a rewritten table read again:
    the rewrite (ALTER ... TYPE ... USING) holds the flow at the DDL gate although the flow has no gate, its event
    pending with the reason and what to do; nothing after it reaches the stream until it is approved; then the flow
    goes on."""
    flow = {"id": "sc", "name": "sc",
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": pgdb, "slot": "wallaby_sc", "publication": "wallaby_sc", "batch_timeout": "50ms",
                "publication_tables": "public.t"}},
            "destinations": [{"name": "st", "type": "pgstream", "options": {"dsn": pgdb, "stream": "t"}}]}
    path = tmp_path / "sc.json"
    path.write_text(json.dumps(flow))
    run = [*WORKER, "-flow-file", str(path)]

    def changes() -> list:
        from wallaby.wire import decode

        rows = _pg(pgdb, "SELECT wire_format, payload FROM wallaby.stream_messages WHERE stream = 't' ORDER BY id")
        return [(r.op, r.after[0] if r.after else None) for fmt, p in rows for r in decode(bytes(p), fmt).records]

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    r = subprocess.run([*run, "-max-empty-reads", "2"], env=_worker_env(tmp_path), capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t VALUES (1, 1), (2, 2)")
        c.execute("ALTER TABLE t ALTER COLUMN v TYPE bigint USING v * 10")
        c.execute("INSERT INTO t VALUES (3, 3)")
    log = tmp_path / "held.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(run, env=_worker_env(tmp_path), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while b"holding at" not in log.read_bytes() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert proc.poll() is None and b"holding at" in log.read_bytes(), log.read_text()[-3000:]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    assert b"public.t was rewritten at the source" in log.read_bytes()
    flows = open_store(_worker_env(tmp_path)).flow_store
    (event,) = flows.list_ddl(flow_id="sc")
    plan = json.loads(event.plan_json)
    assert event.status == "pending" and plan["retyped"] == ["v"] and "-tables public.t" in plan["held"]
    assert changes() == [("insert", 1), ("insert", 2)]  # nothing after the rewrite

    flows.set_ddl_status(event.id, "approved")
    r = subprocess.run([*run, "-max-empty-reads", "2"], env=_worker_env(tmp_path), capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert changes()[2:] == [("ddl", None), ("insert", 3)]  # the DDL event and the insert after it


def _stream_in_steps(pgdb: str, tmp_path: Path, steps: list[list[str]]) -> Path:
    """Table h (id, v) streamed into DuckDB: a worker run after it is made and after each step's statements."""
    duck = tmp_path / "d.duckdb"
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE h (id int PRIMARY KEY, v int)")
    _run_worker(tmp_path, pgdb, duck, epoch="300ms", publication_tables="public.h")
    for statements in steps:
        with psycopg.connect(pgdb, autocommit=True) as c:
            for sql in statements:
                c.execute(sql)
        _run_worker(tmp_path, pgdb, duck, epoch="300ms", publication_tables="public.h")
    return duck


def test_a_column_dropped_and_added_again_alike_with_a_volatile_default_is_read_again(pgdb, tmp_path):
    """DROP COLUMN r0, then ADD COLUMN r0 of the same type with a volatile default: the stream's shape is what it
    was, but Postgres wrote new values into every row (found by CI in a random history). The source sees the
    storage moved with a column dropped since, reads the table again, and DuckDB ends equal; a VACUUM FULL (new
    storage, no column dropped) is no such event."""
    duck = _stream_in_steps(pgdb, tmp_path, [
        ["INSERT INTO h SELECT g, g FROM generate_series(1, 20) g",
         "ALTER TABLE h ADD COLUMN r0 int DEFAULT (random() * 1000)::int", "INSERT INTO h (id, v) VALUES (21, 21)"],
        ["ALTER TABLE h DROP COLUMN r0", "ALTER TABLE h ADD COLUMN r0 int DEFAULT (random() * 1000)::int + 2000",
         "INSERT INTO h (id, v) VALUES (22, 22)"]])
    want = _pg(pgdb, "SELECT id, v, r0 FROM h ORDER BY id")
    assert all(r0 >= 2000 for _, _, r0 in want)
    with duckdb.connect(str(duck), read_only=True) as d:
        assert [tuple(r) for r in d.execute("SELECT id, v, r0 FROM public.h ORDER BY id").fetchall()] == want
    store = open_store(worker_env(tmp_path))
    events = store.flow_store.list_ddl(flow_id="sc")
    assert sum("dropped and added again r0" in e.ddl for e in events) == 1, [e.ddl for e in events]
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("VACUUM FULL h")
        c.execute("INSERT INTO h (id, v) VALUES (23, 23)")
    _run_worker(tmp_path, pgdb, duck, epoch="300ms", publication_tables="public.h")
    after = store.flow_store.list_ddl(flow_id="sc")
    assert len(after) == len(events), [(e.ddl[:60], e.position) for e in after]  # nothing to decide, nothing read again
    with duckdb.connect(str(duck), read_only=True) as d:
        assert d.execute("SELECT count(*) FROM public.h").fetchone()[0] == 23
    store.close()


def test_a_column_dropped_and_added_again_alike_with_no_change_between(pgdb, tmp_path):
    """DROP COLUMN d, then ADD COLUMN d of the same type with another constant default (and e with none), no change
    of the table between: the stream's shape is what it was and the storage did not move, but every row now reads
    the new default (NULL). The shapes kept with the flow carry each column's catalog number: the source sees d and e
    numbered anew, says so in the drift event, reads the table again, and DuckDB ends equal."""
    duck = _stream_in_steps(pgdb, tmp_path, [
        ["INSERT INTO h SELECT g, g FROM generate_series(1, 20) g",
         "ALTER TABLE h ADD COLUMN d text DEFAULT 'old', ADD COLUMN e int",
         "INSERT INTO h (id, v, e) VALUES (21, 21, 7)", "UPDATE h SET d = 'changed', e = 8 WHERE id = 1"],
        ["ALTER TABLE h DROP COLUMN d, DROP COLUMN e",
         "ALTER TABLE h ADD COLUMN d text DEFAULT 'new', ADD COLUMN e int", "INSERT INTO h (id, v) VALUES (22, 22)"]])
    want = _pg(pgdb, "SELECT id, v, d, e FROM h ORDER BY id")
    assert {(d, e) for _, _, d, e in want} == {("new", None)}
    with duckdb.connect(str(duck), read_only=True) as d:
        assert [tuple(r) for r in d.execute("SELECT id, v, d, e FROM public.h ORDER BY id").fetchall()] == want
    store = open_store(worker_env(tmp_path))
    events = store.flow_store.list_ddl(flow_id="sc")
    assert sum("dropped and added again d, e" in e.ddl for e in events) == 1, [e.ddl for e in events]
    store.close()
