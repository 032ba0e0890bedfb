"""Secret references in flow specs (``${env:NAME}``, ``${file:PATH}``): resolved where the typed options are built,
kept as written everywhere else (flow store, API responses, logs)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import uuid
from pathlib import Path

import duckdb
import psycopg
import pytest
from psycopg import sql

from tests import WORKER
from tests.apiserver import ROOT, current_lsn, make_server, wait_streaming
from wallaby.control.api.convert import stored_to_flow, unmask
from wallaby.core.errors import MASK, ConfigError
from wallaby.core.secrets import (
    UnresolvedReference,
    check_syntax,
    has_references,
    resolve,
    resolve_options,
    shown_option,
)
from wallaby.core.spec import parse_flow, redact_option
from wallaby.state.flowstore import StoredFlow

SECRET = "s3cr3t-Pa55"


def _flow(source: dict | None = None, dest: dict | None = None, dest_type: str = "duckdb") -> dict:
    return {"id": "sec", "name": "sec",
            "source": {"name": "pg", "type": "postgres",
                       "options": {"dsn": "postgres://app@db/app", "slot": "s", "publication": "p", **(source or {})}},
            "destinations": [{"name": "d", "type": dest_type,
                              "options": {"dsn": "/tmp/x.duckdb"} if dest is None else dest}]}


# -- the resolver ---------------------------------------------------------------------------------

def test_env_file_embedded_and_escape(tmp_path):
    f = tmp_path / "key"
    f.write_text(SECRET + "\n")  # the trailing newline of `echo secret > file` is not part of the secret
    env = {"PGPASS": SECRET, "HOST": "db.internal"}
    value, problems, _ = resolve({"dsn": "postgres://u:${env:PGPASS}@${env:HOST}/app",
                                  "key": f"${{file:{f}}}",
                                  "literal": "pa$${env:PGPASS}",
                                  "other": "x${y}z",
                                  "headers": {"Authorization": "Bearer ${env:PGPASS}"},
                                  "list": ["a", "${env:HOST}"], "n": 3}, "options", env)
    assert problems == []
    assert value == {"dsn": f"postgres://u:{SECRET}@db.internal/app", "key": SECRET,
                     "literal": "pa${env:PGPASS}", "other": "x${y}z",
                     "headers": {"Authorization": f"Bearer {SECRET}"}, "list": ["a", "db.internal"], "n": 3}
    # resolved once: a value that itself looks like a reference stays as it is
    assert resolve("${env:A}", "o", {"A": "${env:B}", "B": "no"})[0] == "${env:B}"
    assert resolve("${ENV:HOST}", "o", env)[0] == "db.internal"


def test_missing_variable_or_file_names_the_field_and_the_source(tmp_path):
    env = {"EMPTY": ""}
    with pytest.raises(ConfigError) as err:
        resolve_options({"dsn": "postgres://u:${env:NOPE}@h/db", "password": "${env:EMPTY}",
                         "headers": {"X-Key": f"${{file:{tmp_path}/missing}}"}},
                        "destinations[0].options", "flow 'f'", env)
    text = str(err.value)
    assert "destinations[0].options.dsn: environment variable NOPE is not set (from ${env:NOPE})" in text
    assert "destinations[0].options.password: environment variable EMPTY is empty" in text
    assert f"destinations[0].options.headers.X-Key: cannot read secret file {tmp_path}/missing" in text
    assert "No such file or directory" in text


@pytest.mark.parametrize("text, message", [
    ("${vault:secret/x}", "unknown reference '${vault:…}'"),
    ("a${env:PGPASS and more", "unterminated reference '${env:…'"),
    ("${env:1BAD}", "does not name an environment variable"),
    ("${file:}", "names no file"),
])
def test_bad_syntax(text, message):
    problems = check_syntax({"password": text}, "source.options")
    assert len(problems) == 1 and problems[0].path == "source.options.password"
    assert message in problems[0].message
    assert "and more" not in problems[0].message  # the rest of the value (maybe a secret) is never shown


def test_has_references():
    assert has_references({"h": ["${env:X}"]}) and has_references("$${") and not has_references("a$b{c}")


# -- the flow spec --------------------------------------------------------------------------------

def test_spec_keeps_references_and_resolves_typed_options(monkeypatch):
    monkeypatch.setenv("SRC_DSN", f"postgres://app:{SECRET}@db:5432/app")
    monkeypatch.setenv("BATCH", "250")
    spec = parse_flow(_flow({"dsn": "${env:SRC_DSN}", "batch_size": "${env:BATCH}"}))
    # the definition (what the flow store keeps) and its redacted view keep the reference text
    dumped = json.dumps(spec.model_dump(mode="json"))
    assert "${env:SRC_DSN}" in dumped and SECRET not in dumped
    assert spec.redacted()["source"]["options"]["dsn"] == "${env:SRC_DSN}"
    # the typed options have the values
    opts = spec.source_options()
    assert opts.dsn == f"postgres://app:{SECRET}@db:5432/app" and opts.batch_size == 250
    assert SECRET not in repr(opts)


def test_validation_waits_for_the_value_but_checks_everything_else(monkeypatch):
    monkeypatch.delenv("SRC_DSN", raising=False)
    # an unresolved dsn is not judged at parse time (the API server may not have the variable) ...
    spec = parse_flow(_flow({"dsn": "${env:SRC_DSN}"}))
    # ... but resolving it where the flow runs names the field and the variable
    with pytest.raises(UnresolvedReference, match=r"source\.options\.dsn: environment variable SRC_DSN is not set"):
        spec.source_options()
    # other problems, a bad reference and an unknown option holding a reference are found at parse time
    with pytest.raises(ConfigError) as err:
        parse_flow(_flow({"dsn": "${env:SRC_DSN}", "slott": "${env:X}", "password": "${vault:x}",
                          "batch_size": "ten"}))
    text = str(err.value)
    assert "slott: unknown option; did you mean 'slot'?" in text
    assert "source.options.password: unknown reference" in text
    assert "source.options.batch_size" in text
    assert "source.options.dsn" not in text


def test_a_bad_resolved_value_names_the_reference_never_the_value(monkeypatch):
    monkeypatch.setenv("BATCH", SECRET)
    monkeypatch.setenv("METHOD", "P0ST-" + SECRET)
    spec = parse_flow(_flow({"batch_size": "${env:BATCH}"},
                            {"url": "https://example.invalid/hook", "method": "${env:METHOD}"}, dest_type="http"))
    with pytest.raises(ConfigError) as err:
        spec.source_options()
    assert "source.options.batch_size" in str(err.value) and "(value from ${env:BATCH})" in str(err.value)
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError) as err:
        spec.destination_options(0)
    assert "destinations[0].options.method" in str(err.value) and "${env:METHOD}" in str(err.value)
    assert SECRET not in str(err.value)


# -- what the API shows -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, shown", [
    ("dsn", "postgres://u:${env:P}@h/db", "postgres://u:${env:P}@h/db"),
    ("dsn", "${env:SRC_DSN}", "${env:SRC_DSN}"),
    ("dsn", "host=h password=${env:P} user=u", "host=h password=${env:P} user=u"),
    ("secret_key", "${file:/run/secrets/k}", "${file:/run/secrets/k}"),
    # a literal secret beside a reference stays masked
    ("dsn", "postgres://u:abc${env:P}@h/db", "postgres://u:***@h/db"),
    ("password", "x${env:P}", MASK),
    ("secret_key", "$${literal}", MASK),
    ("headers", {"Authorization": "Bearer ${env:T}", "X-Key": "lit"}, {"Authorization": "Bearer ${env:T}",
                                                                       "X-Key": MASK}),
    ("headers", "Authorization: Bearer ${env:T}, X-Env: prod", "Authorization:Bearer ${env:T},X-Env:***"),
    ("dsn", "postgres://u:pw@h/db", "postgres://u:***@h/db"),  # no reference: the usual redaction
])
def test_shown_option(name, value, shown):
    assert shown_option(name, value, redact_option) == shown


def test_get_flow_shows_references_and_update_keeps_masked_secrets():
    spec = parse_flow(_flow({"dsn": "postgres://app:${env:PGPASS}@db/app"},
                            {"url": "https://example.invalid/hook",
                             "headers": {"Authorization": "Bearer ${env:TOKEN}", "X-Key": "literal-key"}},
                            dest_type="http"))
    stored = StoredFlow("sec", "sec", spec.model_dump(mode="json"), "created", 0)
    flow = stored_to_flow(stored)
    assert flow.source.options["dsn"] == "postgres://app:${env:PGPASS}@db/app"
    headers = json.loads(flow.destinations[0].options["headers"])
    assert headers == {"Authorization": "Bearer ${env:TOKEN}", "X-Key": MASK}
    # GetFlow -> UpdateFlow with the shown values: the stored literal header comes back, references stay
    from wallaby.control.api.convert import flow_to_spec_dict

    back = unmask(flow_to_spec_dict(flow), stored.spec)
    assert back["destinations"][0]["options"]["headers"] == {"Authorization": "Bearer ${env:TOKEN}",
                                                             "X-Key": "literal-key"}
    assert back["source"]["options"]["dsn"] == "postgres://app:${env:PGPASS}@db/app"


# -- end to end: a worker process and the API server --------------------------------------------------

@pytest.fixture
def app_role(pgdb):
    """A login role with a password (TCP logins of roles other than postgres need one on the test server):
    ``(password, dsn with ${env:SRC_PGPASS} as its password, the same dsn with the password)``."""
    user = "sec_" + uuid.uuid4().hex[:8]
    password = "pw-" + uuid.uuid4().hex
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION SUPERUSER PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(password)))
    ref = pgdb.replace("postgres@", f"{user}:${{env:SRC_PGPASS}}@", 1)
    assert ref != pgdb
    yield password, ref, ref.replace("${env:SRC_PGPASS}", password)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                  " WHERE database = current_database() AND NOT active")
        c.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(sql.Identifier(user), sql.Identifier(user)))


def _secret_flow(tmp_path: Path, flow_id: str, dsn_ref: str, duck: Path) -> Path:
    """A flow whose source dsn takes its password from ${env:SRC_PGPASS} and whose DuckDB path is read from a file
    (${file:...}, with a trailing newline)."""
    (tmp_path / "duck_path").write_text(f"{duck}\n")
    spec = {"id": flow_id, "name": flow_id,
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": dsn_ref, "slot": f"{flow_id}_slot", "publication": f"{flow_id}_pub",
                "publication_tables": "public.items", "batch_timeout": "50ms", "status_interval": "1s"}},
            "destinations": [{"name": "duck", "type": "duckdb",
                              "options": {"dsn": f"${{file:{tmp_path / 'duck_path'}}}"}}]}
    path = tmp_path / f"{flow_id}.json"
    path.write_text(json.dumps(spec))
    return path


def _slot_exists(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()[0] > 0


def test_worker_resolves_references_from_its_environment(tmp_path, app_role):
    password, ref, real = app_role
    with psycopg.connect(real, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    duck = tmp_path / "out" / "w.duckdb"
    flow = _secret_flow(tmp_path, "sec_worker", ref, duck)
    store = tmp_path / "store" / "checkpoints.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_") and k != "SRC_PGPASS"}
    env.update({"WALLABY_CHECKPOINT_PATH": str(store), "WALLABY_EPOCH_INTERVAL": "300ms", "PYTHONPATH": str(ROOT)})

    def worker(env: dict) -> subprocess.CompletedProcess:
        return subprocess.run([*WORKER, "-flow-file", str(flow), "-max-empty-reads",
                               "1"], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)

    # Without the variable: one clear error naming the option and the variable; nothing created at the source.
    r = worker(env)
    assert r.returncode == 2, r.stderr
    assert "source.options.dsn: environment variable SRC_PGPASS is not set (from ${env:SRC_PGPASS})" in r.stderr
    assert "Traceback" not in r.stderr and "panic" not in r.stderr
    assert not _slot_exists(real, "sec_worker_slot") and not duck.exists()

    env["SRC_PGPASS"] = password
    r = worker(env)  # creates the publication and the slot
    assert r.returncode == 0, r.stderr
    assert _slot_exists(real, "sec_worker_slot")
    with psycopg.connect(real, autocommit=True) as c:
        c.execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) g")
        c.execute("UPDATE items SET note = 'u' WHERE id <= 10")
        c.execute("DELETE FROM items WHERE id > 45")
        expected = c.execute("SELECT id, note FROM items ORDER BY id").fetchall()
    r = worker(env)
    assert r.returncode == 0, r.stderr
    assert password not in r.stderr + r.stdout
    with duckdb.connect(str(duck), read_only=True) as d:  # the path came from the ${file:...} reference
        assert d.execute("SELECT id, note FROM public.items ORDER BY id").fetchall() == expected
    assert stat.S_IMODE(store.stat().st_mode) == 0o600 and stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert password.encode() not in store.read_bytes()


def test_api_keeps_the_reference_and_its_worker_resolves_it(tmp_path, app_role):
    password, ref, real = app_role
    with psycopg.connect(real, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    duck = tmp_path / "api.duckdb"
    flow = _secret_flow(tmp_path, "sec_api", ref, duck)
    server = make_server(tmp_path, SRC_PGPASS=password).start()  # its workers inherit its environment
    try:
        server.admin("flow", "create", "-file", str(flow))
        got = server.get("sec_api")
        assert got.source.options["dsn"] == ref  # the reference as written, not the password, not a mask
        assert got.destinations[0].options["dsn"] == f"${{file:{tmp_path / 'duck_path'}}}"
        shown = server.admin("flow", "get", "-flow-id", "sec_api", "-o", "json").stdout
        assert "${env:SRC_PGPASS}" in shown and password not in shown
        with sqlite3.connect(tmp_path / "store.db") as db:  # the flow store keeps the reference too
            stored = db.execute("SELECT spec FROM wallaby_flows WHERE id = 'sec_api'").fetchone()[0]
        assert "${env:SRC_PGPASS}" in stored and password not in stored

        server.admin("flow", "start", "-flow-id", "sec_api")  # a worker -flow-id: resolved in its environment
        wait_streaming(real, "sec_api_slot")
        with psycopg.connect(real, autocommit=True) as c:
            c.execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 20) g")
            expected = c.execute("SELECT id, note FROM items ORDER BY id").fetchall()
        server.wait_checkpoint("sec_api", current_lsn(real))
        server.admin("flow", "stop", "-flow-id", "sec_api")
        with duckdb.connect(str(duck), read_only=True) as d:
            assert d.execute("SELECT id, note FROM public.items ORDER BY id").fetchall() == expected
        server.admin("flow", "cleanup", "-flow-id", "sec_api")  # the server's own source operations resolve it too
        assert not _slot_exists(real, "sec_api_slot")
    finally:
        server.stop()
    assert password not in server.log_path.read_text() + server.worker_log("sec_api")
