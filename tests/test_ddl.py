"""DDL capture (event trigger), schema drift, and the DDL gate holding a flow until approval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psycopg
import pytest

from tests import WORKER
from tests.apiserver import ROOT, current_lsn, duck_rows, flow_file, wait_streaming
from tests.flows import drain, flow_spec, source_part
from wallaby.core.changes import OP_DDL, Event, parse_lsn
from wallaby.core.errors import SourceError
from wallaby.core.spec import load_flow
from wallaby.state.checkpoints import open_store


def _orders(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")


def test_captured_ddl_arrives_in_order_with_the_data(pgdb):
    _orders(pgdb)
    spec = flow_spec(pgdb, source={"capture_ddl": "true", "publication_tables": "public.orders"})
    part = source_part(spec)
    try:
        drain(part, idle_polls=3)
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO orders VALUES (1, 'a')")
            c.execute("ALTER TABLE orders ADD COLUMN qty int")
            c.execute("INSERT INTO orders VALUES (2, 'b', 5)")
        batches = drain(part, until_rows=3, timeout=30)
    finally:
        part.close()
    segs = [s for b in batches for s in b.segments]
    kinds = [s.op if isinstance(s, Event) else "rows" for s in segs]
    assert kinds == ["rows", "ddl", "rows"], kinds
    ddl = segs[1]
    assert ddl.payload["command_tag"] == "ALTER TABLE" and "ADD COLUMN qty" in ddl.payload["ddl"]
    assert ddl.payload["table"] == "public.orders"
    with psycopg.connect(pgdb, autocommit=True) as c:  # installed once, idempotently
        assert c.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'wallaby_ddl_capture%'"
                         ).fetchone()[0] == 2
    source_part(spec).close()


def test_schema_drift_without_a_trigger(pgdb):
    _orders(pgdb)
    spec = flow_spec(pgdb, source={"publication_tables": "public.orders"})
    part = source_part(spec)
    try:
        drain(part, idle_polls=3)
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO orders VALUES (1, 'a')")
            c.execute("ALTER TABLE orders ADD COLUMN qty int, ALTER COLUMN note TYPE varchar(20)")
            c.execute("INSERT INTO orders VALUES (2, 'b', 5)")
        batches = drain(part, until_rows=3, timeout=30)
    finally:
        part.close()
    drift = [s for b in batches for s in b.segments if isinstance(s, Event) and s.op == OP_DDL]
    assert len(drift) == 1
    p = drift[0].payload
    assert p["kind"] == "drift" and p["added"] == ["qty"] and p["retyped"] == ["note"]
    assert p["ddl"].startswith("schema drift of public.orders: added qty; retyped note; the table was rewritten")
    assert p["rewritten"] and "plan: resync public.orders" in p["ddl"]


def test_schema_drift_is_found_again_after_a_restart(pgdb):
    """The shape a drift is judged against is in the snapshot: a restart (or a reconnect, or a held DDL read again)
    between the ALTER and its first row still yields the drift event."""
    _orders(pgdb)
    spec = flow_spec(pgdb, source={"publication_tables": "public.orders"})
    part = source_part(spec)
    try:
        drain(part, idle_polls=3)
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO orders VALUES (1, 'a')")
        assert sum(len(b) for b in drain(part, until_rows=1)) == 1
        state = part.snapshot()
    finally:
        part.close()
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("ALTER TABLE orders ADD COLUMN qty int")
        c.execute("INSERT INTO orders VALUES (2, 'b', 5)")
    part = source_part(spec, state)
    try:
        batches = drain(part, until_rows=2, timeout=30)
    finally:
        part.close()
    drift = [s for b in batches for s in b.segments if isinstance(s, Event) and s.op == OP_DDL]
    assert [d.payload["added"] for d in drift] == [["qty"]]


def test_capture_ddl_without_privilege_is_one_clear_error(pgdb):
    _orders(pgdb)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE ROLE plain LOGIN REPLICATION PASSWORD 'pw'")
        c.execute("GRANT ALL ON SCHEMA public TO plain; GRANT ALL ON orders TO plain")
        db = c.execute("SELECT current_database()").fetchone()[0]
        c.execute(f'GRANT CREATE ON DATABASE "{db}" TO plain')
    dsn = pgdb.replace("postgres@", "plain:pw@")
    spec = flow_spec(dsn, source={"capture_ddl": "true", "publication_tables": "public.orders"})
    try:
        with pytest.raises(SourceError, match="capture_ddl=true needs a superuser"):
            source_part(spec)
        with psycopg.connect(pgdb, autocommit=True) as c:  # nothing was created
            assert c.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0
            assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wallaby_t'"
                             ).fetchone()[0] == 0
    finally:
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("DROP OWNED BY plain; DROP ROLE plain")


def _worker(tmp_path, flow_id: str, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "store.db"), WALLABY_EPOCH_INTERVAL="300ms",
               WALLABY_DDL_POLL="0.5")
    return subprocess.Popen([*WORKER, "-flow-id", flow_id], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("decision", ["approved", "rejected"])
def test_gate_holds_the_flow_until_decided(tmp_path, pgdb, decision):
    _orders(pgdb)
    path = flow_file(tmp_path, pgdb, "gated", duck=tmp_path / "g.duckdb")
    data = json.loads(path.read_text())
    data["source"]["options"]["capture_ddl"] = "true"
    data["config"] = {"ddl": {"gate": True, "auto_approve": False, "auto_apply": True}}
    path.write_text(json.dumps(data))
    spec = load_flow(path)
    store = open_store({"WALLABY_CHECKPOINT_PATH": str(tmp_path / "store.db")})
    store.flow_store.create(spec.id, spec.name, spec.model_dump(mode="json"))
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = _worker(tmp_path, "gated", log)
    try:
        wait_streaming(pgdb, "gated_slot")
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO orders VALUES (1, 'before')")
            c.execute("ALTER TABLE orders ADD COLUMN qty int")
            c.execute("INSERT INTO orders VALUES (2, 'after', 7)")
        deadline = time.monotonic() + 60
        while not store.flow_store.list_ddl("pending", "gated") and time.monotonic() < deadline:
            time.sleep(0.2)
        [event] = store.flow_store.list_ddl("pending", "gated")
        assert "ADD COLUMN qty" in event.ddl and event.table == "public.orders"
        time.sleep(2)  # held: epochs keep completing, but nothing past the DDL is confirmed
        cp = store.get("gated", "gated_slot")
        assert cp is not None and cp.confirmed_lsn <= parse_lsn(event.lsn)
        text = (tmp_path / "worker.log").read_text()
        assert "ddl gate:" in text and "ADD COLUMN qty" in text

        store.flow_store.set_ddl_status(event.id, decision)
        target = current_lsn(pgdb)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            cp = store.get("gated", "gated_slot")
            if cp.confirmed_lsn >= target:
                break
            time.sleep(0.3)
        assert cp.confirmed_lsn >= target, (tmp_path / "worker.log").read_text()[-3000:]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        log.close()
    assert duck_rows(tmp_path / "g.duckdb") == [(1, "before"), (2, "after")]
    assert len(store.flow_store.list_ddl(flow_id="gated")) == 1  # the replay met the same record
    store.close()


def test_ddl_gated_signals():
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import wallaby.core.telemetry as telemetry

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    telemetry._counter = None
    telemetry.ddl_gated("f", "public.t", "ALTER TABLE t ADD c int", 7)
    data = reader.get_metrics_data()
    points = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "wallaby.ddl.gated_total" for p in m.data.data_points]
    assert points and points[0].value == 1


def test_duckdb_follows_a_widened_column(pgdb, tmp_path):
    from datetime import timedelta

    import duckdb
    from bytewax.testing import run_main

    from dataflows.flow import build_flow

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, qty int, price numeric(8,2), note varchar(5))")
    path = tmp_path / "w.duckdb"
    spec = flow_spec(pgdb, duckdb_path=path, source={"publication_tables": "public.orders"})

    def run() -> None:
        run_main(build_flow(spec, max_empty_reads=2), epoch_interval=timedelta(milliseconds=200))

    run()
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO orders VALUES (1, 5, 1.25, 'abc')")
    run()
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("ALTER TABLE orders ALTER COLUMN qty TYPE bigint, ALTER COLUMN price TYPE numeric(14,4),"
                  " ALTER COLUMN note TYPE text")
        c.execute("INSERT INTO orders VALUES (2, 9000000000, 12345678.1234, 'a longer note')")
    run()
    with duckdb.connect(str(path), read_only=True) as d:
        types = dict(d.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'orders'"
                               ).fetchall())
        rows = d.execute("SELECT id, qty, price::varchar, note FROM public.orders ORDER BY id").fetchall()
    assert (types["qty"], types["price"], types["note"]) == ("BIGINT", "DECIMAL(14,4)", "VARCHAR")
    assert rows == [(1, 5, "1.2500", "abc"), (2, 9000000000, "12345678.1234", "a longer note")]


@pytest.mark.parametrize("drop", [True, False])
def test_duckdb_drops_a_dropped_column_only_with_drop_columns(pgdb, tmp_path, drop):
    from datetime import timedelta

    import duckdb
    from bytewax.testing import run_main

    from dataflows.flow import build_flow

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, qty int, note text)")
    path = tmp_path / "w.duckdb"
    spec = flow_spec(pgdb, duckdb_path=path, source={"publication_tables": "public.orders"},
                     destination={"drop_columns": str(drop).lower()})

    def run() -> None:
        run_main(build_flow(spec, max_empty_reads=2), epoch_interval=timedelta(milliseconds=200))

    run()  # creates the slot
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO orders VALUES (1, 5, 'a')")
    run()
    with psycopg.connect(pgdb, autocommit=True) as c:  # in one stream: a row with note, the drop, a row without
        c.execute("INSERT INTO orders VALUES (2, 6, 'b')")
        c.execute("ALTER TABLE orders DROP COLUMN note")
        c.execute("INSERT INTO orders VALUES (3, 7)")
    run()
    with duckdb.connect(str(path), read_only=True) as d:
        cols = [r[0] for r in d.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'orders'"
                                        " ORDER BY column_index").fetchall()]
        rows = d.execute("SELECT id, qty FROM public.orders ORDER BY id").fetchall()
    assert cols == (["id", "qty"] if drop else ["id", "qty", "note"])
    assert rows == [(1, 5), (2, 6), (3, 7)]


def test_unknown_type_mapping_keys_are_one_clear_error(pgdb, tmp_path):
    _orders(pgdb)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TYPE mood AS ENUM ('ok'); CREATE EXTENSION IF NOT EXISTS citext")
    path = flow_file(tmp_path, pgdb, "tm", duck=tmp_path / "tm.duckdb")
    data = json.loads(path.read_text())
    data["destinations"][0]["options"]["type_mappings"] = {
        "timestamptz": "VARCHAR", "mood": "VARCHAR", "public.mood": "VARCHAR", "ext:citext": "VARCHAR",
        "_int4": "VARCHAR", "double precision": "DOUBLE", "timestamptzz": "VARCHAR", "ext:postgis.geometry": "BLOB"}
    path.write_text(json.dumps(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env["WALLABY_CHECKPOINT_PATH"] = str(tmp_path / "s.db")
    out = subprocess.run([*WORKER, "-flow-file", str(path), "-max-empty-reads", "1"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "'timestamptzz' is not a type" in out.stderr and "'ext:postgis.geometry'" in out.stderr
    for fine in ("'mood'", "'public.mood'", "'ext:citext'", "'_int4'", "'double precision'", "'timestamptz'"):
        assert fine not in out.stderr
    with psycopg.connect(pgdb, autocommit=True) as c:  # nothing was created
        assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tm_slot'").fetchone()[0] == 0


def test_custom_trigger_schema_name_and_prefix(pgdb):
    _orders(pgdb)
    spec = flow_spec(pgdb, source={"capture_ddl": "true", "publication_tables": "public.orders",
                                   "ddl_trigger_schema": "audit", "ddl_trigger_name": "cdc_ddl",
                                   "ddl_message_prefix": "cdc_ddl_msgs"})
    part = source_part(spec)
    try:
        drain(part, idle_polls=3)
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("SELECT pg_logical_emit_message(true, 'wallaby_ddl', 'not ours')")
            c.execute("ALTER TABLE orders ADD COLUMN qty int")
            c.execute("INSERT INTO orders VALUES (1, 'a', 1)")
        batches = drain(part, until_rows=3, timeout=30)
    finally:
        part.close()
    events = [s for b in batches for s in b.segments if isinstance(s, Event)]
    assert [e.op for e in events] == ["message", "ddl"]  # the default prefix is just a message here
    assert events[1].payload["command_tag"] == "ALTER TABLE"
    with psycopg.connect(pgdb, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname IN ('cdc_ddl', 'cdc_ddl_drop')"
                         ).fetchone()[0] == 2
        assert c.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                         " WHERE n.nspname = 'audit' AND p.proname = 'cdc_ddl_fn'").fetchone()[0] == 1


def test_gate_decisions_for_every_policy(tmp_path, monkeypatch):
    from sources.postgres.ddl_gate import DROP, HOLD, PASS, DDLGate
    from wallaby.core.changes import Position
    from wallaby.core.spec import DDLPolicy
    from wallaby.state.flowstore import FlowStore
    from wallaby.state.sqldb import SQLiteDatabase

    store = FlowStore(SQLiteDatabase(tmp_path / "s.db"))

    def event(n: int) -> Event:
        return Event(OP_DDL, Position(100 + n, 1), 0, 1, (),
                     {"ddl": f"ALTER TABLE t ADD c{n} int", "table": "public.t"})

    def gate(**policy) -> DDLGate:
        return DDLGate("f", DDLPolicy(**policy), store)

    assert gate(gate=False).decide(event(1)) == PASS
    assert store.list_ddl(flow_id="f")[-1].status == "applied"  # recorded for history
    assert gate(gate=True, auto_approve=True, auto_apply=True).decide(event(2)) == PASS
    assert store.list_ddl(flow_id="f")[-1].status == "approved"
    g = gate(gate=True, auto_approve=True, auto_apply=False)
    assert g.decide(event(3)) == HOLD  # approved, but someone must apply it
    store.set_ddl_status(store.list_ddl(flow_id="f")[-1].id, "applied")
    assert g.decide(event(3)) == PASS
    g = gate(gate=True, auto_approve=False, auto_apply=True)
    assert g.decide(event(4)) == HOLD
    rec = store.list_ddl("pending", "f")[0]
    store.set_ddl_status(rec.id, "approved")
    assert g.decide(event(4)) == PASS
    assert g.decide(event(5)) == HOLD
    store.set_ddl_status(store.list_ddl("pending", "f")[0].id, "rejected")
    assert g.decide(event(5)) == DROP
    assert len(store.list_ddl(flow_id="f")) == 5  # deciding again never records twice
    # The environment's defaults fill what the flow leaves unset.
    monkeypatch.setenv("WALLABY_DDL_GATE", "true")
    monkeypatch.setenv("WALLABY_DDL_AUTO_APPROVE", "false")
    assert DDLGate("f", DDLPolicy().effective(), store).decide(event(6)) == HOLD
    store.close()


def test_a_drift_read_again_finds_its_record_whatever_it_judges_of_the_rewrite(tmp_path):
    """The storage behind a drift is read when its Relation message is resolved: a worker started again may judge
    the rewrite otherwise than the one that recorded the event (a column dropped meanwhile hides what its volatile
    default wrote; a later rewrite shows). It is the same event: found again, not recorded twice (a held flow would
    otherwise hold at a second copy of a DDL already decided)."""
    from sources.postgres.batcher import describe_drift
    from sources.postgres.ddl_gate import HOLD, PASS, DDLGate
    from wallaby.core.changes import Position
    from wallaby.core.spec import DDLPolicy
    from wallaby.state.flowstore import FlowStore
    from wallaby.state.sqldb import SQLiteDatabase

    store = FlowStore(SQLiteDatabase(tmp_path / "s.db"))
    gate = DDLGate("f", DDLPolicy(gate=True, auto_approve=False, auto_apply=True), store)

    def drift(rewritten: bool, at: int = 100) -> Event:
        payload = {"kind": "drift", "table": "public.h", "added": ["r0"], "dropped": [], "retyped": [],
                   "rewritten": rewritten}
        return Event(OP_DDL, Position(at, 3), 0, 1, (), {**payload, "ddl": describe_drift(payload)})

    assert gate.decide(drift(False)) == HOLD
    assert gate.decide(drift(True)) == HOLD  # the next worker's reading of it
    [event] = store.list_ddl(flow_id="f")
    store.set_ddl_status(event.id, "approved")
    assert gate.decide(drift(True)) == PASS
    assert gate.decide(drift(True, at=200)) == HOLD  # another position: another event
    assert len(store.list_ddl(flow_id="f")) == 2
    store.close()
