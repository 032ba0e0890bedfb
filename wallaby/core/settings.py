"""Process settings: every ``WALLABY_*`` variable that tunes a process, parsed in one typed place.

:func:`load` reads them from an environment (``os.environ`` by default) and
returns a frozen :class:`Settings`; a bad value is a :class:`SettingsError`
(a :class:`~wallaby.core.errors.ConfigError`: exit status 2) naming every bad
variable and the format it takes, on one line::

    WALLABY_DDL_POLL: '2x' is not a duration (use seconds like 2.5 or 2s, 500ms, 1m)

Formats: a *duration* is seconds (``2.5``) or a number with a unit (``500ms``,
``2s``, ``1m``, ``1h``, Go's ``1m30s``); a *byte size* is a number of bytes
(``3145728``) or a number with a unit (``512KB``, ``3MiB``, ``1GB``: KB, MB,
GB, TB are powers of 1000, KiB, MiB, GiB, TiB of 1024, as DuckDB reads them);
a *count* is a whole number. An empty value counts as not set.

Variables of features a version does not have (``UNAVAILABLE_PREFIXES``; none in
this one), and the Go WALlaby's variables wallaby does not implement (``REFUSED``:
``WALLABY_TRACE_PATH``, with the reason), are refused when set, never accepted and ignored.
The Go build's ``WALLABY_K8S_JOB_BACKOFF_LIMIT`` / ``_ENV`` / ``_IMAGE_PULL_POLICY`` /
``_NAME_PREFIX`` / ``_TTL_SECONDS``, ``WALLABY_OTEL_SERVICE`` and ``WALLABY_DDL_CATALOG_*``
are parsed here with their meaning there (docs/kubernetes.md, docs/metrics.md, docs/ddl.md). ``WALLABY_K8S_*``
(Kubernetes job dispatch, :mod:`wallaby.control.api.kubernetes`, docs/kubernetes.md)
are parsed here like the others. ``WALLABY_DBOS_*`` (DBOS scheduling) belong to the
API server alone: :func:`wallaby.control.scheduling.load` checks them at its start
(core may not import control); workers ignore them. ``wallaby-worker`` and ``bytewax.run`` of
``dataflows.flow:flow`` load the settings strictly in
:func:`dataflows.preflight.preflight`, the API server in
:class:`wallaby.control.api.manager.FlowManager`, each before anything runs; module-level
constants read them with :func:`on_import`, which never raises.

Not here: the flow store and checkpoint store (``WALLABY_CHECKPOINT_*``,
``WALLABY_POSTGRES_DSN``: :mod:`wallaby.state.sqldb`), the API server's own settings
(``WALLABY_GRPC_*``, ``WALLABY_API_TOKEN``: :mod:`wallaby.control.api.server`), the
wire format and DDL defaults of a flow (``WALLABY_WIRE_*``, ``WALLABY_DDL_GATE``
/ ``_AUTO_APPROVE`` / ``_AUTO_APPLY``: :mod:`wallaby.core.spec`), and the inputs of
``dataflows.flow:flow`` (``WALLABY_FLOW_*``, ``WALLABY_START_LSN``,
``WALLABY_MAX_EMPTY_READS``) and of ``dataflows.backfill:flow`` (``WALLABY_BACKFILL_TABLES``), which each parse
with the helpers below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from wallaby.core.errors import ConfigError, FieldProblem
from wallaby.core.options import parse_bool, parse_duration

DURATION_FORMAT = "use seconds like 2.5 or 2s, 500ms, 1m"
BYTES_FORMAT = "use a number of bytes, or a size like 512KB, 3MiB, 1GB"
COUNT_FORMAT = "use a whole number"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Prefixes of the variables of features a version does not have: refused when set (none in this version).
UNAVAILABLE_PREFIXES: dict[str, str] = {}


class SettingsError(ConfigError):
    """Bad process settings. ``str()`` is one line: every problem, separated by ``; ``."""

    def __init__(self, problems: list[FieldProblem]):
        super().__init__("environment", problems)

    def __str__(self) -> str:
        return "; ".join(str(p) for p in self.problems)


# -- parsers: text -> value, or ValueError with the message shown after "NAME: " ----------------------

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
               "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}


def parse_byte_size(text: str) -> int:
    """Bytes from ``'3145728'``, ``'512KB'``, ``'3MiB'``, ``'1.5GB'`` (KB = 1000, KiB = 1024, as DuckDB)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a byte size ({BYTES_FORMAT})")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


def duration(minimum: float = 0.0, *, strict: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = parse_duration(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a duration ({DURATION_FORMAT})") from None
        if value < minimum or (strict and value == minimum):
            raise ValueError(f"{text!r} must be {'more than' if strict else 'at least'} {minimum:g} seconds")
        return value

    return parse


def byte_size(minimum: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_byte_size(text)
        if value < minimum:
            raise ValueError(f"{text!r} must be at least {minimum} bytes")
        return value

    return parse


def count(minimum: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*\+?\d+\s*", text):
            raise ValueError(f"{text!r} is not a whole number ({COUNT_FORMAT}, at least {minimum})")
        value = int(text)
        if value < minimum:
            raise ValueError(f"{text!r} must be at least {minimum}")
        return value

    return parse


def path(text: str) -> str:
    return text.strip()


LISTEN_FORMAT = "use host:port, :port for every interface, or [v6 address]:port"


def split_listen(text: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``, ``:port`` (host ``''``: every interface) or ``[::1]:port``."""
    m = re.fullmatch(r"\s*(\[[0-9A-Fa-f:.%\w]*\]|[^\s:\[\]]*):(\d{1,5})\s*", text)
    if not m or int(m.group(2)) > 65535:
        raise ValueError(f"{text!r} is not a listen address ({LISTEN_FORMAT}; port 0-65535)")
    return m.group(1).strip("[]"), int(m.group(2))


def listen_address(text: str) -> str:
    split_listen(text)
    return text.strip()


# -- Kubernetes job dispatch (WALLABY_K8S_*) --------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# labels and annotations the Jobs carry whatever WALLABY_K8S_JOB_LABELS says (wallaby.control.api.kubernetes)
RESERVED_LABEL_PREFIXES = ("wallaby.io/", "app.kubernetes.io/name", "app.kubernetes.io/component")


def k8s_bool(text: str) -> bool:
    return parse_bool(text)


def dns_label(text: str) -> str:
    value = text.strip()
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(f"{text!r} is not a Kubernetes name (lower-case letters, digits and '-', at most 63)")
    return value


def dns_subdomain(text: str) -> str:
    value = text.strip()
    if not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{text!r} is not a Kubernetes name (lower-case letters, digits, '-' and '.', at most 253)")
    return value


def comma_list(text: str) -> tuple[str, ...]:
    """``a,b,c`` -> ``("a", "b", "c")`` (items stripped, empty ones dropped)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def command_list(text: str) -> tuple[str, ...]:
    items = comma_list(text)
    if not items:
        raise ValueError(f"{text!r} is not a command (a comma-separated list, like wallaby-worker)")
    return items


def image(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{text!r} is not a container image (like ghcr.io/josephjohncox/wallaby:0.1.0)")
    return value


def _qualified_key(key: str) -> str | None:
    """Why ``key`` is not a label/annotation key (``[prefix/]name``), else None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not _DNS_SUBDOMAIN.fullmatch(prefix):
        return f"key {key!r}: its prefix {prefix!r} is not a DNS subdomain"
    if not _QUALIFIED_NAME.fullmatch(name):
        return f"key {key!r} is not a valid name (letters, digits, '-', '_', '.', at most 63, alphanumeric at the ends)"
    return None


def key_values(kind: str) -> Callable[[str], tuple[tuple[str, str], ...]]:
    """``k=v,k2=v2`` -> ``(("k", "v"), ("k2", "v2"))``; keys checked as Kubernetes keys, label values too."""

    def parse(text: str) -> tuple[tuple[str, str], ...]:
        pairs: dict[str, str] = {}
        for item in comma_list(text):
            key, eq, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key:
                raise ValueError(f"{item!r} is not key=value (use a comma list like team=data,tier=cdc)")
            why = _qualified_key(key)
            if why:
                raise ValueError(why)
            if kind == "label":
                if key.startswith(RESERVED_LABEL_PREFIXES):
                    raise ValueError(f"label {key!r} is set by wallaby (wallaby.io/*, app.kubernetes.io/name and"
                                     " /component)")
                if value and not _QUALIFIED_NAME.fullmatch(value):
                    raise ValueError(f"label {key!r}: {value!r} is not a label value (letters, digits, '-', '_',"
                                     " '.', at most 63, alphanumeric at the ends)")
            pairs[key] = value
        return tuple(pairs.items())

    return parse


def env_from(text: str) -> tuple[tuple[str, str], ...]:
    """``secret:a,configmap:b`` -> ``(("secret", "a"), ("configmap", "b"))``."""
    refs = []
    for item in comma_list(text):
        kind, colon, name = item.partition(":")
        kind = kind.strip().lower().replace("_", "").replace("-", "")
        if not colon or kind not in ("secret", "configmap"):
            raise ValueError(f"{item!r} is not secret:NAME or configmap:NAME")
        refs.append((kind, dns_subdomain(name)))
    return tuple(refs)


def api_server(text: str) -> str:
    value = text.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/:]+(:\d{1,5})?(/\S*)?", value):
        raise ValueError(f"{text!r} is not an API server URL (like https://10.0.0.1:6443)")
    return value


def ca_data(text: str) -> str:
    """The CA certificate(s), PEM, given as such or base64-encoded (as in a kubeconfig's
    ``certificate-authority-data``); returned as PEM text."""
    import base64
    import binascii

    value = text.strip()
    if not value.startswith("-----BEGIN"):
        try:
            value = base64.b64decode(value, validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            value = ""
    if "-----BEGIN CERTIFICATE-----" not in value:
        raise ValueError("not a PEM certificate, nor one base64-encoded")
    return value


_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# Kubernetes deletes an ended Job this long after it ended at the soonest: the API server must still find it to
# read how its worker ended (an ended Job gone before that is a worker that died).
MIN_JOB_TTL = 60


def env_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``NAME=value,NAME2=value2`` -> pairs; names as Kubernetes takes them for a container's ``env``."""
    pairs: dict[str, str] = {}
    for item in comma_list(text):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"{item!r} is not NAME=value (use a comma list like TZ=UTC,LOG_FORMAT=json)")
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an environment variable name (letters, digits, '_', '-', '.', not"
                             " starting with a digit)")
        pairs[name] = value.strip()
    return tuple(pairs.items())


def pull_policy(text: str) -> str:
    """``Always``, ``IfNotPresent`` or ``Never``, in any case (as the Go build takes them)."""
    value = text.strip()
    for policy in PULL_POLICIES:
        if value.lower() == policy.lower():
            return policy
    raise ValueError(f"{text!r} is not an image pull policy (use one of {', '.join(PULL_POLICIES)})")


def job_name_prefix(text: str) -> str:
    value = dns_label(text.lower())
    if len(value) > 40:
        raise ValueError(f"{text!r} is longer than 40 characters (a Job name is the prefix, the flow and the"
                         " generation in at most 63)")
    return value


def backoff_limit(text: str) -> int:
    value = count(0)(text)
    if value:
        raise ValueError(f"{text!r}: wallaby's Jobs always have backoffLimit 0: the API server decides restarts"
                         " (by the flow's give_up_policy, up to WALLABY_WORKER_MAX_RESTARTS, under a new generation"
                         " that fences off the old worker); a pod retried by Kubernetes would run the same"
                         " generation behind its back. Unset it (or set 0)")
    return value


def job_ttl(text: str) -> int | None:
    """``ttlSecondsAfterFinished`` of the Jobs; 0 (as in the Go build): none, an ended Job is kept."""
    value = count(0)(text)
    if 0 < value < MIN_JOB_TTL:
        raise ValueError(f"{text!r} is under {MIN_JOB_TTL} seconds: the API server reads how a worker ended from its"
                         f" ended Job, which must outlive a short outage of the server; use at least {MIN_JOB_TTL},"
                         " or 0 to keep ended Jobs")
    return value or None


def schema_list(text: str) -> tuple[str, ...]:
    items = comma_list(text)
    if not items:
        raise ValueError(f"{text!r} names no schema (use a comma list like public,sales)")
    return items


def service_name(text: str) -> str:
    return text.strip()


def log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level (use one of {', '.join(LOG_LEVELS)})")
    return value


# -- the settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The process settings, with the defaults used when a variable is not set (see :data:`VARIABLES`)."""

    epoch_interval: float = 2.0
    recovery_dir: str | None = None
    log_level: str = "info"
    source_batch_bytes: int = 3 << 20
    ddl_poll: float = 2.0
    toast_cache_bytes: int = 256 << 20
    duckdb_memory_limit: int = 64 * 1000**2  # DuckDB's "64MB"
    duckdb_max_tx_bytes: int = 16 << 20
    duckdb_buffer_bytes: int = 8 << 20
    duckdb_checkpoint_threshold: int = 1000**3  # DuckDB's "1GB"
    duckdb_threads: int = 1
    duckdb_lock_wait: float = 60.0
    kafka_delivery_timeout: float = 120.0
    spool_dir: str = "~/.wallaby/spool"
    spool_drain_timeout: float = 5.0
    worker_max_restarts: int = 3
    worker_stop_timeout: float = 60.0
    worker_log_dir: str = "~/.wallaby/logs"
    run_once_empty_reads: int = 1
    backfill_chunk_blocks: int = 1024
    backfill_chunk_rows: int = 0  # 0: backfill_chunk_blocks blocks' worth of rows (key-range parts)
    metrics_listen: str | None = None  # host:port of the Prometheus /metrics endpoint; None: off
    # Kubernetes job dispatch (wallaby/control/api/kubernetes.py; docs/kubernetes.md "Job dispatch")
    k8s_enabled: bool = False
    k8s_namespace: str | None = None  # None: the in-cluster namespace, else the kubeconfig context's, else default
    k8s_job_image: str | None = None  # required when enabled
    k8s_job_service_account: str | None = None
    k8s_job_env_from: tuple[tuple[str, str], ...] = ()  # (secret|configmap, name)
    k8s_job_max_empty_reads: int | None = None
    k8s_job_args: tuple[str, ...] = ()
    k8s_job_command: tuple[str, ...] = ("wallaby-worker",)
    k8s_job_labels: tuple[tuple[str, str], ...] = ()
    k8s_job_annotations: tuple[tuple[str, str], ...] = ()
    k8s_kubeconfig: str | None = None
    k8s_context: str | None = None
    k8s_api_server: str | None = None
    k8s_token: str | None = dataclass_field(default=None, repr=False)
    k8s_ca_file: str | None = None
    k8s_ca_data: str | None = dataclass_field(default=None, repr=False)
    k8s_client_cert: str | None = dataclass_field(default=None, repr=False)  # a PEM file, or PEM text
    k8s_client_key: str | None = dataclass_field(default=None, repr=False)
    k8s_insecure_skip_tls: bool = False
    k8s_job_backoff_limit: int = 0  # only 0: restarts are the API server's (backoff_limit)
    k8s_job_env: tuple[tuple[str, str], ...] = ()  # extra env of the worker container, over the server's
    k8s_job_image_pull_policy: str | None = None  # None: Kubernetes' default (Always for :latest, else IfNotPresent)
    k8s_job_name_prefix: str = "wallaby"  # Jobs are <prefix>-<flow>-<generation>
    k8s_job_ttl_seconds: int | None = 3600  # ttlSecondsAfterFinished; None (WALLABY_K8S_JOB_TTL_SECONDS=0): kept
    # OpenTelemetry service name (OTEL_SERVICE_NAME wins); None: the process's own (wallaby, wallaby-worker)
    otel_service: str | None = None
    # the DDL catalog scan (sources/postgres/ddl_catalog.py; docs/ddl.md "Catalog scan")
    ddl_catalog_enabled: bool = False
    ddl_catalog_interval: float = 30.0
    ddl_catalog_schemas: tuple[str, ...] = ("public",)


# variable -> (Settings field, parser). What each does is documented where it is used and in docs/.
VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "WALLABY_EPOCH_INTERVAL": ("epoch_interval", duration(0, strict=True)),  # wallaby-worker -epoch-interval
    "WALLABY_RECOVERY_DIR": ("recovery_dir", path),  # wallaby-worker -recovery-dir
    "WALLABY_LOG_LEVEL": ("log_level", log_level),  # wallaby/logs.py
    "WALLABY_SOURCE_BATCH_BYTES": ("source_batch_bytes", byte_size(1)),  # sources/batcher.py
    "WALLABY_DDL_POLL": ("ddl_poll", duration(0, strict=True)),  # sources/ddl_gate.py
    "WALLABY_TOAST_CACHE_BYTES": ("toast_cache_bytes", byte_size(0)),  # operators/toast.py
    "WALLABY_DUCKDB_MEMORY_LIMIT": ("duckdb_memory_limit", byte_size(1)),  # sinks/duckdb.py
    "WALLABY_DUCKDB_MAX_TX_BYTES": ("duckdb_max_tx_bytes", byte_size(0)),  # 0: one transaction per epoch
    "WALLABY_DUCKDB_BUFFER_BYTES": ("duckdb_buffer_bytes", byte_size(0)),  # 0: the default
    "WALLABY_DUCKDB_CHECKPOINT_THRESHOLD": ("duckdb_checkpoint_threshold", byte_size(1)),
    "WALLABY_DUCKDB_THREADS": ("duckdb_threads", count(0)),  # 0: DuckDB's default (one per core)
    "WALLABY_DUCKDB_LOCK_WAIT": ("duckdb_lock_wait", duration(0)),
    "WALLABY_KAFKA_DELIVERY_TIMEOUT": ("kafka_delivery_timeout", duration(0, strict=True)),  # sinks/kafka.py
    "WALLABY_SPOOL_DIR": ("spool_dir", path),  # sinks/spool.py
    "WALLABY_SPOOL_DRAIN_TIMEOUT": ("spool_drain_timeout", duration(0)),
    "WALLABY_WORKER_MAX_RESTARTS": ("worker_max_restarts", count(0)),  # wallaby/api/manager.py
    "WALLABY_WORKER_STOP_TIMEOUT": ("worker_stop_timeout", duration(0)),  # wallaby/api/dispatch.py
    "WALLABY_WORKER_LOG_DIR": ("worker_log_dir", path),
    "WALLABY_RUN_ONCE_EMPTY_READS": ("run_once_empty_reads", count(1)),
    "WALLABY_BACKFILL_CHUNK_BLOCKS": ("backfill_chunk_blocks", count(1)),  # sources/postgres/snapshot.py
    "WALLABY_BACKFILL_CHUNK_ROWS": ("backfill_chunk_rows", count(0)),  # key-range parts; 0: by the chunk's blocks
    "WALLABY_METRICS_LISTEN": ("metrics_listen", listen_address),  # wallaby/core/telemetry.py; docs/metrics.md
    # Kubernetes job dispatch: wallaby/control/api/kubernetes.py, docs/kubernetes.md
    "WALLABY_K8S_ENABLED": ("k8s_enabled", k8s_bool),
    "WALLABY_K8S_NAMESPACE": ("k8s_namespace", dns_label),
    "WALLABY_K8S_JOB_IMAGE": ("k8s_job_image", image),
    "WALLABY_K8S_JOB_SERVICE_ACCOUNT": ("k8s_job_service_account", dns_subdomain),
    "WALLABY_K8S_JOB_ENV_FROM": ("k8s_job_env_from", env_from),
    "WALLABY_K8S_JOB_MAX_EMPTY_READS": ("k8s_job_max_empty_reads", count(1)),
    "WALLABY_K8S_JOB_ARGS": ("k8s_job_args", comma_list),
    "WALLABY_K8S_JOB_COMMAND": ("k8s_job_command", command_list),
    "WALLABY_K8S_JOB_LABELS": ("k8s_job_labels", key_values("label")),
    "WALLABY_K8S_JOB_ANNOTATIONS": ("k8s_job_annotations", key_values("annotation")),
    # files: checked where they are read, by the API server at start (a worker's pod need not have them)
    "WALLABY_K8S_KUBECONFIG": ("k8s_kubeconfig", path),
    "WALLABY_K8S_CONTEXT": ("k8s_context", path),
    "WALLABY_K8S_API_SERVER": ("k8s_api_server", api_server),
    "WALLABY_K8S_TOKEN": ("k8s_token", path),
    "WALLABY_K8S_CA_FILE": ("k8s_ca_file", path),
    "WALLABY_K8S_CA_DATA": ("k8s_ca_data", ca_data),
    "WALLABY_K8S_CLIENT_CERT": ("k8s_client_cert", path),  # a PEM file, or the PEM text
    "WALLABY_K8S_CLIENT_KEY": ("k8s_client_key", path),
    "WALLABY_K8S_INSECURE_SKIP_TLS": ("k8s_insecure_skip_tls", k8s_bool),
    "WALLABY_K8S_JOB_BACKOFF_LIMIT": ("k8s_job_backoff_limit", backoff_limit),
    "WALLABY_K8S_JOB_ENV": ("k8s_job_env", env_pairs),
    "WALLABY_K8S_JOB_IMAGE_PULL_POLICY": ("k8s_job_image_pull_policy", pull_policy),
    "WALLABY_K8S_JOB_NAME_PREFIX": ("k8s_job_name_prefix", job_name_prefix),
    "WALLABY_K8S_JOB_TTL_SECONDS": ("k8s_job_ttl_seconds", job_ttl),
    # OpenTelemetry: wallaby/core/telemetry.py, docs/metrics.md
    "WALLABY_OTEL_SERVICE": ("otel_service", service_name),
    # the DDL catalog scan of a streaming worker: sources/postgres/ddl_catalog.py, docs/ddl.md
    "WALLABY_DDL_CATALOG_ENABLED": ("ddl_catalog_enabled", k8s_bool),
    "WALLABY_DDL_CATALOG_INTERVAL": ("ddl_catalog_interval", duration(0, strict=True)),
    "WALLABY_DDL_CATALOG_SCHEMAS": ("ddl_catalog_schemas", schema_list),
}

# Variables the Go WALlaby reads that wallaby does not implement: refused when set, with the reason (never accepted
# and ignored).
REFUSED: dict[str, str] = {
    "WALLABY_TRACE_PATH": "the Go build's JSONL trace of its runner's steps (read, deliver, ack, checkpoint), made"
                          " for its TLA+ trace validator, is not built in wallaby; its steps are OpenTelemetry spans"
                          " and metrics here (OTEL_EXPORTER_OTLP_ENDPOINT, WALLABY_METRICS_LISTEN: docs/metrics.md):"
                          " unset it",
}


def _k8s_problems(values: Mapping[str, Any], failed: set[str]) -> list[FieldProblem]:
    """What the WALLABY_K8S_* variables lack together (each parsed alone above)."""
    problems = []
    if values.get("k8s_enabled") and not values.get("k8s_job_image") and "WALLABY_K8S_JOB_IMAGE" not in failed:
        problems.append(FieldProblem("WALLABY_K8S_JOB_IMAGE", "required with WALLABY_K8S_ENABLED=true (the worker"
                                                              " image, like ghcr.io/josephjohncox/wallaby:0.1.0)"))
    cert, key = "WALLABY_K8S_CLIENT_CERT", "WALLABY_K8S_CLIENT_KEY"
    if bool(values.get("k8s_client_cert") or cert in failed) != bool(values.get("k8s_client_key") or key in failed):
        missing = key if values.get("k8s_client_cert") or cert in failed else cert
        problems.append(FieldProblem(missing, f"mTLS needs both {cert} and {key}"))
    return problems


def unavailable_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The set variables of features this version does not have (``WALLABY_DBOS_*``)."""
    env = os.environ if environ is None else environ
    return sorted(k for k, v in env.items() if k.startswith(tuple(UNAVAILABLE_PREFIXES)) and v.strip())


def load(environ: Mapping[str, str] | None = None, *, strict: bool = True) -> Settings:
    """The settings of ``environ`` (default ``os.environ``), or one :class:`SettingsError` naming every bad
    variable and every variable of a feature this version does not have. ``strict=False`` never raises: a bad
    value gives its default (for module-level constants, computed on import, before an entry point has checked
    the settings with :func:`load` and refused to start)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[FieldProblem] = []
    for var, (field, parse) in VARIABLES.items():
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            problems.append(FieldProblem(var, str(exc)))
    problems += _k8s_problems(values, {p.path for p in problems})
    problems += [FieldProblem(var, f"not available in wallaby: {why}") for var, why in REFUSED.items()
                 if (env.get(var) or "").strip()]
    unavailable = unavailable_variables(env)
    if unavailable:
        features = " and ".join(f for p, f in UNAVAILABLE_PREFIXES.items() if any(v.startswith(p) for v in unavailable))
        verb = "are" if " and " in features else "is"
        problems.append(FieldProblem(", ".join(unavailable), f"not available in this version of wallaby ({features}"
                                                             f" {verb} not built; workers run as local processes of"
                                                             " the API server): unset them"))
    if problems and strict:
        raise SettingsError(problems)
    return Settings(**values)


def current() -> Settings:
    """The settings of this process's environment (read again at each call: cheap, and follows the
    environment)."""
    return load()


def on_import() -> Settings:
    """The settings for a module-level constant: :func:`load` with ``strict=False``. Every entry point loads the
    settings strictly before it runs anything (``dataflows.preflight``, the API server's ``FlowManager``), so a bad
    value never runs with its default."""
    return load(strict=False)


def log_level_or_default(environ: Mapping[str, str] | None = None) -> str:
    """``WALLABY_LOG_LEVEL`` if valid, else ``info`` (logging is set up before the settings are checked; a bad
    value is reported by :func:`load`)."""
    raw = (os.environ if environ is None else environ).get("WALLABY_LOG_LEVEL") or ""
    try:
        return log_level(raw) if raw.strip() else Settings.log_level
    except ValueError:
        return Settings.log_level


def env_value(name: str, parse: Callable[[str], Any], environ: Mapping[str, str] | None = None) -> Any:
    """One variable parsed with ``parse`` (None when not set), or a :class:`SettingsError` naming it: for the
    entry points' own inputs (``WALLABY_MAX_EMPTY_READS``, ...)."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or not raw.strip():
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingsError([FieldProblem(name, str(exc))]) from None


__all__ = ["BYTES_FORMAT", "DURATION_FORMAT", "REFUSED", "VARIABLES", "Settings", "SettingsError", "byte_size", "count",
           "current", "duration", "env_value", "listen_address", "load", "log_level_or_default", "on_import",
           "parse_byte_size", "path", "split_listen"]
