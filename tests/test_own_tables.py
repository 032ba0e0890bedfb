"""wallaby's own tables in the source database (source state, backfill state, pgstream's, a flow store's) stay out
of what a flow of a publication of all tables carries; the heartbeat table and tables the flow names do not."""

from __future__ import annotations

import duckdb
import psycopg

from tests.flows import pg_rows, run_worker, worker_flow
from wallaby.core.options import PostgresSourceOptions


def test_which_tables_are_left_out():
    from sources.postgres.own_tables import own_table

    base = {"dsn": "postgresql://u@h/db", "slot": "s", "publication": "p"}
    own = own_table(PostgresSourceOptions.parse(base))
    assert own("wallaby", "source_state") and own("wallaby", "stream_messages") and own("wallaby", "snapshot_state")
    assert not own("public", "source_state") and not own("wallaby", "heartbeat")
    own = own_table(PostgresSourceOptions.parse({**base, "state_schema": "ops", "heartbeat_table": "ops.beat",
                                                 "publication_tables": "wallaby.stream_messages,public.t"}))
    assert own("ops", "source_state") and own("wallaby", "streams") and not own("ops", "beat")
    assert not own("wallaby", "stream_messages")  # named by the flow
    own = own_table(PostgresSourceOptions.parse({**base, "publication_schemas": "wallaby"}))
    assert not own("wallaby", "source_state")  # its schema named by the flow


def test_a_pgstream_destination_in_the_database_it_reads_does_not_feed_itself(tmp_path, pgdb):
    """A publication of all tables and a pgstream destination in the same database: each change becomes one message
    (before, each message written was a change of wallaby.stream_messages, streamed again: the worker never found
    the slot empty), and the source-state row each start writes is not one."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    flow = worker_flow(tmp_path, pgdb, "own", None, {"dsn": pgdb, "format": "json"}, dest_type="pgstream",
                       dest_name="events")
    run_worker(tmp_path, flow, timeout=90)  # the slot, the publication of all tables
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3) g")
        c.execute("UPDATE t SET v = 'two' WHERE id = 2")
    out = run_worker(tmp_path, flow, timeout=90)
    assert "is wallaby's own: its changes are left out" in out.stderr
    tables = "SELECT DISTINCT namespace, table_name FROM wallaby.stream_messages"
    assert pg_rows(pgdb, tables) == [("public", "t")]
    count = pg_rows(pgdb, "SELECT count(*) FROM wallaby.stream_messages")
    run_worker(tmp_path, flow, timeout=90)
    assert pg_rows(pgdb, "SELECT count(*) FROM wallaby.stream_messages") == count
    assert pg_rows(pgdb, "SELECT pubname FROM pg_publication WHERE puballtables") == [("wallaby_own",)]


def test_a_backfill_and_stream_of_all_tables_leave_wallabys_tables_out(tmp_path, pgdb):
    """A flow of all tables into DuckDB, backfilled then streamed: DuckDB holds the user's table and nothing of the
    wallaby schema (the source-state row each start writes, the backfill state), where a table the user keeps in a
    schema named alike would be (the flow names it)."""
    duck = tmp_path / "d.duckdb"
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g")
    flow = worker_flow(tmp_path, pgdb, "ownb", None, {"dsn": str(duck)}, dest_type="duckdb")
    run_worker(tmp_path, flow, args=("-mode", "backfill"), timeout=120)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t VALUES (51, 'streamed')")
    run_worker(tmp_path, flow, timeout=120)
    run_worker(tmp_path, flow, timeout=120)
    with duckdb.connect(str(duck), read_only=True) as d:
        tables = {(s, n) for s, n in d.execute("SELECT schema_name, table_name FROM duckdb_tables()"
                                               " WHERE NOT starts_with(table_name, '__wallaby')").fetchall()}
        count = d.execute("SELECT count(*) FROM public.t").fetchone()[0]
    assert count == 51
    assert pg_rows(pgdb, "SELECT count(*) FROM wallaby.source_state") != [(0,)]
    assert tables == {("public", "t")}, tables
