"""The ``slots`` leg group of ``make bench``: one flow's tables over 1 and over 2 slots into Kafka.

Four narrow tables; ``changes`` inserts in transactions that each write all four (10k rows a transaction). For
each layout a fresh flow (its own slots) is made first, then the rows are written, then ``wallaby-worker
-flow-file F -max-empty-reads 1 -workers <slots>`` reads them all into a Kafka topic, timed as a whole process
(start-up and final checkpoint included). Measured beside the rate: the client's CPU (user + system of the worker
process) and each walsender's CPU, per change; the two-slot rate as a ratio to the one-slot rate of the same run.

These are the per-core costs of the model in docs/scaling.md: a slot costs a walsender (one server core at most:
it decodes the whole WAL, every slot again), a change costs the client its decode and the sink its encode and
produce, which bytewax spreads over workers only by slot.

    python -m bench.slots [--changes N]     (make bench runs it as the leg group ``slots``)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.run import ROOT, WalsenderCPU, bench_postgres, run_rusage, show_group
from wallaby.control.localpg import LocalPostgres

TABLES = ("s_a", "s_b", "s_c", "s_d")
ROWS_PER_TXN = 10_000


def _database(pg: LocalPostgres) -> str:
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS bench_slots WITH (FORCE)")
        c.execute("CREATE DATABASE bench_slots")
    dsn = pg.dsn("bench_slots")
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in TABLES:
            c.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, v int, s text)")
    return dsn


def _write(dsn: str, changes: int, start: int) -> None:
    per_table = ROWS_PER_TXN // len(TABLES)
    with psycopg.connect(dsn) as c:
        done = 0
        while done < changes:
            for t in TABLES:
                c.execute(f"INSERT INTO {t} SELECT g, g %% 1000, 'row ' || g"
                          f" FROM generate_series(%s::bigint, %s::bigint) g",
                          (start + done, start + done + per_table - 1))
            c.commit()
            done += per_table * len(TABLES)


def _flow(tmp: Path, dsn: str, slots: int, bootstrap: str) -> Path:
    name = f"bslots{slots}"
    flow = {"id": name, "name": name,
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": dsn, "slot": name, "publication": name, "publication_tables": ",".join(TABLES),
                "slots": slots, "batch_size": 10_000, "status_interval": "1s"}},
            "destinations": [{"name": "kafka", "type": "kafka", "options": {
                "brokers": bootstrap, "topic": name, "format": "arrow"}}]}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(flow))
    return path


def _worker(tmp: Path, flow: Path, slots: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WALLABY_CHECKPOINT_BACKEND": "sqlite",
           "WALLABY_CHECKPOINT_PATH": str(tmp / "c.db"), "WALLABY_RECOVERY_DIR": str(tmp / "recovery")}
    return run_rusage([sys.executable, "-m", "wallaby.control.worker", "-flow-file", str(flow),
                       "-max-empty-reads", "1", "-workers", str(slots)], env=env, timeout=1800)


def leg(pg: LocalPostgres, bootstrap: str, changes: int, slots: int, start: int) -> dict:
    from tests.kafka_broker import create_topic

    tmp = Path(tempfile.mkdtemp(prefix=f"wallaby-bench-slots{slots}-"))
    dsn = pg.dsn("bench_slots")
    flow = _flow(tmp, dsn, slots, bootstrap)
    create_topic(bootstrap, f"bslots{slots}", partitions=4)
    _worker(tmp, flow, slots)  # the slots, publications and state: nothing to read yet
    _write(dsn, changes, start)
    names = [f"bslots{slots}"] if slots == 1 else [f"bslots{slots}_{i}" for i in range(slots)]
    senders = [WalsenderCPU(dsn, n) for n in names]
    for s in senders:
        s.__enter__()
    t0 = time.perf_counter()
    try:
        run = _worker(tmp, flow, slots)
    finally:
        for s in senders:
            s.__exit__(None, None, None)
    seconds = time.perf_counter() - t0
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"slots": slots, "changes": changes, "seconds": seconds, "changes_per_s": changes / seconds,
            "peak_rss": run["peak_rss"], "client_cpu_s": usage.ru_utime + usage.ru_stime,
            "walsender_cpu_s": sum(s.cpu for s in senders)}


def bench_slots(pg: LocalPostgres, bootstrap: str, changes: int) -> dict:
    _database(pg)
    import resource

    out = {}
    for i, slots in enumerate((1, 2)):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = leg(pg, bootstrap, changes, slots, start=i * changes * 2)
        r["client_cpu_s"] -= before.ru_utime + before.ru_stime  # this leg's children only
        r["client_cpu_us_per_change"] = r["client_cpu_s"] / changes * 1e6
        r["walsender_cpu_us_per_change"] = r["walsender_cpu_s"] / changes * 1e6
        out[f"kafka_{slots}_slot{'s' if slots > 1 else ''}"] = r
    one, two = out["kafka_1_slot"], out["kafka_2_slots"]
    two["ratio_to_1_slot"] = two["changes_per_s"] / one["changes_per_s"]
    return out


def print_slots(res: dict) -> None:
    print("\nslots into Kafka (arrow), whole worker process, same run:")
    print(f"{'leg':<16}{'changes/s':>12}{'ratio':>8}{'client µs/chg':>15}{'walsender µs/chg':>18}{'RSS MB':>8}")
    for name, r in res.items():
        print(f"{name:<16}{r['changes_per_s']:>12,.0f}{r.get('ratio_to_1_slot', 1.0):>8.2f}"
              f"{r['client_cpu_us_per_change']:>15.2f}{r['walsender_cpu_us_per_change']:>18.2f}"
              f"{r['peak_rss'] / 1e6:>8.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=int(os.environ.get("BENCH_SLOTS_CHANGES", 400_000)))
    a = ap.parse_args(argv)
    from tests.kafka_broker import KafkaBroker

    with bench_postgres() as pg:
        broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="wallaby-bench-kafka-")))
        broker.start()
        try:
            res = bench_slots(pg, broker.bootstrap, a.changes)
        finally:
            broker.stop()
            shutil.rmtree(broker.workdir, ignore_errors=True)
    return show_group(res, print_slots)


if __name__ == "__main__":
    sys.exit(main())
