"""ClickHouse in `make bench`: the server, the end-to-end leg (``e2e_clickhouse``) and its ceiling
(``clickhouse_bulk_load``).

No ClickHouse server package is reachable here: the server is the chdb test server (tests/chserver.py, the current
ClickHouse engine behind the HTTP interface), started by bench/run.py for the leg (:func:`clickhouse_server`) in a
process of its own, so its memory is not the leg's.

    python -m bench.clickhouse_ceiling e2e --url URL --database DB --dsn DSN --slot S --publication P --stop-lsn X/Y
                                           [--batch-size N] [--epoch-interval S]
    python -m bench.clickhouse_ceiling ceiling --url URL --database DB

``e2e``: the Postgres source into the ClickHouse destination (target mode, the tables in ``--database``), as
bench/flowrun.py runs the other legs; prints one JSON line: changes seen, seconds from the first change to the last
one committed, seconds with start-up.

``ceiling``: ClickHouse loading the e2e leg's final table itself: its rows (with the destination's version
columns), read whole into Arrow untimed, inserted in one ``INSERT ... FORMAT Arrow`` through clickhouse-connect
into a fresh table of the same engine and sorting key (``CREATE TABLE ... AS``), timed around the insert: the most
any leg into this ClickHouse takes in on this machine. Prints one JSON line: rows, seconds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import orjson

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def clickhouse_server(tmp: Path) -> Iterator[str]:
    """The chdb test server on a data directory in ``tmp``, for the time of the block: its URL
    (``http://default:<password>@127.0.0.1:<port>``)."""
    from tests.chserver import START_TIMEOUT, ClickHouseServer, _answers
    from tests.servers import free_port

    server = ClickHouseServer("127.0.0.1", free_port(), "default", uuid.uuid4().hex)
    log = open(tmp / "clickhouse-server.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "tests.chserver", "--port", str(server.port), "--path",
                             str(tmp / "clickhouse-data"), "--user", server.user, "--password", server.password],
                            cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(server):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ClickHouse test server did not start: {tmp / 'clickhouse-server.log'}")
            time.sleep(0.1)
        yield server.url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _client(url: str):
    import clickhouse_connect

    parts = urlsplit(url)
    return clickhouse_connect.get_client(host=parts.hostname, port=parts.port, username=parts.username or "default",
                                         password=parts.password or "")


def ceiling(url: str, database: str) -> dict:
    client = _client(url)
    try:
        src = f"`{database}`.`bench`"
        cols = [r[0] for r in client.query(f"SELECT name FROM system.columns WHERE database = '{database}' AND"
                                           " table = 'bench' AND default_kind != 'MATERIALIZED' ORDER BY position"
                                           ).result_rows]
        names = ", ".join(f"`{c}`" for c in cols)
        table = client.query_arrow(f"SELECT {names} FROM {src} FINAL WHERE __wallaby_deleted = 0")
        client.command("CREATE DATABASE IF NOT EXISTS bench_ceiling")
        client.command("DROP TABLE IF EXISTS bench_ceiling.bench")
        client.command(f"CREATE TABLE bench_ceiling.bench AS {src}")
        t = time.perf_counter()
        client.insert_arrow("bench", table, database="bench_ceiling")
        secs = time.perf_counter() - t
        rows = client.command("SELECT count() FROM bench_ceiling.bench")
    finally:
        client.close()
    return {"rows": int(rows), "seconds": secs}


def bulk_load(url: str, run_measured) -> dict:
    """``clickhouse_bulk_load`` beside ``e2e_clickhouse`` (bench/run.py): :func:`ceiling` in a process of its own
    (``run_measured``: bench/run.py's, for its peak RSS)."""
    import os

    _, rss, out = run_measured([sys.executable, "-m", "bench.clickhouse_ceiling", "ceiling", "--url", url],
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    info = orjson.loads(out.strip().splitlines()[-1])
    return {"seconds": info["seconds"], "rows": info["rows"], "peak_rss_mb": rss / 2**20}


# The ClickHouse leg's target (the issue's, for 1M narrow changes): its rate over clickhouse_bulk_load's, peak RSS.
TARGETS = {"x_ceiling": 0.5, "peak_rss_mb": 400.0}


def target(results: dict[str, dict]) -> dict | None:
    """The ClickHouse leg's target, met or not (None without the leg and its ceiling)."""
    leg, ceil = results.get("e2e_clickhouse"), results.get("clickhouse_bulk_load")
    if not leg or not ceil:
        return None
    ratio, rss = leg["ratio_to_ceiling"], leg["peak_rss_mb"]
    return {"target": f"e2e_clickhouse >= {TARGETS['x_ceiling']}x clickhouse_bulk_load, peak RSS <"
                      f" {TARGETS['peak_rss_mb']:.0f} MB", "leg": "e2e_clickhouse", "ceiling": "clickhouse_bulk_load",
            "changes_per_s": leg["changes_per_s"], "ratio_to_pg_recvlogical": leg["ratio_to_pg_recvlogical"],
            "ratio_to_ceiling": ratio, "ceiling_rows_per_s": ceil["changes_per_s"], "peak_rss_mb": rss,
            "ceiling_peak_rss_mb": ceil["peak_rss_mb"], "x_ceiling": TARGETS["x_ceiling"],
            "max_peak_rss_mb": TARGETS["peak_rss_mb"],
            "met": ratio >= TARGETS["x_ceiling"] and rss < TARGETS["peak_rss_mb"]}


def e2e(a: argparse.Namespace) -> dict:
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.run import cli_main

    from bench.flowrun import CountingWriter, TimedWriter
    from dataflows.buildable import sink_factory
    from operators.metadata import with_metadata
    from sinks.base import WriterSink
    from sources.postgres.source import PostgresSource
    from wallaby.core.changes import parse_lsn
    from wallaby.core.spec import parse_flow

    spec = parse_flow({
        "id": "bench", "name": "bench",
        "source": {"name": "pg", "type": "postgres", "options": {
            "dsn": a.dsn, "slot": a.slot, "publication": a.publication, "create_slot": "false",
            "ensure_publication": "false", "ensure_state": "false", "batch_size": a.batch_size,
            "batch_timeout": "100ms", "status_interval": "1s"}},
        "destinations": [{"name": "out", "type": "clickhouse", "options": {
            "dsn": f"{a.url}/bench_state", "database": a.database}}],
    }, origin="bench")
    counter = CountingWriter()
    opts = spec.destination_options(0)
    make = with_metadata("out", opts, sink_factory("clickhouse")("out", spec.id, opts).new_writer)
    sink = WriterSink("out", lambda state: TimedWriter(make(state), counter))
    flow = Dataflow("bench")
    source = PostgresSource(spec.id, spec.source_options(), stop_at_lsn=parse_lsn(a.stop_lsn))
    op.output("out", op.input("source", flow, source), sink)
    t0 = time.perf_counter()
    cli_main(flow, epoch_interval=timedelta(seconds=a.epoch_interval))
    end = time.perf_counter()
    first = counter.first_at or t0
    done = counter.done_at or end
    return {"changes": counter.changes, "seconds": done - first, "seconds_with_startup": end - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["e2e", "ceiling"])
    ap.add_argument("--url", required=True, help="the server: http://user:password@host:port")
    ap.add_argument("--database", default="bench_e2e", help="the database of the e2e leg's table")
    ap.add_argument("--dsn", help="the Postgres source (e2e)")
    ap.add_argument("--slot")
    ap.add_argument("--publication")
    ap.add_argument("--stop-lsn")
    ap.add_argument("--batch-size", default="10000")
    ap.add_argument("--epoch-interval", type=float, default=2.0)
    a = ap.parse_args(argv)
    if a.what == "e2e":
        if not (a.dsn and a.slot and a.publication and a.stop_lsn):
            ap.error("e2e needs --dsn, --slot, --publication and --stop-lsn")
        out = e2e(a)
    else:
        out = ceiling(a.url, a.database)
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
