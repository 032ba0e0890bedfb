"""USAGE.md "Snowflake Destination": the options of a Snowflake destination (docs/destinations.md "Snowflake")."""

from __future__ import annotations

from sinks.sql.options import TableWriterOptions
from wallaby.core.options import RequiredText


class SnowflakeDestinationOptions(TableWriterOptions):
    dsn: RequiredText
    meta_schema: RequiredText = "WALLABY_META"
    meta_table: RequiredText = "__METADATA"
    meta_pk_prefix: RequiredText = "pk_"


__all__ = ["SnowflakeDestinationOptions"]
