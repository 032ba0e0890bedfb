"""wallaby-admin, grpcurl and examples/grpc/create_flow.sh against a live API server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import psycopg
import pytest

from tests import WORKER
from tests.apiserver import ROOT, current_lsn, duck_rows, flow_file, make_server, pg_rows, wait_streaming
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
