"""The API server end to end: a real `wallaby` process, real workers, real Postgres and DuckDB."""

from __future__ import annotations

import json
import os
import signal
import time

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.apiserver import current_lsn, duck_rows, flow_file, make_server, pg_rows, wait_streaming
from wallaby.v1 import flow_pb2, types_pb2


def _setup_source(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")


def _write(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql)


def _wait_state(server, flow_id: str, state: int, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow = server.get(flow_id)
        if flow.state == state:
            return flow
        time.sleep(0.3)
    raise AssertionError(f"flow {flow_id} is {types_pb2.FlowState.Name(flow.state)} ({flow.state_reason});"
                         f" worker log:\n{server.worker_log(flow_id)}")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, pg):
    """The flow store: a SQLite file, or a Postgres database of its own."""
    if request.param == "sqlite":
        yield None
        return
    import uuid

    name = "store_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield pg.dsn(name)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_lifecycle_end_to_end(tmp_path, pgdb, store):
    """create -> start -> rows flow -> pause -> resume -> update (destination added, state kept) -> stop -> cleanup;
    a server restart keeps every flow and its state, and relaunches running flows."""
    _setup_source(pgdb)
    duck, duck2 = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    server = make_server(tmp_path, store).start()
    try:
        path = flow_file(tmp_path, pgdb, "orders", duck=duck)
        out = server.admin("flow", "create", "-file", str(path))
        assert "orders" in out.stdout and "created" in out.stdout
        assert server.get("orders").state == types_pb2.FLOW_STATE_CREATED

        server.admin("flow", "start", "-flow-id", "orders")
        wait_streaming(pgdb, "orders_slot")
        _write(pgdb, "INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 300) g")
        server.wait_checkpoint("orders", current_lsn(pgdb))
        flow = server.admin_json("flow", "pause", "-flow-id", "orders")
        assert flow["state"] == "FLOW_STATE_PAUSED"
        assert duck_rows(duck) == pg_rows(pgdb)  # the worker has let go of the file: readable

        # Changes made while paused are not lost: the slot holds them.
        _write(pgdb, "UPDATE orders SET note = 'u' WHERE id <= 50; DELETE FROM orders WHERE id > 280")
        gen_before = server.get("orders").generation
        server.admin("flow", "resume", "-flow-id", "orders")
        assert server.get("orders").generation > gen_before  # a new worker generation
        server.wait_checkpoint("orders", current_lsn(pgdb))

        # UpdateFlow: a second destination; the state (running) and checkpoints are kept.
        spec = json.loads(path.read_text())
        spec["destinations"].append({"name": "duck2", "type": "duckdb", "options": {"dsn": str(duck2)}})
        path.write_text(json.dumps(spec))
        server.admin("flow", "update", "-file", str(path))
        updated = server.get("orders")
        assert updated.state == types_pb2.FLOW_STATE_RUNNING
        assert [d.name for d in updated.destinations] == ["duck", "duck2"]
        _write(pgdb, "INSERT INTO orders SELECT g, 'late' FROM generate_series(1001, 1010) g")
        server.wait_checkpoint("orders", current_lsn(pgdb))

        # A server restart keeps the flow running: its worker is relaunched.
        assert server.stop() == 0
        server.start()
        assert server.get("orders").state == types_pb2.FLOW_STATE_RUNNING
        _write(pgdb, "INSERT INTO orders VALUES (2000, 'after restart')")
        server.wait_checkpoint("orders", current_lsn(pgdb))

        server.admin("flow", "stop", "-flow-id", "orders")
        assert server.get("orders").state == types_pb2.FLOW_STATE_STOPPED
        assert duck_rows(duck) == pg_rows(pgdb)
        # The new destination got every change from the update on (no backfill in this version).
        assert (1001, "late") in duck_rows(duck2) and (2000, "after restart") in duck_rows(duck2)

        listed = server.admin("flow", "list").stdout
        assert "orders" in listed and "stopped" in listed
        cps = server.admin_json("checkpoint", "list")
        assert cps["checkpoints"][0]["flow_id"] == "orders"

        server.admin("flow", "cleanup", "-flow-id", "orders")
        with psycopg.connect(pgdb, autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'orders_slot'"
                             ).fetchone()[0] == 0
            assert c.execute("SELECT count(*) FROM pg_publication WHERE pubname = 'orders_pub'").fetchone()[0] == 0
        server.admin("flow", "delete", "-flow-id", "orders")
        with pytest.raises(grpc.RpcError) as err:
            server.get("orders")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def _flow_msg(dsn: str, flow_id: str = "bad", **opts) -> types_pb2.Flow:
    return types_pb2.Flow(
        id=flow_id, name=flow_id,
        source=types_pb2.Endpoint(name="pg", type=types_pb2.ENDPOINT_TYPE_POSTGRES,
                                  options={"dsn": dsn, "slot": "s1", "publication": "p1", **opts}),
        destinations=[types_pb2.Endpoint(name="d", type=types_pb2.ENDPOINT_TYPE_DUCKDB,
                                         options={"dsn": ":memory:"})])


def test_status_codes_and_field_names(tmp_path, pgdb):
    server = make_server(tmp_path).start()
    flows, md = server.flows, server.metadata()
    try:
        def code_of(call, request):
            with pytest.raises(grpc.RpcError) as err:
                call(request, metadata=md, timeout=30)
            return err.value.code(), err.value.details()

        # Every bad field in one INVALID_ARGUMENT, with a did-you-mean; nothing stored.
        bad = _flow_msg(pgdb, batch_sise="10", status_interval="soon")
        bad.destinations.add(name="k", type=types_pb2.ENDPOINT_TYPE_KAFKA, options={"topic": "t"})
        code, details = code_of(flows.CreateFlow, flow_pb2.CreateFlowRequest(flow=bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "source.options.batch_sise" in details and "did you mean 'batch_size'" in details
        assert "source.options.status_interval" in details and "destinations[1].options.brokers" in details
        assert flows.ListFlows(flow_pb2.ListFlowsRequest(), metadata=md).flows == []

        code, details = code_of(flows.CreateFlow, flow_pb2.CreateFlowRequest(flow=types_pb2.Flow(name="x")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "source" in details and "destinations" in details

        flows.CreateFlow(flow_pb2.CreateFlowRequest(flow=_flow_msg(pgdb, "ok")), metadata=md)
        assert code_of(flows.CreateFlow, flow_pb2.CreateFlowRequest(flow=_flow_msg(pgdb, "ok")))[0] == \
            grpc.StatusCode.ALREADY_EXISTS
        assert code_of(flows.GetFlow, flow_pb2.GetFlowRequest(flow_id="nope"))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(flows.GetFlow, flow_pb2.GetFlowRequest())[0] == grpc.StatusCode.INVALID_ARGUMENT
        # Illegal transitions: FAILED_PRECONDITION with the reason.
        code, details = code_of(flows.PauseFlow, flow_pb2.PauseFlowRequest(flow_id="ok"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "cannot pause" in details
        code, details = code_of(flows.ResumeFlow, flow_pb2.ResumeFlowRequest(flow_id="ok"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "use StartFlow" in details
        code, details = code_of(flows.StopFlow, flow_pb2.StopFlowRequest(flow_id="ok"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "never started" in details

        # Responses never show the DSN password; an UpdateFlow that sends the mask back keeps the secret.
        secret_dsn = pgdb.replace("postgres@", "postgres:hunter2@")
        created = flows.CreateFlow(flow_pb2.CreateFlowRequest(flow=_flow_msg(secret_dsn, "sec")), metadata=md)
        assert "hunter2" not in str(created) and "***" in created.source.options["dsn"]
        created.parallelism = 2
        flows.UpdateFlow(flow_pb2.UpdateFlowRequest(flow=created), metadata=md)
        from wallaby.state.checkpoints import open_store

        store = open_store(server.env)
        assert store.flow_store.get("sec").spec["source"]["options"]["dsn"] == secret_dsn
        assert store.flow_store.get("sec").spec["parallelism"] == 2

        # GetBackfillStatus: the flow named, a clear error for what is missing, never a password.
        status = flows.GetBackfillStatus(flow_pb2.GetBackfillStatusRequest(flow_id="sec"), metadata=md, timeout=30)
        assert status.state == flow_pb2.BACKFILL_STATE_NEVER_RAN and "hunter2" not in str(status)
        assert code_of(flows.GetBackfillStatus, flow_pb2.GetBackfillStatusRequest())[0] == \
            grpc.StatusCode.INVALID_ARGUMENT
        code, details = code_of(flows.GetBackfillStatus, flow_pb2.GetBackfillStatusRequest(flow_id="nope"))
        assert code == grpc.StatusCode.NOT_FOUND and "no flow 'nope'" in details and "flow list" in details
        away = _flow_msg("postgresql://u:hunter2@127.0.0.1:1/db?connect_timeout=2", "away")
        flows.CreateFlow(flow_pb2.CreateFlowRequest(flow=away), metadata=md)  # accepted: the source is checked later
        code, details = code_of(flows.GetBackfillStatus, flow_pb2.GetBackfillStatusRequest(flow_id="away"))
        assert code == grpc.StatusCode.UNAVAILABLE and "127.0.0.1:1" in details and "hunter2" not in details
        bare = store.flow_store.get("ok").spec
        bare["source"]["options"] = {}
        store.flow_store.create("bare", "bare", bare)
        code, details = code_of(flows.GetBackfillStatus, flow_pb2.GetBackfillStatusRequest(flow_id="bare"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "flow 'bare' has no source options" in details
        assert "wallaby-admin flow update" in details
        store.close()
        assert "hunter2" not in server.log_path.read_text()
    finally:
        server.stop()


def test_wire_format_enforced(tmp_path, pgdb):
    server = make_server(tmp_path, WALLABY_WIRE_FORMAT="arrow", WALLABY_WIRE_ENFORCE="true").start()
    try:
        flow = _flow_msg(pgdb, "wf")
        flow.wire_format = types_pb2.WIRE_FORMAT_JSON
        with pytest.raises(grpc.RpcError) as err:
            server.flows.CreateFlow(flow_pb2.CreateFlowRequest(flow=flow), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "wire_format" in err.value.details() and "'arrow'" in err.value.details()
        flow.wire_format = types_pb2.WIRE_FORMAT_ARROW
        assert server.flows.CreateFlow(flow_pb2.CreateFlowRequest(flow=flow), timeout=30).id == "wf"
    finally:
        server.stop()


def test_token_auth(tmp_path, pgdb):
    server = make_server(tmp_path, WALLABY_API_TOKEN="t0ken").start()
    try:
        flows = server.flows
        for md in [(), (("authorization", "Bearer wrong"),)]:
            with pytest.raises(grpc.RpcError) as err:
                flows.ListFlows(flow_pb2.ListFlowsRequest(), metadata=md, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert flows.ListFlows(flow_pb2.ListFlowsRequest(), metadata=server.metadata(), timeout=10).flows == []
        health = health_pb2_grpc.HealthStub(server.channel())
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        env = dict(server.env, WALLABY_API_TOKEN="")
        denied = server.admin("flow", "list", check=False)
        assert denied.returncode == 0  # the admin sends WALLABY_API_TOKEN from its environment
        server.env = env
        denied = server.admin("flow", "list", check=False)
        assert denied.returncode != 0 and "UNAUTHENTICATED" in denied.stderr
    finally:
        server.stop()


def test_dead_worker_is_restarted_then_reported(tmp_path, pgdb):
    """A killed worker is restarted (new generation); one that fails permanently ends FAILED at once with its reason."""
    _setup_source(pgdb)
    server = make_server(tmp_path, WALLABY_WORKER_MAX_RESTARTS="1").start()
    try:
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, "w1", duck=tmp_path / "w.duckdb")))
        server.admin("flow", "start", "-flow-id", "w1")
        wait_streaming(pgdb, "w1_slot")
        _write(pgdb, "INSERT INTO orders VALUES (1, 'a')")
        server.wait_checkpoint("w1", current_lsn(pgdb))
        gen = server.get("w1").generation
        worker_pid = _worker_pid(tmp_path, "w1")
        os.kill(worker_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while server.get("w1").generation == gen and time.monotonic() < deadline:
            time.sleep(0.3)
        assert server.get("w1").generation > gen and server.get("w1").state == types_pb2.FLOW_STATE_RUNNING
        _write(pgdb, "INSERT INTO orders VALUES (2, 'b')")
        server.wait_checkpoint("w1", current_lsn(pgdb))
        server.admin("flow", "stop", "-flow-id", "w1")
        assert duck_rows(tmp_path / "w.duckdb") == pg_rows(pgdb)

        # A flow whose table does not exist fails every time: a permanent failure (exit 1), so FAILED at once with
        # the reason, never restarted (one generation only).
        path = flow_file(tmp_path, pgdb, "w2", duck=tmp_path / "w2.duckdb", tables="public.missing")
        server.admin("flow", "create", "-file", str(path), "-start")
        failed = _wait_state(server, "w2", types_pb2.FLOW_STATE_FAILED, timeout=90)
        assert "public.missing" in failed.state_reason and "gave up" not in failed.state_reason
        assert "restarting" not in failed.state_reason and server.get("w2").generation == 1
    finally:
        server.stop()


def _worker_pid(tmp_path, flow_id: str) -> int:
    import subprocess

    out = subprocess.run(["pgrep", "-f", f"wallaby.control.worker -flow-id {flow_id} "], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert pids, f"no worker process of {flow_id}"
    return pids[0]


def test_tls(tmp_path):
    import subprocess
    from pathlib import Path

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    server = make_server(tmp_path, WALLABY_GRPC_TLS_CERT=str(cert), WALLABY_GRPC_TLS_KEY=str(key))
    server.tls_ca = Path(cert)
    server.start()
    try:
        assert server.flows.ListFlows(flow_pb2.ListFlowsRequest(), timeout=10).flows == []
        ok = server.admin("flow", "list", "-tls", "-ca-file", str(cert))
        assert "ID" in ok.stdout
        plain = server.admin("flow", "list", "-timeout", "5", check=False)
        assert plain.returncode != 0  # a plaintext client cannot talk to a TLS server
    finally:
        server.stop()
    # Half a TLS configuration is refused at start, naming the variable.
    bad = make_server(tmp_path, WALLABY_GRPC_TLS_CERT=str(cert))
    with pytest.raises(RuntimeError, match="WALLABY_GRPC_TLS_KEY"):
        bad.start()


def test_reconfigure_flow_pauses_updates_and_resumes(tmp_path, pgdb):
    _setup_source(pgdb)
    server = make_server(tmp_path).start()
    try:
        path = flow_file(tmp_path, pgdb, "rc", duck=tmp_path / "rc.duckdb")
        server.admin("flow", "create", "-file", str(path), "-start")
        wait_streaming(pgdb, "rc_slot")
        flow = server.get("rc")
        gen = flow.generation
        flow.parallelism = 3
        out = server.flows.ReconfigureFlow(flow_pb2.ReconfigureFlowRequest(flow=flow, pause_first=True,
                                                                           resume_after=True), timeout=120)
        assert out.parallelism == 3 and out.state == types_pb2.FLOW_STATE_RUNNING and out.generation > gen
        _write(pgdb, "INSERT INTO orders VALUES (1, 'x')")
        server.wait_checkpoint("rc", current_lsn(pgdb))
        server.admin("flow", "stop", "-flow-id", "rc")
        assert duck_rows(tmp_path / "rc.duckdb") == pg_rows(pgdb)
    finally:
        server.stop()


def test_bytewax_run_with_a_stored_flow(tmp_path, pgdb):
    """`python -m bytewax.run dataflows.flow:flow` with WALLABY_FLOW_ID reads the flow from the flow store."""
    import subprocess
    import sys

    from tests.apiserver import ROOT, server_env
    from wallaby.core.spec import load_flow
    from wallaby.state.checkpoints import open_store

    _setup_source(pgdb)
    env = server_env(tmp_path)
    spec = load_flow(flow_file(tmp_path, pgdb, "bw", duck=tmp_path / "bw.duckdb"))
    store = open_store(env)
    store.flow_store.create(spec.id, spec.name, spec.model_dump(mode="json"))
    env.update(WALLABY_FLOW_ID="bw", WALLABY_MAX_EMPTY_READS="2")
    run = [sys.executable, "-m", "bytewax.run", "dataflows.flow:flow"]
    out = subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    _write(pgdb, "INSERT INTO orders SELECT g, 'b' FROM generate_series(1, 20) g")
    out = subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert duck_rows(tmp_path / "bw.duckdb") == pg_rows(pgdb)
    assert store.flow_store.get("bw").generation == 2  # each run claimed a generation
    store.close()
