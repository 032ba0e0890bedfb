"""The pgstream destination: its options (:mod:`.options`) and sink (:mod:`.writer`), registered as ``PLUGIN``
(entry point ``wallaby.destinations``). The writer (psycopg) is imported when a sink is built or a stored position
read."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.pgstream.options import PGStreamDestinationOptions
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from wallaby.core.changes import Position
    from wallaby.core.identity import SourceCheck, SourceIdentity


def _writer() -> ModuleType:
    from sinks.pgstream import writer  # psycopg, the driver: imported when a sink is built, not with the plugin

    return writer


def make_sink(name: str, flow_id: str, options: PGStreamDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


def stored_position(name: str, flow_id: str,
                    options: PGStreamDestinationOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    return _writer().stored_position(name, flow_id, options)


def discard_position(name: str, flow_id: str, options: PGStreamDestinationOptions) -> None:
    _writer().discard_position(name, flow_id, options)


PLUGIN = Plugin(name="pgstream", options=PGStreamDestinationOptions, make_sink=make_sink,
                stored_position=stored_position, discard_position=discard_position)
