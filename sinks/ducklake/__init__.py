"""The ducklake destination: its options (:mod:`.options`), preflight checks (:mod:`.checks`, and the extensions'
check in the writer), sink, stored positions and staging resolution (:mod:`.writer`: the DuckDB destination's
writer on an attached DuckLake catalog), registered as ``PLUGIN`` (entry point ``wallaby.destinations``).
Importing this package does not import duckdb: the writer module is imported when a sink is built, a stored
position read, staging tables resolved or the extensions checked."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.ducklake.checks import check_ducklake_paths
from sinks.ducklake.options import DuckLakeDestinationOptions
from wallaby.core.errors import FieldProblem
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from sinks.sql.staging import ResolvedTable
    from wallaby.core.changes import Position
    from wallaby.core.identity import SourceCheck, SourceIdentity
    from wallaby.core.spec import Endpoint


def _writer() -> ModuleType:
    from sinks.ducklake import writer  # duckdb and its extensions: loaded when used, not with the plugin

    return writer


def make_sink(name: str, flow_id: str, options: DuckLakeDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


def stored_position(name: str, flow_id: str,
                    options: DuckLakeDestinationOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    return _writer().stored_position(name, flow_id, options)


def discard_position(name: str, flow_id: str, options: DuckLakeDestinationOptions) -> None:
    _writer().discard_position(name, flow_id, options)


def resolve_staging(name: str, flow_id: str, options: DuckLakeDestinationOptions, tables: list[str] | None = None,
                    schemas: list[str] | None = None) -> list[ResolvedTable]:
    return _writer().resolve_staging(name, flow_id, options, tables=tables, schemas=schemas)


def check_extensions(i: int, dest: Endpoint | None, opts: DuckLakeDestinationOptions) -> list[FieldProblem]:
    """The DuckDB extensions the destination needs load (from their wheels, or with ``install_extensions=false``
    from DuckDB's extension directory), into a throwaway in-memory database: nothing is created or downloaded."""
    return _writer().extension_problems(i, opts)


PLUGIN = Plugin(name="ducklake", options=DuckLakeDestinationOptions, make_sink=make_sink,
                stored_position=stored_position, discard_position=discard_position,
                checks=(check_ducklake_paths, check_extensions), resolve_staging=resolve_staging)
