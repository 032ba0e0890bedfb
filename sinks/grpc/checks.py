"""The gRPC destination's free preflight check (:mod:`dataflows.preflight`): syntax only, the endpoint is never
called."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sinks.grpc.options import GRPCDestinationOptions
from wallaby.core.errors import FieldProblem
from wallaby.core.options import join_path
from wallaby.core.spec import Endpoint

# Target schemes gRPC resolves itself (https://grpc.github.io/grpc/core/md_doc_naming.html).
_GRPC_SCHEMES = ("dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock", "xds", "google-c2p")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.%\w]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?")


def check_grpc_endpoint(i: int, dest: Endpoint | None, opts: GRPCDestinationOptions) -> list[FieldProblem]:
    """``endpoint`` is ``host:port`` or a gRPC target (``dns:///host:port``, ``unix:/path``), never called here;
    with TLS, ``tls_ca_file`` is a readable file."""
    field = join_path("destinations", i, "options", "endpoint")
    target = opts.endpoint.strip()
    problems: list[FieldProblem] = []
    scheme, sep, rest = target.partition(":")
    if re.match(r"(?i)[a-z][a-z0-9+.-]*://", target) and scheme.lower() not in _GRPC_SCHEMES:
        problems.append(FieldProblem(field, f"{scheme}:// is not a gRPC target; use host:port"
                                            " (insecure=false for TLS) or dns:///host:port"))
    elif sep and scheme.lower() in _GRPC_SCHEMES:
        if not rest.strip("/"):
            problems.append(FieldProblem(field, f"{target!r} names no address"))
    else:
        m = _HOST_PORT.fullmatch(target)
        if not m:
            problems.append(FieldProblem(field, f"{target!r} is not host:port"))
        elif m.group(2) is not None and not 0 < int(m.group(2)) < 65536:
            problems.append(FieldProblem(field, f"port {m.group(2)} is out of range (1-65535)"))
    if not opts.insecure and opts.tls_ca_file:
        ca = Path(opts.tls_ca_file).expanduser()
        if not ca.is_file() or not os.access(ca, os.R_OK):
            problems.append(FieldProblem(join_path("destinations", i, "options", "tls_ca_file"),
                                         f"{str(ca)!r} is not a readable file"))
    return problems


__all__ = ["check_grpc_endpoint"]
