"""Metrics and traces (docs/metrics.md): the /metrics endpoint of a real worker and of the API server, the DDL
gate's signals in OpenTelemetry's in-memory exporters, and WALLABY_METRICS_LISTEN checked."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import WORKER
from tests.apiserver import flow_file, make_server, wait_streaming
from tests.flows import ROOT, slot_confirmed, worker_env, worker_flow
from tests.servers import free_port
from wallaby.core.changes import parse_lsn
from wallaby.core.settings import SettingsError, load
from wallaby.core.telemetry import _otlp_signals, worker_listen


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page: (name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    return sum(found) if found else None


def wait_for(url: str, check, timeout: float = 60, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Scrape ``url`` until ``check(samples)`` is true; the samples."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()[-3000:] if log else ''}")
        try:
            last = scrape(url)
            if check(last):
                return last
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}: not reached in {timeout}s; last scrape: "
                         f"{ {k: v for k, v in last.items() if k[0].startswith('wallaby')} }")


def insert(dsn: str, first: int, n: int) -> int:
    """``n`` rows into t from id ``first``; the server's WAL position after them."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(%s::int, %s::int) g", (first, first + n - 1))
        return parse_lsn(c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])


def test_worker_metrics_move_with_the_flow(pgdb, tmp_path):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    flow = worker_flow(tmp_path, pgdb, "m1", "public.t", {"dsn": str(tmp_path / "m.duckdb")}, dest_type="duckdb")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {**worker_env(tmp_path), "WALLABY_METRICS_LISTEN": f"127.0.0.1:{port}"}
    log_path = tmp_path / "worker.log"
    with open(log_path, "ab") as log:
        worker = subprocess.Popen([*WORKER, "-flow-file", str(flow)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  cwd=ROOT)
    labels = {"flow": "m1", "destination": "dest"}
    try:
        wait_streaming(pgdb, "wallaby_m1")
        first = wait_for(url, lambda s: value(s, "wallaby_worker_starts_total", flow="m1", mode="stream") == 1
                         and value(s, "wallaby_confirmed_lsn", flow="m1") is not None, proc=worker, log=log_path)
        assert value(first, "wallaby_worker_start_time_seconds", flow="m1") is not None
        assert (value(first, "wallaby_changes_total", **labels) or 0) == 0

        lsn = insert(pgdb, 1, 50)
        one = wait_for(url, lambda s: (value(s, "wallaby_confirmed_lsn", flow="m1") or 0) >= lsn, proc=worker,
                       log=log_path)
        assert value(one, "wallaby_changes_total", **labels) == 50
        assert value(one, "wallaby_change_bytes_total", **labels) > 0
        assert value(one, "wallaby_commit_duration_seconds_count", **labels) >= 1
        assert value(one, "wallaby_epoch_write_duration_seconds_count", **labels) >= 1
        assert value(one, "wallaby_server_wal_lsn", flow="m1", slot="wallaby_m1") is not None
        assert value(one, "wallaby_replication_lag_bytes", flow="m1", slot="wallaby_m1") >= 0
        assert value(one, "wallaby_replication_lag_seconds", flow="m1", slot="wallaby_m1") >= 0
        assert value(one, "wallaby_destination_errors_total", **labels) is None
        confirmed = value(one, "wallaby_confirmed_lsn", flow="m1")

        lsn = insert(pgdb, 51, 30)
        two = wait_for(url, lambda s: (value(s, "wallaby_confirmed_lsn", flow="m1") or 0) >= lsn, proc=worker,
                       log=log_path)
        assert value(two, "wallaby_changes_total", **labels) == 80  # grew by what was written
        assert value(two, "wallaby_confirmed_lsn", flow="m1") > confirmed
        assert value(two, "wallaby_change_bytes_total", **labels) > value(one, "wallaby_change_bytes_total", **labels)
        assert any(n == "process_resident_memory_bytes" for n, _ in two)  # the process's own collectors too
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log_path.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
    assert "metrics on http://127.0.0.1:" in log_path.read_text()


def test_api_server_metrics(pgdb, tmp_path):
    """The API server's /metrics (the flow store's flows, worker launches), and a worker it launches serving its own
    on a free port (it inherits WALLABY_METRICS_LISTEN with port 0, not the server's port)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    server = make_server(tmp_path, WALLABY_METRICS_LISTEN=f"127.0.0.1:{port}").start()
    try:
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        server.admin("flow", "create", "-file", str(flow_file(tmp_path, pgdb, "sm", duck=tmp_path / "s.duckdb")))
        samples = wait_for(url, lambda s: value(s, "wallaby_flows", state="created") is not None)
        assert value(samples, "wallaby_flows", state="created") == 1
        assert value(samples, "wallaby_worker_generation_total", flow="sm") == 0
        assert value(samples, "target_info", service_name="wallaby") == 1
        server.admin("flow", "start", "-flow-id", "sm")
        samples = wait_for(url, lambda s: value(s, "wallaby_flows", state="running") == 1)
        assert value(samples, "wallaby_worker_generation_total", flow="sm") == 1  # one launch
        worker_log = tmp_path / "worker-logs" / "sm.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "metrics on http://" not in \
                (worker_log.read_text() if worker_log.exists() else ""):
            time.sleep(0.2)
        [worker_url] = re.findall(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", worker_log.read_text())
        assert worker_url != url
        worker = wait_for(worker_url, lambda s: value(s, "wallaby_confirmed_lsn", flow="sm") is not None)
        assert value(worker, "wallaby_worker_starts_total", flow="sm", mode="stream") == 1
        assert value(worker, "target_info", service_name="wallaby-worker") == 1
    finally:
        assert server.stop() == 0
    assert worker_listen("127.0.0.1:9464") == "127.0.0.1:0"
    assert worker_listen("[::1]:9464") == "[::1]:0"


@pytest.mark.parametrize("listen, says", [("9464", "is not a listen address"), ("127.0.0.1:99999", "port 0-65535"),
                                          ("busy", "cannot serve metrics on")])
def test_bad_metrics_listen_is_one_clear_error(tmp_path, listen, says):
    flow = worker_flow(tmp_path, "postgresql://nobody@127.0.0.1:1/none", "bad", None, {"dsn": ":memory:"},
                       dest_type="duckdb")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if listen == "busy":
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
        r = subprocess.run([*WORKER, "-flow-file", str(flow)], env={**worker_env(tmp_path),
                           "WALLABY_METRICS_LISTEN": listen}, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.strip()]
    assert line.startswith("wallaby-worker: WALLABY_METRICS_LISTEN: ") and says in line, line
    with pytest.raises(SettingsError, match="WALLABY_METRICS_LISTEN: 'nope' is not a listen address"):
        load({"WALLABY_METRICS_LISTEN": "nope"})
    assert load({"WALLABY_METRICS_LISTEN": ":9464"}).metrics_listen == ":9464"


def test_worker_exports_by_otlp(pgdb, tmp_path):
    """OTEL_EXPORTER_OTLP_ENDPOINT set: a worker's metrics reach an OTLP/HTTP collector (here a test server that
    keeps what it is sent), flushed when the worker stops at the latest."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        flow = worker_flow(tmp_path, pgdb, "otlp", "public.t", {"dsn": str(tmp_path / "o.duckdb")},
                           dest_type="duckdb")
        env = {**worker_env(tmp_path), "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
               "OTEL_SERVICE_NAME": "wallaby-otlp-test"}
        log_path = tmp_path / "worker.log"
        with open(log_path, "ab") as log:
            worker = subprocess.Popen([*WORKER, "-flow-file", str(flow)], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_streaming(pgdb, "wallaby_otlp")
            lsn = insert(pgdb, 1, 10)
            deadline = time.monotonic() + 60
            while slot_confirmed(pgdb, "wallaby_otlp") < lsn and time.monotonic() < deadline:
                time.sleep(0.2)
            worker.send_signal(signal.SIGTERM)  # the SDK flushes what it holds as the worker exits
            assert worker.wait(60) == 0, log_path.read_text()[-3000:]
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(30)
    finally:
        collector.shutdown()
        collector.server_close()
    metrics_bodies = b"".join(body for path, body in got if path == "/v1/metrics")
    assert b"wallaby.worker.starts" in metrics_bodies and b"wallaby-otlp-test" in metrics_bodies, \
        sorted({p for p, _ in got})
    assert b"wallaby.changes" in metrics_bodies
    assert b"wallaby.commit" in b"".join(body for path, body in got if path == "/v1/traces")  # the commit spans


def test_otlp_only_when_an_endpoint_is_set():
    assert _otlp_signals({}) == {}
    assert _otlp_signals({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == dict.fromkeys(
        ("traces", "metrics", "logs"), "http/protobuf")
    assert _otlp_signals({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4317/", "OTEL_EXPORTER_OTLP_PROTOCOL":
                          "grpc"}) == {"metrics": "grpc"}
    assert _otlp_signals({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_LOGS_EXPORTER": "none",
                          "OTEL_TRACES_EXPORTER": "none"}) == {"metrics": "http/protobuf"}
    assert _otlp_signals({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}) == {}
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' is not an OTLP protocol"):
        _otlp_signals({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


# A process of its own: OpenTelemetry's global providers are set once per process.
GATED = textwrap.dedent("""
    import json, sys, time
    import psycopg
    from opentelemetry import _logs, metrics, trace
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    reader, spans, logs = InMemoryMetricReader(), InMemorySpanExporter(), InMemoryLogExporter()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tp)
    lp = LoggerProvider()
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
    _logs.set_logger_provider(lp)

    from tests.flows import drain, flow_spec, source_part
    from wallaby.core.spec import DDLPolicy
    from wallaby.state.flowstore import FlowStore
    from wallaby.state.sqldb import SQLiteDatabase

    dsn, store_path = sys.argv[1], sys.argv[2]
    store = FlowStore(SQLiteDatabase(store_path))
    spec = flow_spec(dsn, flow_id="gm", slot="wallaby_gm", publication="wallaby_gm",
                     source={"publication_tables": "public.g"})
    part = source_part(spec, flows=store, ddl_policy=DDLPolicy(gate=True, auto_approve=False, auto_apply=True))
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO g VALUES (1, 1)")
    drain(part, until_rows=1)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("ALTER TABLE g ADD COLUMN w int")
        c.execute("INSERT INTO g VALUES (2, 2, 2)")
    deadline = time.monotonic() + 60
    while not store.list_ddl("pending", "gm") and time.monotonic() < deadline:
        drain(part, idle_polls=5, timeout=2)
    part.close()

    # a destination that retries in write and fails its commit: counted against it
    from sinks.base import Writer
    from sinks.fanout import DestinationWriter
    from wallaby.core import metrics as wm
    from wallaby.core.changes import ZERO, ChangeBatch
    from wallaby.core.errors import TransientSinkError

    class Flaky(Writer):
        def write(self, batch):
            wm.retried()
            wm.retried()

        def commit(self):
            raise TransientSinkError("flaky", "away")

    fan = DestinationWriter("gm", "flaky", Flaky())
    fan.write(ChangeBatch("gm", [], ZERO))
    try:
        fan.commit()
    except TransientSinkError:
        pass
    wm.retried()  # outside a destination's call: nobody's

    def points_of(name):
        return [(dict(p.attributes), p.value) for rm in reader.get_metrics_data().resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics if m.name == name for p in m.data.data_points]

    points = points_of("wallaby.ddl.gated_total")
    errors, retries = points_of("wallaby.destination.errors"), points_of("wallaby.destination.retries")
    events = [(s.name, e.name, dict(e.attributes)) for s in spans.get_finished_spans() for e in s.events]
    records = [(r.log_record.event_name, str(r.log_record.body), dict(r.log_record.attributes))
               for r in logs.get_finished_logs()]
    print(json.dumps({"pending": len(store.list_ddl("pending", "gm")), "points": points, "events": events,
                      "records": records, "errors": errors, "retries": retries}))
""")


def test_ddl_gate_signals_reach_the_exporters(pgdb, tmp_path):
    """A real gated flow's source (slot, drift found in the stream, the gate holding at it) in a process whose
    OpenTelemetry SDK exports into memory: the counter, the ``ddl_gate`` trace event and the ``ddl.gated`` event. In
    the same process, a fan-out destination's errors and retries are counted against it."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE g (id int PRIMARY KEY, v int)")
    r = subprocess.run([sys.executable, "-c", GATED, pgdb, str(tmp_path / "s.db")], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=worker_env(tmp_path))
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["pending"] == 1
    assert out["points"] == [[{"flow": "gm"}, 1]]
    [(span, _event, attrs)] = [e for e in out["events"] if e[1] == "ddl_gate"]
    assert span == "wallaby.ddl_gate" and attrs["wallaby.flow"] == "gm" and attrs["wallaby.table"] == "public.g"
    assert attrs["wallaby.ddl"] == "schema drift of public.g: added w" and attrs["wallaby.ddl_event_id"] == 1
    [(_name, body, rattrs)] = [x for x in out["records"] if x[0] == "ddl.gated"]
    assert body.startswith("ddl gate: ") and rattrs["wallaby.flow"] == "gm"
    assert "ddl gate: flow=gm" in r.stderr
    assert out["errors"] == [[{"flow": "gm", "destination": "flaky", "kind": "transient", "operation": "commit"}, 1]]
    assert out["retries"] == [[{"flow": "gm", "destination": "flaky"}, 2]]


def test_every_metric_is_documented_and_the_dashboard_uses_only_them():
    """docs/metrics.md names every instrument of wallaby/core/metrics.py (beside its Prometheus name), and the Grafana
    dashboard queries only those."""
    docs = (ROOT / "docs" / "metrics.md").read_text()
    source = (ROOT / "wallaby" / "core" / "metrics.py").read_text()
    defined = set(re.findall(r'create_[a-z_]+\(\s*"(wallaby\.[a-z_.]+)"', source))
    assert len(defined) >= 14, defined
    for name in defined:
        assert f"(`{name}`)" in docs, f"{name} is not in docs/metrics.md"
    documented = set(re.findall(r"^\| `(wallaby_[a-z_]+)`", docs, re.MULTILINE))
    dashboard = (ROOT / "examples" / "grafana" / "wallaby.json").read_text()
    json.loads(dashboard)
    used = {re.sub(r"_(bucket|count|sum)$", "", n) for n in re.findall(r"\b(wallaby_[a-z_]+)", dashboard)}
    assert used and used <= documented, used - documented


def test_wallaby_otel_service_names_the_worker(pgdb, tmp_path):
    """WALLABY_OTEL_SERVICE (the Go build's name for the service name) names the worker's telemetry; the standard
    OTEL_SERVICE_NAME wins over it."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    flow = worker_flow(tmp_path, pgdb, "svc", "public.t", {"dsn": str(tmp_path / "s.duckdb")}, dest_type="duckdb")
    for extra, want in (({"WALLABY_OTEL_SERVICE": "go-cdc"}, "go-cdc"),
                        ({"WALLABY_OTEL_SERVICE": "go-cdc", "OTEL_SERVICE_NAME": "std-cdc"}, "std-cdc")):
        port = free_port()
        env = {k: v for k, v in worker_env(tmp_path).items() if k != "OTEL_SERVICE_NAME"}
        env.update({"WALLABY_METRICS_LISTEN": f"127.0.0.1:{port}", **extra})
        log_path = tmp_path / f"{want}.log"
        with open(log_path, "ab") as log:
            worker = subprocess.Popen([*WORKER, "-flow-file", str(flow)], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            samples = wait_for(f"http://127.0.0.1:{port}/metrics", lambda s: value(s, "target_info") is not None,
                               proc=worker, log=log_path)
            assert value(samples, "target_info", service_name=want) == 1, \
                {k: v for k, v in samples.items() if k[0] == "target_info"}
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0, log_path.read_text()[-3000:]
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(30)
