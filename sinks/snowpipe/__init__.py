"""The snowpipe destination (USAGE.md "Snowpipe Destination"): its options (:mod:`.options`) and writer
(:mod:`.writer`: each apply's changes as one file per table on a Snowflake stage, loaded with COPY INTO, or left to a
pipe with ``auto_ingest``), registered as ``PLUGIN``. Importing this package imports neither ``snowflake.connector``
nor duckdb: the writer is imported when a sink is built or a stored position read."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.snowpipe.checks import check_snowpipe
from sinks.snowpipe.options import SnowpipeDestinationOptions
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from wallaby.core.changes import Position
    from wallaby.core.identity import SourceCheck, SourceIdentity


def _writer() -> ModuleType:
    from sinks.snowpipe import writer  # the connector and duckdb: imported when a sink is built

    return writer


def make_sink(name: str, flow_id: str, options: SnowpipeDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


def stored_position(name: str, flow_id: str,
                    options: SnowpipeDestinationOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    return _writer().stored_position(name, flow_id, options)


def discard_position(name: str, flow_id: str, options: SnowpipeDestinationOptions) -> None:
    _writer().discard_position(name, flow_id, options)


PLUGIN = Plugin(name="snowpipe", options=SnowpipeDestinationOptions, make_sink=make_sink,
                stored_position=stored_position, discard_position=discard_position, checks=(check_snowpipe,))
