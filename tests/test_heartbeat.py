"""Idle slots: while the published tables are quiet and other tables and databases write, the flow's slot moves on
(retained WAL stays bounded), with or without the source's heartbeat; the heartbeat writes its WAL and passes
nothing to the destinations."""

from __future__ import annotations

import random
import subprocess
import time

import psycopg
import pytest

from tests import WORKER
from tests.flows import ROOT, pg_rows, worker_env, worker_flow
from wallaby.core.changes import parse_lsn
from wallaby.core.errors import ConfigError
from wallaby.core.options import PostgresSourceOptions

MB = 1 << 20


def _slot(dsn: str, slot: str) -> tuple[int, int]:
    row = pg_rows(dsn, f"SELECT confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots"
                       f" WHERE slot_name = '{slot}'")[0]
    return parse_lsn(row[0]), parse_lsn(row[1])


def _lsn(dsn: str) -> int:
    return parse_lsn(pg_rows(dsn, "SELECT pg_current_wal_lsn()::text")[0][0])


def _busy_elsewhere(dsn: str, other_dsn: str) -> None:
    """~24 MB of WAL from an unpublished table of the same database and a table of another database."""
    for d in (dsn, other_dsn):
        with psycopg.connect(d, autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS noise (id bigint, pad text)")
            for _ in range(4):
                c.execute("INSERT INTO noise SELECT g, repeat('x', 500) FROM generate_series(1, 6000) g")


def _beaten(dsn: str, tmp_path, heartbeat: str) -> bool:
    """The worker logged its first beat and, for ``table``, the slot's row is there and recent."""
    if f"heartbeat ({heartbeat}) every 0.5s" not in (tmp_path / "worker.log").read_text():
        return False
    return heartbeat != "table" or pg_rows(
        dsn, "SELECT flow_id FROM wallaby.heartbeat WHERE slot_name = 'wallaby_hb'"
             " AND beat_at > now() - interval '1 minute'") == [("hb",)]


@pytest.mark.parametrize("heartbeat", ["off", "message", "table"])
def test_a_quiet_flow_slot_moves_on_while_other_tables_write(tmp_path, pg, pgdb, heartbeat):
    other = f"hb{random.getrandbits(32):x}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {other}")
    try:
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("CREATE TABLE quiet (id int PRIMARY KEY)")
        flow = worker_flow(tmp_path, pgdb, "hb", "public.quiet", {"dsn": pgdb, "format": "json"},
                           dest_type="pgstream", dest_name="events", heartbeat=heartbeat,
                           heartbeat_interval="500ms")
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
        worker = subprocess.Popen([*WORKER, "-flow-file", str(flow)], env=worker_env(tmp_path), cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "streaming from" not in (tmp_path / "worker.log").read_text() and time.monotonic() < deadline:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(0.1)
            before = _lsn(pgdb)
            _busy_elsewhere(pgdb, pg.dsn(other))
            after = _lsn(pgdb)
            assert after - before > 16 * MB
            deadline = time.monotonic() + 60  # status_interval 1s: the server's answers carry how far it read
            while _slot(pgdb, "wallaby_hb")[0] < after and time.monotonic() < deadline:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(0.2)
            assert _slot(pgdb, "wallaby_hb")[0] >= after  # confirmed past everything written elsewhere
            deadline = time.monotonic() + 60  # restart_lsn follows at the next running-transactions record
            while _slot(pgdb, "wallaby_hb")[1] < after and time.monotonic() < deadline:
                pg_rows(pgdb, "SELECT pg_log_standby_snapshot()")
                time.sleep(0.5)
            assert _slot(pgdb, "wallaby_hb")[1] >= after, "retained WAL did not shrink"
            if heartbeat != "off":  # the first beat comes once the slot has been idle 0.5 s: on a busy host, later
                deadline = time.monotonic() + 60
                while not _beaten(pgdb, tmp_path, heartbeat) and time.monotonic() < deadline:
                    assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                    time.sleep(0.2)
                assert _beaten(pgdb, tmp_path, heartbeat), (tmp_path / "worker.log").read_text()[-3000:]
        finally:
            worker.terminate()
            assert worker.wait(60) == 0, (tmp_path / "worker.log").read_text()[-3000:]
            log.close()
        # nothing reached the destination: no change of the published table, no heartbeat
        assert pg_rows(pgdb, "SELECT count(*) FROM wallaby.stream_messages") == [(0,)] if pg_rows(
            pgdb, "SELECT to_regclass('wallaby.stream_messages')")[0][0] else True
    finally:
        from tests.conftest import _drop_database

        _drop_database(pg.dsn(), other)


def test_a_bad_heartbeat_table_is_refused_by_name():
    base = {"dsn": "postgresql://u@h/db", "slot": "s", "publication": "p", "heartbeat": "table"}
    assert PostgresSourceOptions.parse(base).heartbeat_table == "wallaby.heartbeat"
    with pytest.raises(ConfigError) as err:
        PostgresSourceOptions.parse({**base, "heartbeat_table": "Heartbeat"})
    assert "options.heartbeat_table" in str(err.value) and "schema.table" in str(err.value)
    with pytest.raises(ConfigError) as err:
        PostgresSourceOptions.parse({**base, "heartbeat": "loud"})
    assert "options.heartbeat" in str(err.value)
