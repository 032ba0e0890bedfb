"""A real ``wallaby`` API server process for tests, and helpers to drive it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import ADMIN, SERVER
from wallaby.v1 import checkpoint_pb2, checkpoint_pb2_grpc, ddl_pb2_grpc, flow_pb2, flow_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    token: str = ""
    tls_ca: Path | None = None  # a TLS server: its certificate (self-signed)
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Server:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process writes it while it runs
        self.proc = subprocess.Popen([*SERVER], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wallaby exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                stub = health_pb2_grpc.HealthStub(self.channel())
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return self
            except grpc.RpcError:
                time.sleep(0.2)
        raise RuntimeError(f"wallaby did not become healthy:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 90) -> int:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            if self.tls_ca is not None:
                creds = grpc.ssl_channel_credentials(self.tls_ca.read_bytes())
                self._channel = grpc.secure_channel(f"localhost:{self.port}", creds)
            else:
                self._channel = grpc.insecure_channel(self.addr)
        return self._channel

    def metadata(self) -> tuple:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    @property
    def flows(self) -> flow_pb2_grpc.FlowServiceStub:
        return flow_pb2_grpc.FlowServiceStub(self.channel())

    @property
    def checkpoints(self) -> checkpoint_pb2_grpc.CheckpointServiceStub:
        return checkpoint_pb2_grpc.CheckpointServiceStub(self.channel())

    @property
    def ddl(self) -> ddl_pb2_grpc.DDLServiceStub:
        return ddl_pb2_grpc.DDLServiceStub(self.channel())

    def admin(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run([*ADMIN, *args, "-addr", self.addr], env=self.env,
                             capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and out.returncode != 0:
            raise AssertionError(f"wallaby-admin {' '.join(args)} exited {out.returncode}:\n{out.stdout}{out.stderr}")
        return out

    def admin_json(self, *args: str) -> dict:
        return json.loads(self.admin(*args, "-o", "json").stdout or "{}")

    def get(self, flow_id: str):
        return self.flows.GetFlow(flow_pb2.GetFlowRequest(flow_id=flow_id), metadata=self.metadata(), timeout=30)

    def wait_checkpoint(self, flow_id: str, lsn: int, timeout: float = 60) -> None:
        """Until the flow's confirmed LSN reaches ``lsn``."""
        from wallaby.core.changes import parse_lsn

        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                cp = self.checkpoints.GetCheckpoint(checkpoint_pb2.GetCheckpointRequest(flow_id=flow_id),
                                                    metadata=self.metadata(), timeout=10)
                last = cp.checkpoint.lsn
                if parse_lsn(last) >= lsn:
                    return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            time.sleep(0.3)
        raise AssertionError(f"flow {flow_id} confirmed only {last}, not {lsn:X};"
                             f" worker log:\n{self.worker_log(flow_id)}")

    def worker_log(self, flow_id: str) -> str:
        p = Path(self.env["WALLABY_WORKER_LOG_DIR"]) / f"{flow_id}.log"
        return p.read_text()[-4000:] if p.exists() else "(no worker log)"


def server_env(tmp: Path, store: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a test server: SQLite store in ``tmp`` unless ``store`` is a Postgres DSN."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update({
        "WALLABY_GRPC_LISTEN": f"127.0.0.1:{free_port()}",
        "WALLABY_WORKER_LOG_DIR": str(tmp / "worker-logs"),
        # the test's own recovery stores: with a Postgres store the default is ~/.wallaby/recovery, shared by every
        # run on the machine (two runs at once met each other's flow "orders" there)
        "WALLABY_RECOVERY_DIR": str(tmp / "recovery"),
        "WALLABY_EPOCH_INTERVAL": "300ms",
        "WALLABY_WORKER_STOP_TIMEOUT": "60",
        "PYTHONPATH": str(ROOT),
    })
    if store:
        env["WALLABY_POSTGRES_DSN"] = store
    else:
        env["WALLABY_CHECKPOINT_PATH"] = str(tmp / "store.db")
    env.update(extra)
    return env


def make_server(tmp: Path, store: str | None = None, **extra: str) -> Server:
    env = server_env(tmp, store, **extra)
    port = int(env["WALLABY_GRPC_LISTEN"].rpartition(":")[2])
    return Server(env, port, tmp / "server.log", token=env.get("WALLABY_API_TOKEN", ""))


def flow_file(tmp: Path, dsn: str, flow_id: str, *, duck: Path, tables: str = "public.orders", **config) -> Path:
    spec = {
        "id": flow_id, "name": flow_id,
        "source": {"name": "pg", "type": "postgres",
                   "options": {"dsn": dsn, "slot": f"{flow_id}_slot", "publication": f"{flow_id}_pub",
                               "publication_tables": tables, "batch_timeout": "100ms", "status_interval": "1s"}},
        "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": str(duck)}}],
        **({"config": config} if config else {}),
    }
    path = tmp / f"{flow_id}.json"
    path.write_text(json.dumps(spec))
    return path


def current_lsn(dsn: str) -> int:
    from wallaby.core.changes import parse_lsn

    with psycopg.connect(dsn, autocommit=True) as c:
        return parse_lsn(c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])


def wait_streaming(dsn: str, slot: str, timeout: float = 60) -> None:
    """Until a worker streams from ``slot`` (changes made before its slot existed are not captured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(dsn, autocommit=True) as c:
            if c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() == (True,):
                return
        time.sleep(0.2)
    raise AssertionError(f"no worker is streaming from slot {slot}")


def pg_rows(dsn: str, table: str = "orders") -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(f"SELECT id, note FROM {table} ORDER BY id").fetchall()


def duck_rows(path: Path, table: str = "orders") -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as c:
        return [tuple(r) for r in c.execute(f"SELECT id, note FROM public.{table} ORDER BY id").fetchall()]
