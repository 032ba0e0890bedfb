"""The backfill's reader (sources/postgres/pgscan.py): DuckDB's postgres extension joins the backfill's exported
snapshot, and what it cannot do is one error with the password masked."""

from __future__ import annotations

import socket
import time
import uuid

import psycopg
import pytest

from sources.postgres.connection import libpq_conninfo
from sources.postgres.pgscan import PostgresScan, ScanError


def test_a_scan_reads_the_exported_snapshot_and_not_what_was_committed_after_it(pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int)")
        c.execute("INSERT INTO t VALUES (1)")
    holder = psycopg.connect(pgdb)
    try:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot = holder.execute("SELECT pg_export_snapshot()").fetchone()[0]
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO t VALUES (2)")
        inside, outside = PostgresScan(libpq_conninfo(pgdb), snapshot), PostgresScan(libpq_conninfo(pgdb), None)
        try:
            for _ in range(2):  # chunk after chunk: one transaction
                assert inside.fetch("SELECT count(*) AS n FROM t").column("n").to_pylist() == [1]
            assert outside.fetch("SELECT count(*) AS n FROM t").column("n").to_pylist() == [2]
        finally:
            inside.close()
            outside.close()
    finally:
        holder.close()


def test_a_snapshot_that_does_not_exist_and_a_missing_table_are_errors(pgdb):
    with pytest.raises(ScanError, match=r"snapshot \"00000003-0000001B-1\" does not exist"):
        PostgresScan(libpq_conninfo(pgdb), "00000003-0000001B-1")
    scan = PostgresScan(libpq_conninfo(pgdb), None)
    try:
        with pytest.raises(ScanError) as info:
            scan.execute("LOCK TABLE public.nope IN ACCESS SHARE MODE")
        assert info.value.missing_relation and 'relation "public.nope" does not exist' in str(info.value)
    finally:
        scan.close()


def test_a_server_that_cannot_be_reached_is_one_error_without_the_password():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ScanError) as info:
        PostgresScan(f"host=127.0.0.1 port={port} dbname=x user=u password=hunter2secret connect_timeout=5", None)
    text = str(info.value)
    assert "hunter2secret" not in text and "password=***" in text and str(port) in text


def test_a_closed_scan_leaves_no_connection_on_the_server(pgdb):
    app = "wallaby-pgscan-" + uuid.uuid4().hex[:8]

    def sessions() -> int:
        with psycopg.connect(pgdb, autocommit=True) as c:
            return c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()[0]

    scans = [PostgresScan(libpq_conninfo(pgdb, app), None) for _ in range(2)]
    for scan in scans:
        assert scan.fetch("SELECT 1 AS one").column("one").to_pylist() == [1]
    assert sessions() >= 2
    for scan in scans:
        scan.close()
    deadline = time.monotonic() + 10
    while sessions() and time.monotonic() < deadline:  # a backend ends a moment after its client goes
        time.sleep(0.05)
    assert sessions() == 0
