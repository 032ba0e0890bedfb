"""Snowpipe destination against fakesnow (tests/snowserver.py): the writer with built batches (each format, file
names, replays, the operation columns, schema changes, bad options, errors) and a real worker killed -9 at random
moments.

fakesnow lacks part of what the destination uses (tests/test_snowserver.py asserts most of these gaps; the others
are in docs/destinations.md "Snowpipe"): COPY from an internal stage with ``FILES=``, stage paths, table stages,
JSON and Avro in COPY, ``FORMAT_NAME``, LIST of a qualified stage. The tests create the stage
as fakesnow's *external* stage whose URL is the directory fakesnow keeps the internal stage's files in, so that the
writer's real statements (``PUT ... @LAND.FILES``, ``COPY INTO ... FROM (SELECT ... FROM @LAND.FILES)
FILES=('...')``) run unchanged; what fakesnow cannot run is checked as SQL text and as staged file contents.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.metadata import MetadataRewriter
from sinks.base import PermanentSinkError
from sinks.snowpipe.options import SnowpipeDestinationOptions
from sinks.snowpipe.stage import StageError, stage_location
from sinks.snowpipe.writer import SnowpipeWriter, file_name, parse_file_name
from tests import WORKER
from tests.builders import Stream, col, dele, evolve, ins, numeric_typmod, read, table, upd
from tests.flows import pg_rows, run_worker, worker_env
from tests.snowserver import snowflake  # noqa: F401 - fixture
from wallaby.core.changes import Position

ROOT = Path(__file__).resolve().parents[1]
STAGE = "LAND.FILES"


def _name(prefix: str = "DB") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10].upper()}"


def dsn_of(server, database: str, password: str | None = None, schema: str | None = None, **params) -> str:
    params = {"host": server.host, "port": server.port, "protocol": server.protocol, "network_timeout": 5, **params}
    query = "&".join(f"{k}={v}" for k, v in params.items())
    path = f"{database}/{schema}" if schema else database
    return f"{server.user}:{password or server.password}@{server.account}/{path}?{query}"


def rows(server, database: str, sql: str) -> list[tuple]:
    with server.connect(database=database, schema=None) as c:
        return c.cursor().execute(sql).fetchall()


def stage_dir(server, database: str, stage: str = STAGE) -> str:
    """The directory fakesnow keeps the files of an internal stage in (its server's temporary directory)."""
    bucket = glob.glob(os.path.join(server.tmp_dir, "fakesnow_bucket_*"))[0]
    schema, name = stage.split(".")
    return os.path.join(bucket, database, schema, name) + "/"


def make_stage(server, database: str, stage: str = STAGE) -> None:
    """The stage, as an external stage on fakesnow's own directory for it (see the module docstring)."""
    schema = stage.split(".")[0]
    with server.connect(database=database, schema=None) as c:
        c.cursor().execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        c.cursor().execute(f"CREATE STAGE IF NOT EXISTS {stage} URL='file://{stage_dir(server, database, stage)}'")


@pytest.fixture
def db(snowflake):  # noqa: F811
    database = _name()
    make_stage(snowflake, database)
    return database


def make(server, database: str, name: str = "pipe", flow: str = "flow1", cls: type = SnowpipeWriter,
         **opts) -> SnowpipeWriter:
    opts = {"stage": STAGE, "schema": "cdc", "table": "users", **opts}
    return cls(name, flow, SnowpipeDestinationOptions.model_validate({"dsn": dsn_of(server, database), **opts}))


class ListingWriter(SnowpipeWriter):
    """fakesnow LISTs a stage of the current schema only (``LIST @LAND.FILES`` is an HTTP 500 there)."""

    def _list_files(self) -> list[str]:
        assert self.location == "@" + STAGE
        self._sql("USE SCHEMA LAND")
        return [str(r[0]) for r in self._sql("LIST @FILES").fetchall()]


def apply(w: SnowpipeWriter, *batches) -> None:
    for b in batches:
        w.write(b)
    w.commit()


USERS = [col("id", "int4", key=True), col("name", "text"), col("doc", "jsonb")]
COLS = '"id", "name", "__op"'


def landed(server, database: str, tbl: str = '"cdc"."users"', cols: str = COLS) -> list[tuple]:
    return rows(server, database, f'SELECT {cols} FROM {tbl} ORDER BY "__lsn", "__ord"')


def staged(server, database: str) -> list[str]:
    return sorted(os.listdir(stage_dir(server, database)))


def history(s: Stream, t) -> list:
    return [s.batch(s.rows(t, ins(id=1, name="a", doc='{"k": 1}'), ins(id=2, name="b"))),
            s.batch(s.rows(t, upd({"id": 1, "name": "a2", "doc": '{"k": 2}'}), dele(id=2, name="b"))),
            s.batch(s.truncate(t), s.rows(t, read(id=3, name="c")))]


EXPECTED = [(1, "a", "insert"), (2, "b", "insert"), (1, "a2", "update"), (2, "b", "delete"),
            (None, None, "truncate"), (3, "c", "read")]


# --------------------------------------------------------------------------- formats and files


def test_parquet_lands_in_the_table_with_the_operation_per_row(snowflake, db):  # noqa: F811
    t = table("users", USERS)
    s = Stream()
    w = make(snowflake, db)
    try:
        for b in history(s, t):
            apply(w, b)
        assert landed(snowflake, db) == EXPECTED
        got = rows(snowflake, db, 'SELECT "doc", "__lsn", "__ord", "__ts" FROM "cdc"."users" ORDER BY "__lsn", "__ord"')
        assert json.loads(got[0][0]) == {"k": 1} and json.loads(got[2][0]) == {"k": 2}
        assert all(r[1] > 0 and r[2] >= 1 and r[3] is not None for r in got)
        # one file per table and epoch, named from its first and last positions, all loaded, none skipped
        assert len(w.files) == 3 and staged(snowflake, db) == sorted(w.files)
        assert w.stats["loaded_files"] == 3 and w.stats["skipped_files"] == 0
        flow, first, last, ext = parse_file_name(w.files[0])
        assert (flow, ext) == ("flow1-cdc.users", "parquet") and first < last
        types = dict(rows(snowflake, db, "SELECT column_name, data_type FROM information_schema.columns"
                                         " WHERE table_schema = 'cdc' AND table_name = 'users'"))
        assert set(types) == {"id", "name", "doc", "__op", "__lsn", "__ord", "__ts"}
        meta = rows(snowflake, db, 'SELECT WRITE_MODE, COLUMNS_JSON FROM "WALLABY_META"."__METADATA"'
                                   " WHERE DEST_TABLE = 'users'")
        assert meta[0][0] == "append" and [c["name"] for c in json.loads(meta[0][1])] == ["id", "name", "doc"]
    finally:
        w.close()


def _stage_file(server, database: str, name: str) -> bytes:
    with open(os.path.join(stage_dir(server, database), name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("fmt", ["avro", "json", "parquet"])
def test_each_format_is_staged_with_the_rows_the_table_gets(snowflake, db, fmt):  # noqa: F811
    """auto_ingest: upload only (a pipe loads the files): the files hold the rows and columns COPY reads. fakesnow
    runs COPY for parquet only; the COPY statement for avro and json is checked as text."""
    t = table("users", USERS)
    s = Stream()
    w = make(snowflake, db, format=fmt, auto_ingest="true", schema=None, table=None)
    try:
        for b in history(s, t):
            apply(w, b)
        assert staged(snowflake, db) == sorted(w.files) and len(w.files) == 3
        got = []
        for name in w.files:
            assert name.endswith("." + fmt) and name.startswith("flow1-public.users-")
            data = _stage_file(snowflake, db, name)
            if fmt == "parquet":
                got += pq.read_table(io.BytesIO(data)).to_pylist()
            elif fmt == "avro":
                got += list(fastavro.reader(io.BytesIO(data)))
            else:
                got += [json.loads(line) for line in data.decode().splitlines()]
        assert [(r["id"], r["name"], r["__op"]) for r in got] == EXPECTED
        assert json.loads(got[0]["doc"]) == {"k": 1}
        assert [int(r["__lsn"]) for r in got] == sorted(int(r["__lsn"]) for r in got)
        # no table was made (upload only), the meta table says what one would hold
        assert rows(snowflake, db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'users'") == \
            [(0,)]
        meta = rows(snowflake, db, 'SELECT COLUMNS_JSON FROM "WALLABY_META"."__METADATA"')
        assert [c["snowflake_type"] for c in json.loads(meta[0][0])] == ["NUMBER(10,0)", "VARCHAR", "VARIANT"]
        copy = w.copy_statement('"cdc"."users"', w._tables[("public", "users")],
                                ["id", "name", "doc", "__op", "__lsn", "__ord", "__ts"], w.files[0])
        assert copy == (
            'COPY INTO "cdc"."users" ("id", "name", "doc", "__op", "__lsn", "__ord", "__ts") FROM (SELECT'
            ' $1:"id"::NUMBER(10,0), $1:"name"::VARCHAR, PARSE_JSON($1:"doc"::VARCHAR), $1:"__op"::VARCHAR,'
            ' $1:"__lsn"::NUMBER(20,0), $1:"__ord"::NUMBER(20,0), $1:"__ts"::TIMESTAMP_TZ(6) FROM @LAND.FILES)'
            f" FILES=('{w.files[0]}') FILE_FORMAT=(TYPE={fmt.upper()})")
    finally:
        w.close()


def test_types_load_through_copy(snowflake, db):  # noqa: F811
    """Parquet files through the COPY transformation: numbers, text, binary, dates and times, JSON, arrays."""
    import datetime as dt
    import decimal

    cols = [col("id", "int4", key=True), col("n", "numeric", typmod=numeric_typmod(12, 4)), col("f", "float8"),
            col("b", "bool"), col("bin", "bytea", arrow_type=pa.binary()), col("d", "date"),
            col("ts", "timestamptz"), col("j", "jsonb"), col("ia", "_int4", arrow_type=pa.list_(pa.int32())),
            col("u", "uuid")]
    t = table("typed", cols)
    s = Stream()
    w = make(snowflake, db, table="typed")
    try:
        apply(w, s.batch(s.rows(t, ins(id=1, n=decimal.Decimal("12.3400"), f=1.5, b=True, bin=b"\x00\xff",
                                       d=dt.date(2024, 2, 29),
                                       ts=dt.datetime(2024, 3, 10, 7, 30, tzinfo=dt.UTC),
                                       j='{"a": [1, 2]}', ia=[1, None, 3], u="a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                                ins(id=2))))
        got = rows(snowflake, db, 'SELECT "id", "n", "f", "b", "bin", "d", "ts", "j", "ia", "u", "__op"'
                                  ' FROM "cdc"."typed" ORDER BY "id"')
        assert got[0][:4] == (1, decimal.Decimal("12.3400"), 1.5, True)
        assert bytes(got[0][4]) == b"\x00\xff" and got[0][5] == dt.date(2024, 2, 29)
        assert got[0][6] == dt.datetime(2024, 3, 10, 7, 30, tzinfo=dt.UTC)
        assert json.loads(got[0][7]) == {"a": [1, 2]} and json.loads(got[0][8]) == [1, None, 3]
        assert got[0][9:] == ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "insert")
        # (fakesnow answers a NULL timestamp as 1970-01-01 over the wire: asked with IS NULL)
        assert got[1][:6] + got[1][7:] == (2, None, None, None, None, None, None, None, None, "insert")
        assert rows(snowflake, db, 'SELECT "ts" IS NULL FROM "cdc"."typed" WHERE "id" = 2') == [(True,)]
    finally:
        w.close()


def test_stage_locations_and_the_copy_of_a_named_file_format():
    def loc(login_schema: str | None = None, **o) -> str:
        return stage_location(SnowpipeDestinationOptions.model_validate({"dsn": "u@a/db", **o}), login_schema)

    # a stage without its schema: in the DSN's (the writer's CREATE SCHEMA moves the session's current schema)
    assert loc("RAW", stage="@cdc_stage", auto_ingest="true") == "@RAW.cdc_stage"
    with pytest.raises(StageError, match="names no schema and the dsn names none"):
        loc(stage="cdc_stage", auto_ingest="true")
    assert loc(stage='"my.db"."a.b"', auto_ingest="true") == '@"my.db"."a.b"'
    assert loc(stage="@~", stage_path="cdc", auto_ingest="true") == "@~/cdc/"
    assert loc(stage="raw.cdc_stage", stage_path="/wallaby/orders/", auto_ingest="true") == \
        "@raw.cdc_stage/wallaby/orders/"
    # the table stage: the spec's @%schema.table, as Snowflake spells it
    assert loc(schema="cdc", table="orders") == '@"cdc".%"orders"'
    assert loc(stage="@%cdc.orders", auto_ingest="true") == "@cdc.%orders"
    name = file_name("f 1", ("pub", "Orders"), Position(0x16B3748, 2), Position(0x16B3800, 0x1_0000_0001), "json")
    assert name == "f~201-pub.Orders-00000000016B3748-0000000000000002-00000000016B3800-0000000100000001.json"
    assert parse_file_name("st/" + name) == ("f~201-pub.Orders", Position(0x16B3748, 2),
                                             Position(0x16B3800, 0x1_0000_0001), "json")


def test_file_format_goes_into_copy(snowflake, db):  # noqa: F811
    w = make(snowflake, db, file_format="cdc.wallaby_parquet", stage_path="x/y")
    try:
        from sinks.snowflake.writer import DestTable

        sql = w.copy_statement('"cdc"."users"', DestTable({"id": "NUMBER(10,0)", "b": "BINARY"}), ["id", "b"], "f")
        assert sql == ('COPY INTO "cdc"."users" ("id", "b") FROM (SELECT $1:"id"::NUMBER(10,0), $1:"b"::BINARY FROM'
                       " @LAND.FILES/x/y/) FILES=('f') FILE_FORMAT=(FORMAT_NAME='cdc.wallaby_parquet')")
    finally:
        w.close()


# --------------------------------------------------------------------------- replays and exactly once


def test_a_replayed_epoch_writes_the_same_file_and_duplicates_nothing(snowflake, db):  # noqa: F811
    t = table("users", USERS)
    s = Stream()
    b1, b2, b3 = history(s, t)
    w1 = make(snowflake, db)
    try:
        apply(w1, b1, b2)
        w1.write(b3)
        w1._apply_pending()  # staged and COPY'd in the open transaction: the crash comes before its commit
        crashed = list(w1.files)
    finally:
        w1.close()  # (the open transaction rolls back)
    assert landed(snowflake, db) == EXPECTED[:4]
    w2 = make(snowflake, db)
    try:
        assert w2.high_water == b2.position
        apply(w2, b1, b2, b3)  # replayed from before the first's high-water
        assert w2.stats["skipped_rows"] == 4
        assert list(w2.files) == crashed[-1:]  # the same epoch: the same name, overwritten
        assert landed(snowflake, db) == EXPECTED
        # Snowflake's load history would skip the file in any case
        rerun = w2.copy_statement('"cdc"."users"', w2._tables[("cdc", "users")],
                                  ["id", "name", "doc", "__op", "__lsn", "__ord", "__ts"], w2.files[0])
        with snowflake.connect(database=db) as c:
            assert c.cursor().execute(rerun).fetchall()[0][1] == "LOAD_SKIPPED"
    finally:
        w2.close()
    assert landed(snowflake, db) == EXPECTED
    assert staged(snowflake, db) == sorted(crashed)


def test_upload_only_skips_what_a_crashed_epoch_staged(snowflake, db):  # noqa: F811
    """auto_ingest: a crash after a PUT and before the high-water's commit leaves a file a pipe may have loaded;
    the next writer finds it (LIST) and stages none of its changes again, however the replay is cut."""
    t = table("users", USERS)
    s = Stream()
    b1, b2, b3 = history(s, t)
    opts = {"auto_ingest": "true", "format": "json", "cls": ListingWriter}
    w1 = make(snowflake, db, **opts)
    try:
        apply(w1, b1)
        w1.write(b2)
        w1._apply_pending()  # b2's file staged, the high-water not stored
    finally:
        w1.close()
    w2 = make(snowflake, db, **opts)
    try:
        assert w2.high_water == b1.position
        # the replay cut otherwise: b2 and b3 in one epoch
        apply(w2, b2, b3)
        assert w2.stats["orphan_rows"] == 2
        apply(w2, s.batch(s.rows(t, ins(id=9, name="z"))))
    finally:
        w2.close()
    got = []
    for name in staged(snowflake, db):
        got += [json.loads(x) for x in _stage_file(snowflake, db, name).decode().splitlines()]
    got.sort(key=lambda r: (int(r["__lsn"]), int(r["__ord"])))
    assert [(r["id"], r["name"], r["__op"]) for r in got] == [*EXPECTED, (9, "z", "insert")]
    w3 = make(snowflake, db, **opts)  # the mark is gone: no LIST
    try:
        assert not w3._orphans
    finally:
        w3.close()


def test_metadata_columns_and_an_added_column(snowflake, db):  # noqa: F811
    """The destination's metadata options (operators.metadata) add __ds_* columns like source columns; a column
    the source adds is added to the table, older rows NULL (or the default the source gave them)."""
    t1 = table("users", [col("id", "int4", key=True), col("name", "text")])
    s = Stream()
    o = SnowpipeDestinationOptions.model_validate({"dsn": dsn_of(snowflake, db), "stage": STAGE, "schema": "cdc",
                                                   "table": "users", "meta_enabled": "true"})
    meta = MetadataRewriter(o)
    w = SnowpipeWriter("pipe", "flow1", o)
    try:
        apply(w, meta.rewrite(s.batch(s.rows(t1, ins(id=1, name="a"), upd({"id": 1, "name": "b"}), dele(id=1)))))
        added = dataclasses.replace(col("extra", "text"), missing=pa.array(["dflt"]))
        t2 = evolve(t1, [col("id", "int4", key=True), col("name", "text"), added])
        apply(w, meta.rewrite(s.batch(s.rows(t2, ins(id=2, name="c", extra="x")))))
        got = landed(snowflake, db, cols='"id", "name", "extra", "__op", "__ds_op", "__ds_is_deleted"')
        assert got == [(1, "a", "dflt", "insert", "insert", False), (1, "b", "dflt", "update", "update", False),
                       (1, None, "dflt", "delete", "delete", True), (2, "c", "x", "insert", "insert", False)]
    finally:
        w.close()


# --------------------------------------------------------------------------- refusals and errors


def test_bad_options_are_one_clear_error_before_anything_is_created(snowflake):  # noqa: F811
    from dataflows.preflight import preflight
    from wallaby.core.errors import ConfigError
    from wallaby.core.spec import parse_flow

    database = _name()

    def spec(**options):
        return {"name": "f", "source": {"type": "postgres", "options": {
            "dsn": "postgres://u@localhost/db", "slot": "s", "publication": "p"}},
            "destinations": [{"name": "d", "type": "snowpipe", "options": {
                "dsn": dsn_of(snowflake, database, password="hunter2secret"), **options}}]}

    cases = {
        "write_mode": ({"stage": STAGE, "schema": "s", "table": "t", "write_mode": "target"},
                       "destinations[0].options.write_mode: 'target': Snowpipe only appends"),
        "stage": ({"auto_ingest": "true"}, "destinations[0].options.stage: required option missing"),
        "table": ({"stage": STAGE, "schema": "s"}, "destinations[0].options.table: table required when"
                                                   " copy_on_write=true"),
        "format": ({"stage": STAGE, "schema": "s", "table": "t", "format": "csv"},
                   "destinations[0].options.format: expected one of 'parquet', 'avro', 'json', got 'csv'"),
    }
    for option, (options, message) in cases.items():
        with pytest.raises(ConfigError) as err:
            parse_flow(spec(**options))
        problems = [str(p) for p in err.value.problems]
        assert len(problems) == 1 and problems[0].startswith(message), (option, problems)
        assert "hunter2secret" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        preflight(parse_flow({**spec(stage=STAGE, schema="s", table="t"), "destinations": [
            {"name": "d", "type": "snowpipe", "options": {"dsn": "me:hunter2secret@acct", "stage": STAGE,
                                                         "schema": "s", "table": "t"}}]}), source=False)
    assert "no database" in str(err.value) and "hunter2secret" not in str(err.value)
    # a stage without its schema, in a DSN without one: the preflight names the stage
    with pytest.raises(ConfigError) as err:
        preflight(parse_flow(spec(stage="FILES", schema="s", table="t")), source=False)
    assert [str(p) for p in err.value.problems] == [
        "destinations[0].options.stage: stage 'FILES' names no schema and the dsn names none: write it as"
        " schema.stage (the writer creates schemas, which moves the session's current schema)"]
    # nothing was created: the database was never logged in to
    assert rows(snowflake, "OTHER", "SELECT count(*) FROM information_schema.schemata WHERE catalog_name ="
                                    f" '{database}'") == [(0,)]


def test_connection_and_stage_errors_name_the_destination_never_the_password(snowflake, db):  # noqa: F811
    from tests.servers import free_port

    dsn = f"me:hunter2secret@acct/{_name()}?host=127.0.0.1&port={free_port()}&protocol=http&login_timeout=3"
    with pytest.raises(PermanentSinkError) as e:
        SnowpipeWriter("pipe", "f", SnowpipeDestinationOptions.model_validate(
            {"dsn": dsn, "stage": STAGE, "schema": "s", "table": "t"}))
    text = str(e.value)
    assert "cannot connect to Snowflake me@acct/" in text and "hunter2secret" not in text and "'pipe'" in text
    # a stage that is not there: the PUT fails, named with the server and the stage
    t = table("users", USERS)
    s = Stream()
    w = SnowpipeWriter("pipe", "f", SnowpipeDestinationOptions.model_validate(
        {"dsn": dsn_of(snowflake, db, password="hunter2secret"), "stage": "LAND.NOPE", "schema": "s", "table": "t"}))
    try:
        with pytest.raises(PermanentSinkError) as e:
            apply(w, s.batch(s.rows(t, ins(id=1, name="a"))))
        text = str(e.value)
        assert f"Snowpipe fake@fakesnow/{db} (stage @LAND.NOPE), table s.t:" in text, text
        assert "does not exist" in text and "hunter2secret" not in text
    finally:
        w.close()


def test_stored_position_and_discard_position_through_the_plugin(snowflake, db):  # noqa: F811
    from sinks.snowpipe import PLUGIN

    o = SnowpipeDestinationOptions.model_validate({"dsn": dsn_of(snowflake, db), "stage": STAGE, "schema": "cdc",
                                                   "table": "users"})
    assert PLUGIN.stored_position("pipe", "flow1", o) is None
    t = table("users", USERS)
    s = Stream()
    w = SnowpipeWriter("pipe", "flow1", o)
    try:
        b = s.batch(s.rows(t, ins(id=1, name="a")))
        apply(w, b)
    finally:
        w.close()
    got = PLUGIN.stored_position("pipe", "flow1", o)
    assert got is not None and got[0] == b.position and got[2] == f"Snowflake fake@fakesnow/{db}"
    PLUGIN.discard_position("pipe", "flow1", o)
    assert PLUGIN.stored_position("pipe", "flow1", o) is None


# --------------------------------------------------------------------------- a real worker, killed -9



# fakesnow in a process whose databases are DuckDB files in a directory and whose internal stages live in a fixed
# directory: killed and started again between the worker's kills (dropping the transaction the killed worker left
# open, as Snowflake aborts a detached one), it keeps tables, load history and staged files.
FILE_SERVER = """
import importlib, sys
import fakesnow.transforms.stage as stage
stage.LOCAL_BUCKET_PATH = sys.argv[3]
import uvicorn
srv = importlib.import_module("fakesnow.server")
from fakesnow.instance import FakeSnow
srv.shared_fs = FakeSnow(db_path=sys.argv[1])
uvicorn.run(srv.app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


class FileSnow:
    """(fakesnow keeps its stages in memory: each start makes the stage of ``database`` again.)"""

    def __init__(self, directory: Path, database: str):
        from tests.servers import free_port

        self.dir, self.port, self.proc, self.database = directory, free_port(), None, database
        self.bucket = directory / "fakesnow_bucket_files"
        self.bucket.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        from tests.snowserver import _answers

        env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWFLAKE_")}
        env["TMPDIR"] = str(self.dir)
        with open(self.dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", FILE_SERVER, str(self.dir), str(self.port),
                                          str(self.bucket)], env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        while not _answers(self.port):
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.dir / "server.log").read_text()
            time.sleep(0.1)
        with self.server().connect(database=self.database, schema=None) as c:
            c.cursor().execute("CREATE SCHEMA IF NOT EXISTS LAND")
            c.cursor().execute(f"CREATE STAGE IF NOT EXISTS {STAGE} URL='file://{self.bucket}/{self.database}/LAND"
                               "/FILES/'")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def server(self):
        from tests.snowserver import SnowflakeServer

        return SnowflakeServer(host="127.0.0.1", port=self.port, tmp_dir=str(self.dir))


@pytest.mark.slow
def test_a_worker_killed_at_random_moments_lands_every_change_exactly_once(pgdb, tmp_path):
    """A writer thread inserts, updates and deletes while the worker streaming into Snowpipe (parquet, COPY) is
    killed -9 at 6 random moments (the fake Snowflake restarted after each); a last run catches up. Every change is
    one row: no (__lsn, __ord) twice, every inserted id inserted once, and the log replayed equals Postgres."""
    import psycopg

    from tests.killkit import ItemWrites, create_item_tables, kill_at_random

    database = _name()
    snow = FileSnow(tmp_path / "snow", database)
    snow.start()
    server = snow.server()
    with psycopg.connect(pgdb, autocommit=True) as c:
        create_item_tables(c, events=False)
    slot = "wallaby_sp_kill"
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({
        "id": "sp-kill", "name": "sp-kill",
        "source": {"name": "pg", "type": "postgres", "options": {
            "dsn": pgdb, "slot": slot, "publication": slot, "publication_tables": "public.items",
            "batch_timeout": "50ms", "status_interval": "1s", "batch_size": "50"}},
        "destinations": [{"name": "pipe", "type": "snowpipe", "options": {
            "dsn": dsn_of(server, database), "stage": STAGE, "schema": "cdc", "table": "items"}}]}))
    try:
        run_worker(tmp_path, flow)  # the slot
        logs = []
        with ItemWrites(pgdb, seed=7, events=False) as writes:
            for run in range(6):
                logs += kill_at_random([*WORKER, "-flow-file", str(flow)], worker_env(tmp_path), ROOT, tmp_path, runs=1,
                                       started="streaming from", window=(0.3, 2.5), seed=4242 + run)
                snow.kill()
                snow.start()
        assert all("Traceback" not in log for log in logs), logs
        run_worker(tmp_path, flow, args=("-max-empty-reads", "3"), timeout=300)
        assert writes.written > 100
        got = rows(server, database, 'SELECT "id", "qty", "note", "__op", "__lsn", "__ord" FROM "cdc"."items"'
                                     ' ORDER BY "__lsn", "__ord"')
        positions = [(r[4], r[5]) for r in got]
        assert len(positions) == len(set(positions)), "a change landed twice"
        inserted = sorted(r[0] for r in got if r[3] == "insert")
        assert inserted == list(range(1, writes.written + 1))
        state: dict[int, tuple] = {}
        for id_, qty, note, op, _lsn, _ord in got:
            if op == "delete":
                state.pop(id_, None)
            else:
                state[id_] = (id_, qty, note)
        assert sorted(state.values()) == pg_rows(pgdb, "SELECT * FROM items ORDER BY id")
        staged_files = os.listdir(snow.bucket / database / "LAND" / "FILES")
        assert staged_files and all(parse_file_name(n) is not None for n in staged_files)
    finally:
        snow.kill()


def test_the_example_flow_is_valid_and_buildable(monkeypatch):
    from dataflows.buildable import check_buildable
    from wallaby.core.spec import parse_flow

    monkeypatch.setenv("SNOWFLAKE_USER", "loader")
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "pw")
    spec = parse_flow(json.loads((ROOT / "examples" / "flows" / "postgres_to_snowpipe.json").read_text()))
    check_buildable(spec)
    o = spec.destination_options(0)
    assert (o.format, o.copy_on_write, o.auto_ingest, o.write_mode) == ("parquet", True, False, "append")
    assert stage_location(o, "CDC") == "@CDC.LANDING/orders/"
