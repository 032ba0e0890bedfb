"""A run-once worker (``-max-empty-reads``) that hands nothing on stops without waiting for an epoch to end.

Its epoch here is far longer than the test (``WALLABY_EPOCH_INTERVAL=600s``): a worker that waited for one would
time out. Nothing it read holds a change of the flow, so there is no epoch to make durable; what the stream covered
(WAL of tables outside the publication) is still confirmed, to the checkpoint store first and then the slot. A run
that did hand a change on keeps the rule of every run: the slot moves only after the epoch holding it is durable.
"""

from __future__ import annotations

import duckdb
import psycopg

from tests.flows import pg_rows, run_worker, slot_confirmed, worker_flow
from wallaby.core.changes import parse_lsn
from wallaby.state.checkpoints import SQLiteCheckpoints

LONG_EPOCH = "600s"  # no epoch ends within the test's timeouts


def _lsn(dsn: str) -> int:
    return parse_lsn(pg_rows(dsn, "SELECT pg_current_wal_lsn()::text")[0][0])


def test_a_run_with_nothing_to_read_stops_at_once_and_confirms_what_it_covered(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE ev (id bigint PRIMARY KEY, v int)")
        c.execute("CREATE TABLE other (id bigint)")  # outside the publication
        c.execute("INSERT INTO ev VALUES (1, 1)")
    path = tmp_path / "once.duckdb"
    flow = worker_flow(tmp_path, pgdb, "once", "public.ev", {"dsn": str(path)}, dest_type="duckdb")
    run_worker(tmp_path, flow)  # the slot and publication; ev's row is not in the stream (written before the slot)

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO ev VALUES (2, 2)")
    # a change of the flow: the run waits for its epoch (the slot moves only once DuckDB holds it)
    run_worker(tmp_path, flow, args=("-max-empty-reads", "1"), epoch="1s", timeout=120)
    with duckdb.connect(str(path), read_only=True) as d:
        assert d.execute("SELECT id, v FROM public.ev ORDER BY id").fetchall() == [(2, 2)]
    before = slot_confirmed(pgdb, "wallaby_once")

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO other SELECT g FROM generate_series(1, 1000) g")  # WAL, no change of the flow
    written = _lsn(pgdb)
    assert written > before
    # nothing to hand on: it stops long before its 600 s epoch would end (the timeout is what fails otherwise)
    r = run_worker(tmp_path, flow, args=("-max-empty-reads", "1"), epoch=LONG_EPOCH, timeout=120)
    assert "empty reads, stopping" in r.stderr
    confirmed = slot_confirmed(pgdb, "wallaby_once")
    assert confirmed >= written  # the WAL it covered is let go of
    stored = SQLiteCheckpoints(tmp_path / "c.db").get("once", "wallaby_once")
    assert stored is not None and stored.confirmed_lsn >= confirmed  # the store is never behind the slot
    with duckdb.connect(str(path), read_only=True) as d:
        assert d.execute("SELECT id, v FROM public.ev ORDER BY id").fetchall() == [(2, 2)]


def test_a_run_that_hands_a_change_on_waits_for_its_epoch(tmp_path, pgdb):
    """With a change to hand on, the run does not stop at once: here it is stopped by the test's timeout first, and
    the slot has not moved past the change (its epoch never ended)."""
    import subprocess

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE ev (id bigint PRIMARY KEY, v int)")
    path = tmp_path / "wait.duckdb"
    flow = worker_flow(tmp_path, pgdb, "wait", "public.ev", {"dsn": str(path)}, dest_type="duckdb")
    run_worker(tmp_path, flow)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO ev VALUES (1, 1)")
    written = _lsn(pgdb)
    try:
        run_worker(tmp_path, flow, args=("-max-empty-reads", "1"), epoch=LONG_EPOCH, timeout=15)
        raise AssertionError("the run stopped before the epoch holding its change ended")
    except subprocess.TimeoutExpired:
        pass
    assert slot_confirmed(pgdb, "wallaby_wait") < written
    run_worker(tmp_path, flow, args=("-max-empty-reads", "1"), epoch="300ms")
    assert slot_confirmed(pgdb, "wallaby_wait") >= written
    with duckdb.connect(str(path), read_only=True) as d:
        assert d.execute("SELECT id, v FROM public.ev").fetchall() == [(1, 1)]
