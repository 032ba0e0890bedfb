"""Runs one benchmark leg in its own process: the Postgres source into a null sink, DuckDB, DuckLake or Kafka.

    python -m bench.flowrun --dsn DSN --slot S --publication P --stop-lsn X/Y --sink null|duckdb|ducklake|kafka
                            [--duckdb FILE] [--catalog CATALOG --data-path DIR] [--batch-size N] [--hold-file]

``--sink ducklake``: the DuckLake destination with ``dsn`` the ``--duckdb`` file, ``catalog`` ``--catalog`` (e.g.
``sqlite:<file>``) and ``data_path`` ``--data-path``.

Prints one JSON line: changes seen, seconds from the first change to the last one handed
over (null) or committed (duckdb, ducklake), and the whole run's seconds with start-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

import orjson

from dataflows.buildable import sink_factory
from sinks.base import Writer, WriterSink
from wallaby.core.changes import ChangeBatch, parse_lsn


class CountingWriter(Writer):
    """The 'source alone' leg: batches are built (Arrow and all), counted, dropped."""

    def __init__(self) -> None:
        self.changes = 0
        self.first_at: float | None = None
        self.done_at: float | None = None

    def count(self, batch: ChangeBatch) -> None:
        if self.first_at is None and len(batch):
            self.first_at = time.perf_counter()
        self.changes += len(batch)

    def write(self, batch: ChangeBatch) -> None:
        self.count(batch)
        self.done_at = time.perf_counter()

    def commit(self) -> None:
        return None


class TimedWriter(Writer):
    """Wraps the DuckDB (or DuckLake, Kafka) writer: counts what it is given, notes when the last commit ended."""

    def __init__(self, inner: Writer, counter: CountingWriter):
        self.inner = inner
        self.counter = counter

    def write(self, batch: ChangeBatch) -> None:
        self.counter.count(batch)
        self.inner.write(batch)

    def commit(self):
        state = self.inner.commit()
        self.counter.done_at = time.perf_counter()
        return state

    def close(self) -> None:
        self.inner.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--slot", required=True)
    ap.add_argument("--publication", required=True)
    ap.add_argument("--stop-lsn", required=True)
    ap.add_argument("--sink", choices=["null", "duckdb", "ducklake", "kafka"], required=True)
    ap.add_argument("--kafka-brokers")
    ap.add_argument("--kafka-topic")
    ap.add_argument("--format", default="arrow", help="wire format of the kafka leg")
    ap.add_argument("--duckdb", help="the DuckDB file (duckdb), the lake's dsn (ducklake)")
    ap.add_argument("--catalog", help="the DuckLake catalog (ducklake), e.g. sqlite:<file>")
    ap.add_argument("--data-path", help="the DuckLake data path (ducklake): the Parquet files' directory")
    ap.add_argument("--batch-size", default="10000")
    ap.add_argument("--epoch-interval", type=float, default=2.0)
    ap.add_argument("--toast-fetch", default="off", help="the source's toast_fetch (the TOAST step's cost)")
    ap.add_argument("--meta", action="store_true", help="meta_enabled on the destination (the rewrite's cost)")
    ap.add_argument("--recovery", help="a bytewax recovery store in this directory, as every worker has (its cost)")
    ap.add_argument("--hold-file", action="store_true", help="release_file=false on the DuckDB destination: the file"
                    " held for the whole run, not let go after every epoch's commit (what release_file costs)")
    a = ap.parse_args(argv)

    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.run import cli_main

    from sources.postgres.source import PostgresSource, confirms_after_run
    from wallaby.core.spec import parse_flow

    if a.sink == "kafka":
        dest = {"name": "out", "type": "kafka", "options": {"brokers": a.kafka_brokers, "topic": a.kafka_topic,
                                                             "format": a.format}}
    elif a.sink == "ducklake":  # release_file does not apply to a lake (refused by its options)
        if not a.catalog:
            ap.error("--sink ducklake needs --catalog")
        dest = {"name": "out", "type": "ducklake", "options": {
            "dsn": a.duckdb or ":memory:", "catalog": a.catalog, **({"data_path": a.data_path} if a.data_path else {}),
            **({"meta_enabled": "true"} if a.meta else {})}}
    else:
        dest = {"name": "out", "type": "duckdb", "options": {"dsn": a.duckdb or ":memory:",
                                                              **({"meta_enabled": "true"} if a.meta else {}),
                                                              **({"release_file": "false"} if a.hold_file else {})}}
    spec = parse_flow({
        "id": "bench", "name": "bench",
        "source": {"name": "pg", "type": "postgres", "options": {
            "dsn": a.dsn, "slot": a.slot, "publication": a.publication, "create_slot": "false",
            "ensure_publication": "false", "ensure_state": "false", "batch_size": a.batch_size,
            "batch_timeout": "100ms", "status_interval": "1s", "toast_fetch": a.toast_fetch}},
        "destinations": [dest],
    }, origin="bench")
    counter = CountingWriter()
    if a.sink == "null":
        sink = WriterSink("out", lambda _state: counter)
    else:
        from operators.metadata import with_metadata

        opts = spec.destination_options(0)
        make = with_metadata("out", opts, sink_factory(a.sink)("out", spec.id, opts).new_writer)
        sink = WriterSink("out", lambda state: TimedWriter(make(state), counter))
    flow = Dataflow("bench")
    source = PostgresSource(spec.id, spec.source_options(), stop_at_lsn=parse_lsn(a.stop_lsn))
    changes = op.input("source", flow, source)
    if a.toast_fetch != "off":
        from operators.toast import toast_step

        changes = toast_step(changes, spec)
    op.output("out", changes, sink)
    recovery = None
    if a.recovery:
        from bytewax.recovery import RecoveryConfig, init_db_dir

        Path(a.recovery).mkdir(parents=True, exist_ok=True)
        init_db_dir(Path(a.recovery), 1)
        recovery = RecoveryConfig(a.recovery)
    t0 = time.perf_counter()
    with confirms_after_run():  # as wallaby-worker runs it: the source ends at once when the stream is done
        cli_main(flow, epoch_interval=timedelta(seconds=a.epoch_interval), recovery_config=recovery)
    end = time.perf_counter()
    # Catch-up time: first change seen -> last change handed over (source alone) or committed in
    # DuckDB (end to end). Process start-up and the wait for the final epoch's checkpoint are left out
    # (both recorded in seconds_with_startup).
    first = counter.first_at or t0
    done = counter.done_at or end
    sys.stdout.write(orjson.dumps({"changes": counter.changes, "seconds": done - first,
                                   "seconds_with_startup": end - t0}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
