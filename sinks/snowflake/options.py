"""USAGE.md "Snowflake Destination": the options of a Snowflake destination (docs/destinations.md "Snowflake")."""

from __future__ import annotations

from pydantic import model_validator

from sinks.sql.options import TableWriterOptions
from wallaby.core.options import OptionProblems, RequiredText


class SnowflakeDestinationOptions(TableWriterOptions):
    dsn: RequiredText
    meta_schema: RequiredText = "WALLABY_META"
    meta_table: RequiredText = "__METADATA"
    meta_pk_prefix: RequiredText = "pk_"

    @model_validator(mode="after")
    def _check(self) -> SnowflakeDestinationOptions:
        if self.batch_resolution != "none":
            raise OptionProblems([("batch_resolution", f"{self.batch_resolution!r}: resolving staging tables into"
                                   " Snowflake targets is not built in this version; use batch_resolution=none and"
                                   " resolve them in Snowflake (INSERT INTO target SELECT * FROM the staging table)")])
        return self


__all__ = ["SnowflakeDestinationOptions"]
