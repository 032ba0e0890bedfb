"""Flow spec, connector options and errors: the user contract of USAGE.md, by the facts of it kept in the repo
(tests/data/usage_facts.json, made from ../shared/spec/USAGE.md by tests/usage_facts.py, and checked against it
whenever that file is present)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sinks.clickhouse.options import ClickHouseDestinationOptions
from sinks.duckdb.options import DuckDBDestinationOptions
from sinks.ducklake.options import DuckLakeDestinationOptions
from sinks.grpc.options import GRPCDestinationOptions
from sinks.http.options import HTTPDestinationOptions
from sinks.kafka.options import KafkaDestinationOptions
from sinks.pgstream.options import PGStreamDestinationOptions
from sinks.s3.options import S3DestinationOptions
from sinks.snowflake.options import SnowflakeDestinationOptions
from sinks.snowpipe.options import SnowpipeDestinationOptions
from sinks.sql.options import parse_type_mappings
from tests.usage_facts import OPTION_SECTIONS, USAGE_MD, facts_from, load_facts
from wallaby.core import registry
from wallaby.core.errors import (
    ConfigError,
    FieldProblem,
    SourceError,
    TerminalError,
    TransientError,
    TransientSourceError,
    grpc_status_name,
    is_transient,
    redact_dsn,
)
from wallaby.core.options import (
    SOURCE_OPTIONS,
    PostgresSourceOptions,
    choice,
    parse_bool,
    parse_csv,
    parse_duration,
    parse_headers,
    parse_int,
    rds_region_from_host,
    validate_options,
)
from wallaby.core.spec import DDLPolicy, FlowSpec, load_flow, parse_flow, slug

DESTINATION_OPTIONS = registry.options_models()

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flows" / "postgres_to_duckdb.json"

PG_DSN = "postgres://user:pass@localhost:5432/app?sslmode=disable"

# The smallest valid options of each connector (what "required" means in USAGE.md).
MINIMAL: dict[type, dict] = {
    PostgresSourceOptions: {"dsn": PG_DSN, "slot": "wallaby_slot", "publication": "wallaby_pub"},
    DuckDBDestinationOptions: {"dsn": ":memory:"},
    DuckLakeDestinationOptions: {"dsn": ":memory:", "catalog": "metadata.ducklake"},
    KafkaDestinationOptions: {"brokers": "localhost:9092", "topic": "cdc"},
    S3DestinationOptions: {"bucket": "wallaby-data"},
    HTTPDestinationOptions: {"url": "https://example.com/hook"},
    GRPCDestinationOptions: {"endpoint": "localhost:9090"},
    PGStreamDestinationOptions: {"dsn": PG_DSN},
    SnowflakeDestinationOptions: {"dsn": "user:pw@account/db"},
    SnowpipeDestinationOptions: {"dsn": "user:pw@account/db", "stage": "@cdc", "schema": "PUBLIC", "table": "T"},
    ClickHouseDestinationOptions: {"dsn": "clickhouse://default@localhost:9000/default"},
}


def minimal(model: type, **extra) -> dict:
    for cls in model.__mro__:
        if cls in MINIMAL:
            return {**MINIMAL[cls], **extra}
    raise KeyError(model)


def opts(model: type, **extra):
    obj, problems = validate_options(model, minimal(model, **extra), "options")
    assert not problems, problems
    return obj


def problems_of(model: type, **extra) -> dict[str, str]:
    _, problems = validate_options(model, minimal(model, **extra), "options")
    return {p.path.removeprefix("options."): p.message for p in problems}


def flow(**over) -> dict:
    data = {
        "name": "orders",
        "source": {"name": "pg", "type": "postgres", "options": dict(MINIMAL[PostgresSourceOptions])},
        "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": ":memory:"}}],
    }
    data.update(over)
    return data


def config_error(data, origin=None) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_flow(data, origin)
    return err.value


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("WALLABY_WIRE_FORMAT", "WALLABY_DDL_GATE", "WALLABY_DDL_AUTO_APPROVE", "WALLABY_DDL_AUTO_APPLY"):
        monkeypatch.delenv(var, raising=False)


# -- USAGE.md, by its facts kept in the repo --------------------------------------------------------

USAGE_FACTS = load_facts()


def test_usage_facts_match_usage_md():
    """The committed facts are still those of USAGE.md (which lives outside the repo: a clone has none)."""
    if not USAGE_MD.is_file():
        pytest.skip(f"{USAGE_MD} is not here (a clone without ../shared): the committed facts are used as they are")
    assert facts_from(USAGE_MD.read_text(encoding="utf-8")) == USAGE_FACTS, (
        "tests/data/usage_facts.json no longer matches USAGE.md: run `.venv/bin/python -m tests.usage_facts`")


ALL_DESTINATIONS = sorted(set(DESTINATION_OPTIONS.values()), key=lambda m: m.__name__)
MATERIALIZING = [DuckDBDestinationOptions, DuckLakeDestinationOptions, SnowflakeDestinationOptions,
                 SnowpipeDestinationOptions, ClickHouseDestinationOptions]
SECTION_MODELS: dict[str, list[type]] = {
    "Postgres Source Options": [PostgresSourceOptions],
    "Backfill + Replay": [PostgresSourceOptions],
    "Kafka Destination": [DESTINATION_OPTIONS["kafka"], DESTINATION_OPTIONS["bufstream"]],
    "S3 Destination": [S3DestinationOptions],
    "HTTP / Webhook Destination": [HTTPDestinationOptions],
    "gRPC Destination": [GRPCDestinationOptions],
    "DuckLake Destination": [DuckLakeDestinationOptions],
    "Postgres Stream Destination": [PGStreamDestinationOptions],
    "Snowflake Destination": [SnowflakeDestinationOptions],
    "Snowpipe Destination": [SnowpipeDestinationOptions],
    "DuckDB Destination": [DuckDBDestinationOptions],
    "ClickHouse Destination": [ClickHouseDestinationOptions],
    "Destination Metadata + Append/Soft Delete": ALL_DESTINATIONS,
    "Destination Type Mappings": MATERIALIZING,
    "Type Mapping (Schema Translation)": MATERIALIZING,
}
SECTIONS = USAGE_FACTS["sections"]
CASES = [(section, model, name)
         for section, models in SECTION_MODELS.items()
         for name in SECTIONS.get(section, {}).get("options", [])
         for model in models]
DEFAULT_CASES = [(section, model, name, default)
                 for section, models in SECTION_MODELS.items()
                 for name, default in SECTIONS.get(section, {}).get("defaults", {}).items()
                 for model in models]


def test_usage_md_is_read():
    assert set(SECTION_MODELS) == set(OPTION_SECTIONS)
    for section in SECTION_MODELS:
        assert section in SECTIONS, f"USAGE.md has no section {section!r}"
        assert SECTIONS[section]["options"], f"no option bullets found in {section!r}"
    names = {n for s, _, n in CASES}
    assert len({n for s, m, n in CASES if s == "Postgres Source Options"}) >= 32
    assert {"tls_ca_file", "tls_server_name", "secret_key", "session_token", "use_dualstack", "database",
            "backoff_factor", "snapshot_state_path", "meta_op", "type_mappings_file"} <= names
    assert len(DEFAULT_CASES) >= 60


@pytest.mark.parametrize(("section", "model", "name"), CASES,
                         ids=[f"{s}:{m.__name__}:{n}" for s, m, n in CASES])
def test_every_usage_option_is_accepted(section, model, name):
    assert name in model.option_names(), f"{model.__name__} lacks option {name!r} ({section})"
    _, problems = validate_options(model, minimal(model, **{name: "x"}), "options")
    assert not [p for p in problems if "unknown option" in p.message]


@pytest.mark.parametrize(("section", "model", "name", "default"), DEFAULT_CASES,
                         ids=[f"{s}:{m.__name__}:{n}" for s, m, n, _ in DEFAULT_CASES])
def test_every_usage_default_is_the_models_default(section, model, name, default):
    """The documented default, parsed by the option's own type, equals what an unset option gives."""
    field = next(n for n, f in model.model_fields.items() if (f.alias or n) == name)
    assert getattr(opts(model), field) == getattr(opts(model, **{name: default}), field)


def test_flow_fields_of_usage_md_are_accepted():
    names = USAGE_FACTS["flow_fields"]
    assert {"wire_format", "parallelism", "config.ack_policy", "config.primary_destination"} <= set(names)
    for name in names:
        top, _, sub = name.partition(".")
        if sub:
            assert sub in FlowSpec.model_fields[top].annotation.model_fields, name
        else:
            assert top in FlowSpec.model_fields, name


# -- parsers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("200ms", 0.2), ("1s", 1.0), ("10s", 10.0), ("1m", 60.0), ("1h", 3600.0), ("1.5s", 1.5), ("10", 10.0),
    ("0.25", 0.25), (" 2s ", 2.0), ("1m30s", 90.0), ("1h2m3s", 3723.0), ("500us", 0.0005), ("0", 0.0),
    (3, 3.0), (0.5, 0.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "s", "1 sec", "-1s", "1d", "ten", "1s2", True, None, [1], -3])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("TRUE", True), ("True", True), ("1", True), ("yes", True), ("Yes", True), (" on ", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False), ("NO", False), ("off", False),
    (True, True), (False, False), (1, True), (0, False),
])
def test_parse_bool(value, expected):
    assert parse_bool(value) is expected


@pytest.mark.parametrize("bad", ["maybe", "", "2", 2, None, "tru"])
def test_parse_bool_rejects(bad):
    with pytest.raises(ValueError, match="expected a boolean"):
        parse_bool(bad)


def test_parse_int():
    assert parse_int("500") == 500 and parse_int(500) == 500 and parse_int(" 7 ") == 7 and parse_int(5.0) == 5
    for bad in ("ten", "1.5", "", True, 1.5, None):
        with pytest.raises(ValueError, match="expected an integer"):
            parse_int(bad)


@pytest.mark.parametrize(("value", "expected"), [
    ("a,b,c", ["a", "b", "c"]), (" a , b ,, c ,", ["a", "b", "c"]), ("", []), (",,", []),
    ("public.orders", ["public.orders"]), (["a", " b ", ""], ["a", "b"]), (None, []),
])
def test_parse_csv(value, expected):
    assert parse_csv(value) == expected


def test_parse_csv_rejects_objects():
    with pytest.raises(ValueError, match="comma-separated"):
        parse_csv({"a": 1})


def test_parse_headers():
    assert parse_headers("Authorization:Bearer x, X-Team: cdc") == {"Authorization": "Bearer x", "X-Team": "cdc"}
    assert parse_headers("X-Time:12:30") == {"X-Time": "12:30"}
    assert parse_headers({"A": "b", "N": 1}) == {"A": "b", "N": "1"}
    with pytest.raises(ValueError, match="item 2 is not Key:Value") as err:
        parse_headers("A:b,Bearer-SECRET")
    assert "SECRET" not in str(err.value)


def test_parse_type_mappings_json_yaml_and_objects():
    expected = {"timestamptz": "TIMESTAMP_TZ", "jsonb": "VARIANT"}
    assert parse_type_mappings('{"timestamptz": "TIMESTAMP_TZ", "jsonb": "VARIANT"}') == expected
    assert parse_type_mappings(expected) == expected
    yaml = "# mappings\ntimestamptz: TIMESTAMP_TZ\njsonb: VARIANT\next:postgis.geometry: STRING\next:vector: ARRAY\n"
    assert parse_type_mappings(yaml) == {**expected, "ext:postgis.geometry": "STRING", "ext:vector": "ARRAY"}
    for bad in ("[1, 2]", "{not json", "just words", '{"a": 1}'):
        with pytest.raises(ValueError):
            parse_type_mappings(bad)


def test_choice_normalizes_aliases_and_lists_allowed_values():
    from pydantic import TypeAdapter

    mode = TypeAdapter(choice("wire", "record_json", "wal", aliases={"raw": "record_json"}))
    assert mode.validate_python(" WIRE ") == "wire"
    assert mode.validate_python("raw") == "record_json"
    with pytest.raises(ValueError, match=r"expected one of 'wire', 'record_json', 'wal', got 'wall'; did you mean"):
        mode.validate_python("wall")


# -- defaults --------------------------------------------------------------------------------------


def test_postgres_source_defaults():
    o = opts(PostgresSourceOptions)
    assert (o.create_slot, o.ensure_publication, o.validate_replication) == (True, True, True)
    assert o.publication_tables == [] and o.publication_schemas == []
    assert (o.batch_size, o.batch_timeout, o.status_interval) == (100, 1.0, 10.0)
    assert (o.emit_empty, o.resolve_types, o.sync_publication, o.sync_publication_mode) == (False, True, False, "add")
    assert (o.ensure_state, o.state_schema, o.state_table, o.flow_id) == (True, "wallaby", "source_state", None)
    assert (o.capture_ddl, o.ddl_trigger_schema, o.ddl_trigger_name, o.ddl_message_prefix) == (
        False, "wallaby", "wallaby_ddl_capture", "wallaby_ddl")
    assert (o.toast_fetch, o.toast_cache_size) == ("off", 10000)
    assert (o.aws_rds_iam, o.aws_region, o.aws_profile, o.aws_role_arn, o.aws_role_session_name,
            o.aws_role_external_id, o.aws_endpoint) == (False, None, None, None, None, None, None)
    assert o.format is None
    assert (o.snapshot_workers, o.parallel_tables, o.partition_column, o.partition_count) == (1, None, None, 1)
    assert (o.snapshot_consistent, o.snapshot_state_backend, o.snapshot_state_schema, o.snapshot_state_table,
            o.snapshot_state_path) == (True, "postgres", "wallaby", "snapshot_state", None)


def test_source_options_from_strings_and_native_values_agree():
    as_strings = opts(PostgresSourceOptions, batch_size="500", batch_timeout="200ms", create_slot="false",
                      publication_tables="public.a, public.b", toast_fetch="CACHE")
    native = opts(PostgresSourceOptions, batch_size=500, batch_timeout=0.2, create_slot=False,
                  publication_tables=["public.a", "public.b"], toast_fetch="cache")
    assert as_strings == native
    assert (native.batch_size, native.batch_timeout, native.create_slot) == (500, 0.2, False)


def test_empty_string_means_unset():
    o = opts(PostgresSourceOptions, batch_size="", aws_region="", format="")
    assert (o.batch_size, o.aws_region, o.format) == (100, None, None)
    assert problems_of(PostgresSourceOptions, slot="") == {"slot": "required option is empty"}


def test_destination_defaults():
    k = opts(KafkaDestinationOptions)
    assert k.brokers == ["localhost:9092"] and (k.format, k.compression, k.acks) == ("arrow", "none", "all")
    assert (k.max_message_bytes, k.max_batch_bytes, k.max_record_bytes, k.oversize_policy) == (
        900000, 900000, 900000, "error")
    k = opts(KafkaDestinationOptions, max_message_bytes="1000", max_record_bytes="500", acks="1")
    assert (k.max_batch_bytes, k.max_record_bytes, k.acks) == (1000, 500, "leader")

    s3 = opts(S3DestinationOptions)
    assert (s3.format, s3.force_path_style, s3.prefix, s3.partition_by) == ("json", False, None, [])
    assert opts(S3DestinationOptions, partition_by="region, created_at:DAY").partition_by == [
        "region", "created_at:day"]

    h = opts(HTTPDestinationOptions)
    assert (h.method, h.format, h.payload_mode, h.timeout, h.headers, h.idempotency_header) == (
        "POST", "json", "wire", 10.0, {}, "Idempotency-Key")
    assert (h.max_retries, h.backoff_base, h.backoff_max, h.backoff_factor) == (3, 0.2, 5.0, 2.0)
    assert opts(HTTPDestinationOptions, payload_mode="raw", method="put").payload_mode == "record_json"

    g = opts(GRPCDestinationOptions)
    assert (g.insecure, g.format, g.payload_mode, g.timeout, g.flow_id, g.destination) == (
        True, "json", "wire", 10.0, None, None)

    dl = opts(DuckLakeDestinationOptions)
    assert (dl.catalog_name, dl.data_path, dl.override_data_path, dl.install_extensions) == (
        "ducklake", None, False, True)

    pgs = opts(PGStreamDestinationOptions)
    assert (pgs.stream, pgs.format) == (None, "json")

    for model in (DuckDBDestinationOptions, SnowflakeDestinationOptions, ClickHouseDestinationOptions):
        t = opts(model)
        assert (t.schema_, t.table, t.write_mode, t.batch_mode, t.batch_resolution) == (
            None, None, "target", "target", "none")
        assert (t.staging_schema, t.staging_table, t.staging_suffix, t.meta_table_enabled) == (
            None, None, "_staging", True)
    sf = opts(SnowflakeDestinationOptions)
    assert (sf.meta_schema, sf.meta_table, sf.meta_pk_prefix) == ("WALLABY_META", "__METADATA", "pk_")
    ch = opts(ClickHouseDestinationOptions, schema="analytics")
    assert (ch.meta_engine, ch.meta_order_by, ch.target_database) == (
        "MergeTree", "flow_id, source_schema, source_table, key_json", "analytics")

    sp = opts(SnowpipeDestinationOptions)
    assert (sp.format, sp.copy_on_write, sp.auto_ingest, sp.meta_table_enabled, sp.write_mode) == (
        "parquet", True, False, True, "append")

    for model in ALL_DESTINATIONS:
        m = opts(model)
        assert (m.meta_enabled, m.meta_synced_at, m.meta_deleted, m.meta_watermark, m.meta_op) == (
            False, "__ds_synced_at", "__ds_is_deleted", "__ds_watermark", "__ds_op")
        assert (m.watermark_source, m.soft_delete, m.append_mode) == ("timestamp", False, False)
    assert opts(DuckDBDestinationOptions, meta_watermark="-").watermark_column is None
    for model in MATERIALIZING:
        assert (opts(model).type_mappings, opts(model).type_mappings_file) == (None, None)
    assert opts(DuckDBDestinationOptions, type_mappings="jsonb: VARIANT").type_mappings == {"jsonb": "VARIANT"}


def test_registries():
    assert {"postgres": PostgresSourceOptions} == SOURCE_OPTIONS
    assert set(DESTINATION_OPTIONS) == {"duckdb", "ducklake", "kafka", "bufstream", "s3", "http", "grpc",
                                        "pgstream", "snowflake", "snowpipe", "clickhouse"}
    assert set(DESTINATION_OPTIONS["bufstream"].option_names()) == set(KafkaDestinationOptions.option_names())


def test_flow_defaults(monkeypatch):
    spec = parse_flow(flow())
    assert (spec.id, spec.name, spec.wire_format, spec.parallelism) == ("orders", "orders", "arrow", 1)
    c = spec.config
    assert (c.ack_policy, c.primary_destination, c.failure_mode, c.give_up_policy) == (
        "all", None, "hold_slot", "on_retry_exhaustion")
    assert c.ddl == DDLPolicy(gate=None, auto_approve=None, auto_apply=None)
    assert spec.source.name == "pg" and spec.destinations[0].type == "duckdb"
    monkeypatch.setenv("WALLABY_WIRE_FORMAT", "JSON")
    assert parse_flow(flow()).wire_format == "json"
    assert parse_flow(flow(wire_format="avro")).wire_format == "avro"
    monkeypatch.setenv("WALLABY_WIRE_FORMAT", "xml")
    assert "wire_format: expected one of" in str(config_error(flow()))
    assert "(from WALLABY_WIRE_FORMAT)" in str(config_error(flow()))


def test_flow_id_is_a_stable_slug():
    assert slug("Orders → DuckDB (prod)") == "orders-duckdb-prod"
    assert slug("pg_to_duckdb") == "pg_to_duckdb"
    assert slug("заказы") == slug("заказы") and slug("заказы").startswith("flow-")
    assert parse_flow(flow(name="My Flow")).id == "my-flow"
    assert parse_flow(flow(id="explicit-1")).id == "explicit-1"
    spec = parse_flow({k: v for k, v in flow(id="only-id").items() if k != "name"})
    assert (spec.id, spec.name) == ("only-id", "only-id")


def test_source_name_defaults_to_its_type_and_source_format_is_accepted():
    data = flow()
    data["source"] = {"type": "postgres", "options": {**MINIMAL[PostgresSourceOptions], "format": "arrow"}}
    spec = parse_flow(data)
    assert spec.source.name == "postgres" and spec.source_options().format == "arrow"


def test_options_may_be_strings_or_native_json():
    data = flow()
    data["source"]["options"].update(batch_size=500, create_slot=False, batch_timeout=0.5,
                                     publication_tables=["public.orders"])
    o = parse_flow(data).source_options()
    assert (o.batch_size, o.create_slot, o.batch_timeout, o.publication_tables) == (500, False, 0.5, ["public.orders"])


def test_ddl_policy_effective(monkeypatch):
    assert DDLPolicy().effective({}) == DDLPolicy(gate=False, auto_approve=True, auto_apply=True)
    env = {"WALLABY_DDL_GATE": "true", "WALLABY_DDL_AUTO_APPROVE": "0", "WALLABY_DDL_AUTO_APPLY": "no"}
    assert DDLPolicy().effective(env) == DDLPolicy(gate=True, auto_approve=False, auto_apply=False)
    assert DDLPolicy(gate=False, auto_apply=True).effective(env) == DDLPolicy(
        gate=False, auto_approve=False, auto_apply=True)
    monkeypatch.setenv("WALLABY_DDL_GATE", "yes")
    assert DDLPolicy().effective().gate is True
    with pytest.raises(ConfigError, match="WALLABY_DDL_AUTO_APPLY: expected a boolean"):
        DDLPolicy().effective({"WALLABY_DDL_AUTO_APPLY": "sometimes"})
    spec = parse_flow(flow(config={"ddl": {"gate": "true", "auto_approve": False}}))
    assert spec.ddl_policy({}) == DDLPolicy(gate=True, auto_approve=False, auto_apply=True)


def test_example_flow_loads():
    spec = load_flow(EXAMPLE)
    assert spec.name == "pg_to_duckdb" and spec.wire_format == "arrow"
    src = spec.source_options()
    assert (src.slot, src.publication, src.batch_size, src.batch_timeout, src.status_interval, src.create_slot,
            src.format) == ("wallaby_slot", "wallaby_pub", 500, 1.0, 10.0, True, "arrow")
    dest = spec.destination_options("duckdb-out")
    assert isinstance(dest, DuckDBDestinationOptions)
    assert (dest.dsn, dest.schema_, dest.write_mode, dest.meta_table_enabled) == (
        "./data/warehouse.duckdb", "main", "target", True)
    assert spec.config.ack_policy == "primary" and spec.config.primary_destination == "duckdb-out"
    assert spec.config.ddl == DDLPolicy(gate=True, auto_approve=False, auto_apply=False)


# -- one error, every problem ------------------------------------------------------------------------


def test_many_problems_one_error_with_did_you_mean():
    data = {
        "name": "orders",
        "wire_formt": "json",
        "parallelism": "0",
        "source": {"name": "pg", "type": "postgres", "options": {
            "dsn": PG_DSN, "slott": "x", "slot": "Bad-Slot", "publication": "wallaby_pub", "batch_size": "ten",
            "batch_timeout": "1 sec", "toast_fetch": "ful", "create_slot": "maybe"}},
        "destinations": [
            {"name": "duck", "type": "duckdb", "options": {"schema": "main", "write_mod": "append"}},
            {"name": "duck", "type": "kafak", "options": {}},
            {"name": "k", "type": "kafka", "options": {"brokers": "b:9092", "topic": "t", "acks": "2"}},
        ],
        "config": {"ack_policy": "primary", "primary_destination": "kafka-out", "failur_mode": "drop_slot",
                   "ddl": {"gate": "perhaps"}},
    }
    err = config_error(data, "flows/orders.json")
    text = str(err)
    expected = [
        "parallelism: must be at least 1, got '0'",
        "source.options.slott: unknown option; did you mean 'slot'?",
        "source.options.slot: 'Bad-Slot' is not a valid replication slot name",
        "source.options.batch_size: expected an integer, got 'ten'",
        "source.options.batch_timeout: expected a duration",
        "source.options.toast_fetch: expected one of 'off', 'source', 'full', 'cache', got 'ful'; did you mean 'full'?",
        "source.options.create_slot: expected a boolean (true or false), got 'maybe'",
        "destinations[0].options.dsn: required option missing",
        "destinations[0].options.write_mod: unknown option; did you mean 'write_mode'?",
        "destinations[1].type: unknown destination type 'kafak'; did you mean 'kafka'?",
        "destinations[1].name: duplicate destination name 'duck' (also destinations[0])",
        "destinations[2].options.acks: expected one of 'all', 'leader', 'none', got '2'",
        "config.failur_mode: unknown field; did you mean 'failure_mode'?",
        "config.ddl.gate: expected a boolean (true or false), got 'perhaps'",
        "config.primary_destination: 'kafka-out' is not the name of a destination",
        "wire_formt: unknown field; did you mean 'wire_format'?",
    ]
    assert text.startswith(f"flow 'orders' (flows/orders.json) has {len(expected)} problems:\n  - ")
    for line in expected:
        assert f"\n  - {line}" in text, f"missing {line!r} in:\n{text}"
    assert len(err.problems) == len(expected)
    assert all(isinstance(p, FieldProblem) for p in err.problems)
    # every problem of the source comes before any of the destinations
    paths = [p.path for p in err.problems]
    assert max(i for i, p in enumerate(paths) if p.startswith("source")) < min(
        i for i, p in enumerate(paths) if p.startswith("destinations"))


def test_primary_destination_rules():
    text = str(config_error(flow(config={"ack_policy": "primary"})))
    assert "config.primary_destination: required when ack_policy=primary" in text
    text = str(config_error(flow(config={"ack_policy": "primary", "primary_destination": "duk"})))
    assert "'duk' is not the name of a destination; did you mean 'duck'?" in text
    assert parse_flow(flow(config={"ack_policy": "PRIMARY", "primary_destination": "duck"})).config.ack_policy == (
        "primary")


def test_structural_problems():
    assert "destinations: at least one destination is required" in str(config_error(flow(destinations=[])))
    text = str(config_error({"source": {"type": "postgress", "options": {}}, "destinations": "duck"}))
    assert "name: required field missing" in text
    assert "source.type: unknown source type 'postgress'; did you mean 'postgres'?" in text
    assert "destinations: expected a list of destinations" in text
    text = str(config_error(flow(destinations=[{"type": "duckdb", "options": {"dsn": "x"}}])))
    assert "destinations[0].name: required field missing" in text
    text = str(config_error(flow(destinations=[{"name": "d", "type": "warehouse", "options": []}])))
    assert "unknown destination type 'warehouse' (known: bufstream, clickhouse," in text
    data = flow()
    data["source"]["options"] = "dsn=x"
    assert "source.options: expected an object" in str(config_error(data))
    assert "state: a flow's state is not part of its definition" in str(config_error(flow(state="running")))
    assert "a flow must be a JSON object" in str(config_error("[1, 2]"))


def test_bad_json_names_line_and_column():
    text = str(config_error('{\n  "name": "x",\n  "source": }\n', "flows/x.json"))
    assert text == "flow file 'flows/x.json' has 1 problem:\n  - invalid JSON at line 3, column 13: Expecting value"


def test_load_flow_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it: No such file"):
        load_flow(tmp_path / "nope.json")
    (tmp_path / "f.json").write_text(json.dumps(flow()))
    assert load_flow(tmp_path / "f.json").id == "orders"


def test_source_cross_field_checks():
    assert problems_of(PostgresSourceOptions, snapshot_state_backend="file") == {
        "snapshot_state_path": "required when snapshot_state_backend=file"}
    assert opts(PostgresSourceOptions, snapshot_state_backend="file", snapshot_state_path="/tmp/s").snapshot_state_path
    assert "sync_publication" in problems_of(PostgresSourceOptions, sync_publication="true")
    assert opts(PostgresSourceOptions, parallel_tables="4").snapshot_workers == 4
    assert opts(PostgresSourceOptions, parallel_tables="4", snapshot_workers=4).snapshot_workers == 4
    assert "parallel_tables" in problems_of(PostgresSourceOptions, parallel_tables="4", snapshot_workers="2")
    for name, bad in [("publication", "my-pub"), ("state_schema", "1abc"), ("state_table", "a b"),
                      ("slot", "UPPER"), ("slot", "x" * 64), ("publication", "p" * 64)]:
        assert name in problems_of(PostgresSourceOptions, **{name: bad}), (name, bad)
    assert opts(PostgresSourceOptions, slot="s" * 63, publication="Pub_1$").slot == "s" * 63
    assert problems_of(PostgresSourceOptions, batch_size="0") == {"batch_size": "must be at least 1, got '0'"}
    assert "status_interval" in problems_of(PostgresSourceOptions, status_interval="0s")


def test_destination_cross_field_checks():
    assert set(problems_of(SnowpipeDestinationOptions, stage=None, schema=None)) == {"stage", "schema"}
    assert opts(SnowpipeDestinationOptions, stage=None).table_stage == "@%PUBLIC.T"
    assert "table" in problems_of(SnowpipeDestinationOptions, table=None)
    assert opts(SnowpipeDestinationOptions, schema=None, table=None, auto_ingest="true").stage == "@cdc"
    assert "write_mode" in problems_of(SnowpipeDestinationOptions, write_mode="target")
    assert problems_of(S3DestinationOptions, access_key="AKIA") == {"secret_key": "required when access_key is set"}
    assert "partition_by" in problems_of(S3DestinationOptions, partition_by="created_at:week")
    assert "database" in problems_of(ClickHouseDestinationOptions, database="a", schema="b")
    assert problems_of(KafkaDestinationOptions, brokers=" , ") == {"brokers": "must list at least one item"}
    assert "url" in problems_of(HTTPDestinationOptions, url="example.com/hook")


def test_endpoint_name_defaults_pgstream_stream_and_grpc_destination():
    data = flow(destinations=[
        {"name": "orders-stream", "type": "pgstream", "options": {"dsn": PG_DSN}},
        {"name": "ingest", "type": "grpc", "options": {"endpoint": "localhost:9090"}},
        {"name": "named", "type": "pgstream", "options": {"dsn": PG_DSN, "stream": "custom"}},
    ])
    spec = parse_flow(data)
    assert spec.destination_options(0).stream == "orders-stream"
    assert spec.destination_options("ingest").destination == "ingest"
    assert spec.destination_options(2).stream == "custom"
    with pytest.raises(KeyError, match="did you mean 'ingest'"):
        spec.destination_options("injest")


# -- RDS region inference --------------------------------------------------------------------------


def test_rds_region_inference():
    assert rds_region_from_host("mydb.c9akciq32.us-west-2.rds.amazonaws.com") == "us-west-2"
    assert rds_region_from_host("prod.cluster-ro-abc.eu-central-1.rds.amazonaws.com") == "eu-central-1"
    assert rds_region_from_host("db.abc.us-gov-west-1.rds.amazonaws.com") == "us-gov-west-1"
    assert rds_region_from_host("db.abc.cn-north-1.rds.amazonaws.com.cn") == "cn-north-1"
    assert rds_region_from_host("localhost") is None
    assert rds_region_from_host("db.example.com") is None

    rds = "postgres://iam_user@mydb.c9akciq32.us-west-2.rds.amazonaws.com:5432/app"
    o = opts(PostgresSourceOptions, dsn=rds, aws_rds_iam="true")
    assert o.aws_region == "us-west-2" and o.region == "us-west-2"
    kv = "host=mydb.abc.ap-southeast-2.rds.amazonaws.com dbname=app user=u"
    assert opts(PostgresSourceOptions, dsn=kv, aws_rds_iam=True).aws_region == "ap-southeast-2"
    assert opts(PostgresSourceOptions, dsn=rds, aws_rds_iam=True, aws_region="us-east-1").aws_region == "us-east-1"
    problems = problems_of(PostgresSourceOptions, aws_rds_iam="true")
    assert problems["aws_region"].startswith("required when aws_rds_iam=true")
    assert opts(PostgresSourceOptions, aws_rds_iam="true", aws_region="eu-west-1").aws_region == "eu-west-1"
    assert opts(PostgresSourceOptions).aws_region is None  # no IAM, nothing inferred


# -- redaction -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("connect postgres://u:SECRET@h:5432/db failed", "connect postgres://u:***@h:5432/db failed"),
    ("postgresql://u:SECRET@h/db", "postgresql://u:***@h/db"),
    ("postgres://:SECRET@h/db", "postgres://:***@h/db"),
    ("postgres://u:SE@CRET@h1:5432,h2:5433/db", "postgres://u:***@h1:5432,h2:5433/db"),
    ("postgres://h/db?user=u&password=SECRET&sslmode=require", "postgres://h/db?user=u&password=***&sslmode=require"),
    ("host=h password=SECRET dbname=db", "host=h password=*** dbname=db"),
    ("host=h password='SEC RET' dbname=db", "host=h password=*** dbname=db"),
    ("host=h password = 'SEC\\' RET' dbname=db", "host=h password = *** dbname=db"),
    ("host=h password='SECRET", "host=h password=***"),
    ("dsn 'host=h PASSWORD=SECRET'", "dsn 'host=h PASSWORD=***'"),
    ("sslpassword=SECRET", "sslpassword=***"),
    ("user:SECRET@account/db?warehouse=w", "user:***@account/db?warehouse=w"),
    ("{'password': 'SECRET', 'x': 1}", "{'password': '***', 'x': 1}"),
    ("postgres://u@h/db", "postgres://u@h/db"),
    ("postgres://h:5432/db", "postgres://h:5432/db"),
    ("at 10:30 mail a@b.com", "at 10:30 mail a@b.com"),
    ("", ""),
])
def test_redact_dsn(text, expected):
    assert redact_dsn(text) == expected


@pytest.mark.parametrize("dsn", [
    "postgres://u:SECRET@h:5432/db?foo=bar",  # libpq: invalid URI query parameter
    "host=h password='SECRET",  # libpq: unterminated quoted string
    "host=h password=SEC RET",  # libpq: missing "=" after "RET" -- a piece of the password
    "postgres://u:SECRET@h:5432/db?sslmode=disable&connect_timeout=x y",
])
def test_config_error_never_shows_a_password_of_a_bad_dsn(dsn):
    data = flow()
    data["source"]["options"]["dsn"] = dsn
    err = config_error(data)
    assert "source.options.dsn: not a valid Postgres connection string" in str(err)
    for secret in ("SECRET", "RET"):
        assert secret not in str(err)
        assert all(secret not in p.message for p in err.problems)


def test_config_error_never_shows_a_password_anywhere():
    data = flow()
    data["source"]["options"].update(slot="postgres://u:SECRET@h/db", publication="host=h password=SECRET")
    data["destinations"] = [{"name": "s3", "type": "s3", "options": {"bucket": "b", "secret_key": ["SECRET"]}},
                            {"name": "h", "type": "http", "options": {"url": "https://u:SECRET@x", "headers": 5}}]
    err = config_error(data)
    assert "SECRET" not in str(err)
    assert "source.options.slot" in str(err) and "destinations[0].options.secret_key: expected a string" in str(err)


def test_redacted_masks_dsn_passwords_and_secrets():
    data = flow(destinations=[
        {"name": "s3", "type": "s3", "options": {"bucket": "b", "access_key": "AKIASECRET", "secret_key": "SECRET",
                                                   "session_token": "SECRET", "prefix": "cdc"}},
        {"name": "hook", "type": "http", "options": {"url": "https://u:SECRET@example.com/hook",
                                                      "headers": "Authorization:Bearer SECRET,X-Team:cdc"}},
        {"name": "pg", "type": "pgstream", "options": {"dsn": "host=h user=u password=SECRET dbname=x"}},
    ])
    data["source"]["options"]["dsn"] = "postgres://u:SECRET@h:5432/app"
    spec = parse_flow(data)
    out = spec.redacted()
    assert "SECRET" not in json.dumps(out)
    assert out["source"]["options"]["dsn"] == "postgres://u:***@h:5432/app"
    s3 = out["destinations"][0]["options"]
    assert (s3["access_key"], s3["secret_key"], s3["session_token"], s3["prefix"]) == ("***", "***", "***", "cdc")
    assert out["destinations"][1]["options"]["headers"] == "Authorization:***,X-Team:***"
    assert out["destinations"][2]["options"]["dsn"] == "host=h user=u password=*** dbname=x"
    # the spec itself keeps the real values
    assert spec.source_options().dsn == "postgres://u:SECRET@h:5432/app"
    assert "SECRET" not in repr(spec.source_options()) and "SECRET" not in repr(spec.destination_options(0))


def test_error_types():
    err = ConfigError("flow 'x'", [FieldProblem("a", "b")])
    assert str(err) == "flow 'x' has 1 problem:\n  - a: b"
    assert isinstance(err, TerminalError) and not is_transient(err) and grpc_status_name(err) == "INVALID_ARGUMENT"
    src = SourceError("could not connect to postgres://u:SECRET@h/db", server="h:5432/db")
    assert "SECRET" not in str(src) and src.server == "h:5432/db" and not is_transient(src)
    src.transient = True
    assert is_transient(src) and grpc_status_name(src) == "UNAVAILABLE"
    t = TransientSourceError("gone", retry_after=2.0)
    assert isinstance(t, SourceError) and isinstance(t, TransientError) and t.retry_after == 2.0
    assert grpc_status_name(RuntimeError()) == "INTERNAL"


def test_destination_format_comes_from_the_flow_or_service_when_unset(monkeypatch):
    def flow(**extra):
        return {"name": "f", "source": {"type": "postgres", "options": {
            "dsn": "postgresql://u@h/db", "slot": "s", "publication": "p"}},
            "destinations": [{"name": "k", "type": "kafka", "options": {"brokers": "b:9092", "topic": "t"}},
                             {"name": "s", "type": "s3", "options": {"bucket": "b", "format": "parquet"}},
                             {"name": "d", "type": "duckdb", "options": {"dsn": "x.duckdb"}}], **extra}

    monkeypatch.delenv("WALLABY_WIRE_FORMAT", raising=False)
    spec = parse_flow(flow())  # nothing given: each destination's own default
    assert spec.destination_options(0).format == "arrow" and spec.destination_options(1).format == "parquet"
    spec = parse_flow(flow(wire_format="avro"))  # the flow's wire_format, unless the destination sets one
    assert spec.destination_options(0).format == "avro" and spec.destination_options(1).format == "parquet"
    assert "format" not in spec.destinations[2].options  # DuckDB has no format option
    monkeypatch.setenv("WALLABY_WIRE_FORMAT", "proto")
    spec = parse_flow(flow())
    assert spec.wire_format == "proto" and spec.destination_options(0).format == "proto"
    again = parse_flow(spec.model_dump(mode="json"))  # stored and read back: the same
    assert again.destination_options(0).format == "proto"
