"""The Postgres source partition against a real server: positions, resume, confirm, reconnect, bad input."""

from __future__ import annotations

import time

import psycopg
import pytest

from sources.postgres.setup import prepare_source
from tests.flows import drain, flow_spec, rows_of, slot_confirmed, source_part
from wallaby.control.localpg import LocalPostgres
from wallaby.core.changes import Event, Position
from wallaby.core.errors import SourceError


@pytest.fixture
def db(pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        c.execute("CREATE TABLE other (id int)")
    return pgdb


def sql(dsn: str, *stmts: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in stmts:
            c.execute(s)


def test_changes_in_order_with_positions(db):
    spec = flow_spec(db, source={"publication_tables": "public.items"})
    part = source_part(spec)
    sql(db, "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)",
        "UPDATE items SET qty = 5 WHERE id = 1", "DELETE FROM items WHERE id = 2",
        "INSERT INTO other VALUES (1)")  # not published
    rows = rows_of(drain(part, until_rows=4))
    assert [(r["__op"], r["id"]) for r in rows] == [("insert", 1), ("insert", 2), ("update", 1), ("delete", None)]
    assert rows[3]["__before.id"] == 2
    positions = [(r["__lsn"], r["__ord"]) for r in rows]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert positions[0][0] == positions[1][0] and positions[1][1] == positions[0][1] + 1  # one transaction
    part.close()


def test_truncate_is_an_event_in_order(db):
    spec = flow_spec(db, source={"publication_tables": "public.items"})
    part = source_part(spec)
    sql(db, "INSERT INTO items VALUES (1, 'a', 1)", "TRUNCATE items", "INSERT INTO items VALUES (2, 'b', 2)")
    batches = drain(part, until_rows=3)
    segs = [s for b in batches for s in b.segments]
    kinds = ["event" if isinstance(s, Event) else "rows" for s in segs]
    assert kinds == ["rows", "event", "rows"] or kinds.count("event") == 1
    ev = next(s for s in segs if isinstance(s, Event))
    assert ev.op == "truncate" and ev.tables[0].name == "items"
    part.close()


def test_resume_mid_transaction_emits_each_change_once(db):
    spec = flow_spec(db, source={"publication_tables": "public.items", "batch_size": "100"})
    part = source_part(spec)
    sql(db, "INSERT INTO items SELECT g, 'n' || g, g FROM generate_series(1, 50000) g")
    first = drain(part, until_rows=100)
    n = sum(len(b) for b in first)
    assert 100 <= n < 50000 and n % 100 == 0  # whole batches of batch_size; the transaction is still open
    state = part.snapshot()
    part.close()  # crash here: the rest of the transaction was never emitted

    part2 = source_part(spec, state)
    rest = drain(part2, until_rows=50000 - n)
    ids = [r["id"] for r in rows_of(first)] + [r["id"] for r in rows_of(rest)]
    assert ids == list(range(1, 50001))
    assert drain(part2, idle_polls=20) == []
    part2.close()


def test_slot_confirms_only_after_the_epoch_is_durable(db):
    spec = flow_spec(db, source={"publication_tables": "public.items"})
    part = source_part(spec)
    start = slot_confirmed(db, spec.source_options().slot)
    sql(db, "INSERT INTO items VALUES (1, 'a', 1)")
    drain(part, until_rows=1)
    drain(part, idle_polls=5)
    assert slot_confirmed(db, spec.source_options().slot) == start  # emitted, not durable yet
    part.snapshot()  # end of epoch
    assert slot_confirmed(db, spec.source_options().slot) == start  # sinks may still be writing
    part.next_batch()  # bytewax calls this only once the epoch is durable everywhere
    deadline = time.monotonic() + 5
    while slot_confirmed(db, spec.source_options().slot) == start and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slot_confirmed(db, spec.source_options().slot) > start
    part.close()


def test_idle_slot_advances_past_unpublished_wal(db):
    spec = flow_spec(db, source={"publication_tables": "public.items", "status_interval": "100ms"})
    part = source_part(spec)
    drain(part, idle_polls=3)
    before = slot_confirmed(db, "wallaby_t")
    sql(db, "INSERT INTO other SELECT generate_series(1, 1000)")  # WAL, but nothing published
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        drain(part, idle_polls=10)
        part.snapshot()
        part.next_batch()
        if slot_confirmed(db, "wallaby_t") > before:
            break
    assert slot_confirmed(db, "wallaby_t") > before
    part.close()


def test_walsender_terminated_mid_stream_reconnects_and_loses_nothing(db):
    spec = flow_spec(db, source={"publication_tables": "public.items", "batch_size": "50"})
    part = source_part(spec)
    sql(db, "INSERT INTO items SELECT g, 'x', g FROM generate_series(1, 200) g")
    got = drain(part, until_rows=50)
    sql(db, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'wallaby_t'")
    sql(db, "INSERT INTO items SELECT g, 'y', g FROM generate_series(201, 300) g")
    got += drain(part, until_rows=300 - sum(len(b) for b in got), timeout=60)
    ids = [r["id"] for r in rows_of(got)]
    assert ids == list(range(1, 301))
    part.close()


def _walsender(dsn: str) -> int | None:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'wallaby_t'").fetchone()[0]


def test_reader_keeps_the_walsender_alive_while_nobody_takes_batches(db):
    """The reader decodes ahead into a short queue. While the worker does not take batches (a destination busy for
    longer than wal_sender_timeout), it reads nothing but must still answer, or the server drops the connection."""
    dsn = db + ("&" if "?" in db else "?") + "options=-c%20wal_sender_timeout%3D2000"
    spec = flow_spec(dsn, source={"publication_tables": "public.items", "batch_size": "50",
                                  "status_interval": "10s"})
    part = source_part(spec)
    sql(db, "INSERT INTO items SELECT g, 'x', g FROM generate_series(1, 2000) g")
    got = drain(part, until_rows=1)
    walsender = _walsender(db)
    assert walsender is not None
    time.sleep(6)  # three wal_sender_timeouts with the queue full
    got += drain(part, until_rows=2000 - sum(len(b) for b in got))
    assert [r["id"] for r in rows_of(got)] == list(range(1, 2001))
    assert _walsender(db) == walsender  # the same connection: never timed out, never reconnected
    part.close()


def test_batches_are_capped_by_bytes_as_well_as_rows(db, monkeypatch):
    """Wide rows make a batch of batch_size rows huge: a batch is also taken at MAX_BATCH_BYTES of messages."""
    import sources.postgres.batcher

    monkeypatch.setattr(sources.postgres.batcher, "MAX_BATCH_BYTES", 100_000)
    spec = flow_spec(db, source={"publication_tables": "public.items", "batch_size": "10000"})
    part = source_part(spec)
    sql(db, "INSERT INTO items SELECT g, repeat(md5(g::text), 320), g FROM generate_series(1, 300) g")  # ~10 KB
    got = drain(part, until_rows=300)
    assert [r["id"] for r in rows_of(got)] == list(range(1, 301))
    assert max(len(b) for b in got) <= 10  # 10 rows of ~10 KB reach 100 kB
    assert len(got) >= 30
    part.close()


def test_start_lsn_before_the_slot_is_a_clear_error(db):
    spec = flow_spec(db, source={"publication_tables": "public.items"})
    prepare_source(spec.source_options(), spec.id)
    with pytest.raises(SourceError, match="no longer retains"):
        source_part(spec, start_lsn=16)


def test_start_lsn_skips_earlier_changes(db):
    spec = flow_spec(db, source={"publication_tables": "public.items"})
    prepare_source(spec.source_options(), spec.id)
    sql(db, "INSERT INTO items VALUES (1, 'a', 1)")
    with psycopg.connect(db) as c:
        lsn = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    sql(db, "INSERT INTO items VALUES (2, 'b', 2)")
    from wallaby.core.changes import parse_lsn

    part = source_part(spec, start_lsn=parse_lsn(lsn))
    rows = rows_of(drain(part, until_rows=1))
    assert [r["id"] for r in rows] == [2]
    part.close()


def _nothing_created(dsn: str) -> None:
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'wallaby'").fetchone()[0] == 0


def test_missing_publication_without_ensure_is_one_clear_error(db):
    spec = flow_spec(db, source={"ensure_publication": "false"})
    with pytest.raises(SourceError, match="publication 'wallaby_t' does not exist.*ensure_publication=true"):
        prepare_source(spec.source_options(), spec.id)
    _nothing_created(db)


def test_missing_table_in_publication_tables(db):
    spec = flow_spec(db, source={"publication_tables": "public.items,public.nope"})
    with pytest.raises(SourceError, match="public.nope"):
        prepare_source(spec.source_options(), spec.id)
    _nothing_created(db)


def test_wrong_password_names_the_server_not_the_password(pg, db):
    sql(pg.dsn(), "DROP ROLE IF EXISTS app", "CREATE ROLE app LOGIN REPLICATION PASSWORD 'right'")
    dsn = db.replace("postgresql://postgres@", "postgresql://app:wrong-secret@")
    spec = flow_spec(dsn)
    with pytest.raises(SourceError) as err:
        prepare_source(spec.source_options(), spec.id)
    text = str(err.value)
    assert "wrong-secret" not in text and "127.0.0.1" in text and "password" in text
    _nothing_created(db)


def test_unreachable_host(db):
    spec = flow_spec("postgresql://postgres:pw@127.0.0.1:1/x?connect_timeout=2")
    with pytest.raises(SourceError, match=r"127.0.0.1:1.*reachable") as err:
        prepare_source(spec.source_options(), spec.id)
    assert "pw" not in str(err.value).replace("password", "")
    assert err.value.transient  # a server that does not answer may come back


def test_missing_database_is_named_and_permanent(pg, db):
    """libpq gives no SQLSTATE for a failure while connecting; the server's catalog says the database is missing
    (3D000), which no retry cures: not "check that the server is running"."""
    from wallaby.core.errors import TerminalSourceError, is_transient

    spec = flow_spec(pg.dsn("no_such_db", password="s3cret-pw"))
    with pytest.raises(TerminalSourceError) as err:
        prepare_source(spec.source_options(), spec.id)
    text = str(err.value)
    assert f"database 'no_such_db' does not exist on 127.0.0.1:{pg.port}" in text and "reachable" not in text
    assert err.value.sqlstate == "3D000" and not is_transient(err.value) and "s3cret-pw" not in text
    # A database that exists but takes no connections is told apart the same way.
    closed = f"closed_{time.time_ns()}"
    sql(pg.dsn(), f"CREATE DATABASE {closed} ALLOW_CONNECTIONS false")
    try:
        with pytest.raises(TerminalSourceError, match="does not accept connections") as err:
            prepare_source(flow_spec(pg.dsn(closed)).source_options(), "f")
        assert err.value.sqlstate == "55000"
    finally:
        sql(pg.dsn(), f"DROP DATABASE {closed}")


def test_wal_level_replica_names_the_setting(tmp_path):
    server = LocalPostgres(tmp_path / "replica-pg")
    server.start({"wal_level": "replica"})
    try:
        spec = flow_spec(server.dsn())
        with pytest.raises(SourceError, match="wal_level is 'replica'.*ALTER SYSTEM SET wal_level = logical"):
            prepare_source(spec.source_options(), spec.id)
        _nothing_created(server.dsn())
    finally:
        server.destroy()


def test_position_order():
    assert Position(1, 5) < Position(2, 0) < Position(2, 1)


@pytest.mark.parametrize("resolve", [True, False])
def test_extension_types_carry_their_names(db, resolve):
    sql(db, "CREATE EXTENSION IF NOT EXISTS vector", "CREATE EXTENSION IF NOT EXISTS hstore",
        "CREATE EXTENSION IF NOT EXISTS citext", "CREATE TYPE mood AS ENUM ('sad', 'ok')",
        "CREATE DOMAIN price AS numeric(10,2)",
        "CREATE TABLE ext (id int PRIMARY KEY, v vector(3), h hstore, c citext, m mood, ms mood[], p price)")
    spec = flow_spec(db, source={"publication_tables": "public.ext", "resolve_types": str(resolve).lower()})
    part = source_part(spec)
    sql(db, "INSERT INTO ext VALUES (1, '[1,2.5,3]', 'a=>1', 'MiXeD', 'ok', '{sad,ok}', 9.99)")
    seg = next(s for b in drain(part, until_rows=1) for s in b.segments)
    cols = {c.name: c for c in seg.table.columns}
    assert cols["v"].type_name == "vector" and cols["h"].type_name == "hstore" and cols["m"].type_name == "mood"
    row = seg.rows.to_pylist()[0]
    assert (row["v"], row["h"], row["c"], row["m"]) == ("[1,2.5,3]", '"a"=>"1"', "MiXeD", "ok")
    if resolve:
        assert (cols["v"].extension, cols["h"].extension, cols["c"].extension) == ("vector", "hstore", "citext")
        assert row["ms"] == ["sad", "ok"]
        assert cols["p"].base_type == "numeric" and str(row["p"]) == "9.99"
        assert seg.rows.schema.field("p").type.scale == 2
    else:
        assert cols["v"].extension is None
    part.close()


def _pub_tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as c:
        rows = c.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables"
                         " WHERE pubname = 'wallaby_t'").fetchall()
    return {r[0] for r in rows}


def test_sync_publication_add_and_sync_modes(db):
    sql(db, "CREATE TABLE third (id int PRIMARY KEY)")
    prepare_source(flow_spec(db, source={"publication_tables": "public.items"}).source_options(), "t")
    assert _pub_tables(db) == {"public.items"}
    add = flow_spec(db, source={"publication_tables": "public.other", "sync_publication": "true"})
    prepare_source(add.source_options(), "t")
    assert _pub_tables(db) == {"public.items", "public.other"}  # add: keeps what is there
    sync = flow_spec(db, source={"publication_tables": "public.third", "sync_publication": "true",
                                 "sync_publication_mode": "sync"})
    prepare_source(sync.source_options(), "t")
    assert _pub_tables(db) == {"public.third"}  # sync: drops what is not listed
    schemas = flow_spec(db, source={"publication_schemas": "public", "sync_publication": "true"})
    prepare_source(schemas.source_options(), "t")
    assert _pub_tables(db) == {"public.items", "public.other", "public.third"}


def test_emit_empty_sends_empty_batches_when_idle(db):
    spec = flow_spec(db, source={"publication_tables": "public.items", "emit_empty": "true"})
    part = source_part(spec)
    got = drain(part, idle_polls=200, timeout=5)
    assert got and all(len(b) == 0 for b in got)
    part.close()
    quiet = source_part(flow_spec(db, source={"publication_tables": "public.items"}))
    assert drain(quiet, idle_polls=200, timeout=2) == []
    quiet.close()


def test_state_table_records_the_flow(db):
    prepare_source(flow_spec(db, source={"publication_tables": "public.items", "flow_id": "orders-flow",
                                         "state_schema": "wallaby_meta", "state_table": "src"}).source_options(), "t")
    with psycopg.connect(db) as c:
        rows = c.execute("SELECT flow_id, slot_name, publication FROM wallaby_meta.src").fetchall()
    assert rows == [("orders-flow", "wallaby_t", "wallaby_t")]
    prepare_source(flow_spec(db, slot="wallaby_u", source={"ensure_state": "false"}).source_options(), "u")
    with psycopg.connect(db) as c:
        assert c.execute("SELECT count(*) FROM wallaby_meta.src").fetchone()[0] == 1


def test_flows_of_one_database_set_up_at_once(pg):
    """Workers of different flows on one database start at the same moment (a server relaunching its running
    flows, a scheduled tick): wallaby's shared objects there (the state table, the DDL capture's function and
    triggers, the heartbeat table) are created once, and every worker's set-up succeeds."""
    import threading
    import uuid

    from sources.postgres.heartbeat import Heartbeat

    admin = pg.dsn()
    for _ in range(4):  # fresh databases: the race is at creation
        name = "race_" + uuid.uuid4().hex[:10]
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        dsn = pg.dsn(name)
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def setup(n: int, dsn: str = dsn, barrier: threading.Barrier = barrier,
                  errors: list[BaseException] = errors) -> None:
            spec = flow_spec(dsn, flow_id=f"f{n}", slot=f"s{n}", publication=f"p{n}",
                             source={"heartbeat": "table", "heartbeat_table": "wallaby.heartbeats",
                                     "capture_ddl": "true"})
            try:
                barrier.wait()
                prepare_source(spec.source_options(), spec.id)
                beat = Heartbeat(spec.source_options(), spec.id)
                try:
                    beat._beat()
                finally:
                    beat.close()
            except BaseException as exc:  # collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=setup, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        try:
            assert not errors, errors
            with psycopg.connect(dsn) as c:
                assert c.execute("SELECT count(*) FROM wallaby.heartbeats").fetchone()[0] == 4
                assert c.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'wallaby%'"
                                 ).fetchone()[0] == 2
        finally:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                          (name,))
                c.execute(f'DROP DATABASE "{name}"')
