"""The source-state table shared with the Go WALlaby: a database that ran the Go build works with wallaby, and the
Go build keeps working on it.

The Go build's table is made here as its source (connectors/sources/postgres/source_state.go, ``ensure``) makes
it, with the rows it writes (``Upsert``: its source-state id is the source option flow_id, else the source's
name, else the slot). Real Postgres, real workers.
"""

from __future__ import annotations

import json

from tests.test_e2e_duckdb import duck_table, pg_table, worker_env
from tests.test_positions import TABLE, flow_file, insert, ok, one, refused, run, sql

# The Go build's wallaby.source_state, column for column.
GO_SOURCE_STATE = (
    "CREATE TABLE IF NOT EXISTS wallaby.source_state (id TEXT PRIMARY KEY, source_name TEXT,"
    " slot_name TEXT NOT NULL, publication_name TEXT NOT NULL, state TEXT NOT NULL,"
    " options JSONB NOT NULL DEFAULT '{}'::jsonb, last_lsn TEXT, last_ack_at TIMESTAMPTZ,"
    " created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)
# The Go build's Upsert, as it runs it on every start of its source.
GO_UPSERT = (
    "INSERT INTO wallaby.source_state (id, source_name, slot_name, publication_name, state, options, last_lsn,"
    " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now(), now()) ON CONFLICT (id) DO UPDATE SET"
    " source_name = EXCLUDED.source_name, slot_name = EXCLUDED.slot_name,"
    " publication_name = EXCLUDED.publication_name, state = EXCLUDED.state, options = EXCLUDED.options,"
    " last_lsn = EXCLUDED.last_lsn, updated_at = now()"
)


def go_ran(dsn: str, *rows: tuple[str, str, str, str]) -> None:
    """What the Go build leaves on a source: its table, publication and slot for slot wallaby_pos, and its rows
    ``(id, slot, state, last_lsn)``."""
    import psycopg

    sql(dsn, TABLE, "CREATE SCHEMA wallaby", GO_SOURCE_STATE, "CREATE PUBLICATION wallaby_pos FOR TABLE items",
        "SELECT pg_create_logical_replication_slot('wallaby_pos', 'pgoutput')")
    with psycopg.connect(dsn, autocommit=True) as c:
        for go_id, slot, state, lsn in rows:
            c.execute(GO_UPSERT, (go_id, "pg", slot, slot, state, json.dumps({"slot": slot}), lsn))


def go_rows(dsn: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn) as c:
        return [tuple(r) for r in c.execute(
            "SELECT id, slot_name, publication_name, state, last_lsn, slot_id IS NOT NULL FROM wallaby.source_state"
            " ORDER BY id").fetchall()]


def test_worker_starts_on_the_go_builds_table_and_leaves_its_rows(pgdb, tmp_path):
    """The Go build's row for the slot is keyed by its source's name ('pg'), not by the flow: wallaby's flow 'pos'
    takes the slot over (it used to be refused: "slot belongs to flow 'pg'"), streams every change, and records its
    own row beside the Go row, which is left as the Go build wrote it."""
    env = worker_env(tmp_path)
    go_ran(pgdb, ("pg", "wallaby_pos", "stopped", "0/1000"))
    insert(pgdb, 1, 20)
    ok(run(flow_file(tmp_path, pgdb, tmp_path / "a.duckdb"), env))
    assert duck_table(tmp_path / "a.duckdb") == pg_table(pgdb)
    assert go_rows(pgdb) == [("pg", "wallaby_pos", "wallaby_pos", "stopped", "0/1000", False),
                             ("pos", "wallaby_pos", "wallaby_pos", "running", None, True)]
    slot_id = one(pgdb, "SELECT slot_id FROM wallaby.source_state WHERE id = 'pos'")[0]

    # The Go build runs again on this database (a rollback): its upsert still works (one owner per slot is
    # enforced among wallaby's rows only) ...
    import psycopg

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(GO_UPSERT, ("pg", "pg", "wallaby_pos", "wallaby_pos", "running", "{}", None))
        c.execute(GO_UPSERT, ("other-go-flow", "pg", "wallaby_pos", "wallaby_pos", "stopped", "{}", None))
    # ... and wallaby's next run keeps its slot identity (no "slot dropped and created again") and its rows flow on.
    insert(pgdb, 100, 5)
    r = ok(run(flow_file(tmp_path, pgdb, tmp_path / "a.duckdb"), env))
    assert "created again" not in r.stderr
    assert "Go WALlaby's row 'pg'" in r.stderr and "running" in r.stderr  # the takeover warning names the row
    assert one(pgdb, "SELECT slot_id FROM wallaby.source_state WHERE id = 'pos'")[0] == slot_id
    assert duck_table(tmp_path / "a.duckdb") == pg_table(pgdb)


def test_a_go_row_of_the_same_id_for_another_slot_is_replaced(pgdb, tmp_path):
    """The table's key is id: a Go row with the flow's id (later Go builds key by flow id) for another slot is
    replaced by the flow's row, instead of a duplicate-key error."""
    env = worker_env(tmp_path)
    go_ran(pgdb, ("pos", "go_old_slot", "stopped", None))
    insert(pgdb, 1, 5)
    r = ok(run(flow_file(tmp_path, pgdb, tmp_path / "a.duckdb"), env))
    assert "duplicate key" not in r.stderr and "go_old_slot" in r.stderr
    assert go_rows(pgdb) == [("pos", "wallaby_pos", "wallaby_pos", "running", None, True)]
    assert duck_table(tmp_path / "a.duckdb") == pg_table(pgdb)


def test_one_wallaby_owner_per_slot_still_holds_on_the_go_builds_table(pgdb, tmp_path):
    env = worker_env(tmp_path)
    go_ran(pgdb, ("pg", "wallaby_pos", "stopped", None))
    ok(run(flow_file(tmp_path, pgdb, tmp_path / "a.duckdb", flow_id="first"), env))
    line = refused(run(flow_file(tmp_path, pgdb, tmp_path / "b.duckdb", flow_id="second", name="b.json"), env))
    assert "'first'" in line and "'second'" in line and "wallaby_pos" in line
    assert "'pg'" not in line  # the Go build's row is no owner
    assert one(pgdb, "SELECT count(*) FROM wallaby.source_state WHERE slot_id IS NOT NULL")[0] == 1


def test_an_index_over_every_row_made_by_an_earlier_version_is_replaced(pgdb, tmp_path):
    """An earlier wallaby made its one-owner index over every row of the Go build's table, which failed the Go
    build's upsert of a second row for a slot; it becomes one over wallaby's rows."""
    env = worker_env(tmp_path)
    go_ran(pgdb, ("pg", "wallaby_pos", "stopped", None))
    sql(pgdb, "CREATE UNIQUE INDEX source_state_one_owner_per_slot ON wallaby.source_state (slot_name)")
    ok(run(flow_file(tmp_path, pgdb, tmp_path / "a.duckdb"), env))
    index = one(pgdb, "SELECT indexdef FROM pg_indexes WHERE indexname = 'source_state_one_owner_per_slot'")[0]
    assert "WHERE (slot_id IS NOT NULL)" in index


def test_rows_of_a_flow_of_several_slots_and_their_cleanup(pgdb):
    """The table's key is id: a flow's rows for its other slots are keyed '<flow>#<slot>' (no duplicate key), read
    back as the flow's; cleaning up the flow deletes its rows, never the Go build's."""
    from types import SimpleNamespace

    import psycopg

    from sources.postgres.source_state import delete_state, ensure_state, owner_problem, read_slot_rows

    go_ran(pgdb, ("pg", "wallaby_pos", "stopped", None))

    def opts(slot: str) -> SimpleNamespace:
        return SimpleNamespace(dsn=pgdb, state_schema="wallaby", state_table="source_state", slot=slot,
                               publication=slot, flow_id=None)

    with psycopg.connect(pgdb, autocommit=True) as c:
        for i, slot in enumerate(("wallaby_pos_0", "wallaby_pos_1", "wallaby_pos_0")):  # the first one again
            ensure_state(c, opts(slot), "multi", f"id{i % 2}", "sys")
        assert sorted(go_rows(pgdb)) == [("multi", "wallaby_pos_0", "wallaby_pos_0", "running", None, True),
                                         ("multi#wallaby_pos_1", "wallaby_pos_1", "wallaby_pos_1", "running", None,
                                          True),
                                         ("pg", "wallaby_pos", "wallaby_pos", "stopped", None, False)]
        for slot, slot_id in (("wallaby_pos_0", "id0"), ("wallaby_pos_1", "id1")):
            rows = read_slot_rows(c, opts(slot))
            assert [(r.flow_id, r.slot_id, r.foreign) for r in rows] == [("multi", slot_id, False)]
            assert owner_problem(rows, "multi", opts(slot)) is None
            assert "'multi'" in owner_problem(rows, "other", opts(slot))
        assert [(r.flow_id, r.foreign, r.state) for r in read_slot_rows(c, opts("wallaby_pos"))] == \
            [("pg", True, "stopped")]
        assert delete_state(c, opts("wallaby_pos_0"), "multi") == 2
    assert go_rows(pgdb) == [("pg", "wallaby_pos", "wallaby_pos", "stopped", None, False)]


# The Go build's wallaby.snapshot_state (connectors/sources/postgres/snapshot_state.go, ``ensure``).
GO_SNAPSHOT_STATE = (
    "CREATE TABLE IF NOT EXISTS wallaby.snapshot_state (flow_id TEXT NOT NULL, table_name TEXT NOT NULL,"
    " partition_index INTEGER NOT NULL DEFAULT 0, partition_count INTEGER NOT NULL DEFAULT 1, cursor TEXT,"
    " status TEXT NOT NULL DEFAULT 'running', updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
    " PRIMARY KEY (flow_id, table_name, partition_index))"
)


def test_a_backfill_on_a_database_where_the_go_build_backfilled_names_the_option_to_set(pgdb, tmp_path):
    """The Go build's backfill state table has our default name and other columns: a backfill says which option
    to set (nothing written to that table); with its own table name it runs."""
    env = worker_env(tmp_path)
    sql(pgdb, TABLE, "CREATE SCHEMA wallaby", GO_SNAPSHOT_STATE,
        "INSERT INTO wallaby.snapshot_state (flow_id, table_name) VALUES ('go', 'public.items')")
    insert(pgdb, 1, 5)
    line = refused(run(flow_file(tmp_path, pgdb, tmp_path / "a.duckdb"), env, "-mode", "backfill"))
    assert '"wallaby"."snapshot_state" exists with other columns' in line and "snapshot_state_table" in line
    assert one(pgdb, "SELECT count(*) FROM wallaby.snapshot_state")[0] == 1
    ok(run(flow_file(tmp_path, pgdb, tmp_path / "a.duckdb", snapshot_state_table="wallaby_snapshot_state"), env,
           "-mode", "backfill"))
    assert duck_table(tmp_path / "a.duckdb") == pg_table(pgdb)
