"""The snowflake destination (USAGE.md "Snowflake Destination"): its options (:mod:`.options`), DSN
(:mod:`.dsn`), type map (:mod:`.types`) and writer (:mod:`.writer`, on the shared table engine), registered as
``PLUGIN``. Importing this package imports neither ``snowflake.connector`` nor duckdb: the writer is imported when
a sink is built or a stored position read."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.snowflake.checks import check_snowflake_dsn
from sinks.snowflake.options import SnowflakeDestinationOptions
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from sinks.sql.staging import ResolvedTable
    from wallaby.core.changes import Position
    from wallaby.core.identity import SourceCheck, SourceIdentity


def _writer() -> ModuleType:
    from sinks.snowflake import writer  # the connector and duckdb: imported when a sink is built

    return writer


def make_sink(name: str, flow_id: str, options: SnowflakeDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


def stored_position(name: str, flow_id: str,
                    options: SnowflakeDestinationOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    return _writer().stored_position(name, flow_id, options)


def discard_position(name: str, flow_id: str, options: SnowflakeDestinationOptions) -> None:
    _writer().discard_position(name, flow_id, options)


def resolve_staging(name: str, flow_id: str, options: SnowflakeDestinationOptions, tables: list[str] | None = None,
                    schemas: list[str] | None = None) -> list[ResolvedTable]:
    from sinks.snowflake import staging

    return staging.resolve_staging(name, flow_id, options, tables=tables, schemas=schemas)


PLUGIN = Plugin(name="snowflake", options=SnowflakeDestinationOptions, make_sink=make_sink,
                stored_position=stored_position, discard_position=discard_position, checks=(check_snowflake_dsn,),
                resolve_staging=resolve_staging)
