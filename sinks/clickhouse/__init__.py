"""The clickhouse destination (USAGE.md "ClickHouse Destination"): its options (:mod:`.options`), DSN
(:mod:`.dsn`), type map (:mod:`.types`) and writer (:mod:`.writer`, on the shared table engine), registered as
``PLUGIN``. Importing this package imports neither ``clickhouse_connect`` nor duckdb: the writer is imported when a
sink is built or a stored position read."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.clickhouse.checks import check_clickhouse_dsn
from sinks.clickhouse.options import ClickHouseDestinationOptions
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from wallaby.core.changes import Position
    from wallaby.core.identity import SourceCheck, SourceIdentity


def _writer() -> ModuleType:
    from sinks.clickhouse import writer  # the driver and duckdb: imported when a sink is built

    return writer


def make_sink(name: str, flow_id: str, options: ClickHouseDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


def stored_position(name: str, flow_id: str,
                    options: ClickHouseDestinationOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    return _writer().stored_position(name, flow_id, options)


def discard_position(name: str, flow_id: str, options: ClickHouseDestinationOptions) -> None:
    _writer().discard_position(name, flow_id, options)


PLUGIN = Plugin(name="clickhouse", options=ClickHouseDestinationOptions, make_sink=make_sink,
                stored_position=stored_position, discard_position=discard_position, checks=(check_clickhouse_dsn,))
