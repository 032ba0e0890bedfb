"""``wallaby-worker -config FILE``: the Go WALlaby's runtime config file, read as the settings it stands for.

The Go worker's ``-config`` names its runtime settings file (YAML, or JSON; sections ``postgres``, ``ddl``,
``kubernetes``, ``dbos``, ``telemetry``, ``wire``, ``checkpoints``...), not a flow: each key is one of its
``WALLABY_*`` variables (``postgres.dsn`` is ``WALLABY_POSTGRES_DSN``, ``ddl.catalog_enabled`` is
``WALLABY_DDL_CATALOG_ENABLED``...). The Go releases that went with its usage guide took the flag and read nothing
from the file; later ones read it strictly, the file winning over the environment. Here :func:`load` reads the file
into the variables (:data:`KEYS`), which then win over the environment of this process, and every check of those
variables applies (a bad value is an error naming the variable and the key). A key of a feature wallaby does not have
(:data:`REFUSED`), an unknown key, a second document or a value of the wrong shape is refused, naming the key; none
is ignored. Values are never logged (a DSN, a token).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wallaby.core.errors import ConfigError, FieldProblem
from wallaby.core.options import did_you_mean, parse_duration

# Go runtime-config key -> the variable it sets here.
KEYS: dict[str, str] = {
    "postgres.dsn": "WALLABY_POSTGRES_DSN",
    "api.grpc_listen": "WALLABY_GRPC_LISTEN",
    "api.grpc_reflection": "WALLABY_GRPC_REFLECTION",
    "telemetry.service_name": "OTEL_SERVICE_NAME",
    "telemetry.otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "telemetry.otlp_protocol": "OTEL_EXPORTER_OTLP_PROTOCOL",
    "telemetry.otlp_insecure": "OTEL_EXPORTER_OTLP_INSECURE",
    "telemetry.metrics_endpoint": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "telemetry.metrics_protocol": "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "telemetry.metrics_insecure": "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
    "telemetry.metrics_exporter": "OTEL_METRICS_EXPORTER",
    "telemetry.metrics_interval": "OTEL_METRIC_EXPORT_INTERVAL",  # a duration: milliseconds there
    "telemetry.traces_endpoint": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "telemetry.traces_protocol": "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "telemetry.traces_insecure": "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "telemetry.traces_exporter": "OTEL_TRACES_EXPORTER",
    "trace.path": "WALLABY_TRACE_PATH",
    "dbos.enabled": "WALLABY_DBOS_ENABLED",
    "dbos.app_name": "WALLABY_DBOS_APP",
    "dbos.schedule": "WALLABY_DBOS_SCHEDULE",
    "dbos.queue": "WALLABY_DBOS_QUEUE",
    "dbos.max_empty_reads": "WALLABY_DBOS_MAX_EMPTY_READS",
    "dbos.max_retries": "WALLABY_DBOS_MAX_RETRIES",
    "kubernetes.enabled": "WALLABY_K8S_ENABLED",
    "kubernetes.kubeconfig_path": "WALLABY_K8S_KUBECONFIG",
    "kubernetes.context": "WALLABY_K8S_CONTEXT",
    "kubernetes.api_server": "WALLABY_K8S_API_SERVER",
    "kubernetes.bearer_token": "WALLABY_K8S_TOKEN",
    "kubernetes.ca_file": "WALLABY_K8S_CA_FILE",
    "kubernetes.ca_data": "WALLABY_K8S_CA_DATA",
    "kubernetes.client_cert_file": "WALLABY_K8S_CLIENT_CERT",
    "kubernetes.client_key_file": "WALLABY_K8S_CLIENT_KEY",
    "kubernetes.insecure_skip_tls": "WALLABY_K8S_INSECURE_SKIP_TLS",
    "kubernetes.namespace": "WALLABY_K8S_NAMESPACE",
    "kubernetes.job_image": "WALLABY_K8S_JOB_IMAGE",
    "kubernetes.job_image_pull_policy": "WALLABY_K8S_JOB_IMAGE_PULL_POLICY",
    "kubernetes.job_service_account": "WALLABY_K8S_JOB_SERVICE_ACCOUNT",
    "kubernetes.job_name_prefix": "WALLABY_K8S_JOB_NAME_PREFIX",
    "kubernetes.job_ttl_seconds": "WALLABY_K8S_JOB_TTL_SECONDS",
    "kubernetes.job_backoff_limit": "WALLABY_K8S_JOB_BACKOFF_LIMIT",
    "kubernetes.job_max_empty_reads": "WALLABY_K8S_JOB_MAX_EMPTY_READS",
    "kubernetes.job_labels": "WALLABY_K8S_JOB_LABELS",
    "kubernetes.job_annotations": "WALLABY_K8S_JOB_ANNOTATIONS",
    "kubernetes.job_command": "WALLABY_K8S_JOB_COMMAND",
    "kubernetes.job_args": "WALLABY_K8S_JOB_ARGS",
    "kubernetes.job_env": "WALLABY_K8S_JOB_ENV",
    "kubernetes.job_env_from": "WALLABY_K8S_JOB_ENV_FROM",
    "wire.format": "WALLABY_WIRE_FORMAT",
    "wire.enforce": "WALLABY_WIRE_ENFORCE",
    "ddl.catalog_enabled": "WALLABY_DDL_CATALOG_ENABLED",
    "ddl.catalog_interval": "WALLABY_DDL_CATALOG_INTERVAL",
    "ddl.catalog_schemas": "WALLABY_DDL_CATALOG_SCHEMAS",
    "ddl.auto_approve": "WALLABY_DDL_AUTO_APPROVE",
    "ddl.gate": "WALLABY_DDL_GATE",
    "ddl.auto_apply": "WALLABY_DDL_AUTO_APPLY",
    "checkpoints.backend": "WALLABY_CHECKPOINT_BACKEND",
    "checkpoints.dsn": "WALLABY_CHECKPOINT_DSN",
    "checkpoints.path": "WALLABY_CHECKPOINT_PATH",
}

# Keys (or whole sections) of Go features wallaby does not have: refused, with the reason.
REFUSED: dict[str, str] = {
    "environment": "the Go build's environment name (dev, test, prod) only gates its in-memory workflow store;"
                   " wallaby has neither",
    "workflow": "the Go build's workflow store (postgres or an in-memory one for development); wallaby's flow store"
                " is set by checkpoints.backend / WALLABY_CHECKPOINT_BACKEND",
    "profiling": "Go's pprof server; profile a wallaby process with py-spy instead",
    "kubernetes.job_automount_service_account_token": "wallaby's Jobs leave automountServiceAccountToken to the"
                                                      " service account (WALLABY_K8S_JOB_SERVICE_ACCOUNT)",
    "artifacts": "the Go build's artifact log (S3 objects shared by its destinations) is not built in wallaby",
    "iceberg": "the Go build's Iceberg destination is not built in wallaby",
}
SECTIONS = sorted({k.split(".")[0] for k in KEYS} | {k.split(".")[0] for k in REFUSED})


def _text(key: str, value: Any, problems: list[FieldProblem]) -> str | None:
    """A YAML value as the variable's text: booleans true/false, lists comma lists, maps k=v comma lists."""
    if key == "telemetry.metrics_interval" and isinstance(value, str):
        try:
            return str(round(parse_duration(value) * 1000))
        except ValueError:
            problems.append(FieldProblem(key, f"{value!r} is not a duration (like 30s)"))
            return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict) and all(isinstance(v, (str, int, float, bool)) for v in value.values()):
        return ",".join(f"{k}={v}" for k, v in value.items())
    problems.append(FieldProblem(key, f"a {type(value).__name__} where a value, a list or a map of values goes"))
    return None


def _walk(doc: Mapping[str, Any], prefix: str, out: dict[str, Any], problems: list[FieldProblem]) -> None:
    for name, value in doc.items():
        key = f"{prefix}{name}"
        why = REFUSED.get(key)
        if why is not None:
            problems.append(FieldProblem(key, f"not available in wallaby: {why}; remove it"))
        elif key in KEYS:
            out[key] = value
        elif not prefix and name in SECTIONS and isinstance(value, Mapping):
            _walk(value, f"{key}.", out, problems)
        else:
            known = list(KEYS) + list(REFUSED) if prefix else SECTIONS
            problems.append(FieldProblem(key, f"not a key of the Go WALlaby's config file{did_you_mean(key, known)}"))


def load(path: str) -> dict[str, str]:
    """The variables the config file at ``path`` sets, or one :class:`ConfigError` (field ``-config``, or the key)
    naming every problem."""
    import yaml

    where = f"-config {path}"
    p = Path(path).expanduser()
    if p.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError(where, [FieldProblem("-config", f"{path}: use a .yaml, .yml or .json file (the Go build's"
                                                          " runtime config; a flow is -flow-file)")])
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(where, [FieldProblem("-config", f"cannot read {path}: {exc.strerror or exc}")]) from None
    try:
        docs = [json.loads(text)] if p.suffix.lower() == ".json" else list(yaml.safe_load_all(text))
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(where, [FieldProblem("-config", f"{path} is not valid {p.suffix[1:].upper()}:"
                                                          f" {' '.join(str(exc).split())}")]) from None
    docs = [d for d in docs if d is not None]
    if len(docs) > 1 or (docs and not isinstance(docs[0], Mapping)):
        raise ConfigError(where, [FieldProblem("-config", f"{path}: one mapping of sections is expected (postgres:,"
                                                          " ddl:, kubernetes:, ...)")])
    if docs and ("flow" in docs[0] or {"source", "destinations"} <= set(docs[0])):
        raise ConfigError(where, [FieldProblem("-config", f"{path} is a flow, not the Go build's runtime config;"
                                                          " run a flow file with -flow-file")])
    found: dict[str, Any] = {}
    problems: list[FieldProblem] = []
    _walk(docs[0] if docs else {}, "", found, problems)
    out = {}
    for key, value in found.items():
        if value is None:
            continue
        text_value = _text(key, value, problems)
        if text_value is not None:
            out[KEYS[key]] = text_value
    if problems:
        raise ConfigError(where, problems)
    return out


__all__ = ["KEYS", "REFUSED", "load"]
