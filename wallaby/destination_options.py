"""Option models of every destination type, with the names and defaults of USAGE.md.

A destination whose sink is not built yet is still validated here, so a flow
file can be checked (and a typo caught) before that sink lands.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from wallaby.options import WIRE_FORMATS, Bool, CsvList, Duration, Int, Options, PositiveInt, choice

Format = choice(*WIRE_FORMATS)


class MetadataOptions(Options):
    """"Destination Metadata + Append/Soft Delete" and "Destination Type Mappings"."""

    meta_enabled: Bool = False
    meta_synced_at: str = "__ds_synced_at"
    meta_deleted: str = "__ds_is_deleted"
    meta_watermark: str = "__ds_watermark"
    meta_op: str = "__ds_op"
    watermark_source: choice("timestamp", "lsn") = "timestamp"
    soft_delete: Bool = False
    append_mode: Bool = False
    type_mappings: str | dict | None = None
    type_mappings_file: str | None = None


class TableOptions(MetadataOptions):
    """Destinations that materialize tables (DuckDB, ClickHouse, Snowflake)."""

    schema_: str | None = Field(default=None, alias="schema")
    table: str | None = None
    write_mode: choice("target", "append") = "target"
    batch_mode: choice("target", "staging") = "target"
    batch_resolution: choice("none", "append", "replace") = "none"
    staging_schema: str | None = None
    staging_table: str | None = None
    staging_suffix: str = "_staging"
    meta_table_enabled: Bool = True


class DuckDBDestinationOptions(TableOptions):
    dsn: str


class DuckLakeDestinationOptions(MetadataOptions):
    dsn: str
    catalog: str
    catalog_name: str = "ducklake"
    data_path: str | None = None
    override_data_path: Bool = False
    install_extensions: Bool = True


class ClickHouseDestinationOptions(TableOptions):
    dsn: str
    database: str | None = None
    meta_engine: str = "MergeTree"
    meta_order_by: str = "flow_id, source_schema, source_table, key_json"


class SnowflakeDestinationOptions(TableOptions):
    dsn: str
    meta_schema: str = "WALLABY_META"
    meta_table: str = "__METADATA"
    meta_pk_prefix: str = "pk_"


class SnowpipeDestinationOptions(MetadataOptions):
    dsn: str
    stage: str | None = None
    stage_path: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    table: str | None = None
    format: choice("parquet", "avro", "json") = "parquet"
    file_format: str | None = None
    copy_on_write: Bool = True
    auto_ingest: Bool = False
    meta_table_enabled: Bool = True

    @model_validator(mode="after")
    def _check(self) -> SnowpipeDestinationOptions:
        problems = []
        if not self.stage and not (self.schema_ and self.table):
            problems.append(("stage", "required unless the table stage (@%schema.table) is used"))
        if self.copy_on_write and not (self.schema_ and self.table):
            problems.append(("table", "schema and table are required when copy_on_write=true"))
        if problems:
            raise ValueError(problems)
        return self


class KafkaDestinationOptions(Options):
    brokers: CsvList
    topic: str
    format: Format = "arrow"
    compression: choice("none", "gzip", "snappy", "lz4", "zstd") = "none"
    acks: choice("all", "leader", "none") = "all"
    max_message_bytes: PositiveInt = 900000
    max_batch_bytes: PositiveInt | None = None
    max_record_bytes: PositiveInt | None = None
    oversize_policy: choice("error", "drop") = "error"


class S3DestinationOptions(Options):
    bucket: str
    prefix: str | None = None
    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    force_path_style: Bool = False
    use_fips: Bool = False
    use_dualstack: Bool = False
    region: str | None = None
    format: Format = "json"
    compression: choice("none", "gzip") | None = None
    partition_by: CsvList = Field(default_factory=list)


class _RetryOptions(Options):
    timeout: Duration = 10.0
    max_retries: Int = 5
    backoff_base: Duration = 0.2
    backoff_max: Duration = 30.0
    backoff_factor: float = 2.0
    headers: CsvList = Field(default_factory=list)
    payload_mode: choice("wire", "record_json", "raw", "wal") = "wire"
    format: Format = "json"


class HTTPDestinationOptions(_RetryOptions):
    url: str
    method: choice("post", "put", "patch") = "post"
    idempotency_header: str = "Idempotency-Key"


class GRPCDestinationOptions(_RetryOptions):
    endpoint: str
    insecure: Bool = True
    tls_ca_file: str | None = None
    tls_server_name: str | None = None
    flow_id: str | None = None
    destination: str | None = None


class PGStreamDestinationOptions(Options):
    dsn: str
    stream: str | None = None
    format: Format = "json"


DESTINATION_OPTIONS: dict[str, type[Options]] = {
    "duckdb": DuckDBDestinationOptions,
    "ducklake": DuckLakeDestinationOptions,
    "clickhouse": ClickHouseDestinationOptions,
    "snowflake": SnowflakeDestinationOptions,
    "snowpipe": SnowpipeDestinationOptions,
    "kafka": KafkaDestinationOptions,
    "bufstream": KafkaDestinationOptions,
    "s3": S3DestinationOptions,
    "http": HTTPDestinationOptions,
    "grpc": GRPCDestinationOptions,
    "pgstream": PGStreamDestinationOptions,
}
