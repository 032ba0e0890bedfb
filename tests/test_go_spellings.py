"""The Go WALlaby's command-line spellings and settings (issue 19), through the real console scripts
``wallaby-admin`` and ``wallaby-worker``: a real API server, real workers, Postgres and DuckDB."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg
import pytest

from sources.postgres.ddl_catalog import Column, changes
from tests.apiserver import ROOT, flow_file, make_server
from tests.flows import worker_env, worker_flow
from wallaby.control import goconfig
from wallaby.core.errors import ConfigError
from wallaby.core.settings import SettingsError, load
from wallaby.core.telemetry import service_name

BIN = Path(sys.executable).parent
ADMIN = str(BIN / "wallaby-admin")
WORKER = str(BIN / "wallaby-worker")


def admin(server, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``wallaby-admin ARGS`` as typed (no -addr added: each case says where the server is)."""
    return subprocess.run([ADMIN, *args], env=server.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def worker(tmp: Path, *args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([WORKER, *args], env=env or worker_env(tmp), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def last_line(out: subprocess.CompletedProcess) -> str:
    return [ln for ln in out.stderr.splitlines() if ln.strip()][-1]


# -- wallaby-admin -----------------------------------------------------------------------------------------


def test_admin_takes_the_go_flags_before_and_after_the_command(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    server = make_server(tmp_path).start()
    try:
        addr = server.addr
        out = admin(server, "flow", "create", "-file", str(flow_file(tmp_path, pgdb, "g1", duck=tmp_path / "g.duckdb")),
                    "-endpoint", addr, "-insecure")
        assert out.returncode == 0, out.stderr

        # -endpoint before or after the command, with one dash or two, -endpoint=ADDR
        for args in (("-endpoint", addr, "flow", "list"), ("flow", "list", "-endpoint", addr),
                     ("flow", "list", f"--endpoint={addr}"), ("flow", "-endpoint", addr, "list")):
            out = admin(server, *args)
            assert out.returncode == 0, (args, out.stderr)
            assert out.stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "STATE"] and "g1" in out.stdout, args

        # -json: the response as JSON on one line; -pretty: the same JSON indented (as -o json)
        indented = admin(server, "flow", "get", "-flow-id", "g1", "-addr", addr, "-o", "json")
        assert indented.returncode == 0, indented.stderr
        want = json.loads(indented.stdout)
        assert want["id"] == "g1" and indented.stdout.count("\n") > 3
        for args in (("-json", "flow", "get", "-flow-id", "g1", "-endpoint", addr),
                     ("flow", "get", "-flow-id", "g1", "-endpoint", addr, "-json"),
                     ("flow", "get", "-flow-id", "g1", "-endpoint", addr, "-json=true", "-pretty=false")):
            out = admin(server, *args)
            assert out.returncode == 0, (args, out.stderr)
            assert out.stdout.count("\n") == 1 and json.loads(out.stdout) == want, (args, out.stdout)
        for args in (("-pretty", "flow", "get", "-flow-id", "g1", "-endpoint", addr),
                     ("flow", "get", "-flow-id", "g1", "-endpoint", addr, "--pretty"),
                     ("flow", "get", "-flow-id", "g1", "-endpoint", addr, "-json", "-pretty")):
            out = admin(server, *args)
            assert out.returncode == 0, (args, out.stderr)
            assert json.loads(out.stdout) == want and out.stdout.startswith('{\n  "id": "g1",\n'), (args, out.stdout)
        # -json=false is the default output, the table
        out = admin(server, "-json=false", "flow", "list", "-endpoint", addr)
        assert out.returncode == 0 and out.stdout.startswith("ID"), out.stderr

        # the Go tool's usual DDL listing
        out = admin(server, "ddl", "list", "-status", "all", "-endpoint", addr, "-insecure", "-json")
        assert out.returncode == 0 and json.loads(out.stdout) == {}, (out.stdout, out.stderr)

        # -insecure: plaintext, as the Go tool (its default); before the command too, and as -insecure=true
        for args in (("-insecure", "flow", "list", "-endpoint", addr), ("flow", "list", "-insecure=true",
                                                                        "-endpoint", addr)):
            out = admin(server, *args)
            assert out.returncode == 0 and "g1" in out.stdout, (args, out.stderr)
        # -insecure=false asks for TLS: a plaintext server cannot answer it
        out = admin(server, "flow", "list", "-endpoint", addr, "-insecure=false", "-timeout", "5")
        assert out.returncode == 3, out.stderr

        # contradictions and bad values: exit 2 before any RPC, one line naming the flags
        for args, says in (
                (("flow", "list", "-endpoint", addr, "-insecure", "-tls"),
                 "-insecure (plaintext gRPC) contradicts -tls"),
                (("-json", "flow", "list", "-endpoint", addr, "-o", "table"),
                 "-json (JSON output) contradicts -o table"),
                (("flow", "list", "-endpoint", addr, "-pretty", "-o", "table"), "-pretty (JSON output) contradicts"),
                (("flow", "list", "-endpoint", addr, "-insecure=perhaps"), "-insecure=perhaps: not a boolean")):
            out = admin(server, *args)
            assert out.returncode == 2 and last_line(out).startswith(f"wallaby-admin: {says}"), (args, out.stderr)
    finally:
        assert server.stop() == 0


def test_admin_insecure_false_is_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    server = make_server(tmp_path, WALLABY_GRPC_TLS_CERT=str(cert), WALLABY_GRPC_TLS_KEY=str(key))
    server.tls_ca = cert
    server.start()
    try:
        ok = admin(server, "flow", "list", "-endpoint", server.addr, "-insecure=false", "-ca-file", str(cert))
        assert ok.returncode == 0 and ok.stdout.startswith("ID"), ok.stderr
        plain = admin(server, "flow", "list", "-endpoint", server.addr, "-insecure", "-timeout", "5")
        assert plain.returncode != 0  # the Go tool's plaintext cannot talk to a TLS server
    finally:
        server.stop()


# -- wallaby-worker -mode cdc, -schemas, -config ---------------------------------------------------------------


def _duck(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as d:
        return d.execute(sql).fetchall()


def test_worker_mode_cdc_is_the_stream(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t VALUES (1, 'before the slot')")
    duck = tmp_path / "cdc.duckdb"
    flow = worker_flow(tmp_path, pgdb, "cdc", "public.t", {"dsn": str(duck)}, dest_type="duckdb")
    out = worker(tmp_path, "-flow-file", str(flow), "-mode", "cdc", "-max-empty-reads", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO t VALUES (2, 'a change')")
    out = worker(tmp_path, "-flow-file", str(flow), "--mode=cdc", "-max-empty-reads", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    # the stream: the change, not what the table held before the slot (a backfill would have copied row 1)
    assert _duck(duck, "SELECT id, v FROM public.t ORDER BY id") == [(2, "a change")]


def _schemas(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for schema, table, n in (("sales", "orders", 30), ("sales", "refunds", 5), ("hr", "people", 7),
                                 ("public", "other", 3)):
            c.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            c.execute(f"CREATE TABLE {schema}.{table} (id int PRIMARY KEY, v text)")
            c.execute(f"INSERT INTO {schema}.{table} SELECT g, 'r' || g FROM generate_series(1, {n}) g")


def _tables(duck: Path) -> dict[str, int]:
    with duckdb.connect(str(duck), read_only=True) as d:
        names = d.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables"
                          " WHERE table_name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY 1").fetchall()
        return {n: d.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for (n,) in names
                if not n.startswith(("main.", "wallaby"))}


def test_worker_schemas_backfills_every_table_of_them(tmp_path, pgdb):
    _schemas(pgdb)
    duck = tmp_path / "s.duckdb"
    flow = worker_flow(tmp_path, pgdb, "sch", None, {"dsn": str(duck)}, dest_type="duckdb")  # FOR ALL TABLES

    # checked before anything is read: an unknown schema, -schemas with -tables, -schemas in the stream
    out = worker(tmp_path, "-flow-file", str(flow), "-mode", "backfill", "-schemas", "sales,salse,nope")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "-schemas: schema 'salse' does not exist in the flow's source database; did you mean 'sales'?" \
        in out.stderr and "-schemas: schema 'nope' does not exist" in out.stderr, out.stderr[-3000:]
    out = worker(tmp_path, "-flow-file", str(flow), "-mode", "backfill", "-schemas", "sales", "-tables", "hr.people")
    assert out.returncode == 2 and "give -tables or -schemas, not both" in out.stderr, out.stderr[-3000:]
    out = worker(tmp_path, "-flow-file", str(flow), "-mode", "cdc", "-schemas", "sales")
    assert out.returncode == 2 and "-schemas: applies to -mode backfill" in out.stderr, out.stderr[-3000:]
    assert not duck.exists()

    out = worker(tmp_path, "-flow-file", str(flow), "-mode", "backfill", "-schemas", "sales")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _tables(duck) == {"sales.orders": 30, "sales.refunds": 5}
    out = worker(tmp_path, "-flow-file", str(flow), "-mode", "backfill", "--schemas=hr,public")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _tables(duck) == {"sales.orders": 30, "sales.refunds": 5, "hr.people": 7, "public.other": 3}


def test_worker_schemas_against_a_publication_without_them(tmp_path, pgdb):
    _schemas(pgdb)
    duck = tmp_path / "p.duckdb"
    flow = worker_flow(tmp_path, pgdb, "pubs", "sales.orders", {"dsn": str(duck)}, dest_type="duckdb")
    out = worker(tmp_path, "-flow-file", str(flow), "-max-empty-reads", "1")  # makes the publication: sales.orders
    assert out.returncode == 0, out.stderr[-3000:]
    out = worker(tmp_path, "-flow-file", str(flow), "-mode", "backfill", "-schemas", "hr")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "-schemas: schema 'hr' has no table in the flow's publication 'wallaby_pubs'; add them (wallaby-admin" \
           " publication sync -flow-id pubs -schemas hr)" in out.stderr, out.stderr[-3000:]
    out = worker(tmp_path, "-flow-file", str(flow), "-mode", "backfill", "-schemas", "sales")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _tables(duck) == {"sales.orders": 30}  # refunds is not published: not backfilled


def test_worker_config_is_the_go_runtime_config(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
    flow = worker_flow(tmp_path, pgdb, "conf", "public.t", {"dsn": str(tmp_path / "c.duckdb")}, dest_type="duckdb")
    file_store, env_store = tmp_path / "from-file.db", tmp_path / "c.db"  # worker_env's store: c.db
    cfg = tmp_path / "wallaby-worker.yaml"
    cfg.write_text(f"checkpoints:\n  backend: sqlite\n  path: {file_store}\nddl:\n  gate: false\n"
                   "  catalog_schemas: [public]\nwire:\n  enforce: true\n")
    out = worker(tmp_path, "-flow-file", str(flow), "-config", str(cfg), "-max-empty-reads", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    # the file wins over the environment, as in the Go build: the checkpoint is in the file's store
    with sqlite3.connect(file_store) as db:
        assert [r[0] for r in db.execute("SELECT flow_id FROM wallaby_checkpoints")] == ["conf"]
    assert not env_store.exists()
    said = next(ln for ln in out.stderr.splitlines() if "-config" in ln)
    assert "WALLABY_CHECKPOINT_PATH" in said and str(file_store) not in said  # the settings, never their values

    # JSON too; a bad value is the setting's own error, naming it
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ddl": {"catalog_enabled": True, "catalog_interval": "soon"}}))
    out = worker(tmp_path, "-flow-file", str(flow), "-config", str(bad), "-max-empty-reads", "1")
    assert out.returncode == 2 and "WALLABY_DDL_CATALOG_INTERVAL: 'soon' is not a duration" in out.stderr, \
        out.stderr[-3000:]

    # keys of features wallaby does not have, unknown keys, a flow given as -config: refused by name, exit 2
    bad = tmp_path / "refused.yaml"
    bad.write_text("profiling:\n  enabled: true\npostgres:\n  dsnn: x\nartifacts:\n  bucket: b\nbogus: 1\n")
    out = worker(tmp_path, "-flow-file", str(flow), "-config", str(bad))
    assert out.returncode == 2, out.stderr[-3000:]
    for says in ("profiling: not available in wallaby: Go's pprof server", "postgres.dsnn: not a key of the Go"
                 " WALlaby's config file; did you mean 'postgres.dsn'?", "artifacts: not available in wallaby",
                 "bogus: not a key of the Go WALlaby's config file"):
        assert says in out.stderr, (says, out.stderr[-3000:])
    out = worker(tmp_path, "-flow-file", str(flow), "-config", str(flow))
    assert out.returncode == 2 and "is a flow, not the Go build's runtime config; run a flow file with -flow-file" \
        in out.stderr, out.stderr[-3000:]
    out = worker(tmp_path, "-flow-file", str(flow), "-config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "-config: cannot read" in out.stderr, out.stderr[-3000:]


def test_goconfig_maps_keys_to_settings(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("postgres:\n  dsn: postgres://u:secret@db/w\nkubernetes:\n  job_labels: {team: data}\n"
                   "  job_args: [-epoch-interval, 1s]\n  job_ttl_seconds: 0\ntelemetry:\n  metrics_interval: 15s\n"
                   "dbos:\n  enabled: true\n  max_empty_reads: 3\n")
    assert goconfig.load(str(cfg)) == {
        "WALLABY_POSTGRES_DSN": "postgres://u:secret@db/w", "WALLABY_K8S_JOB_LABELS": "team=data",
        "WALLABY_K8S_JOB_ARGS": "-epoch-interval,1s", "WALLABY_K8S_JOB_TTL_SECONDS": "0",
        "OTEL_METRIC_EXPORT_INTERVAL": "15000", "WALLABY_DBOS_ENABLED": "true", "WALLABY_DBOS_MAX_EMPTY_READS": "3"}
    cfg.write_text("postgres:\n  dsn: [1, {a: 2}]\n")
    with pytest.raises(ConfigError, match="postgres.dsn: a list where a value"):
        goconfig.load(str(cfg))
    cfg.write_text("a: 1\n---\nb: 2\n")
    with pytest.raises(ConfigError, match="one mapping of sections is expected"):
        goconfig.load(str(cfg))
    with pytest.raises(ConfigError, match="use a .yaml, .yml or .json file"):
        goconfig.load(str(tmp_path / "c.toml"))


# -- settings the Go build reads -----------------------------------------------------------------------------


def test_go_settings_parse_or_are_refused_by_name():
    s = load({"WALLABY_K8S_JOB_BACKOFF_LIMIT": "0", "WALLABY_K8S_JOB_ENV": "TZ=UTC,LOG_FORMAT=json",
              "WALLABY_K8S_JOB_IMAGE_PULL_POLICY": "always", "WALLABY_K8S_JOB_NAME_PREFIX": "cdc-worker",
              "WALLABY_K8S_JOB_TTL_SECONDS": "0", "WALLABY_OTEL_SERVICE": "cdc",
              "WALLABY_DDL_CATALOG_ENABLED": "true", "WALLABY_DDL_CATALOG_INTERVAL": "1m30s",
              "WALLABY_DDL_CATALOG_SCHEMAS": "public, sales"})
    assert (s.k8s_job_backoff_limit, s.k8s_job_env, s.k8s_job_image_pull_policy, s.k8s_job_name_prefix,
            s.k8s_job_ttl_seconds, s.otel_service, s.ddl_catalog_enabled, s.ddl_catalog_interval,
            s.ddl_catalog_schemas) == (0, (("TZ", "UTC"), ("LOG_FORMAT", "json")), "Always", "cdc-worker", None,
                                       "cdc", True, 90.0, ("public", "sales"))
    d = load({})
    assert (d.k8s_job_ttl_seconds, d.k8s_job_name_prefix, d.k8s_job_image_pull_policy, d.ddl_catalog_enabled,
            d.ddl_catalog_interval, d.ddl_catalog_schemas) == (3600, "wallaby", None, False, 30.0, ("public",))
    cases = {"WALLABY_K8S_JOB_BACKOFF_LIMIT": ("3", "wallaby's Jobs always have backoffLimit 0"),
             "WALLABY_K8S_JOB_ENV": ("TZ", "'TZ' is not NAME=value"),
             "WALLABY_K8S_JOB_IMAGE_PULL_POLICY": ("Sometimes", "is not an image pull policy"),
             "WALLABY_K8S_JOB_NAME_PREFIX": ("Wallaby_Jobs", "is not a Kubernetes name"),
             "WALLABY_K8S_JOB_TTL_SECONDS": ("30", "is under 60 seconds"),
             "WALLABY_DDL_CATALOG_ENABLED": ("sure", "expected a boolean"),
             "WALLABY_DDL_CATALOG_INTERVAL": ("0s", "must be more than 0 seconds"),
             "WALLABY_DDL_CATALOG_SCHEMAS": (",", "names no schema"),
             "WALLABY_TRACE_PATH": ("/tmp/trace-{flow_id}.jsonl", "not available in wallaby: the Go build's JSONL"
                                                                  " trace")}
    for var, (bad, says) in cases.items():
        with pytest.raises(SettingsError) as err:
            load({var: bad})
        assert len(err.value.problems) == 1 and str(err.value).startswith(f"{var}: ") and says in str(err.value), \
            str(err.value)
    assert service_name("wallaby-worker", {}) == "wallaby-worker"
    assert service_name("wallaby-worker", {"WALLABY_OTEL_SERVICE": "go"}) == "go"
    assert service_name("wallaby-worker", {"WALLABY_OTEL_SERVICE": "go", "OTEL_SERVICE_NAME": "std"}) == "std"


def test_trace_path_is_refused_by_the_worker(tmp_path):
    flow = worker_flow(tmp_path, "postgresql://nobody@127.0.0.1:1/none", "tr", None, {"dsn": ":memory:"},
                       dest_type="duckdb")
    out = worker(tmp_path, "-flow-file", str(flow), env={**worker_env(tmp_path), "WALLABY_TRACE_PATH": "/tmp/t.jsonl"})
    assert out.returncode == 2, out.stderr
    assert last_line(out).startswith("wallaby-worker: WALLABY_TRACE_PATH: not available in wallaby"), out.stderr


# -- the DDL catalog scan --------------------------------------------------------------------------------------


def test_catalog_changes():
    a, b = Column("id", "integer", True), Column("note", "text", False)
    old = {"public.t": (a, b), "public.gone": (a,)}
    new = {"public.t": (a, Column("note", "character varying(20)", True), Column("Extra", "bigint", False)),
           "public.new": (a,)}
    assert [c.statement for c in changes(old, new)] == [
        "DROP TABLE public.gone",
        "CREATE TABLE public.new (id integer NOT NULL)",
        "ALTER TABLE public.t ALTER COLUMN note TYPE character varying(20)",
        "ALTER TABLE public.t ALTER COLUMN note SET NOT NULL",
        'ALTER TABLE public.t ADD COLUMN "Extra" bigint',
    ]
    assert changes(new, new) == []


def _events(store: Path) -> list[tuple]:
    if not store.exists():
        return []
    with sqlite3.connect(store) as db:
        try:
            return db.execute("SELECT flow_id, table_name, ddl, status, position FROM wallaby_ddl_events"
                              " ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # not made yet
            return []


def test_catalog_scan_records_ddl_while_the_worker_streams(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE SCHEMA app")
        c.execute("CREATE TABLE app.t (id int PRIMARY KEY, note text)")
        c.execute("CREATE TABLE public.ignored (id int)")
    flow = worker_flow(tmp_path, pgdb, "cat", "app.t", {"dsn": str(tmp_path / "cat.duckdb")}, dest_type="duckdb")
    env = {**worker_env(tmp_path), "WALLABY_DDL_CATALOG_ENABLED": "true", "WALLABY_DDL_CATALOG_INTERVAL": "200ms",
           "WALLABY_DDL_CATALOG_SCHEMAS": "app", "WALLABY_DDL_AUTO_APPROVE": "false"}

    # an unknown schema stops the worker before it runs, naming the variable
    out = worker(tmp_path, "-flow-file", str(flow), env={**env, "WALLABY_DDL_CATALOG_SCHEMAS": "app,ap"})
    assert out.returncode == 2, out.stderr[-3000:]
    assert "WALLABY_DDL_CATALOG_SCHEMAS: schema 'ap' does not exist in the flow's source database" in out.stderr
    with psycopg.connect(pgdb, autocommit=True) as c:  # refused before anything was made
        assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wallaby_cat'").fetchone() == (0,)

    log_path = tmp_path / "cat.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([WORKER, "-flow-file", str(flow)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while "DDL catalog scan of app: baseline of 1 tables" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        with psycopg.connect(pgdb, autocommit=True) as c:  # no event trigger: only the catalog sees these
            c.execute("ALTER TABLE app.t ADD COLUMN qty bigint")
            c.execute("ALTER TABLE app.t ALTER COLUMN note SET NOT NULL")
            c.execute("CREATE TABLE app.u (k text)")
            c.execute("ALTER TABLE public.ignored ADD COLUMN x int")  # not a scanned schema
        want = ["ALTER TABLE app.t ADD COLUMN qty bigint", "ALTER TABLE app.t ALTER COLUMN note SET NOT NULL",
                "CREATE TABLE app.u (k text)"]
        deadline = time.monotonic() + 60
        while sorted(e[2] for e in _events(tmp_path / "c.db")) != sorted(want):
            assert proc.poll() is None and time.monotonic() < deadline, (_events(tmp_path / "c.db"),
                                                                         log_path.read_text()[-3000:])
            time.sleep(0.2)
        events = _events(tmp_path / "c.db")
        assert {(e[0], e[3]) for e in events} == {("cat", "pending")}  # WALLABY_DDL_AUTO_APPROVE=false
        assert {e[1] for e in events} == {"app.t", "app.u"} and all(e[4].startswith("catalog:") for e in events)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
