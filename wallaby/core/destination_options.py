"""Option models of every destination type, names and defaults as USAGE.md promises.

A destination whose sink is not built yet is still validated, so a flow file
can be checked (and a typo caught) before that sink lands. The shared parsing
helpers and the source's model are in :mod:`wallaby.core.options`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo, model_validator

from wallaby.core.options import (
    Bool,
    Duration,
    Headers,
    HttpUrl,
    NonNegativeInt,
    OptionProblems,
    Options,
    PayloadMode,
    PositiveDuration,
    PositiveFloat,
    PositiveInt,
    PostgresDsn,
    RequiredCsvList,
    RequiredText,
    Text,
    TypeMappings,
    WireFormat,
    _http_method,
    _partition_by,
    _set,
    choice,
    parse_text,
    parse_type_mappings,
)

# Destinations.


class DestinationOptions(Options):
    """"Destination Metadata + Append/Soft Delete": on every destination."""

    meta_enabled: Bool = False
    meta_synced_at: RequiredText = "__ds_synced_at"
    meta_deleted: RequiredText = "__ds_is_deleted"
    meta_watermark: RequiredText = "__ds_watermark"  # "-" disables the watermark column
    meta_op: RequiredText = "__ds_op"
    watermark_source: choice("timestamp", "lsn") = "timestamp"
    soft_delete: Bool = False
    append_mode: Bool = False

    @property
    def watermark_column(self) -> str | None:
        return None if self.meta_watermark == "-" else self.meta_watermark


def _read_type_mappings_file(path: str) -> dict[str, str]:
    """The type map in the file at ``path`` (``~`` expanded; JSON, or a flat YAML map), or ValueError saying why
    it cannot be used."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, FileNotFoundError):
            reason = "no such file"
        elif isinstance(exc, IsADirectoryError):
            reason = "it is a directory"
        else:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ValueError(f"cannot read {str(p)!r}: {reason} (expected a JSON or YAML file of source type ->"
                         " destination type)") from None
    try:
        return parse_type_mappings(text)
    except ValueError as exc:
        raise ValueError(f"{str(p)!r}: {exc}") from None


def _type_mappings_file(v: Any) -> str:
    path = parse_text(v)
    _read_type_mappings_file(path)  # refused now, not when the sink first opens it
    return path


class MaterializingOptions(DestinationOptions):
    """"Destination Type Mappings": destinations that materialize tables."""

    type_mappings: TypeMappings | None = None
    type_mappings_file: Annotated[str, BeforeValidator(_type_mappings_file)] | None = None

    def mappings(self) -> dict[str, str]:
        """The type overrides: the file's map, then ``type_mappings`` on top."""
        out: dict[str, str] = {}
        if self.type_mappings_file:
            out.update(_read_type_mappings_file(self.type_mappings_file))
        out.update(self.type_mappings or {})
        return out

    def mapping_keys(self) -> list[tuple[str, str]]:
        """(option, source type key) of every type mapping: the file's, then the inline ones."""
        out: list[tuple[str, str]] = []
        if self.type_mappings_file:
            try:
                out += [("type_mappings_file", k) for k in _read_type_mappings_file(self.type_mappings_file)]
            except ValueError:
                pass  # the file was read when the options were validated; the sink reports it if it went since
        out += [("type_mappings", k) for k in (self.type_mappings or {})]
        return out


class TableWriterOptions(MaterializingOptions):
    """Row-level change application into tables (DuckDB, Snowflake, ClickHouse)."""

    schema_: Text | None = Field(default=None, alias="schema")
    table: Text | None = None
    write_mode: choice("target", "append") = "target"
    batch_mode: choice("target", "staging") = "target"
    batch_resolution: choice("none", "append", "replace") = "none"
    staging_schema: Text | None = None
    staging_table: Text | None = None
    staging_suffix: RequiredText = "_staging"
    meta_table_enabled: Bool = True

    @property
    def schema_name(self) -> str | None:
        """The ``schema`` option (``schema_`` in Python)."""
        return self.schema_


class DuckDBDestinationOptions(TableWriterOptions):
    """USAGE.md "DuckDB Destination": the one model of a DuckDB destination's options, the flow spec's and the
    sink's (``sinks.duckdb.writer.DuckDBOptions`` is this class). ``batch_mode=staging``, ``batch_resolution`` and
    ``staging_*`` are validated here and refused by ``dataflows.flow.check_buildable`` until staging loads exist."""

    dsn: RequiredText
    drop_columns: Bool = False  # not in USAGE.md: follow a source DROP COLUMN (docs/ddl.md)


class DuckLakeDestinationOptions(MaterializingOptions):
    dsn: RequiredText
    catalog: RequiredText
    catalog_name: RequiredText = "ducklake"
    data_path: Text | None = None
    override_data_path: Bool = False
    install_extensions: Bool = True


class ClickHouseDestinationOptions(TableWriterOptions):
    dsn: RequiredText
    database: Text | None = None  # or schema
    meta_engine: RequiredText = "MergeTree"
    meta_order_by: RequiredText = "flow_id, source_schema, source_table, key_json"

    @model_validator(mode="after")
    def _check(self) -> ClickHouseDestinationOptions:
        if self.database and self.schema_ and self.database != self.schema_:
            raise OptionProblems([("database", f"database and schema name the same thing and disagree"
                                               f" ({self.database!r} vs {self.schema_!r}); set one")])
        return self

    @property
    def target_database(self) -> str | None:
        return self.database or self.schema_


class SnowflakeDestinationOptions(TableWriterOptions):
    dsn: RequiredText
    meta_schema: RequiredText = "WALLABY_META"
    meta_table: RequiredText = "__METADATA"
    meta_pk_prefix: RequiredText = "pk_"


class SnowpipeDestinationOptions(MaterializingOptions):
    dsn: RequiredText
    stage: Text | None = None
    stage_path: Text | None = None
    schema_: Text | None = Field(default=None, alias="schema")
    table: Text | None = None
    format: choice("parquet", "avro", "json") = "parquet"
    file_format: Text | None = None
    copy_on_write: Bool = True
    auto_ingest: Bool = False
    meta_table_enabled: Bool = True
    write_mode: choice("append") = "append"  # Snowpipe only appends

    @model_validator(mode="after")
    def _check(self) -> SnowpipeDestinationOptions:
        problems = []
        has_table = bool(self.schema_ and self.table)
        if not self.stage and not has_table:
            problems.append(("stage", "required option missing (or set schema and table to use the table stage"
                                      " @%schema.table)"))
        if self.copy_on_write and not self.auto_ingest and not has_table:
            missing = " and ".join(n for n, v in (("schema", self.schema_), ("table", self.table)) if not v)
            problems.append(("table" if self.schema_ else "schema", f"{missing} required when copy_on_write=true"))
        if problems:
            raise OptionProblems(problems)
        return self

    @property
    def table_stage(self) -> str | None:
        return f"@%{self.schema_}.{self.table}" if self.schema_ and self.table else None


class KafkaDestinationOptions(DestinationOptions):
    """USAGE.md "Kafka Destination"; also Bufstream (Kafka-compatible)."""

    brokers: RequiredCsvList
    topic: RequiredText
    format: WireFormat = "arrow"
    compression: choice("none", "gzip", "snappy", "lz4", "zstd") = "none"
    acks: choice("all", "leader", "none", aliases={"-1": "all", "1": "leader", "0": "none"}) = "all"
    max_message_bytes: PositiveInt = 900000
    max_batch_bytes: PositiveInt | None = None  # default: max_message_bytes
    max_record_bytes: PositiveInt | None = None  # default: max_message_bytes
    oversize_policy: choice("error", "drop") = "error"

    @model_validator(mode="after")
    def _defaults(self) -> KafkaDestinationOptions:
        for name in ("max_batch_bytes", "max_record_bytes"):
            if getattr(self, name) is None:
                _set(self, name, self.max_message_bytes)
        return self


class BufstreamDestinationOptions(KafkaDestinationOptions):
    """USAGE.md "Bufstream Destination": the Kafka options."""


class S3DestinationOptions(DestinationOptions):
    bucket: RequiredText
    prefix: Text | None = None
    endpoint: Text | None = None
    region: Text | None = None
    access_key: Text | None = None
    secret_key: Text | None = None
    session_token: Text | None = None
    force_path_style: Bool = False
    use_fips: Bool | None = None
    use_dualstack: Bool | None = None
    format: WireFormat = "json"
    compression: choice("none", "gzip") = "none"
    partition_by: Annotated[list[str], BeforeValidator(_partition_by)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> S3DestinationOptions:
        problems = []
        if bool(self.access_key) != bool(self.secret_key):
            have, need = ("access_key", "secret_key") if self.access_key else ("secret_key", "access_key")
            problems.append((need, f"required when {have} is set"))
        if self.session_token and not (self.access_key and self.secret_key):
            problems.append(("session_token", "needs access_key and secret_key"))
        if problems:
            raise OptionProblems(problems)
        return self


class _DeliveryOptions(DestinationOptions):
    """Shared by the HTTP and gRPC destinations (defaults as upstream: 3 retries, 200ms..5s, x2)."""

    format: WireFormat = "json"
    payload_mode: PayloadMode = "wire"
    timeout: PositiveDuration = 10.0
    headers: Headers = Field(default_factory=dict)
    max_retries: NonNegativeInt = 3
    backoff_base: Duration = 0.2
    backoff_max: Duration = 5.0
    backoff_factor: PositiveFloat = 2.0


class HTTPDestinationOptions(_DeliveryOptions):
    url: HttpUrl
    method: Annotated[str, BeforeValidator(_http_method)] = "POST"
    idempotency_header: RequiredText = "Idempotency-Key"


class GRPCDestinationOptions(_DeliveryOptions):
    endpoint: RequiredText
    insecure: Bool = True
    tls_ca_file: Text | None = None
    tls_server_name: Text | None = None
    flow_id: Text | None = None
    destination: Text | None = None  # default: the destination's name

    @model_validator(mode="after")
    def _defaults(self, info: ValidationInfo) -> GRPCDestinationOptions:
        if self.destination is None and info.context and info.context.get("endpoint_name"):
            _set(self, "destination", info.context["endpoint_name"])
        return self


class PGStreamDestinationOptions(DestinationOptions):
    dsn: PostgresDsn
    stream: Text | None = None  # default: the destination's name
    format: WireFormat = "json"

    @model_validator(mode="after")
    def _defaults(self, info: ValidationInfo) -> PGStreamDestinationOptions:
        if self.stream is None and info.context and info.context.get("endpoint_name"):
            _set(self, "stream", info.context["endpoint_name"])
        return self



DESTINATION_OPTIONS: dict[str, type[Options]] = {
    "duckdb": DuckDBDestinationOptions,
    "ducklake": DuckLakeDestinationOptions,
    "kafka": KafkaDestinationOptions,
    "bufstream": BufstreamDestinationOptions,
    "s3": S3DestinationOptions,
    "http": HTTPDestinationOptions,
    "grpc": GRPCDestinationOptions,
    "pgstream": PGStreamDestinationOptions,
    "snowflake": SnowflakeDestinationOptions,
    "snowpipe": SnowpipeDestinationOptions,
    "clickhouse": ClickHouseDestinationOptions,
}

