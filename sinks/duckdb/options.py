"""USAGE.md "DuckDB Destination": the options of a DuckDB destination."""

from __future__ import annotations

from sinks.sql.options import TableWriterOptions
from wallaby.core.options import Bool, RequiredText


class DuckDBDestinationOptions(TableWriterOptions):
    """The one model of a DuckDB destination's options, the flow spec's and the sink's
    (``sinks.duckdb.writer.DuckDBOptions`` is this class). ``batch_mode=staging`` lands a backfill's rows in
    staging tables (``staging_*``), resolved into the targets by ``batch_resolution`` (sinks/duckdb/staging.py)."""

    dsn: RequiredText
    drop_columns: Bool = False  # not in USAGE.md: follow a source DROP COLUMN (docs/ddl.md)
    # not in USAGE.md: let go of the file between epochs so other processes can read it (docs/destinations.md)
    release_file: Bool = True


__all__ = ["DuckDBDestinationOptions"]
