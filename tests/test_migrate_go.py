"""``wallaby-admin migrate go-wallaby``: a Go WALlaby's flows, state and positions into wallaby's store, and a flow
that switches with no re-snapshot and no lost change.

The Go build's flow store and checkpoints are made here with its tables, column for column from its migrations
(internal/workflow/migrations 001-003, internal/checkpoint/migrations/001_init.sql), and filled as it fills them
(endpoints as its ``connector.Spec`` JSON, Go field names). The "Go side" reads the slot as the Go runner does: it
delivers a batch, acknowledges the WAL position of the batch's last change to the slot, then records it as its
checkpoint, so its position can lie inside a transaction. Real Postgres, the real CLIs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import psycopg
import pytest

from tests.flows import pg_rows, slot_confirmed, worker_env
from tests.test_source_state_go import GO_SOURCE_STATE, GO_UPSERT
from wallaby.core.changes import format_lsn, parse_lsn
from wallaby.state.checkpoints import open_store
from wallaby.state.flowstore import open_flow_store

ADMIN = str(Path(sys.executable).parent / "wallaby-admin")
WORKER = str(Path(sys.executable).parent / "wallaby-worker")

GO_TABLES = (
    # internal/workflow/migrations/001_init.sql
    "CREATE TABLE IF NOT EXISTS flows (id TEXT PRIMARY KEY, name TEXT NOT NULL, source JSONB NOT NULL,"
    " destinations JSONB NOT NULL, state TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
    " updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE INDEX IF NOT EXISTS flows_state_idx ON flows (state)",
    "CREATE TABLE IF NOT EXISTS flow_state_events (id BIGSERIAL PRIMARY KEY,"
    " flow_id TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE, from_state TEXT, to_state TEXT NOT NULL,"
    " reason TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    # 002_flow_fields.sql, 003_flow_config.sql
    "ALTER TABLE flows ADD COLUMN IF NOT EXISTS wire_format TEXT",
    "ALTER TABLE flows ADD COLUMN IF NOT EXISTS parallelism INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE flows ADD COLUMN IF NOT EXISTS config JSONB",
    # internal/checkpoint/migrations/001_init.sql
    "CREATE TABLE IF NOT EXISTS checkpoints (flow_id TEXT PRIMARY KEY, lsn TEXT NOT NULL,"
    " metadata JSONB NOT NULL DEFAULT '{}'::jsonb, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE INDEX IF NOT EXISTS checkpoints_updated_at_idx ON checkpoints (updated_at)",
)
GO_SNAPSHOT = ("SELECT (SELECT json_agg(f ORDER BY id) FROM flows f)::text,"
               " (SELECT json_agg(e ORDER BY id) FROM flow_state_events e)::text,"
               " (SELECT json_agg(c ORDER BY flow_id) FROM checkpoints c)::text")


def sql(dsn: str, *statements: str, params: tuple = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in statements:
            c.execute(s, params or None)


def go_spec(name: str, etype: str, **options: str) -> dict:
    """An endpoint as the Go build stores it (connector.Spec, no JSON tags)."""
    return {"Name": name, "Type": etype, "Options": options}


def go_flow(dsn: str, flow_id: str, source: dict, destinations: list, state: str = "running",
            config: dict | None = None, checkpoint: str | None = None) -> None:
    """A flow as the Go build's PostgresEngine.Create/Start leave it, with its checkpoint."""
    cfg = config if config is not None else {"AckPolicy": "", "PrimaryDestination": "", "FailureMode": "",
                                             "GiveUpPolicy": "", "DDL": {}}
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO flows (id, name, source, destinations, state, wire_format, parallelism, config)"
                  " VALUES (%s, %s, %s, %s, %s, NULL, 1, %s)",
                  (flow_id, flow_id, json.dumps(source), json.dumps(destinations), state, json.dumps(cfg)))
        c.execute("INSERT INTO flow_state_events (flow_id, from_state, to_state, reason) VALUES"
                  " (%s, NULL, 'created', 'create')", (flow_id,))
        if state != "created":
            c.execute("INSERT INTO flow_state_events (flow_id, from_state, to_state, reason) VALUES"
                      " (%s, 'created', %s, 'start')", (flow_id, state))
        if checkpoint is not None:
            c.execute("INSERT INTO checkpoints (flow_id, lsn, metadata) VALUES (%s, %s, '{}')", (flow_id, checkpoint))


def change_lsns(dsn: str, slot: str, publication: str) -> list[str]:
    """The WAL positions of the row changes the slot holds, in stream order (what the Go runner's checkpoints
    are made of: the XLogData start of a change's message)."""
    with psycopg.connect(dsn) as c:
        rows = c.execute("SELECT lsn::text, get_byte(data, 0) FROM pg_logical_slot_peek_binary_changes(%s, NULL,"
                         " NULL, 'proto_version', '1', 'publication_names', %s)", (slot, publication)).fetchall()
    return [lsn for lsn, kind in rows if kind in (ord("I"), ord("U"), ord("D"))]


def migrate(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ADMIN, "migrate", "go-wallaby", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def duck_ids(path: Path) -> list[int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return [r[0] for r in con.execute("SELECT id FROM public.items ORDER BY id").fetchall()]


@pytest.fixture
def go_side(pgdb, tmp_path):
    """A source table with a slot and publication the Go build made, 15 rows in three transactions, and the Go
    build's flow store in the same Postgres; the Go runner has delivered rows 1-8 (row 8 is in the middle of the
    second transaction) and stopped."""
    sql(pgdb, "CREATE TABLE items (id int PRIMARY KEY, v text)", "CREATE PUBLICATION wallaby_orders FOR TABLE items",
        "SELECT pg_create_logical_replication_slot('wallaby_orders', 'pgoutput')", *GO_TABLES,
        "CREATE SCHEMA wallaby", GO_SOURCE_STATE)
    for first in (1, 6, 11):  # three transactions of five single-row inserts
        sql(pgdb, "BEGIN", *[f"INSERT INTO items VALUES ({i}, 'v{i}')" for i in range(first, first + 5)], "COMMIT")
    lsns = change_lsns(pgdb, "wallaby_orders", "wallaby_orders")
    assert len(lsns) == 15
    go_at = lsns[7]  # the Go runner's last delivered change: row 8
    sql(pgdb, "SELECT pg_replication_slot_advance('wallaby_orders', %s::pg_lsn)", params=(go_at,))
    sql(pgdb, GO_UPSERT, params=("orders", "pg", "wallaby_orders", "wallaby_orders", "stopped", "{}", go_at))
    duck = tmp_path / "go.duckdb"
    source = go_spec("pg", "postgres", dsn=pgdb, slot="wallaby_orders", publication="wallaby_orders",
                     batch_timeout="50ms", start_lsn="0/0")
    go_flow(pgdb, "orders", source, [go_spec("duck", "duckdb", dsn=str(duck), flow_id="orders")],
            checkpoint=go_at)
    return pgdb, go_at, duck


def test_a_running_go_flow_switches_with_nothing_lost_and_nothing_again(go_side, tmp_path):
    pgdb, go_at, duck = go_side
    env = worker_env(tmp_path)
    go_before = pg_rows(pgdb, GO_SNAPSHOT)
    slot_before = slot_confirmed(pgdb, "wallaby_orders")

    # -dry-run: the plan, and nothing written anywhere
    r = migrate(env, "-dsn", pgdb, "-dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dry run: nothing is written" in r.stdout and "orders" in r.stdout and go_at in r.stdout
    assert "dropped source.options.start_lsn" in r.stdout and "dropped destinations[0].options.flow_id" in r.stdout
    assert not (tmp_path / "c.db").exists()
    assert pg_rows(pgdb, GO_SNAPSHOT) == go_before and slot_confirmed(pgdb, "wallaby_orders") == slot_before

    r = migrate(env, "-dsn", pgdb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert pg_rows(pgdb, GO_SNAPSHOT) == go_before and slot_confirmed(pgdb, "wallaby_orders") == slot_before
    store_env = {k: v for k, v in env.items() if k.startswith("WALLABY_")}
    flow = open_flow_store(store_env).get("orders")
    assert flow.state == "running" and "Go WALlaby" in flow.state_reason
    assert flow.spec["destinations"] == [{"name": "duck", "type": "duckdb", "options": {"dsn": str(duck)}}]
    cp = open_store(store_env).get("orders", "wallaby_orders")
    assert cp is not None and format_lsn(cp.confirmed_lsn) == go_at and cp.source is not None
    assert cp.position.ordinal == 3  # row 8 is the third change of its transaction

    # running it again changes nothing
    again = migrate(env, "-dsn", pgdb, "-o", "json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [(f["flow"], f["checkpoint"]) for f in json.loads(again.stdout)["flows"]] == [("unchanged", "unchanged")]

    sql(pgdb, "INSERT INTO items SELECT g, 'v' || g FROM generate_series(16, 20) g")  # after the switch
    r = subprocess.run([WORKER, "-flow-id", "orders", "-max-empty-reads", "2"], env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-4000:]
    assert duck_ids(duck) == list(range(9, 21))  # exactly the changes after the Go position: none lost, none again
    assert slot_confirmed(pgdb, "wallaby_orders") > parse_lsn(go_at)


def test_what_does_not_translate_is_named_and_the_rest_migrates(go_side, tmp_path):
    pgdb, _, _ = go_side
    env = worker_env(tmp_path)
    secret_dsn = pgdb.replace("postgres@", "postgres:sekret-pw@")
    src = go_spec("pg", "postgres", dsn=secret_dsn, slot="wallaby_orders", publication="wallaby_orders")
    go_flow(pgdb, "to-pg", src, [go_spec("pg-dest", "postgres", dsn=secret_dsn)], state="paused")
    go_flow(pgdb, "meta", {**src, "Options": {**src["Options"], "slot": "wallaby_meta_slot"}},
            [go_spec("duck", "duckdb", dsn=str(tmp_path / "m.duckdb"), meta_table="m")], state="stopped")
    go_flow(pgdb, "typed", {"name": "pg", "postgres_source": {"dsn": secret_dsn}},
            [{"name": "k", "kafka": {"brokers": ["b:9092"]}}])
    go_flow(pgdb, "never-started", {**src, "Options": {**src["Options"], "slot": "wallaby_new"}},
            [go_spec("duck", "duckdb", dsn=str(tmp_path / "n.duckdb"))], state="created")
    go_flow(pgdb, "schema-reg", src, [go_spec("duck", "duckdb", dsn=str(tmp_path / "s.duckdb"))],
            config={"AckPolicy": "primary", "PrimaryDestination": "duck", "SchemaRegistrySubject": "orders-value"})

    r = migrate(env, "-dsn", secret_dsn)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "sekret-pw" not in r.stdout + r.stderr
    out = r.stdout
    assert "destinations[0].type: wallaby has no destination of type 'postgres'" in out
    assert "destinations[0].options.meta_table: unknown option" in out
    assert "typed form" in out
    assert "config.SchemaRegistrySubject" in out
    store_env = {k: v for k, v in env.items() if k.startswith("WALLABY_")}
    # migrated whole, or not at all; a flow that never started has no position yet, and needs none
    assert [(f.id, f.state) for f in open_flow_store(store_env).list()] == [("never-started", "created"),
                                                                           ("orders", "running")]
    assert "never started: replication slot 'wallaby_new' does not exist yet" in out

    # an option named with -drop-options is left out, and said so; the flow's slot must exist to continue from
    r = migrate(env, "-dsn", pgdb, "-flow-id", "meta", "-drop-options", "meta_table")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "dropped destinations[0].options.meta_table: -drop-options" in r.stdout
    assert "replication slot 'wallaby_meta_slot' does not exist" in r.stdout
    assert [f.id for f in open_flow_store(store_env).list()] == ["never-started", "orders"]


def test_a_go_worker_still_reading_the_slot_refuses_the_flow(go_side, tmp_path):
    pgdb, _, _ = go_side
    env = worker_env(tmp_path)
    reader = psycopg.connect(pgdb, autocommit=True, replication="database")  # the Go worker, still running
    try:
        reader.pgconn.exec_(b"START_REPLICATION SLOT wallaby_orders LOGICAL 0/0 (proto_version '1',"
                            b" publication_names 'wallaby_orders')")
        r = migrate(env, "-dsn", pgdb)
    finally:
        reader.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "is in use" in r.stdout and "stop the program reading it first" in r.stdout
    assert not open_flow_store({k: v for k, v in env.items() if k.startswith("WALLABY_")}).list()


def test_not_a_go_flow_store_is_one_clear_error(pgdb, tmp_path):
    r = migrate(worker_env(tmp_path), "-dsn", pgdb)
    assert r.returncode == 2 and "holds no Go WALlaby flow store" in r.stderr and "-dsn" in r.stderr


def test_the_go_builds_flow_json_translates_field_by_field():
    """Go's field names (connector.Spec, flow.Config without JSON tags), what wallaby spells otherwise, and a
    Snowflake meta table of wallaby's own (the Go build's WALLABY_META.__METADATA has the same name, another shape)."""
    from wallaby.control.go_store import GoFlow
    from wallaby.control.go_translate import translate

    go = GoFlow("f1", "orders", go_spec("pg", "postgres", dsn="postgres://u:pw@db/app", slot="s", publication="p"),
                [go_spec("rpc", "grpc", address="ingest:50051"),
                 go_spec("sf", "snowflake", dsn="u:pw@acct/db", flow_id="f1"),
                 go_spec("sp", "snowpipe", dsn="u:pw@acct/db", stage="@s", schema="public", table="t")],
                "running", "json", 2, {"AckPolicy": "primary", "PrimaryDestination": "sf", "FailureMode": "",
                                        "GiveUpPolicy": "never", "DDL": {"gate": True, "auto_apply": False}})
    t = translate(go)
    assert t.problems == [] and t.spec is not None
    assert t.spec["destinations"][0]["options"] == {"endpoint": "ingest:50051"}
    assert t.spec["destinations"][1]["options"] == {"dsn": "u:pw@acct/db", "meta_table": "__WALLABY_METADATA"}
    assert t.spec["destinations"][2]["options"]["meta_table_enabled"] == "false"
    assert t.spec["config"] == {"ack_policy": "primary", "primary_destination": "sf", "give_up_policy": "never",
                                "ddl": {"gate": True, "auto_apply": False}}
    assert (t.spec["wire_format"], t.spec["parallelism"]) == ("json", 2)
    assert t.spec["source"]["options"]["snapshot_state_table"] == "wallaby_snapshot_state"
    assert any(c.startswith("destinations[0].options.address -> endpoint") for c in t.changed)
    assert t.dropped == ["destinations[1].options.flow_id: the Go build's id of the flow, which wallaby takes from"
                         " the flow itself"]


def test_wallabys_store_in_the_go_builds_own_postgres(go_side, tmp_path):
    """wallaby's tables are wallaby_*: its store can be the Go build's database. A dry run makes no table there."""
    pgdb, _, _ = go_side
    env = {**worker_env(tmp_path), "WALLABY_CHECKPOINT_BACKEND": "postgres", "WALLABY_CHECKPOINT_DSN": pgdb}
    go_before = pg_rows(pgdb, GO_SNAPSHOT)
    r = migrate(env, "-dsn", pgdb, "-dry-run", "-json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [(f["flow"], f["checkpoint"]) for f in json.loads(r.stdout)["flows"]] == [("create", "write")]
    assert pg_rows(pgdb, "SELECT to_regclass('wallaby_flows')::text, to_regclass('wallaby_checkpoints')::text") == \
        [(None, None)]
    r = migrate(env, "-dsn", pgdb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert pg_rows(pgdb, "SELECT id, state FROM wallaby_flows") == [("orders", "running")]
    assert pg_rows(pgdb, "SELECT flow_id, slot FROM wallaby_checkpoints") == [("orders", "wallaby_orders")]
    assert pg_rows(pgdb, GO_SNAPSHOT) == go_before
