"""Stored positions bound to their source: never resume a position of another source, one flow per slot.

Real Postgres: the session server and a second cluster of its own (another system identifier, and less WAL,
so a position of the session server lies ahead of everything the second one holds: resuming it there would
skip every change).
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import duckdb
import psycopg
import pytest

from tests.s3_server import s3_server  # noqa: F401 - fixture
from tests.test_e2e_duckdb import WORKER, duck_table, pg_table, worker_env
from tests.test_sink_s3 import bucket  # noqa: F401 - fixture
from wallaby.control.localpg import LocalPostgres
from wallaby.core.changes import Position, format_lsn, parse_lsn
from wallaby.core.identity import ADOPT, DISCARD, KEEP, PositionMismatchError, SourceCheck, SourceIdentity
from wallaby.state.checkpoints import open_store

TABLE = "CREATE TABLE items (id int PRIMARY KEY, v text)"


@pytest.fixture(scope="module")
def other_pg():
    """A second Postgres cluster (its own system identifier), stopped and removed at the end. Under .cache, not
    pytest's tmp dirs: the server runs as another user, and other pytest sessions tidy their tmp dirs."""
    import os

    server = LocalPostgres(Path(__file__).resolve().parent.parent / ".cache" / f"other-pg-{os.getpid()}")
    try:
        server.start()
        server.wait_ready()
    except Exception as exc:
        pytest.fail(f"second local Postgres could not be started: {exc}", pytrace=False)
    yield server
    log = server.log_file.read_text(errors="replace") if server.log_file.exists() else ""
    server.destroy()
    assert "terminated by signal" not in log and "PANIC" not in log, log[-3000:]  # the server never crashed


@pytest.fixture
def otherdb(other_pg):
    import uuid

    from tests.conftest import _drop_database

    name = "o_" + uuid.uuid4().hex[:12]
    with psycopg.connect(other_pg.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield other_pg.dsn(name)
    _drop_database(other_pg.dsn(), name)


def flow_file(tmp_path: Path, dsn: str, duck: Path, *, flow_id: str = "pos", slot: str = "wallaby_pos",
              name: str = "flow.json", **source) -> Path:
    flow = {"id": flow_id, "name": flow_id,
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": dsn, "slot": slot, "publication": slot, "publication_tables": "public.items",
                "batch_timeout": "500ms", "status_interval": "1s", **source}},
            "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": str(duck)}}]}
    path = tmp_path / name
    path.write_text(json.dumps(flow))
    return path


def run(flow: Path, env: dict, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([WORKER, "-flow-file", str(flow), "-max-empty-reads", "1", *extra], env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in statements:
            c.execute(s)


def insert(dsn: str, start: int, n: int) -> None:
    sql(dsn, f"INSERT INTO items SELECT g, 'v' || g FROM generate_series({start}, {start + n - 1}) g")


def one(dsn: str, query: str, *params):
    with psycopg.connect(dsn) as c:
        return c.execute(query, params).fetchone()


def system_id(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True, replication="database") as c:
        return c.pgconn.exec_(b"IDENTIFY_SYSTEM").get_value(0, 0).decode()


def slots(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as c:
        return [r[0] for r in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database ="
                                        " current_database()")]


def refused(r: subprocess.CompletedProcess) -> str:
    """The one error line of a refused start (no traceback, no panic text)."""
    assert r.returncode not in (0, 2), r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("wallaby-worker:")]
    assert lines, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "panic" not in r.stderr and "StatefulSink" not in r.stderr
    return lines[-1]


def stream_items(dsn: str, flow: Path, env: dict, n: int, start: int = 1) -> None:
    """Create the slot with a first run, insert, stream them with a second run."""
    ok(run(flow, env))
    insert(dsn, start, n)
    ok(run(flow, env))


# -- the checkpoint store ----------------------------------------------------------------------------------

@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_checkpoint_of_another_cluster_is_not_resumed_on_a_new_slot(pgdb, otherdb, tmp_path, store):
    """Scenario 1: a flow id reused against another database; the slot is created there now. The old checkpoint
    (ahead of everything the new cluster holds) is not resumed: every change arrives."""
    env = worker_env(tmp_path)
    if store == "postgres":
        env = {**env, "WALLABY_CHECKPOINT_BACKEND": "postgres", "WALLABY_POSTGRES_DSN": pgdb,
               "WALLABY_RECOVERY_DIR": str(tmp_path / "recovery")}
    sql(pgdb, TABLE)
    sql(otherdb, TABLE)
    sql(pgdb, "SELECT pg_logical_emit_message(false, 'pad', repeat('x', 100000)) FROM generate_series(1, 20)")
    stream_items(pgdb, flow_file(tmp_path, pgdb, tmp_path / "a.duckdb"), env, 50)
    store_cp = open_store({k: v for k, v in env.items() if k.startswith("WALLABY_")}).get("pos", "wallaby_pos")
    assert store_cp is not None and store_cp.source is not None

    flow_b = flow_file(tmp_path, otherdb, tmp_path / "b.duckdb", name="b.json")
    r = ok(run(flow_b, env))
    assert "does not exist and is created now" in r.stderr
    insert(otherdb, 1, 1000)
    assert parse_lsn(one(otherdb, "SELECT pg_current_wal_lsn()::text")[0]) < store_cp.confirmed_lsn  # meaningful
    ok(run(flow_b, env))
    assert duck_table(tmp_path / "b.duckdb") == pg_table(otherdb)
    assert len(pg_table(otherdb)) == 1000
    cp = open_store({k: v for k, v in env.items() if k.startswith("WALLABY_")}).get("pos", "wallaby_pos")
    assert cp.source.system_id == system_id(otherdb)


def test_checkpoint_of_another_cluster_is_refused_on_an_existing_slot(pgdb, otherdb, tmp_path):
    env = worker_env(tmp_path)
    sql(pgdb, TABLE)
    sql(otherdb, TABLE)
    stream_items(pgdb, flow_file(tmp_path, pgdb, tmp_path / "a.duckdb"), env, 10)
    sql(otherdb, "SELECT pg_create_logical_replication_slot('wallaby_pos', 'pgoutput')")
    line = refused(run(flow_file(tmp_path, otherdb, tmp_path / "b.duckdb", name="b.json"), env))
    assert "checkpoint store" in line and "another Postgres cluster" in line
    assert system_id(pgdb) in line and system_id(otherdb) in line
    assert "-reset-position" in line
    assert not (tmp_path / "b.duckdb").exists()
    assert one(otherdb, "SELECT count(*) FROM pg_publication")[0] == 0  # nothing created


def test_checkpoint_without_identity_is_adopted_once(pgdb, tmp_path):
    """Rows written by the previous version carry no source: adopted (logged), then stored with one."""
    env = worker_env(tmp_path)
    sql(pgdb, TABLE)
    flow = flow_file(tmp_path, pgdb, tmp_path / "a.duckdb")
    stream_items(pgdb, flow, env, 10)
    store = open_store({k: v for k, v in env.items() if k.startswith("WALLABY_")})
    store.db.run("UPDATE wallaby_checkpoints SET source = NULL")
    insert(pgdb, 11, 10)
    r = ok(run(flow, env))
    assert "adopting it" in r.stderr
    assert store.get("pos", "wallaby_pos").source is not None
    assert duck_table(tmp_path / "a.duckdb") == pg_table(pgdb)


@pytest.mark.parametrize("ensure_state", [True, False])
def test_slot_advanced_by_someone_else_is_refused(pgdb, tmp_path, ensure_state):
    """The checkpoint is written before the slot is confirmed: a slot confirmed further was read by someone
    else, and what it read never reached this flow."""
    env = worker_env(tmp_path)
    sql(pgdb, TABLE)
    flow = flow_file(tmp_path, pgdb, tmp_path / "a.duckdb", ensure_state=ensure_state)
    stream_items(pgdb, flow, env, 10)
    insert(pgdb, 11, 10)
    sql(pgdb, "SELECT pg_replication_slot_advance('wallaby_pos', pg_current_wal_lsn())")
    line = refused(run(flow, env))
    assert "was confirmed to" in line and "past this flow's checkpoint" in line
    assert len(duck_table(tmp_path / "a.duckdb")) == 10
    r = ok(run(flow, env, "-reset-position"))  # accepted on purpose: starts at the slot's position
    assert "discarding" in r.stderr
    insert(pgdb, 21, 5)
    ok(run(flow, env))
    assert len(duck_table(tmp_path / "a.duckdb")) == 15  # 11..20 were read by someone else


# -- destination high-waters -------------------------------------------------------------------------------

def test_duckdb_high_water_of_another_cluster_is_refused_before_anything_is_created(pgdb, otherdb, tmp_path):
    """Scenario 2: a fresh checkpoint store, a DuckDB file holding another source's high-water."""
    duck = tmp_path / "a.duckdb"
    sql(pgdb, TABLE)
    sql(otherdb, TABLE)
    stream_items(pgdb, flow_file(tmp_path, pgdb, duck), worker_env(tmp_path / "one"), 30)
    env = worker_env(tmp_path / "two")
    (tmp_path / "two").mkdir()
    sql(otherdb, "TRUNCATE items")
    flow_b = flow_file(tmp_path, otherdb, duck, name="b.json")
    line = refused(run(flow_b, env))
    assert str(duck) in line and "destination 'duck'" in line
    assert system_id(pgdb) in line and system_id(otherdb) in line
    assert slots(otherdb) == []  # refused before the slot was created
    assert one(otherdb, "SELECT count(*) FROM pg_publication")[0] == 0

    ok(run(flow_b, env, "-reset-position"))  # the destination's high-water is discarded on purpose
    insert(otherdb, 1000, 500)
    ok(run(flow_b, env))
    rows = duck_table(duck)
    assert [r for r in rows if r[0] >= 1000] == pg_table(otherdb)
    with duckdb.connect(str(duck), read_only=True) as con:
        stored = SourceIdentity.from_json(con.execute("SELECT source FROM main.__wallaby_state").fetchone()[0])
    assert stored.system_id == system_id(otherdb)


def test_two_flows_on_one_slot_are_refused_with_both_ids(pgdb, tmp_path):
    """Scenario 3: a slot feeds one consumer; the second flow naming it is refused, naming both flows."""
    env = worker_env(tmp_path)
    sql(pgdb, TABLE)
    ok(run(flow_file(tmp_path, pgdb, tmp_path / "a.duckdb", flow_id="first"), env))
    line = refused(run(flow_file(tmp_path, pgdb, tmp_path / "b.duckdb", flow_id="second", name="b.json"), env))
    assert "'first'" in line and "'second'" in line and "wallaby_pos" in line
    assert not (tmp_path / "b.duckdb").exists()
    assert one(pgdb, "SELECT count(*) FROM wallaby.source_state WHERE slot_name = 'wallaby_pos'")[0] == 1


def test_same_flow_started_twice_at_once(pgdb, tmp_path):
    """The set-up of a slot is serialized: no raw duplicate-key error from two workers creating the publication."""
    env = worker_env(tmp_path)
    sql(pgdb, TABLE)
    for i in range(4):
        flow = flow_file(tmp_path, pgdb, tmp_path / f"t{i}.duckdb", flow_id=f"twice{i}", slot=f"twice_{i}",
                         name=f"t{i}.json")
        results: list[subprocess.CompletedProcess] = []
        threads = [threading.Thread(target=lambda f=flow, out=results: out.append(run(f, env, timeout=180)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            assert "duplicate key" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
            assert r.returncode == 0, r.stderr[-2000:]


# -- the source-state table --------------------------------------------------------------------------------

def test_go_wallaby_state_table_is_adopted(pgdb, tmp_path):
    env = worker_env(tmp_path)
    sql(pgdb, TABLE, "CREATE SCHEMA wallaby",
        "CREATE TABLE wallaby.source_state (id TEXT PRIMARY KEY, source_name TEXT, slot_name TEXT NOT NULL,"
        " publication_name TEXT NOT NULL, state TEXT NOT NULL, options JSONB NOT NULL DEFAULT '{}'::jsonb,"
        " last_lsn TEXT, last_ack_at TIMESTAMPTZ, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
        " updated_at TIMESTAMPTZ NOT NULL DEFAULT now())")
    flow = flow_file(tmp_path, pgdb, tmp_path / "a.duckdb")
    stream_items(pgdb, flow, env, 5)
    row = one(pgdb, "SELECT id, publication_name, state, slot_id FROM wallaby.source_state WHERE slot_name ="
                    " 'wallaby_pos'")
    assert row[:3] == ("pos", "wallaby_pos", "running") and row[3]
    assert duck_table(tmp_path / "a.duckdb") == pg_table(pgdb)


def test_incompatible_state_table_is_one_clear_error_naming_state_table(pgdb, tmp_path):
    sql(pgdb, TABLE, "CREATE SCHEMA wallaby",
        "CREATE TABLE wallaby.source_state (slot_name text, owner_key int NOT NULL)")
    line = refused(run(flow_file(tmp_path, pgdb, tmp_path / "a.duckdb"), worker_env(tmp_path)))
    assert "state_table wallaby.source_state" in line and "owner_key" in line
    assert slots(pgdb) == []


# -- writers judge their own high-water (every destination that keeps one) ---------------------------------

def _check(system: str = "7000000000000000001", timeline: int = 1, reset: frozenset = frozenset(),
           wal_end: int = 1 << 40) -> SourceCheck:
    return SourceCheck("f", SourceIdentity(system, timeline, "db", "s", "id1"), wal_end, {}, reset)


def _batch(lsn: int):
    """One insert at ``lsn`` into public.t (id int)."""
    from tests.builders import Stream, col, ins, table

    s = Stream(flow_id="f", lsn=lsn)
    t = table("t", [col("id", "int4", key=True)], relid=9001)
    return s.batch(s.rows(t, ins(id=lsn)))


def test_judge_rules():
    cur = SourceIdentity("7", 3, "db", "s", "x")
    check = SourceCheck("f", cur, wal_end=parse_lsn("0/5000000"), switches={1: parse_lsn("0/2000000"),
                                                                            2: parse_lsn("0/4000000")})
    w = "somewhere"
    assert check.judge(cur, parse_lsn("0/4800000"), w) == KEEP
    assert check.judge(None, parse_lsn("0/100"), w) == ADOPT
    assert check.judge(SourceIdentity("7", 3, "db", "other-slot", "y"), 100, w) == KEEP  # LSNs are the cluster's
    assert check.judge(SourceIdentity("7", 1, "db", "s", "x"), parse_lsn("0/2000000"), w) == KEEP  # failover
    assert check.judge(SourceIdentity("7", 2, "db", "s", "x"), parse_lsn("0/3000000"), w) == KEEP
    cases = [(SourceIdentity("8", 3, "db", "s", "x"), 100, "another Postgres cluster"),
             (SourceIdentity("7", 3, "db2", "s", "x"), 100, "database 'db2'"),
             (cur, parse_lsn("0/6000000"), "ahead of the server's current WAL"),
             (None, parse_lsn("0/6000000"), "ahead of the server's current WAL"),
             (SourceIdentity("7", 4, "db", "s", "x"), 100, "after this server's timeline 3"),
             (SourceIdentity("7", 1, "db", "s", "x"), parse_lsn("0/2000001"), "timeline 1 ended at 0/2000000"),
             (SourceIdentity("7", 9, "db", "s", "x"), 1, "after this server's timeline")]
    for stored, lsn, words in cases:
        with pytest.raises(PositionMismatchError) as err:
            check.judge(stored, lsn, w)
        assert words in str(err.value) and "somewhere" in str(err.value) and "-reset-position" in str(err.value)
    reset = SourceCheck("f", cur, 0, {}, frozenset({"*"}))
    assert reset.judge(SourceIdentity("8", 1, "x", "s"), 1 << 50, w) == DISCARD
    one_dest = SourceCheck("f", cur, 0, {}, frozenset({"duck"}))
    assert one_dest.judge(SourceIdentity("8", 1, "x", "s"), 1 << 50, w, reset_as="duck") == DISCARD
    with pytest.raises(PositionMismatchError):
        one_dest.judge(SourceIdentity("8", 1, "x", "s"), 1 << 50, w, reset_as="other")


def test_timeline_history_parsing():
    from sources.postgres.identity import _text, parse_timeline_history

    content = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000060\tat restore point\n"
    assert parse_timeline_history(content) == {1: parse_lsn("0/3000158"), 2: parse_lsn("0/5000060")}
    assert parse_timeline_history(_text("\\x" + content.encode().hex())) == parse_timeline_history(content)
    assert format_lsn(parse_timeline_history("# comment\n3\t1/0\tx")[3]) == "1/0"


def test_writers_store_judge_and_reset_their_high_water(tmp_path, pgdb, bucket, s3_server):  # noqa: F811
    """DuckDB, S3, pgstream and the spool: the high-water is stored with the source; another source is refused
    by name; a reset of that destination discards it."""
    from sinks.duckdb.writer import DuckDBWriter
    from sinks.pgstream.options import PGStreamDestinationOptions
    from sinks.pgstream.writer import PGStreamWriter
    from sinks.s3.writer import S3Writer
    from sinks.spool import Spool
    from tests.test_sink_s3 import options as s3_options

    a, b = _check("111"), _check("222")
    makers = {
        "duckdb": lambda src: DuckDBWriter("d", "f", {"dsn": str(tmp_path / "w.duckdb")}, source=src),
        "s3": lambda src: S3Writer("d", "f", s3_options(s3_server, bucket), source=src),
        "pgstream": lambda src: PGStreamWriter("d", "f", PGStreamDestinationOptions.model_validate(
            {"dsn": pgdb, "stream": "s1"}), src),
    }
    for kind, make in makers.items():
        w = make(a)
        w.write(_batch(1000))
        w.commit()
        w.close()
        with pytest.raises(PositionMismatchError) as err:
            make(b)
        assert "111" in str(err.value) and "222" in str(err.value), kind
        w = make(SourceCheck("f", b.current, b.wal_end, {}, frozenset({"d"})))
        w.write(_batch(10))  # below the discarded high-water: taken
        w.commit()
        w.close()
        w = make(b)  # the new high-water is of source b
        w.close()

    spool_dir = tmp_path / "spool"
    s = Spool(spool_dir, "f", a, "d")
    s.append(_batch(1000))
    s.sync()
    s.close()
    with pytest.raises(PositionMismatchError):
        Spool(spool_dir, "f", b, "d")
    s = Spool(spool_dir, "f", SourceCheck("f", b.current, b.wal_end, {}, frozenset({"*"})), "d")
    assert s.high == Position(0, 0) and s.pending_bytes() == 0
    s.close()


def test_recovery_store_errors_name_the_store_and_say_transient_or_not(tmp_path):
    import errno

    from dataflows.positions import open_recovery, recovery_store_error
    from wallaby.core.errors import LocalStoreError, exit_status

    full = recovery_store_error(tmp_path, OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, LocalStoreError) and str(tmp_path) in str(full) and "nothing is lost" in str(full)
    assert exit_status(full) == 75
    (tmp_path / "file").write_text("x")
    with pytest.raises(LocalStoreError) as err:
        open_recovery(tmp_path / "file" / "rec", _check(), keep=True)  # a directory under a file
    assert str(tmp_path / "file" / "rec") in str(err.value) and exit_status(err.value) == 1


def test_a_recovery_store_behind_the_checkpoint_store_never_moves_the_store_back(pgdb, tmp_path):
    """The recovery store can resume an epoch before the last one the checkpoint store (and the slot) confirmed
    (a kill after the epoch was confirmed, before bytewax recorded it as the one to resume from). The replay from
    there is skipped by every destination, but the source must not confirm those older positions again: that moved
    the checkpoint store back below the slot, and the next start refused the flow (fresh-clone CI, the Snowflake
    kill -9 test). A partition resumed from an older recovery state starts from the store's confirmed LSN."""
    from tests.flows import run_worker, source_part, worker_flow
    from tests.flows import worker_env as env_of
    from wallaby.core.spec import load_flow

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    flow = worker_flow(tmp_path, pgdb, "behind", "public.t", {"dsn": str(tmp_path / "d.duckdb")}, dest_type="duckdb")
    run_worker(tmp_path, flow)
    store = open_store(env_of(tmp_path))
    (old,) = store.list("behind")
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 50) g")
    run_worker(tmp_path, flow)
    (ahead,) = store.list("behind")
    assert ahead.confirmed_lsn > old.confirmed_lsn
    older = {"position": old.position.to_state(), "covered": old.confirmed_lsn}  # what the recovery store resumes
    part = source_part(load_flow(flow), older, checkpoints=store)
    try:
        assert part.covered == old.confirmed_lsn  # the replay starts where the recovery store says
        assert part.confirmed == ahead.confirmed_lsn  # but nothing below the store is confirmed again
        part._confirm(old.confirmed_lsn + 1)
        assert store.list("behind")[0].confirmed_lsn == ahead.confirmed_lsn
    finally:
        part.close()
        store.close()
