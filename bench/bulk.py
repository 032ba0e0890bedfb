"""The ``bulk`` leg group of ``make bench``: an insert-only load (10k-row transactions, like an ETL load into the
source) read by pg_recvlogical and by wallaby into DuckDB, both as whole processes; then catch-up runs with
nothing to read.

One narrow table (bench/run.py's ``narrow`` profile: id bigint primary key, ~200-byte rows) in a database of its
own, with a publication. Before any row is written, every reader gets its slot: pg_recvlogical's
(``pg_create_logical_replication_slot(.., 'pgoutput')``) and wallaby's (``wallaby-worker -flow-file F
-max-empty-reads 1`` once, untimed: slot, publication, state; nothing to read yet). Then ``changes`` inserts in
10k-row transactions (``INSERT ... SELECT generate_series``), which both slots retain. Then:

- ``pg_recvlogical_bulk``: pg_recvlogical (pgoutput protocol 4) draining its slot to /dev/null up to the WAL's end
  after the writes (``--endpos``), timed as a whole process: the baseline;
- ``wallaby_bulk_duckdb``: ``wallaby-worker -flow-file F -max-empty-reads 1`` (every option at its default, the
  DuckDB destination's file in the run's temp dir) timed as a whole process, spawn to exit (start-up, streaming,
  the final commit and checkpoint); its peak RSS; the file checked to hold every row afterwards (the leg fails
  otherwise). Its rate over pg_recvlogical_bulk's; beside it ``wallaby_bulk_duckdb_batch10k``, the same with the
  source option ``batch_size`` at 10,000 (the replication legs' ``--batch-size``) instead of its default 100;
- ``catch_up_empty``: the same worker command 3 times more with nothing new to read (as a scheduled run that finds
  the source quiet): seconds from spawn to exit of each and their median; beside it the worker's own time from its
  log (its first log line to ``flow F: stopped``).

Beside the two reading legs, the CPU the walsender serving the slot used. Each worker run has its state in the
run's temp dir (sqlite checkpoints, recovery store). Targets: bulk into DuckDB >= 1.0x pg_recvlogical (whole
processes); catch-up with nothing to read < 1 s (the median).

    python -m bench.bulk [--changes N]     (make bench runs it as the leg group ``bulk``, ``--bulk-changes``)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import psycopg

from bench import settle
from bench.debezium_stream import _drop
from bench.debezium_stream import _worker as run_worker
from bench.run import (
    PROFILES,
    WalsenderCPU,
    _log_time,
    bench_postgres,
    fresh_database,
    log_records,
    run_pg_recvlogical,
    show_group,
)
from wallaby.control.localpg import LocalPostgres

DB = "bench_bulk"
TABLE = "bench"  # bench/run.py's narrow profile makes and fills this table
PUBLICATION = "bench_bulk"  # pg_recvlogical's
RECV_SLOT = "bench_bulk_recv"
WALLABY_SLOT = "bench_bulk_wallaby"  # the flow's id, slot and publication
# wallaby_bulk_duckdb_batch10k: the same with the source option batch_size at 10,000 (the bench's --batch-size, what
# the replication legs of bench/run.py use) instead of its default 100: what the per-batch cost is at the default
BIG_BATCH_SLOT = "bench_bulk_wallaby_b10k"
BIG_BATCH = 10_000
ROWS_PER_TXN = 10_000
CATCH_UP_RUNS = 3
TARGETS = {"x_pg_recvlogical": 1.0, "catch_up_seconds": 1.0}


def _database(pg: LocalPostgres) -> str:
    create, _, _ = PROFILES["narrow"]
    dsn = fresh_database(pg, DB)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(create)
        c.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE}")
    return dsn


def _write(dsn: str, changes: int) -> str:
    """``changes`` inserts in 10k-row transactions; the WAL's end after them (bench.settle first)."""
    _, insert, _ = PROFILES["narrow"]
    with psycopg.connect(dsn) as c:
        for lo in range(1, changes + 1, ROWS_PER_TXN):
            c.execute(insert, (lo, min(lo + ROWS_PER_TXN, changes + 1) - 1))
            c.commit()
    settle(dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]


def _flow(tmp: Path, dsn: str, slot: str = WALLABY_SLOT, batch_size: int | None = None) -> Path:
    """The flow file of a wallaby leg: its id, slot and publication ``slot``, into ``<slot>.duckdb``; every option
    at its default but ``batch_size`` when given."""
    extra = {} if batch_size is None else {"batch_size": batch_size}
    flow = {"id": slot, "name": slot,
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": dsn, "slot": slot, "publication": slot, "publication_tables": f"public.{TABLE}", **extra}},
            "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": str(tmp / f"{slot}.duckdb")}}]}
    path = tmp / f"{slot}.json"
    path.write_text(json.dumps(flow))
    return path


def _logged_seconds(stderr: str) -> float | None:
    """The worker's own time from its JSON log: its first line to ``flow F: stopped`` (None without both)."""
    first = stopped = None
    for rec in log_records(stderr):
        if "ts" not in rec:
            continue
        if first is None:
            first = _log_time(rec["ts"])
        if rec.get("msg", "").endswith(": stopped") and rec["msg"].startswith("flow "):
            stopped = _log_time(rec["ts"])
    return stopped - first if first is not None and stopped is not None else None


def leg_pg_recvlogical(pg: LocalPostgres, dsn: str, stop: str, changes: int) -> dict:
    settle()
    with WalsenderCPU(dsn, RECV_SLOT) as sender:
        secs, rss = run_pg_recvlogical(pg, dsn, RECV_SLOT, PUBLICATION, stop)
    return {"changes": changes, "seconds": secs, "rows_per_s": changes / secs, "peak_rss_mb": rss / 2**20,
            "walsender_cpu_s": sender.cpu, "walsender_cpu": sender.share}


def leg_wallaby(dsn: str, tmp: Path, flow: Path, changes: int, slot: str = WALLABY_SLOT) -> dict:
    import duckdb

    settle()
    with WalsenderCPU(dsn, slot) as sender:
        run = run_worker(tmp, flow, timeout=120 + changes / 1_000)
    with duckdb.connect(str(tmp / f"{slot}.duckdb"), read_only=True) as d:
        rows = d.execute(f"SELECT count(*) FROM public.{TABLE}").fetchone()[0]
    if rows != changes:
        raise RuntimeError(f"{slot}: the DuckDB file holds {rows} rows, not {changes}: {run['stderr'][-2000:]}")
    return {"changes": changes, "rows_in_duckdb": rows, "rows_check": "passed", "seconds": run["seconds"],
            "rows_per_s": changes / run["seconds"], "peak_rss_mb": run["peak_rss"] / 2**20,
            "cpu_seconds": run["cpu_seconds"], "walsender_cpu_s": sender.cpu, "walsender_cpu": sender.share}


def leg_catch_up(tmp: Path, flow: Path) -> dict:
    runs = []
    for _ in range(CATCH_UP_RUNS):
        run = run_worker(tmp, flow, timeout=120)
        runs.append({"seconds": run["seconds"], "logged_seconds": _logged_seconds(run["stderr"]),
                     "peak_rss_mb": run["peak_rss"] / 2**20})
    logged = [r["logged_seconds"] for r in runs if r["logged_seconds"] is not None]
    return {"runs": runs, "seconds": statistics.median(r["seconds"] for r in runs),
            "logged_seconds": statistics.median(logged) if len(logged) == len(runs) else None,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def bench_bulk(pg: LocalPostgres, changes: int) -> dict:
    """The slots made, ``changes`` inserts written, each reader timed, then the catch-up runs (module docstring)."""
    dsn = _database(pg)
    tmp = Path(tempfile.mkdtemp(prefix="wallaby-bench-bulk-"))
    out: dict = {"changes": changes, "rows_per_txn": ROWS_PER_TXN, "legs": {}}
    try:
        flow = _flow(tmp, dsn)
        big = _flow(tmp, dsn, BIG_BATCH_SLOT, BIG_BATCH)
        for f in (flow, big):
            run_worker(tmp, f, timeout=120)  # wallaby's slot, publication, state: nothing to read yet
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (RECV_SLOT,))
        stop = _write(dsn, changes)
        legs = out["legs"]
        legs["pg_recvlogical_bulk"] = leg_pg_recvlogical(pg, dsn, stop, changes)
        legs["wallaby_bulk_duckdb"] = leg_wallaby(dsn, tmp, flow, changes)
        legs["wallaby_bulk_duckdb_batch10k"] = leg_wallaby(dsn, tmp, big, changes, BIG_BATCH_SLOT)
        legs["catch_up_empty"] = leg_catch_up(tmp, flow)
    finally:
        for slot in (RECV_SLOT, WALLABY_SLOT, BIG_BATCH_SLOT):
            _drop(dsn, slot)
        shutil.rmtree(tmp, ignore_errors=True)
    recv, wal, idle = legs["pg_recvlogical_bulk"], legs["wallaby_bulk_duckdb"], legs["catch_up_empty"]
    recv["ratio_to_pg_recvlogical"] = 1.0
    wal["ratio_to_pg_recvlogical"] = ratio = wal["rows_per_s"] / recv["rows_per_s"]
    big_leg = legs["wallaby_bulk_duckdb_batch10k"]
    big_leg["ratio_to_pg_recvlogical"] = big_leg["rows_per_s"] / recv["rows_per_s"]
    # The most the two busy parties allow on this machine: the worker's CPU and its walsender's, spread over every
    # core with nothing else running, against pg_recvlogical's whole process (the walsender its only busy party).
    cores = os.cpu_count() or 1
    wal["cpu_floor_seconds"] = floor = (wal["cpu_seconds"] + wal["walsender_cpu_s"]) / cores
    wal["cpu_ceiling_ratio"] = recv["seconds"] / floor
    each = ", ".join(f"{r['seconds']:.2f}" for r in idle["runs"])
    logged = f"; the worker's own (log) {idle['logged_seconds']:.2f} s" if idle["logged_seconds"] is not None else ""
    out["targets"] = [
        {"target": "bulk into DuckDB >= 1.0x pg_recvlogical (whole processes)", "value": ratio,
         "shown": f"{ratio:.2f}x ({wal['rows_per_s']:,.0f} against {recv['rows_per_s']:,.0f} rows/s)",
         "met": ratio >= TARGETS["x_pg_recvlogical"]},
        {"target": "catch-up with nothing to read < 1 s", "value": idle["seconds"],
         "shown": f"{idle['seconds']:.2f} s, the median of {each}{logged}",
         "met": idle["seconds"] < TARGETS["catch_up_seconds"]},
    ]
    return out


def print_bulk(res: dict) -> None:
    print(f"\nbulk: {res['changes']:,} inserts in {res['rows_per_txn']:,}-row transactions written after the slots,"
          " whole processes (catch_up_empty: spawn to exit with nothing to read, the median of"
          f" {CATCH_UP_RUNS}; in brackets the worker's own time from its log)")
    print(f"{'leg':<30}{'rows/s or s':>14}{'x pg_recvlogical':>18}{'peak RSS MB':>13}{'walsender CPU':>15}"
          f"{'CPU s':>7}")
    for name, r in res["legs"].items():
        if "rows_per_s" in r:
            shown = f"{r['rows_per_s']:,.0f}"
            ratio = f"{r['ratio_to_pg_recvlogical']:.2f}"
        else:
            shown = f"{r['seconds']:.2f} s" + (f" ({r['logged_seconds']:.2f})" if r["logged_seconds"] is not None
                                                else "")
            ratio = "-"
        ws = f"{r['walsender_cpu']:.0%}" if r.get("walsender_cpu") is not None else "-"
        cpu = f"{r['cpu_seconds']:.2f}" if r.get("cpu_seconds") is not None else "-"
        print(f"{name:<30}{shown:>14}{ratio:>18}{r['peak_rss_mb']:>13.0f}{ws:>15}{cpu:>7}")
    wal, recv = res["legs"].get("wallaby_bulk_duckdb", {}), res["legs"].get("pg_recvlogical_bulk", {})
    if wal.get("cpu_floor_seconds"):
        print(f"(CPU s: the process's own. On {os.cpu_count()} cores the worker ({wal['cpu_seconds']:.2f} CPU s)"
              f" and its walsender ({wal['walsender_cpu_s']:.2f} s) need at least {wal['cpu_floor_seconds']:.2f} s"
              f" of wall time, {wal['cpu_ceiling_ratio']:.2f}x pg_recvlogical's {recv['seconds']:.2f} s: the most"
              " this machine allows with this much CPU per row)")
    print("targets:")
    for t in res["targets"]:
        print(f"  {t['target']}: {t['shown']}: {'met' if t['met'] else 'not met'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=int(os.environ.get("BENCH_BULK_CHANGES", 1_000_000)))
    a = ap.parse_args(argv)
    with bench_postgres() as pg:
        res = bench_bulk(pg, a.changes)
    return show_group(res, print_bulk)


if __name__ == "__main__":
    sys.exit(main())
