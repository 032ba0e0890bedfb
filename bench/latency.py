"""The ``latency`` leg group of ``make bench``: commit-to-visible latency into DuckDB, Kafka and pgstream.

A paced writer (its own process) inserts into a narrow table ``lat`` at an offered rate (default 1k, 10k and 50k
changes/s, ``--seconds`` each, default 10), in small transactions (``--rows-per-txn``, default 10: one
``INSERT ... SELECT ... generate_series`` in autocommit, so the transaction is the statement), each row carrying
``clock_timestamp()`` taken while it is inserted (its commit follows within microseconds: the commit-side time).
The writer sleeps until each transaction's scheduled time; when it falls behind it writes without sleeping, and its
achieved rate is reported beside the offered one. Before each rate the bench settles (``bench.settle``: the
database vacuumed, analyzed and checkpointed, then a wait of up to 30 s for a quiet machine), as before every timed
leg of bench/run.py.

One ``wallaby-worker -flow-file F`` (the console script, ``python -m wallaby.control.worker``; every source and
destination option at its default) per destination and epoch setting: the default (``WALLABY_EPOCH_INTERVAL``
unset: 2 s) and ``WALLABY_EPOCH_INTERVAL=200ms``. Its slot is made by the worker and streaming before the first row
is written; a warm-up of 100 rows, waited for until visible, lets the destination make its table (topic, stream)
first. Then the three rates in turn, each drained (every row seen) before the next. A row's latency is the time
it was first seen by a reader minus its ``clock_timestamp()`` (one host, one clock):

- ``duckdb``: the DuckDB destination (``release_file`` at its default, true: the file is let go between epochs); a
  reader in this process polls the file every ``--poll-ms`` (20) ms and, when its size or mtime (or its WAL's)
  changed since the last read, opens it read only, reads ``id, epoch_us(ts)`` of the rows past the last id seen
  and closes it (docs/destinations.md "Reading while a flow runs"); on DuckDB's lock error (the writer holds the
  file) it tries again at the next poll; seen = the moment the open succeeded. A reader holding the file makes
  the writer wait, with a back-off (5 ms growing 1.3x now; 0.1 s doubling when this was measured): a reader that
  retries the lock every 2 ms (the docs' recipe
  starts at 10 ms) won the file back each time the writer let go, and measured mostly that back-off (2 busy
  cores, 200ms epochs, 10k/s: p50 4.9 s, against 0.23 s with this reader); ``--duckdb-reader always`` opens the
  file at every poll, changed or not;
- ``kafka``: the Kafka destination (format arrow, its default) into a one-partition topic on a local broker
  (tests/kafka_broker.py); a confluent-kafka consumer in this process, each message decoded with
  ``wallaby.wire.decode``; seen = when ``poll`` returned the message;
- ``pgstream``: the pgstream destination (format json) into another database of the same server; a reader in
  this process selects ``wallaby.stream_messages`` past the last message id every ``--poll-ms`` ms and decodes
  each payload with ``wallaby.wire.decode``; seen = the moment the select was sent (its snapshot's time).

Reported per destination, epoch setting and rate: p50/p95/p99/max latency (ms) over every row of the rate's
phase, the rows seen of the rows written, the offered and achieved rates. A rate whose rows are not all seen within
``max(10 s, --seconds)`` of its last write fell behind: its unseen rows count as that wait (the percentiles are
then lower bounds, printed ``>``) and the higher rates of that worker are skipped. Target (issue 18): with the default
settings, p99 < 250 ms at 10k changes/s (each destination's row says whether it is met). The polling adds up to
one poll interval (+ the open) to what is measured for DuckDB and pgstream.

    python -m bench.latency [--rates 1000,10000,50000] [--seconds 10] [--destinations duckdb,kafka,pgstream]
                            [--epochs default,200ms] [--rows-per-txn 10] [--poll-ms 20]
    (make bench runs it as the leg group ``latency``: bench_latency / print_latency)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import psycopg

from bench import settle
from bench.run import ROOT, bench_postgres, fresh_database, show_group
from wallaby.control.localpg import LocalPostgres

DB = "bench_latency"
SINK_DB = "bench_latency_sink"  # the pgstream destination's database
TABLE = "lat"
RATES = (1_000, 10_000, 50_000)
DESTINATIONS = ("duckdb", "kafka", "pgstream")
EPOCHS = ("default", "200ms")  # "default": WALLABY_EPOCH_INTERVAL unset (2 s)
WARMUP_ROWS = 100
DRAIN_MIN_S = 10.0  # after a rate's last row, how long its rows may take to show up (at least; else --seconds)
TARGET = {"rate": 10_000, "epoch": "default", "p99_ms": 250.0}
INSERT = (f"INSERT INTO {TABLE} (id, ts, v, s) SELECT g, clock_timestamp(), g %% 1000, 'row ' || g"
          " FROM generate_series(%s::bigint, %s::bigint) g")


# -- the paced writer (a child process) -----------------------------------------------------------------------


def write_paced(dsn: str, rate: float, seconds: float, first_id: int, rows_per_txn: int) -> dict:
    """``rate`` rows/s for ``seconds`` from id ``first_id``, ``rows_per_txn`` rows a transaction (autocommit)."""
    total = max(rows_per_txn, int(rate * seconds) // rows_per_txn * rows_per_txn)
    interval = rows_per_txn / rate
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET synchronous_commit = on")
        t0 = time.perf_counter()
        behind = 0.0
        for i in range(total // rows_per_txn):
            due = t0 + i * interval
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            else:
                behind = max(behind, now - due)
            lo = first_id + i * rows_per_txn
            c.execute(INSERT, (lo, lo + rows_per_txn - 1), prepare=True)
        elapsed = time.perf_counter() - t0
    return {"rows": total, "seconds": elapsed, "achieved_rate": total / elapsed, "max_behind_s": behind}


def run_writer(dsn: str, rate: float, seconds: float, first_id: int, rows_per_txn: int) -> dict:
    cmd = [sys.executable, "-m", "bench.latency", "--child-writer", "--dsn", dsn, "--rates", str(rate),
           "--seconds", str(seconds), "--first-id", str(first_id), "--rows-per-txn", str(rows_per_txn)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds * 10 + 60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        raise RuntimeError(f"the paced writer failed ({r.returncode}): {r.stderr[-2000:]}")
    return orjson.loads(r.stdout.strip().splitlines()[-1])


# -- the readers (threads of this process) --------------------------------------------------------------------


class Observer(threading.Thread):
    """Polls one destination; every row it sees: its id, its ``ts`` (µs since 1970) and when it was seen (µs)."""

    def __init__(self, poll_s: float) -> None:
        super().__init__(daemon=True, name=f"observe-{type(self).__name__}")
        self.poll_s = poll_s
        self.stop = threading.Event()
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.count = 0
        self.last_id = 0
        self.polls = 0
        self.error: BaseException | None = None

    def seen(self, ids, ts, at: float | np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        ts = np.asarray(ts, dtype=np.int64)
        at_us = np.broadcast_to(np.asarray(np.asarray(at) * 1e6, dtype=np.int64), ids.shape)
        self.parts.append((ids, ts, at_us))
        self.last_id = max(self.last_id, int(ids.max()))
        self.count += len(ids)

    def run(self) -> None:
        try:
            self.setup()
            while not self.stop.is_set():
                self.polls += 1
                self.poll()
        except BaseException as exc:  # raised by flow_leg on the main thread
            self.error = exc
        finally:
            with contextlib.suppress(Exception):
                self.teardown()

    def setup(self) -> None:
        pass

    def poll(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        pass

    def latencies_ms(self, lo: int, hi: int) -> np.ndarray:
        """Commit to visible (ms) of the rows with ids ``lo..hi``, each row's first sighting."""
        parts = list(self.parts)  # the reader thread may append meanwhile
        if not parts:
            return np.empty(0)
        ids = np.concatenate([p[0] for p in parts])
        ts = np.concatenate([p[1] for p in parts])
        at = np.concatenate([p[2] for p in parts])
        keep = (ids >= lo) & (ids <= hi)
        ids, lat = ids[keep], (at[keep] - ts[keep]) / 1000.0
        _, first = np.unique(ids, return_index=True)  # a row seen twice (at-least-once) counts once, first time
        return lat[first]


class DuckDBObserver(Observer):
    """``gated`` (the default): each poll looks at the file's (and its WAL's) size and mtime and opens it only when
    they changed since the last read (after the writer let go of an epoch); otherwise every poll opens the file."""

    def __init__(self, path: Path, poll_s: float, gated: bool = True) -> None:
        super().__init__(poll_s)
        self.path = str(path)
        self.gated = gated
        self.lock_waits = self.reads = 0
        self._stamp: tuple = ()

    def _file_stamp(self) -> tuple:
        out = []
        for p in (self.path, self.path + ".wal"):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(p)
                out.append((p, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def poll(self) -> None:
        import duckdb

        t_next = time.perf_counter() + self.poll_s
        stamp = self._file_stamp() if self.gated else ()
        if os.path.exists(self.path) and (not self.gated or stamp != self._stamp):
            self._stamp, self.reads = stamp, self.reads + 1
            con = None
            try:
                con = duckdb.connect(self.path, read_only=True)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                self.lock_waits += 1  # the writer holds it: the next poll tries again
                self._stamp = ()
            if con is not None:
                at = time.time()
                try:
                    got = con.execute(f"SELECT id, epoch_us(ts) AS ts FROM public.{TABLE} WHERE id > ?",
                                      [self.last_id]).fetchnumpy()
                    self.seen(got["id"], got["ts"], at)
                except duckdb.CatalogException:  # the table is made by the first epoch that has its rows
                    pass
                finally:
                    con.close()
        time.sleep(max(0.0, t_next - time.perf_counter()))


def _id_ts(data: bytes, fmt: str) -> tuple[list[int], list[int]]:
    from wallaby.wire import decode

    seg = decode(data, fmt)
    names = [c.name for c in seg.columns]
    i, t = names.index("id"), names.index("ts")
    rows = [r.after for r in seg.records if r.after is not None]
    return [a[i] for a in rows], [a[t] for a in rows]


class KafkaObserver(Observer):
    def __init__(self, bootstrap: str, topic: str, poll_s: float) -> None:
        super().__init__(poll_s)
        self.bootstrap, self.topic = bootstrap, topic

    def setup(self) -> None:
        import uuid

        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"lat-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                  "fetch.message.max.bytes": 10485760})
        self.consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])

    def poll(self) -> None:
        msg = self.consumer.poll(0.1)
        if msg is None:
            return
        at = time.time()
        if msg.error() is not None:
            if msg.error().fatal():
                raise RuntimeError(f"consuming {self.topic!r}: {msg.error()}")
            return
        fmt = dict(msg.headers() or []).get("wallaby-format", b"arrow").decode()
        self.seen(*_id_ts(msg.value(), fmt), at)

    def teardown(self) -> None:
        self.consumer.close()


class PGStreamObserver(Observer):
    def __init__(self, dsn: str, stream: str, poll_s: float) -> None:
        super().__init__(poll_s)
        self.dsn, self.stream = dsn, stream
        self.message_id = 0

    def setup(self) -> None:
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    def poll(self) -> None:
        t_next = time.perf_counter() + self.poll_s
        at = time.time()
        try:
            rows = self.conn.execute("SELECT id, wire_format, payload FROM wallaby.stream_messages"
                                     " WHERE stream = %s AND id > %s ORDER BY id",
                                     (self.stream, self.message_id)).fetchall()
        except psycopg.errors.UndefinedTable:  # made by the destination when it opens
            rows = []
        for mid, fmt, payload in rows:
            self.message_id = mid
            self.seen(*_id_ts(bytes(payload), fmt), at)
        time.sleep(max(0.0, t_next - time.perf_counter()))

    def teardown(self) -> None:
        self.conn.close()


# -- one flow: a worker for one destination and epoch setting -------------------------------------------------


def _database(pg: LocalPostgres) -> tuple[str, str]:
    dsn, sink_dsn = fresh_database(pg, DB), fresh_database(pg, SINK_DB)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, ts timestamptz NOT NULL, v int, s text)")
    return dsn, sink_dsn


def _flow(tmp: Path, name: str, dsn: str, destination: dict) -> Path:
    flow = {"id": name, "name": name,
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": dsn, "slot": name, "publication": name, "publication_tables": f"public.{TABLE}"}},
            "destinations": [destination]}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(flow))
    return path


def _wait(what: str, ok, worker: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if worker.poll() is not None:
            raise RuntimeError(f"wallaby-worker exited ({worker.returncode}) before {what}: "
                               f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f}s; worker log: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def _slot_active(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() == (True,)


def _drop_slot(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND NOT active", (name,)).fetchone():
            c.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        c.execute(f'DROP PUBLICATION IF EXISTS "{name}"')


def _percentiles(lat: np.ndarray) -> dict:
    if not len(lat):
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "max_ms": float(lat.max())}


def flow_leg(dsn: str, sink_dsn: str, bootstrap: str | None, destination: str, epoch: str, rates: list[int],
             seconds: float, rows_per_txn: int, poll_s: float, first_id: int, duckdb_gated: bool = True) -> list[dict]:
    """One worker (``destination``, ``epoch``), the rates in turn; one result per rate."""
    name = f"lat_{destination}_{epoch.replace('default', 'dflt')}"
    tmp = Path(tempfile.mkdtemp(prefix=f"wallaby-bench-{name}-"))
    if destination == "duckdb":
        dest = {"name": "duck", "type": "duckdb", "options": {"dsn": str(tmp / "lat.duckdb")}}
        observer: Observer = DuckDBObserver(tmp / "lat.duckdb", poll_s, gated=duckdb_gated)
    elif destination == "kafka":
        from tests.kafka_broker import create_topic

        topic = f"{name}_{os.getpid()}_{int(time.time())}"
        create_topic(bootstrap, topic, partitions=1)
        dest = {"name": "kafka", "type": "kafka", "options": {"brokers": bootstrap, "topic": topic}}
        observer = KafkaObserver(bootstrap, topic, poll_s)
    elif destination == "pgstream":
        dest = {"name": "stream", "type": "pgstream", "options": {"dsn": sink_dsn, "stream": name}}
        observer = PGStreamObserver(sink_dsn, name, poll_s)
    else:
        raise ValueError(f"unknown destination {destination!r}; known: {', '.join(DESTINATIONS)}")
    flow = _flow(tmp, name, dsn, dest)
    env = {k: v for k, v in os.environ.items() if k != "WALLABY_EPOCH_INTERVAL"}
    env.update(PYTHONPATH=str(ROOT), WALLABY_CHECKPOINT_BACKEND="sqlite", WALLABY_CHECKPOINT_PATH=str(tmp / "c.db"),
               WALLABY_RECOVERY_DIR=str(tmp / "recovery"))
    if epoch != "default":
        env["WALLABY_EPOCH_INTERVAL"] = epoch
    log = tmp / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "wallaby.control.worker", "-flow-file", str(flow)],
                                  env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    results = []
    try:
        _wait("streaming slot", lambda: _slot_active(dsn, name), worker, log, 90)
        observer.start()
        with psycopg.connect(dsn, autocommit=True) as c:  # the warm-up: the destination makes its table
            c.execute(INSERT, (first_id, first_id + WARMUP_ROWS - 1))
        expected = WARMUP_ROWS
        _wait("warm-up rows visible", lambda: observer.count >= expected or observer.error, worker, log, 90)
        next_id = first_id + WARMUP_ROWS
        behind = None
        for rate in rates:
            if behind is not None:  # not drained at a lower rate: a higher one says nothing more
                results.append({"destination": destination, "epoch": epoch, "rate": rate,
                                "skipped": f"fell behind at {behind:,}/s"})
                continue
            settle(dsn)  # no autovacuum of the growing table, no leftover work, during the rate's writes
            w = run_writer(dsn, rate, seconds, next_id, rows_per_txn)
            expected += w["rows"]
            t_written = time.monotonic()
            with contextlib.suppress(TimeoutError):  # a destination that falls behind: its rows seen are short
                _wait(f"{rate}/s rows visible", lambda n=expected: observer.count >= n or observer.error,
                      worker, log, max(DRAIN_MIN_S, seconds))
            drain_s = time.monotonic() - t_written
            if observer.error:
                raise RuntimeError(f"the {destination} reader failed: {observer.error!r}")
            lat = observer.latencies_ms(next_id, next_id + w["rows"] - 1)
            seen = len(lat)
            if seen < w["rows"]:  # unseen rows: at least the drain wait late (so the percentiles are lower bounds)
                behind = rate
                lat = np.concatenate([lat, np.full(w["rows"] - seen, drain_s * 1000)])
            results.append({"destination": destination, "epoch": epoch, "rate": rate, "rows": w["rows"],
                            "seen": seen, "achieved_rate": w["achieved_rate"],
                            "writer_max_behind_s": w["max_behind_s"], "drain_s": drain_s,
                            "lower_bounds": seen < w["rows"], **_percentiles(lat)})
            next_id += w["rows"]
            if isinstance(observer, DuckDBObserver):  # so far, this worker's
                results[-1].update(reader_opens=observer.reads, reader_lock_waits=observer.lock_waits)
    finally:
        observer.stop.set()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        observer.join(10)
        _drop_slot(dsn, name)
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def bench_latency(pg: LocalPostgres, broker_bootstrap: str | None, rates: list[int] | None = None,
                  seconds: float = 10.0, destinations: list[str] | None = None, epochs: list[str] | None = None,
                  rows_per_txn: int = 10, poll_ms: float = 20.0, duckdb_reader: str = "gated") -> dict:
    """Every (destination, epoch setting, rate) of the module docstring; Kafka is left out without a broker."""
    rates = list(rates or RATES)
    destinations = list(destinations or DESTINATIONS)
    epochs = list(epochs or EPOCHS)
    dsn, sink_dsn = _database(pg)
    out: dict = {"rates": rates, "seconds": seconds, "rows_per_txn": rows_per_txn, "poll_ms": poll_ms,
                 "duckdb_reader": duckdb_reader,
                 "epochs": epochs, "legs": [], "skipped": {}}
    first_id = 1
    t0 = time.perf_counter()
    for destination in destinations:
        if destination == "kafka" and not broker_bootstrap:
            out["skipped"]["kafka"] = "no Kafka broker"
            continue
        for epoch in epochs:
            out["legs"] += flow_leg(dsn, sink_dsn, broker_bootstrap, destination, epoch, rates, seconds,
                                    rows_per_txn, poll_ms / 1000, first_id, duckdb_reader == "gated")
            first_id += 10_000_000
    out["seconds_total"] = time.perf_counter() - t0
    out["targets"] = latency_targets(out["legs"])
    return out


def latency_targets(legs: list[dict]) -> list[dict]:
    """Issue 18's: with the default settings p99 < 250 ms at 10k/s, per destination measured there."""
    out = []
    for r in legs:
        if r["rate"] == TARGET["rate"] and r["epoch"] == TARGET["epoch"] and "skipped" not in r:
            out.append({"target": f"{r['destination']}: p99 < {TARGET['p99_ms']:.0f} ms at {TARGET['rate']:,}/s,"
                                  " default settings", "p99_ms": r["p99_ms"], "lower_bound": r["lower_bounds"],
                        "met": r["p99_ms"] is not None and r["seen"] == r["rows"] and r["p99_ms"] < TARGET["p99_ms"]})
    return out


def print_latency(res: dict) -> None:
    print(f"\nlatency, commit to visible (ms), {res['seconds']:g} s per rate, {res['rows_per_txn']} rows a transaction,"
          f" readers polling every {res['poll_ms']:g} ms (DuckDB, pgstream):")
    print(f"{'destination':<12}{'epoch':<9}{'offered/s':>10}{'achieved/s':>11}{'p50':>9}{'p95':>9}{'p99':>9}"
          f"{'max':>9}{'seen':>15}")

    def ms(v: float | None, gt: str = "") -> str:
        return f"{gt}{v:.0f}".rjust(9) if v is not None else f"{'-':>9}"

    for r in res["legs"]:
        head = f"{r['destination']:<12}{r['epoch']:<9}{r['rate']:>10,}"
        if "skipped" in r:
            print(f"{head}  skipped: {r['skipped']}")
            continue
        gt = ">" if r.get("lower_bounds") else ""
        print(f"{head}{r['achieved_rate']:>11,.0f}{ms(r['p50_ms'], gt)}{ms(r['p95_ms'], gt)}{ms(r['p99_ms'], gt)}"
              f"{ms(r['max_ms'], gt)}{r['seen']:>9,}/{r['rows']:<7,}")
    for name, why in res.get("skipped", {}).items():
        print(f"{name}: skipped ({why})")
    for t in res.get("targets", []):
        p99 = f"{'>' if t['lower_bound'] else ''}{t['p99_ms']:.0f} ms" if t["p99_ms"] is not None else "-"
        print(f"target {t['target']}: p99 {p99}, {'met' if t['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="offered rates, changes/s")
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_LATENCY_SECONDS", 10)))
    ap.add_argument("--destinations", default=",".join(DESTINATIONS))
    ap.add_argument("--epochs", default=",".join(EPOCHS), help="'default' and/or WALLABY_EPOCH_INTERVAL values")
    ap.add_argument("--rows-per-txn", type=int, default=10)
    ap.add_argument("--poll-ms", type=float, default=20.0)
    ap.add_argument("--duckdb-reader", choices=("gated", "always"), default="gated",
                    help="gated: open the DuckDB file only when it changed; always: open it at every poll")
    ap.add_argument("--pg-dir", default=str(ROOT / ".cache" / "bench-pg"), help="the local Postgres's directory")
    ap.add_argument("--child-writer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dsn", help=argparse.SUPPRESS)
    ap.add_argument("--first-id", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_writer:
        print(orjson.dumps(write_paced(a.dsn, float(a.rates), a.seconds, a.first_id, a.rows_per_txn)).decode())
        return 0
    rates = [int(float(x)) for x in a.rates.split(",") if x]
    destinations = [d for d in a.destinations.split(",") if d]
    if unknown := [d for d in destinations if d not in DESTINATIONS]:
        ap.error(f"unknown destinations {unknown}; known: {', '.join(DESTINATIONS)}")
    with bench_postgres(Path(a.pg_dir)) as pg:
        broker = None
        try:
            if "kafka" in destinations:
                from tests.kafka_broker import KafkaBroker

                broker_dir = Path(tempfile.mkdtemp(prefix="wallaby-bench-kafka-"))
                broker = KafkaBroker(broker_dir)
                broker.start()
            res = bench_latency(pg, broker.bootstrap if broker else None, rates, a.seconds, destinations,
                                [e for e in a.epochs.split(",") if e], a.rows_per_txn, a.poll_ms, a.duckdb_reader)
        finally:
            if broker is not None:
                broker.stop()
                shutil.rmtree(broker_dir, ignore_errors=True)
    return show_group(res, print_latency)


if __name__ == "__main__":
    sys.exit(main())
