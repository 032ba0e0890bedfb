"""Fan-out policies: parallelism, ack_policy all|primary, failure_mode drop_slot, give_up_policy."""

from __future__ import annotations

import json
import os
import subprocess
import time

import psycopg

from tests import WORKER
from tests.apiserver import ROOT, duck_rows, flow_file, free_port, make_server, pg_rows
from wallaby.state.checkpoints import open_store
from wallaby.v1 import types_pb2


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "store.db"), WALLABY_EPOCH_INTERVAL="300ms",
               WALLABY_SPOOL_DIR=str(tmp_path / "spool"), WALLABY_SPOOL_DRAIN_TIMEOUT="60")
    return env


def _run(tmp_path, flow: dict) -> subprocess.CompletedProcess:
    path = tmp_path / f"{flow['id']}.json"
    path.write_text(json.dumps(flow))
    return subprocess.run([*WORKER, "-flow-file", str(path), "-max-empty-reads", "2"],
                          env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=180)


def _table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")


def _write(dsn: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        base = c.execute("SELECT coalesce(max(id), 0) + 1 FROM orders").fetchone()[0]
        c.execute("INSERT INTO orders SELECT g, 'n' || g FROM generate_series(%s::int, %s::int) g",
                  (base, base + n - 1))
        c.execute("UPDATE orders SET note = 'u' WHERE id % 5 = 0")


def _slot_holds_changes(dsn: str, slot: str, pub: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version',"
                         " '1', 'publication_names', %s)", (slot, pub)).fetchone()[0]


def test_parallel_destinations(tmp_path, pgdb):
    _table(pgdb)
    flow = json.loads(flow_file(tmp_path, pgdb, "par", duck=tmp_path / "a.duckdb").read_text())
    flow["destinations"].append({"name": "b", "type": "duckdb", "options": {"dsn": str(tmp_path / "b.duckdb")}})
    flow["parallelism"] = 2
    assert _run(tmp_path, flow).returncode == 0
    _write(pgdb, 300)
    out = _run(tmp_path, flow)
    assert out.returncode == 0, out.stderr[-3000:]
    assert duck_rows(tmp_path / "a.duckdb") == duck_rows(tmp_path / "b.duckdb") == pg_rows(pgdb)


def test_ack_policy_primary_secondary_down_then_back(tmp_path, pgdb):
    """A secondary that is down does not hold the slot; it catches up from its spool when it returns."""
    _table(pgdb)
    port = free_port()
    flow = json.loads(flow_file(tmp_path, pgdb, "prim", duck=tmp_path / "primary.duckdb").read_text())
    flow["destinations"].append({"name": "mirror", "type": "grpc", "options": {
        "endpoint": f"127.0.0.1:{port}", "flow_id": "mirror", "max_retries": "0", "timeout": "2s"}})
    flow["config"] = {"ack_policy": "primary", "primary_destination": "duck"}
    env_all = dict(flow, config={"ack_policy": "all"}, id="allp", name="allp")
    assert _run(tmp_path, flow).returncode == 0
    _write(pgdb, 200)
    out = _run(tmp_path, flow)
    assert out.returncode == 0, out.stderr[-3000:]
    assert duck_rows(tmp_path / "primary.duckdb") == pg_rows(pgdb)
    assert _slot_holds_changes(pgdb, "prim_slot", "prim_pub") == 0  # the slot advanced with the primary
    assert (tmp_path / "spool" / "prim" / "mirror" / "spool.log").stat().st_size > 0
    store = open_store(_env(tmp_path))
    assert store.get("prim", "prim_slot") is not None
    store.close()

    # The secondary comes back: a wallaby whose flow "mirror" writes a DuckDB file.
    (tmp_path / "b").mkdir()
    receiver = make_server(tmp_path / "b", WALLABY_GRPC_LISTEN=f"127.0.0.1:{port}").start()
    try:
        receiver.admin("flow", "create", "-file", str(flow_file(tmp_path / "b", pgdb, "mirror",
                                                               duck=tmp_path / "mirror.duckdb")))
        _write(pgdb, 10)
        out = _run(tmp_path, flow)  # drains the spool, then the new changes
        assert out.returncode == 0, out.stderr[-3000:]
    finally:
        receiver.stop()
    assert duck_rows(tmp_path / "mirror.duckdb") == pg_rows(pgdb)
    assert (tmp_path / "spool" / "prim" / "mirror" / "spool.log").stat().st_size == 0

    # The same with ack_policy=all: the secondary holds the slot; the worker fails.
    _table_flow = env_all
    _table_flow["source"] = dict(flow["source"], options=dict(flow["source"]["options"], slot="allp_slot",
                                                              publication="allp_pub"))
    _table_flow["destinations"] = [dict(d) for d in flow["destinations"]]
    _table_flow["destinations"][0] = {"name": "duck", "type": "duckdb",
                                      "options": {"dsn": str(tmp_path / "all.duckdb")}}
    assert _run(tmp_path, _table_flow).returncode == 0
    _write(pgdb, 5)
    out = _run(tmp_path, _table_flow)
    assert out.returncode == 75 and "UNAVAILABLE" in out.stderr  # transient (EX_TEMPFAIL)
    assert _slot_holds_changes(pgdb, "allp_slot", "allp_pub") > 0


def test_failure_mode_drop_slot(tmp_path, pgdb):
    _table(pgdb)
    server = make_server(tmp_path, WALLABY_WORKER_MAX_RESTARTS="0").start()
    try:
        flow = json.loads(flow_file(tmp_path, pgdb, "dropper", duck=tmp_path / "x.duckdb").read_text())
        flow["destinations"] = [{"name": "gone", "type": "grpc", "options": {
            "endpoint": "127.0.0.1:1", "max_retries": "0", "timeout": "1s"}}]
        flow["config"] = {"failure_mode": "drop_slot"}
        path = tmp_path / "dropper.json"
        path.write_text(json.dumps(flow))
        server.admin("flow", "create", "-file", str(path), "-start")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the worker creates the slot, then fails on the first change
            with psycopg.connect(pgdb, autocommit=True) as c:
                if c.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'dropper_slot'").fetchone():
                    break
            time.sleep(0.2)
        _write(pgdb, 3)
        while time.monotonic() < deadline and server.get("dropper").state != types_pb2.FLOW_STATE_FAILED:
            time.sleep(0.3)
        failed = server.get("dropper")
        assert failed.state == types_pb2.FLOW_STATE_FAILED, server.worker_log("dropper")
        assert "dropped replication slot 'dropper_slot'" in failed.state_reason
        with psycopg.connect(pgdb, autocommit=True) as c:
            assert not c.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'dropper_slot'").fetchone()
        assert "DROPPED replication slot" in server.log_path.read_text()
    finally:
        server.stop()
