"""The http destination: its options (:mod:`.options`), preflight check (:mod:`.checks`) and sink
(:mod:`.writer`), registered as ``PLUGIN`` (entry point ``wallaby.destinations``). The writer (urllib3) is imported
when a sink is built."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.http.checks import check_http_url
from sinks.http.options import HTTPDestinationOptions
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from wallaby.core.identity import SourceCheck


def _writer() -> ModuleType:
    from sinks.http import writer  # urllib3, the driver: imported when a sink is built, not with the plugin

    return writer


def make_sink(name: str, flow_id: str, options: HTTPDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


PLUGIN = Plugin(name="http", options=HTTPDestinationOptions, make_sink=make_sink, checks=(check_http_url,))
