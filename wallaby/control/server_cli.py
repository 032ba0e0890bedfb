"""``wallaby``: the gRPC API server.

    wallaby [--listen :8080] [--postgres-dsn DSN] [--reflection] [--wire-format arrow] [--wire-enforce]
            [--checkpoint-backend sqlite|postgres] [--checkpoint-path FILE] [--checkpoint-dsn DSN]

Every flag has an environment variable (given in ``--help``); a flag wins over
its variable, and workers launched by the server inherit the result. The flow
store and checkpoints live in Postgres when ``WALLABY_POSTGRES_DSN`` is set, else
in SQLite at ``WALLABY_CHECKPOINT_PATH`` (default ``~/.wallaby/checkpoints.db``).
``WALLABY_API_TOKEN`` turns on bearer-token auth; ``WALLABY_GRPC_TLS_CERT`` and
``WALLABY_GRPC_TLS_KEY`` turn on TLS. On an address other than loopback (the default
``:8080`` is every interface) the server refuses to start without a token unless
``WALLABY_API_INSECURE=true`` (exit 2). SIGTERM / Ctrl-C stop the server and its
workers gracefully; running flows stay RUNNING and are relaunched at the next start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from wallaby.control import scheduling
from wallaby.control.api.manager import FlowManager
from wallaby.control.api.server import APIServer, ServerSettings
from wallaby.core import logs, metrics, telemetry
from wallaby.core import settings as tuning
from wallaby.core.errors import ConfigError, WallabyError, redact_dsn
from wallaby.core.spec import default_wire_format
from wallaby.state.checkpoints import open_store

log = logging.getLogger("wallaby.api")

# flag -> environment variable
FLAGS = {
    "listen": "WALLABY_GRPC_LISTEN",
    "postgres_dsn": "WALLABY_POSTGRES_DSN",
    "reflection": "WALLABY_GRPC_REFLECTION",
    "wire_format": "WALLABY_WIRE_FORMAT",
    "wire_enforce": "WALLABY_WIRE_ENFORCE",
    "checkpoint_backend": "WALLABY_CHECKPOINT_BACKEND",
    "checkpoint_path": "WALLABY_CHECKPOINT_PATH",
    "checkpoint_dsn": "WALLABY_CHECKPOINT_DSN",
    "tls_cert": "WALLABY_GRPC_TLS_CERT",
    "tls_key": "WALLABY_GRPC_TLS_KEY",
    "insecure": "WALLABY_API_INSECURE",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wallaby", description="The wallaby gRPC API server (wallaby.v1).")
    help_ = {
        "listen": "address to listen on, [host]:port (default :8080)",
        "postgres_dsn": "Postgres for the flow store and checkpoints (default: SQLite)",
        "reflection": "enable gRPC server reflection (true|false)",
        "wire_format": "default wire format: arrow|parquet|avro|proto|json (default arrow)",
        "wire_enforce": "refuse flows whose format is not the service wire format (true|false)",
        "checkpoint_backend": "sqlite|postgres (default: postgres when a Postgres DSN is set)",
        "checkpoint_path": "SQLite file of the store (default ~/.wallaby/checkpoints.db)",
        "checkpoint_dsn": "full DSN of the store (overrides the two above)",
        "tls_cert": "TLS certificate (PEM)",
        "tls_key": "TLS private key (PEM)",
        "insecure": "true: allow a non-loopback address with no WALLABY_API_TOKEN (anyone who can reach it may call)",
    }
    for dest, var in FLAGS.items():
        flag = dest.replace("_", "-")
        p.add_argument(f"-{flag}", f"--{flag}", dest=dest, default=None, help=f"{help_[dest]}; env {var}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for dest, var in FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            os.environ[var] = value
    logs.setup(None)

    try:
        settings = ServerSettings.from_env(os.environ)
        exposed = settings.exposure_problem()
        if exposed:
            print(f"wallaby: {exposed}", file=sys.stderr)
            return 2
        default_wire_format()  # a bad WALLABY_WIRE_FORMAT is refused now, not at the first CreateFlow
        observed = telemetry.start("wallaby")  # WALLABY_METRICS_LISTEN, OTEL_*
        if observed.metrics_url and not tuning.load(strict=False).k8s_enabled:
            # the workers this server launches inherit its environment: each serves its own /metrics on a free
            # port of the same host (the worker logs it) instead of failing on the server's (a Job's pod has its
            # own address: it keeps the port)
            os.environ[telemetry.METRICS_LISTEN] = telemetry.worker_listen(os.environ[telemetry.METRICS_LISTEN])
        store = open_store()
        metrics.watch_flows(store.flow_store.list)
        manager = FlowManager(store)
        scheduler = scheduling.attach(manager)  # WALLABY_DBOS_*: checked now; None when DBOS is off
        server = APIServer(manager, settings)
        server.start()
        if scheduler is not None:  # after the relaunch of running flows: DBOS recovers the runs of a killed server
            scheduler.start()
    except ConfigError as exc:
        print(f"wallaby: {exc}", file=sys.stderr)
        return 2
    except WallabyError as exc:
        print(f"wallaby: {exc}", file=sys.stderr)
        return 1
    log.info("flow store: %s", store.db.describe())
    if observed.metrics_url:
        log.info("metrics: %s", observed.metrics_url)
    print(f"wallaby: listening on {settings.listen} (port {server.port})", file=sys.stderr, flush=True)

    done = threading.Event()

    def _stop(signum, frame) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not done.wait(1.0):
        pass
    log.info("API server stopping")
    try:
        server.stop()
    finally:
        if scheduler is not None:
            scheduler.stop()
        store.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # never a traceback with a DSN in it
        print(f"wallaby: {redact_dsn(str(exc))}", file=sys.stderr)
        sys.exit(1)
