"""A quiet stream shows in DuckDB and pgstream within a batch, not an epoch, and exactly once.

When the source hands over a batch with nothing more waiting in the stream (``ChangeBatch.caught_up``), DuckDB and
pgstream commit what they hold with its high-water (``Writer.flush``) instead of waiting for the epoch's end. The
epoch here is far longer than the test (``WALLABY_EPOCH_INTERVAL=600s``): rows seen by a reader while the slot has
not confirmed their commit were flushed, not committed by an epoch. Then the worker is killed -9 before any epoch
ended, so its restart reads every change again from the slot: the destination must skip what it flushed (its
high-water) and hold each change once. The DuckDB table has no key (a multiset: a change applied twice shows).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import duckdb
import psycopg
import pytest

from tests import WORKER
from tests.flows import ROOT, pg_rows, run_worker, slot_confirmed, worker_env, worker_flow
from wallaby.core.changes import parse_lsn
from wallaby.wire import decode

LONG_EPOCH = "600s"  # no epoch ends while the test looks


def _lsn(dsn: str) -> int:
    return parse_lsn(pg_rows(dsn, "SELECT pg_current_wal_lsn()::text")[0][0])


def _insert(dsn: str, first: int, n: int) -> int:
    """``n`` rows ``first..first+n-1`` in one transaction; the WAL position after its commit."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO ev SELECT g, g %% 7 FROM generate_series(%s::bigint, %s::bigint) g",
                  (first, first + n - 1))
    return _lsn(dsn)


def _duckdb_rows(path: Path) -> list[tuple] | None:
    """The rows of public.ev, read only (None while the writer holds the file or the table is not there yet)."""
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException:
        return None
    try:
        return sorted(con.execute("SELECT id, v FROM public.ev").fetchall())
    except duckdb.CatalogException:
        return None
    finally:
        con.close()


def _stream_rows(dsn: str) -> list[tuple] | None:
    """(position_lsn, position_ordinal) of every message in the stream (None before the stream exists)."""
    if pg_rows(dsn, "SELECT to_regclass('wallaby.stream_messages')")[0][0] is None:
        return None
    return pg_rows(dsn, "SELECT position_lsn, position_ordinal FROM wallaby.stream_messages ORDER BY id")


def _stream_ids(dsn: str) -> list[int]:
    """The ids the stream's messages insert, in message order."""
    ids = []
    for data, fmt in pg_rows(dsn, "SELECT payload, wire_format FROM wallaby.stream_messages ORDER BY id"):
        seg = decode(bytes(data), fmt)
        at = [c.name for c in seg.columns].index("id")
        ids += [r.after[at] for r in seg.records if r.after is not None]
    return ids


def _start(tmp: Path, flow: Path) -> tuple[subprocess.Popen, Path]:
    log_path = tmp / "worker.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child holds it; closed with the test's tmp
    worker = subprocess.Popen([*WORKER, "-flow-file", str(flow)], env=worker_env(tmp, LONG_EPOCH), cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while "streaming from" not in log_path.read_text():
        assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.1)
    return worker, log_path


@pytest.mark.parametrize("dest", ["duckdb", "pgstream"])
def test_a_quiet_stream_shows_before_the_epoch_ends_and_a_kill_duplicates_nothing(tmp_path, pgdb, dest):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE ev (id bigint, v int)")
        c.execute("ALTER TABLE ev REPLICA IDENTITY FULL")
    path = tmp_path / "flush.duckdb"
    if dest == "duckdb":
        flow = worker_flow(tmp_path, pgdb, "flush", "public.ev", {"dsn": str(path)}, dest_type="duckdb")

        def seen() -> int:
            rows = _duckdb_rows(path)
            return -1 if rows is None else len(rows)
    else:
        flow = worker_flow(tmp_path, pgdb, "flush", "public.ev", {"dsn": pgdb, "format": "json"},
                           dest_type="pgstream")

        def seen() -> int:
            return -1 if _stream_rows(pgdb) is None else len(_stream_ids(pgdb))

    worker, log_path = _start(tmp_path, flow)
    try:
        written = 0
        for n in (50, 30):
            end = _insert(pgdb, written + 1, n)
            written += n
            deadline = time.monotonic() + 120
            while (got := seen()) != written:
                assert worker.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"not shown: {got} ({log_path.read_text()[-2000:]})"
                time.sleep(0.05)
            # visible while the slot has not confirmed the commit: flushed, not an epoch's commit
            assert slot_confirmed(pgdb, "wallaby_flush") < end
        if dest == "pgstream":
            shown = pg_rows(pgdb, "SELECT count(*) FROM wallaby.stream_messages")[0][0]
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
    assert slot_confirmed(pgdb, "wallaby_flush") < end  # the restart reads every change again
    _insert(pgdb, written + 1, 20)
    run_worker(tmp_path, flow)  # to the end of the stream, with short epochs
    want_rows = pg_rows(pgdb, "SELECT id, v FROM ev ORDER BY id, v")
    if dest == "duckdb":
        assert _duckdb_rows(path) == want_rows  # each row once: the flushed ones were skipped on the replay
    else:
        positions = _stream_rows(pgdb)
        assert len(positions) == len(set(positions)), "a flushed message was written again"
        assert len(positions) > shown  # the last transaction came after the kill
        assert _stream_ids(pgdb) == [r[0] for r in want_rows]  # every insert once, in commit order
