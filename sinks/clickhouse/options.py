"""USAGE.md "ClickHouse Destination": the options of a ClickHouse destination (docs/destinations.md "ClickHouse")."""

from __future__ import annotations

from pydantic import model_validator

from sinks.sql.options import TableWriterOptions
from wallaby.core.options import Bool, OptionProblems, RequiredText, Text


class ClickHouseDestinationOptions(TableWriterOptions):
    dsn: RequiredText
    database: Text | None = None  # or schema
    meta_engine: RequiredText = "MergeTree"
    meta_order_by: RequiredText = "flow_id, source_schema, source_table, key_json"
    drop_columns: Bool = False  # not in USAGE.md: follow a source DROP COLUMN, as the DuckDB destination does

    @model_validator(mode="after")
    def _check(self) -> ClickHouseDestinationOptions:
        if self.database and self.schema_ and self.database != self.schema_:
            raise OptionProblems([("database", f"database and schema name the same thing and disagree"
                                               f" ({self.database!r} vs {self.schema_!r}); set one")])
        if self.batch_resolution != "none":
            raise OptionProblems([("batch_resolution", f"{self.batch_resolution!r}: resolving staging tables into"
                                   " ClickHouse targets is not built in this version; use batch_resolution=none and"
                                   " resolve them in ClickHouse (INSERT INTO target SELECT ... FROM the staging"
                                   " table: both are versioned by position, so the newer row wins)")])
        return self

    @property
    def target_database(self) -> str | None:
        return self.database or self.schema_

    @property
    def schema_name(self) -> str | None:
        """The tables' database: ``database``, or its alias ``schema`` (what the table engine names targets by)."""
        return self.target_database


__all__ = ["ClickHouseDestinationOptions"]
