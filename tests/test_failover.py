"""A failover: a physical standby (pg_basebackup -R) promoted to timeline 2 while a flow's positions are on
timeline 1.

The primary and the standby are servers of this module's own (the session's ``pg`` server is never stopped or
promoted). Logical slots are not copied by pg_basebackup, so after the failover the worker creates the flow's
slot on the promoted server; what it must keep is the DuckDB high-water of timeline 1 (at or before the switch
point: those changes are on the promoted server's history too), and what it must refuse is a position of
timeline 1 beyond the switch point (changes the failover discarded). After a failover to a standby that lagged,
the recovery store (which may cover past the new slot's start) is emptied, not resumed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import psycopg
import pytest

from sources.postgres.identity import read_source
from tests.flows import slot_confirmed
from tests.test_e2e_duckdb import WORKER, duck_table, pg_table, sql, worker_env, write_flow
from wallaby.control.localpg import LocalPostgres
from wallaby.core.changes import format_lsn, parse_lsn
from wallaby.core.identity import SourceIdentity
from wallaby.core.spec import load_flow

ROOT = Path(__file__).resolve().parent.parent
DB = "fo"
TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price numeric(10,2), at timestamptz)"
# Small servers (two of them beside the session's): a standby needs max_connections, max_wal_senders, ... at
# least the primary's, so both get the same.
SETTINGS = {"wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10", "hot_standby": "on",
            "max_connections": "40", "shared_buffers": "32MB", "max_wal_size": "256MB", "wal_keep_size": "128MB"}
RUN_TIMEOUT = 90


@dataclass
class Cluster:
    primary: LocalPostgres
    standby: LocalPostgres
    promoted: bool = False

    def promote(self) -> LocalPostgres:
        """Stop the primary once the standby has replayed all of its WAL, and promote the standby (once)."""
        if not self.promoted:
            wait_replayed(self.primary, self.standby)
            self.primary.stop("fast")
            self.standby.promote()
            self.standby.wait_ready()
            self.promoted = True
        return self.standby


@contextlib.contextmanager
def primary_and_standby(name: str):
    """A primary of its own and a streaming physical standby of it (pg_basebackup -R), both stopped and removed at
    the end. A server that cannot start, or a missing pg_basebackup, fails the test with the reason (never
    skipped)."""
    base = ROOT / ".cache" / f"{name}-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    primary = LocalPostgres(base / "primary", settings=dict(SETTINGS))
    standby = LocalPostgres(base / "standby", settings=dict(SETTINGS))
    try:
        try:
            primary.start()
            primary.wait_ready()
            sql(primary.dsn(), f"CREATE DATABASE {DB}")
            standby.basebackup_of(primary)
            standby.start()
            standby.wait_ready()
            wait_streaming(primary)
        except Exception as exc:
            pytest.fail(f"primary + standby could not be set up: {exc}", pytrace=False)
        yield Cluster(primary, standby)
    finally:
        for server in (standby, primary):
            try:
                server.stop("immediate")
            except Exception as exc:  # the other one is stopped all the same
                print(f"stopping {server.data_dir}: {exc}")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    with primary_and_standby("failover") as pair:
        yield pair


def wait_streaming(primary: LocalPostgres, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(primary.dsn(), autocommit=True) as c:
            if c.execute("SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'").fetchone():
                return
        time.sleep(0.2)
    raise RuntimeError(f"the standby is not streaming from the primary after {timeout}s")


def wait_replayed(primary: LocalPostgres, standby: LocalPostgres, timeout: float = 30) -> int:
    """Wait until the standby replayed everything the primary wrote; the primary's WAL position."""
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        target = parse_lsn(c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    deadline = time.monotonic() + timeout
    replayed = 0
    while time.monotonic() < deadline:
        with psycopg.connect(standby.dsn(), autocommit=True) as c:
            replayed = parse_lsn(c.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0] or "0/0")
        if replayed >= target:
            return target
        time.sleep(0.1)
    raise AssertionError(f"the standby replayed up to {format_lsn(replayed)} of {format_lsn(target)} in {timeout}s")


def run_worker(tmp_path: Path, flow: Path, empty_reads: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([WORKER, "-flow-file", str(flow), "-max-empty-reads", str(empty_reads)],
                          env=worker_env(tmp_path),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def plain_lines(stderr: str) -> list[str]:
    """stderr without the JSON log lines: what the worker printed itself (its one-line failure, tracebacks)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


def state_row(duck: Path, flow_id: str = "e2e", dest: str = "duck") -> tuple[int, SourceIdentity | None]:
    with duckdb.connect(str(duck), read_only=True) as d:
        lsn, source = d.execute("SELECT lsn, source FROM main.__wallaby_state WHERE flow_id = ? AND destination = ?",
                                [flow_id, dest]).fetchone()
    return int(lsn), SourceIdentity.from_json(source)


def slots(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as c:
        return {r[0] for r in c.execute("SELECT slot_name FROM pg_replication_slots").fetchall()}


def test_failover_keeps_streaming(cluster, tmp_path):
    primary = cluster.primary
    src = primary.dsn(DB)
    sql(src, TABLE)
    duck = tmp_path / "fo.duckdb"
    opts = {"slot": "fo_keep", "publication": "fo_keep"}
    flow = write_flow(tmp_path, src, duck, **opts)
    r = run_worker(tmp_path, flow)  # creates the slot on the primary (timeline 1)
    assert r.returncode == 0, r.stderr
    sql(src, "INSERT INTO items SELECT g, 'p' || g, g, g / 4.0, now() FROM generate_series(1, 300) g")
    r = run_worker(tmp_path, flow)
    assert r.returncode == 0, r.stderr
    sql(src, "UPDATE items SET qty = -qty WHERE id % 7 = 0", "DELETE FROM items WHERE id % 11 = 0",
        "INSERT INTO items SELECT g, 'q' || g, g, 1.25, now() FROM generate_series(301, 400) g")
    r = run_worker(tmp_path, flow)
    assert r.returncode == 0, r.stderr
    assert duck_table(duck) == pg_table(src)
    high, stored = state_row(duck)
    assert stored is not None and stored.timeline == 1, stored

    promoted = cluster.promote()
    dsn = promoted.dsn(DB)
    assert "fo_keep" not in slots(dsn)  # pg_basebackup does not copy logical slots

    # The server's own history, parsed: timeline 2, timeline 1 ended at or after everything DuckDB holds.
    flow = write_flow(tmp_path, dsn, duck, **opts)  # same flow id, checkpoint store and DuckDB file
    facts = read_source(load_flow(flow).source_options(), "e2e")
    assert facts.identity.timeline == 2, facts
    assert facts.identity.system_id == stored.system_id
    assert set(facts.switches) == {1}, facts.switches
    switch = facts.switches[1]
    assert high <= switch <= facts.wal_end, (format_lsn(high), format_lsn(switch), format_lsn(facts.wal_end))
    assert not facts.slot_exists

    r = run_worker(tmp_path, flow)  # creates the slot on the promoted server; keeps the timeline-1 high-water
    assert r.returncode == 0, r.stderr
    assert "cannot be used with this source" not in r.stderr and not plain_lines(r.stderr), r.stderr
    assert "does not exist and is created now" in r.stderr  # the timeline-1 checkpoint was for the old slot
    assert "fo_keep" in slots(dsn)
    assert state_row(duck) == (high, stored)  # kept as it was: not discarded, not rewritten

    sql(dsn, "INSERT INTO items SELECT g, 'after' || g, g, 2.5, now() FROM generate_series(1001, 1250) g",
        "UPDATE items SET name = 'moved' WHERE id BETWEEN 1 AND 40", "DELETE FROM items WHERE id BETWEEN 41 AND 60",
        "UPDATE items SET qty = qty + 1 WHERE id > 1200")
    r = run_worker(tmp_path, flow)
    assert r.returncode == 0, r.stderr
    assert "cannot be used with this source" not in r.stderr and not plain_lines(r.stderr), r.stderr
    rows = duck_table(duck)
    assert {row[0] for row in rows} >= set(range(1001, 1251))
    assert rows == pg_table(dsn)
    new_high, now = state_row(duck)
    assert new_high > switch and now is not None and now.timeline == 2 and now.system_id == stored.system_id


def test_position_past_the_switch_point_is_refused(cluster, tmp_path):
    promoted = cluster.promote()
    dsn = promoted.dsn(DB)
    sql(dsn, "CREATE TABLE IF NOT EXISTS filler (x int)",
        "INSERT INTO filler SELECT generate_series(1, 100)")  # WAL on timeline 2, past the switch point
    duck = tmp_path / "ahead.duckdb"
    opts = {"slot": "fo_refuse", "publication": "fo_refuse"}
    flow = write_flow(tmp_path, dsn, duck, **opts)
    facts = read_source(load_flow(flow).source_options(), "e2e")
    switch = facts.switches[1]
    with psycopg.connect(dsn) as c:
        lsn = parse_lsn(c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    assert lsn > switch, (format_lsn(lsn), format_lsn(switch))
    # A high-water of timeline 1 beyond the point where timeline 1 ended: changes the failover discarded.
    ident = SourceIdentity(system_id=facts.identity.system_id, timeline=1, database=DB, slot="fo_refuse")
    with duckdb.connect(str(duck)) as d:
        d.execute("CREATE TABLE main.__wallaby_state (flow_id VARCHAR NOT NULL, destination VARCHAR NOT NULL,"
                  " lsn UBIGINT NOT NULL, ordinal UBIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL, source VARCHAR)")
        d.execute("INSERT INTO main.__wallaby_state VALUES ('e2e', 'duck', ?, 0, now(), ?)", [lsn, ident.to_json()])

    r = run_worker(tmp_path, flow)
    assert r.returncode not in (0, 75) and r.returncode > 0, (r.returncode, r.stderr)
    lines = plain_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("wallaby-worker: "), r.stderr
    line = lines[0]
    assert "timeline 1" in line and format_lsn(switch) in line and format_lsn(lsn) in line, line
    assert "destination 'duck'" in line and "reset" in line, line
    # Nothing created: no slot, no publication on the promoted server, no table in DuckDB; the state as written.
    assert "fo_refuse" not in slots(dsn)
    with psycopg.connect(dsn) as c:
        assert not c.execute("SELECT 1 FROM pg_publication WHERE pubname = 'fo_refuse'").fetchone()
    assert duck_table(duck) == []
    assert state_row(duck) == (lsn, ident)


def test_lagging_standby_failover_keeps_streaming(tmp_path):
    """A crash failover to a standby that had not received the last WAL of the primary, where that WAL held no
    published change: the flow's recovery store (on by default) covers past the switch point, but the slot is
    created anew on the promoted server, so no stored position of the old slot applies (as for the checkpoint)."""
    with primary_and_standby("failover-lag") as pair:
        primary, standby = pair.primary, pair.standby
        src = primary.dsn(DB)
        sql(src, TABLE, "CREATE TABLE unpublished (x int)")
        duck = tmp_path / "lag.duckdb"
        opts = {"slot": "fo_lag", "publication": "fo_lag", "publication_tables": "public.items"}
        flow = write_flow(tmp_path, src, duck, **opts)
        assert run_worker(tmp_path, flow).returncode == 0
        sql(src, "INSERT INTO items SELECT g, 'p' || g, g, 1.5, now() FROM generate_series(1, 200) g")
        r = run_worker(tmp_path, flow)
        assert r.returncode == 0, r.stderr
        wait_replayed(primary, standby)
        standby.stop("fast")  # the standby falls behind: what follows never reaches it
        sql(src, "INSERT INTO unpublished SELECT generate_series(1, 20000)")
        r = run_worker(tmp_path, flow, empty_reads=3)  # idle: the slot's covered position follows the WAL
        assert r.returncode == 0, r.stderr
        high, _ = state_row(duck)
        confirmed = slot_confirmed(src, "fo_lag")
        primary.stop("immediate")  # a crash
        standby.start()
        standby.wait_ready()
        standby.promote()
        pair.promoted = True
        dsn = standby.dsn(DB)
        flow = write_flow(tmp_path, dsn, duck, **opts)
        facts = read_source(load_flow(flow).source_options(), "e2e")
        switch = facts.switches[1]
        # the precondition: the flow had confirmed past the switch point (the slot is confirmed to `covered`)
        assert confirmed > switch, (format_lsn(confirmed), format_lsn(switch))
        assert high <= switch, (format_lsn(high), format_lsn(switch))  # every change DuckDB holds survived
        assert duck_table(duck) == pg_table(dsn)

        r = run_worker(tmp_path, flow)
        assert r.returncode == 0, r.stderr
        sql(dsn, "INSERT INTO items SELECT g, 'after' || g, g, 2.5, now() FROM generate_series(1001, 1100) g")
        r = run_worker(tmp_path, flow)
        assert r.returncode == 0, r.stderr
        assert duck_table(duck) == pg_table(dsn)
