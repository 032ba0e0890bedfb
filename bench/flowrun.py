"""Runs one benchmark leg in its own process: the Postgres source into a null sink or DuckDB.

    python -m bench.flowrun --dsn DSN --slot S --publication P --stop-lsn X/Y --sink null|duckdb
                            [--duckdb FILE] [--batch-size N]

Prints one JSON line: changes seen, seconds from first poll to the final checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta

import orjson

from sinks.base import Writer, WriterSink
from wallaby.changes import ChangeBatch, parse_lsn


class CountingWriter(Writer):
    """The 'source alone' leg: batches are built (Arrow and all), counted, dropped."""

    def __init__(self) -> None:
        self.changes = 0

    def write(self, batch: ChangeBatch) -> None:
        self.changes += len(batch)

    def commit(self) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--slot", required=True)
    ap.add_argument("--publication", required=True)
    ap.add_argument("--stop-lsn", required=True)
    ap.add_argument("--sink", choices=["null", "duckdb"], required=True)
    ap.add_argument("--duckdb")
    ap.add_argument("--batch-size", default="10000")
    ap.add_argument("--epoch-interval", type=float, default=2.0)
    a = ap.parse_args(argv)

    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.run import cli_main

    from sources.postgres import PostgresSource
    from wallaby.spec import parse_flow

    dest = {"name": "out", "type": "duckdb", "options": {"dsn": a.duckdb or ":memory:"}}
    spec = parse_flow({
        "id": "bench", "name": "bench",
        "source": {"name": "pg", "type": "postgres", "options": {
            "dsn": a.dsn, "slot": a.slot, "publication": a.publication, "create_slot": "false",
            "ensure_publication": "false", "ensure_state": "false", "batch_size": a.batch_size,
            "batch_timeout": "100ms", "status_interval": "1s"}},
        "destinations": [dest],
    }, origin="bench")
    counter = CountingWriter()
    if a.sink == "null":
        sink = WriterSink("out", lambda _state: counter)
    else:
        from dataflows.flow import SINK_FACTORIES

        sink = SINK_FACTORIES["duckdb"]("out", spec.id, spec.destination_options(0))
    flow = Dataflow("bench")
    source = PostgresSource(spec.id, spec.source_options(), stop_at_lsn=parse_lsn(a.stop_lsn))
    stream = op.input("source", flow, source)
    if a.sink == "duckdb":
        def count(batch_item):
            counter.changes += len(batch_item[1])
            return batch_item
        stream = op.map("count", stream, count)
    op.output("out", stream, sink)
    t0 = time.perf_counter()
    cli_main(flow, epoch_interval=timedelta(seconds=a.epoch_interval))
    elapsed = time.perf_counter() - t0
    sys.stdout.write(orjson.dumps({"changes": counter.changes, "seconds": elapsed}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
