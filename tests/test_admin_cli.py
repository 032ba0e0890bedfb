"""wallaby-admin, grpcurl and examples/grpc/create_flow.sh against a live API server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from types import SimpleNamespace

import psycopg
import pytest

from sources.postgres.snapshot import Part, plan_parts
from sources.postgres.snapshot_state import FileSnapshotState, PostgresSnapshotState
from tests import WORKER
from tests.apiserver import ROOT, current_lsn, duck_rows, flow_file, make_server, pg_rows, wait_streaming
from wallaby.control.api.backfillstatus import backfill_status
from wallaby.core.changes import SnapshotMark
from wallaby.state.checkpoints import open_store

GRPCURL_VERSION = "v1.9.4"


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """grpcurl, built with the Go toolchain into .cache/gobin when it is not installed."""
    found = shutil.which("grpcurl")
    if found:
        return found
    target = ROOT / ".cache" / "gobin" / "grpcurl"
    if target.exists():
        return str(target)
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if go is None:
        pytest.fail("grpcurl is not installed and there is no Go toolchain to build it", pytrace=False)
    env = dict(os.environ, GOBIN=str(target.parent))
    out = subprocess.run([go, "install", f"github.com/fullstorydev/grpcurl/cmd/grpcurl@{GRPCURL_VERSION}"],
                         env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0 or not target.exists():
        pytest.fail(f"could not build grpcurl: {out.stderr[-2000:]}", pytrace=False)
    return str(target)


def _orders(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text); CREATE TABLE extra (id int PRIMARY KEY)")


def test_create_flow_script_and_reflection(tmp_path, pgdb, grpcurl):
    _orders(pgdb)
    server = make_server(tmp_path, WALLABY_GRPC_REFLECTION="true").start()
    try:
        env = dict(server.env, WALLABY_ADDR=server.addr, SOURCE_DSN=pgdb, DUCKDB_PATH=str(tmp_path / "o.duckdb"),
                   FLOW_NAME="scripted", START="true", GRPCURL=grpcurl)
        out = subprocess.run(["bash", str(ROOT / "examples/grpc/create_flow.sh")], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        created = json.loads(out.stdout)
        assert created["id"] == "scripted" and created["state"] == "FLOW_STATE_RUNNING"

        # Reflection: grpcurl without proto files, as USAGE.md shows for RunFlowOnce.
        listed = subprocess.run([grpcurl, "-plaintext", server.addr, "list"], capture_output=True, text=True,
                                timeout=60)
        assert "wallaby.v1.FlowService" in listed.stdout and "grpc.health.v1.Health" in listed.stdout
        wait_streaming(pgdb, "scripted_slot")
        server.admin("flow", "stop", "-flow-id", "scripted")
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO orders VALUES (1, 'one'), (2, 'two')")
        once = subprocess.run([grpcurl, "-plaintext", "-d", '{"flow_id":"scripted"}', server.addr,
                               "wallaby.v1.FlowService/RunFlowOnce"], capture_output=True, text=True, timeout=60)
        assert once.returncode == 0 and json.loads(once.stdout) == {"dispatched": True}, once.stderr
        server.wait_checkpoint("scripted", current_lsn(pgdb))
        # The run-once worker stops by itself once caught up (then DuckDB is readable); the state is unchanged.
        assert server.get("scripted").state == 6  # FLOW_STATE_STOPPED
        for _ in range(100):
            try:
                got = duck_rows(tmp_path / "o.duckdb")
                break
            except Exception:  # the run-once worker still holds the file
                time.sleep(0.3)
        assert got == pg_rows(pgdb), server.worker_log("scripted")
    finally:
        server.stop()


def test_admin_publication_slot_and_ddl_commands(tmp_path, pgdb):
    _orders(pgdb)
    server = make_server(tmp_path).start()
    try:
        path = flow_file(tmp_path, pgdb, "adm", duck=tmp_path / "a.duckdb")
        server.admin("flow", "create", "-file", str(path), "-start")
        deadline = time.monotonic() + 60
        while True:  # the worker creates the publication and the slot
            slots = server.admin_json("slot", "list", "-flow-id", "adm").get("slots", [])
            if any(s["slot_name"] == "adm_slot" and s.get("active") for s in slots):
                break
            assert time.monotonic() < deadline, server.worker_log("adm")
            time.sleep(0.3)
        assert "public.orders" in server.admin("publication", "list", "-flow-id", "adm").stdout
        out = server.admin_json("publication", "sync", "-flow-id", "adm", "-tables", "public.extra", "-mode", "add",
                                "-pause", "-resume")
        assert out["added"] == ["public.extra"]
        assert server.admin_json("flow", "get", "-flow-id", "adm")["state"] == "FLOW_STATE_RUNNING"
        out = server.admin_json("publication", "sync", "-flow-id", "adm", "-tables", "public.extra", "-mode", "sync")
        assert out["removed"] == ["public.orders"]
        bad = server.admin("publication", "sync", "-flow-id", "adm", "-tables", "public.nope", check=False)
        assert bad.returncode != 0 and "INVALID_ARGUMENT" in bad.stderr and "public.nope" in bad.stderr
        snap = server.admin("publication", "sync", "-flow-id", "adm", "-snapshot", check=False)
        assert snap.returncode != 0 and "FAILED_PRECONDITION" in snap.stderr and "-pause" in snap.stderr

        slot = server.admin_json("slot", "get", "-flow-id", "adm")["slot"]
        assert slot["plugin"] == "pgoutput" and slot["active"]
        busy = server.admin("slot", "drop", "-flow-id", "adm", check=False)
        assert busy.returncode != 0 and "FAILED_PRECONDITION" in busy.stderr
        run_once = server.admin("flow", "run-once", "-flow-id", "adm", check=False)
        assert run_once.returncode != 0 and "is running" in run_once.stderr

        # DDL events (captured by the change-semantics operators; here put in the store directly).
        store = open_store(server.env)
        ev = store.flow_store.add_ddl("adm", "public.orders", "ALTER TABLE orders ADD c int", "0/16B6C50")
        ev2 = store.flow_store.add_ddl("adm", "public.orders", "ALTER TABLE orders DROP note", "0/16B6D00")
        store.close()
        listed = server.admin("ddl", "list", "-status", "pending", "-flow-id", "adm").stdout
        assert "ALTER TABLE orders ADD c int" in listed and "0/16B6C50" in listed
        assert server.admin_json("ddl", "approve", "-id", str(ev.id))["event"]["status"] == "approved"
        assert server.admin_json("ddl", "apply", "-id", str(ev.id))["event"]["status"] == "applied"
        assert server.admin_json("ddl", "reject", "-id", str(ev2.id))["event"]["status"] == "rejected"
        again = server.admin("ddl", "approve", "-id", str(ev2.id), check=False)
        assert again.returncode != 0 and "FAILED_PRECONDITION" in again.stderr
        assert server.admin_json("ddl", "list", "-status", "pending").get("events", []) == []

        server.admin("flow", "stop", "-flow-id", "adm")
        dropped = server.admin_json("slot", "drop", "-flow-id", "adm")
        assert dropped["dropped"] is True
    finally:
        server.stop()


def test_worker_flow_id_errors(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env["WALLABY_CHECKPOINT_PATH"] = str(tmp_path / "store.db")
    out = subprocess.run([*WORKER, "-flow-id", "nope"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert "-flow-id: no flow 'nope'" in out.stderr and "store.db" in out.stderr
    out = subprocess.run([*WORKER], env=env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "-flow-file FILE or -flow-id ID" in out.stderr


def test_publication_sync_snapshot_backfills_the_added_table_then_resumes(tmp_path, pgdb):
    """publication sync -snapshot -pause -resume on a running flow: the table is added, its existing rows are
    backfilled while the stream is paused, the flow resumes, and later changes of the table stream in."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        c.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
        c.execute("INSERT INTO items SELECT g, 'old' FROM generate_series(1, 2000) g")
    server = make_server(tmp_path).start()
    try:
        duck = tmp_path / "s.duckdb"
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, "snap", duck=duck)), "-start")
        wait_streaming(pgdb, "snap_slot")
        out = server.admin_json("publication", "sync", "-flow-id", "snap", "-tables", "public.items", "-mode", "add",
                                "-snapshot", "-pause", "-resume")
        assert out["added"] == ["public.items"] and out["snapshot_tables"] == ["public.items"]
        deadline = time.monotonic() + 120
        while "backfill done" not in server.worker_log("snap") or \
                server.admin_json("flow", "get", "-flow-id", "snap")["state"] != "FLOW_STATE_RUNNING":
            assert time.monotonic() < deadline, server.worker_log("snap")[-4000:]
            time.sleep(0.3)
        wait_streaming(pgdb, "snap_slot")
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("UPDATE items SET note = 'new' WHERE id <= 5")
            c.execute("INSERT INTO items VALUES (2001, 'new')")
        server.wait_checkpoint("snap", current_lsn(pgdb))
        server.admin("flow", "stop", "-flow-id", "snap")
        assert duck_rows(duck, "items") == pg_rows(pgdb, "items"), server.worker_log("snap")[-4000:]
    finally:
        server.stop()


def _regclass(dsn: str, name: str):
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0]


def test_backfill_status(tmp_path, pgdb):
    """wallaby-admin backfill status: never ran (asking creates nothing on the source), finished after a backfill,
    running while a backfill worker's session is on the source, unfinished with destinations that differ (a state
    written as a killed run leaves it), nothing kept with snapshot_state_backend=none; an unknown flow is named."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text); CREATE TABLE items (id int PRIMARY KEY)")
        c.execute("INSERT INTO orders SELECT g, repeat('n', g % 100) FROM generate_series(1, 3000) g")
        c.execute("INSERT INTO items SELECT generate_series(1, 500)")
    server = make_server(tmp_path).start()
    try:
        path = flow_file(tmp_path, pgdb, "bfs", duck=tmp_path / "b.duckdb", tables="public.orders,public.items")
        server.admin("flow", "create", "-file", str(path))
        out = server.admin("backfill", "status", "-flow-id", "bfs").stdout
        assert out.startswith("flow bfs: backfill never ran\nstate store: postgres, wallaby.snapshot_state in"), out
        assert "no backfill of flow 'bfs' is stored" in out
        assert _regclass(pgdb, "wallaby.snapshot_state") is None  # asking created nothing

        done = subprocess.run([*WORKER, "-flow-id", "bfs", "-mode", "backfill", "-partition-count", "2"],
                              env=server.env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        got = server.admin_json("backfill", "status", "-flow-id", "bfs")
        assert (got["state"], got["backend"]) == ("BACKFILL_STATE_FINISHED", "postgres")
        assert "running_detail" not in got
        assert {"started_at", "updated_at", "finished_at"} <= set(got)
        tables = {t["table"]: t for t in got["tables"]}
        assert list(tables) == ["public.items", "public.orders"]
        for name, rows in (("public.items", "500"), ("public.orders", "3000")):
            t = tables[name]
            assert (t["state"], t["parts_total"], t["parts_done"], t["rows"]) == ("BACKFILL_STATE_FINISHED", 2, 2, rows)
            assert t["destinations"] == [{"destination": "duck", "rows": rows, "parts_done": 2}]
            assert [p["part"] for p in t["parts"]] == [f"{name}#1/2", f"{name}#2/2"]
            assert all(p["done"] for p in t["parts"])
            assert "started_at" in t and "updated_at" in t
        out = server.admin("backfill", "status", "-flow-id", "bfs").stdout
        assert out.startswith("flow bfs: backfill finished\n") and "started 20" in out and "finished 20" in out
        rows = [line.split()[:4] for line in out.splitlines() if line.startswith("public.")]
        assert rows == [["public.items", "finished", "2/2", "500"], ["public.orders", "finished", "2/2", "3000"]]

        with psycopg.connect(pgdb, autocommit=True, application_name="wallaby-backfill:bfs"):  # a worker's session
            got = server.admin_json("backfill", "status", "-flow-id", "bfs")
            assert got["state"] == "BACKFILL_STATE_RUNNING" and got["running_detail"].startswith("1 session ")
            out = server.admin("backfill", "status", "-flow-id", "bfs").stdout
            assert out.startswith("flow bfs: backfill running\n") and "running: 1 session 'wallaby-backfill:bfs'" in out

        # Two destinations, a run killed midway (the state as it leaves it): unfinished, destinations differ.
        spec = json.loads(path.read_text())
        spec.update(id="bfs2", name="bfs2")
        spec["destinations"].append({"name": "duck2", "type": "duckdb", "options": {"dsn": str(tmp_path / "c.duckdb")}})
        path2 = tmp_path / "bfs2.json"
        path2.write_text(json.dumps(spec))
        server.admin("flow", "create", "-file", str(path2))
        with psycopg.connect(pgdb, autocommit=True) as c:
            parts = plan_parts(c, "public.orders", 2)
        state = PostgresSnapshotState(pgdb, "wallaby", "snapshot_state")
        state.start("bfs2", parts)
        first, second = parts[0].key, parts[1].key
        state.record("bfs2", "duck", [SnapshotMark(first, parts[0].end_block, True, 1500),
                                      SnapshotMark(second, parts[1].first_block + 1, False, 40)])
        state.record("bfs2", "duck2", [SnapshotMark(first, 3, False, 700)])
        got = server.admin_json("backfill", "status", "-flow-id", "bfs2")
        assert got["state"] == "BACKFILL_STATE_UNFINISHED" and "finished_at" not in got
        assert "wallaby-worker -flow-id bfs2 -mode backfill` resumes it" in got["note"]
        [t] = got["tables"]
        assert (t["state"], t.get("parts_done", 0), t["rows"], t["destinations_differ"]) == \
            ("BACKFILL_STATE_UNFINISHED", 0, "700", True)
        assert t["destinations"] == [{"destination": "duck", "rows": "1540", "parts_done": 1},
                                     {"destination": "duck2", "rows": "700"}]
        assert [p.get("rows") for p in t["parts"]] == ["700", None]  # per part: the least over the destinations
        out = server.admin("backfill", "status", "-flow-id", "bfs2").stdout
        lines = [line.split() for line in out.splitlines()]
        i = next(n for n, words in enumerate(lines) if words[:1] == ["public.orders"])
        assert lines[i][:4] == ["public.orders", "unfinished", "0/2", "700"], out
        assert lines[i + 1] == ["duck", "1/2", "1540"] and lines[i + 2] == ["duck2", "0/2", "700"], out

        # snapshot_state_backend=none: nothing kept; where to look instead
        spec.update(id="bfn", name="bfn")
        spec["source"]["options"]["snapshot_state_backend"] = "none"
        path3 = tmp_path / "bfn.json"
        path3.write_text(json.dumps(spec))
        server.admin("flow", "create", "-file", str(path3))
        out = server.admin("backfill", "status", "-flow-id", "bfn").stdout
        assert out.startswith("flow bfn: backfill unknown (no state kept)\nstate store: none\n"), out
        assert "no backfill state is kept for flow 'bfn'" in out and "bfn.log" in out

        missing = server.admin("backfill", "status", "-flow-id", "nope", check=False)
        assert missing.returncode == 1 and "NOT_FOUND: no flow 'nope'" in missing.stderr
        assert "wallaby-admin flow list" in missing.stderr
        usage = server.admin("backfill", "status", check=False)
        assert usage.returncode == 2 and "-flow-id" in usage.stderr
    finally:
        server.stop()


def test_backfill_status_from_a_state_file_of_before(tmp_path, pgdb):
    """snapshot_state_backend=file: a state file written before the status times were kept (no started_at,
    finished_at, part_updated_at) still reads, without times; a file that is not there is a backfill that never
    ran; one of the current kind gives each table's last update."""
    path = tmp_path / "state.json"
    opts = SimpleNamespace(dsn=pgdb, snapshot_state_backend="file", snapshot_state_path=str(path))
    assert backfill_status("f", opts, ["duck"]).state == "never_ran"
    assert not path.exists()  # asking created nothing
    path.write_text(json.dumps({"f": {
        "parts": [{"table": "public.t", "index": 0, "count": 2, "first_block": 0, "end_block": 5},
                  {"table": "public.t", "index": 1, "count": 2, "first_block": 5, "end_block": None}],
        "progress": {"duck": {"public.t#1/2": {"next_block": 5, "rows": 100, "done": True},
                              "public.t#2/2": {"next_block": 7, "rows": 20, "done": False}}},
        "finished": False}}))
    st = backfill_status("f", opts, ["duck"])
    assert (st.state, st.started_at, st.updated_at, st.finished_at) == ("unfinished", None, None, None)
    [t] = st.tables
    assert (t.table, t.state, t.parts_done, t.parts_total, t.rows, t.destinations_differ) == \
        ("public.t", "unfinished", 1, 2, 120, False)
    assert [(p.part, p.next_block, p.rows, p.done) for p in t.parts] == \
        [("public.t#1/2", 5, 100, True), ("public.t#2/2", 7, 20, False)]
    # the current kind: started, each part's last record, finished
    store = FileSnapshotState(str(path))
    store.start("g", [Part("public.t", 0, 1, 0, None)])
    store.record("g", "duck", [SnapshotMark("public.t#1/1", 9, True, 50)])
    store.finish("g")
    st = backfill_status("g", opts, ["duck"])
    assert st.state == "finished" and None not in (st.started_at, st.updated_at, st.finished_at)
    assert st.tables[0].updated_at == st.updated_at and st.tables[0].rows == 50
    assert backfill_status("f", opts, ["duck"]).state == "unfinished"  # the other flow's entry is untouched
