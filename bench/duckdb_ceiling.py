"""DuckDB's own bulk load of a table, with the settings of wallaby's DuckDB destination (but its memory cap):
the most a DuckDB file takes in on this machine, the ceiling of any end-to-end leg into DuckDB.

    python -m bench.duckdb_ceiling --parquet FILE --duckdb FILE

Loads the Parquet file (the end-to-end leg's target table, exported untimed by bench/run.py) into a new DuckDB
file in one ``CREATE TABLE AS`` and checkpoints it (compressed and on disk, as a catch-up leaves it). Prints one
JSON line: rows, seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

import duckdb
import orjson

from sinks.duckdb.writer import DUCKDB_CHECKPOINT_THRESHOLD, DUCKDB_THREADS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parquet", required=True)
    ap.add_argument("--duckdb", required=True)
    a = ap.parse_args(argv)
    # A bulk load builds whole row groups (122880 rows, ~600 MB of wide rows) in memory: it runs out of memory at
    # the destination's memory_limit, so it gets 2GB here (its peak RSS is reported beside its rate).
    config = {"memory_limit": "2GB", "checkpoint_threshold": DUCKDB_CHECKPOINT_THRESHOLD}
    if DUCKDB_THREADS:
        config["threads"] = DUCKDB_THREADS
    con = duckdb.connect(a.duckdb, config=config)
    t = time.perf_counter()
    con.execute("CREATE TABLE bench AS SELECT * FROM read_parquet(?)", [a.parquet])
    con.execute("CHECKPOINT")
    secs = time.perf_counter() - t
    rows = con.execute("SELECT count(*) FROM bench").fetchone()[0]
    con.close()
    sys.stdout.write(orjson.dumps({"rows": rows, "seconds": secs}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
