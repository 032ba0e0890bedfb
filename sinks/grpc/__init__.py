"""The grpc destination: its options (:mod:`.options`), preflight check (:mod:`.checks`) and sink
(:mod:`.writer`), registered as ``PLUGIN`` (entry point ``wallaby.destinations``). Importing this package does not
import grpc or the wallaby.v1 stubs: the writer is imported when a sink is built."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.grpc.checks import check_grpc_endpoint
from sinks.grpc.options import GRPCDestinationOptions
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from wallaby.core.identity import SourceCheck


def _writer() -> ModuleType:
    from sinks.grpc import writer  # grpc and the wallaby.v1 stubs: imported when a sink is built, not with the plugin

    return writer


def make_sink(name: str, flow_id: str, options: GRPCDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


PLUGIN = Plugin(name="grpc", options=GRPCDestinationOptions, make_sink=make_sink, checks=(check_grpc_endpoint,))
