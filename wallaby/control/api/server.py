"""The gRPC server: ``wallaby.v1`` services, health, optional reflection, bearer-token auth and TLS.

- ``WALLABY_API_TOKEN``: every call but ``grpc.health.v1.Health`` needs
  ``authorization: Bearer <token>`` (UNAUTHENTICATED otherwise).
- ``WALLABY_GRPC_TLS_CERT`` / ``WALLABY_GRPC_TLS_KEY``: PEM files; TLS when both are set.
- ``WALLABY_GRPC_REFLECTION=true``: server reflection (for ``grpcurl`` without proto files).
- ``WALLABY_API_INSECURE=true``: allow listening on a non-loopback address without a token
  (:meth:`ServerSettings.exposure_problem`); without it, ``wallaby`` refuses to start so.
  TLS alone does not count: it authenticates the server, not the caller.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from wallaby.control.api.ingest import IngestServicer
from wallaby.control.api.manager import FlowManager
from wallaby.control.api.services import CheckpointServicer, DDLServicer, FlowServicer
from wallaby.control.api.streams import StreamServicer
from wallaby.core.errors import ConfigError, FieldProblem
from wallaby.core.options import parse_bool
from wallaby.v1 import (
    checkpoint_pb2,
    checkpoint_pb2_grpc,
    ddl_pb2,
    ddl_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
)

log = logging.getLogger("wallaby.api")

SERVICE_NAMES = (
    flow_pb2.DESCRIPTOR.services_by_name["FlowService"].full_name,
    checkpoint_pb2.DESCRIPTOR.services_by_name["CheckpointService"].full_name,
    ddl_pb2.DESCRIPTOR.services_by_name["DDLService"].full_name,
    stream_pb2.DESCRIPTOR.services_by_name["StreamService"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
)
_OPEN_PREFIX = "/grpc.health.v1.Health/"


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (health checks excepted)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_OPEN_PREFIX):
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return continuation(handler_call_details)
        message = "missing bearer token" if not given else "invalid bearer token"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"{message}: send 'authorization: Bearer <WALLABY_API_TOKEN>'")

        return grpc.unary_unary_rpc_method_handler(deny)


@dataclass
class ServerSettings:
    listen: str = ":8080"
    reflection: bool = False
    token: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    insecure: bool = False  # WALLABY_API_INSECURE: no auth on a non-loopback address is meant

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerSettings:
        problems = []
        flags = {"WALLABY_GRPC_REFLECTION": False, "WALLABY_API_INSECURE": False}
        for var in flags:
            raw = (env.get(var) or "").strip()
            if raw:
                try:
                    flags[var] = parse_bool(raw)
                except ValueError as exc:
                    problems.append(FieldProblem(var, str(exc)))
        cert, key = (env.get("WALLABY_GRPC_TLS_CERT") or "").strip(), (env.get("WALLABY_GRPC_TLS_KEY") or "").strip()
        if bool(cert) != bool(key):
            missing = "WALLABY_GRPC_TLS_KEY" if cert else "WALLABY_GRPC_TLS_CERT"
            problems.append(FieldProblem(missing, "TLS needs both WALLABY_GRPC_TLS_CERT and WALLABY_GRPC_TLS_KEY"))
        for var, path in (("WALLABY_GRPC_TLS_CERT", cert), ("WALLABY_GRPC_TLS_KEY", key)):
            if path and not Path(path).expanduser().is_file():
                problems.append(FieldProblem(var, f"no such file: {path}"))
        listen = (env.get("WALLABY_GRPC_LISTEN") or ":8080").strip()
        if not listen.rpartition(":")[2].isdigit():
            problems.append(FieldProblem("WALLABY_GRPC_LISTEN", f"expected [host]:port, got {listen!r}"))
        if problems:
            raise ConfigError("API server settings", problems)
        return cls(listen, flags["WALLABY_GRPC_REFLECTION"], (env.get("WALLABY_API_TOKEN") or "").strip(), cert, key,
                   flags["WALLABY_API_INSECURE"])

    def address(self) -> str:
        host, _, port = self.listen.rpartition(":")
        return f"{host or '[::]'}:{port}"

    def loopback(self) -> bool:
        """Whether the listen address only accepts connections from this machine (127.0.0.0/8, ::1, a name that
        resolves to those only). ``:8080``, ``0.0.0.0``, ``[::]`` and unresolvable names are not."""
        host = self.listen.rpartition(":")[0].strip().removeprefix("[").removesuffix("]")
        if not host:
            return False
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)

    def auth_mode(self) -> str:
        """How callers are authenticated, for the start-up log line."""
        if self.token:
            return "bearer token (WALLABY_API_TOKEN)"
        if self.loopback():
            return "none (loopback address only)"
        return "none, WALLABY_API_INSECURE=true: anyone who can reach this address may call every RPC"

    def exposure_problem(self) -> str | None:
        """The one-line reason to refuse to start: a non-loopback address with no authentication that
        ``WALLABY_API_INSECURE=true`` does not allow; else None."""
        if self.token or self.insecure or self.loopback():
            return None
        where = f"{self.listen} (every interface)" if not self.listen.rpartition(":")[0].strip() else self.listen
        return (f"refusing to listen on {where} with no authentication (anyone who can reach it could create flows"
                " and drop slots): set WALLABY_API_TOKEN, or listen on 127.0.0.1 (WALLABY_GRPC_LISTEN), or set"
                " WALLABY_API_INSECURE=true if an open API is meant")


class APIServer:
    """The running server. ``port`` is the bound port (useful with ``:0``)."""

    def __init__(self, manager: FlowManager, settings: ServerSettings, max_workers: int = 16):
        self.manager = manager
        self.settings = settings
        interceptors = [TokenAuth(settings.token)] if settings.token else []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="wallaby-rpc"),
                                  interceptors=interceptors)
        flow_pb2_grpc.add_FlowServiceServicer_to_server(FlowServicer(manager), self.server)
        checkpoint_pb2_grpc.add_CheckpointServiceServicer_to_server(CheckpointServicer(manager), self.server)
        ddl_pb2_grpc.add_DDLServiceServicer_to_server(DDLServicer(manager), self.server)
        stream_pb2_grpc.add_StreamServiceServicer_to_server(StreamServicer(manager), self.server)
        self.ingest = IngestServicer(manager)
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(self.ingest, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if settings.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                                self.server)
        address = settings.address()
        try:
            if settings.tls_cert:
                creds = grpc.ssl_server_credentials([(Path(settings.tls_key).expanduser().read_bytes(),
                                                      Path(settings.tls_cert).expanduser().read_bytes())])
                self.port = self.server.add_secure_port(address, creds)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError("API server settings", [FieldProblem(
                "WALLABY_GRPC_LISTEN", f"cannot listen on {settings.listen}: {exc}")]) from None

    def start(self) -> None:
        self.server.start()
        self.manager.recover()
        log.info("API server listening on %s (port %d%s%s%s)", self.settings.listen, self.port,
                 ", TLS" if self.settings.tls_cert else "", ", token auth" if self.settings.token else "",
                 ", reflection" if self.settings.reflection else "")
        mode = self.settings.auth_mode()
        if mode.startswith("none, "):
            log.warning("API auth: %s", mode)
        else:
            log.info("API auth: %s", mode)

    def stop(self, grace: float = 5.0) -> None:
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
        self.ingest.close()
        self.manager.shutdown()

    def wait(self) -> None:
        self.server.wait_for_termination()
