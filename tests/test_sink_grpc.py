"""gRPC destination -> another wallaby's IngestService -> its DuckDB destination."""

from __future__ import annotations

import json
import os
import subprocess

import grpc
import psycopg
import pytest

from tests import SERVER, WORKER
from tests.apiserver import ROOT, duck_rows, flow_file, make_server, pg_rows
from wallaby.v1 import ingest_pb2, ingest_pb2_grpc, types_pb2


def _worker(tmp_path, flow: dict, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{flow['id']}.json"
    path.write_text(json.dumps(flow))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "sender.db"), WALLABY_EPOCH_INTERVAL="300ms")
    return subprocess.run([*WORKER, "-flow-file", str(path), "-max-empty-reads", "2",
                           *extra], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


def test_one_wallaby_feeds_another(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    (tmp_path / "b").mkdir()
    receiver = make_server(tmp_path / "b").start()
    try:
        # The receiving flow: its destination is a DuckDB file; its own worker never runs.
        mirror_duck = tmp_path / "mirror.duckdb"
        receiver.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, "mirror", duck=mirror_duck)))

        sender = json.loads(flow_file(tmp_path, pgdb, "sender", duck=tmp_path / "unused.duckdb").read_text())
        for fmt in ("arrow", "json", "avro", "proto", "parquet"):
            sender["destinations"] = [{"name": "remote", "type": "grpc", "options": {
                "endpoint": receiver.addr, "flow_id": "mirror", "destination": "duck", "format": fmt,
                "headers": "x-team:cdc"}}]
            out = _worker(tmp_path, sender)  # first run creates the slot; then changes flow
            assert out.returncode == 0, out.stderr[-3000:]
            with psycopg.connect(pgdb, autocommit=True) as c:
                base = c.execute("SELECT coalesce(max(id), 0) + 1 FROM orders").fetchone()[0]
                c.execute(f"INSERT INTO orders SELECT g, '{fmt}' || g FROM generate_series({base}, {base + 49}) g")
                c.execute(f"UPDATE orders SET note = 'u-{fmt}' WHERE id % 7 = 0")
                c.execute("DELETE FROM orders WHERE id % 11 = 0")
            out = _worker(tmp_path, sender)
            assert out.returncode == 0, out.stderr[-3000:]

        # A running flow's destinations are its worker's: refused.
        stub = ingest_pb2_grpc.IngestServiceStub(receiver.channel())
        with pytest.raises(grpc.RpcError) as err:
            stub.IngestBatch(ingest_pb2.IngestBatchRequest(flow_id="nope", wire_format=types_pb2.WIRE_FORMAT_JSON,
                                                           payload=b"{}"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        # record_json carries no schema: the sender's worker stops with the receiver's reason.
        sender["destinations"][0]["options"]["payload_mode"] = "record_json"
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO orders VALUES (100000, 'x')")
        out = _worker(tmp_path, sender)
        assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr and "payload_mode=wire" in out.stderr
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("DELETE FROM orders WHERE id = 100000")
        sender["destinations"][0]["options"]["payload_mode"] = "wire"
        out = _worker(tmp_path, sender)
        assert out.returncode == 0, out.stderr[-3000:]
    finally:
        receiver.stop()
    assert duck_rows(mirror_duck) == pg_rows(pgdb)


def test_receiver_down_is_retried_then_transient(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    sender = json.loads(flow_file(tmp_path, pgdb, "lonely", duck=tmp_path / "x.duckdb").read_text())
    sender["destinations"] = [{"name": "remote", "type": "grpc", "options": {
        "endpoint": "127.0.0.1:1", "max_retries": "2", "backoff_base": "50ms", "timeout": "2s"}}]
    assert _worker(tmp_path, sender).returncode == 0
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO orders VALUES (1, 'a')")
    out = _worker(tmp_path, sender)
    assert out.returncode == 75 and "UNAVAILABLE" in out.stderr and "after 2 retries" in out.stderr  # transient
    # Nothing was confirmed past the undelivered change: it is still in the slot.
    with psycopg.connect(pgdb, autocommit=True) as c:
        n = c.execute("SELECT count(*) FROM pg_logical_slot_peek_binary_changes('lonely_slot', NULL, NULL,"
                      " 'proto_version', '1', 'publication_names', 'lonely_pub')").fetchone()[0]
    assert n > 0


def test_tls_to_the_receiver(tmp_path, pgdb):
    """insecure=false with tls_ca_file and tls_server_name against a TLS API server."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=wallaby-receiver",
                    "-addext", "subjectAltName=DNS:wallaby-receiver"], check=True, capture_output=True)
    (tmp_path / "b").mkdir()
    receiver = make_server(tmp_path / "b", WALLABY_GRPC_TLS_CERT=str(cert), WALLABY_GRPC_TLS_KEY=str(key))
    try:
        # Server.start() checks health as "localhost"; this certificate names "wallaby-receiver".
        log = open(receiver.log_path, "ab")  # noqa: SIM115
        receiver.proc = subprocess.Popen([*SERVER], env=receiver.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        channel = grpc.secure_channel(receiver.addr, creds,
                                      options=[("grpc.ssl_target_name_override", "wallaby-receiver")])
        grpc.channel_ready_future(channel).result(timeout=60)
        from wallaby.v1 import flow_pb2, flow_pb2_grpc

        flows = flow_pb2_grpc.FlowServiceStub(channel)
        from wallaby.core.spec import load_flow

        spec = load_flow(flow_file(tmp_path, pgdb, "mirror", duck=tmp_path / "tls.duckdb"))
        data = spec.model_dump(mode="json")
        flows.CreateFlow(flow_pb2.CreateFlowRequest(flow=types_pb2.Flow(
            id="mirror", name="mirror",
            source=types_pb2.Endpoint(name="pg", type=types_pb2.ENDPOINT_TYPE_POSTGRES,
                                      options={k: str(v) for k, v in data["source"]["options"].items()}),
            destinations=[types_pb2.Endpoint(name="duck", type=types_pb2.ENDPOINT_TYPE_DUCKDB,
                                             options={"dsn": str(tmp_path / "tls.duckdb")})])), timeout=30)
        channel.close()
        sender = json.loads(flow_file(tmp_path, pgdb, "tlssend", duck=tmp_path / "unused.duckdb").read_text())
        sender["destinations"] = [{"name": "remote", "type": "grpc", "options": {
            "endpoint": receiver.addr, "flow_id": "mirror", "insecure": "false", "tls_ca_file": str(cert),
            "tls_server_name": "wallaby-receiver"}}]
        assert _worker(tmp_path, sender).returncode == 0
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO orders VALUES (1, 'secure'), (2, 'channel')")
        out = _worker(tmp_path, sender)
        assert out.returncode == 0, out.stderr[-3000:]
        # Without the CA the handshake fails: a clear transient error after the retries.
        sender["destinations"][0]["options"].update(tls_ca_file="", max_retries="0")
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("INSERT INTO orders VALUES (3, 'x')")
        out = _worker(tmp_path, sender)
        assert out.returncode == 75 and "UNAVAILABLE" in out.stderr  # transient (EX_TEMPFAIL)
    finally:
        receiver.stop()
    assert duck_rows(tmp_path / "tls.duckdb") == [(1, "secure"), (2, "channel")]
