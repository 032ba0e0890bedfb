"""The preflight (wallaby/preflight.py): every bad input is one clear error before anything is created.

Run through the real entry points (``python -m wallaby.control.worker``, ``python -m bytewax.run dataflows.flow:flow``,
the API's FlowManager) against the test Postgres, a moto S3 server and a real Kafka broker; after each refusal
the source has no slot, no publication and no ``wallaby`` schema, and no DuckDB file exists.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest

from dataflows import buildable
from dataflows.buildable import check_buildable
from dataflows.preflight import preflight
from sinks.duckdb.checks import check_duckdb_path
from sinks.grpc.checks import check_grpc_endpoint
from sinks.http.checks import check_http_url
from tests import SERVER, WORKER
from tests.kafka_broker import kafka_broker  # noqa: F401 - fixture
from tests.s3_server import s3_server  # noqa: F401 - fixture
from wallaby.core.errors import EXIT_CONFIG, EXIT_TRANSIENT, ConfigError
from wallaby.core.spec import parse_flow

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-Pre-fl1ght"  # in every source DSN: must never be printed


@pytest.fixture
def source(pgdb) -> str:
    """A source database with a table, its DSN carrying a password (the test server trusts postgres@127.0.0.1)."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    return pgdb.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def flow(dsn: str, destinations: list[dict] | None = None, flow_id: str = "pf", **source_options) -> dict:
    return {"id": flow_id, "name": flow_id,
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": dsn, "slot": f"{flow_id}_slot", "publication": f"{flow_id}_pub",
                "publication_tables": "public.orders", "batch_timeout": "100ms", **source_options}},
            "destinations": destinations or []}


def duck(path: Path | str, **options) -> dict:
    return {"name": "duck", "type": "duckdb", "options": {"dsn": str(path), **options}}


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALLABY_", "AWS_"))}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "checkpoints.db"), PYTHONPATH=str(ROOT), **extra)
    return env


def run_worker(tmp_path: Path, data: dict, **env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(data))
    return subprocess.run([*WORKER, "-flow-file", str(path), "-max-empty-reads", "1"],
                          env=env_for(tmp_path, **env), cwd=ROOT, capture_output=True, text=True, timeout=180)


def assert_clear(out: subprocess.CompletedProcess, code: int, *wanted: str) -> None:
    """Exit ``code``, the error names everything ``wanted``, no traceback, no panic, no password."""
    assert out.returncode == code, out.stderr[-3000:]
    for text in wanted:
        assert text in out.stderr, out.stderr[-3000:]
    for bad in ("Traceback", "panicked", "BytewaxRuntimeError", "outputs.rs", PASSWORD):
        assert bad not in out.stderr + out.stdout, out.stderr[-3000:]


def assert_nothing_created(dsn: str, *files: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
                         ).fetchall() == []
        assert c.execute("SELECT pubname FROM pg_publication").fetchall() == []
        assert c.execute("SELECT nspname FROM pg_namespace WHERE nspname = 'wallaby'").fetchall() == []
    for f in files:
        assert not f.exists(), f"{f} was created"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# -- inputs refused through wallaby-worker --------------------------------------------------------------


@pytest.mark.parametrize(("dest_options", "source_options", "wanted"), [
    ({"type_mappings_file": "{tmp}/no-such-map.yaml"}, {},
     ["destinations[0].options.type_mappings_file", "no-such-map.yaml", "no such file"]),
])
def test_unbuilt_options_and_a_missing_type_map_exit_2_and_create_nothing(tmp_path, source, dest_options,
                                                                           source_options, wanted):
    target = tmp_path / "out" / "w.duckdb"
    dest_options = {k: v.format(tmp=tmp_path) for k, v in dest_options.items()}
    out = run_worker(tmp_path, flow(source, [duck(target, **dest_options)], **source_options))
    assert_clear(out, EXIT_CONFIG, *wanted)
    assert_nothing_created(source, target, tmp_path / "out")


def test_a_duckdb_file_that_cannot_be_created_exits_2_naming_field_and_path(tmp_path, source):
    (tmp_path / "afile").write_text("not a directory")
    target = tmp_path / "afile" / "sub" / "w.duckdb"
    out = run_worker(tmp_path, flow(source, [duck(target)]))
    assert_clear(out, EXIT_CONFIG, "destinations[0].options.dsn", str(tmp_path / "afile"), "not a directory")
    assert_nothing_created(source)
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_a_missing_bucket_exits_2_naming_field_and_bucket(tmp_path, source, s3_server):  # noqa: F811
    bucket = "missing-" + uuid.uuid4().hex[:8]
    s3 = {"name": "lake", "type": "s3", "options": {"bucket": bucket, "endpoint": s3_server, "access_key": "test",
                                                     "secret_key": "test-secret", "force_path_style": "true"}}
    out = run_worker(tmp_path, flow(source, [s3]))
    assert_clear(out, EXIT_CONFIG, "destinations[0].options.bucket", repr(bucket), "does not exist")
    assert_nothing_created(source)
    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_an_unreachable_broker_is_one_transient_error_naming_it(tmp_path, source):
    broker = f"127.0.0.1:{closed_port()}"
    kafka = {"name": "bus", "type": "kafka", "options": {"brokers": broker, "topic": "orders"}}
    out = run_worker(tmp_path, flow(source, [kafka]))
    assert_clear(out, EXIT_TRANSIENT, "destination 'bus'", "destinations[0].options.brokers", broker)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert_nothing_created(source)


def test_http_and_grpc_are_checked_for_syntax_only_every_problem_at_once(tmp_path, source):
    dests = [{"name": "hook", "type": "http", "options": {"url": "http://:99999/cdc"}},
             {"name": "peer", "type": "grpc", "options": {"endpoint": "https://peer.example:443"}},
             duck(tmp_path / "afile" / "w.duckdb")]
    (tmp_path / "afile").write_text("")
    out = run_worker(tmp_path, flow(source, dests))
    assert_clear(out, EXIT_CONFIG, "3 problems", "destinations[0].options.url", "destinations[1].options.endpoint",
                 "destinations[2].options.dsn")
    assert_nothing_created(source)


# -- process settings -------------------------------------------------------------------------------------


def test_a_bad_setting_exits_2_with_one_line_naming_the_variable_and_format(tmp_path, source):
    target = tmp_path / "w.duckdb"
    out = run_worker(tmp_path, flow(source, [duck(target)]), WALLABY_DDL_POLL="2x")
    assert_clear(out, EXIT_CONFIG)
    assert out.stderr.strip().splitlines() == [
        "wallaby-worker: WALLABY_DDL_POLL: '2x' is not a duration (use seconds like 2.5 or 2s, 500ms, 1m)"]
    assert_nothing_created(source, target)


def test_job_dispatch_without_an_image_is_refused_by_the_api_server_at_start(tmp_path):
    from tests.apiserver import server_env

    env = server_env(tmp_path, WALLABY_K8S_ENABLED="true")
    out = subprocess.run([*SERVER], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == EXIT_CONFIG, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == ("wallaby: WALLABY_K8S_JOB_IMAGE: required with WALLABY_K8S_ENABLED=true (the worker image,"
                         " like ghcr.io/josephjohncox/wallaby:0.1.0)")
    assert "Traceback" not in out.stderr and "listening" not in out.stderr


# -- the other entry points -------------------------------------------------------------------------------


def test_bytewax_run_runs_the_same_preflight(tmp_path, source):
    """`python -m bytewax.run dataflows.flow:flow` refuses a type_mappings key and a metadata column the source
    does not allow (it skipped both before), before its source creates anything."""
    with psycopg.connect(source, autocommit=True) as c:
        c.execute("ALTER TABLE orders ADD COLUMN __ds_op text")
    target = tmp_path / "w.duckdb"
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(flow(source, [duck(target, type_mappings={"no_such_type": "VARCHAR"},
                                                   soft_delete="true")])))
    out = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.flow:flow"],
                         env=env_for(tmp_path, WALLABY_FLOW_FILE=str(path), WALLABY_MAX_EMPTY_READS="1"),
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert_clear(out, EXIT_CONFIG, "destinations[0].options.type_mappings", "'no_such_type' is not a type",
                 "'__ds_op' is also a column of public.orders")
    assert_nothing_created(source, target)
    out = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.flow:flow"],
                         env=env_for(tmp_path, WALLABY_FLOW_FILE=str(path), WALLABY_MAX_EMPTY_READS="x"),
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert_clear(out, EXIT_CONFIG, "WALLABY_MAX_EMPTY_READS: 'x' is not a whole number")


def test_create_flow_runs_the_preflight(tmp_path, source, monkeypatch):
    """CreateFlow refuses what the preflight refuses and stores nothing; a destination (or source) that does not
    answer is accepted, as before, and the worker checks again."""
    from wallaby.control.api.manager import FlowManager
    from wallaby.state.checkpoints import open_store

    env = env_for(tmp_path, WALLABY_WORKER_LOG_DIR=str(tmp_path / "logs"))
    store = open_store(env)
    manager = FlowManager(store, env=env)
    try:
        (tmp_path / "afile").write_text("")
        bad = parse_flow(flow(source, [duck(tmp_path / "afile" / "w.duckdb")], flow_id="bad"))
        with pytest.raises(ConfigError, match=r"destinations\[0\]\.options\.dsn"):
            manager.create(bad)
        from tests.test_registry import without_sink

        without_sink(monkeypatch, "snowpipe")
        unbuilt = parse_flow(flow(source, [{"name": "c", "type": "snowpipe", "options": {
            "dsn": "u:pw@acct/db", "stage": "st", "schema": "s", "table": "t"}}],
                                  flow_id="later"))
        with pytest.raises(ConfigError, match="not available in this version"):
            manager.create(unbuilt)
        assert [f.id for f in manager.store.list()] == []
        away = {"name": "bus", "type": "kafka", "options": {"brokers": f"127.0.0.1:{closed_port()}", "topic": "t"}}
        assert manager.create(parse_flow(flow(source, [away], flow_id="away"))).id == "away"
        gone = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed_port()}/db"
        quiet = parse_flow(flow(gone, [duck(tmp_path / "q.duckdb", type_mappings={"no_such_type": "VARCHAR"})],
                                flow_id="quiet"))
        assert manager.create(quiet).id == "quiet"  # the source does not answer: its worker checks the keys
        assert sorted(f.id for f in manager.store.list()) == ["away", "quiet"]
        assert_nothing_created(source, tmp_path / "q.duckdb")
    finally:
        manager.shutdown()
        store.close()


# -- the checks themselves --------------------------------------------------------------------------------


def test_preflight_passes_for_reachable_destinations_and_creates_nothing(tmp_path, source, s3_server,  # noqa: F811
                                                                         kafka_broker):  # noqa: F811
    from confluent_kafka.admin import AdminClient

    bucket = "there-" + uuid.uuid4().hex[:8]
    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    topic = "preflight-" + uuid.uuid4().hex[:8]
    target = tmp_path / "new" / "dir" / "w.duckdb"
    spec = parse_flow(flow(source, [
        duck(target),
        {"name": "lake", "type": "s3", "options": {"bucket": bucket, "endpoint": s3_server, "access_key": "test",
                                                   "secret_key": "test-secret", "force_path_style": "true"}},
        {"name": "bus", "type": "kafka", "options": {"brokers": kafka_broker.bootstrap, "topic": topic}},
        {"name": "hook", "type": "http", "options": {"url": "https://hooks.example:8443/cdc"}},
        {"name": "peer", "type": "grpc", "options": {"endpoint": "peer.example:50051"}}]))
    preflight(spec)
    assert_nothing_created(source, target, tmp_path / "new")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    topics = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=30).topics
    assert topic not in topics  # asking for the brokers' metadata did not auto-create the flow's topic


def _spec(tmp_path, **dest_options):
    return parse_flow(flow("postgresql://u@127.0.0.1:1/db", [duck(tmp_path / "w.duckdb", **dest_options)]))


def test_unbuilt_options_at_their_defaults_are_accepted(tmp_path, monkeypatch):
    spec = parse_flow(flow("postgresql://u@127.0.0.1:1/db", [duck(":memory:", batch_mode="target",
                                                                  batch_resolution="none", staging_suffix="_staging")],
                           snapshot_workers="1", snapshot_consistent="true", snapshot_state_backend="postgres"))
    check_buildable(spec)
    # partition_column is built (key-range backfill parts): accepted at any value, judged against the tables later.
    check_buildable(parse_flow(flow("postgresql://u@127.0.0.1:1/db", [duck(":memory:")], partition_column="id")))
    # DuckDB's staging options are built (sinks/duckdb/staging.py): accepted at any value.
    check_buildable(_spec(tmp_path, batch_mode="staging", batch_resolution="replace", staging_schema="st",
                          staging_table="t", staging_suffix="_s"))
    # The mechanism still refuses, by name, a destination option marked unbuilt when it is not at its default.
    monkeypatch.setitem(buildable.UNBUILT_DESTINATION_OPTIONS, "duckdb", {"staging_schema": "not built"})
    check_buildable(_spec(tmp_path, staging_suffix="_x"))
    with pytest.raises(ConfigError) as err:
        check_buildable(_spec(tmp_path, staging_schema="st"))
    assert [p.path for p in err.value.problems] == ["destinations[0].options.staging_schema"]
    assert "not built" in str(err.value)


def test_duckdb_path_check(tmp_path):
    def problems(dsn):
        return [p.message for p in check_duckdb_path(0, None, _spec(tmp_path, dsn=str(dsn)).destination_options(0))]

    assert problems(":memory:") == []
    assert problems(tmp_path / "a" / "b" / "w.duckdb") == []  # can be created
    assert not (tmp_path / "a").exists()  # and was not
    (tmp_path / "w.duckdb").write_bytes(b"")
    assert problems(tmp_path / "w.duckdb") == []  # an existing file
    assert "is a directory" in problems(tmp_path)[0]
    (tmp_path / "f").write_text("")
    assert "is a file, not a directory" in problems(tmp_path / "f" / "w.duckdb")[0]


@pytest.mark.parametrize(("endpoint", "ok"), [
    ("127.0.0.1:50051", True), ("peer.example:443", True), ("peer", True), ("[::1]:50051", True),
    ("dns:///peer.example:443", True), ("unix:/run/wallaby.sock", True),
    ("http://peer:50051", False), ("peer:99999", False), ("peer:port", False), ("dns:", False), ("a b:1", False),
])
def test_grpc_endpoint_syntax(endpoint, ok):
    spec = parse_flow(flow("postgresql://u@127.0.0.1:1/db", [{"name": "g", "type": "grpc",
                                                              "options": {"endpoint": endpoint}}]))
    assert (check_grpc_endpoint(0, spec.destinations[0], spec.destination_options(0)) == []) is ok


@pytest.mark.parametrize(("url", "ok"), [
    ("https://hooks.example/cdc", True), ("http://127.0.0.1:8080/x", True),
    ("http://:80/x", False), ("http://h:99999/", False), ("http://h:0/", False),
])
def test_http_url_syntax(url, ok):
    spec = parse_flow(flow("postgresql://u@127.0.0.1:1/db", [{"name": "h", "type": "http", "options": {"url": url}}]))
    assert (check_http_url(0, spec.destinations[0], spec.destination_options(0)) == []) is ok


def test_a_missing_type_mappings_file_is_refused_by_the_spec(tmp_path):
    with pytest.raises(ConfigError) as err:
        _spec(tmp_path, type_mappings_file=str(tmp_path / "nope.json"))
    assert [p.path for p in err.value.problems] == ["destinations[0].options.type_mappings_file"]
    assert "\n" not in err.value.problems[0].message and "pydantic" not in str(err.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("jsonb VARCHAR\n")
    with pytest.raises(ConfigError, match=r"type_mappings_file: .*bad\.yaml.*line 1"):
        _spec(tmp_path, type_mappings_file=str(bad))
    good = tmp_path / "map.yaml"
    good.write_text("jsonb: VARCHAR\n")
    opts = _spec(tmp_path, type_mappings_file=str(good), type_mappings={"uuid": "VARCHAR"}).destination_options(0)
    assert opts.mappings() == {"jsonb": "VARCHAR", "uuid": "VARCHAR"}
