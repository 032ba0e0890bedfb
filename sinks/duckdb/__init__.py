"""The duckdb destination: its options (:mod:`.options`), preflight check (:mod:`.checks`), sink
(:mod:`.writer`) and staging resolution (:mod:`.staging`), registered as ``PLUGIN`` (entry point
``wallaby.destinations``). Importing this package does not import duckdb: the writer is imported when a sink is
built or a stored position read, the staging module when staging tables are resolved."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.duckdb.checks import check_duckdb_path
from sinks.duckdb.options import DuckDBDestinationOptions
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from sinks.sql.staging import ResolvedTable
    from wallaby.core.changes import Position
    from wallaby.core.identity import SourceCheck, SourceIdentity


def _writer() -> ModuleType:
    from sinks.duckdb import writer  # the duckdb driver: imported when a sink is built, not with the plugin

    return writer


def make_sink(name: str, flow_id: str, options: DuckDBDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


def stored_position(name: str, flow_id: str,
                    options: DuckDBDestinationOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    return _writer().stored_position(name, flow_id, options)


def resolve_staging(name: str, flow_id: str, options: DuckDBDestinationOptions, tables: list[str] | None = None,
                    schemas: list[str] | None = None) -> list[ResolvedTable]:
    # the duckdb driver (through the writer): loaded when staging tables are resolved, not with the plugin
    from sinks.duckdb import staging

    return staging.resolve_staging(name, flow_id, options, tables=tables, schemas=schemas)


def discard_position(name: str, flow_id: str, options: DuckDBDestinationOptions) -> None:
    _writer().discard_position(name, flow_id, options)


PLUGIN = Plugin(name="duckdb", options=DuckDBDestinationOptions, make_sink=make_sink,
                stored_position=stored_position, discard_position=discard_position, checks=(check_duckdb_path,),
                resolve_staging=resolve_staging)
