"""The preflight: everything a flow can be checked for before anything is created.

Every entry point runs :func:`preflight` before the replication slot, the
publication, the source-state table or any destination table or file exists:
``wallaby-worker`` (:mod:`wallaby.control.worker`), CreateFlow / UpdateFlow
(:mod:`wallaby.control.api.manager`) and ``python -m bytewax.run dataflows.flow:flow``
(:func:`dataflows.flow.flow_from_env`). The checks, in order:

1. process settings (:mod:`wallaby.core.settings`): every ``WALLABY_*`` tuning
   variable parses, and no ``WALLABY_DBOS_*`` / ``WALLABY_K8S_*`` variable is set;
2. what this build can run (:func:`dataflows.flow.check_buildable`): destination
   types, and options the spec validates but this version does not implement
   (backfill options, DuckDB staging), refused by name when set;
3. destinations, where a check is free (:data:`DESTINATION_CHECKS`): a DuckDB
   file's directory exists or can be created and is writable (nothing is
   created); an S3 bucket exists and answers with the destination's
   credentials and endpoint (HeadBucket, short timeouts); Kafka brokers answer a
   metadata request (no topic is named, so none is auto-created); HTTP URLs and
   gRPC endpoints are checked for syntax only (never called);
4. against the source (``source=True``): ``type_mappings`` keys name types the
   source has, metadata column names do not clash with published columns.

Every definite problem of 2-4 is collected into one
:class:`~wallaby.core.errors.ConfigError` (exit status 2 of the worker) naming the
field (``destinations[0].options.bucket``) and the path, bucket or broker.
What may pass by itself is raised after that, as the error it is: a source that
does not answer (:class:`~wallaby.core.errors.SourceError`) or a destination that
does not (:class:`~wallaby.core.errors.TransientSinkError`). CreateFlow accepts a
flow in that case, and the worker checks again before it creates anything.

To add a check: a function ``(i, destination endpoint, typed options) ->
list[FieldProblem]`` in :data:`DESTINATION_CHECKS` under the destination type
(raise ``TransientSinkError`` for "could not ask"), or a function ``(spec) ->
None`` raising ``ConfigError`` in :data:`SOURCE_CHECKS`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wallaby.core import settings
from wallaby.core.errors import ConfigError, FieldProblem, SourceError, TransientSinkError, redact_dsn

log = logging.getLogger("wallaby.preflight")

S3_TIMEOUT = 5.0  # seconds to connect and to read HeadBucket's answer; one attempt
KAFKA_TIMEOUT = 5.0  # seconds for the brokers' metadata

DestinationCheck = Callable[[int, Any, Any], list[FieldProblem]]


def preflight(spec, *, source: bool = True, environ: Mapping[str, str] | None = None) -> None:
    """Every check of this module (see its docstring) on ``spec``; returns when all pass. ``source=False`` skips
    the checks against the source database. Raises :class:`~wallaby.core.settings.SettingsError` (a bad process
    setting), :class:`ConfigError` (every problem of the flow), then :class:`SourceError` or
    :class:`TransientSinkError` (something that did not answer)."""
    from dataflows.flow import check_buildable

    settings.load(environ)
    problems: list[FieldProblem] = []
    unreachable: list[Exception] = []
    try:
        check_buildable(spec)
    except ConfigError as exc:
        problems += exc.problems
    for i, dest in enumerate(spec.destinations):
        opts = spec.destination_options(i)
        for check in DESTINATION_CHECKS.get(dest.type, ()):
            try:
                problems += check(i, dest, opts)
            except TransientSinkError as exc:
                unreachable.append(exc)
    if source:
        for source_check in SOURCE_CHECKS:
            try:
                source_check(spec)
            except ConfigError as exc:
                problems += exc.problems
            except SourceError as exc:
                unreachable.insert(0, exc)
                break  # the next check would knock on the same door
    if problems:
        raise ConfigError(f"flow {spec.name!r}", problems)
    if unreachable:
        raise unreachable[0]


# -- destinations ---------------------------------------------------------------------------------


def _field(i: int, option: str) -> str:
    return f"destinations[{i}].options.{option}"


def _shown_path(text: str) -> str:
    return repr(text) if re.fullmatch(r"[\w./\\ ~+-]+", text) else "the path"


def check_duckdb_path(i: int, dest: Any, opts: Any) -> list[FieldProblem]:
    """A DuckDB file (not ``:memory:`` / MotherDuck) must be a file this process can write, in a directory it can
    write (DuckDB keeps ``<file>.wal`` beside it), or a file a missing directory of which can be created. Nothing
    is created here."""
    dsn = opts.dsn.strip()
    if dsn.startswith((":memory:", "md:", "motherduck:")):
        return []
    shown = _shown_path(dsn)
    path = Path(dsn).expanduser()

    def problem(message: str) -> list[FieldProblem]:
        return [FieldProblem(_field(i, "dsn"), f"DuckDB file {shown}: {message}")]

    try:
        if path.is_dir():
            return problem("is a directory; name a file in it")
        if path.exists():
            if not os.access(path, os.R_OK | os.W_OK):
                return problem("is not readable and writable by this process")
            if not os.access(path.parent, os.W_OK | os.X_OK):
                return problem(f"its directory {str(path.parent)!r} is not writable (DuckDB writes its .wal file"
                               " there)")
            return []
        existing = path.parent
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
    except OSError as exc:  # e.g. a directory on the way that this process may not search
        return problem(f"cannot be checked: {exc.strerror or exc}")
    if not existing.is_dir():
        return problem(f"cannot create its directory: {str(existing)!r} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "directory" if existing == path.parent else "directory (to create the ones below it)"
        return problem(f"cannot create it: {what} {str(existing)!r} is not writable by this process")
    return []


def check_s3_bucket(i: int, dest: Any, opts: Any) -> list[FieldProblem]:
    """HeadBucket on the destination's bucket with its credentials, endpoint and region (one attempt, short
    timeouts). A missing bucket, denied access or missing credentials are problems; no answer is a
    :class:`TransientSinkError`."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

    from sinks.s3.writer import _PERMANENT_AUTH, make_client

    try:
        client = make_client(opts, connect_timeout=S3_TIMEOUT, read_timeout=S3_TIMEOUT,
                             retries={"mode": "standard", "max_attempts": 1})
    except ValueError as exc:  # botocore: an endpoint URL it cannot use
        return [FieldProblem(_field(i, "endpoint"), f"not a usable S3 endpoint: {exc}")]
    endpoint = re.sub(r"//[^/@]*@", "//", opts.endpoint or client.meta.endpoint_url or "AWS S3")
    where = f"bucket {opts.bucket!r} at {endpoint}"
    try:
        client.head_bucket(Bucket=opts.bucket)
    except NoCredentialsError:
        return [FieldProblem(_field(i, "access_key"), f"no AWS credentials for {where}; set access_key and secret_key"
                                                      " or configure boto3's default chain (AWS_* variables, a"
                                                      " profile)")]
    except ParamValidationError as exc:
        return [FieldProblem(_field(i, "bucket"), f"{opts.bucket!r} is not a valid bucket name: {exc}")]
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
            return [FieldProblem(_field(i, "bucket"), f"{where} does not exist; create it or name another")]
        if status == 403 or code in _PERMANENT_AUTH:
            return [FieldProblem(_field(i, "bucket"), f"access denied to {where} ({code or status}); check"
                                                      " access_key/secret_key and the bucket policy (the destination"
                                                      " lists, reads and writes objects in it)")]
        if status in (301, 307) or code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed"):
            return [FieldProblem(_field(i, "region"), f"{where} is in another region than"
                                                      f" {client.meta.region_name!r}; set region")]
        if status >= 500 or status == 429:
            raise TransientSinkError(dest.name, f"{where} answered {code or status} to HeadBucket") from None
        return [FieldProblem(_field(i, "bucket"), f"{where} answered {code or status} to HeadBucket")]
    except BotoCoreError as exc:
        raise TransientSinkError(dest.name, f"cannot reach {where} ({_field(i, 'endpoint')}):"
                                            f" {type(exc).__name__}") from None
    return []


_QUIET = logging.getLogger("wallaby.preflight.librdkafka")  # librdkafka's own log lines, not for the user
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def check_kafka_brokers(i: int, dest: Any, opts: Any) -> list[FieldProblem]:
    """The brokers answer a metadata request (no topic named: nothing is auto-created), else a
    :class:`TransientSinkError` naming them."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    brokers = redact_dsn(",".join(opts.brokers))
    try:
        admin = AdminClient({"bootstrap.servers": ",".join(opts.brokers), "logger": _QUIET,
                             "error_cb": lambda err: None,
                             "socket.connection.setup.timeout.ms": int(KAFKA_TIMEOUT * 1000)})
    except (KafkaException, ValueError, TypeError) as exc:
        return [FieldProblem(_field(i, "brokers"), f"{brokers}: not a usable broker list ({exc})")]
    try:
        metadata = admin.list_topics(timeout=KAFKA_TIMEOUT)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        why = err.str() if hasattr(err, "str") else str(err)
        raise TransientSinkError(dest.name, f"cannot reach brokers {brokers} ({_field(i, 'brokers')}) within"
                                            f" {KAFKA_TIMEOUT:g}s: {why}") from None
    if not metadata.brokers:
        raise TransientSinkError(dest.name, f"brokers {brokers} ({_field(i, 'brokers')}) answered with no broker")
    return []


def check_http_url(i: int, dest: Any, opts: Any) -> list[FieldProblem]:
    """The URL's host and port are well formed (it is never called here)."""
    try:
        parts = urlsplit(opts.url)
        port = parts.port
    except ValueError as exc:
        return [FieldProblem(_field(i, "url"), f"not a valid URL: {exc}")]
    if not parts.hostname:
        return [FieldProblem(_field(i, "url"), "the URL names no host")]
    if port == 0:
        return [FieldProblem(_field(i, "url"), "port 0 is not a port to send to")]
    return []


# Target schemes gRPC resolves itself (https://grpc.github.io/grpc/core/md_doc_naming.html).
_GRPC_SCHEMES = ("dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock", "xds", "google-c2p")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.%\w]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?")


def check_grpc_endpoint(i: int, dest: Any, opts: Any) -> list[FieldProblem]:
    """``endpoint`` is ``host:port`` or a gRPC target (``dns:///host:port``, ``unix:/path``), never called here;
    with TLS, ``tls_ca_file`` is a readable file."""
    target = opts.endpoint.strip()
    problems: list[FieldProblem] = []
    scheme, sep, rest = target.partition(":")
    if re.match(r"(?i)[a-z][a-z0-9+.-]*://", target) and scheme.lower() not in _GRPC_SCHEMES:
        problems.append(FieldProblem(_field(i, "endpoint"), f"{scheme}:// is not a gRPC target; use host:port"
                                                            " (insecure=false for TLS) or dns:///host:port"))
    elif sep and scheme.lower() in _GRPC_SCHEMES:
        if not rest.strip("/"):
            problems.append(FieldProblem(_field(i, "endpoint"), f"{target!r} names no address"))
    else:
        m = _HOST_PORT.fullmatch(target)
        if not m:
            problems.append(FieldProblem(_field(i, "endpoint"), f"{target!r} is not host:port"))
        elif m.group(2) is not None and not 0 < int(m.group(2)) < 65536:
            problems.append(FieldProblem(_field(i, "endpoint"), f"port {m.group(2)} is out of range (1-65535)"))
    if not opts.insecure and opts.tls_ca_file:
        ca = Path(opts.tls_ca_file).expanduser()
        if not ca.is_file() or not os.access(ca, os.R_OK):
            problems.append(FieldProblem(_field(i, "tls_ca_file"), f"{str(ca)!r} is not a readable file"))
    return problems


# destination type -> its free checks
DESTINATION_CHECKS: dict[str, list[DestinationCheck]] = {
    "duckdb": [check_duckdb_path],
    "s3": [check_s3_bucket],
    "kafka": [check_kafka_brokers],
    "bufstream": [check_kafka_brokers],
    "http": [check_http_url],
    "grpc": [check_grpc_endpoint],
}


# -- against the source ---------------------------------------------------------------------------


def check_type_mappings(spec) -> None:
    """Every type_mappings key names a type (or extension) the source has: else one error listing them."""
    from sources.postgres.connection import connect, server_name
    from sources.postgres.setup import unknown_type_keys

    wanted = []
    for i in range(len(spec.destinations)):
        opts = spec.destination_options(i)
        if hasattr(opts, "mapping_keys"):
            wanted += [(i, option, key) for option, key in opts.mapping_keys()]
    if not wanted:
        return
    dsn = spec.source_options().dsn
    with connect(dsn, application_name=f"wallaby-setup:{spec.id}") as conn:
        unknown = set(unknown_type_keys(conn, sorted({k for _, _, k in wanted})))
    problems = [FieldProblem(f"destinations[{i}].options.{option}",
                             f"{key!r} is not a type (or extension) of the source {server_name(dsn)}; keys are"
                             " Postgres type names, schema.type, ext:<extension>.<type> or ext:<extension>")
                for i, option, key in wanted if key in unknown]
    if problems:
        raise ConfigError(f"flow {spec.name!r}", problems)


def check_metadata_names(spec) -> None:
    """No metadata column (meta_enabled, soft_delete, append_mode) may be named like a column of a table the flow
    publishes: else one error naming both."""
    from operators.metadata import MetadataRewriter
    from sources.postgres.connection import connect
    from sources.postgres.setup import publication_columns

    wanted = []
    for i in range(len(spec.destinations)):
        r = MetadataRewriter(spec.destination_options(i))
        if r.enabled:
            wanted.append((i, r.names))
    if not wanted:
        return
    opts = spec.source_options()
    with connect(opts.dsn, application_name=f"wallaby-setup:{spec.id}") as conn:
        columns = publication_columns(conn, opts)
    problems = [FieldProblem(f"destinations[{i}].options", f"metadata column {name!r} is also a column of {table};"
                                                            " choose another name (meta_synced_at, meta_deleted,"
                                                            " meta_watermark, meta_op)")
                for i, names in wanted for table, cols in sorted(columns.items()) for name in names if name in cols]
    if problems:
        raise ConfigError(f"flow {spec.name!r}", problems)


SOURCE_CHECKS: list[Callable[[Any], None]] = [check_type_mappings, check_metadata_names]


__all__ = ["DESTINATION_CHECKS", "SOURCE_CHECKS", "check_duckdb_path", "check_grpc_endpoint", "check_http_url",
           "check_kafka_brokers", "check_metadata_names", "check_s3_bucket", "check_type_mappings", "preflight"]
