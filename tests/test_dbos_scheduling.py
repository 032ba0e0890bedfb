"""DBOS scheduling (USAGE.md "DBOS Scheduling"): a real `wallaby` API server with real DBOS (its system database in
the flow store's Postgres database, a fresh one per test), real workers, Postgres and DuckDB."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime

import duckdb
import psycopg
import pytest

from tests import SERVER
from tests.apiserver import ROOT, current_lsn, duck_rows, flow_file, make_server, pg_rows, server_env, wait_streaming
from wallaby.control import scheduling
from wallaby.core.settings import SettingsError
from wallaby.v1 import types_pb2

RUNS = "SELECT workflow_uuid, status, recovery_attempts FROM dbos.workflow_status WHERE workflow_uuid LIKE %s"


def _setup_source(dsn: str, *tables: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in tables:
            c.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, note text)")


def _write(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql)


def _runs(store: str, flow_id: str) -> list[tuple]:
    with psycopg.connect(store, autocommit=True) as c:
        return c.execute(RUNS + " ORDER BY workflow_uuid", (f"{scheduling.RUN_PREFIX}{flow_id}:%",)).fetchall()


def _unfinished(store: str) -> list[tuple]:
    """Workflows enqueued or running (status ENQUEUED or PENDING)."""
    with psycopg.connect(store, autocommit=True) as c:
        return c.execute("SELECT workflow_uuid, name, status FROM dbos.workflow_status"
                         " WHERE status IN ('ENQUEUED', 'PENDING')").fetchall()


def _warnings(log: str) -> str:
    """The log's first 20 warnings and errors (a flow that failed early is out of the log's tail)."""
    lines = [ln for ln in log.splitlines() if '"level":"warn' in ln or '"level":"error' in ln]
    return "\n".join(lines[:20]) + "\n...\n"


def _wait(what: str, check, timeout: float = 90, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout}s\n{log()}")


def _duck_equal(duck, dsn: str, table: str = "orders") -> bool:
    try:
        return duck_rows(duck, table) == pg_rows(dsn, table)
    except (duckdb.Error, OSError):  # not created yet, or a run's worker holds the file
        return False


def _dbos_env(**extra: str) -> dict[str, str]:
    return {"WALLABY_DBOS_ENABLED": "true", "WALLABY_DBOS_APP": "wallaby-test", "WALLABY_DBOS_QUEUE": "runs",
            **extra}


def test_bad_values_refused_by_name(tmp_path):
    cases = {
        "WALLABY_DBOS_SCHEDULE": "*/10 * * * *",  # 5 fields: no seconds
        "WALLABY_DBOS_MAX_RETRIES": "five",
        "WALLABY_DBOS_ENABLED": "maybe",
        "WALLABY_DBOS_QUEUE": "has space",
        "WALLABY_DBOS_SCHEDUEL": "*/10 * * * * *",  # a typo is not ignored
    }
    for var, bad in cases.items():
        env = {"WALLABY_DBOS_ENABLED": "true", var: bad}
        with pytest.raises(SettingsError) as err:
            scheduling.load(env)
        assert str(err.value).startswith(f"{var}: ") and len(err.value.problems) == 1, str(err.value)
    assert "6" in str(_problem({"WALLABY_DBOS_ENABLED": "true", "WALLABY_DBOS_SCHEDULE": "* * * * *"}))
    assert "WALLABY_DBOS_SCHEDULE" in str(_problem({"WALLABY_DBOS_ENABLED": "true",
                                                    "WALLABY_DBOS_SCHEDULE": "99 * * * * *"}))
    # a setting without WALLABY_DBOS_ENABLED=true would be ignored: refused instead
    assert str(_problem({"WALLABY_DBOS_SCHEDULE": "*/10 * * * * *"})).startswith("WALLABY_DBOS_SCHEDULE: set, but")
    # defaults, and every variable read
    assert scheduling.load({}) == scheduling.DBOSSettings()
    got = scheduling.load({"WALLABY_DBOS_ENABLED": "true", "WALLABY_DBOS_APP": "a", "WALLABY_DBOS_QUEUE": "q",
                           "WALLABY_DBOS_SCHEDULE": "*/10  * * * * *", "WALLABY_DBOS_MAX_RETRIES": "5",
                           "WALLABY_DBOS_EXECUTOR_ID": "api-0"})
    assert got == scheduling.DBOSSettings(True, "a", "q", "*/10 * * * * *", 5, "api-0")

    # the API server refuses to start, naming the variable (exit 2, one line)
    env = server_env(tmp_path, **_dbos_env(WALLABY_DBOS_SCHEDULE="*/2 * * * *"))
    out = subprocess.run([*SERVER], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "WALLABY_DBOS_SCHEDULE: '*/2 * * * *' has 5 field(s), not 6" in out.stderr
    env = server_env(tmp_path, **_dbos_env(WALLABY_DBOS_MAX_RETRIES="3.5"))
    out = subprocess.run([*SERVER], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "WALLABY_DBOS_MAX_RETRIES: '3.5' is not a whole number" in out.stderr, out.stderr


def test_system_database_url(tmp_path):
    """DBOS's system database is the flow store's: its Postgres DSN (a URL or key=value), or dbos.sqlite beside
    the SQLite store."""
    from types import SimpleNamespace

    pg_store = SimpleNamespace(dialect="postgres")
    url = "postgres://u:p@db:5432/wallaby?sslmode=require"
    assert scheduling.system_database_url(pg_store, {"WALLABY_POSTGRES_DSN": url}) == url
    assert scheduling.system_database_url(pg_store, {"WALLABY_POSTGRES_DSN": "postgres://x/other",
                                                     "WALLABY_CHECKPOINT_DSN": url}) == url
    got = scheduling.system_database_url(pg_store, {"WALLABY_POSTGRES_DSN": "host=db port=5433 dbname=w user=u"
                                                                            " password=s3cret sslmode=require"})
    assert got == "postgresql+psycopg://u:s3cret@db:5433/w?sslmode=require"
    sqlite_store = SimpleNamespace(dialect="sqlite", path=str(tmp_path / "store.db"))
    assert scheduling.system_database_url(sqlite_store, {}) == f"sqlite:///{tmp_path.resolve() / 'dbos.sqlite'}"


def _problem(env: dict[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as err:
        scheduling.load(env)
    return err.value


@pytest.fixture
def store(pg):
    """The flow store (and DBOS's system database): a Postgres database of its own."""
    import uuid

    name = "dbos_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield pg.dsn(name)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_schedule_runs_each_running_flow_until_caught_up(tmp_path, pgdb, store):
    """Every 2 s a tick enqueues one run per running flow; the runs catch the flows up; a paused flow gets none;
    a tick enqueued twice for one time adds no run."""
    _setup_source(pgdb, "orders", "items")
    duck_a, duck_b, duck_c = tmp_path / "a.duckdb", tmp_path / "b.duckdb", tmp_path / "c.duckdb"
    server = make_server(tmp_path, store, **_dbos_env(WALLABY_DBOS_SCHEDULE="*/2 * * * * *")).start()
    try:
        for flow_id, duck, table in (("fa", duck_a, "orders"), ("fb", duck_b, "items"), ("fc", duck_c, "orders")):
            server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, flow_id, duck=duck,
                                                                  tables=f"public.{table}")))
        server.admin("flow", "start", "-flow-id", "fa")
        server.admin("flow", "start", "-flow-id", "fb")
        # fc stays created: never run by the schedule. The slots are made by the first runs: rows written before
        # are not captured
        _wait("the first runs", lambda: _slot_exists(pgdb, "fa_slot") and _slot_exists(pgdb, "fb_slot"),
              log=lambda: _warnings(server.log_path.read_text()) + server.log_path.read_text()[-3000:])
        _write(pgdb, "INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 200) g")
        _write(pgdb, "INSERT INTO items SELECT g, 'i' || g FROM generate_series(1, 50) g")
        _wait("a run of fa", lambda: any(s == "SUCCESS" for _, s, _ in _runs(store, "fa")))
        _write(pgdb, "UPDATE orders SET note = 'u' WHERE id <= 20; DELETE FROM orders WHERE id > 190;"
                     " INSERT INTO orders VALUES (1000, 'late')")
        _write(pgdb, "INSERT INTO items VALUES (1000, 'late')")
        lsn = current_lsn(pgdb)
        server.wait_checkpoint("fa", lsn, timeout=120)
        server.wait_checkpoint("fb", lsn, timeout=120)
        _wait("fa caught up in DuckDB", lambda: (1000, "late") in _rows(duck_a, "orders"))
        _wait("fb caught up in DuckDB", lambda: (1000, "late") in _rows(duck_b, "items"))
        _wait("fa equal", lambda: _duck_equal(duck_a, pgdb, "orders"))
        _wait("fb equal", lambda: _duck_equal(duck_b, pgdb, "items"))
        assert not _runs(store, "fc") and not duck_c.exists()

        # No streaming worker: the flows stay running between runs, fed by the schedule
        assert server.get("fa").state == server.get("fb").state == types_pb2.FLOW_STATE_RUNNING
        runs = _runs(store, "fa")
        assert len(runs) >= 2 and all(s in ("SUCCESS", "PENDING", "ENQUEUED") for _, s, _ in runs), runs

        # paused: no run launches a worker for it any more
        server.admin("flow", "pause", "-flow-id", "fa")
        _wait("fa's last run ended", lambda: all(s != "PENDING" for _, s, _ in _runs(store, "fa")))
        _write(pgdb, "INSERT INTO orders VALUES (2000, 'while paused')")
        time.sleep(5)  # two ticks or more
        assert (2000, "while paused") not in _rows(duck_a, "orders")
        server.admin("flow", "resume", "-flow-id", "fa")
        _wait("fa caught up after resume", lambda: _duck_equal(duck_a, pgdb, "orders"))
    finally:
        server.stop()
    assert _duck_equal(duck_a, pgdb, "orders") and _duck_equal(duck_b, pgdb, "items")

    # A tick fired twice for one time (two tick workflows at once) adds one run per flow. Under a schedule that
    # does not fire now (once a year), so no run of the schedule's is still going (a flow whose previous run is
    # enqueued or running gets none for a tick: its deduplication id is the flow's)
    server = make_server(tmp_path, store, **_dbos_env(WALLABY_DBOS_SCHEDULE="0 0 0 1 1 *")).start()
    try:
        # the old schedule's last tick, left unfinished by the stop, is recovered at launch and adds its runs
        _wait("the ticks and runs of the old schedule ended", lambda: not _unfinished(store),
              log=lambda: str(_unfinished(store)))
        from dbos import DBOSClient

        client = DBOSClient(system_database_url=store, application_name="wallaby-test")
        try:
            tick = datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)  # the schedule's, not due during the test
            handles = [client.enqueue({"workflow_name": "wallaby.scheduled_tick", "queue_name": "runs",
                                       "workflow_id": f"test-tick-{n}"}, tick, None) for n in range(2)]
            enqueued = [h.get_result() for h in handles]
        finally:
            client.destroy()
        for flow_id in ("fa", "fb"):
            same = [w for w, _, _ in _runs(store, flow_id) if w.endswith(tick.isoformat())]
            assert len(same) == 1, (flow_id, same, enqueued, _runs(store, flow_id)[-3:], server.get(flow_id).state,
                                    _warnings(server.log_path.read_text()))
        assert not _runs(store, "fc")
    finally:
        server.stop()


def test_sqlite_standalone_then_streaming_without_a_schedule(tmp_path, pgdb):
    """A SQLite flow store: DBOS in dbos.sqlite beside it, the schedule's runs catch the flow up. Restarted without
    WALLABY_DBOS_SCHEDULE: the schedule is gone and the running flow streams again (a worker of its own)."""
    import sqlite3

    _setup_source(pgdb, "orders")
    duck = tmp_path / "a.duckdb"
    server = make_server(tmp_path, None, **_dbos_env(WALLABY_DBOS_SCHEDULE="*/2 * * * * *")).start()
    try:
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, "orders", duck=duck)))
        server.admin("flow", "start", "-flow-id", "orders")
        _wait("the first run", lambda: _slot_exists(pgdb, "orders_slot"), log=lambda: server.log_path.read_text())
        _write(pgdb, "INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 100) g")
        server.wait_checkpoint("orders", current_lsn(pgdb), timeout=120)
        _wait("DuckDB equals the source", lambda: _duck_equal(duck, pgdb))

        # a permanent failure (its database does not exist: exit 1) fails the flow, as a streaming worker's does,
        # and is not retried
        missing = pgdb.rsplit("/", 1)[0] + "/no_such_db"
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, missing, "broken", duck=tmp_path / "b.db")))
        server.admin("flow", "start", "-flow-id", "broken")
        _wait("broken FAILED", lambda: server.get("broken").state == types_pb2.FLOW_STATE_FAILED,
              log=lambda: server.log_path.read_text()[-4000:])
        assert "no_such_db" in server.get("broken").state_reason
        server.stop()
        system_db = tmp_path / "dbos.sqlite"
        with sqlite3.connect(system_db) as c:
            runs = c.execute("SELECT status FROM workflow_status WHERE workflow_uuid LIKE 'wallaby-run:orders:%'"
                             ).fetchall()
            broken = c.execute("SELECT status FROM workflow_status WHERE workflow_uuid LIKE 'wallaby-run:broken:%'"
                               ).fetchall()
        # every run that started ended SUCCESS; a tick just before the stop may have left one enqueued
        assert ("SUCCESS",) in runs and all(s in ("SUCCESS", "ENQUEUED") for (s,) in runs), runs
        assert broken == [("ERROR",)], broken
        assert server.log_path.read_text().count("flow broken: DBOS run for the tick") == 2  # launched, exited 1

        server.env.pop("WALLABY_DBOS_SCHEDULE")
        server.start()
        wait_streaming(pgdb, "orders_slot")
        _write(pgdb, "INSERT INTO orders VALUES (1000, 'streamed')")
        server.wait_checkpoint("orders", current_lsn(pgdb))
        # DBOS starts after the flows the server recovers (their workers may catch up first, on a busy machine)
        _wait("DBOS started with no schedule", lambda: "no schedule" in server.log_path.read_text(),
              log=lambda: server.log_path.read_text()[-4000:])
        server.admin("flow", "pause", "-flow-id", "orders")
        assert _duck_equal(duck, pgdb)
        with sqlite3.connect(system_db) as c:
            assert c.execute("SELECT count(*) FROM workflow_schedules").fetchone() == (0,)
    finally:
        server.stop()


def _rows(duck, table: str) -> list[tuple]:
    deadline = time.monotonic() + 60
    while True:
        try:
            return duck_rows(duck, table)
        except (duckdb.Error, OSError):  # a run's worker holds the file
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_kill_9_during_a_run_recovers_it_once(tmp_path, pgdb, store):
    """kill -9 of the API server while a run's worker runs: the restarted server (same executor id) recovers the
    run from DBOS, its worker runs to completion, and the run ends SUCCESS, once."""
    _setup_source(pgdb, "orders")
    duck = tmp_path / "a.duckdb"
    env = _dbos_env(WALLABY_DBOS_SCHEDULE="*/2 * * * * *", WALLABY_DBOS_MAX_RETRIES="6",
                    WALLABY_DBOS_EXECUTOR_ID="api-0", WALLABY_RUN_ONCE_EMPTY_READS="30")
    server = make_server(tmp_path, store, **env).start()
    try:
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, "orders", duck=duck)))
        server.admin("flow", "start", "-flow-id", "orders")
        # a run is running: its worker reads the slot (the first run makes it); the rows come in while it reads
        _wait("a run's worker", lambda: _slot_active(pgdb, "orders_slot"), timeout=120,
              log=lambda: server.log_path.read_text()[-4000:])
        _write(pgdb, "INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 500) g")
        run = _wait("the run", lambda: [r for r in _runs(store, "orders") if r[1] == "PENDING"])
        assert _slot_active(pgdb, "orders_slot")
        gen = server.get("orders").generation
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        server._channel = None
        assert [r for r in _runs(store, "orders") if r[0] == run[0][0]] == run  # still PENDING: nobody finished it

        _write(pgdb, "UPDATE orders SET note = 'after kill' WHERE id <= 10")
        server.start()
        killed = run[0][0]
        done = _wait("the recovered run", lambda: [r for r in _runs(store, "orders") if r[0] == killed
                                                   and r[1] == "SUCCESS"],
                     timeout=120, log=lambda: server.log_path.read_text()[-6000:])
        (workflow_id, _, attempts), = done
        assert attempts >= 2, done  # started once, recovered once
        assert server.get("orders").generation > gen  # the restart's worker ran under a newer generation
        with psycopg.connect(store, autocommit=True) as c:
            steps = c.execute("SELECT function_name, error IS NULL FROM dbos.operation_outputs"
                              " WHERE workflow_uuid = %s", (workflow_id,)).fetchall()
        assert steps == [("run_worker", True)], steps  # one step, recorded once, that succeeded
        _wait("DuckDB equals the source", lambda: _duck_equal(duck, pgdb))
    finally:
        server.stop()
        _kill_workers(tmp_path)
    assert _duck_equal(duck, pgdb)


def _slot_exists(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() is not None


def _slot_active(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() == (True,)


def _kill_workers(tmp_path) -> None:
    """Workers orphaned by the kill -9 (their own sessions) that are still alive: ended, not left behind."""
    out = subprocess.run(["pgrep", "-f", "wallaby.control.worker"], capture_output=True, text=True)
    for pid in out.stdout.split():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if str(tmp_path).encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def _worker_cmdline(flow_id: str) -> str:
    out = subprocess.run(["pgrep", "-af", f"wallaby.control.worker -flow-id {flow_id} "], capture_output=True,
                         text=True)
    return out.stdout.strip()


def test_max_empty_reads_of_the_runs(tmp_path, pgdb):
    """WALLABY_DBOS_MAX_EMPTY_READS (the Go build's): each scheduled run's worker stops after that many empty reads
    (here so many that it is still running when looked at); refused when not a whole number of at least 1."""
    assert scheduling.load(_dbos_env(WALLABY_DBOS_MAX_EMPTY_READS="4")).max_empty_reads == 4
    assert scheduling.load(_dbos_env()).max_empty_reads is None  # WALLABY_RUN_ONCE_EMPTY_READS
    for bad, says in (("0", "must be at least 1"), ("many", "is not a whole number")):
        with pytest.raises(SettingsError) as err:
            scheduling.load(_dbos_env(WALLABY_DBOS_MAX_EMPTY_READS=bad))
        assert str(err.value).startswith("WALLABY_DBOS_MAX_EMPTY_READS: ") and says in str(err.value)
    assert str(_problem({"WALLABY_DBOS_MAX_EMPTY_READS": "3"})).startswith("WALLABY_DBOS_MAX_EMPTY_READS: set, but")

    _setup_source(pgdb, "orders")
    flow_id = f"dbosme{os.getpid()}"
    server = make_server(tmp_path, None, **_dbos_env(WALLABY_DBOS_SCHEDULE="*/2 * * * * *",
                                                     WALLABY_DBOS_MAX_EMPTY_READS="100000")).start()
    try:
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, flow_id, duck=tmp_path / "m.duckdb")))
        server.admin("flow", "start", "-flow-id", flow_id)
        cmdline = _wait("a run's worker", lambda: _worker_cmdline(flow_id), log=lambda: server.log_path.read_text())
        assert "-max-empty-reads 100000" in cmdline, cmdline
        server.admin("flow", "pause", "-flow-id", flow_id)
        _wait("the run's worker stopped", lambda: not _worker_cmdline(flow_id))
    finally:
        server.stop()
