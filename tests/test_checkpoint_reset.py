"""`wallaby-admin checkpoint reset` (ResetCheckpoint) against a live API server, real workers, Postgres and DuckDB."""

from __future__ import annotations

import dataclasses
import time

import duckdb
import grpc
import psycopg
import pytest

from tests.apiserver import current_lsn, duck_rows, flow_file, make_server, pg_rows, wait_streaming
from wallaby.core.identity import SourceIdentity
from wallaby.state.checkpoints import open_store
from wallaby.v1 import checkpoint_pb2, types_pb2


def _orders(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")


def _write(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql)


def _wait_state(server, flow_id: str, state: int, timeout: float = 120):
    """Until the flow is in ``state`` (a bounded poll: a failure may take restarts to become FAILED)."""
    deadline = time.monotonic() + timeout
    while True:
        flow = server.get(flow_id)
        if flow.state == state:
            return flow
        if time.monotonic() > deadline:
            raise AssertionError(f"flow {flow_id} is {types_pb2.FlowState.Name(flow.state)} ({flow.state_reason});"
                                 f" worker log:\n{server.worker_log(flow_id)}")
        time.sleep(0.3)


def _duck_source(path, flow_id: str, dest: str) -> SourceIdentity | None:
    with duckdb.connect(str(path), read_only=True) as c:
        row = c.execute("SELECT source FROM main.__wallaby_state WHERE flow_id = ? AND destination = ?",
                        [flow_id, dest]).fetchone()
    assert row is not None, f"no high-water of {flow_id}/{dest} in {path}"
    return SourceIdentity.from_json(row[0])


def _resets(server, flow_id: str) -> frozenset[str]:
    store = open_store(server.env)
    try:
        return store.resets(flow_id)
    finally:
        store.close()


def test_reset_one_destination_after_a_foreign_high_water(tmp_path, pgdb):
    """A DuckDB high-water of another cluster stops the flow (FAILED, naming the file and both system identifiers,
    nothing written); `checkpoint reset -dest` lets the next start rewrite it with this source's identity, and every
    change the failed start held back arrives."""
    _orders(pgdb)
    duck, fid = tmp_path / "rd.duckdb", "rst_dest"
    server = make_server(tmp_path).start()
    try:
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, fid, duck=duck)), "-start")
        wait_streaming(pgdb, f"{fid}_slot")
        _write(pgdb, "INSERT INTO orders SELECT g, 'a' || g FROM generate_series(1, 50) g")
        server.wait_checkpoint(fid, current_lsn(pgdb))
        server.admin("flow", "stop", "-flow-id", fid)
        assert duck_rows(duck) == pg_rows(pgdb)

        # The high-water now says it came from another cluster (a re-created or restored source).
        real = _duck_source(duck, fid, "duck")
        assert real is not None
        other = dataclasses.replace(real, system_id=str(int(real.system_id) + 1))
        with duckdb.connect(str(duck)) as c:
            c.execute("UPDATE main.__wallaby_state SET source = ? WHERE flow_id = ? AND destination = 'duck'",
                      [other.to_json(), fid])
        before = duck_rows(duck)
        _write(pgdb, "INSERT INTO orders SELECT g, 'b' || g FROM generate_series(51, 60) g")
        server.admin("flow", "start", "-flow-id", fid)
        failed = _wait_state(server, fid, types_pb2.FLOW_STATE_FAILED)
        reason = failed.state_reason
        assert str(duck) in reason, reason  # names the file whose high-water it refused
        assert real.system_id in reason and other.system_id in reason, reason
        assert "checkpoint reset" in reason, reason
        assert duck_rows(duck) == before  # nothing new written

        # Running flows cannot be reset; this one failed, so it can.
        out = server.admin("checkpoint", "reset", "-flow-id", fid, "-dest", "duck")
        assert "destination 'duck'" in out.stdout and "Next start" in out.stdout, out.stdout
        assert _resets(server, fid) == {"duck"}
        assert server.get(fid).state == types_pb2.FLOW_STATE_FAILED  # the reset leaves the state alone

        server.admin("flow", "start", "-flow-id", fid)
        wait_streaming(pgdb, f"{fid}_slot")
        _write(pgdb, "INSERT INTO orders SELECT g, 'c' || g FROM generate_series(61, 70) g;"
                     " UPDATE orders SET note = 'u' WHERE id <= 5")
        server.wait_checkpoint(fid, current_lsn(pgdb))
        server.admin("flow", "stop", "-flow-id", fid)
        assert duck_rows(duck) == pg_rows(pgdb)
        assert len(pg_rows(pgdb)) == 70
        assert _resets(server, fid) == frozenset()  # done: cleared by the worker once its first epoch was confirmed
        assert _duck_source(duck, fid, "duck") == real  # rewritten with this source's identity
        assert "reset" in server.log_path.read_text()  # the request was logged by the server
    finally:
        server.stop()


def test_reset_refused_while_running_then_all_positions(tmp_path, pgdb):
    """Refused (FAILED_PRECONDITION) while the worker runs; once paused, a reset of every position deletes the
    checkpoint rows, and the next worker starts from the slot, discards the high-water and clears the request."""
    _orders(pgdb)
    duck, fid = tmp_path / "ra.duckdb", "rst_all"
    server = make_server(tmp_path).start()
    try:
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, fid, duck=duck)), "-start")
        wait_streaming(pgdb, f"{fid}_slot")
        _write(pgdb, "INSERT INTO orders SELECT g, 'a' FROM generate_series(1, 20) g")
        server.wait_checkpoint(fid, current_lsn(pgdb))

        for extra in ((), ("-dest", "duck")):
            busy = server.admin("checkpoint", "reset", "-flow-id", fid, *extra, check=False)
            assert busy.returncode == 1 and "FAILED_PRECONDITION" in busy.stderr, busy.stderr
            assert "stop or pause the flow first" in busy.stderr and fid in busy.stderr
        assert _resets(server, fid) == frozenset()
        assert server.admin_json("checkpoint", "get", "-flow-id", fid)["checkpoint"]["lsn"]  # kept

        server.admin("flow", "pause", "-flow-id", fid)
        out = server.admin_json("checkpoint", "reset", "-flow-id", fid)
        assert out["flow_id"] == fid and out.get("destination", "") == ""
        assert [c["checkpoint"]["metadata"]["slot"] for c in out["deleted_checkpoints"]] == [f"{fid}_slot"]
        assert out["pending_resets"] == ["*"]
        gone = server.admin("checkpoint", "get", "-flow-id", fid, check=False)
        assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
        again = server.admin("checkpoint", "reset", "-flow-id", fid)  # twice is fine: nothing left to delete
        assert "every stored position reset" in again.stdout and "deleted: none" in again.stdout, again.stdout

        server.admin("flow", "resume", "-flow-id", fid)
        wait_streaming(pgdb, f"{fid}_slot")
        _write(pgdb, "INSERT INTO orders SELECT g, 'b' FROM generate_series(21, 30) g")
        server.wait_checkpoint(fid, current_lsn(pgdb))
        server.admin("flow", "stop", "-flow-id", fid)
        assert duck_rows(duck) == pg_rows(pgdb)
        assert _resets(server, fid) == frozenset()
    finally:
        server.stop()


def test_reset_unknown_destination_and_flow(tmp_path, pgdb):
    _orders(pgdb)
    fid = "rst_bad"
    server = make_server(tmp_path).start()
    try:
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, fid, duck=tmp_path / "rb.duckdb")))
        bad = server.admin("checkpoint", "reset", "-flow-id", fid, "-dest", "dcuk", check=False)
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr, bad.stderr
        assert "no destination 'dcuk'" in bad.stderr and "did you mean 'duck'" in bad.stderr, bad.stderr

        missing = server.admin("checkpoint", "reset", "-flow-id", "nope", check=False)
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "nope" in missing.stderr, missing.stderr

        stub, md = server.checkpoints, server.metadata()
        for request, code in [(checkpoint_pb2.ResetCheckpointRequest(flow_id=fid, destination=""),
                               grpc.StatusCode.INVALID_ARGUMENT),
                              (checkpoint_pb2.ResetCheckpointRequest(), grpc.StatusCode.INVALID_ARGUMENT),
                              (checkpoint_pb2.ResetCheckpointRequest(flow_id="nope", destination="duck"),
                               grpc.StatusCode.NOT_FOUND)]:
            with pytest.raises(grpc.RpcError) as err:
                stub.ResetCheckpoint(request, metadata=md, timeout=30)
            assert err.value.code() == code, err.value.details()
        assert _resets(server, fid) == frozenset() and _resets(server, "nope") == frozenset()
        ok = stub.ResetCheckpoint(checkpoint_pb2.ResetCheckpointRequest(flow_id=fid, destination="duck"),
                                  metadata=md, timeout=30)
        assert ok.destination == "duck" and list(ok.pending_resets) == ["duck"] and not ok.deleted_checkpoints
    finally:
        server.stop()
