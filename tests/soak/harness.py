"""The soak's machinery: the load, the audit of what the source produced, the worker under a supervisor, readers of
every destination, services that can be taken down (S3 behind a gate), and the results table.

What counts as a change: every row change (insert, update, delete) the publication sends, identified by its
position ``(commit LSN, ordinal)``, read back from an *audit* slot created next to the flow's own slot before the
load starts (``pg_logical_slot_peek_binary_changes``, pgoutput protocol 1, decoded with
``sources.postgres.pgoutput``; the ordinal counts the transaction's changes from 1, as the batcher does).
Destinations are compared with that list:

- DuckDB ``write_mode=target``: the table equals the Postgres table (rows missing, different or left behind are
  *lost*, extra copies of a key *duplicated*);
- DuckDB ``write_mode=append``, Kafka, S3: every audited position is present (``__lsn``/``__ord`` columns, the
  records of every message or object); positions held more than once are duplicates, counted per cycle.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(sys.executable).parent / "wallaby-worker")
RESULTS_FILE = ROOT / ".cache" / "soak-results.md"
EVIDENCE_DIR = ROOT / ".cache" / "soak-evidence"
TABLE = "soak"
EPOCH = os.environ.get("WALLABY_SOAK_EPOCH", "500ms")


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


# -- Postgres ---------------------------------------------------------------------------------------------------


def sql(dsn: str, *stmts: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in stmts:
            c.execute(s)


def current_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return parse_lsn(c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])


def slot_info(dsn: str, slot: str) -> tuple[bool, int | None, int]:
    """(active, active_pid, confirmed_flush_lsn) of ``slot``."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT active, active_pid, confirmed_flush_lsn::text FROM pg_replication_slots"
                        " WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return False, None, 0
    return bool(row[0]), row[1], parse_lsn(row[2]) if row[2] else 0


def wait_streaming(dsn: str, slot: str, timeout: float = 120, not_pid: int | None = None,
                   worker: Worker | None = None) -> float:
    """Until a walsender streams from ``slot`` (another than ``not_pid``); the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(psycopg.OperationalError):
            active, pid, _ = slot_info(dsn, slot)
            if active and pid != not_pid:
                return time.monotonic() - t0
        if worker is not None:
            worker.supervise()
        time.sleep(0.1)
    raise AssertionError(f"no walsender streams from slot {slot} after {timeout:.0f} s"
                         + (f"\n{worker.tail()}" if worker is not None else ""))


def create_table(dsn: str) -> None:
    sql(dsn, f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, seq bigint NOT NULL, note text, qty int,"
             " price numeric(12,2), ts timestamptz)")


class Load:
    """Continuous inserts, updates and deletes on the soak table from a thread of its own.

    Each transaction inserts 1-3 rows and mostly updates one recent row; some delete a row; every 40th updates
    about a hundred rows at once (a transaction larger than a source batch, so it is emitted in parts), every 50th
    changes a row's key, every 200th deletes a range. Every change writes a new ``seq``. A connection lost (the
    server restarting) is opened again; the transaction in flight then may or may not have committed, which the
    audit, not the load, decides."""

    def __init__(self, dsn: str, seed: int = 0, pause: float = 0.004) -> None:
        self.dsn = dsn
        self.seed = seed
        self.pause = pause
        self.txs = 0
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        rnd = random.Random(self.seed)
        next_id, seq, n = 1, 0, 0
        while not self._stop.is_set():
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            except psycopg.OperationalError as exc:
                self.errors += 1
                self.last_error = str(exc).strip()[:200]
                time.sleep(0.2)
                continue
            try:
                while not self._stop.is_set():
                    n += 1
                    with conn.transaction():
                        for _ in range(rnd.randint(1, 3)):
                            seq += 1
                            note = rnd.choice(["w", "é🦘", None, "x" * rnd.randint(1, 300)])
                            conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s, %s, now())",
                                         (next_id, seq, note, rnd.randint(-5, 5), next_id / 7))
                            next_id += 1
                        r = rnd.random()
                        if r < 0.7:
                            seq += 1
                            conn.execute(f"UPDATE {TABLE} SET qty = qty + 1, seq = %s, note = 'u' WHERE id = %s",
                                         (seq, rnd.randint(max(1, next_id - 500), next_id - 1)))
                        elif r < 0.85:
                            conn.execute(f"DELETE FROM {TABLE} WHERE id = %s", (rnd.randint(1, next_id - 1),))
                        if n % 40 == 0:
                            seq += 1
                            lo = max(1, next_id - 800)
                            conn.execute(f"UPDATE {TABLE} SET qty = qty - 1, seq = %s WHERE id BETWEEN %s AND %s"
                                         " AND id %% 7 = %s", (seq, lo, lo + 700, n % 7))
                        if n % 50 == 0:
                            seq += 1
                            conn.execute(f"UPDATE {TABLE} SET id = %s, seq = %s WHERE id = %s",
                                         (next_id, seq, rnd.randint(max(1, next_id - 300), next_id - 1)))
                            next_id += 1
                        if n % 200 == 0:
                            lo = rnd.randint(1, max(1, next_id - 100))
                            conn.execute(f"DELETE FROM {TABLE} WHERE id BETWEEN %s AND %s", (lo, lo + 60))
                    self.txs += 1
                    time.sleep(self.pause)
            except psycopg.Error as exc:  # the server went away (restart): connect again
                self.errors += 1
                self.last_error = str(exc).strip()[:200]
                time.sleep(0.2)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()


# -- the audit ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    lsn: int  # commit LSN of the transaction
    ordinal: int
    op: str
    key: str | None
    end: int  # end LSN of the transaction

    @property
    def position(self) -> tuple[int, int]:
        return self.lsn, self.ordinal

    def show(self) -> str:
        return f"{lsn_text(self.lsn)}#{self.ordinal} {self.op} id={self.key}"


def create_audit_slot(dsn: str, slot: str) -> None:
    sql(dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")


def audit(dsn: str, slot: str, publication: str) -> list[Change]:
    """Every row change the publication sent since the audit slot was created (the slot is only peeked)."""
    from sources.postgres.pgoutput import Begin, Commit, Decoder, Delete, Insert, LogicalMessage, Truncate, Update

    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1',"
                         " 'publication_names', %s)", (slot, publication)).fetchall()
    dec = Decoder(1)
    out: list[Change] = []
    pending: list[tuple] = []
    lsn = ordinal = 0

    def key(values) -> str | None:
        v = values[0] if values else None
        return bytes(v).decode() if isinstance(v, bytes | bytearray | memoryview) else None

    for (data,) in rows:
        m = dec.decode(bytes(data))
        if isinstance(m, Begin):
            lsn, ordinal, pending = m.final_lsn, 0, []
        elif isinstance(m, Insert | Update):
            ordinal += 1
            pending.append((lsn, ordinal, type(m).__name__.lower(), key(m.new)))
        elif isinstance(m, Delete):
            ordinal += 1
            pending.append((lsn, ordinal, "delete", key(m.old)))
        elif isinstance(m, Truncate) or (isinstance(m, LogicalMessage) and m.transactional):
            ordinal += 1
            pending.append((lsn, ordinal, type(m).__name__.lower(), None))
        elif isinstance(m, Commit):
            out += [Change(*p, end=m.end_lsn) for p in pending]
            pending = []
    return out


def confirmed_past(changes: list[Change], confirmed: int, high_water: int) -> list[Change]:
    """Changes whose transaction ended at or before ``confirmed`` but lie above ``high_water``: confirmed to the
    server (or the checkpoint store) while the destination did not hold them."""
    return [c for c in changes if c.end <= confirmed and c.lsn > high_water]


# -- the flow and its worker ----------------------------------------------------------------------------------------


def flow_file(workdir: Path, flow_id: str, dsn: str, destinations: list[dict], **source: str) -> Path:
    flow = {
        "id": flow_id, "name": flow_id,
        "source": {"name": "pg", "type": "postgres", "options": {
            "dsn": dsn, "slot": f"{flow_id}_slot", "publication": f"{flow_id}_pub",
            "publication_tables": f"public.{TABLE}", "batch_size": "50", "batch_timeout": "50ms",
            "status_interval": "1s", **source}},
        "destinations": destinations,
    }
    path = workdir / f"{flow_id}.json"
    path.write_text(json.dumps(flow, indent=1))
    return path


def duck_target(path: Path, name: str = "duck") -> dict:
    return {"name": name, "type": "duckdb", "options": {"dsn": str(path)}}


def duck_append(path: Path, name: str = "duckapp") -> dict:
    return {"name": name, "type": "duckdb", "options": {"dsn": str(path), "write_mode": "append"}}


def kafka_dest(bootstrap: str, topic: str, name: str = "bus") -> dict:
    return {"name": name, "type": "kafka", "options": {"brokers": bootstrap, "topic": topic}}


def s3_dest(endpoint: str, bucket: str, name: str = "lake") -> dict:
    return {"name": name, "type": "s3", "options": {
        "bucket": bucket, "endpoint": endpoint, "access_key": "test", "secret_key": "test-secret",
        "force_path_style": True, "prefix": "soak", "compression": "gzip"}}


def worker_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALLABY_", "AWS_"))}
    env.update(WALLABY_CHECKPOINT_PATH=str(workdir / "checkpoints.db"), WALLABY_EPOCH_INTERVAL=EPOCH,
               PYTHONPATH=str(ROOT), AWS_EC2_METADATA_DISABLED="true")
    return env


def checkpoint(workdir: Path, flow_id: str) -> tuple[int, tuple[int, int]] | None:
    """(confirmed_lsn, position) of the flow in its SQLite checkpoint store, read-only."""
    path = workdir / "checkpoints.db"
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as c:
        try:
            row = c.execute("SELECT confirmed_lsn, position_lsn, position_ordinal FROM wallaby_checkpoints"
                            " WHERE flow_id = ?", (flow_id,)).fetchone()
        except sqlite3.OperationalError:
            return None
    return None if row is None else (int(row[0]), (int(row[1]), int(row[2])))


class Worker:
    """``wallaby-worker -flow-file`` as a subprocess, each run logging to a file of its own; ``supervise`` restarts
    it when it exited (as the API server does after a transient failure), keeping every exit status and line."""

    def __init__(self, flow: Path, env: dict[str, str], logdir: Path, *args: str) -> None:
        self.flow = flow
        self.env = env
        self.logdir = logdir
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.exits: list[tuple[int, str]] = []  # (status, last line) of every run that ended by itself
        self.kills = 0
        self._restart_at = 0.0
        logdir.mkdir(parents=True, exist_ok=True)

    @property
    def log(self) -> Path:
        return self.logdir / f"worker-{self.runs}.log"

    def event(self, text: str) -> None:
        """A timestamped line in logs/events.log (starts, kills, exits, cycle ends): evidence for a finding."""
        with (self.logdir / "events.log").open("a") as f:
            f.write(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {text}\n")

    def start(self, *extra: str) -> Worker:
        assert not self.alive, "the worker is running"
        self.runs += 1
        self.event(f"start run {self.runs}")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([WORKER, "-flow-file", str(self.flow), *self.args, *extra], env=self.env,
                                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is None:
            return
        if self.alive:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.kills += 1
            self.event(f"kill -9 run {self.runs}")
            self.proc.wait(30)
        else:  # it had exited by itself
            self.exits.append((self.proc.returncode, last_line(self.log)))
        self.proc = None

    def term(self, timeout: float = 90) -> int:
        """SIGTERM (a graceful stop: the epoch in flight is finished); SIGKILL after ``timeout``."""
        if self.proc is None:
            return 0
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                return -9
        rc = self.proc.returncode
        self.exits.append((rc, last_line(self.log)))
        self.event(f"SIGTERM run {self.runs}: exit {rc}")
        self.proc = None
        return rc

    def supervise(self, backoff: float = 1.0) -> None:
        """Restart the worker (after ``backoff`` s) when it exited by itself."""
        if self.proc is not None and self.proc.poll() is not None:
            self.exits.append((self.proc.returncode, last_line(self.log)))
            self.event(f"run {self.runs} exited {self.proc.returncode}: {self.exits[-1][1][:300]}")
            self.proc = None
            self._restart_at = time.monotonic() + backoff
        if self.proc is None and time.monotonic() >= self._restart_at:
            self.start()

    def sleep(self, seconds: float) -> None:
        """Sleep while supervising."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.supervise()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def drain(self, flow_id: str, workdir: Path, target: int, attempts: int = 4, timeout: float = 240) -> list[str]:
        """Run the worker to the end of the load (``-max-empty-reads``) until the checkpoint store holds ``target``;
        notes on anything unexpected (a drain that exited non-zero, or had to be run again)."""
        notes = []
        assert not self.alive
        for attempt in range(attempts):
            self.runs += 1
            try:
                r = subprocess.run([WORKER, "-flow-file", str(self.flow), *self.args, "-max-empty-reads", "40"],
                                   env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
                self.log.write_text(r.stdout + r.stderr)
                self.event(f"drain run {self.runs}: exit {r.returncode}")
                if r.returncode != 0:
                    notes.append(f"drain run {attempt + 1} exited {r.returncode}: {last_line(self.log)}")
            except subprocess.TimeoutExpired:
                notes.append(f"drain run {attempt + 1} did not finish in {timeout:.0f} s")
            cp = checkpoint(workdir, flow_id)
            if cp is not None and cp[0] >= target:
                if attempt:
                    notes.append(f"drained after {attempt + 1} runs")
                return notes
            time.sleep(1)
        cp = checkpoint(workdir, flow_id)
        notes.append(f"checkpoint {lsn_text(cp[0]) if cp else None} never reached the end of the load"
                     f" {lsn_text(target)}")
        return notes

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def exit_summary(self) -> str:
        if not self.exits:
            return ""
        codes = Counter(rc for rc, _ in self.exits)
        text = "worker exits " + ", ".join(f"{rc} x{n}" for rc, n in sorted(codes.items()))
        lines = []
        for rc, line in self.exits:
            if rc not in (0, -9) and line and line not in lines:
                lines.append(line)
        return text + ("; " + " | ".join(f"'{x[:240]}'" for x in lines[:3]) if lines else "")


def last_line(path: Path) -> str:
    """The worker's one-line failure report (``wallaby-worker: ...``), else its last line."""
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    report = [x for x in lines if x.startswith("wallaby-worker:")]
    return (report or lines or [""])[-1].strip()


# -- destinations -------------------------------------------------------------------------------------------------


def duck_connect(path: Path, timeout: float = 60):
    """A read-only connection to ``path`` (waiting while a worker still holds it)."""
    import duckdb

    deadline = time.monotonic() + timeout
    while True:
        try:
            return duckdb.connect(str(path), read_only=True)
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _duck_has_table(d) -> bool:
    return bool(d.execute("SELECT 1 FROM duckdb_tables() WHERE schema_name = 'public' AND table_name = ?",
                          [TABLE]).fetchall())


def duck_high_water(path: Path) -> int:
    if not path.exists():
        return 0
    with duck_connect(path) as d:
        names = [r[0] for r in d.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE"
                                         " '%wallaby_state%'").fetchall()]
        if not names:
            return 0
        return int(d.execute(f'SELECT coalesce(max(lsn), 0) FROM "{names[0]}"').fetchone()[0])


def duck_rows(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    with duck_connect(path) as d:
        if not _duck_has_table(d):
            return []
        return [tuple(r) for r in d.execute(f"SELECT id, seq, note, qty, price, ts FROM public.{TABLE}"
                                            " ORDER BY ALL").fetchall()]


def duck_positions(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    with duck_connect(path) as d:
        if not _duck_has_table(d):
            return Counter()
        return Counter({(int(lsn), int(o)): int(n) for lsn, o, n in d.execute(
            f"SELECT __lsn, __ord, count(*) FROM public.{TABLE} GROUP BY ALL").fetchall()})


def pg_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as c:
        return [tuple(r) for r in c.execute(f"SELECT id, seq, note, qty, price, ts FROM {TABLE}"
                                            " ORDER BY id").fetchall()]


def compare_target(duck: Path, dsn: str) -> tuple[int, int, list[str]]:
    """(lost, duplicated, evidence) of a DuckDB target table against Postgres, per key."""
    want = {r[0]: r for r in pg_rows(dsn)}
    got: dict[int, list[tuple]] = {}
    for r in duck_rows(duck):
        got.setdefault(r[0], []).append(r)
    lost, evidence = 0, []
    for k, row in want.items():
        if k not in got or row not in got[k]:
            lost += 1
            evidence.append(f"id={k}: postgres {row}, duckdb {got.get(k)}")
    for k, rows in got.items():
        if k not in want:
            lost += 1  # a delete (or a key change) that never arrived
            evidence.append(f"id={k}: deleted in postgres, duckdb {rows}")
    dup = sum(len(rows) - 1 for rows in got.values())
    evidence += [f"id={k}: {len(rows)} rows in duckdb" for k, rows in got.items() if len(rows) > 1]
    return lost, dup, evidence


class KafkaTopic:
    """Every change position of a topic, read incrementally by one consumer (``refresh`` reads up to the end)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.counts: Counter = Counter()
        self.messages = 0
        self._consumer = None
        self._next: dict[int, int] = {}

    def refresh(self, timeout: float = 90) -> Counter:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        from wallaby.wire import decode

        deadline = time.monotonic() + timeout
        if self._consumer is None:
            self._consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"soak-{self.topic}",
                                       "enable.auto.commit": False, "enable.partition.eof": True,
                                       "fetch.message.max.bytes": 10485760, "reconnect.backoff.max.ms": 1000})
        c = self._consumer
        meta = c.list_topics(self.topic, timeout=30).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return self.counts
        new = [p for p in meta.partitions if p not in self._next]
        if new:
            for p in new:
                self._next[p] = 0
            c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING if self._next[p] == 0 else self._next[p])
                      for p in sorted(self._next)])
        ends = {p: c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)[1] for p in self._next}
        while any(self._next[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self.topic} to its end: {self._next} of {ends}")
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error() is not None:
                if m.error().code() != KafkaError._PARTITION_EOF and m.error().fatal():
                    raise RuntimeError(f"consuming {self.topic}: {m.error()}")
                continue
            p = m.partition()
            self._next[p] = max(self._next[p], m.offset() + 1)
            self.messages += 1
            fmt = dict(m.headers() or [])["wallaby-format"].decode()
            for r in decode(m.value(), fmt).records:
                self.counts[(r.lsn, r.ordinal)] += 1
        return self.counts

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                        region_name="us-east-1", config=Config(s3={"addressing_style": "path"},
                                                               retries={"max_attempts": 10, "mode": "standard"}))


class S3Prefix:
    """Every change position of the objects under a bucket's prefix, read incrementally (new keys only)."""

    def __init__(self, endpoint: str, bucket: str, prefix: str = "soak/") -> None:
        self.client = s3_client(endpoint)
        self.bucket = bucket
        self.prefix = prefix
        self.counts: Counter = Counter()
        self.keys: set[str] = set()

    def refresh(self) -> Counter:
        """Read the objects listed now that were not read before (those written meanwhile wait for the next call:
        a reader slower than the writer would otherwise never finish)."""
        from concurrent.futures import ThreadPoolExecutor

        from wallaby.wire import decode

        new = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            new += [o["Key"] for o in page.get("Contents", []) if o["Key"] not in self.keys
                    and "/_wallaby/" not in o["Key"]]

        def read(k: str) -> list[tuple[int, int]]:
            data = self.client.get_object(Bucket=self.bucket, Key=k)["Body"].read()
            if k.endswith(".gz"):
                data = gzip.decompress(data)
            fmt = k.removesuffix(".gz").rsplit(".", 1)[1]
            return [(r.lsn, r.ordinal) for r in decode(data, fmt).records]

        with ThreadPoolExecutor(8) as pool:
            for k, positions in zip(new, pool.map(read, new), strict=True):
                self.counts.update(positions)
                self.keys.add(k)
        return self.counts


def dups(counts: Counter) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


@dataclass
class Tally:
    """Per-cycle duplicates of a position-counting destination: ``step`` after each cycle."""

    total: int = 0
    per_cycle: list[int] = field(default_factory=list)
    new_dups: list[set] = field(default_factory=list)  # positions that became duplicated in each cycle
    _seen_dup: set = field(default_factory=set)

    def step(self, counts: Counter) -> int:
        now = dups(counts)
        self.per_cycle.append(now - self.total)
        self.total = now
        fresh = {p for p, n in counts.items() if n > 1} - self._seen_dup
        self._seen_dup |= fresh
        self.new_dups.append(fresh)
        return self.per_cycle[-1]


# -- services -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """moto's S3 in server mode, a process of the soak's own (so it can be paused); objects live in its memory,
    so it is never stopped for good while a scenario needs them."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
        logdir.mkdir(parents=True, exist_ok=True)
        with (logdir / "moto.log").open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                          str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start: {(logdir / 'moto.log').read_text()[-2000:]}") from None
                time.sleep(0.2)

    def bucket(self, name: str) -> str:
        s3_client(self.url).create_bucket(Bucket=name)
        return name

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Gate:
    """A TCP forwarder on a port of its own in front of ``target_port``: ``close()`` stops listening and resets
    every open connection (the endpoint refuses connections, as a stopped server does), ``open()`` listens again on
    the same port."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.open()

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 30
        while True:
            try:
                s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def close(self) -> None:
        s, self._listener = self._listener, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:  # reset (linger 0); shutdown first, as close() alone does not wake a thread in recv()
            with contextlib.suppress(OSError):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                client, _ = s.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not s:  # closed meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                with contextlib.suppress(OSError):
                    x.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


# -- results --------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    destination: str
    cycles: int
    changes: int
    lost: int
    duplicated: int
    max_dup_cycle: int | None
    seconds: float
    notes: list[str] = field(default_factory=list)


RESULTS: list[Row] = []
SESSION_START = time.monotonic()


def record(row: Row) -> Row:
    RESULTS.append(row)
    write_results()
    return row


def render() -> str:
    head = ("| scenario | destination | cycles | changes | lost | duplicated | max duplicates per cycle | seconds |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {r.scenario} | {r.destination} | {r.cycles} | {r.changes} | {r.lost} | {r.duplicated} |"
                   f" {'-' if r.max_dup_cycle is None else r.max_dup_cycle} | {r.seconds:.0f} |\n" for r in RESULTS)
    total = (f"\n{sum(r.changes for r in RESULTS)} changes checked (summed over destinations),"
             f" {sum(r.lost for r in RESULTS)} lost,"
             f" {sum(r.duplicated for r in RESULTS)} duplicated; {time.monotonic() - SESSION_START:.0f} s in all"
             f" (epoch interval {EPOCH}).\n")
    notes = "".join(f"- {r.scenario} / {r.destination}: {n}\n" for r in RESULTS for n in r.notes)
    return head + body + total + ("\nNotes:\n" + notes if notes else "")


def write_results() -> None:
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text("# wallaby soak (make test-soak)\n\n" + time.strftime("%Y-%m-%d %H:%M:%S %Z") + "\n\n"
                            + render())


def keep_evidence(name: str, workdir: Path, lines: list[str]) -> Path:
    """Copy the scenario's flow files, worker logs and the evidence lines to .cache/soak-evidence/<name>/."""
    dest = EVIDENCE_DIR / name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for p in workdir.rglob("*"):
        if p.is_file() and (p.suffix in {".json", ".log"}) and p.stat().st_size < 50_000_000:
            target = dest / p.relative_to(workdir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    (dest / "evidence.txt").write_text("\n".join(lines) + "\n")
    return dest


# -- a scenario's run ---------------------------------------------------------------------------------------------


class Dest:
    """One destination of a flow under soak: its spec, and how to read back what it holds."""

    def __init__(self, kind: str, spec: dict, *, path: Path | None = None, reader=None) -> None:
        self.kind = kind
        self.spec = spec
        self.path = path
        self.reader = reader

    @classmethod
    def duck_target(cls, path: Path) -> Dest:
        return cls("duckdb target", duck_target(path), path=path)

    @classmethod
    def duck_append(cls, path: Path) -> Dest:
        return cls("duckdb append", duck_append(path), path=path)

    @classmethod
    def kafka(cls, bootstrap: str, topic: str) -> Dest:
        return cls("kafka", kafka_dest(bootstrap, topic), reader=KafkaTopic(bootstrap, topic))

    @classmethod
    def s3(cls, endpoint: str, bucket: str, read_endpoint: str | None = None) -> Dest:
        return cls("s3", s3_dest(endpoint, bucket), reader=S3Prefix(read_endpoint or endpoint, bucket))

    @property
    def positional(self) -> bool:
        return self.kind != "duckdb target"

    def counts(self, worker_alive: bool) -> Counter | None:
        """Positions held (keys for a target table); None when it cannot be read now (a DuckDB file the worker
        holds)."""
        if self.reader is not None:
            return Counter(self.reader.refresh())
        if worker_alive:
            return None
        if self.kind == "duckdb append":
            return duck_positions(self.path)
        return Counter(r[0] for r in duck_rows(self.path))

    def close(self) -> None:
        if isinstance(self.reader, KafkaTopic):
            self.reader.close()


@dataclass
class Mark:
    """What was true at the end of one cycle: the slot's and the checkpoint store's confirmed LSNs, and what each
    destination held then (DuckDB target: its high-water)."""

    slot_confirmed: int
    checkpoint: int
    held: dict[str, set | int | None]
    runs: int = 0  # worker runs started so far


class Run:
    """One flow under load: its table, flow file, worker, audit slot; ``mark`` after each cycle, ``finish`` at the
    end (stop the load, drain, compare every destination with the audit, record the rows)."""

    def __init__(self, scenario: str, flow_id: str, dsn: str, workdir: Path, dests: list[Dest], *, seed: int = 0,
                 worker_args: tuple[str, ...] = (), pause: float = 0.008, **source: str) -> None:
        self.scenario = scenario
        self.flow_id = flow_id
        self.dsn = dsn
        self.workdir = workdir
        self.dests = dests
        self.slot = f"{flow_id}_slot"
        self.publication = f"{flow_id}_pub"
        self.audit_slot = f"{flow_id}_audit"
        self.t0 = time.monotonic()
        workdir.mkdir(parents=True, exist_ok=True)
        create_table(dsn)
        self.flow = flow_file(workdir, flow_id, dsn, [d.spec for d in dests], **source)
        self.env = worker_env(workdir)
        self.worker = Worker(self.flow, self.env, workdir / "logs", *worker_args)
        self.load = Load(dsn, seed=seed, pause=pause)
        self.tallies = {d.kind: Tally() for d in dests}
        self.marks: list[Mark] = []
        self.notes: list[str] = []

    def begin(self) -> Run:
        """Start the worker (it creates the slot), then the audit slot, then the load."""
        self.worker.start()
        wait_streaming(self.dsn, self.slot, worker=self.worker)
        create_audit_slot(self.dsn, self.audit_slot)
        self.load.start()
        return self

    def mark(self) -> list[int | None]:
        """Bookkeeping at the end of a cycle; the duplicates each destination gained in it (None: not readable)."""
        alive = self.worker.alive
        _, _, confirmed = slot_info(self.dsn, self.slot)
        cp = checkpoint(self.workdir, self.flow_id)
        held: dict[str, set | int | None] = {}
        gained: list[int | None] = []
        for d in self.dests:
            counts = d.counts(alive)
            if counts is None:
                gained.append(None)
                held[d.kind] = None
                continue
            gained.append(self.tallies[d.kind].step(counts))
            held[d.kind] = set(counts) if d.positional else duck_high_water(d.path)
        self.marks.append(Mark(confirmed, cp[0] if cp else 0, held, self.worker.runs))
        self.worker.event(f"cycle {len(self.marks)} ends: slot confirmed {lsn_text(confirmed)}, checkpoint"
                          f" {lsn_text(self.marks[-1].checkpoint)}, duplicates gained {gained}")
        return gained

    def finish(self, cycles: int, *, drain: bool = True) -> list[Row]:
        self.load.stop()
        self.notes.append(f"load: {self.load.txs} transactions"
                          + (f", {self.load.errors} failed ({self.load.last_error[:120]})" if self.load.errors else ""))
        target = current_lsn(self.dsn)
        if self.worker.alive:
            self.worker.term()
        if drain:
            self.notes += self.worker.drain(self.flow_id, self.workdir, target)
        summary = self.worker.exit_summary()
        if summary:
            self.notes.append(summary)
        changes = audit(self.dsn, self.audit_slot, self.publication)
        by_pos = {c.position: c for c in changes}
        seconds = time.monotonic() - self.t0
        rows = []
        for d in self.dests:
            notes, evidence = [], []
            if d.positional:
                counts = d.counts(False)
                lost_changes = [c for c in changes if counts[c.position] == 0]
                lost = len(lost_changes)
                duplicated = dups(counts)
                unexpected = [p for p in counts if p not in by_pos]
                evidence += [f"lost {c.show()}" for c in lost_changes[:200]]
                doubled = [(p, n) for p, n in sorted(counts.items()) if n > 1]
                evidence += [f"duplicated {lsn_text(p[0])}#{p[1]} x{n}" for p, n in doubled[:200]]
                if unexpected:
                    notes.append(f"{len(unexpected)} positions the audit does not know")
                    evidence += [f"unexpected {lsn_text(p[0])}#{p[1]}" for p in unexpected[:50]]
            else:
                lost, duplicated, ev = compare_target(d.path, self.dsn)
                evidence += ev[:200]
            if isinstance(d.reader, S3Prefix):
                notes.append(f"{len(d.reader.keys)} objects")
            elif isinstance(d.reader, KafkaTopic):
                notes.append(f"{d.reader.messages} messages")
            tally = self.tallies[d.kind]
            if tally.per_cycle:
                tally.step(d.counts(False))  # the drain's own (a replay of the last cycle)
            per_cycle = tally.per_cycle
            max_dup = max(per_cycle) if per_cycle else (0 if duplicated == 0 else None)
            if any(per_cycle):
                notes.append(f"duplicates per cycle {per_cycle}")
            evidence += self._violations(d, changes, by_pos, notes)
            row = record(Row(self.scenario, d.kind, cycles, len(changes), lost, duplicated, max_dup, seconds,
                             notes + ([] if d is not self.dests[-1] else self.notes)))
            if lost or (duplicated and d.kind.startswith("duckdb")) or any(n.startswith("VIOLATION") for n in notes):
                where = keep_evidence(f"{self.flow_id}-{d.kind.replace(' ', '-')}", self.workdir,
                                      [f"flow {self.flow_id}, destination {d.kind}",
                                       f"audit: {len(changes)} changes", *evidence])
                row.notes.append(f"evidence kept in {where.relative_to(ROOT)}")
                write_results()
            rows.append(row)
        for d in self.dests:
            d.close()
        return rows

    def _violations(self, d: Dest, changes: list[Change], by_pos: dict, notes: list[str]) -> list[str]:
        """The slot and the checkpoint store never confirmed what the destination did not hold at that moment;
        a cycle's new duplicates all lie above the checkpoint the cycle before it left (a replay goes back at most
        to the last confirmed epoch)."""
        evidence = []
        for i, m in enumerate(self.marks):
            held = m.held.get(d.kind)
            if held is None:
                continue
            for what, confirmed in (("slot", m.slot_confirmed), ("checkpoint", m.checkpoint)):
                if isinstance(held, int):
                    late = confirmed_past(changes, confirmed, held)
                else:
                    late = [c for c in changes if c.end <= confirmed and c.position not in held]
                if late:
                    notes.append(f"VIOLATION cycle {i + 1}: the {what} confirmed {lsn_text(confirmed)} past"
                                 f" {len(late)} changes the destination did not hold")
                    evidence += [f"cycle {i + 1} {what} {lsn_text(confirmed)} not held: {c.show()}" for c in late[:20]]
        tally = self.tallies[d.kind]
        if not d.positional:
            return evidence
        tails = []
        for i, fresh in enumerate(tally.new_dups[1:len(self.marks) + 1], start=1):
            before = self.marks[i - 1]
            floor = before.checkpoint
            held = before.held.get(d.kind)
            below = [by_pos[p] for p in fresh if p in by_pos and by_pos[p].end <= floor]
            if below:
                notes.append(f"VIOLATION cycle {i + 1}: {len(below)} duplicates at or below the checkpoint"
                             f" {lsn_text(floor)} of the cycle before")
                evidence += [f"cycle {i + 1} duplicate below {lsn_text(floor)}: {c.show()}" for c in below[:20]]
            if isinstance(held, set):
                tail = {p for p in held if p in by_pos and by_pos[p].end > floor}
                tails.append(len(tail))
                one_run = i < len(self.marks) and self.marks[i].runs - before.runs <= 1
                if fresh - held and one_run:
                    notes.append(f"VIOLATION cycle {i + 1}: {len(fresh - held)} duplicates of changes the"
                                 " destination did not hold when the cycle before ended (written twice by one run)")
                    evidence += [f"cycle {i + 1} duplicated within a run: {lsn_text(p[0])}#{p[1]}"
                                 for p in sorted(fresh - held)[:20]]
        if tally.total and tails:
            notes.append("from cycle 2 on, each cycle's duplicates are among the changes the destination held above"
                         " the checkpoint when the cycle before ended (its unconfirmed epochs); those per cycle:"
                         f" {tails}")
        return evidence
