"""A run-once worker (``-max-empty-reads``) stops without waiting for an epoch to end.

Its epoch here is far longer than the test (``WALLABY_EPOCH_INTERVAL=600s``): a worker that waited for one would
time out. One that hands nothing on has no epoch to make durable; what the stream covered (WAL of tables outside
the publication) is still confirmed, to the checkpoint store first and then the slot. One that hands changes on ends
its input (sources.postgres.source.confirms_after_run): bytewax closes the last epoch then, every destination commits
it before the dataflow completes, and it is confirmed after that; after an error, nothing more is.
"""

from __future__ import annotations

import duckdb
import psycopg
import pytest

from sources.postgres import source
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


def test_a_run_that_hands_changes_on_ends_with_its_input_and_confirms_its_last_epoch_after_it(tmp_path, pgdb):
    """It does not wait for its last epoch to end on bytewax's clock: ending its input closes that epoch, every
    destination commits it before the dataflow completes, and then it is confirmed (store first, then the slot).
    With 600 s epochs the run could end in time only by its input ending (the timeout is what fails otherwise)."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE ev (id bigint PRIMARY KEY, v int)")
    path = tmp_path / "end.duckdb"
    flow = worker_flow(tmp_path, pgdb, "end", "public.ev", {"dsn": str(path)}, dest_type="duckdb")
    run_worker(tmp_path, flow)  # the slot and publication
    with psycopg.connect(pgdb, autocommit=True) as c:
        for first in (1, 1001, 2001):
            c.execute("INSERT INTO ev SELECT g, g %% 5 FROM generate_series(%s::bigint, %s::bigint) g",
                      (first, first + 999))
    written = _lsn(pgdb)
    r = run_worker(tmp_path, flow, args=("-max-empty-reads", "1"), epoch=LONG_EPOCH, timeout=120)
    assert "stopping after the final checkpoint" in r.stderr
    with duckdb.connect(str(path), read_only=True) as d:
        assert d.execute("SELECT count(*), sum(v) FROM public.ev").fetchone() == (3000, 6000)
    confirmed = slot_confirmed(pgdb, "wallaby_end")
    assert confirmed >= written
    stored = SQLiteCheckpoints(tmp_path / "c.db").get("end", "wallaby_end")
    assert stored is not None and stored.confirmed_lsn >= confirmed  # the store is never behind the slot


class _Ended:
    """A partition that ended its input before its last epoch was confirmed, as confirms_after_run holds it."""

    def __init__(self, fails: bool = False):
        self.finished: list[bool] = []
        self.fails = fails

    def finish(self, confirm: bool) -> None:
        self.finished.append(confirm)
        if self.fails:
            raise RuntimeError("the slot went away")


def test_after_a_failed_run_the_partitions_that_ended_early_close_and_confirm_nothing():
    parts = [_Ended(), _Ended()]
    with pytest.raises(ValueError, match="a destination failed"), source.confirms_after_run():
        assert source._AFTER_RUN is not None
        source._AFTER_RUN.extend(parts)
        raise ValueError("a destination failed")
    assert [p.finished for p in parts] == [[False], [False]]
    assert source._AFTER_RUN is None


def test_after_a_run_every_partition_that_ended_early_is_confirmed_and_the_first_failure_raised():
    parts = [_Ended(fails=True), _Ended()]
    with pytest.raises(RuntimeError, match="the slot went away"), source.confirms_after_run():
        assert source._AFTER_RUN is not None
        source._AFTER_RUN.extend(parts)
    assert [p.finished for p in parts] == [[True], [True]]
