"""An open control plane is refused: on an address other than loopback, ``wallaby`` needs WALLABY_API_TOKEN, or
WALLABY_API_INSECURE=true saying an open API is meant; the auth mode is logged at start."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest

from tests import SERVER
from tests.apiserver import ROOT, free_port, make_server, server_env
from wallaby.control.api.server import ServerSettings
from wallaby.v1 import flow_pb2


def _log_lines(server) -> list[dict]:
    out = []
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize("listen", [":{port}", "0.0.0.0:{port}", "[::]:{port}"])
def test_refuses_every_interface_without_a_token(tmp_path, listen):
    env = server_env(tmp_path, WALLABY_GRPC_LISTEN=listen.format(port=free_port()))
    r = subprocess.run([*SERVER], env=env, capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "WALLABY_API_TOKEN" in lines[0] and "WALLABY_API_INSECURE" in lines[0]
    assert lines[0].startswith(f"wallaby: refusing to listen on {env['WALLABY_GRPC_LISTEN']}")
    assert not (tmp_path / "store.db").exists()  # refused before anything was opened


def test_starts_on_every_interface_with_a_token(tmp_path):
    server = make_server(tmp_path, WALLABY_GRPC_LISTEN=f"0.0.0.0:{free_port()}", WALLABY_API_TOKEN="t0ken").start()
    try:
        with pytest.raises(grpc.RpcError) as err:
            server.flows.ListFlows(flow_pb2.ListFlowsRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert server.flows.ListFlows(flow_pb2.ListFlowsRequest(), metadata=server.metadata(), timeout=10).flows == []
    finally:
        server.stop()
    auth = [r for r in _log_lines(server) if r["msg"].startswith("API auth:")]
    assert [(r["level"], r["msg"]) for r in auth] == [("info", "API auth: bearer token (WALLABY_API_TOKEN)")]


def test_starts_on_every_interface_when_insecure_is_meant_and_warns(tmp_path):
    server = make_server(tmp_path, WALLABY_GRPC_LISTEN=f"0.0.0.0:{free_port()}", WALLABY_API_INSECURE="true").start()
    try:
        assert server.flows.ListFlows(flow_pb2.ListFlowsRequest(), timeout=10).flows == []  # open to anyone
    finally:
        server.stop()
    auth = [r for r in _log_lines(server) if r["msg"].startswith("API auth:")]
    assert len(auth) == 1 and auth[0]["level"] == "warning"
    assert "WALLABY_API_INSECURE=true" in auth[0]["msg"] and "anyone" in auth[0]["msg"]


def test_starts_on_loopback_without_a_token(tmp_path):
    server = make_server(tmp_path).start()  # tests.apiserver listens on 127.0.0.1
    try:
        assert server.env["WALLABY_GRPC_LISTEN"].startswith("127.0.0.1:")
        assert server.flows.ListFlows(flow_pb2.ListFlowsRequest(), timeout=10).flows == []
    finally:
        server.stop()
    auth = [r for r in _log_lines(server) if r["msg"].startswith("API auth:")]
    assert [(r["level"], r["msg"]) for r in auth] == [("info", "API auth: none (loopback address only)")]


def test_a_bad_insecure_value_is_refused(tmp_path):
    env = server_env(tmp_path, WALLABY_GRPC_LISTEN=f"0.0.0.0:{free_port()}", WALLABY_API_INSECURE="sure")
    r = subprocess.run([*SERVER], env=env, capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "WALLABY_API_INSECURE: expected a boolean" in r.stderr


@pytest.mark.parametrize("listen, loopback", [
    (":8080", False), ("0.0.0.0:8080", False), ("[::]:8080", False), ("10.1.2.3:8080", False),
    ("127.0.0.1:8080", True), ("127.0.0.2:8080", True), ("[::1]:8080", True), ("localhost:8080", True),
    ("no-such-host.invalid:8080", False),
])
def test_loopback(listen, loopback):
    settings = ServerSettings.from_env({"WALLABY_GRPC_LISTEN": listen})
    assert settings.loopback() is loopback
    assert (settings.exposure_problem() is None) is loopback
    assert ServerSettings.from_env({"WALLABY_GRPC_LISTEN": listen, "WALLABY_API_TOKEN": "t"}).exposure_problem() is None
    assert ServerSettings.from_env({"WALLABY_GRPC_LISTEN": listen,
                                    "WALLABY_API_INSECURE": "true"}).exposure_problem() is None
