"""USAGE.md "ClickHouse Destination": validated (a flow file can be checked) though this version has no sink for
it."""

from __future__ import annotations

from pydantic import model_validator

from sinks.sql.options import TableWriterOptions
from wallaby.core.options import OptionProblems, RequiredText, Text


class ClickHouseDestinationOptions(TableWriterOptions):
    dsn: RequiredText
    database: Text | None = None  # or schema
    meta_engine: RequiredText = "MergeTree"
    meta_order_by: RequiredText = "flow_id, source_schema, source_table, key_json"

    @model_validator(mode="after")
    def _check(self) -> ClickHouseDestinationOptions:
        if self.database and self.schema_ and self.database != self.schema_:
            raise OptionProblems([("database", f"database and schema name the same thing and disagree"
                                               f" ({self.database!r} vs {self.schema_!r}); set one")])
        return self

    @property
    def target_database(self) -> str | None:
        return self.database or self.schema_


__all__ = ["ClickHouseDestinationOptions"]
