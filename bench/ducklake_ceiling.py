"""DuckDB with the ducklake extension bulk-loading a table into a fresh lake: the most a DuckLake takes in on this
machine, the ceiling of the end-to-end leg into DuckLake (``ducklake_bulk_load`` beside ``e2e_ducklake``).

    python -m bench.ducklake_ceiling --parquet FILE --catalog sqlite:FILE --data-path DIR

The lake is attached the way the DuckLake destination attaches it (:func:`sinks.ducklake.writer.open_lake`: the
extensions loaded from their wheels, nothing downloaded; an in-memory DuckDB, the lake being the catalog and its
files), with the DuckDB destination's threads but a 2GB memory cap (as ``bench.duckdb_ceiling``: a bulk load builds
whole row groups in memory). Loads the Parquet file (the end-to-end leg's target table, exported untimed by
bench/run.py) in one ``CREATE TABLE AS`` (autocommitted: one snapshot, its Parquet files written). Prints one JSON
line: rows, seconds (the statement alone), parquet_files (the lake's data files).
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from sinks.duckdb.writer import DUCKDB_THREADS
from sinks.ducklake.options import DuckLakeDestinationOptions
from sinks.ducklake.writer import open_lake


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parquet", required=True)
    ap.add_argument("--catalog", required=True, help="a new catalog, e.g. sqlite:<file>")
    ap.add_argument("--data-path", required=True, help="the new lake's data directory")
    a = ap.parse_args(argv)
    options = DuckLakeDestinationOptions(dsn=":memory:", catalog=a.catalog, data_path=a.data_path)
    con = open_lake(options, "ceiling")
    con.execute("SET memory_limit = '2GB'")
    if DUCKDB_THREADS:
        con.execute(f"SET threads = {int(DUCKDB_THREADS)}")
    con.execute("CREATE SCHEMA IF NOT EXISTS public")
    t = time.perf_counter()
    con.execute("CREATE TABLE public.bench AS SELECT * FROM read_parquet(?)", [a.parquet])
    secs = time.perf_counter() - t
    rows = con.execute("SELECT count(*) FROM public.bench").fetchone()[0]
    files = con.execute("SELECT count(*) FROM ducklake_list_files(?, 'bench', schema => 'public')",
                        [options.catalog_name]).fetchone()[0]
    con.close()
    sys.stdout.write(orjson.dumps({"rows": rows, "seconds": secs, "parquet_files": files}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
